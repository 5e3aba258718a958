"""The imprecise path (float32 or rounded answers): polish hyperplanes from kinks located
on further lines, refine every parameter by Gauss-Newton over bought Gaussian rows, prune the
neurons the refinement leaves without effect, and search again after a refinement that could
not fit the answers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .._errors import BudgetExhausted
from .._model import ReluNetwork
from . import update
from .birth import ROBUST_ROUNDS, add_missing_neurons, with_born
from .certificate import OBSERVABLE_NOISE, contribution
from .coverage import cover_points, cover_rows_wanted, quiet_points, rare_side_rows
from .fuse import FUSE_MAX_PAIRS, close_pairs, fuse_pairs, wedge_points
from .neurons import NeuronSet, crossings_inside, predicted_crossings
from .polish import HyperplaneEvidence, anchor_points, locate_crossings
from .refine import refine_network, refine_work
from .settings import is_coarse
from .solve import relative_error
from .state import LineRecord
from .tasks import output_scale

if TYPE_CHECKING:
    from .loop import Coordinator

logger = logging.getLogger(__name__)

IMPRECISE_SOLVE_POINTS = 4  # Gaussian points per unknown of the output solve
POLISH_TARGET_NOISE = 100.0  # polishing stops at this many times the relative noise
POLISH_STALL = 8  # ... or after this many lines without a 1% better validation error
POLISH_UNCONFIRMED = 5  # a neuron predicted on this many polish lines but never found goes
POLISH_OUTLIER = 12.0
POLISH_MIN_SHARE = 0.5
REFINE_OBS = 2.5  # Gaussian answers (rows × outputs) per unknown bought for the refinement
REFINE_FIRST_OBS = 1.25  # ... in rounds (refine_in_rounds): this many in the first round,
REFINE_CHECK_OBS = 0.25  # ... then this many held out, which the refined model must predict
REFINE_CHECK_MIN_VALIDATION = 64  # ... the validation points are those held-out rows
# (none bought) when the run has at least this many: Gaussian rows of their own stream that
# no fit uses (d16-k32-m1: 128 rows instead of 149 bought, 0.27·k(d+1) saved per run)
REFINE_HELDOUT_CHI2 = 4.0  # ... within this misfit per answer (χ², in answer errors), else
# the rest up to REFINE_OBS is bought and the refinement runs again over every row held
REFINE_ROUNDS_MAX_OUTPUTS = 3  # rounds only up to this many outputs: with more, every row
# answers several and REFINE_OBS costs at most ~0.5·k(d+1) rows; buying it whole keeps the
# neurons exact to float64 match tolerance (round:6, d32-k64-m5 seed 3 with rounds: 56 of 64
# within cos 1e-9, test_imprecise.test_extract_imprecise_oracle)
REFINE_TIE = 16 * np.finfo(float).eps  # validation errors this close (relative) tie: refined kept
REFINE_FIT_CHI2 = 100.0  # a refined misfit above this per answer: the fit failed (a neuron missing)
REFINE_JOINT_MAX_WORK = 1e7  # ... the joint refinement tried too where a CG iteration costs less
REFINE_LINE_ROWS = 0.5  # ... then retried over this many line rows per Gaussian row too,
REFINE_LINE_ROUNDS = 2  # its births' robust refits this many rounds at most (CPU: the line
# rows are ill-conditioned, ~4x the CG iterations of Gaussian rows)
REFINE_LINE_GAIN = 0.5  # a retry whose misfit stays above this share of the first fit's ...
REFINE_LINE_FUTILE = 2  # ... is futile; after this many futile ones a run retries no more
REFINE_LINE_MAX_WORK = 6e7  # ... and retries only where a CG iteration over the Gaussian rows
# costs at most this (d64-k128-m10 float32 seed 1: 1.2e8, the retry took its extractor CPU
# from 10 to 19 s against the 10 s; the d32-k64-m1 runs it fixes are at 4e7 to 5e7)
REFINE_MIN_OBS = 1.5  # fewer held than this: the refinement is not tried
REFINE_CHUNK = 2048  # Gaussian rows bought per batch of tasks
PRUNE_NOISE = 100.0  # a refined neuron adding less (rms) than this many answer errors ...
PRUNE_CHI2 = 1.05  # ... is dropped if the refit misfit stays within this factor
PRUNE_SINGLES = 8  # candidates tried one by one when dropping them all fails
PRUNE_MAX_CHI2 = 1.0  # ... only from a fit down to about the answers' errors; from one that
# could not fit them (a neuron missing or wrong), only a neuron adding less than:
PRUNE_UNCONVERGED_NOISE = 10.0  # this many answer errors (rms), or an undetermined one:
PRUNE_MIN_ACTIVE = 1.0  # active on fewer than this × (d + 2) of the rows held (its d + 1
# hyperplane parameters and output are not pinned by them; its kinks placed it, the rows
# cannot check it)
RECHECK_LINES = 4  # residual lines searched after a refinement that could not fit
PAIR_MISS = 4.0  # a close pair with a row in its wedge the refit misses by more than this
# many answer errors (the certificate's CHECK_ERRORS) ...
PAIR_ROWS = 2.0  # ... gets this many rows per hyperplane parameter (d + 2) inside its wedge:
# what pins one of the two hyperplanes against the other (pin_pairs)
PAIR_ROUNDS = 3  # ... in this many rounds at most (each refit moves a pair placed wrong part
# of the way: the next round's rows lie nearer the true wedge)
REFINE_MAX_WORK = 1e10  # flops of one refinement CG iteration at most (rows are sampled)
KINK_SIGMA_NOISE = 30.0  # a searched kink's w·x + b is known to this many noise / |a|
QUIET_WEAK = 1e4  # relative rounding only: a neuron contributing (rms over the bulk) less
# than this many roundings of the answers (and at least the observability floor,
# .certificate.OBSERVABLE_NOISE) is weak, and gets quiet rows (quiet_rounds; the neurons off
# the match tolerance on hard:norm_range d16-k32 seeds 30 and 34 add 20 to 6,000)
QUIET_OBS = 1.5  # quiet rows per round, per parameter of each weak neuron (d + 2)
QUIET_ROUNDS = 4  # quiet rounds at most (seeds 30, 34 with 8: 21 and 26 of 32 matched; 4: 20, 26)
COARSE_REFINE_OBS = 5.0  # coarse answers (settings.COARSE_NOISE): Gaussian answers per
# unknown bought for the refinement, at once (no rounds): the fit averages the rounding away
# (bfloat16, d32-k64-m3 seed 3: 2.5 in rounds, rel L2 4.4e-2; 5, 8.0e-3) ...
COARSE_ROUGH_NOISE = 2e-3  # ... and where the relative rounding is at least this (bfloat16's
COARSE_ROUGH_REFINE_OBS = 8.0  # 3.9e-3, not float16's 4.9e-4), this many: d32-k64-m3
# bfloat16 seeds 40-47 at 5 reached up to 1.66e-2 (s44), 1.43e-2 (s45) against the 1e-2
# target; at 8, at most 8.6e-3, rows -3% to +33% (BENCHMARKS.md). float16 rows sit at
# 5e-5 to 3e-4 with 5 and keep it.


def coarse(eng: Coordinator) -> bool:
    """Whether the answers are coarse (float16, bfloat16: relative rounding at least
    :data:`.settings.COARSE_NOISE`). Their region Jacobians place hyperplanes so roughly
    that a further searched line takes a known neuron for a new one: the model grows junk
    neurons line after line (bfloat16, d16-k32-m1 seed 0: 62 neurons after the first line,
    286 after ten, the query bound reached at rel L2 0.43). A coarse run refines the first
    line's neurons instead (:data:`COARSE_REFINE_OBS`); the refinement's births and prune
    add what is missing and drop the junk."""
    return is_coarse(eng.imprecise, eng.st.noise)


def polish_line(eng: Coordinator, index: int, ev: HyperplaneEvidence) -> int:
    """Locate every predicted crossing of a further line from two anchors per gap and
    add each located kink to its neuron's constraints. Returns the kinks added."""
    st = eng.st
    q0 = eng.session.queries
    line = eng.line(index)
    reach = line.reach
    ns = st.neurons
    tm, tol, _ = predicted_crossings(line, ns)
    order = crossings_inside(tm, reach, 1e-6, tol)
    tp, tolp = tm[order], tol[order]
    anchors = anchor_points(tp, reach)
    X = line.points(anchors)
    Y = eng.session.eval(X)
    sig = eng.st.noise * output_scale(Y, st.fref, st.absolute)
    found = locate_crossings(tp, order, anchors, Y, sig, ns.W, ns.a, line.v, tolp)
    ev.predicted[order] += 1
    ev.add(found, line.u, line.v)
    eng.paid.add(X, Y)
    scan_kinks = np.sort(np.array([c.t for c in found]))
    st.lines.append(LineRecord(
        index=line.index, kind="polish", u=line.u, v=line.v, reach=line.reach,
        kinks=scan_kinks, resolved=np.ones(scan_kinks.size, dtype=bool),
        regions_measured=0, regions_failed=0, regions_repaired=0,
        queries=eng.session.queries - q0))
    return len(found)


def refit_hyperplanes(eng: Coordinator, ev: HyperplaneEvidence) -> None:
    """Every neuron with kink constraints gets its posterior hyperplane; a constraint far
    off its neuron's fit (a kink measured for the wrong neuron) is dropped."""
    ns = eng.st.neurons
    W, b, err = ns.W.copy(), ns.b.copy(), ns.err.copy()
    for n in np.flatnonzero(ev.counts()):
        for _ in range(3):
            w, bb, e = ev.fit(int(n))
            r = np.abs(ev.residuals(int(n), w, bb))
            if r.size <= 2 or r.max() <= POLISH_OUTLIER:
                break
            ev.rows[n].pop(int(np.argmax(r)))
        W[n], b[n], err[n] = w, bb, e
    eng.st.neurons = NeuronSet(W, b, ns.a, err, ns.rank_residual, ns.line, ns.t, ns.count)


def refine_rows(eng: Coordinator, rows: int) -> bool:
    """Whether a refinement over ``rows`` rows fits the size gate (REFINE_MAX_WORK)."""
    st = eng.st
    return refine_work(rows, st.neurons.size, st.d, st.m) <= REFINE_MAX_WORK


def refine(eng: Coordinator, extra_rows: bool = True, cover: bool = True,
           obs: float | None = None, start: int = 0, keep_within: float = 0.0,
           late: bool = False) -> bool:
    """Gauss-Newton refinement of every parameter over the paid answers
    (:mod:`.refine`), with Gaussian rows bought for it when ``extra_rows`` (about
    REFINE_OBS answers per unknown), and with ``cover`` rows near hyperplanes the rows
    held rarely cross (:mod:`.coverage`). Keeps the refined model
    when it validates better. Returns False (nothing bought or changed) when the size
    gate (REFINE_MAX_WORK) rules it out or too few rows are held to pin every
    parameter. A refined model validating within ``keep_within`` (relative L2) is kept even
    when it validates worse (:mod:`.repair`: its check rows judge it instead). ``late``: a
    repair's refit, whose births accept late (:func:`.birth.add_missing_neurons`)."""
    st, cfg = eng.st, eng.cfg
    ns = st.neurons
    k, d, m = ns.size, st.d, st.m
    unknowns = k * (d + 2) + m * (d + 1)
    obs = REFINE_OBS if obs is None else obs
    n_new = int(np.ceil(obs * unknowns / m)) if extra_rows else 0
    Xb = gaussian_rows(eng, start, n_new)
    if cover:
        # hyperplanes the rows held rarely cross (far out, or a neuron new since the
        # last refinement) get rows near them (.coverage)
        held = rare_side_rows(ns.W, ns.b, np.concatenate([eng.paid.Xs, Xb]))
        wanted = cover_rows_wanted(held, d)
        # a neuron whose output is at the noise needs none (the prune drops it)
        wanted[np.linalg.norm(ns.a, axis=1) * cfg.input_scale
               < PRUNE_NOISE * st.noise * st.fref] = 0
        Xc = cover_points(ns.W, ns.b, wanted, eng.streams.cover_rows(len(st.lines)),
                          cfg.input_scale)
        Xb = np.concatenate([Xb, Xc])
    if not refine_rows(eng, eng.paid.Xs.shape[0] + Xb.shape[0]):
        if extra_rows:
            return False
        Xb = Xb[:0]
    n_new = Xb.shape[0]
    if n_new:
        # bought in chunks: a budget that runs out keeps the chunks already paid
        for lo in range(0, n_new, REFINE_CHUNK):
            Xn = Xb[lo:lo + REFINE_CHUNK]
            Yn = eng.session.eval(Xn)
            eng.paid.hold(Xn, Yn)
        eng.assemble()
    # Gaussian rows only: stencil rows cluster around a few lines (their spread across
    # directions is a stencil step), which slows the solve ~10x and adds little
    X, Y = eng.paid.Xs, eng.paid.Ys.reshape(-1, m)
    # (a round of refine_in_rounds buys fewer than REFINE_MIN_OBS: its rows are enough)
    min_obs = min(REFINE_MIN_OBS, obs) if extra_rows else REFINE_MIN_OBS
    if not extra_rows and st.m <= REFINE_ROUNDS_MAX_OUTPUTS and (st.refinement or {}).get("runs"):
        # after a first round whose held-out check (the validation points) passed, the rows
        # held are REFINE_FIRST_OBS per unknown (no held-out rows join them): a refit over
        # them (recheck, budget) is not ruled out for that
        min_obs = min(min_obs, REFINE_FIRST_OBS)
    if X.shape[0] * m < min_obs * unknowns or not refine_rows(eng, X.shape[0]):
        return n_new > 0
    sigma = st.noise * output_scale(Y, st.fref, st.absolute)
    res, born = fit_answers(st.model, X, Y, sigma, late=late)
    retried = retry_kept = futile = False
    prev = st.refinement or {}
    if (res.chi2 > REFINE_FIT_CHI2 and eng.paid.total
            and prev.get("line_row_retries_futile", 0) < REFINE_LINE_FUTILE
            and refine_work(X.shape[0], k, d, m) <= REFINE_LINE_MAX_WORK):
        retried = True
        chi2 = res.chi2
        res, born, retry_kept = _refit_over_line_rows(eng, X, Y, sigma, res, born, late)
        futile = not res.chi2 < REFINE_LINE_GAIN * chi2
    if born:
        last = st.lines[-1]
        ns = with_born(ns, res.model, born, len(st.lines) - 1, last.u, last.v)
    keep = np.arange(ns.size)
    res, keep = prune(eng, res, X, Y, sigma, keep)
    res, keep, X = fuse(eng, res, X, Y, sigma, keep)
    err, mx = relative_error(res.model, eng.paid.Xv, eng.paid.Yv)
    logger.info("refine: %d rows, %d steps, %d CG iterations, chi2 %.3g -> %.3g, "
                "%d neurons dropped, validation rel L2 %.3g -> %.3g", X.shape[0],
                res.steps, res.cg_iterations, res.chi2_start, res.chi2,
                ns.size - keep.size, st.val_rel_l2, err)
    # an equal validation error (within rounding: a pruned neuron without effect, a refit
    # that moved nothing) keeps the refined model, fitted to every row held
    kept = bool(err <= max(st.val_rel_l2 * (1.0 + REFINE_TIE), keep_within))
    st.refinement = {
        "runs": prev.get("runs", 0) + 1, "rows": int(X.shape[0]),
        "rows_bought": prev.get("rows_bought", 0) + int(n_new),
        "steps": prev.get("steps", 0) + int(res.steps),
        "cg_iterations": prev.get("cg_iterations", 0) + int(res.cg_iterations),
        "chi2_per_answer": float(res.chi2) if kept else prev.get(
            "chi2_per_answer", float(res.chi2)),
        "neurons_dropped": prev.get("neurons_dropped", 0) + (
            int(ns.size - keep.size) if kept else 0),
        "validation_rel_l2_before": prev.get("validation_rel_l2_before",
                                             float(st.val_rel_l2)),
        "validation_rel_l2_after": float(min(err, st.val_rel_l2)),
        "kept": kept or prev.get("kept", False),
        "line_row_retries": prev.get("line_row_retries", 0) + int(retried),
        "line_row_retries_kept": prev.get("line_row_retries_kept", 0) + int(retry_kept),
        "line_row_retries_futile": prev.get("line_row_retries_futile", 0) + int(futile)}
    if kept:
        st.model, st.val_rel_l2, st.val_max_abs = res.model, err, mx
        st.neurons = _neurons_of(res.model, ns.take(keep))
    return True


def gaussian_rows(eng: Coordinator, start: int, n: int) -> np.ndarray:
    """Rows ``start`` to ``start + n`` of the refinement's Gaussian stream (rounds of
    :func:`refine_in_rounds` buy consecutive slices: together the rows one round would)."""
    X = eng.streams.refine_rows().standard_normal((start + n, eng.st.d))
    return X[start:] * eng.cfg.input_scale


def refine_in_rounds(eng: Coordinator) -> bool:
    """:func:`refine` with its Gaussian rows bought in rounds: REFINE_FIRST_OBS answers per
    unknown first; then REFINE_CHECK_OBS more, held out of that fit, which its model must
    predict within REFINE_HELDOUT_CHI2 per answer. Where it does, the held-out rows join the
    rows held and nothing more is bought; where it does not (the rows too few to pin every
    parameter, or the fit stuck), the rest up to REFINE_OBS is bought and the refinement runs
    again over every row held, from the model the first round kept. Returns what :func:`refine` returns."""
    st = eng.st
    if coarse(eng):
        rough = st.noise >= COARSE_ROUGH_NOISE
        return refine(eng, obs=COARSE_ROUGH_REFINE_OBS if rough else COARSE_REFINE_OBS)
    if REFINE_FIRST_OBS >= REFINE_OBS or st.m > REFINE_ROUNDS_MAX_OUTPUTS:
        return refine(eng)
    k, d, m = st.neurons.size, st.d, st.m
    unknowns = k * (d + 2) + m * (d + 1)
    n_first = int(np.ceil(REFINE_FIRST_OBS * unknowns / m))
    futile = (st.refinement or {}).get("line_row_retries_futile", 0)
    if not refine(eng, obs=REFINE_FIRST_OBS):
        return False
    on_validation = eng.paid.Xv.shape[0] >= REFINE_CHECK_MIN_VALIDATION
    if on_validation:
        # the validation points are Gaussian rows of their own stream, never fitted: they
        # are the held-out rows, and none is bought for the check
        n_check = 0
        Xh, Yh = eng.paid.Xv, eng.paid.Yv.reshape(-1, m)
    else:
        n_check = int(np.ceil(REFINE_CHECK_OBS * unknowns / m))
        Xh = gaussian_rows(eng, n_first, n_check)
        Yh = eng.session.eval(Xh).reshape(-1, m)
    sigma = st.noise * output_scale(Yh, st.fref, st.absolute)
    R = (Yh - st.model(Xh).reshape(-1, m)) / sigma.reshape(-1, 1 if sigma.ndim == 1 else m)
    chi2 = float(np.mean(R * R))
    if n_check:
        eng.paid.hold(Xh, Yh)
    ref = st.refinement or {}
    fit_chi2 = ref.get("chi2_per_answer", np.inf)
    st.refinement = dict(ref, heldout_rows=n_check, heldout_chi2_per_answer=chi2,
                         heldout_on_validation=on_validation)
    logger.info("refine: %d held-out rows, chi2 %.3g per answer (fit %.3g)", Xh.shape[0],
                chi2, fit_chi2)
    if chi2 <= REFINE_HELDOUT_CHI2:
        return True
    # (with the check on the validation points, the second round's rows are the same slice
    # of the stream as the held-out and rest rows together before)
    rest = REFINE_OBS - REFINE_FIRST_OBS - (0.0 if on_validation else REFINE_CHECK_OBS)
    # from the model the first round kept (d16-k32-m1 biases N(0, 4) seed 22: from the one
    # it started from, 1 of 30 matched against 29); its line-row retries, over too few rows,
    # do not count as futile: a later stuck fit may still retry (biases N(0, 0.25) seed 22:
    # 27 of 32 matched, 32 of 32 with it)
    st.refinement["line_row_retries_futile"] = futile
    refine(eng, extra_rows=rest > 0, obs=max(rest, 0.0), start=n_first + n_check)
    st.refinement.update(rounds=2, heldout_rows=n_check, heldout_chi2_per_answer=chi2)
    return True


def _refit_over_line_rows(eng: Coordinator, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray,
                          res, born: int, late: bool = False):
    """After a fit over the Gaussian rows that could not reach the answers (χ² per answer
    above REFINE_FIT_CHI2: a neuron missing or misplaced, the fit stuck), fit again from the
    same model over the Gaussian rows plus a random sample of the line rows held (stencil
    rows and polish anchors, :class:`.paid.PaidRows`: they lie near the hyperplanes the lines
    crossed, where a misplaced neuron's error shows), at most REFINE_LINE_ROWS per Gaussian
    row and within REFINE_MAX_WORK; then over the Gaussian rows alone again from there. That
    last fit replaces the first when its misfit over the same Gaussian rows is lower: the
    two are fits of the same rows, compared on thousands of answers (the 128 validation
    points cannot tell a model off near one rarely active neuron).

    d16-k32-m1 biases N(0, 0.25) seed 6, float32: the Gaussian fit stops at χ² 8.6e6 per
    answer with 30 neurons (12 of 32 matched at the end, 18 spurious); over 648 more line
    rows it reaches 0.055 with two neurons born, and 0.030 back over the Gaussian rows
    (32 of 32 at 1.4e-8).

    A retry that leaves the misfit above REFINE_LINE_GAIN of the first fit's is futile, and
    :func:`refine` tries none after REFINE_LINE_FUTILE of them: d32-k64-m1 biases N(0, 1)
    seed 21 retried 4 times, each within 10% of the first fit's misfit, 104 s of its 130 s
    extractor CPU.

    Returns the refinement, the neurons born (the model's last ones) and whether the retry
    was kept."""
    st, paid = eng.st, eng.paid
    m = st.m
    k, d = st.model.W.shape
    cap = int(REFINE_LINE_ROWS * X.shape[0])
    per_row = refine_work(1, k, d, m)
    cap = min(cap, int(REFINE_MAX_WORK / per_row) - X.shape[0])
    if cap <= 0:
        return res, born, False
    Xl, Yl = paid.sample(cap, m, eng.streams.refit_rows(len(st.lines)))
    Xa, Ya = np.concatenate([X, Xl]), np.concatenate([Y, Yl.reshape(-1, m)])
    wide, born_w = fit_answers(st.model, Xa, Ya,
                               st.noise * output_scale(Ya, st.fref, st.absolute),
                               rounds=REFINE_LINE_ROUNDS, late=late)
    back, born_b = fit_answers(wide.model, X, Y, sigma, late=late)
    logger.info("refine: over the Gaussian rows chi2 %.3g per answer; over %d line rows too "
                "%.3g, then over the Gaussian rows again %.3g (%d + %d neurons born)",
                res.chi2, Xl.shape[0], wide.chi2, back.chi2, born_w, born_b)
    if back.chi2 < res.chi2:
        return back, born_w + born_b, True
    return res, born, False


def fit_answers(model: ReluNetwork, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray,
                rounds: int = ROBUST_ROUNDS, late: bool = False):
    """Refine ``model`` over the rows by variable projection (:mod:`.refine`); while the
    misfit stays far above the noise (a neuron missing), fit neurons to the outliers
    (:mod:`.birth`). Where that still leaves the misfit above REFINE_FIT_CHI2 per answer,
    the joint refinement (and births) from ``model`` too, and the lower misfit of the two:
    the joint steps, moving output weights and hyperplanes together, can carry a spare
    neuron onto a missing one where variable projection stops (d16-k32-m1 biases N(0, 1)
    seed 1: 9.0e6 against 2.8e4 per answer, then a false certificate). Only where its
    conjugate-gradient iteration costs at most REFINE_JOINT_MAX_WORK flops: its 6,000
    exact iterations cost 43 s of a d64-k128-m10 run's 50 s, and helped neither of the two
    such runs where it was tried.
    ``late``: a repair's refit, whose births accept late (:mod:`.birth`).
    Returns the refinement and the number of neurons born (the model's last ones)."""
    res, born = add_missing_neurons(refine_network(model, X, Y, sigma), X, Y, sigma, rounds,
                                    late=late)
    k, d = model.W.shape
    if (res.chi2 <= REFINE_FIT_CHI2
            or refine_work(X.shape[0], k, d, Y.shape[1]) > REFINE_JOINT_MAX_WORK):
        return res, born
    alt, alt_born = add_missing_neurons(refine_network(model, X, Y, sigma, method="joint"),
                                        X, Y, sigma, rounds, late=late)
    logger.info("refine: variable projection ends at chi2 %.3g per answer, the joint "
                "refinement at %.3g", res.chi2, alt.chi2)
    return (alt, alt_born) if alt.chi2 < res.chi2 else (res, born)


def prune(eng: Coordinator, res, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray,
           keep: np.ndarray):
    """Drop neurons the refinement left without effect (a spurious neuron's output
    vector goes to about the noise): candidates add less than PRUNE_NOISE answer errors
    (rms) anywhere on the rows; they go, all at once or else one by one, when the
    refitted misfit stays within PRUNE_CHI2 of the full model's.

    After a fit that could not reach the answers' errors (chi² per answer above
    PRUNE_MAX_CHI2: a neuron missing or wrong) the candidates are the neurons adding less
    than PRUNE_UNCONVERGED_NOISE answer errors, and the undetermined ones: active on fewer
    than PRUNE_MIN_ACTIVE·(d + 2) rows held. The same refit test decides: a neuron the
    answers need raises the misfit beyond it and stays."""
    model = res.model
    H = np.maximum(X @ model.W.T + model.b, 0.0)
    contrib = np.sqrt(np.mean(H * H, axis=0)) * np.linalg.norm(model.A, axis=0)
    noise = float(np.sqrt(np.mean(sigma * sigma)))
    if res.chi2 > PRUNE_MAX_CHI2:
        undetermined = np.sum(H > 0.0, axis=0) < PRUNE_MIN_ACTIVE * (X.shape[1] + 2)
        weak = np.flatnonzero((contrib < PRUNE_UNCONVERGED_NOISE * noise) | undetermined)
    else:
        weak = np.flatnonzero(contrib < PRUNE_NOISE * noise)
    if weak.size == 0:
        return res, keep
    dof = X.shape[1] + 2 + model.A.shape[0]

    def without(drop: np.ndarray):
        idx = np.setdiff1d(np.arange(model.W.shape[0]), drop)
        cand = ReluNetwork(model.W[idx], model.b[idx], model.A[:, idx], model.c, model.L,
                           metadata=dict(model.metadata))
        new = refine_network(cand, X, Y, sigma)
        allowed = PRUNE_CHI2 * res.chi2 + 4.0 * dof * drop.size / Y.size
        return (new, idx) if new.chi2 <= allowed else (None, None)

    new, idx = without(weak)
    if new is not None:
        return new, keep[idx]
    if weak.size == 1:
        return res, keep
    drop = [j for j in weak[np.argsort(contrib[weak])][:PRUNE_SINGLES]
            if without(np.array([j]))[0] is not None]
    if not drop:
        return res, keep
    new, idx = without(np.array(drop))
    return (new, keep[idx]) if new is not None else (res, keep)


def fuse(eng: Coordinator, res, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray,
         keep: np.ndarray):
    """Fold neurons split in two back into one (:mod:`.fuse`): for the refined model's
    close pairs (the FUSE_MAX_PAIRS closest), buy FUSE_ROWS rows inside each wedge (kept with the Gaussian rows), refit
    over the rows held, and fuse a pair when the refitted misfit stays within the prune's
    allowance for one neuron fewer, then :func:`prune` the refit over the same rows (a
    neuron the wedge rows leave without effect). Nothing is bought or fused after a fit that
    failed (misfit above REFINE_FIT_CHI2 per answer) or where the budget refuses the wedge
    rows. The pairs kept apart whose wedges the refit still misses get rows there
    (:func:`pin_pairs`). Returns the result, the neurons kept and the rows it was fitted
    over."""
    st, cfg = eng.st, eng.cfg
    model = res.model
    s = cfg.input_scale
    if res.chi2 > REFINE_FIT_CHI2:
        # a fit far from the answers' errors (a neuron missing or wrong) cannot tell one
        # neuron from two: the prune's allowance, relative to its misfit, would pass anything
        return res, keep, X
    pairs = close_pairs(model.W, model.b, s, limit=FUSE_MAX_PAIRS)
    if len(pairs) == 0:
        return res, keep, X
    m = Y.shape[1]
    Xw = wedge_points(model.W, model.b, pairs, eng.streams.fuse_rows(len(st.lines)), s)
    try:
        Yw = eng.session.eval(Xw).reshape(-1, m)
    except BudgetExhausted as exc:
        logger.warning("%s: the wedge rows of %d close pairs were not bought", exc, len(pairs))
        return res, keep, X
    eng.paid.hold(Xw, Yw)
    X, Y = np.concatenate([X, Xw], axis=0), np.concatenate([Y, Yw], axis=0)
    sigma = st.noise * output_scale(Y, st.fref, st.absolute)
    dof = X.shape[1] + 2 + m
    res = refine_network(model, X, Y, sigma)
    res, idx = fuse_pairs(res, X, Y, lambda cand: refine_network(cand, X, Y, sigma),
                          lambda chi2, n: PRUNE_CHI2 * chi2 + 4.0 * dof * n / Y.size, s)
    if idx.size < model.W.shape[0]:
        st.counters["neurons_fused"] += int(model.W.shape[0] - idx.size)
    # the refit over the wedge rows can leave one neuron of a pair it did not fuse without
    # effect (digits-h16 float32 seed 30, stencil crossing rate 0.15: output 1.9e-7 of the
    # others' 4, a spurious neuron and no certificate): the prune, over the same rows, drops it
    res, keep = prune(eng, res, X, Y, sigma, keep[idx])
    res, X = pin_pairs(eng, res, X, Y)
    return res, keep, X


def pin_pairs(eng: Coordinator, res, X: np.ndarray, Y: np.ndarray):
    """Close pairs the fuse kept apart whose wedge holds a row the refit misses by more than
    PAIR_MISS answer errors get PAIR_ROWS·(d + 2) rows inside their wedge (kept with the
    Gaussian rows), and the model is refitted over every row held; again, for the pairs
    still missed there, up to PAIR_ROUNDS times. Two true neurons that close differ from
    one only in their thin wedge, so only rows there pin one against the other; the fuse's
    FUSE_ROWS a pair tell one neuron from two, not where the two lie (d16-k32-m1
    near_parallel seed 32, float32: a pair 2.1e-5 rad and 2.9e-3 apart, each fitted 6e-4
    rad off, its wedge missed by 32 tolerances at the certificate). The wedge is the
    model's, so a pair placed wrong gets rows part of the true wedge each round (seed 20,
    from its final model: 36 rows a pair and a refit, three times, took the misfit 476 ->
    24 -> 2.6 per answer and 30 -> 31 of 32 matched). Returns the refinement and the rows
    it was fitted over."""
    st, cfg = eng.st, eng.cfg
    s = cfg.input_scale
    m = Y.shape[1]
    per_pair = int(np.ceil(PAIR_ROWS * (st.d + 2)))
    for _ in range(PAIR_ROUNDS):
        model = res.model
        pairs = close_pairs(model.W, model.b, s, limit=FUSE_MAX_PAIRS)
        if len(pairs) == 0:
            break
        sigma = st.noise * output_scale(Y, st.fref, st.absolute)
        miss = np.max(np.abs(Y - model.predict(X).reshape(-1, m)), axis=1) / sigma
        Z = X @ model.W.T + model.b
        wanted = [p for p in pairs
                  if np.any(miss[(Z[:, p[0]] > 0) != (p[2] * Z[:, p[1]] > 0)] > PAIR_MISS)]
        if not wanted:
            break
        Xp = wedge_points(model.W, model.b, np.array(wanted),
                          eng.streams.pair_rows(len(st.lines), X.shape[0]), s,
                          per_pair=per_pair)
        try:
            Yp = eng.session.eval(Xp).reshape(-1, m)
        except BudgetExhausted as exc:
            logger.warning("%s: the rows in the wedges of %d close pairs were not bought", exc,
                           len(wanted))
            break
        eng.paid.hold(Xp, Yp)
        X, Y = np.concatenate([X, Xp], axis=0), np.concatenate([Y, Yp], axis=0)
        res = refine_network(model, X, Y, st.noise * output_scale(Y, st.fref, st.absolute))
        logger.info("pairs: %d rows in the wedges of %d close pairs the refit missed there; "
                    "refit chi2 %.3g per answer", Xp.shape[0], len(wanted), res.chi2)
    return res, X


def recheck(eng: Coordinator, index: int) -> int:
    """After a refinement that could not fit the answers to their errors (a neuron
    missing or wrong: the Jacobians' imprecision hid it from the earlier lines), search
    residual lines against the refined model, whose residual is now near the noise
    everywhere but at the culprits, and refine again over the rows held."""
    st = eng.st
    best = (st.val_rel_l2, st.model, st.neurons, st.val_max_abs)
    for _ in range(RECHECK_LINES):
        ref = st.refinement
        if ref is None or ref["chi2_per_answer"] <= PRUNE_MAX_CHI2:
            break
        changes = update.residual_line(eng, index)
        index += 1
        if changes:
            refine(eng, extra_rows=False)
        if st.val_rel_l2 < best[0]:
            best = (st.val_rel_l2, st.model, st.neurons, st.val_max_abs)
    # a line's assemble replaces the refined model even when it validates worse: keep the
    # best one
    st.val_rel_l2, st.model, st.neurons, st.val_max_abs = best
    return index


def polish(eng: Coordinator, index: int) -> int:
    """Imprecise answers only: refine every parameter over bought Gaussian rows
    (:func:`refine`); where its size gate rules that out, polish hyperplanes from kinks
    on further lines while the validation error improves, then refine over the rows
    held if that fits the gate."""
    st = eng.st
    ns = st.neurons
    if ns is None or ns.size == 0:
        return index
    if refine_in_rounds(eng):
        return index
    index = polish_lines(eng, index)
    if st.val_rel_l2 > eng.target:
        refine(eng, extra_rows=False)
    return index


def weak_neurons(eng: Coordinator) -> np.ndarray:
    """Indices of the model's neurons contributing (rms over the Gaussian bulk,
    :func:`.certificate.contribution`) less than QUIET_WEAK roundings of the answers' rms
    size (the validation answers'), and at least the observability floor (OBSERVABLE_NOISE:
    the answers cannot show those); none for answers rounded to fixed decimals (their
    error does not shrink with the answer) or coarse ones."""
    st, cfg = eng.st, eng.cfg
    if st.absolute or coarse(eng) or st.model is None or st.model.hidden_dim == 0:
        return np.zeros(0, dtype=int)
    Yv = eng.paid.Yv.reshape(eng.paid.Yv.shape[0], -1)
    rms = float(np.sqrt(np.mean(Yv * Yv))) if Yv.size else st.fref
    share = contribution(st.model.W, st.model.b, st.model.A, cfg.input_scale) / max(
        st.noise * rms, 1e-300)
    return np.flatnonzero((share < QUIET_WEAK) & (share >= OBSERVABLE_NOISE))


def quiet_rounds(eng: Coordinator) -> int:
    """Relative rounding (float32): rows where the model's answers are near zero
    (:func:`.coverage.quiet_points`) for a model with weak neurons (:func:`weak_neurons`).
    There the answers err by a share of the output scale's floor only, not of the large
    answers of the strong neurons: a weak neuron's kink, hidden under that rounding on
    Gaussian rows, is measured there, and one the lines missed leaves a misfit there that
    the refinement's births (:mod:`.birth`) fit.

    Each round buys QUIET_OBS·(d + 2) rows per weak neuron from the current model's zero
    set; a model that predicts them within REFINE_HELDOUT_CHI2 per answer ends the rounds,
    else they join the rows held and the model is refined over them (kept while it
    validates within the target, as :mod:`.repair` keeps its refits). At most QUIET_ROUNDS
    rounds. Their rows are bought beyond the run's query bound, as the certificate's and the
    repair's are (they come after both, and the certificate's rows often took the run past
    its bound: hard:norm_range d16-k32 seed 31, float32, every round refused, 1.59e-6; bought,
    6.65e-7), within the caller's budget, whose refusal ends them. Returns the rows bought."""
    st, cfg = eng.st, eng.cfg
    bought = 0
    for r in range(QUIET_ROUNDS):
        weak = weak_neurons(eng)
        if weak.size == 0:
            break
        m = st.m
        n = int(np.ceil(QUIET_OBS * (st.d + 2) * weak.size))
        X = quiet_points(st.model, n, eng.streams.quiet_rows(r), cfg.input_scale)
        try:
            Y = eng.session.eval(X, capped=False).reshape(n, m)
        except BudgetExhausted as exc:
            logger.warning("%s: quiet round %d's %d rows were not bought", exc, r, n)
            break
        bought += n
        sigma = st.noise * output_scale(Y, st.fref, st.absolute)
        R = (Y - st.model.predict(X).reshape(n, m)) / sigma[:, None]
        chi2 = float(np.mean(R * R))
        eng.paid.hold(X, Y)
        logger.info("quiet round %d: %d weak neurons, %d rows, chi2 %.3g per answer", r,
                    weak.size, n, chi2)
        st.counters["quiet_rows"] = st.counters.get("quiet_rows", 0) + n
        if chi2 <= REFINE_HELDOUT_CHI2:
            break
        refine(eng, extra_rows=False, cover=False, keep_within=max(eng.target, st.val_rel_l2))
    return bought


def polish_lines(eng: Coordinator, index: int) -> int:
    st, cfg = eng.st, eng.cfg
    ns = st.neurons
    # the kink where each neuron was measured is a point of its hyperplane
    recs = {r.index: r for r in st.lines}
    X0 = np.array([recs[int(li)].u + t * recs[int(li)].v for li, t in zip(ns.line, ns.t)])
    amp = np.linalg.norm(ns.a, axis=1)
    sig0 = KINK_SIGMA_NOISE * st.noise * st.fref / np.maximum(amp, 1e-300)
    ev = HyperplaneEvidence.start(ns.W, ns.b, ns.err, X0, sig0)
    unknowns = ns.size + st.d + 1
    if unknowns <= cfg.solve_max_unknowns:
        n = IMPRECISE_SOLVE_POINTS * unknowns
        eng.paid.Xs = eng.streams.polish_solve().standard_normal((n, st.d)) * cfg.input_scale
        eng.paid.Ys = eng.session.eval(eng.paid.Xs)
        eng.assemble()
    best = (st.val_rel_l2, st.model, st.neurons, st.val_max_abs)
    kept = np.zeros(0, dtype=int)  # unconfirmed neurons the model needs
    stall = 0
    goal = max(eng.target_floor, POLISH_TARGET_NOISE * st.noise)
    floor = ns.size * (st.d + 1)
    # small networks spend more than the factor before polishing (fixed costs): they
    # still get half a floor's worth of polish lines
    cap = max(cfg.polish_query_factor * floor, eng.session.queries + POLISH_MIN_SHARE * floor)
    lines = 0
    while st.val_rel_l2 > goal and lines < st.d + 1 + POLISH_STALL:
        cost = 2 * (st.neurons.size + 1)
        if eng.session.queries + cost > cap:
            break
        polish_line(eng, index, ev)
        index += 1
        lines += 1
        refit_hyperplanes(eng, ev)
        eng.assemble()
        gone = ev.unconfirmed(POLISH_UNCONFIRMED)
        gone = gone[~np.isin(gone, kept)] if kept.size else gone
        if gone.size:
            # never found on several lines: removed if the model does not get worse
            keep = np.setdiff1d(np.arange(st.neurons.size), gone)
            if eng.keep_if_no_worse(st.neurons.take(keep)):
                ev = ev.take(keep)
                kept = np.searchsorted(keep, kept[np.isin(kept, keep)])
            else:
                kept = np.union1d(kept, gone)
        eng.emit("polish", line=index - 1)
        st.rounds.append(eng.round_info(index - 1, int(st.lines[-1].kinks.size), 0, 0))
        if st.val_rel_l2 < 0.99 * best[0]:
            best = (st.val_rel_l2, st.model, st.neurons, st.val_max_abs)
            stall = 0
        else:
            stall += 1
            if stall >= POLISH_STALL:
                break
    st.val_rel_l2, st.model, st.neurons, st.val_max_abs = best
    return index


def _neurons_of(model: ReluNetwork, ns: NeuronSet) -> NeuronSet:
    """``ns`` with the hyperplanes and output vectors of ``model`` (same neurons, same
    order; unit normals, the scale moved into the output vectors)."""
    norm = np.linalg.norm(model.W, axis=1)
    norm[norm == 0] = 1.0
    return NeuronSet(model.W / norm[:, None], model.b / norm, model.A.T * norm[:, None],
                     ns.err, ns.rank_residual, ns.line, ns.t, ns.count)
