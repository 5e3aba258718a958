"""Finishing (float64 answers): pin the offset of imprecise neurons on the line along their
normal, orient the weakest from kinks on their hyperplane, and measure again the directions
that dominate the model's error."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .._errors import BudgetExhausted
from .lines import Line, line_reach
from .neurons import jumps_to_neurons
from .pin import OWN_MARGIN, PIN_POINTS, PinPlan, foot_crossings, pin_fit, pin_plans, plane_fit
from .regions import LineScan, make_plans
from .session import chunks
from .tasks import JacobianTask, output_scale

if TYPE_CHECKING:
    from .loop import Coordinator

logger = logging.getLogger(__name__)


def pin(eng: Coordinator) -> int:
    """Float64 answers: re-locate the offset and output vector of every neuron whose
    direction error could move its bias by more than pin_err (weak neurons: small
    jumps) from the kink on the line along its normal through its foot (:mod:`.pin`,
    four queries each), then :func:`orient` and :func:`remeasure`. Keeps each step
    when validation does not get worse. A neuron whose kink is not where its foot says
    (a weak merge of two hyperplanes) goes if validation does not get worse without
    it. Records what it did in ``st.finishing``; returns the neurons pinned."""
    fs = eng.settings.finish
    st = eng.st
    ns = st.neurons
    if ns is None or ns.size == 0 or eng.imprecise:
        return 0
    q0, val0 = eng.session.queries, st.val_rel_l2
    beta = np.abs(ns.b) / np.maximum(np.linalg.norm(ns.W, axis=1), 1e-300)
    weak = ns.err > fs.pin_err * np.maximum(1.0, beta)
    amp = np.linalg.norm(ns.a, axis=1)
    score = amp * ns.err * np.maximum(1.0, beta)
    if st.val_rel_l2 > fs.remeasure_goal:
        # above the fidelity goal: also the neurons whose bias error weighs most
        weak |= score > fs.pin_score * np.median(score)
    idx = np.flatnonzero(weak)
    st.finishing = {"candidates": int(idx.size), "planned": 0, "pinned": 0,
                    "dropped": 0, "oriented": 0, "remeasured": 0, "queries": 0,
                    "validation_rel_l2_before": float(val0),
                    "validation_rel_l2_after": float(val0)}
    planned, pinned, failed, kinks = 0, 0, [], {}
    if idx.size:
        planned, pinned, failed, kinks = pin_pass(eng, idx, ns.err, eng.target,
                                                         fs.pin_keep)
    if st.val_rel_l2 > fs.remeasure_goal:
        # a kink a fully searched line placed off a neuron's hyperplane
        # (_note_offsets) weighs as a bias error that large; those neurons are pinned
        # in a window that wide, and kept on their own (a wide window can take a
        # neighbour's kink)
        ns = st.neurons
        off = np.array([st.offsets.get((int(li), float(t)), 0.0)
                        for li, t in zip(ns.line, ns.t)])
        extra = np.flatnonzero((amp * off > fs.pin_score * np.median(score))
                               & (off > ns.err * np.maximum(1.0, beta)))
        extra = np.setdiff1d(extra, list(kinks))
        if extra.size:
            err = ns.err.copy()
            err[extra] = off[extra] / np.maximum(1.0, beta[extra])
            st.finishing["candidates"] += int(extra.size)
            n_plans, n_pinned, more_failed, more = pin_pass(eng, extra, err, 0.0, 1.0)
            planned += n_plans
            pinned += n_pinned
            failed += more_failed
            kinks.update(more)
    if not planned:
        return 0
    oriented = orient(eng, kinks) if kinks else 0
    remeasured = (remeasure(eng, kinks)
                  if kinks and st.val_rel_l2 > fs.remeasure_goal else 0)
    dropped = 0
    if failed and eng.keep_if_no_worse(st.neurons.take(
            np.setdiff1d(np.arange(st.neurons.size), failed))):
        dropped = len(failed)
    logger.info("pin: %d of %d imprecise neurons pinned (%d planned), %d dropped",
                pinned, st.finishing["candidates"], planned, dropped)
    st.finishing.update(planned=int(planned), pinned=int(pinned), dropped=int(dropped),
                        oriented=int(oriented), remeasured=int(remeasured),
                        queries=int(eng.session.queries - q0),
                        validation_rel_l2_after=float(st.val_rel_l2))
    return pinned


def pin_pass(eng: Coordinator, idx: np.ndarray, err: np.ndarray, allowed: float,
              keep: float) -> tuple:
    """Pin neurons ``idx`` of ``st.neurons`` with direction errors ``err`` (their
    windows); the pins are kept if validation stays within ``keep`` times its value
    or at most ``allowed``.
    Returns (plans made, neurons pinned, neurons whose pin failed, {neuron: (plan, t,
    answers)} of the kept pins)."""
    fs = eng.settings.finish
    st = eng.st
    ns = st.neurons
    scale = eng.cfg.input_scale
    # the line through each foot; where another hyperplane crowds it, a line through a
    # point of the hyperplane near it (bias error: the direction error times that
    # distance, pin_shift); then, for the neurons still without a line, the same with a
    # window pin_tight times the error estimate (estimates run ~10x the true error: a
    # weak neuron's own window of 0.07 found no gap among 1,024 hyperplanes; pin_fit
    # still requires the neuron's own slope change)
    plans: list[PinPlan] = []
    margins: dict[int, float] = {}
    for margin in (OWN_MARGIN, fs.pin_tight * OWN_MARGIN):
        rest = np.setdiff1d(idx, [p.neuron for p in plans])
        if rest.size == 0:
            break
        plans += pin_plans(ns.W, ns.b, err, rest, scale, own_margin=margin)
        rest = np.setdiff1d(idx, [p.neuron for p in plans])
        many = np.repeat(rest, fs.pin_retries)
        z = eng.streams.pin_shift().standard_normal((many.size, st.d))
        U = ns.W[many] / np.linalg.norm(ns.W[many], axis=1, keepdims=True)
        z -= np.sum(z * U, axis=1, keepdims=True) * U
        z *= fs.pin_shift * scale / np.linalg.norm(z, axis=1, keepdims=True)
        seen: set[int] = set()
        for p in pin_plans(ns.W, ns.b, err, many, scale, shift=z, own_margin=margin):
            if p.neuron not in seen:
                seen.add(p.neuron)
                plans.append(p)
        for p in plans:
            margins.setdefault(p.neuron, margin)
    # a line through the foot shifted by z gives the bias with the direction error
    # times z; its mirror through the foot shifted by -z, the opposite error: the two
    # together cancel it (a weak d=8 neuron known to 2.6e-5 rad: bias 1.2e-6 off from
    # one shifted line, outside the 1e-6 that neurons are matched by)
    mirrors: dict[int, PinPlan] = {}
    for p in plans:
        norm = float(np.linalg.norm(ns.W[p.neuron]))
        z = p.foot + (ns.b[p.neuron] / norm) * p.normal  # the shift from the foot
        if float(np.linalg.norm(z)) <= 1e-9 * scale:  # the foot's own line
            continue
        for q in pin_plans(ns.W, ns.b, err, np.array([p.neuron]), scale,
                           shift=-z[None, :], own_margin=margins[p.neuron]):
            mirrors[p.neuron] = q
    b, a = ns.b.copy(), ns.a.copy()
    pinned, failed = 0, []
    kinks: dict[int, tuple[PinPlan, float, np.ndarray]] = {}  # neuron: plan, t, answers
    n_mirrored = 0
    # one round trip for every pin when the budget holds them all; otherwise in
    # chunks, so that a budget running out keeps the pins already paid
    chunk = len(plans) if eng.session.affords(PIN_POINTS * len(plans)) else fs.pin_chunk
    try:
        for group in chunks(plans, max(chunk, 1)):
            for p, (fit, Yp) in zip(group, fit_pins(eng, group, ns.a)):
                if fit is None:
                    failed.append(p.neuron)
                    continue
                # the foot moves by t along the unit normal; rows of W are unit
                b[p.neuron] -= fit[0] * float(np.linalg.norm(ns.W[p.neuron]))
                a[p.neuron] = fit[1]
                kinks[p.neuron] = (p, fit[0], Yp)
                pinned += 1
        mirrored = [mirrors[n] for n in kinks if n in mirrors]
        if mirrored:
            for q, (fit, _) in zip(mirrored, fit_pins(eng, mirrored, ns.a)):
                if fit is not None:
                    t = 0.5 * (kinks[q.neuron][1] + fit[0])
                    b[q.neuron] = ns.b[q.neuron] - t * float(np.linalg.norm(
                        ns.W[q.neuron]))
                    a[q.neuron] = 0.5 * (a[q.neuron] + fit[1])
                    n_mirrored += 1
    except BudgetExhausted as exc:
        logger.warning("%s; pinning stopped (the pins measured so far are kept)", exc)
    # pins are checked one by one (pin_fit); validation only guards against a gross
    # failure: where a missing neuron dominates it, a strong neighbour's measurement
    # that absorbs part of it can make one correct pin look slightly worse, and that
    # must not keep every pin out
    if pinned and not eng.keep_if_no_worse(replace(ns, b=b, a=a), allowed, keep):
        pinned = 0
        kinks.clear()
    if pinned:
        eng.st.counters["pins_mirrored"] += n_mirrored
    return len(plans), pinned, failed, kinks


def fit_pins(eng: Coordinator, plans: list, a: np.ndarray) -> list:
    """Query the points of ``plans`` in one batch and fit each
    (:func:`.pin.pin_fit`, against the output vectors ``a`` of the neurons, indexed by
    ``plan.neuron``): one ``(fit or None, its answers)`` per plan."""
    st = eng.st
    Y = eng.session.eval(np.concatenate([p.points() for p in plans], axis=0))
    sig = st.noise * output_scale(Y, st.fref, st.absolute)
    out = []
    for i, p in enumerate(plans):
        rows = slice(PIN_POINTS * i, PIN_POINTS * (i + 1))
        out.append((pin_fit(p, Y[rows], sig[rows], a[p.neuron], eng.check_factor),
                    Y[rows]))
    return out


def orient(eng: Coordinator, kinks: dict) -> int:
    """The hyperplane of each pinned neuron whose direction is known worse than
    orient_err, from kinks located on it: lines along its normal through ``d +
    orient_points`` seeded points of its hyperplane around the foot (four queries each,
    :func:`.pin.pin_fit`), and a plane through them (:func:`.pin.plane_fit`). A weak
    neuron's Jacobian jump leaves its direction off by the noise over its small output
    vector (for output weights near 1e-5, 1 − cos beyond DESIGN.md's 1e-9); a kink's
    position is known to the noise over its slope change, 1e-10 there.
    Kept when validation does not get worse. Returns the neurons fitted."""
    fs = eng.settings.finish
    st, cfg = eng.st, eng.cfg
    ns = st.neurons
    d, s = st.d, cfg.input_scale
    n_pts = d + fs.orient_points
    cap = max(fs.orient_min, int(fs.orient_share * ns.size * (d + 1) // (PIN_POINTS * n_pts)))
    picks = [int(j) for j in np.argsort(-ns.err)[:cap]
             if int(j) in kinks and ns.err[j] > fs.orient_err]
    if not picks:
        return 0
    W, b, err = ns.W.copy(), ns.b.copy(), ns.err.copy()
    jobs = []
    for j in picks:
        w0 = ns.W[j] / np.linalg.norm(ns.W[j])
        # offsets inside the hyperplane, about one input scale long; the kink is looked
        # for within one (conservative) direction error of each point: the fit refuses
        # a kink found further off
        # (twice as many candidates: some have a neighbour too close; then, as pin()
        # does, a window pin_tight times the estimate from four times as many)
        for margin, many in ((fs.orient_margin, 2), (fs.pin_tight * fs.orient_margin, 4)):
            z = eng.streams.orient(j).standard_normal((many * n_pts, d)) * (s / np.sqrt(d))
            z -= (z @ w0)[:, None] * w0[None, :]
            plans = pin_plans(ns.W, ns.b, ns.err, np.full(many * n_pts, j), s, shift=z,
                              own_margin=margin)[:n_pts]
            if len(plans) >= d:
                break
        if len(plans) >= d:
            jobs.append((j, w0, plans))
    # every neuron's points in one round trip when the budget holds them all
    together = eng.session.affords(PIN_POINTS * sum(len(p) for _, _, p in jobs))
    all_fits = []
    try:
        if together and jobs:
            fits = fit_pins(eng, [p for _, _, plans in jobs for p in plans], ns.a)
            at = np.cumsum([0] + [len(plans) for _, _, plans in jobs])
            all_fits = [fits[at[i]:at[i + 1]] for i in range(len(jobs))]
        else:
            for _, _, plans in jobs:
                all_fits.append(fit_pins(eng, plans, ns.a))
    except BudgetExhausted as exc:
        logger.warning("%s; orienting stopped", exc)
    done = 0
    for (j, w0, plans), fits in zip(jobs, all_fits):
        plan0, t0, _ = kinks[j]
        pts = [plan0.foot + t0 * plan0.normal]
        pts += [p.foot + fit[0] * p.normal for p, (fit, _) in zip(plans, fits)
                if fit is not None]
        if len(pts) < d + 1:
            continue
        w, beta, resid = plane_fit(np.array(pts), w0)
        # the points must lie on one plane far better than the old direction placed them
        if resid > 0.1 * err[j] * (max(1.0, abs(b[j])) + s):
            continue
        W[j], b[j], err[j] = w, beta, resid
        done += 1
    if done and not eng.keep_if_no_worse(replace(ns, W=W, b=b, err=err)):
        done = 0
    logger.info("orient: %d of %d imprecise neurons fitted to kinks on their hyperplane",
                done, len(picks))
    return done


def remeasure(eng: Coordinator, kinks: dict) -> int:
    """Measure again, at its foot, the direction of each pinned neuron among those with
    the largest ``|a|·err`` (the terms that dominate the model's error once every neuron
    is found: a few neurons tens of times less precise than the median can make most of
    the error). The two regions beside the foot on the line along the normal get a
    stencil each (2·(d + checks + 1) queries); the new direction is averaged with the
    old by precision, and the bias taken from the pinned kink. Kept when validation does
    not get worse. Returns the neurons measured again."""
    fs = eng.settings.finish
    st, cfg = eng.st, eng.cfg
    ns = st.neurons
    d = st.d
    score = np.linalg.norm(ns.a, axis=1) * ns.err
    cost = 2 * (d + cfg.stencil_checks + 1)
    cap = int(fs.remeasure_share * ns.size * (d + 1) // cost)
    picks = [int(j) for j in np.argsort(-score)[:cap]
             if int(j) in kinks and score[j] > fs.remeasure_factor * np.median(score)]
    # worth it only if these terms are a good part of the error (score² as their share;
    # the error of a wide network is spread over many neurons)
    share = float(np.sum(score[picks] ** 2) / max(np.sum(score ** 2), 1e-300))
    if not picks or share < fs.remeasure_min_share:
        logger.info("remeasure: not worth it (%d candidates hold %.0f%% of the error "
                    "estimate, validation %.3g)", len(picks), 100 * share,
                    st.val_rel_l2)
        return 0
    reach = line_reach(d, cfg.line_reach, cfg.input_scale)
    jobs = []
    for j in picks:
        plan, tk, Y4 = kinks[j]
        t_other = foot_crossings(ns.W, ns.b, plan, reach)
        line = Line(index=len(st.lines), u=plan.foot, v=plan.normal, reach=float(reach),
                    seed=int(eng.streams.remeasure_line(j).integers(2**63 - 1)))
        kk = np.sort(np.append(t_other, tk))
        own = int(np.searchsorted(kk, tk))
        lo = kk[own - 1] if own > 0 else -reach
        hi = kk[own + 1] if own + 1 < kk.size else reach
        jobs.append((j, line, kk, own, plan, Y4, np.array([0.5 * (lo + tk),
                                                            0.5 * (tk + hi)])))
    mids = np.concatenate([job[1].points(job[6]) for job in jobs], axis=0)
    try:
        Ym = eng.session.eval(mids)
        tasks = []
        for i, (j, line, kk, own, plan, Y4, tm) in enumerate(jobs):
            t = np.concatenate([plan.t, tm])
            Y = np.concatenate([Y4, Ym[2 * i:2 * i + 2]], axis=0)
            order = np.argsort(t)
            scan = LineScan(t=t[order], values=Y[order],
                            scale=output_scale(Y[order], st.fref, st.absolute),
                            kinks=kk, resolved=np.ones(kk.size, dtype=bool))
            plans = make_plans(scan, reach, d, cfg.stencil_checks, eng.crossing_rate,
                               regions=(own, own + 1))
            tasks.append(JacobianTask(line, plans, st.noise, eng.check_factor,
                                      cfg.stencil_checks, st.fref, absolute=st.absolute))
        results = eng.session.map(tasks)
    except BudgetExhausted as exc:
        logger.warning("%s; measuring again stopped", exc)
        return 0
    W, b, err = ns.W.copy(), ns.b.copy(), ns.err.copy()
    done = 0
    for (j, line, kk, own, plan, Y4, tm), regions in zip(jobs, results):
        found = jumps_to_neurons(line, regions, np.concatenate([[-reach], kk, [reach]]),
                                 eng.rank_factor)
        if found.size != 1 or not found.err[0] > 0:
            continue
        w_new = found.W[0] * np.sign(found.W[0] @ W[j])
        wts = np.array([1.0 / err[j] ** 2, 1.0 / found.err[0] ** 2])
        w = (wts[0] * W[j] + wts[1] * w_new) / wts.sum()
        w /= np.linalg.norm(w)
        x_kink = plan.foot + kinks[j][1] * plan.normal
        W[j], b[j], err[j] = w, -float(w @ x_kink), 1.0 / np.sqrt(wts.sum())
        done += 1
    if done and not eng.keep_if_no_worse(replace(ns, W=W, b=b, err=err)):
        done = 0
    logger.info("remeasure: %d of %d neurons measured again at their foot", done,
                len(picks))
    return done
