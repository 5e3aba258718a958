"""``output="auto"``: what an oracle answers, read from answers the run pays anyway.

The answers of the run's first request (in-process: the engine's precision probe and the first
line's segment ends, :func:`distextract.engine.opening.first_request`; on Ray workers: the
probe's 29 rows, sent from the driver before the workers start) decide the output mode:

- **softmax**: two or more columns, every value in [0, 1], every row summing to 1 within the
  answers' rounding (at least :data:`PROB_SUM_TOL`) -> the engine works on centred
  log-probabilities (:class:`~distextract.SoftmaxLogitOracle`);
- **logits**: anything else (real-valued outputs). One column of values in [0, 1], or several
  in [0, 1] that do not sum to 1, may be sigmoid probabilities: they are taken as logits with
  low confidence, and the verdict of a run that then finds no sharp kinks says so
  (:func:`sigmoid_hint`).

The answers' number format is read with the engine's own precision functions
(:func:`~distextract.engine.precision.decimal_quantum`,
:func:`~distextract.engine.precision.binary_rounding`): ``decimals:N``, ``float32``, ``float16``,
``bfloat16`` or ``float64``. How the engine then sets its steps and tolerances from the
measured precision is unchanged (``report["precision"]``).

What it costs (``OutputDetection.extra_rows``):

- in-process, logits: nothing; the first request goes out as it is and everything passes
  through (:class:`DetectingOracle`): the same requests, rows and model as ``"logits"``;
- in-process, softmax: the engine restarts with softmax settings (shorter lines); the first
  request's answers are served again where it asks the same rows (the probe, each row once,
  :class:`PrepaidOracle`); its other rows (the long first line's ends) are paid for nothing;
- Ray workers: the probe's 29 rows go first from the driver (one request more than
  ``"logits"``, the same rows); a journaled oracle journals them and the workers are served
  them from the journal, a picklable oracle travels with them (:class:`PrepaidOracle`); only
  an HTTP client without a journal pays them again on the workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ._oracle import CountingOracle, Oracle

logger = logging.getLogger(__name__)

#: Values of ``output=``: detect, or force one mode.
OUTPUT_MODES = ("auto", "logits", "softmax")
#: Rows of class probabilities sum to 1 within this, or within m times their rounding if
#: coarser (float32: m·2^-24; N decimals: m·10^-N / 2).
PROB_SUM_TOL = 1e-6
#: Binary formats by the relative half-ulp :func:`binary_rounding` returns.
_BINARY = {2.0 ** -24: "float32", 2.0 ** -11: "float16", 2.0 ** -8: "bfloat16"}


@dataclass(frozen=True)
class OutputDetection:
    """What the answers were taken to be (``report["output"]``).

    Attributes
    ----------
    mode : {"logits", "softmax"}
        The mode the run used.
    detected : bool
        True when ``output="auto"`` read it from the answers; False when the caller forced it.
    answers : str or None
        Number format of the answers: ``"float64"``, ``"float32"``, ``"float16"``,
        ``"bfloat16"`` or ``"decimals:N"`` (None when forced: not looked at).
    confidence : {"high", "low"} or None
        ``"low"`` when the answers could also be read the other way (sigmoid-like values).
    evidence : str
        What was observed, in words.
    rows : int
        Answers the detection read: the first request's rows (0 when forced).
    extra_rows : int
        Rows paid for the detection alone (0 when the engine's probe reused its answers).
    """

    mode: str
    detected: bool
    answers: str | None = None
    confidence: str | None = None
    evidence: str = ""
    rows: int = 0
    extra_rows: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for summaries: ``softmax probabilities, float64 (detected ...)``."""
        what = "softmax probabilities" if self.mode == "softmax" else "logits (real values)"
        if not self.detected:
            return f"{what} (forced with output={self.mode!r})"
        return (f"{what}, {self.answers} (detected from the {self.rows} answers of the first "
                f"request, {self.confidence} confidence: {self.evidence}; {self.extra_rows} "
                f"extra rows)")


def describe_record(record: dict | None) -> str:
    """:meth:`OutputDetection.describe` of a ``report["output"]`` dict (as read back from a
    report.json; only the mode if it holds other keys)."""
    if not isinstance(record, dict) or not record.get("mode"):
        return "not recorded"
    try:
        return OutputDetection(**record).describe()
    except TypeError:  # a report.json written by another version
        return str(record["mode"])


def forced(mode: str) -> OutputDetection:
    """The record of a mode the caller chose."""
    return OutputDetection(mode=mode, detected=False, evidence=f"output={mode!r} given")


def answer_format(Y: np.ndarray) -> tuple[str, float]:
    """The number format of answers ``Y`` and their absolute rounding at size 1.

    Returns ``("decimals:N", 10^-N / 2)``, ``("float32", 2^-24)`` (float16, bfloat16 alike)
    or ``("float64", 2^-53)``.
    """
    from .engine.precision import binary_rounding, decimal_quantum

    quantum = decimal_quantum(Y)
    if quantum is not None:
        return f"decimals:{int(round(-np.log10(quantum)))}", quantum / 2
    ulp = binary_rounding(Y)
    if ulp is not None:
        return _BINARY.get(ulp, "binary"), ulp
    return "float64", 2.0 ** -53


def detect_output(Y: np.ndarray) -> OutputDetection:
    """Read the output mode and number format from answers ``Y`` of shape (n, m).

    Parameters
    ----------
    Y : ndarray of shape (n, m)
        Answers of distinct inputs (the precision probe's).

    Returns
    -------
    OutputDetection
        ``extra_rows`` 0; the caller sets it.
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, m = Y.shape
    fmt, rounding = answer_format(Y)
    finite = bool(np.all(np.isfinite(Y)))
    in_unit = finite and bool(np.all((Y >= 0.0) & (Y <= 1.0)))
    if m >= 2 and in_unit:
        tol = max(PROB_SUM_TOL, m * rounding)
        off = float(np.max(np.abs(Y.sum(axis=1) - 1.0)))
        if off <= tol:
            return OutputDetection(
                "softmax", True, fmt, "high",
                f"every row of {m} values in [0, 1], summing to 1 within {off:.2g} "
                f"(tolerance {tol:.2g})", n)
        return OutputDetection(
            "logits", True, fmt, "low",
            f"{m} values per row in [0, 1] whose rows do not sum to 1 (off by up to "
            f"{off:.2g}): independent sigmoid probabilities, or real outputs in [0, 1]", n)
    if m == 1 and in_unit:
        # (closed: a sigmoid far out on a line rounds to exactly 1.0 in float64)
        return OutputDetection(
            "logits", True, fmt, "low",
            "one column of values in [0, 1]: a sigmoid probability, or a real output in "
            "[0, 1]", n)
    if not finite:
        return OutputDetection("logits", True, fmt, "low", "NaN or Inf among the answers", n)
    lo, hi = float(np.min(Y)), float(np.max(Y))
    return OutputDetection("logits", True, fmt, "high",
                           f"values outside [0, 1] (from {lo:.3g} to {hi:.3g})", n)


def sigmoid_hint(detection: OutputDetection | None) -> str | None:
    """What to add to a "no sharp kinks" verdict when the answers looked like sigmoids."""
    if detection is None or not detection.detected or detection.confidence != "low":
        return None
    return (f"output='auto' read the answers as logits, but they look like probabilities "
            f"({detection.evidence}); distextract takes logits or softmax probabilities: "
            f"wrap the oracle to answer log(p / (1 - p)) per column")


def with_hint(exc: Exception, detection: OutputDetection | None) -> Exception:
    """``exc`` itself, or for a "not a ReLU network" verdict on answers that looked like
    sigmoid probabilities, the same verdict with :func:`sigmoid_hint` added."""
    from ._errors import NonDeterministicOracle, TargetMismatch

    hint = sigmoid_hint(detection)
    if (hint is None or not isinstance(exc, TargetMismatch)
            or isinstance(exc, NonDeterministicOracle)):
        return exc
    return TargetMismatch(f"{exc.observation} — {hint}", exc.queries)


def probe_rows(d: int, cfg, seed: int) -> np.ndarray:
    """The rows of the engine's precision probe for this run (``(29, d)``)."""
    from .engine.precision import probe_points
    from .engine.seeds import Streams

    return probe_points(Streams.from_seed(seed).probe(), d, cfg.input_scale)


class SoftmaxDetected(Exception):
    """Internal: the first answers are probabilities; the run restarts as softmax.

    Not a :class:`~distextract.DistextractError`: nothing but :func:`run_detecting` catches it.
    """

    def __init__(self, detection: OutputDetection, X: np.ndarray, Y: np.ndarray) -> None:
        super().__init__("softmax answers detected")
        self.detection, self.X, self.Y = detection, X, Y


class DetectingOracle(Oracle):
    """Sends the first request as it is and reads the output mode from its answers.

    Logits: every answer passes through unchanged, so the run asks exactly what
    ``output="logits"`` asks, in the same requests. Softmax: raises :class:`SoftmaxDetected`
    with the rows paid, for :func:`run_detecting` to restart the engine as softmax.
    """

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner
        self.input_dim = inner.input_dim
        self.output_dim = inner.output_dim
        self.max_batch = inner.max_batch
        self.detection: OutputDetection | None = None

    def _query(self, X: np.ndarray) -> np.ndarray:
        Y = self.inner.query(X)
        if self.detection is None:
            try:
                A = np.asarray(Y, dtype=np.float64)
            except (TypeError, ValueError):
                return Y  # the caller's answer check names the problem
            A = A[:, None] if A.ndim == 1 else A
            if A.ndim != 2 or A.shape[0] != X.shape[0]:
                return Y  # (likewise)
            self.detection = detect_output(A)
            if self.detection.mode == "softmax":
                raise SoftmaxDetected(self.detection, X.copy(), A)
        return Y

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        return self.inner.describe()


class PrepaidOracle(Oracle):
    """Serves rows already paid (each once) and asks ``inner`` for the rest.

    ``queries`` and ``remaining`` are those of ``inner`` (a
    :class:`~distextract.CountingOracle`): a served row is neither counted again nor charged
    to the budget. Rows are matched by their exact bytes, as in the journal.

    Parameters
    ----------
    inner : Oracle
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, m)
        Answers at ``X``, as ``inner`` would give them.
    """

    def __init__(self, inner: Oracle, X: np.ndarray, Y: np.ndarray) -> None:
        self.inner = inner
        self.input_dim = inner.input_dim
        self.output_dim = Y.shape[1]
        self.max_batch = inner.max_batch
        X = np.ascontiguousarray(X, dtype=np.float64)
        self._answers = {X[i].tobytes(): np.array(Y[i]) for i in range(X.shape[0])}
        self.served = 0
        self._lock = threading.Lock()

    @property
    def queries(self) -> int:
        return int(getattr(self.inner, "queries", 0))

    @property
    def remaining(self) -> int | None:
        return getattr(self.inner, "remaining", None)

    def _query(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        with self._lock:
            hits = ([self._answers.pop(row.tobytes(), None) for row in X] if self._answers
                    else [None] * X.shape[0])
        ask = [i for i, y in enumerate(hits) if y is None]
        if len(ask) == X.shape[0]:
            return self.inner.query(X)
        self.served += X.shape[0] - len(ask)
        Y = np.empty((X.shape[0], self.output_dim))
        for i, y in enumerate(hits):
            if y is not None:
                Y[i] = y
        if ask:
            Y[ask] = self.inner.query(X[ask])
        return Y

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        return self.inner.describe()

    def __getstate__(self) -> dict:  # shipped to Ray workers (:func:`detect_first`)
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def centred_log_probabilities(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows kept, log P - mean(log P))`` of the rows of ``P`` with no probability at 0
    (what :class:`~distextract.SoftmaxLogitOracle` answers; a row with a 0 has no log)."""
    keep = np.all(P > 0.0, axis=1)
    L = np.log(P[keep])
    return keep, L - L.mean(axis=1, keepdims=True)


def run_detecting(oracle: Oracle, budget: int | None,
                  run_engine: Callable[[Any, bool], Any]) -> tuple[Any, int, OutputDetection]:
    """Run the engine in-process with ``output="auto"``.

    Parameters
    ----------
    oracle : Oracle
        The raw oracle.
    budget : int, optional
    run_engine : callable
        ``run_engine(executor, softmax)`` runs a coordinator over ``executor`` with the
        configuration of that mode and returns its result.

    Returns
    -------
    engine : EngineResult
    queries : int
        Rows sent to ``oracle``.
    detection : OutputDetection
        ``extra_rows``: rows of the first request a softmax restart did not reuse.
    """
    from ._oracle import SoftmaxLogitOracle
    from .engine.tasks import LocalExecutor

    from ._errors import TargetMismatch

    watcher = DetectingOracle(oracle)
    counting = CountingOracle(watcher, budget)
    try:
        eng = run_engine(LocalExecutor(counting), False)
        return eng, counting.queries, watcher.detection or forced("logits")
    except SoftmaxDetected as found:
        first, paid = found, counting.queries
    except TargetMismatch as exc:
        raise with_hint(exc, watcher.detection) from None
    logger.info("output='auto': the answers are class probabilities (%s); restarting as "
                "softmax", first.detection.evidence)
    again = CountingOracle(SoftmaxLogitOracle(oracle), budget)
    again.queries = paid  # the first request: its rows are served from its answers below
    keep, Z = centred_log_probabilities(first.Y)
    top = PrepaidOracle(again, first.X[keep], Z)
    eng = run_engine(LocalExecutor(top), True)
    detection = replace(first.detection, extra_rows=first.X.shape[0] - top.served)
    return eng, again.queries, detection


def detect_first(oracle: Oracle, cfg, seed: int) -> tuple[OutputDetection, Oracle, int]:
    """Ray workers: send the engine's probe rows once from this process and read the output
    mode from their answers, before the workers start.

    A journaled ``oracle`` journals them and the workers are served them from the journal; an
    oracle shipped to the workers as itself (picklable) is wrapped in a
    :class:`PrepaidOracle` that serves them there; an HTTP client without a journal pays them
    again on the workers (``extra_rows``).

    Returns
    -------
    detection : OutputDetection
    oracle : Oracle
        ``oracle``, or a :class:`PrepaidOracle` around it.
    unmetered : int
        Rows paid here that the workers' count will not include.
    """
    from ._http import HTTPOracle
    from ._journal import JournaledOracle

    X = probe_rows(oracle.input_dim, cfg, seed)
    # the checks every answer gets (shape, NaN/Inf), with the same messages
    Y = CountingOracle(oracle).query(X)
    det = detect_output(Y)
    if isinstance(oracle, JournaledOracle):
        return det, oracle, X.shape[0]
    if not isinstance(oracle, HTTPOracle):
        try:
            import cloudpickle

            cloudpickle.dumps(oracle)
        except Exception:  # noqa: BLE001 - not shippable: oracle_spec says so, naming it
            return det, oracle, X.shape[0]
        # the workers count the served rows as paid: this process's request is their payment
        return det, PrepaidOracle(oracle, X, Y), 0
    return replace(det, extra_rows=X.shape[0]), oracle, X.shape[0]


__all__ = ["OUTPUT_MODES", "DetectingOracle", "OutputDetection", "PrepaidOracle",
           "answer_format", "centred_log_probabilities", "describe_record", "detect_first",
           "detect_output", "forced", "probe_rows", "run_detecting", "sigmoid_hint"]
