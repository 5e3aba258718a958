"""``distextract demo``: the whole pipeline on this machine, with nothing else running.

1. Make a random target network (``targets.random_network``), saved as ``target.arrow``.
2. Serve it behind a local HTTP oracle (:func:`distextract.serve.start_server`, loopback) with
   latency, a requests/s limit (429 above it) and a rows-per-request limit (413 above it).
3. Extract it through that API with Ray workers sharing the rate limit (or in-process), the
   way ``distextract extract`` does, into a run directory (journal, model, neurons, kinks,
   lines, report).
4. Compare the extracted model with the target (:func:`distextract.evaluate_fidelity`), write
   the report plots (:mod:`distextract.report`) and return a summary.

The defaults (d=32, k=64, m=4; 20 ms latency, 40 requests/s of at most 16 rows) finished in
16 s on 2 cores in a fresh virtual environment (33 s on a busy machine), much of it starting
and stopping Ray.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._detect import describe_record
from ._errors import ConfigError

logger = logging.getLogger(__name__)

#: Marker file of a directory made by the demo (only such a directory is ever replaced).
DEMO_FILE = "demo.json"
DEFAULT_OUT = "distextract-demo"


@dataclass(frozen=True)
class DemoSettings:
    """Settings of :func:`run_demo` (the ``distextract demo`` options).

    Attributes
    ----------
    input_dim, hidden, outputs : int
        d, k, m of the random target.
    seed : int
        Seed of the target and of the extraction.
    workers : int
        Ray workers; ignored with ``no_ray``.
    rate : float
        The API's limit in requests/s (server and client use the same).
    max_batch : int
        Most rows per request (the server answers 413 above it).
    latency_ms : float
        Delay of every answer.
    no_ray : bool
        Extract in-process, without Ray.
    fidelity_points : int
        Fresh N(0, I) points of the final comparison.
    """

    input_dim: int = 32
    hidden: int = 64
    outputs: int = 4
    seed: int = 0
    workers: int = 2
    rate: float = 40.0
    max_batch: int = 16
    latency_ms: float = 20.0
    no_ray: bool = False
    fidelity_points: int = 10_000


def _prepare_out(out_dir: str, echo: Callable[[str], None]) -> None:
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.exists(os.path.join(out_dir, DEMO_FILE)):
            raise ConfigError(f"{out_dir} exists and was not made by the demo; choose another "
                              f"directory with --out (nothing was deleted)")
        echo(f"Replacing the previous demo run in {out_dir}")
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)


def run_demo(out_dir: str | os.PathLike = DEFAULT_OUT, settings: DemoSettings | None = None,
             echo: Callable[[str], None] = print, show_progress: bool | None = None) -> dict:
    """Run the demo into ``out_dir``; returns the summary (also saved as ``demo.json``).

    Parameters
    ----------
    out_dir : path
        Run directory; a directory made by an earlier demo is replaced, any other non-empty
        directory is refused.
    settings : DemoSettings, optional
    echo : callable
        Receives the progress messages (the CLI passes ``click.echo``).
    show_progress : bool, optional
        Live one-line display on stderr; default: when stderr is a terminal.

    Returns
    -------
    dict
        ``target``, ``oracle``, ``queries``, ``throughput``, ``neurons``, ``fidelity``,
        ``timing``, ``run_dir``, ``plots``.
    """
    from . import targets
    from ._runner import extract_to_run_dir
    from .fidelity import evaluate_fidelity
    from .report import plots_available, plots_skipped_note, write_report
    from .serve import start_server

    s = settings or DemoSettings()
    out_dir = os.fspath(out_dir)
    t0 = time.perf_counter()
    _prepare_out(out_dir, echo)
    with open(os.path.join(out_dir, DEMO_FILE), "w", encoding="utf-8") as fh:
        json.dump({"settings": asdict(s)}, fh, indent=2)

    target = targets.random_network(s.input_dim, s.hidden, s.outputs, seed=s.seed)
    target_path = os.path.join(out_dir, "target.arrow")
    target.save(target_path)
    echo(f"Target: a random ReLU network, d={s.input_dim} inputs, k={s.hidden} hidden neurons, "
         f"m={s.outputs} outputs (seed {s.seed}), saved as {target_path}")

    workers = 1 if s.no_ray else s.workers
    with start_server(target, latency_ms=s.latency_ms, rate=s.rate,
                      max_batch=s.max_batch) as server:
        limit = s.rate * s.max_batch
        echo(f"Oracle: {server.url} on loopback, {s.latency_ms:g} ms per answer, "
             f"{s.rate:g} requests/s of at most {s.max_batch} rows "
             f"(= {limit:,.0f} rows/s; 429 above it)")
        how = "in-process (no Ray)" if workers == 1 else f"{workers} Ray workers"
        echo(f"Extracting with {how} into {out_dir} ...")
        t_ex = time.perf_counter()
        outcome = extract_to_run_dir(server.url, s.input_dim, out_dir, rate=s.rate,
                                     batch_size=s.max_batch, seed=s.seed, workers=workers,
                                     show_progress=show_progress, echo=echo)
        extract_s = time.perf_counter() - t_ex
        served = server.stats()
    result, report = outcome.result, outcome.report
    fid = evaluate_fidelity(result.model, target, n_points=s.fidelity_points, seed=s.seed + 1)
    _, paths = write_report(out_dir)
    tp = report["throughput"]
    dist = result.report.get("distributed") or {}
    summary: dict[str, Any] = {
        "target": {"input_dim": s.input_dim, "hidden": s.hidden, "outputs": s.outputs,
                   "seed": s.seed, "path": target_path},
        "oracle": {"url": server.url, "latency_ms": s.latency_ms, "rate": s.rate,
                   "max_batch": s.max_batch, "limit_rows_per_s": limit,
                   "rows_served": served["rows_served"], "requests": served["requests"],
                   "statuses": served["statuses"]},
        # Rows the API answered (what it would bill); result.queries also counts a row the
        # engine asked twice when the journal served the repeat in-process.
        "queries": {"rows": served["rows_served"], "requests": served["requests"],
                    "per_neuron_floor": served["rows_served"] / (s.hidden * (s.input_dim + 1)),
                    "extractor_rows": result.queries},
        "throughput": {"rows_per_s": tp["rows_per_s"], "seconds": tp["seconds"],
                       "limit_rows_per_s": limit,
                       "utilisation": (tp["rows_per_s"] / limit) if tp["rows_per_s"] else None},
        "neurons": {"found": result.model.hidden_dim, "true": s.hidden,
                    "matched": fid.matched_neurons, "live": fid.live_neurons,
                    "spurious": fid.spurious_neurons},
        "fidelity": {"points": fid.n_points, "rel_l2": fid.rel_l2,
                     "max_abs_error": fid.max_abs_error,
                     "argmax_agreement": fid.argmax_agreement},
        "output": result.report.get("output"),
        "certified": result.certified, "stop_reason": result.stop_reason,
        "workers": workers,
        "timing": {"wall_s": time.perf_counter() - t0, "extract_s": extract_s,
                   "ray_start_s": (dist.get("timing") or {}).get("ray_start_s")},
        "run_dir": out_dir, "plots": [p for n, p in paths.items() if n.endswith(".png")],
        # why there are no plots, and how to get them (matplotlib is the "plots" extra)
        "plots_skipped": None if plots_available() else plots_skipped_note(out_dir),
    }
    with open(os.path.join(out_dir, DEMO_FILE), "w", encoding="utf-8") as fh:
        json.dump({"settings": asdict(s), "summary": summary}, fh, indent=2, default=float)
    return summary


def format_summary(summary: dict) -> str:
    """The summary :func:`run_demo` returns, as the lines the CLI prints."""
    q, tp, n, f = summary["queries"], summary["throughput"], summary["neurons"], summary["fidelity"]
    o, t = summary["oracle"], summary["timing"]
    refused = o["statuses"].get("429", 0)
    floor = f" = {q['per_neuron_floor']:.2f} × k(d+1) for the true k" if q.get(
        "per_neuron_floor") else ""
    util = f" ({100 * tp['utilisation']:.0f}% of it)" if tp.get("utilisation") else ""
    agree = ("" if f["argmax_agreement"] is None
             else f", argmax agreement {100 * f['argmax_agreement']:.2f}%")
    ray = f", Ray start {t['ray_start_s']:.1f} s" if t.get("ray_start_s") else ""
    lines = [
        "Summary",
        (f"  queries     {q['rows']:,} rows paid in {q['requests']:,} requests{floor}; "
         f"{refused} answered 429 (rate limited)"),
        (f"  throughput  {tp['rows_per_s']:,.0f} rows/s over {tp['seconds']:.1f} s of extraction; "
         f"limit {tp['limit_rows_per_s']:,.0f} rows/s{util}"),
        (f"  neurons     {n['found']} found / {n['true']} true ({n['matched']} of {n['live']} "
         f"live matched, {n['spurious']} spurious)"),
        (f"  fidelity    relative L2 {f['rel_l2']:.2g}, max abs error {f['max_abs_error']:.2g}"
         f"{agree} on {f['points']:,} fresh N(0, I) points"),
        f"  answers     {describe_record(summary.get('output'))}",
        f"  result      certified={summary['certified']} (stop: {summary['stop_reason']})",
        f"  wall time   {t['wall_s']:.1f} s (extraction {t['extract_s']:.1f} s{ray})",
        (f"  run dir     {summary['run_dir']}: model.arrow, report.json, summary.txt, "
         + (f"{len(summary['plots'])} PNG plots" if not summary.get("plots_skipped")
            else f"no plots ({summary['plots_skipped']})")),
        "Next:",
        f"  distextract report {summary['run_dir']}",
        f"  distextract export {os.path.join(summary['run_dir'], 'model.arrow')} --to onnx",
        (f"  distextract evaluate {os.path.join(summary['run_dir'], 'model.arrow')} "
         f"--target {summary['target']['path']}"),
    ]
    return "\n".join(lines)


__all__ = ["DEFAULT_OUT", "DemoSettings", "format_summary", "run_demo"]
