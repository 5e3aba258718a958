"""Clean-up rules: neurons that make the model worse are tested for removal, each kept
only if the validation points do not get worse without it (merged kinks, neurons most lines
miss, new neurons that made a line worse, disputed re-measurements)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .lines import Line
from .neurons import NeuronSet, predicted_crossings

if TYPE_CHECKING:
    from .loop import Coordinator

logger = logging.getLogger(__name__)


def drop_each(eng: Coordinator, idx: np.ndarray) -> int:
    """Drop each neuron ``idx`` of ``st.neurons`` whose removal does not make validation
    worse, one at a time from the highest index down (so the lower ones keep their
    index). Returns the neurons dropped."""
    st = eng.st
    dropped = 0
    for j in np.sort(np.asarray(idx, dtype=int))[::-1]:
        cur = st.neurons
        if eng.keep_if_no_worse(cur.take(np.setdiff1d(np.arange(cur.size), [j])),
                                  slack=1.0):
            dropped += 1
    return dropped


def drop_merges(eng: Coordinator, index: int) -> int:
    """Line ``index``'s new neurons made validation worse: an old neuron measured at a
    kink where a new one crosses that old neuron's line (within merge_spacing of the
    line's local kink spacing) may be those kinks merged into one jump (m=1 cannot tell
    a rank-two jump); each such old neuron is dropped if validation does not get worse
    without it. Returns the neurons dropped."""
    rs = eng.settings.rules
    st = eng.st
    ns = st.neurons
    new = np.flatnonzero(ns.line == index)[:rs.new_reject_max]
    if new.size == 0:
        return 0
    fresh = ns.take(new)
    cands: set = set()
    for rec in st.lines:
        on = np.flatnonzero(ns.line == rec.index)
        if on.size < 2 or rec.kinks.size < 2:
            continue
        tn, _, _ = predicted_crossings(rec, fresh)
        tn = tn[np.isfinite(tn) & (np.abs(tn) < rec.reach)]
        if tn.size == 0:
            continue
        order = on[np.argsort(ns.t[on])]
        ts = ns.t[order]
        spacing = np.diff(rec.kinks)
        for t in tn:
            p = int(np.clip(np.searchsorted(ts, t), 1, ts.size - 1))
            j = p if abs(ts[p] - t) < abs(ts[p - 1] - t) else p - 1
            q = int(np.clip(np.searchsorted(rec.kinks, t), 1, rec.kinks.size - 1))
            if abs(ts[j] - t) <= rs.merge_spacing * spacing[q - 1]:
                cands.add(int(order[j]))
    dropped = drop_each(eng, np.array(sorted(cands), dtype=int))
    st.counters["merges_dropped"] += dropped
    if dropped:
        logger.info("%d neurons measured where line %d's new neurons cross their line "
                    "dropped (merged kinks)", dropped, index)
    return dropped


def reject_new(eng: Coordinator, index: int) -> int:
    """The neurons line ``index`` added made validation worse: drop each of them (at
    most new_reject_max) whose removal lowers it: two kinks merged into one jump make one
    wrong neuron that can raise the validation error by orders of magnitude, and left in
    place it costs further lines until one removes it. Returns the neurons dropped."""
    rs = eng.settings.rules
    st = eng.st
    dropped = drop_each(eng, np.flatnonzero(st.neurons.line == index)[:rs.new_reject_max])
    st.counters["new_rejected"] += dropped
    if dropped:
        logger.info("%d neurons line %d added made validation worse: dropped", dropped,
                    index)
    return dropped


def settle(eng: Coordinator, disputed: list) -> int:
    """A neuron measured again on a later line whose new measurement does not explain
    the kink it was first measured at: one of the two kinks was mislocated (a merged
    close pair, a slope step across a weak kink) and no third line decides. The
    validation points do: the new measurement replaces the old one if the model gets
    no worse. Returns the replacements kept."""
    kept = 0
    for w_old, b_old, new in disputed:
        ns = eng.st.neurons
        hit = np.flatnonzero((ns.b == b_old) & np.all(ns.W == w_old[None, :], axis=1))
        if hit.size != 1:
            continue  # merged or removed meanwhile
        if eng.keep_if_no_worse(ns.replaced(hit, new, np.array([0])), slack=1.0):
            kept += 1
    eng.st.counters["settled"] += kept
    return kept


def drop_unseen(eng: Coordinator, min_lines: int | None = None) -> int:
    """Float64, lines clean but validation above target: drop the neurons that most of
    the lines crossing them did not see. With one output a jump of two merged kinks
    cannot be told from one neuron's; its wrong direction, once 'confirmed' by a
    neighbour's kink, survives the per-line rules, but most lines crossing it do not see
    it where every true neuron is seen on nearly all of them. Each is dropped if
    validation does not get worse, all together first, then one by one. ``min_lines``:
    lines that must cross a neuron (default ``unseen_min_lines``). Returns the neurons
    dropped."""
    rs = eng.settings.rules
    st = eng.st
    if min_lines is None:
        min_lines = rs.unseen_min_lines
    ns = st.neurons
    if ns is None or ns.size == 0:
        return 0
    expected = np.zeros(ns.size, dtype=int)
    for rec in st.lines:
        t, _, _ = predicted_crossings(rec, ns)
        expected += (np.abs(t) < rec.reach) & (ns.line <= rec.index)
    unseen = np.flatnonzero((expected >= min_lines)
                            & (ns.count <= rs.unseen_share * expected))
    unseen = unseen[np.argsort(ns.count[unseen] / expected[unseen])][:rs.unseen_max]
    if unseen.size == 0:
        return 0
    keep = np.setdiff1d(np.arange(ns.size), unseen)
    if eng.keep_if_no_worse(ns.take(keep), slack=1.0):
        dropped = int(unseen.size)
    else:
        dropped = drop_each(eng, unseen)
    st.counters["unseen_dropped"] += dropped
    logger.info("%d of %d neurons that most lines crossing them did not see dropped",
                dropped, unseen.size)
    return dropped


def note_offsets(eng: Coordinator, line: Line, kinks: np.ndarray, ns: NeuronSet,
                  by: np.ndarray) -> None:
    """Record how far each kink of a line searched in full on ``F`` lies off the
    hyperplane of the neuron that explains it. A direction error moves a neuron's bias
    by that error times the distance from its foot to where it was measured, so a
    neuron measured far out (tens of input scales) can carry a bias error that dominates
    the model's, even with a correct error estimate (the residual lines only confirm
    predicted crossings and do not correct it). :func:`.finish.pin` weighs the offsets
    with the error estimates."""
    j = np.flatnonzero(by >= 0)
    if j.size == 0:
        return
    n = by[j]
    x = line.u[None, :] + kinks[j][:, None] * line.v[None, :]
    off = np.abs(np.sum(ns.W[n] * x, axis=1) + ns.b[n]) / np.linalg.norm(ns.W[n], axis=1)
    for i, o in zip(n, off):
        key = (int(ns.line[i]), float(ns.t[i]))
        eng.st.offsets[key] = max(eng.st.offsets.get(key, 0.0), float(o))
