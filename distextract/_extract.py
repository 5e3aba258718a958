"""The public entry point :func:`extract`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._detect import (
    OUTPUT_MODES,
    detect_first,
    forced,
    run_detecting,
    sigmoid_hint,
    with_hint,
)
from ._errors import ConfigError, TargetMismatch
from ._model import ReluNetwork
from ._oracle import CountingOracle, SoftmaxLogitOracle, as_oracle
from ._validation import check_positive_int
from .engine._config import ExtractConfig
from .engine.loop import Coordinator
from .engine.precision import PROBE_LINES, PROBE_POINTS
from .engine.tasks import LocalExecutor

logger = logging.getLogger(__name__)

SOFTMAX_LINE_REACH = 8.0


@dataclass(frozen=True, eq=False)
class ExtractionResult:
    """What :func:`extract` returns.

    Attributes
    ----------
    model : ReluNetwork
        The extracted network.
    queries : int
        Exact number of rows sent to the oracle.
    certified : bool
        True when residual lines found nothing new and the validation error met the target.
        False means the model is the best so far, not certified (see ``stop_reason``).
    stop_reason : str
        ``"certified"``, ``"budget"``, ``"precision_floor"``, ``"max_rounds"`` or
        ``"target_mismatch"`` (only with ``on_mismatch="flag"``; see ``report["verdict"]``).
    val_rel_l2, val_max_abs : float
        Error on the run's own validation points (fresh Gaussian queries).
    report : dict
        JSON-serialisable summary (queries, precision, rounds, timings).
    engine : EngineResult
        Internals: neurons with their confidence, lines and kinks (for run directories).
    """

    model: ReluNetwork
    queries: int
    certified: bool
    stop_reason: str
    val_rel_l2: float
    val_max_abs: float
    report: dict
    engine: Any = field(repr=False)


def _min_budget(d: int) -> int:
    return PROBE_LINES * PROBE_POINTS + 1 + 2 * (d + 1)


def extract(oracle: Any, input_dim: int | None = None, *, seed: int = 0,
            budget: int | None = None, config: ExtractConfig | None = None,
            workers: int | None = None, address: str | None = None,
            progress: Callable[[dict], None] | None = None, output: str = "auto",
            tasks_per_worker: int | None = None, overlap_start: bool = False,
            **options: Any) -> ExtractionResult:
    """Extract a one-hidden-layer ReLU network from query access.

    Parameters
    ----------
    oracle : Oracle, callable, ReluNetwork or path
        Anything answering ``X (n, d) float64 -> (n, m)`` or ``(n,)``.
    input_dim : int
        d. Required for plain callables; checked against the oracle otherwise.
    seed : int
        Every random choice derives from it: a run is reproducible from its seed.
    budget : int, optional
        Hard cap on rows sent to the oracle. When it runs out, the best model so far is
        returned with ``certified=False`` and ``stop_reason="budget"``.
    config : ExtractConfig, optional
    workers : int, optional
        Number of Ray workers (None or 1 with no ``address``: in-process).
    address : str, optional
        Ray cluster address (``"auto"``, ``"ray://host:10001"``); implies Ray.
    tasks_per_worker : int, optional
        Tasks each Ray worker runs at once (threads sharing its oracle client, whose small
        queries ride in shared requests). Default: an HTTP oracle's ``max_in_flight`` up to 8,
        else 1. Only with Ray (``workers`` > 1 or ``address``).
    overlap_start : bool
        Ray only, without a budget, when Ray is not initialised yet: run the first tasks in
        this process while Ray and its workers start, then hand over (``distextract extract`` does; the rows asked are the
        same).
    progress : callable, optional
        Called with a dict of counters after each phase.
    output : {"auto", "logits", "softmax"}
        What the oracle answers. ``"auto"`` (default): read from the answers of the run's first
        request (rows of values in [0, 1] summing to 1: softmax, else logits;
        :mod:`distextract._detect`); float64 logits are sent exactly the requests
        ``"logits"`` sends, probabilities restart the engine as softmax (the rows this wastes
        are counted). ``report["output"]`` records the mode, the answers' number format, the
        evidence, the confidence and the extra rows. ``"logits"``: any real outputs.
        ``"softmax"``: class probabilities (m >= 2); the engine works
        on centred log-probabilities ``log p - mean(log p)``, which are piecewise linear, and
        the returned model's :meth:`~ReluNetwork.predict_proba` gives the probabilities
        (``predict`` gives the centred logits). Lines are kept shorter (``line_reach`` 8
        unless given) so that no class probability underflows to 0 along them.
    **options
        Overrides of :class:`ExtractConfig` fields, e.g. ``validation_points=512``.

    Returns
    -------
    ExtractionResult
    """
    cfg = config or ExtractConfig()
    if options:
        cfg = cfg.updated(**options)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if workers is not None:
        workers = check_positive_int("workers", workers)
    distributed = address is not None or (workers is not None and workers > 1)
    executor_options: dict[str, Any] = {}
    if tasks_per_worker is not None:
        tasks_per_worker = check_positive_int("tasks_per_worker", tasks_per_worker)
        if not distributed:
            raise ConfigError(
                f"tasks_per_worker={tasks_per_worker} needs Ray workers: pass workers=N (N > 1) "
                f"or address=; an in-process run has no workers")
        executor_options["tasks_per_worker"] = tasks_per_worker
    if overlap_start and distributed:
        executor_options["overlap_start"] = True
    if output not in OUTPUT_MODES:
        raise ConfigError(f"output must be 'auto', 'logits' or 'softmax', got {output!r}")
    orc = as_oracle(oracle, input_dim)
    d = orc.input_dim
    if budget is not None:
        budget = check_positive_int("budget", budget)
        need = _min_budget(d)
        if budget < need:
            raise ConfigError(
                f"budget={budget} rows is too small to extract anything from a d={d} oracle: "
                f"the precision probe and one pair of region Jacobians need at least {need} rows")
    detection, unmetered = forced(output), 0
    if output == "auto" and distributed:
        detection, orc, unmetered = detect_first(orc, cfg, int(seed))
        output = detection.mode
    softmax_cfg = cfg
    if "line_reach" not in options and config is None:
        softmax_cfg = cfg.updated(line_reach=SOFTMAX_LINE_REACH)
    if output == "softmax":
        orc, cfg = SoftmaxLogitOracle(orc), softmax_cfg
    n_val = cfg.validation_points
    if budget is not None:
        n_val = min(n_val, budget // 10)
    t0 = time.perf_counter()
    try:
        if distributed:
            from .distributed import run_distributed

            # rows output="auto" sent from this process before the workers started
            left = None if budget is None else budget - unmetered
            eng, queries, extra = run_distributed(orc, d, cfg, int(seed), left, workers or 2,
                                                  address, progress, n_val, **executor_options)
            queries += unmetered
        elif output == "auto":
            def run_engine(ex, softmax: bool):
                return Coordinator(ex, d, softmax_cfg if softmax else cfg, int(seed), progress,
                                   1, n_val).run()

            eng, queries, detection = run_detecting(orc, budget, run_engine)
            output, extra = detection.mode, {}
            cfg = softmax_cfg if output == "softmax" else cfg
        else:
            counting = CountingOracle(orc, budget)
            ex = LocalExecutor(counting)
            eng = Coordinator(ex, d, cfg, int(seed), progress, 1, n_val).run()
            queries, extra = counting.queries, {}
    except TargetMismatch as exc:
        raise with_hint(exc, detection) from None
    wall = time.perf_counter() - t0
    model = eng.model.with_metadata(seed=int(seed), queries=int(queries), output=output,
                                    certified=bool(eng.certified))
    k = model.hidden_dim
    report = {
        "input_dim": d, "output_dim": model.output_dim, "hidden_found": k,
        "queries": int(queries),
        "queries_per_neuron_floor": (queries / (k * (d + 1))) if k else None,
        "certified": bool(eng.certified), "stop_reason": eng.stop_reason,
        "target_rel_l2": eng.target_rel_l2,
        "validation": {"points": int(n_val), "rel_l2": eng.val_rel_l2,
                       "max_abs": eng.val_max_abs},
        "precision": {"relative_noise": eng.noise,
                      "stencil_crossing_rate": eng.crossing_rate},
        "output": detection.to_dict(),
        "verdict": (f"{eng.verdict} — {sigmoid_hint(detection)}"
                    if eng.verdict and sigmoid_hint(detection) else eng.verdict),
        "refinement": eng.refinement,
        "finishing": eng.finishing,
        "derived": eng.derived,
        "counters": eng.counters,
        # imprecise answers: the held-out check rows near every hyperplane and the neurons
        # they contradict (engine.certificate); None for float64 answers
        "certificate": (None if eng.certificate is None else
                        {k: v for k, v in eng.certificate.items() if k != "uncertain"}),
        "uncertain": None if eng.certificate is None else eng.certificate["uncertain"],
        # imprecise answers: whether the best affine map replaced a model it beat
        "affine_fallback": eng.affine_fallback,
        "lines": len(eng.lines), "rounds": eng.rounds, "wall_seconds": wall,
        "seed": int(seed), "config": cfg.to_dict(),
    }
    report.update(extra)
    logger.info("extracted %d neurons with %d queries (certified=%s)", k, queries,
                eng.certified)
    return ExtractionResult(model=model, queries=int(queries), certified=bool(eng.certified),
                            stop_reason=eng.stop_reason, val_rel_l2=eng.val_rel_l2,
                            val_max_abs=eng.val_max_abs, report=report, engine=eng)
