"""Arrow outputs of a run directory: the model, its neurons, every kink, every line, the report.

:func:`write_run_outputs` writes, next to the query journal (``journal/``, written during the run
by :class:`~distextract._journal.JournaledOracle`) and ``run.json``:

``model.arrow``
    The extracted network (:meth:`ReluNetwork.save`): one row per hidden unit, columns ``w``
    fixed_size_list<double>[d], ``b`` double, ``a`` fixed_size_list<double>[m]; ``c`` and ``L`` in
    the schema metadata ``distextract``.

``neurons.arrow`` — one row per neuron; row ``i`` is hidden unit ``i`` of ``model.arrow``:

    ============== ============================ ==============================================
    column         type                         meaning
    ============== ============================ ==============================================
    index          int64                        hidden unit index (row of model.arrow)
    line           int64                        probe line where the neuron was first seen
    t              double                       kink position on that line (``x = u + t v``)
    err            double                       estimated direction error in radians: the
                                                confidence (smaller is better)
    rank_residual  double                       second / first singular value of the
                                                Jacobian jump (0 when m = 1; large: two kinks
                                                merged)
    count          int64                        observations merged into this neuron
    kinks_matched  int64                        kinks of kinks.arrow matched to it
    w              fixed_size_list<double>[d]   unit normal of the hyperplane
    b              double                       bias (hyperplane ``w·x + b = 0``)
    a              fixed_size_list<double>[m]   output weights of the unit (model column)
    ============== ============================ ==============================================

``kinks.arrow`` — one row per kink found on any line:

    ========== ======= ====================================================================
    column     type    meaning
    ========== ======= ====================================================================
    line       int64   probe line index (lines.arrow ``index``)
    kink       int64   position of the kink in that line's sorted kink list
    t          double  kink position on the line (``x = u + t v``)
    resolved   bool    the search confirmed a single kink there (false: an unresolved
                       cluster, e.g. kinks closer than the check step)
    neuron     int64   hidden unit whose hyperplane the line crosses nearest to ``t``, when
                       within ``match_rtol · (1 + |t|)``; null when no unit explains the kink
    distance   double  ``|t - t_neuron|`` along the line to the nearest hyperplane crossing
                       (null when the model has no unit crossing the line)
    ========== ======= ====================================================================

``lines.arrow`` — one row per probe line:

    ================= ============================ =============================================
    column            type                         meaning
    ================= ============================ =============================================
    index             int64                        line index (0: the first line)
    kind              string                       ``"first"``, ``"residual"`` (guided by the
                                                   known hyperplanes), ``"sensitive"`` (searched
                                                   in full with long slope steps, once, when a
                                                   clean line leaves the error above target) or
                                                   ``"polish"`` (imprecise answers: crossings
                                                   located)
    reach             double                       the line covers ``t ∈ [-reach, reach]``
    u                 fixed_size_list<double>[d]   base point
    v                 fixed_size_list<double>[d]   unit direction
    kinks             int64                        kinks found
    kinks_resolved    int64                        kinks confirmed single
    kinks_matched     int64                        kinks matched to a unit of the final model
    regions_measured  int64                        region Jacobians measured
    regions_failed    int64                        regions whose Jacobian could not be verified
    regions_repaired  int64                        regions repaired after a bad stencil row
    queries           int64                        rows paid for this line
    ================= ============================ =============================================

``report.json``
    The extraction report (:attr:`ExtractionResult.report`); non-finite floats become null.

Every Arrow file is an uncompressed Arrow IPC file (Feather v2), readable with
``pyarrow.feather.read_table`` / ``pandas.read_feather``; its schema metadata
``distextract.run`` holds ``{"format": "distextract.run_outputs", "version": 1, "table": ...,
"input_dim": d, "output_dim": m}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa

from ._arrow import bool_array, numeric_array, string_array, vectors, write_table
from ._errors import ConfigError
from ._journal import _jsonable

OUTPUTS_FORMAT = "distextract.run_outputs"
OUTPUTS_VERSION = 1
#: A kink is matched to a hyperplane crossing within ``MATCH_RTOL · (1 + |t|)`` along the line.
MATCH_RTOL = 1e-6
FILES = ("model.arrow", "neurons.arrow", "kinks.arrow", "lines.arrow", "report.json")


def _table(columns: dict[str, pa.Array]) -> pa.Table:
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


def _schema_meta(table: str, d: int, m: int) -> dict:
    return {"distextract.run": json.dumps({"format": OUTPUTS_FORMAT, "version": OUTPUTS_VERSION,
                                           "table": table, "input_dim": d, "output_dim": m})}


def _write(table: pa.Table, path: str) -> None:
    write_table(table, path)


def match_kinks(W: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray, t: np.ndarray,
                rtol: float = MATCH_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Match kinks at ``t`` on the line ``u + t v`` to the hyperplanes ``W x + b = 0``.

    Sorts the crossings once per line (``O(k d + k log k + n log k)``), no all-pairs pass.

    Parameters
    ----------
    W : ndarray of shape (k, d)
    b : ndarray of shape (k,)
    u, v : ndarray of shape (d,)
    t : ndarray of shape (n,)
    rtol : float
        Matched when the nearest crossing is within ``rtol · (1 + |t|)``.

    Returns
    -------
    neuron : ndarray of shape (n,), int64
        Index of the nearest crossing hyperplane, -1 when none is within tolerance.
    distance : ndarray of shape (n,)
        Distance along the line to the nearest crossing (inf when none crosses).
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    n = t.size
    neuron = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, np.inf)
    if W.shape[0] == 0 or n == 0:
        return neuron, distance
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = -(W @ u + b) / (W @ v)
    ok = np.flatnonzero(np.isfinite(cross))
    if ok.size == 0:
        return neuron, distance
    order = ok[np.argsort(cross[ok])]
    tc = cross[order]
    pos = np.searchsorted(tc, t)
    left = np.clip(pos - 1, 0, tc.size - 1)
    right = np.clip(pos, 0, tc.size - 1)
    dl, dr = np.abs(t - tc[left]), np.abs(t - tc[right])
    best = np.where(dl <= dr, left, right)
    distance = np.minimum(dl, dr)
    hit = distance <= rtol * (1.0 + np.abs(t))
    neuron[hit] = order[best[hit]]
    return neuron, distance


def write_run_outputs(run_dir: str | os.PathLike, result: Any,
                      match_rtol: float = MATCH_RTOL) -> dict[str, str]:
    """Write ``model.arrow``, ``neurons.arrow``, ``kinks.arrow``, ``lines.arrow`` and
    ``report.json`` of an extraction into ``run_dir`` (schemas in the module docstring).

    Parameters
    ----------
    run_dir : path
        The run directory (created if missing; existing output files are replaced atomically).
    result : ExtractionResult
        What :func:`distextract.extract` returned.
    match_rtol : float
        Tolerance of the kink-to-neuron matching (see :func:`match_kinks`).

    Returns
    -------
    dict of str to str
        File name to path of everything written.

    Raises
    ------
    ConfigError
        When ``result`` is not an extraction result with engine internals.
    """
    eng = getattr(result, "engine", None)
    model = getattr(result, "model", None)
    if eng is None or model is None or not hasattr(eng, "neurons") or not hasattr(eng, "lines"):
        raise ConfigError(f"result must be the ExtractionResult returned by extract(), got "
                          f"{type(result).__name__}")
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    d, m, k = model.input_dim, model.output_dim, model.hidden_dim
    ns = eng.neurons
    paths = {name: os.path.join(run_dir, name) for name in FILES}

    model.save(paths["model.arrow"])

    # kinks, matched against the final model's hyperplanes
    rows: dict[str, list] = {"line": [], "kink": [], "t": [], "resolved": [], "neuron": [],
                             "distance": []}
    per_line = []
    matched_count = np.zeros(k, dtype=np.int64)
    for rec in eng.lines:
        t = np.asarray(rec.kinks, dtype=np.float64).reshape(-1)
        resolved = np.asarray(rec.resolved, dtype=bool).reshape(-1)
        if resolved.size != t.size:
            resolved = np.ones(t.size, dtype=bool) if resolved.size == 0 else \
                np.resize(resolved, t.size)
        nid, dist = match_kinks(model.W, model.b, np.asarray(rec.u), np.asarray(rec.v), t,
                                match_rtol)
        np.add.at(matched_count, nid[nid >= 0], 1)
        per_line.append((int(t.size), int(resolved.sum()), int((nid >= 0).sum())))
        rows["line"].append(np.full(t.size, rec.index, dtype=np.int64))
        rows["kink"].append(np.arange(t.size, dtype=np.int64))
        rows["t"].append(t)
        rows["resolved"].append(resolved)
        rows["neuron"].append(nid)
        rows["distance"].append(dist)
    cat = {key: (np.concatenate(val) if val else np.zeros(0)) for key, val in rows.items()}
    neuron_ids = cat["neuron"].astype(np.int64)
    dist = cat["distance"].astype(np.float64)
    kinks = _table({
        "line": numeric_array(cat["line"], pa.int64()),
        "kink": numeric_array(cat["kink"], pa.int64()),
        "t": numeric_array(cat["t"]),
        "resolved": bool_array(cat["resolved"]),
        "neuron": numeric_array(neuron_ids, pa.int64(), mask=neuron_ids < 0),
        "distance": numeric_array(np.where(np.isfinite(dist), dist, 0.0), mask=~np.isfinite(dist)),
    })
    _write(kinks.replace_schema_metadata(_schema_meta("kinks", d, m)), paths["kinks.arrow"])

    # neurons: the engine's neuron set, row i = hidden unit i of the model
    n = ns.size if ns is not None else 0
    if n != k:
        raise ConfigError(f"the engine's neuron set has {n} neurons but the model has {k} "
                          f"hidden units; cannot align neurons.arrow with model.arrow")
    neurons = _table({
        "index": numeric_array(np.arange(k), pa.int64()),
        "line": numeric_array(ns.line if k else [], pa.int64()),
        "t": numeric_array(ns.t),
        "err": numeric_array(ns.err),
        "rank_residual": numeric_array(ns.rank_residual),
        "count": numeric_array(ns.count, pa.int64()),
        "kinks_matched": numeric_array(matched_count, pa.int64()),
        "w": vectors(model.W, d),
        "b": numeric_array(model.b),
        "a": vectors(model.A.T, m),
    })
    _write(neurons.replace_schema_metadata(_schema_meta("neurons", d, m)),
           paths["neurons.arrow"])

    recs = eng.lines
    U = np.array([r.u for r in recs], dtype=np.float64).reshape(-1, d)
    V = np.array([r.v for r in recs], dtype=np.float64).reshape(-1, d)
    counts = np.array(per_line, dtype=np.int64).reshape(-1, 3)
    lines = _table({
        "index": numeric_array([int(r.index) for r in recs], pa.int64()),
        "kind": string_array([str(r.kind) for r in recs]),
        "reach": numeric_array([float(r.reach) for r in recs]),
        "u": vectors(U, d),
        "v": vectors(V, d),
        "kinks": numeric_array(counts[:, 0], pa.int64()),
        "kinks_resolved": numeric_array(counts[:, 1], pa.int64()),
        "kinks_matched": numeric_array(counts[:, 2], pa.int64()),
        "regions_measured": numeric_array([int(r.regions_measured) for r in recs], pa.int64()),
        "regions_failed": numeric_array([int(r.regions_failed) for r in recs], pa.int64()),
        "regions_repaired": numeric_array([int(r.regions_repaired) for r in recs], pa.int64()),
        "queries": numeric_array([int(r.queries) for r in recs], pa.int64()),
    })
    _write(lines.replace_schema_metadata(_schema_meta("lines", d, m)), paths["lines.arrow"])

    report = _jsonable(getattr(result, "report", {}) or {}, "the extraction report")
    tmp = f"{paths['report.json']}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, allow_nan=False)
    os.replace(tmp, paths["report.json"])
    return paths


__all__ = ["FILES", "MATCH_RTOL", "match_kinks", "write_run_outputs"]
