"""The per-line update: what a further line's kinks change in the model.

Kinks that no known hyperplane explains are new neurons (their two regions are measured);
known hyperplanes that should cross the line but show no kink, seen on one line only, are
merge artefacts and go; neurons known less precisely than the rest are measured again where the
line crosses them. Two lines in a row with many unexplained kinks are a verdict on the target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import cleanup
from .neurons import (
    EXPLAIN_FACTOR,
    NeuronSet,
    crossings_inside,
    dedup,
    explain_kinks,
    jumps_to_neurons,
    predicted_crossings,
)
from .lines import Line
from .regions import kink_jumps, region_edges
from .scan import guided, measure, residual, search
from .state import PrecisionLimited

if TYPE_CHECKING:
    from .loop import Coordinator


def residual_line(eng: Coordinator, index: int, sensitive: bool = False,
                  line: Line | None = None) -> int:
    """Search a further line (``line``, or line ``index`` of the run) for kinks of ``F``;
    kinks that no known hyperplane explains are new neurons (their two regions are
    measured), known hyperplanes that should cross the line but show no kink are spurious
    and are removed. Returns the number of changes (new + removed); 0 means the line
    confirmed the model."""
    rs = eng.settings.rules
    cfg, st = eng.cfg, eng.st
    q0 = eng.session.queries
    line = eng.line(index) if line is None else line
    reach = line.reach
    ns = st.neurons
    tp, ptol, wv = predicted_crossings(line, ns)
    sel = crossings_inside(tp, reach, rs.crossing_margin)
    if sel.size:  # one of two crossings closer than this margin (coinciding hyperplanes)
        sel = sel[np.concatenate([[True], np.diff(tp[sel]) > rs.crossing_margin
                                  * (1 + np.abs(tp[sel][1:]))])]
    tp = tp[sel]
    jump = ns.a[sel] * np.abs(wv[sel])[:, None]
    if eng.imprecise:
        scan = guided(eng, line, tp, ptol[sel], jump)
    elif sensitive:
        scan = search(eng, line, line.segments(eng.line_segments), st.noise, True)
    elif eng.cfg.residual_scan and st.model is not None:
        scan = residual(eng, line, tp, ns.take(sel))
    else:
        scan = guided(eng, line, tp, pred_jump=jump)
    eng.emit("search", line=index, kinks=int(scan.kinks.size))
    unexplained, unconfirmed, hits, by, loose = explain_kinks(
        line, scan.kinks, ns, eng.derived.explain_factor,
        wide=eng.imprecise, jumps=kink_jumps(scan, reach) if eng.imprecise else None)
    if sensitive:
        cleanup.note_offsets(eng, line, scan.kinks, ns, by)
    # re-measure neurons known less precisely than the rest (or misplaced) where this
    # line crosses them; the better measurement replaces the old one
    limit = cfg.refine_factor * float(np.median(ns.err)) if ns.size else np.inf
    refine = {int(j): int(by[j]) for j in np.flatnonzero(by >= 0)
              if loose[j] or ns.err[by[j]] > limit}
    ns = NeuronSet(ns.W, ns.b, ns.a, ns.err, ns.rank_residual, ns.line, ns.t,
                   ns.count + hits.astype(int))
    st.neurons = ns
    regions = []
    added = 0
    frac = unexplained.size / max(scan.kinks.size, 1)
    if unexplained.size > rs.mismatch_min_kinks and frac > rs.mismatch_fraction:
        eng.mismatch_lines += 1
        imprecise = st.noise > rs.bend_verdict_noise
        if imprecise and eng.mismatch_lines >= rs.imprecise_mismatch_lines:
            # with imprecise answers, misplaced hyperplanes look the same as bending
            # ones: no verdict on the target, the model is limited by precision
            raise PrecisionLimited(
                f"answers too imprecise (relative noise {st.noise:.3g}) to place the "
                f"hyperplanes: {unexplained.size} of {scan.kinks.size} kinks on line "
                f"{index} match none measured before ({eng.mismatch_lines} lines in a row)")
        if eng.mismatch_lines >= 2 and not imprecise:
            eng.mismatch(
                f"kinks do not lie on fixed hyperplanes: {unexplained.size} of "
                f"{scan.kinks.size} kinks on line {index} match no hyperplane measured on "
                f"earlier lines (two lines in a row) — kinks that bend, as in a network "
                f"with two hidden ReLU layers?")
    else:
        eng.mismatch_lines = 0
    refined = 0
    disputed: list = []  # (old W row, old b, new measurement) the old kink disowns
    # a neuron seen on one line only and missing on this one is a merge artefact;
    # one confirmed by another line stays (its kink may just be weak or merged here)
    unconfirmed = unconfirmed[st.neurons.count[unconfirmed] <= 1]
    keep = np.ones(st.neurons.size, dtype=bool)
    keep[unconfirmed] = False
    removed = int(unconfirmed.size)
    st.counters["unconfirmed_removed"] += removed
    if unexplained.size or refine:
        edges = region_edges(scan, line.reach)
        wanted = set()
        for j in list(unexplained) + list(refine):
            wanted.update((int(j), int(j) + 1))
        regions = measure(eng, line, scan, st.noise, wanted)
        eng.paid.keep_solve_rows(regions, eng.streams.solve_rows(len(st.lines)))
        eng.paid.keep_jacobians(line, regions, eng.streams.jacobian_sample(line.index))
        found = jumps_to_neurons(line, regions, edges, eng.rank_factor, eng.imprecise,
                                 joint=not eng.imprecise)
        if refine and found.size and scan.kinks.size:
            at = np.argmin(np.abs(scan.kinks[None, :] - found.t[:, None]), axis=1)
            new_rows, targets, sources = [], [], []
            for f, j in enumerate(at):
                tgt = refine.get(int(j))
                if tgt is None:
                    new_rows.append(f)
                elif replaces(eng, found, f, ns, tgt):
                    targets.append(tgt)
                    sources.append(f)
                else:
                    disputed.append((ns.W[tgt].copy(), ns.b[tgt], found.take(
                        np.array([f]))))
            refined += len(targets)
            st.counters["remeasured"] += len(targets)
            st.counters["disputed"] += len(disputed)
            ns = ns.replaced(np.array(targets, dtype=int), found,
                             np.array(sources, dtype=int))
            found = found.take(np.array(new_rows, dtype=int))
        ns = ns.take(np.flatnonzero(keep))
        merged = dedup(NeuronSet.concat([ns, found]), cfg.dedup_factor,
                       eng.match_ceiling, eng.imprecise)
        added = merged.size - ns.size
        ns = merged
    elif removed:
        ns = ns.take(np.flatnonzero(keep))
    worse = max(st.val_rel_l2, eng.target)  # validation above this: the line hurt
    st.neurons = ns
    if added or removed or refined:
        eng.assemble()
    refined += cleanup.settle(eng, disputed)
    if added and not eng.imprecise and st.val_rel_l2 > worse:
        # the new neurons may be right and an old one a merge of them (then the new ones
        # double what the spurious old one carries, and validation gets worse):
        # old neurons measured where the new ones cross go first, then neurons most
        # lines miss, then new ones that still make it worse
        removed += cleanup.drop_merges(eng, index)
        if st.val_rel_l2 > worse:
            removed += cleanup.drop_unseen(eng, rs.unseen_early_lines)
        if st.val_rel_l2 > worse:
            added -= cleanup.reject_new(eng, index)
    eng.record_line(line, "sensitive" if sensitive else "residual", scan, regions, q0)
    st.rounds.append(eng.round_info(index, int(scan.kinks.size), added, removed))
    eng.emit("round", line=index, kinks=int(scan.kinks.size))
    return added + removed


def replaces(eng: Coordinator, found: NeuronSet, f: int, ns: NeuronSet, n: int) -> bool:
    """Whether the new measurement ``found[f]`` should replace neuron ``n``: it must also
    explain the kink where ``n`` was first measured (a jump that merged a weak neighbour
    there, or a garbage re-measurement, fails one of the two lines)."""
    rec = eng.st.lines[int(ns.line[n])]
    w, b = found.W[f], found.b[f]
    wv = float(w @ rec.v)
    if wv == 0.0:
        return False
    t_pred = -(float(w @ rec.u) + b) / wv
    t_old = float(ns.t[n])
    x_norm = np.sqrt(float(rec.u @ rec.u) + t_old ** 2)
    tol = EXPLAIN_FACTOR * found.err[f] * (x_norm + 1.0) / abs(wv) + 1e-9 * (1 + abs(t_old))
    return abs(t_pred - t_old) <= tol
