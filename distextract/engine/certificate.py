"""The certificate's check, imprecise answers only: held-out rows bought after the extraction
near every neuron's hyperplane, which the model must predict within what its target and the
answers' rounding allow.

The validation points are Gaussian: a neuron whose hyperplane lies off the bulk, or whose
active side few of them reach, can be wrong by far more than the target without moving their
error. So each neuron gets :data:`CHECK_ROWS_PER_NEURON` rows of its own, one on each side of
its hyperplane (:data:`CHECK_OFFSET` input scales away, at the foot of a Gaussian point on the
hyperplane), drawn from their own seed stream (:meth:`.seeds.Streams.check_rows`) and never
used to fit anything. A row whose answer the model misses by more than :data:`CHECK_ERRORS`
tolerances (the answer's rounding plus the target's share of the output scale) contradicts
the model there; a neuron with such a row is *uncertain*, and the reason says which side of
it the answers contradict (the active side alone: its output vector or its offset; both sides:
its hyperplane, or a neighbour, or a neuron the model lacks). ``certified`` is never true with
an uncertain neuron (:mod:`.loop`).

A pair of hyperplanes that nearly coincide (:func:`.fuse.close_pairs`) may be one neuron found
twice, right everywhere but in the thin wedge between them, which the rows above rarely reach:
each such pair gets :data:`WEDGE_ROWS` rows inside its wedge (their own stream,
:meth:`.seeds.Streams.check_wedges`), and a missed one names both neurons.

A neuron whose whole output contribution (rms over the Gaussian bulk) is below
:data:`OBSERVABLE_NOISE` relative roundings of the answers cannot be seen in them: a model
neuron below it is uncertain (the answers cannot confirm it), and the benchmark reports such
neurons of the true network (its ``<flr`` column) instead of counting them missed
(:func:`contribution`). So is the weaker of two near-parallel neurons that one neuron at the
pair's output-weighted hyperplane stands in for to within that floor (:func:`absorbed_pairs`):
its own contribution may be large, but the network without it, the partner moved, differs
from the answers by less than their rounding shows (hard:near_parallel d16-k32 seed 33,
float32: output 9e-4 against 0.25, hyperplanes 9.7e-4 rad and 1.2e-3 apart; the pair less
one neuron leaves 2.1e-8 rms, 0.025 of the floor, while the weak neuron alone contributes 450
floors).

The check rows are bought on the imprecise path only (float64 runs are certified by their
lines and validation, and their golden traces stay unchanged), beyond the run's query bound
(they are part of the cost, not of the search) but within the caller's budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._errors import BudgetExhausted
from .._model import ReluNetwork
from .fuse import close_pairs, wedge_points
from .tasks import output_scale

if TYPE_CHECKING:
    from .loop import Coordinator

logger = logging.getLogger(__name__)

CHECK_ROWS_PER_NEURON = 2  # one row each side of a neuron's hyperplane
CHECK_OFFSET = 0.25  # ... this many input scales from it
CHECK_ERRORS = 4.0  # a row the model misses by more than this many tolerances contradicts it
WEDGE_ROWS = 2  # rows inside the wedge of each pair of nearly coincident hyperplanes (.fuse)
#: A neuron whose hyperplane the rows held pin no better than this (three standard errors of
#: its direction, radians, or of its offset, input scales) is uncertain: the float32 match
#: tolerance of issue 19 (cos 1 - 1e-6: 1.4e-3 rad; offset 1e-3). hard:norm_range d16-k32
#: seed 34, float32: certified at rel L2 5.2e-7 with four weak neurons off by more (25 of 32
#: matched, 4 spurious), which the check rows could not see.
PIN_ANGLE = 1.4e-3
PIN_OFFSET = 1e-3
PIN_SIGMAS = 3.0
OBSERVABLE_NOISE = 16.0  # a neuron contributing (rms) less than this many relative roundings
# of the answers cannot be seen in them (the imprecise target is 16 × the noise too)
ABSORB_NODES = 2001  # quadrature nodes of absorbed_residual across a pair's second normal
ABSORB_SPAN = 8.0  # ... over this many standard deviations each side (the rest: < 1e-15)


@dataclass(frozen=True)
class Uncertain:
    """A neuron the check rows contradict.

    Attributes
    ----------
    neuron : int
        Its index in the model (row of ``W``).
    reason : str
        What the check rows showed, in words.
    ratio : float
        The largest miss of its check rows, in tolerances.
    active, inactive : float
        The miss (in tolerances) of its row on the active side and on the other side.
    """

    neuron: int
    reason: str
    ratio: float
    active: float
    inactive: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_points(model: ReluNetwork, rng: np.random.Generator, s: float,
                 offset: float = CHECK_OFFSET) -> np.ndarray:
    """The check rows: for every neuron the foot on its hyperplane of a Gaussian point (scale
    ``s``), moved ``offset·s`` to its active side, and the same foot moved as far to the
    other side. Shape (2k, d): rows ``0..k-1`` active, ``k..2k-1`` inactive."""
    norm = np.linalg.norm(model.W, axis=1)
    norm[norm == 0] = 1.0
    W, b = model.W / norm[:, None], model.b / norm
    Z = rng.standard_normal(model.W.shape) * s
    feet = Z - (np.sum(W * Z, axis=1) + b)[:, None] * W
    return np.concatenate([feet + offset * s * W, feet - offset * s * W])


def judge(model: ReluNetwork, X: np.ndarray, Y: np.ndarray, tol: np.ndarray,
          errors: float = CHECK_ERRORS) -> tuple[list[Uncertain], np.ndarray]:
    """The neurons whose check rows ``X`` (:func:`check_points`) the answers ``Y`` (2k, m)
    contradict: rows missed by more than ``errors`` × ``tol`` (2k,). Returns them (by
    neuron) and the miss of every row in tolerances.

    A neuron whose active-side row is missed and whose other row is not is wrong itself
    (the miss switches on across its hyperplane): its output vector, offset or direction.
    Its error shows on the whole of its active side, so another neuron's missed row that
    lies there is explained by it and that neuron is not named. A missed row no such neuron
    explains names the neuron it was placed for: the answers contradict the model there,
    from its hyperplane, a neighbour's, or a neuron the model lacks."""
    k = model.hidden_dim
    miss = np.max(np.abs(Y - model.predict(X)), axis=1) / tol
    on, off = miss[:k], miss[k:]
    own = (on > errors) & (off <= errors)
    active = (X @ model.W.T + model.b) > 0.0  # (2k, k)
    explained = np.any(active[:, own], axis=1)
    explained[np.flatnonzero(own)] = False  # a neuron's own row names it
    bad = (miss > errors) & ~explained
    out = []
    for j in np.flatnonzero(bad[:k] | bad[k:]):
        a, i = float(on[j]), float(off[j])
        if own[j]:
            why = (f"its active side missed by {a:.3g} tolerances, the other side within "
                   f"them: its output vector, offset or direction is off")
        elif a > errors and i > errors:
            why = (f"both sides of its hyperplane missed ({a:.3g} and {i:.3g} tolerances): "
                   f"its hyperplane, a neighbour's, or a neuron the model lacks")
        else:
            side = "active" if a > errors else "inactive"
            why = (f"its {side} side missed by {max(a, i):.3g} tolerances where no neuron "
                   f"found wrong is active: a neighbour's error, or a neuron the model "
                   f"lacks there")
        out.append(Uncertain(int(j), why, float(max(a, i)), a, i))
    return out, miss


def _normal_cdf(t: np.ndarray) -> np.ndarray:
    """The standard normal distribution function, elementwise (±inf allowed)."""
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[float])(np.asarray(t) / math.sqrt(2.0)))


def contribution(W: np.ndarray, b: np.ndarray, A: np.ndarray, s: float) -> np.ndarray:
    """Each neuron's output contribution over the Gaussian bulk: the rms of
    ``|A[:, j]|_max · relu(W[j]·x + b[j])`` over ``x ~ N(0, s² I)`` (closed form). Shape (k,)."""
    sig = np.linalg.norm(W, axis=1) * s
    sig = np.maximum(sig, 1e-300)
    z = b / sig
    cdf = _normal_cdf(z)
    ms = (sig ** 2 + b ** 2) * cdf + b * sig * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return np.sqrt(np.maximum(ms, 0.0)) * np.max(np.abs(A), axis=0)


def _normal_pdf(t: np.ndarray) -> np.ndarray:
    """The standard normal density (0 at ±inf)."""
    return np.exp(-0.5 * np.minimum(t * t, 1e300)) / math.sqrt(2 * math.pi)


def _segment_moments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """``∫ t^n φ(t) dt`` over ``[lo, hi]`` (standard normal density φ, infinite ends
    allowed) for n = 0, 1, 2; arrays of one shape."""
    m0 = _normal_cdf(hi) - _normal_cdf(lo)
    tpdf_hi = np.where(np.isfinite(hi), hi, 0.0) * _normal_pdf(hi)
    tpdf_lo = np.where(np.isfinite(lo), lo, 0.0) * _normal_pdf(lo)
    return m0, _normal_pdf(lo) - _normal_pdf(hi), m0 - (tpdf_hi - tpdf_lo)


def absorbed_residual(W: np.ndarray, b: np.ndarray, A: np.ndarray, i: int, j: int, s: float,
                      nodes: int = ABSORB_NODES) -> float:
    """What neurons ``i`` and ``j`` add beyond one neuron standing in for both: the rms over
    ``x ~ N(0, s² I)`` (largest over outputs) of

        ``A_i relu(z_i) + A_j relu(z_j) − (A_i + A_j) relu(c_i z_i + c_j z_j)``,

    ``z = W x + b``, ``c_q = A_q·(A_i + A_j) / |A_i + A_j|²`` (so ``c_i + c_j = 1``: for one
    output the pair exactly where both are active, and both inactive; what is left lies in
    the wedge between their hyperplanes, and, for several outputs, in the output vectors'
    disagreement). ``j`` pointing against ``i`` is turned first (``relu(z) = z + relu(-z)``:
    the affine part is the output layer's). One stand-in, so an upper bound on what the best
    refit of the pair leaves. Exact along the pair's first normal (piecewise quadratic
    integrals against the Gaussian), ``nodes`` quadrature points along the second."""
    Wi, Wj, bi, bj = W[i], W[j], float(b[i]), float(b[j])
    if Wi @ Wj < 0.0:
        Wj, bj = -Wj, -bj
    Ai, Aj = np.asarray(A[:, i], float), np.asarray(A[:, j], float)
    Af = Ai + Aj
    nf = float(Af @ Af)
    ci, cj = (float(Ai @ Af) / nf, float(Aj @ Af) / nf) if nf > 0.0 else (0.5, 0.5)
    ni = float(np.linalg.norm(Wi))
    if ni == 0.0:
        return float(np.max(contribution(np.vstack([Wi, Wj]), np.array([bi, bj]),
                                         np.stack([Ai, Aj], axis=1), s)))
    e1 = Wi / ni
    r = Wj - (Wj @ e1) * e1
    nr = float(np.linalg.norm(r))
    e2 = r / nr if nr > 0.0 else np.zeros_like(e1)
    # z_q = alpha_q·p1 + gamma_q·p2 + beta_q, (p1, p2) ~ N(0, s² I), one row per neuron
    # (i, j, the stand-in) and one column of coefficients per output
    Wf, bf = ci * Wi + cj * Wj, ci * bi + cj * bj
    alpha = np.array([Wi @ e1, Wj @ e1, Wf @ e1]) * s
    gamma = np.array([Wi @ e2, Wj @ e2, Wf @ e2]) * s
    beta = np.array([bi, bj, bf])
    coef = np.stack([Ai, Aj, -Af])  # (3, m)
    t2 = np.linspace(-ABSORB_SPAN, ABSORB_SPAN, nodes)  # p2 / s
    w2 = np.exp(-0.5 * t2 * t2)
    w2 /= w2.sum()
    off = beta[None, :] + t2[:, None] * gamma[None, :]  # (n, 3): z_q = alpha_q t1 + off
    with np.errstate(divide="ignore", invalid="ignore"):
        cut = np.where(alpha != 0.0, -off / alpha, np.inf)
    edges = np.sort(np.concatenate([np.full((nodes, 1), -np.inf), cut,
                                    np.full((nodes, 1), np.inf)], axis=1), axis=1)
    total = np.zeros(coef.shape[1])
    for q in range(edges.shape[1] - 1):
        lo, hi = edges[:, q], edges[:, q + 1]
        mid = np.where(np.isfinite(lo) & np.isfinite(hi), 0.5 * (lo + hi),
                       np.where(np.isfinite(lo), lo + 1.0, np.where(np.isfinite(hi), hi - 1.0,
                                                                    0.0)))
        on = (alpha[None, :] * mid[:, None] + off) > 0.0  # (n, 3): active on this segment
        # the residual is u + v·t1 here, per output
        u = (on * off) @ coef  # (n, m)
        v = (on * alpha[None, :]) @ coef
        keep = hi > lo
        m0, m1, m2 = _segment_moments(lo[keep], hi[keep])
        seg = (u[keep] ** 2 * m0[:, None] + 2 * u[keep] * v[keep] * m1[:, None]
               + v[keep] ** 2 * m2[:, None])
        total += w2[keep] @ seg
    # (an exact duplicate leaves 0 less rounding)
    return float(np.sqrt(max(float(np.max(total)), 0.0)))


def absorbed_pairs(net: ReluNetwork, floor: float, s: float = 1.0
                   ) -> list[tuple[int, int, float]]:
    """The close pairs of ``net`` (:func:`.fuse.close_pairs`) whose :func:`absorbed_residual`
    is below ``floor``: one neuron at the pair's output-weighted hyperplane carries both to
    within it, and the answers cannot tell the two from one. Each as ``(weaker, stronger,
    residual)``, by :func:`contribution`."""
    strength = contribution(net.W, net.b, net.A, s)
    out = []
    for i, j, _ in close_pairs(net.W, net.b, s):
        i, j = (int(i), int(j)) if strength[j] <= strength[i] else (int(j), int(i))
        r = absorbed_residual(net.W, net.b, net.A, i, j, s)
        if r < floor:
            out.append((j, i, r))
    return out


def absorbed(net: ReluNetwork, floor: float, s: float = 1.0) -> np.ndarray:
    """Which neurons of ``net`` a near-parallel partner absorbs to within ``floor`` (the
    weaker of each pair of :func:`absorbed_pairs`). Boolean, shape (k,)."""
    out = np.zeros(net.hidden_dim, dtype=bool)
    out[[p[0] for p in absorbed_pairs(net, floor, s)]] = True
    return out


def below_floor(net: ReluNetwork, noise: float, scale: float, s: float = 1.0) -> np.ndarray:
    """Which neurons of ``net`` the answers cannot show: those contributing (rms,
    :func:`contribution`) less than OBSERVABLE_NOISE × ``noise`` × ``scale`` (the answers'
    rms size), and those a near-parallel partner absorbs to within that floor
    (:func:`absorbed`). Boolean, shape (k,)."""
    floor = OBSERVABLE_NOISE * noise * scale
    return (contribution(net.W, net.b, net.A, s) < floor) | absorbed(net, floor, s)


def unpinned(model: ReluNetwork, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray, s: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors of each neuron's hyperplane from the rows ``X``, ``Y`` (answer errors
    ``sigma``, (n,) or (n, m)): its direction (radians) and offset (``s`` input scales), from
    the Gauss-Newton block of its ``(w, b)`` over its active rows, scaled by the misfit per
    answer (cross-terms with other neurons left out: a lower bound). Inf
    where the rows do not pin it at all."""
    k, d = model.W.shape
    m = model.A.shape[0]
    Y = Y.reshape(X.shape[0], -1)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(X.shape[0], -1), Y.shape)
    w2 = 1.0 / (sig * sig)
    R = (Y - model.predict(X).reshape(-1, m)) * np.sqrt(w2)
    # the answers' scatter from the misfit itself (error bounds overstate float32's rounding,
    # about 0.17 of the bound rms on a fit at the noise)
    chi2 = max(float(np.mean(R * R)), 1e-6) if R.size else 1.0
    X1 = np.concatenate([X, np.ones((X.shape[0], 1))], axis=1)
    coef = w2 @ (model.A * model.A)  # (n, k)
    ang = np.full(k, np.inf)
    off = np.full(k, np.inf)
    for j in range(k):
        act = X @ model.W[j] + model.b[j] > 0
        if act.sum() <= d + 1:
            continue
        Xa = X1[act] * np.sqrt(coef[act, j])[:, None]
        try:
            cov = chi2 * np.linalg.inv(Xa.T @ Xa)
        except np.linalg.LinAlgError:
            continue
        norm = float(np.linalg.norm(model.W[j]))
        if not norm > 0 or not np.all(np.isfinite(cov)):
            continue
        u = model.W[j] / norm
        P = np.eye(d) - np.outer(u, u)
        ang[j] = math.sqrt(max(float(np.trace(P @ cov[:d, :d] @ P)), 0.0)) / norm
        off[j] = math.sqrt(max(float(cov[d, d]), 0.0)) / (norm * s)
    return ang, off


def certify(eng: Coordinator) -> dict:
    """Buy the check rows of the model in ``eng`` and judge it (imprecise answers). Returns
    the ``report["certificate"]`` dict: ``rows`` bought, ``pairs`` (close pairs of
    hyperplanes whose wedges were checked, :mod:`.fuse`), ``checked`` (False when the budget
    could not hold them; True with no row for a model without neurons), ``tolerance`` (the
    absolute allowance of the target), ``worst`` (largest miss in tolerances), ``uncertain``
    (list of :meth:`Uncertain.to_dict`)."""
    return check(eng)[0]


def check(eng: Coordinator, round: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`certify` with round ``round``'s rows (each repair round, :mod:`.repair`, checks
    with rows of its own); also returns the rows bought and their answers, shapes (n, d) and
    (n, m) (none when nothing was bought)."""
    st, cfg = eng.st, eng.cfg
    none = (np.empty((0, st.d)), np.empty((0, max(st.m, 1))))
    model = st.model
    empty = {"rows": 0, "pairs": 0, "checked": False, "tolerance": None, "worst": None,
             "uncertain": []}
    if model is None:
        return (empty, *none)
    if model.hidden_dim == 0:
        # an affine model has no hyperplane to check: the validation alone decides
        return (dict(empty, checked=True), *none)
    X = check_points(model, eng.streams.check_rows(round), cfg.input_scale)
    pairs = close_pairs(model.W, model.b, cfg.input_scale)
    Xw = wedge_points(model.W, model.b, pairs, eng.streams.check_wedges(round), cfg.input_scale,
                      per_pair=WEDGE_ROWS)
    try:
        Yall = eng.session.eval(np.concatenate([X, Xw], axis=0), capped=False)
    except BudgetExhausted as exc:
        logger.warning("%s: the certificate's %d check rows were not bought", exc,
                       X.shape[0] + Xw.shape[0])
        return (empty, *none)
    Yall = Yall.reshape(X.shape[0] + Xw.shape[0], -1)
    Y, Yw = Yall[:X.shape[0]], Yall[X.shape[0]:]
    Yv = eng.paid.Yv.reshape(eng.paid.Yv.shape[0], -1)
    rms = float(np.sqrt(np.mean(Yv * Yv))) if Yv.size else st.fref
    allowed = eng.target * rms
    tol = st.noise * output_scale(Y, st.fref, st.absolute) + allowed
    uncertain, miss = judge(model, X, Y, tol)
    # a neuron contributing less than the observability floor cannot be confirmed by the
    # answers, however well its check rows agree
    k = model.hidden_dim
    share = contribution(model.W, model.b, model.A, cfg.input_scale) / max(st.noise * rms,
                                                                           1e-300)
    named = {u.neuron for u in uncertain}

    def name(j: int, why: str, ratio: float | None = None) -> None:
        """Name neuron ``j`` uncertain for ``why`` (once: the first reason stands)."""
        if j in named:
            return
        named.add(j)
        on, off = float(miss[j]), float(miss[k + j])
        uncertain.append(Uncertain(j, why, max(on, off) if ratio is None else ratio, on, off))

    if Xw.shape[0]:
        # the wedges of close pairs: one neuron split in two computes the true one everywhere
        # else
        tolw = st.noise * output_scale(Yw, st.fref, st.absolute) + allowed
        wmiss = (np.max(np.abs(Yw - model.predict(Xw)), axis=1) / tolw).reshape(len(pairs), -1)
        for (i, j, _), row in zip(pairs, wmiss):
            worst = float(np.max(row))
            miss = np.append(miss, row)
            if worst <= CHECK_ERRORS:
                continue
            for a, b in ((i, j), (j, i)):
                name(int(a), f"the wedge between its hyperplane and neuron {int(b)}'s, nearly "
                             f"the same, missed by {worst:.3g} tolerances: one neuron split "
                             f"in two, or the pair placed wrong", worst)
    if eng.paid.Xs.shape[0]:
        Xs, Ys = eng.paid.Xs, eng.paid.Ys.reshape(eng.paid.Xs.shape[0], -1)
        ang, off = unpinned(model, Xs, Ys, st.noise * output_scale(Ys, st.fref, st.absolute),
                            cfg.input_scale)
        # (a neuron active on too few of them is left to its check rows: its kinks placed it)
        loose = np.isfinite(ang) & ((PIN_SIGMAS * ang > PIN_ANGLE)
                                    | (PIN_SIGMAS * off > PIN_OFFSET))
        for j in np.flatnonzero(loose & (share >= OBSERVABLE_NOISE)):
            name(int(j), f"the rows held pin its hyperplane to {ang[j]:.3g} rad and "
                         f"{off[j]:.3g} input scales (standard errors), looser than "
                         f"{PIN_ANGLE:g} rad / {PIN_OFFSET:g} at {PIN_SIGMAS:g} errors")
    for j in np.flatnonzero(share < OBSERVABLE_NOISE):
        name(int(j), f"contributes {share[j]:.3g} roundings of the answers (rms over the "
                     f"bulk), under the observability floor of {OBSERVABLE_NOISE:g}: the "
                     f"answers cannot confirm it")
    unit = max(st.noise * rms, 1e-300)
    for j, i, r in absorbed_pairs(model, OBSERVABLE_NOISE * unit, cfg.input_scale):
        name(j, f"neuron {i}'s hyperplane, nearly the same, carries it to within {r / unit:.3g} "
                f"roundings of the answers (rms over the bulk, one neuron for the two), under "
                f"the observability floor of {OBSERVABLE_NOISE:g}: the answers cannot tell "
                f"the two from one")
    uncertain.sort(key=lambda u: u.neuron)
    if uncertain:
        logger.warning("certificate: %d of %d neurons uncertain (worst check row off by %.3g "
                       "tolerances)", len(uncertain), model.hidden_dim, float(np.max(miss)))
    out = {"rows": int(X.shape[0] + Xw.shape[0]), "pairs": int(len(pairs)), "checked": True,
           "tolerance": float(allowed), "worst": float(np.max(miss)),
           "uncertain": [u.to_dict() for u in uncertain]}
    return out, np.concatenate([X, Xw], axis=0), Yall
