"""Extraction of an HTTP oracle into a run directory (what ``distextract extract`` and
``distextract demo`` run).

:func:`extract_to_run_dir` builds the HTTP client, journals every paid answer, runs
:func:`distextract.extract` in-process or on Ray workers, and writes the run directory:
``model.arrow``, ``neurons.arrow``, ``kinks.arrow``, ``lines.arrow`` (:mod:`distextract.rundir`)
and ``report.json``, the run's report::

    {"run": {...},                  url (redacted), input_dim, seed, workers, resumed
     "queries": {...},              rows paid / answered / refused / from the journal, requests,
                                    retries and HTTP statuses, summed over every HTTP client
     "limits": {...},               requests/s, rows/s, rows per request; the effective rows/s
     "throughput": {...},           rows/s achieved during the extraction and its share of the limit
     "timeline": [...],             (elapsed s, rows paid, phase) at each engine event
     "fidelity_estimate": {...},    validation rel L2 / max abs on the run's own queries
     "wall_seconds": float,
     "extraction": {...}}           ExtractionResult.report (rounds, lines, precision, ...)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError
from ._ratelimit import PACED_SWITCH_INTERVAL_S, limit_rows_per_s

logger = logging.getLogger(__name__)

_HTTP_COUNTERS = ("rows_paid", "rows_answered", "rows_refused", "requests")


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`extract_to_run_dir` returns.

    Attributes
    ----------
    result : ExtractionResult
    report : dict
        The content of ``report.json`` (module docstring).
    out_dir : str
    """

    result: Any
    report: dict
    out_dir: str


class _Progress:
    """Engine progress callback: records a timeline and drives the live display (if any)."""

    def __init__(self, display: Any, distributed: bool) -> None:
        self.display = display
        self.distributed = distributed
        self.timeline: list[dict] = [{"elapsed": 0.0, "queries": 0, "phase": "start"}]

    def __call__(self, info: dict) -> None:
        elapsed = float(info.get("elapsed", 0.0))
        queries = int(info.get("queries", 0))
        self.timeline.append({"elapsed": elapsed, "queries": queries,
                              "phase": str(info.get("phase", ""))})
        if self.display is None:
            return
        self.display(info)
        polled = info.get("distributed") or {}
        if self.distributed and polled:
            self.display.update(**polled)
        else:
            prev = self.timeline[-2]
            dt = elapsed - prev["elapsed"]
            rows_per_s = (queries - prev["queries"]) / dt if dt > 0 else 0.0
            self.display.update(paid=queries, rows_per_s=rows_per_s, elapsed=elapsed)


def _sum_http(stats: list[dict]) -> dict:
    """Counters of several HTTP clients added up."""
    out: dict[str, Any] = {key: 0 for key in _HTTP_COUNTERS}
    retries: Counter = Counter()
    statuses: Counter = Counter()
    for s in stats:
        for key in _HTTP_COUNTERS:
            out[key] += int(s.get(key, 0))
        retries.update(s.get("retries", {}))
        statuses.update(s.get("statuses", {}))
    out["retries"] = dict(sorted(retries.items()))
    out["statuses"] = dict(sorted(statuses.items()))
    return out


def _write_json(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, default=float)
    os.replace(tmp, path)


def extract_to_run_dir(url: str, input_dim: int, out_dir: str, *,
                       api_key_env: str | None = None, budget: int | None = None,
                       rate: float | None = None, rows_rate: float | None = None,
                       batch_size: int = 64, max_in_flight: int = 8, timeout: float = 30.0,
                       retries: int = 8, seed: int = 0, resume: bool = False, workers: int = 1,
                       address: str | None = None, show_progress: bool | None = None,
                       echo: Callable[[str], None] | None = None, output: str = "auto",
                       on_mismatch: str = "raise", options: dict | None = None,
                       discover_rate: bool = True) -> RunOutcome:
    """Extract the network behind ``url`` into the run directory ``out_dir``.

    Parameters
    ----------
    url : str
        Endpoint of the oracle (DESIGN.md section 4).
    input_dim : int
        d.
    out_dir : str
        Run directory (created; ``resume=True`` continues the run found there).
    api_key_env : str, optional
        Name of the environment variable holding the API key.
    budget, rate, rows_rate, batch_size, max_in_flight, timeout, retries
        :class:`~distextract.HTTPOracle` settings (``batch_size`` is its ``max_batch``).
    seed : int
    resume : bool
    workers : int
        1: in-process; more: Ray workers under one shared rate limit.
    address : str, optional
        Ray cluster address.
    show_progress : bool, optional
        Draw the one-line live display on stderr; default: when stderr is a terminal.
    echo : callable, optional
        Receives user-facing messages (e.g. how many journaled rows a resumed run found).
    output, on_mismatch
        As for :func:`distextract.extract`.
    discover_rate : bool
        Without ``rate`` and ``rows_rate``: discover the server's requests/s limit from its
        429s (:class:`~distextract._ratelimit.Pace`), shared by every worker.
    options : dict, optional
        :class:`~distextract.ExtractConfig` overrides (CLI ``--config KEY=VALUE``); recorded
        in ``run.json``, so a resumed run must give the same.

    Returns
    -------
    RunOutcome

    Raises
    ------
    DistextractError
        From the oracle or the extraction (what was paid stays in the journal: see
        :func:`journal_hint`).
    """
    from ._extract import extract as run_extract
    from ._http import HTTPOracle
    from ._journal import JournaledOracle, journal_dir, prepare_run_dir
    from .engine._config import ExtractConfig
    from .rundir import write_run_outputs

    options = dict(options or {})
    if "on_mismatch" in options:
        raise ConfigError("on_mismatch is an argument of its own (CLI: --on-mismatch), not a "
                          "config option here")
    cfg = ExtractConfig().updated(**options)
    t0 = time.perf_counter()
    distributed = address is not None or workers > 1
    limit = limit_rows_per_s(rate, rows_rate, batch_size)
    if show_progress is None:
        show_progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    display = None
    if show_progress:
        from .distributed.progress import ProgressDisplay

        display = ProgressDisplay(input_dim=input_dim, limit_rows_per_s=limit, budget=budget)
    progress = _Progress(display, distributed)

    http = HTTPOracle(url, input_dim, api_key_env=api_key_env, max_batch=batch_size, rate=rate,
                      rows_rate=rows_rate, max_in_flight=max_in_flight, timeout=timeout,
                      retries=retries, budget=budget, seed=seed, discover_rate=discover_rate)
    oracle = None
    try:
        info = prepare_run_dir(out_dir, oracle=http.describe(), input_dim=input_dim, seed=seed,
                               config={"extract": cfg.to_dict()}, resume=resume)
        oracle = JournaledOracle(http, journal_dir(out_dir), "main")
        if resume and oracle.rows_loaded:
            oracle.verify(1)
            if echo is not None:
                echo(f"Resuming: {oracle.rows_loaded} answered rows in the journal")
        switch = sys.getswitchinterval()
        if limit is not None or discover_rate:  # paced senders: wake them on time
            sys.setswitchinterval(min(switch, PACED_SWITCH_INTERVAL_S))
        try:
            result = run_extract(oracle, input_dim=input_dim, seed=seed, budget=budget,
                                 workers=workers, address=address, progress=progress,
                                 overlap_start=True,
                                 output=output, on_mismatch=on_mismatch, **options)
        finally:
            sys.setswitchinterval(switch)
            if display is not None:
                display.close()
        # model.arrow, neurons.arrow, kinks.arrow, lines.arrow (report.json is replaced below
        # by the run's report, which holds the extraction report under "extraction").
        write_run_outputs(out_dir, result)
        dist = result.report.get("distributed") or {}
        clients = [http.stats()] + [s for s in (dist.get("http") or []) if s]
        http_stats = _sum_http(clients)
        from_journal = oracle.rows_from_journal + int(dist.get("rows_from_journal") or 0)
        run_s = (dist.get("timing") or {}).get("run_s") or result.report.get("wall_seconds")
        rows_per_s = result.queries / run_s if run_s else None
        timeline = list(progress.timeline)
        if run_s:
            timeline.append({"elapsed": run_s, "queries": result.queries, "phase": "end"})
        report = {
            "run": {"url": http.describe()["url"], "input_dim": input_dim, "seed": seed,
                    "workers": workers, "address": address,
                    "created": info.get("created"), "resumed": resume},
            "queries": {
                "rows": result.queries,
                "paid": http_stats["rows_paid"],
                "answered": http_stats["rows_answered"],
                "refused": http_stats["rows_refused"],
                "from_journal": from_journal,
                "requests": http_stats["requests"],
                "retries": http_stats["retries"],
                "statuses": http_stats["statuses"],
            },
            "limits": {"requests_per_s": rate, "rows_per_s": rows_rate,
                       "rows_per_request": batch_size, "effective_rows_per_s": limit},
            "throughput": {"seconds": run_s, "rows_per_s": rows_per_s,
                           "utilisation": (rows_per_s / limit) if (rows_per_s and limit)
                           else None},
            "timeline": timeline,
            "fidelity_estimate": {"rel_l2": result.val_rel_l2, "max_abs": result.val_max_abs,
                                  "certified": result.certified,
                                  "stop_reason": result.stop_reason},
            "wall_seconds": time.perf_counter() - t0,
            "extraction": result.report,
        }
        _write_json(os.path.join(out_dir, "report.json"), report)
        logger.info("run directory %s written", out_dir)
    finally:
        (oracle or http).close()
    return RunOutcome(result, report, out_dir)


def journal_hint(out_dir: str) -> str:
    """The sentence added to an error of a run: what was paid is kept, how to continue."""
    from ._journal import journal_dir

    return (f"answers already paid are journaled in {journal_dir(out_dir)}; rerun with --resume "
            f"to continue without paying for them again")


__all__ = ["RunOutcome", "extract_to_run_dir", "journal_hint", "limit_rows_per_s"]
