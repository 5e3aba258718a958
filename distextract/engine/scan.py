"""Line scans: the searches that find the kinks of ``F`` along a line, and the measurement
of the regions between them.

A line is scanned in one of four ways: the first line and the one sensitive line are searched
in full (:func:`search`); a further line with float64 answers is searched for the residual
``F - model`` (:func:`residual`); with imprecise answers, guided by the predicted crossings
(:func:`guided`). :func:`measure` then measures the Jacobians of chosen regions.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from . import opening
from .kinks import (
    SIGNATURE_RTOL,
    SearchParams,
    residual_search,
    segment_end_points,
)
from .lines import Line
from .neurons import NeuronSet
from .regions import (
    LineScan,
    add_points,
    make_plans,
    merge_segments,
    missing_points,
    rounding_error,
)
from .session import chunks
from .settings import WIDE_CROSSING_RATE
from .tasks import GuidedTask, JacobianTask, output_scale

if TYPE_CHECKING:
    from .loop import Coordinator

logger = logging.getLogger(__name__)

#: Imprecise answers with relative rounding (float32): the search also checks values against
#: chords and looks for kinks in the samples it paid (:func:`.kinks.hidden_bends`), for weak
#: kinks next to strong ones. Not for decimals (absolute rounding): there every kink's slope
#: change hides under the short steps' slope errors, and the search narrowing each one down
#: by chords took issue5's d64-k128-m10 round:6 run from 25,860 to 78,941 queries.
IMPRECISE_CHORD_CHECK = True


def search(eng: Coordinator, line: Line, segments: list, noise: float,
            sensitive: bool = False) -> LineScan:
    ss = eng.settings.scan
    cfg, st = eng.cfg, eng.st
    params = search_params(eng, noise)
    if sensitive:
        params = replace(params, slope_step=min(ss.max_step, ss.sensitive_step_factor
                                                * params.slope_step))
    ends = np.unique(segment_end_points(segments, cfg.slope_step))
    paid = eng.first_ends if line.index == 0 else {}
    fresh = np.array([float(t) not in paid for t in ends], dtype=bool)
    Y = np.empty((ends.size, st.m))
    if fresh.any():
        Y[fresh] = eng.session.eval(line.points(ends[fresh]))
    for i in np.flatnonzero(~fresh):
        Y[i] = paid[float(ends[i])]
    sc = output_scale(Y, st.fref, st.absolute)
    known = {float(t): (Y[i], float(sc[i])) for i, t in enumerate(ends)}
    return merge_segments(eng.session.search(line, segments, params, st.fref, st.absolute, known),
                          [(ends, Y, sc)])


def search_params(eng: Coordinator, noise: float) -> SearchParams:
    """Search steps derived from the measured precision: a slope over a step ``δ`` is
    known to ``noise/δ``, so noisier answers need longer slope and check steps (the
    defaults hold for float64), and intervals are not split below what the noise can
    resolve."""
    ss = eng.settings.scan
    cfg = eng.cfg
    grow = ss.noisy_step_factor * np.sqrt(noise)
    return SearchParams(noise=noise, check_factor=eng.check_factor,
                        slope_step=float(min(ss.max_step, max(cfg.slope_step, grow))),
                        min_width=float(max(cfg.min_width, 1e3 * noise)),
                        check_step=float(min(ss.max_step, max(cfg.check_step, grow))),
                        anchor_step=ss.imprecise_anchor_step if eng.imprecise else None,
                        jump_rtol=SIGNATURE_RTOL if eng.imprecise else ss.jump_rtol,
                        chord_check=(eng.imprecise and not eng.st.absolute
                                     and IMPRECISE_CHORD_CHECK))


def guided(eng: Coordinator, line: Line, predicted: np.ndarray, pred_tol: np.ndarray | None = None,
            pred_jump: np.ndarray | None = None) -> LineScan:
    st = eng.st
    params = search_params(eng, st.noise)
    task = GuidedTask(line, predicted, params, st.fref, absolute=st.absolute,
                      pred_tol=pred_tol, pred_jump=pred_jump)
    return merge_segments(eng.session.map([task])[0])


def residual(eng: Coordinator, line: Line, predicted: np.ndarray, ns: NeuronSet) -> LineScan:
    """Residual search of ``line`` against the current model (float64 answers,
    :func:`.kinks.residual_search`): the samples are evaluated by the executor's tasks,
    the model here (it never travels), the flagged intervals searched by up to
    ``settings.session.search_tasks`` tasks (:meth:`.session.QuerySession.search`). ``ns``
    are the neurons predicted at ``predicted``; their error estimates bound how far the
    residual may bend at their crossings."""
    ss = eng.settings.scan
    st = eng.st
    # a flagged gap holds what bends the residual, often a weak kink next to a strong
    # one (why earlier lines missed it): long slope steps see 100x weaker slope changes,
    # which the default steps miss (the lines would then never come back clean)
    base = search_params(eng, st.noise)
    params = replace(base, split_points=ss.residual_split_points)
    if st.val_rel_l2 > eng.target:
        params = replace(params, slope_step=min(
            ss.max_step, ss.sensitive_step_factor * base.slope_step))

    def evaluate(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Y = eng.session.eval(line.points(t))
        return Y, output_scale(Y, st.fref, st.absolute)

    x_norm = np.sqrt(float(line.u @ line.u) + predicted ** 2)
    amp = np.linalg.norm(ns.a, axis=1)
    offset = ss.residual_spreads * amp * ns.err * (x_norm + 1.0)
    slope = ss.residual_spreads * amp * ns.err * 2.0
    samples, *results = residual_search(
        evaluate, lambda t: line.model_values(st.model, t, ss.model_block), predicted,
        offset, slope, line.reach, params, eng.cfg.residual_stride,
        search=lambda pieces, known: eng.session.search(line, pieces, params, st.fref,
                                                        st.absolute, known))
    return merge_segments(results, [(samples.t, samples.values, samples.scale)])


def measure(eng: Coordinator, line: Line, scan: LineScan, noise: float,
             only: set | None = None) -> list:
    cfg, st = eng.cfg, eng.st
    # centres and baselines for the regions to measure
    want = missing_points(scan, line.reach, regions=only)
    if want.size:
        Xw = line.points(want)
        Yw = opening.eval_paying_validation(eng, Xw)
        scw = output_scale(Yw, st.fref, st.absolute)
        scan = add_points(scan, want, Yw, scw)
    plans = make_plans(scan, line.reach, eng.st.d, cfg.stencil_checks,
                       eng.crossing_rate, regions=only)
    if only is None and not st.lines and longer_steps(eng, plans, noise):
        plans = make_plans(scan, line.reach, eng.st.d, cfg.stencil_checks,
                           eng.crossing_rate)
    # enough tasks for every concurrent slot, at most regions_per_task regions each
    per_task = max(1, min(cfg.regions_per_task, -(-len(plans) // eng.session.parallelism)))
    # the output solve keeps a sample of the rows: the workers send only that sample
    # when the line's stencils hold more rows than the solve's budget
    keep = None
    if len(plans) * (eng.st.d + cfg.stencil_checks) > eng.paid.solve_row_budget:
        keep = eng.paid.per_region(len(plans))
    tasks = [JacobianTask(line, group, noise, eng.check_factor, cfg.stencil_checks,
                          eng.st.fref, absolute=eng.st.absolute, keep_rows=keep)
             for group in chunks(plans, per_task)]
    regions = [r for batch in eng.session.map(tasks) for r in batch]
    return regions


def longer_steps(eng: Coordinator, plans: list, noise: float) -> bool:
    """Whether the first line's stencils should take WIDE_CROSSING_RATE's longer steps
    (more stencil rows crossing a hyperplane and measured again, about 2% more queries)
    because the rounding error the planned steps leave (:func:`.regions.rounding_error`,
    an upper estimate, relative to the output rows' norm) exceeds long_steps_factor × the
    fidelity goal (some d=128, k=1024 networks; most stay well below it).
    Sets ``st.long_steps``."""
    fs = eng.settings.finish
    ss = eng.settings.scan
    cfg, st = eng.cfg, eng.st
    if (cfg.stencil_crossing_rate is not None or eng.imprecise
            or eng.crossing_rate >= WIDE_CROSSING_RATE):
        return False
    # (the error of a neuron's term lies along its output vector; relative L2 compares
    # it with whole output rows)
    Yv = eng.paid.Yv
    size = float(np.sqrt(np.mean(np.sum(Yv ** 2, axis=1)))) if Yv.size else st.fref
    goal = fs.remeasure_goal if cfg.target_rel_l2 is None else cfg.target_rel_l2
    est = rounding_error(plans, noise, st.d) * cfg.input_scale / max(size, 1e-300)
    st.long_steps = bool(est > ss.long_steps_factor * goal)
    if st.long_steps:
        logger.info("stencil rounding would leave rel L2 up to %.2g: longer steps (crossing "
                    "rate %g)", est, WIDE_CROSSING_RATE)
    return st.long_steps
