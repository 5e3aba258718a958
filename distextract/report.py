"""A run directory's report: a short text summary and PNG plots (``distextract report RUN_DIR``).

:func:`write_report` reads what a run wrote (``report.json``, ``model.arrow``, ``kinks.arrow``,
``lines.arrow``, ``neurons.arrow``; schemas in :mod:`distextract.rundir` and
:mod:`distextract._runner`) and writes into the run directory:

``summary.txt``
    The text :func:`summarize` returns: model shape, queries, throughput against the rate
    limit, stop reason and validation error, lines and kinks, neuron confidence.
``kinks.png``
    Every kink found along each probe line, at its position ``t`` on ``x = u + t·v``, marked
    as matched to a neuron of the model, unmatched, or unresolved.
``throughput.png``
    Rows paid over time and rows/s between engine events, against the rate limit.
``validation.png``
    Validation relative L2 error after each probe line, with the target and the neuron count.
``neurons.png``
    Per-neuron confidence: estimated direction error and rank-one residual of the Jacobian jump.

A plot whose data the run directory lacks is still written and says what is missing. Plots
use matplotlib's Agg canvas directly (no pyplot, no display, the caller's backend untouched).
matplotlib is the ``plots`` extra, not a core dependency: without it :func:`write_report` still
writes ``summary.txt``, whose last line says the plots were skipped and how to get them
(:data:`PLOTS_HINT`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np

from ._errors import ConfigError

logger = logging.getLogger(__name__)

#: Files :func:`write_report` writes into the run directory.
PLOTS = ("kinks.png", "throughput.png", "validation.png", "neurons.png")
SUMMARY = "summary.txt"
#: How to get the plots when matplotlib is missing (the ``plots`` extra).
PLOTS_HINT = 'pip install "distextract[plots]"'
#: Resolution of the PNG files.
DPI = 110
#: Values of zero are drawn at this floor on logarithmic axes.
LOG_FLOOR = 1e-17


# ------------------------------------------------------------------------ reading
def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _read_table(path: str) -> Any:
    if not os.path.exists(path):
        return None
    from pyarrow import feather

    try:
        return feather.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise ConfigError(f"cannot read {path}: {exc}") from None


class RunData:
    """What a run directory holds (any part may be missing: None).

    Attributes
    ----------
    run_dir : str
    report : dict or None
        ``report.json`` as written by ``distextract extract`` (the run's report).
    extraction : dict
        The extraction report (``report["extraction"]``, or ``report.json`` itself when it was
        written by :func:`distextract.rundir.write_run_outputs` alone); empty when missing.
    model : ReluNetwork or None
    kinks, lines, neurons : pyarrow.Table or None
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        run_dir = os.fspath(run_dir)
        if not os.path.isdir(run_dir):
            raise ConfigError(f"run directory not found: {run_dir} (give the --out directory "
                              f"of 'distextract extract' or 'distextract demo')")
        self.run_dir = run_dir
        path = lambda name: os.path.join(run_dir, name)
        self.report = _read_json(path("report.json"))
        rep = self.report or {}
        self.extraction: dict = rep.get("extraction", rep) if isinstance(rep, dict) else {}
        self.model = None
        if os.path.exists(path("model.arrow")):
            from ._model import ReluNetwork

            self.model = ReluNetwork.load(path("model.arrow"))
        self.kinks = _read_table(path("kinks.arrow"))
        self.lines = _read_table(path("lines.arrow"))
        self.neurons = _read_table(path("neurons.arrow"))
        if self.report is None and self.model is None and self.kinks is None:
            raise ConfigError(f"{run_dir} holds no run outputs (report.json, model.arrow, "
                              f"kinks.arrow); is it a run directory?")

    def limit_rows_per_s(self) -> float | None:
        """The client-side rate limit in rows/s, if the run had one."""
        rep = self.report or {}
        lim = (rep.get("limits") or {}).get("effective_rows_per_s")
        if lim is None:
            lim = (self.extraction.get("distributed") or {}).get("limit_rows_per_s")
        return float(lim) if lim else None

    def timeline(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(elapsed s, rows paid, source) from the run's timeline, else from its rounds."""
        rep = self.report or {}
        points = rep.get("timeline") or []
        source = "engine events (report.json timeline)"
        if len(points) < 2:
            points = [{"elapsed": 0.0, "queries": 0}] + list(self.extraction.get("rounds") or [])
            source = "probe-line rounds (report.json extraction.rounds)"
        pts = [(p.get("elapsed"), p.get("queries")) for p in points
               if p.get("elapsed") is not None and p.get("queries") is not None]
        if len(pts) < 2:
            return None
        arr = np.array(sorted(pts), dtype=np.float64)
        return arr[:, 0], arr[:, 1], source


def _fmt(value: Any, spec: str = ".3g", none: str = "n/a") -> str:
    if value is None:
        return none
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return none
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------ summary
def summarize(data: RunData) -> str:
    """A short text summary of a run directory."""
    rep = data.report or {}
    ext = data.extraction
    out = [f"Run directory: {data.run_dir}"]
    if data.model is not None:
        m = data.model
        out.append(f"Model: d={m.input_dim} inputs, k={m.hidden_dim} hidden neurons, "
                   f"m={m.output_dim} outputs (model.arrow)")
    else:
        out.append("Model: model.arrow missing")
    # a run directory written by ``write_run_outputs`` alone holds the extraction report,
    # whose "queries" is the row count; ``distextract extract`` writes a dict of counters
    q = rep.get("queries") if isinstance(rep.get("queries"), dict) else {}
    rows = q.get("rows", ext.get("queries"))
    if rows is not None:
        line = f"Queries: {rows:,} rows"
        if q:
            line += (f" ({q.get('paid', 0):,} paid this attempt, {q.get('from_journal', 0):,} "
                     f"from the journal) in {q.get('requests', 0):,} requests")
        ratio = ext.get("queries_per_neuron_floor")
        if ratio is not None:
            line += f"; {ratio:.2f} × k(d+1)"
        out.append(line)
        statuses = q.get("statuses")
        if statuses:
            out.append("HTTP statuses: " + ", ".join(f"{k}: {v:,}" for k, v in statuses.items()))
    if isinstance(ext.get("output"), dict):
        from ._detect import describe_record

        out.append("Answers: " + describe_record(ext["output"]))
    tp = rep.get("throughput") or {}
    limit = data.limit_rows_per_s()
    if tp.get("rows_per_s"):
        line = f"Throughput: {tp['rows_per_s']:,.0f} rows/s over {tp.get('seconds', 0):.1f} s"
        if limit:
            line += f"; limit {limit:,.0f} rows/s ({100 * tp['rows_per_s'] / limit:.0f}% used)"
        out.append(line)
    fid = rep.get("fidelity_estimate") or {}
    reason = fid.get("stop_reason", ext.get("stop_reason"))
    val = ext.get("validation") or {}
    rel = fid.get("rel_l2", val.get("rel_l2"))
    mx = fid.get("max_abs", val.get("max_abs"))
    if reason is not None:
        out.append(f"Stopped: {reason} (validation relative L2 {_fmt(rel)}, max abs error "
                   f"{_fmt(mx)}, target relative L2 {_fmt(ext.get('target_rel_l2'))})")
    out += _certificate_lines(ext)
    if data.lines is not None and data.lines.num_rows:
        kinds = data.lines.column("kind").to_pylist()
        n_k = int(np.sum(data.lines.column("kinks").to_numpy()))
        n_m = int(np.sum(data.lines.column("kinks_matched").to_numpy()))
        polish, sensitive = kinds.count("polish"), kinds.count("sensitive")
        out.append(f"Probe lines: {len(kinds)} ({kinds.count('first')} first, "
                   f"{kinds.count('residual')} residual"
                   + (f", {sensitive} sensitive" if sensitive else "")
                   + (f", {polish} polish" if polish else "")
                   + f"); {n_k:,} kinks, {n_m:,} matched to a neuron of the model")
    if data.neurons is not None and data.neurons.num_rows:
        err = data.neurons.column("err").to_numpy()
        err = err[np.isfinite(err)]
        if err.size:
            out.append(f"Neuron confidence (direction error, rad): median {np.median(err):.2g}, "
                       f"max {np.max(err):.2g}")
    wall = rep.get("wall_seconds", ext.get("wall_seconds"))
    if wall is not None:
        out.append(f"Wall time: {wall:.1f} s")
    return "\n".join(out)


#: Uncertain neurons listed by name in the summary (the rest counted).
SUMMARY_UNCERTAIN = 10


def _certificate_lines(ext: dict) -> list[str]:
    """Imprecise answers: the query bound, the affine fallback, the certificate's check rows
    and the neurons they contradict (``extraction.certificate``, ``extraction.uncertain``)."""
    out = []
    der = ext.get("derived") or {}
    if der.get("query_bound") is not None:
        out.append(f"Query bound: {der['query_bound']:,} rows"
                   + (" (reached: the run stopped there)" if der.get("query_bound_reached")
                      else ""))
    fb = ext.get("affine_fallback") or {}
    if fb.get("taken"):
        out.append(f"Affine fallback: the best affine map replaced the "
                   f"{fb.get('model_neurons')}-neuron model (validation relative L2 "
                   f"{_fmt(fb.get('affine_rel_l2'))} against {_fmt(fb.get('model_rel_l2'))})")
    cert = ext.get("certificate")
    if not isinstance(cert, dict):
        return out
    if not cert.get("checked"):
        out.append("Certificate: not checked (the budget could not hold the check rows): "
                   "not certified")
        return out
    unc = ext.get("uncertain") or []
    out.append(f"Certificate: {cert.get('rows', 0):,} held-out check rows near the "
               f"hyperplanes, worst off by {_fmt(cert.get('worst'))} tolerances; "
               f"{len(unc)} neuron{'s' if len(unc) != 1 else ''} uncertain")
    for u in unc[:SUMMARY_UNCERTAIN]:
        out.append(f"  neuron {u.get('neuron')}: {u.get('reason')}")
    if len(unc) > SUMMARY_UNCERTAIN:
        out.append(f"  ... and {len(unc) - SUMMARY_UNCERTAIN} more (report.json "
                   f"extraction.uncertain)")
    return out


# -------------------------------------------------------------------------- plots
def plots_available() -> bool:
    """Whether matplotlib (the ``plots`` extra) can be imported, so the PNG plots can be drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def plots_skipped_note(run_dir: str) -> str:
    """The sentence that replaces the plots when matplotlib is missing."""
    return (f"not written: matplotlib is not installed; {PLOTS_HINT}, then: "
            f"distextract report {run_dir}")


def _figure(width: float = 8.0, height: float = 5.0) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(f"plots need matplotlib, which is not installed ({exc}); install it "
                          f"with: {PLOTS_HINT}") from None
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _missing(ax: Any, message: str, width: int = 70) -> None:
    import textwrap

    text = "\n".join(textwrap.fill(part, width) for part in message.split("\n"))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, transform=ax.transAxes,
            color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def _no_report(data: RunData, what: str) -> str:
    if data.report is None:
        return "No data: report.json not found in the run directory."
    return f"No data: report.json has {what}."


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=DPI)
    os.replace(tmp, path)
    return path


def plot_kinks(data: RunData, path: str) -> str:
    """Kinks found along each probe line (``kinks.arrow``, ``lines.arrow``)."""
    n_lines = data.lines.num_rows if data.lines is not None else 0
    fig = _figure(8.0, max(4.0, min(9.0, 2.2 + 0.45 * n_lines)))
    ax = fig.add_subplot()
    title = "Kinks found along each probe line"
    if data.kinks is None or data.lines is None:
        missing = [n for n, t in (("kinks.arrow", data.kinks), ("lines.arrow", data.lines))
                   if t is None]
        ax.set_title(title)
        _missing(ax, f"No data: {' and '.join(missing)} not found in the run directory\n"
                     f"('distextract extract' and 'distextract demo' write them).")
        return _save(fig, path)
    lines = data.lines.to_pydict()
    k = data.kinks.to_pydict()
    line_ids = np.asarray(k["line"], dtype=np.int64)
    t = np.asarray(k["t"], dtype=np.float64)
    resolved = np.asarray(k["resolved"], dtype=bool)
    matched = np.array([n is not None for n in k["neuron"]], dtype=bool)
    row_of = {idx: row for row, idx in enumerate(lines["index"])}
    y = np.array([row_of.get(int(i), -1) for i in line_ids], dtype=np.float64)
    for row, reach in enumerate(lines["reach"]):
        ax.plot([-reach, reach], [row, row], color="0.85", lw=6, solid_capstyle="butt",
                zorder=0, label="searched interval" if row == 0 else None)
    groups = [(resolved & matched, "|", 160, "tab:blue", "kink matched to a model neuron"),
              (resolved & ~matched, "x", 40, "tab:red", "kink not explained by the model"),
              (~resolved, "^", 40, "tab:orange", "unresolved kink cluster")]
    for mask, marker, size, color, label in groups:
        if mask.any():
            ax.scatter(t[mask], y[mask], marker=marker, s=size, color=color, label=label,
                       zorder=2, linewidths=1.2)
    # Crossings are heavy-tailed (Cauchy-like, DESIGN.md section 2): linear near 0, log beyond.
    if t.size:
        linthresh = float(10 ** np.ceil(np.log10(max(1.0, np.median(np.abs(t))))))
        ax.set_xscale("symlog", linthresh=linthresh, linscale=2.0)
    ax.set_yticks(range(n_lines))
    ax.set_yticklabels([f"{i} ({kind}, {n} kinks)" for i, kind, n in
                        zip(lines["index"], lines["kind"], lines["kinks"])])
    ax.invert_yaxis()
    ax.set_xlabel("position t on the line x = u + t·v (input units, |v| = 1)"
                  + ("; symlog scale" if t.size else ""))
    ax.set_ylabel("probe line")
    ax.set_title(f"{title}: {t.size:,} kinks on {n_lines} lines")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8,
              frameon=False)
    return _save(fig, path)


def plot_throughput(data: RunData, path: str) -> str:
    """Rows paid and rows/s over time against the rate limit."""
    fig = _figure(8.0, 6.0)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    tl = data.timeline()
    limit = data.limit_rows_per_s()
    ax1.set_title("Queries over time against the rate limit")
    if tl is None:
        _missing(ax1, _no_report(data, "no timeline and no rounds with elapsed time"))
        _missing(ax2, "No data.")
        return _save(fig, path)
    s, q, source = tl
    ax1.plot(s, q, marker="o", ms=3, color="tab:blue", label="rows paid (cumulative)")
    if limit:
        ax1.plot([0, s[-1]], [0, limit * s[-1]], ls="--", color="tab:red",
                 label=f"rate limit: {limit:,.0f} rows/s")
        ax1.set_ylim(0, max(q[-1], 1) * 1.15)
    ax1.set_ylabel("rows paid")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="upper left")
    ds, dq = np.diff(s), np.diff(q)
    keep = ds > 1e-6
    rate = np.where(keep, dq / np.where(keep, ds, 1.0), 0.0)
    ax2.stairs(rate, s, fill=True, alpha=0.5, color="tab:blue",
               label="rows/s between engine events")
    total = q[-1] / s[-1] if s[-1] > 0 else 0.0
    ax2.axhline(total, color="tab:green", ls=":", label=f"average: {total:,.0f} rows/s")
    if limit:
        ax2.axhline(limit, color="tab:red", ls="--", label=f"rate limit: {limit:,.0f} rows/s")
    top = max([limit or 0.0, float(rate.max()) if rate.size else 0.0, total, 1.0])
    ax2.set_ylim(0, top * 1.45)  # room for the legend above the bars
    ax2.set_ylabel("rows/s")
    ax2.set_xlabel(f"time since the extraction started (s); points: {source}")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper left", ncol=3)
    return _save(fig, path)


def plot_validation(data: RunData, path: str) -> str:
    """Validation relative L2 after each probe line, with the target and neurons found."""
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    ax.set_title("Validation error over the iterations (one per probe line)")
    rounds = data.extraction.get("rounds") or []
    pts = [(r.get("line"), r.get("val_rel_l2"), r.get("neurons")) for r in rounds]
    finite = [(ln, v) for ln, v, _ in pts
              if ln is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        _missing(ax, _no_report(data, "no rounds with a validation error "
                                      "(extraction.rounds[].val_rel_l2)"))
        return _save(fig, path)
    x = np.array([p[0] for p in finite], dtype=np.float64)
    v = np.maximum(np.array([p[1] for p in finite], dtype=np.float64), LOG_FLOOR)
    ax.semilogy(x, v, marker="o", color="tab:blue", label="validation relative L2")
    target = data.extraction.get("target_rel_l2")
    if isinstance(target, (int, float)) and target > 0:
        ax.axhline(target, color="tab:red", ls="--", label=f"target: {target:.1e}")
    ax.set_xlabel("probe line (iteration)")
    ax.set_ylabel("relative L2 error (log scale, unitless)")
    ax.set_xticks(x)
    ax.grid(alpha=0.3, which="both")
    neurons = [(ln, n) for ln, _, n in pts if ln is not None and n is not None]
    handles, labels = ax.get_legend_handles_labels()
    if neurons:
        ax2 = ax.twinx()
        ax2.bar([p[0] for p in neurons], [p[1] for p in neurons], width=0.25,
                color="tab:gray", alpha=0.3, label="neurons in the model after the line")
        ax2.set_ylabel("neurons in the model")
        ax2.set_ylim(0, max(p[1] for p in neurons) * 1.25 + 1)
        ax.set_zorder(ax2.get_zorder() + 1)  # the error curve above the bars
        ax.patch.set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15),
              ncol=3, frameon=False)
    return _save(fig, path)


def plot_neurons(data: RunData, path: str) -> str:
    """Per-neuron confidence (``neurons.arrow``: ``err`` and ``rank_residual``)."""
    fig = _figure(9.0, 4.5)
    ax1, ax2 = fig.subplots(1, 2)
    fig.suptitle("Per-neuron confidence (smaller is better)")
    if data.neurons is None or data.neurons.num_rows == 0:
        why = ("neurons.arrow not found in the run directory" if data.neurons is None
               else "the model has no neurons")
        _missing(ax1, f"No data: {why}.", width=32)
        _missing(ax2, "No data.")
        return _save(fig, path)
    n = data.neurons.to_pydict()
    err = np.asarray(n["err"], dtype=np.float64)
    res = np.asarray(n["rank_residual"], dtype=np.float64)
    order = np.argsort(err)
    ax1.semilogy(np.arange(err.size), np.maximum(err[order], LOG_FLOOR), marker=".",
                 ls="none", color="tab:blue")
    ax1.set_title("direction error estimate", fontsize=10)
    ax1.set_xlabel("neuron (sorted by error)")
    ax1.set_ylabel("estimated direction error (radians, log)")
    ax1.grid(alpha=0.3, which="both")
    m = data.model.output_dim if data.model is not None else None
    if m == 1 or not np.any(res > 0):
        _missing(ax2, "Rank-one residual: not measurable with one output (m = 1)"
                 if m == 1 else "Rank-one residual: all zero", width=32)
        ax2.set_title("rank-one residual of the Jacobian jump", fontsize=10)
    else:
        order2 = np.argsort(res)
        ax2.semilogy(np.arange(res.size), np.maximum(res[order2], LOG_FLOOR), marker=".",
                     ls="none", color="tab:purple")
        ax2.set_title("rank-one residual of the Jacobian jump", fontsize=10)
        ax2.set_xlabel("neuron (sorted by residual)")
        ax2.set_ylabel("σ₂ / σ₁ of the jump (unitless, log)")
        ax2.grid(alpha=0.3, which="both")
    return _save(fig, path)


def write_report(run_dir: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """Write ``summary.txt`` and the PNG plots of :data:`PLOTS` into ``run_dir``.

    Without matplotlib (the ``plots`` extra) only ``summary.txt`` is written; its last line
    says the plots were skipped and how to get them (:func:`plots_skipped_note`).

    Returns
    -------
    summary : str
        The text of ``summary.txt``.
    paths : dict of str to str
        File name to path of every file written.

    Raises
    ------
    ConfigError
        ``run_dir`` is not a run directory or a file in it is unreadable.
    """
    data = RunData(run_dir)
    text = summarize(data)
    paths = {}
    if plots_available():
        for name, fn in zip(PLOTS, (plot_kinks, plot_throughput, plot_validation,
                                    plot_neurons)):
            paths[name] = fn(data, os.path.join(data.run_dir, name))
        text += "\nPlots: " + ", ".join(PLOTS)
    else:
        logger.info("matplotlib is not installed: the report's plots are skipped (%s)",
                    PLOTS_HINT)
        text += "\nPlots: " + plots_skipped_note(data.run_dir)
    summary_path = os.path.join(data.run_dir, SUMMARY)
    with open(summary_path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    paths[SUMMARY] = summary_path
    return text, paths


__all__ = ["PLOTS", "PLOTS_HINT", "SUMMARY", "RunData", "plot_kinks", "plot_neurons",
           "plot_throughput", "plot_validation", "plots_available", "plots_skipped_note",
           "summarize", "write_report"]
