"""The opening of a run: the first request (the precision probe and the first line's segment
ends in one round trip, the validation points paid with the next request that goes out), and
the first line, searched in full, whose region Jacobians give the first model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from . import scan
from .kinks import segment_end_points
from .neurons import dedup, jumps_to_neurons
from .precision import measure_precision, probe_points
from .regions import region_edges
from .settings import LINE_SEGMENTS

if TYPE_CHECKING:
    from .loop import Coordinator

logger = logging.getLogger(__name__)


def first_request(eng: Coordinator) -> None:
    """The probe and the first line's segment ends (with their slope points) in one
    round trip instead of two: with a slow oracle every sequential round costs its
    latency. The validation points travel later with the first line's region centres
    (:func:`eval_paying_validation`), so a target the probe refuses costs the probe and
    the ends only. The ends are those of float64 answers; if the probe finds coarser
    answers the first line is cut finer and only the ends shared by both cuts are
    reused (at most ``4 × LINE_SEGMENTS`` rows unused). With a budget too small to pay
    for all of them at once, the probe and the validation points go first, one after
    the other (each finished step keeps what it paid for)."""
    ls = eng.settings.loop
    cfg = eng.cfg
    Xp = probe_points(eng.streams.probe(), eng.st.d, cfg.input_scale,
                      eng.settings.probe)
    ends = np.unique(segment_end_points(eng.line(0).segments(LINE_SEGMENTS),
                                        cfg.slope_step))
    if not eng.session.affords(ls.opening_budget_factor * (Xp.shape[0] + eng.n_val
                                                         + ends.size)):
        take_probe(eng, eng.session.eval(Xp))
        validation_set(eng)
        return
    Y = eng.session.eval(np.concatenate([Xp, eng.line(0).points(ends)], axis=0))
    n1 = Xp.shape[0]
    take_probe(eng, Y[:n1])
    eng.validation_pending = eng.n_val > 0
    eng.first_ends = {float(t): Y[n1 + i] for i, t in enumerate(ends)}


def take_probe(eng: Coordinator, Y: np.ndarray) -> None:
    """Take the precision measured from the probe's answers ``Y``
    (:func:`.precision.measure_precision`)."""
    eng.st.m = Y.shape[1]
    eng.st.precision = measure_precision(Y, eng.session.queries, eng.settings.probe)
    p = eng.st.precision
    logger.info("probe: m=%d, output scale %.3g, relative precision %.3g",
                eng.st.m, p.fref, p.noise)
    eng.emit("probe", noise=p.noise)


def validation_points(eng: Coordinator) -> np.ndarray:
    """The run's validation points: fresh Gaussian inputs (their own stream)."""
    rng = eng.streams.validation()
    return rng.standard_normal((max(eng.n_val, 0), eng.st.d)) * eng.cfg.input_scale


def validation_set(eng: Coordinator, Y: np.ndarray | None = None) -> None:
    """Keep the validation points and their answers ``Y`` (paid here when None)."""
    if eng.n_val <= 0:
        return
    eng.paid.Xv = validation_points(eng)
    eng.paid.Yv = eng.session.eval(eng.paid.Xv) if Y is None else Y


def eval_paying_validation(eng: Coordinator, X: np.ndarray) -> np.ndarray:
    """Answers at ``X``, with the validation points in the same round trip while they
    are still to be paid (:func:`first_request`)."""
    if not eng.validation_pending:
        return eng.session.eval(X)
    Xv = validation_points(eng)
    Y = eng.session.eval(np.concatenate([X, Xv], axis=0))
    eng.validation_pending = False
    validation_set(eng, Y[X.shape[0]:])
    return Y[:X.shape[0]]


def first_line(eng: Coordinator) -> None:
    """Search the first line in full, measure every region, and assemble the first
    model from the jumps between regions."""
    cfg, st = eng.cfg, eng.st
    q0 = eng.session.queries
    line = eng.line(0)
    found = scan.search(eng, line, line.segments(eng.line_segments), st.noise)
    st.first_kinks = int(found.kinks.size)
    eng.emit("search", line=0, kinks=int(found.kinks.size))
    regions = scan.measure(eng, line, found, st.noise)
    eng.paid.keep_solve_rows(regions, eng.streams.solve_rows(len(st.lines)))
    eng.paid.keep_jacobians(line, regions, eng.streams.jacobian_sample(line.index))
    ns = jumps_to_neurons(line, regions, region_edges(found, line.reach), eng.rank_factor,
                          eng.imprecise, joint=not eng.imprecise)
    st.neurons = dedup(ns, cfg.dedup_factor, eng.match_ceiling, eng.imprecise)
    eng.record_line(line, "first", found, regions, q0)
    eng.assemble()
    st.rounds.append(eng.round_info(0, int(found.kinks.size), st.neurons.size, 0))
    eng.emit("round", line=0, kinks=int(found.kinks.size))
