"""Neurons the searched lines missed, found in the refinement's outliers.

With imprecise answers a weak neuron can be missing when the Gauss-Newton refinement
(:mod:`.refine`) starts (its kink hid under the ~1e-3 error of the Jacobian model on every
searched line). The refinement then cannot fit the answers to their errors: it bends every
other neuron towards the missing one and stops far above the noise (d16-k32-m1, biases
~ N(0, 1), seed 2, float32: χ² 7.6e6 per answer, every neuron ~1e-3 off, 26 of 32 matched,
5 spurious), and the residual lines searched afterwards see the missing kink under that
error again.

The missing neuron is active on few rows (a weak neuron far out: 30 of 1,477). Refitting
with the rows whose residual is far above the rest rejected (``REJECT_MADS`` median absolute
deviations; repeated while the rejected set changes) lets every other neuron converge to the
noise, and leaves the rejected rows to be the missing neuron's active side, where the
residual is linear: ``a·(w·x + b)``. A hinge fitted there (a least-squares line over the
active set, the active set then redrawn where the line is positive, until it stops changing)
becomes a new neuron, and the refinement runs again over every row. The new neuron is kept
when the misfit falls below ``BIRTH_GAIN`` of what it was; the next one is tried while the
misfit stays above the noise. (A hinge fitted to the unrejected residual failed: the
compensating neurons spread the error over every row.)

Late births (``add_missing_neurons(late=True)``): in a repair's refit (:mod:`.repair`) a new neuron is kept
when it takes the misfit below LATE_BIRTH_GAIN (0.75) of what it was, not BIRTH_GAIN (0.5),
and up to LATE_BIRTH_MAX (8) are tried, not BIRTH_MAX (3). There many neurons can be
missing at once, each with a small share of the misfit (hard:norm_range d16-k32 seed 40,
float32: 5.1e3 -> 3.3e3 per answer, 0.65, refused by BIRTH_GAIN, then four more each below
half); and what the refit keeps is judged by the repair's fresh check rows, not by the
misfit alone, so a spare neuron a loose acceptance lets in costs the round, not a false
certificate. In the search the strict gain stays: a spare neuron born there is carried
into every later fit (BIRTH_HOLD's seed 22).

Pure numpy; the coordinator decides when to call it.
"""

from __future__ import annotations

import logging

import numpy as np

from .._model import ReluNetwork
from .neurons import NeuronSet
from .refine import RefineResult, refine_network

logger = logging.getLogger(__name__)

#: A misfit (χ² per answer, in units of each answer's error bound) above this means the
#: refined model cannot explain the answers: a neuron is missing.
BIRTH_CHI2 = 1.0
#: A new neuron is kept when the refined misfit with it falls below this share of the
#: misfit without it.
BIRTH_GAIN = 0.5
#: A new neuron that lowers the misfit below this share, but not below BIRTH_GAIN, is held,
#: and kept when the next one, tried from it, brings the two below BIRTH_GAIN² (several
#: neurons missing, each with its share of the misfit: d32-k64-m1 biases N(0, 0.25) seed 26,
#: float32, eight missing: 2.8e8 -> 1.6e8 -> 2.6e7 -> 0.05 per answer; the first alone was
#: refused, and the run ended 0 of 64). Not one that lowers it less (d16-k32-m1 biases
#: N(0, 0.25) seed 22: 8.2e8 -> 7.7e8, a spare neuron the next birth carried in; 32 of 32
#: matched without it, 10 of 32 with it).
BIRTH_HOLD = 0.75
#: New neurons tried at most per refinement.
BIRTH_MAX = 3
#: Late births (``late=True``, the refit of a repair round, :mod:`.repair`): a new
#: neuron is kept when the refined misfit with it falls below this share of the misfit
#: without it, ...
LATE_BIRTH_GAIN = 0.75
#: ... held (as BIRTH_HOLD) below this share, ...
LATE_BIRTH_HOLD = 0.9
#: ... and this many tried at most per refit.
LATE_BIRTH_MAX = 8
#: Rows whose standardised residual exceeds this many (normal-scaled) median absolute
#: deviations are rejected by the robust refit ...
REJECT_MADS = 4.0
#: ... repeated at most this many times (until the rejected set stops changing).
ROBUST_ROUNDS = 6
#: Active-set iterations of one hinge fit at most.
HINGE_ITERATIONS = 30
#: Weight factor of a rejected row (its error bound is divided by its square root).
REJECTED_WEIGHT = 1e-10
#: Offsets (input scales, either side) of a twin tried next to each neuron (:func:`fit_twin`):
#: log-spaced over the near_parallel hard case's gaps (1e-3 to 1 in normalised bias) up to
#: where a twin stops being near its neuron (FUSE_GAP of .fuse is 0.3).
TWIN_OFFSETS = np.geomspace(1e-3, 0.3, 13)
#: A twin is proposed only when its linear fit explains at least this share of the misfit.
TWIN_MIN_GAIN = 0.25


def _row_z(model: ReluNetwork, X: np.ndarray, Y: np.ndarray, sig: np.ndarray) -> np.ndarray:
    Z = (Y - model.predict(X)) / sig
    return np.sqrt(np.mean(Z * Z, axis=1))


def robust_refit(model: ReluNetwork, X: np.ndarray, Y: np.ndarray, sig: np.ndarray,
                 rounds: int = ROBUST_ROUNDS, free_last: int = 0
                 ) -> tuple[ReluNetwork, np.ndarray]:
    """Refine ``model`` with outlying rows rejected, repeatedly (see the module docstring).

    Returns
    -------
    (ReluNetwork, ndarray of shape (n,) bool)
        The model fitted to the kept rows, and the rejected rows.
    """
    out = np.zeros(X.shape[0], dtype=bool)
    for _ in range(rounds):
        z = _row_z(model, X, Y, sig)
        scale = 1.4826 * float(np.median(z))
        new = z > REJECT_MADS * scale
        if np.array_equal(new, out):
            break
        out = new
        weight = np.where(out, REJECTED_WEIGHT, 1.0)
        model = refine_network(model, X, Y, sig / np.sqrt(weight)[:, None],
                               free_last=free_last).model
    return model, out


def fit_hinge(X: np.ndarray, R: np.ndarray, start: np.ndarray
              ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The hinge ``a·relu(w·x + b)`` (unit ``w``) whose active side starts as the rows
    ``start`` and whose linear part fits the residual ``R`` there.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    R : ndarray of shape (n, m)
    start : ndarray of shape (n,) bool

    Returns
    -------
    (w, b, a) with ``w`` (d,), ``b`` float, ``a`` (m,); None when the active set holds
    fewer than d + 1 rows.
    """
    n, d = X.shape
    if start.sum() <= d:
        return None
    _, _, Vt = np.linalg.svd(R[start], full_matrices=False)
    e = Vt[0]
    r = R @ e
    sign = 1.0 if np.median(r[start]) >= 0 else -1.0
    s = sign * r
    X1 = np.concatenate([X, np.ones((n, 1))], axis=1)
    act = start.copy()
    p = None
    for _ in range(HINGE_ITERATIONS):
        if act.sum() <= d:
            return None
        p = np.linalg.lstsq(X1[act], s[act], rcond=None)[0]
        new = X1 @ p > 0
        if np.array_equal(new, act):
            break
        act = new
    norm = float(np.linalg.norm(p[:d]))
    if not norm > 0:
        return None
    return p[:d] / norm, float(p[d] / norm), sign * norm * e


def fit_twin(model: ReluNetwork, X: np.ndarray, R: np.ndarray, sig: np.ndarray
             ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """A neuron parallel to one of ``model``'s and :data:`TWIN_OFFSETS` from it whose hinge
    best explains the residual ``R`` at ``X``: for each neuron and offset, the weighted
    least-squares fit of ``R`` by the twin's ``relu`` together with the neuron's own
    ``relu`` and its active side's indicator (its output and offset move with the twin),
    the one lowering the misfit most.

    Two neurons that close (the ``near_parallel`` hard case) show on a probe line as one kink
    and in the refinement as one neuron carrying both (d16-k32-m1 near_parallel seed 29,
    float32: hyperplanes 1.1e-5 rad and 6.4e-3 input scales apart, output weights 0.16 and
    -0.019, fitted as one at χ² 438 per answer, 1 of 32 missed). What the one neuron misses
    lies in the thin slab between the two hyperplanes, a few of the rows held: fewer than
    :func:`fit_hinge` needs to place a hinge, but one offset along a known normal is enough.
    The twin's ``relu`` enters as the slab function ``relu(z + δ) − relu(z) − δ·[z > 0]``
    (the same span, zero off the slab, so no cancellation at small ``δ``).

    Parameters
    ----------
    model : ReluNetwork
    X : ndarray of shape (n, d)
    R : ndarray of shape (n, m)
        The residual of ``model`` at ``X``.
    sig : ndarray of shape (n, m)
        Each answer's error bound.

    Returns
    -------
    (w, b, a) as :func:`fit_hinge` (unit ``w``), or None when no twin explains
    :data:`TWIN_MIN_GAIN` of the misfit.
    """
    k = model.W.shape[0]
    if k == 0 or X.shape[0] == 0:
        return None
    norm = np.maximum(np.linalg.norm(model.W, axis=1), 1e-300)
    U, beta = model.W / norm[:, None], model.b / norm
    offsets = np.concatenate([-TWIN_OFFSETS[::-1], TWIN_OFFSETS])  # (q,)
    best, best_gain = None, TWIN_MIN_GAIN * float(np.sum((R / sig) ** 2))
    # one pass per distinct column of answer errors (one for rowwise errors, the usual case)
    rowwise = bool(np.all(sig == sig[:, :1]))
    cols = [np.arange(R.shape[1])] if rowwise else [np.array([o]) for o in range(R.shape[1])]
    Z = X @ U.T + beta  # (n, k): signed distances to each hyperplane
    for j in range(k):
        z = Z[:, j:j + 1]
        on = (z > 0.0).astype(np.float64)
        S = np.maximum(z + offsets, 0.0) - np.maximum(z, 0.0) - offsets * on  # (n, q) slabs
        for o in cols:
            w = 1.0 / sig[:, o[0]:o[0] + 1]
            B = np.concatenate([np.maximum(z, 0.0), on], axis=1) * w  # (n, 2)
            Sw, Rw = S * w, R[:, o] * w
            # off the span of the neuron's own columns
            proj = np.linalg.pinv(B)
            Sp, Rp = Sw - B @ (proj @ Sw), Rw - B @ (proj @ Rw)
            ss = np.sum(Sp * Sp, axis=0)  # (q,)
            sr = Sp.T @ Rp  # (q, len(o))
            ok = ss > 0.0
            gain = np.where(ok, np.sum(sr * sr, axis=1) / np.where(ok, ss, 1.0), 0.0)
            q = int(np.argmax(gain))
            if gain[q] > best_gain:
                a = np.zeros(R.shape[1])
                a[o] = sr[q] / ss[q]
                best_gain, best = float(gain[q]), (U[j].copy(), float(beta[j] + offsets[q]), a)
    return best


def _birth_verdict(chi2: float, before: float, pending: RefineResult | None,
                   gain: float = BIRTH_GAIN, hold: float = BIRTH_HOLD) -> str | None:
    """What a birth that takes the misfit from ``before`` (the refinement's, without any
    birth held) to ``chi2`` earns: ``"keep"`` (below ``gain`` of it), ``"hold"`` (below
    ``hold``, no birth held yet), ``"both"`` (a held birth and this one together below
    ``gain``², and below the held one's), else None (refused)."""
    if pending is None:
        if chi2 < gain * before:
            return "keep"
        return "hold" if chi2 < hold * before else None
    return "both" if chi2 < min(pending.chi2, gain ** 2 * before) else None


def add_missing_neurons(res: RefineResult, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray,
                        rounds: int = ROBUST_ROUNDS, late: bool = False
                        ) -> tuple[RefineResult, int]:
    """While the refined misfit stays above :data:`BIRTH_CHI2`, add a neuron fitted to the
    rows a robust refit rejects, and keep it when the misfit falls by :data:`BIRTH_GAIN`;
    where that neuron is refused (or the rejected rows cannot place one), a twin of a neuron
    held (:func:`fit_twin`) is tried the same way.

    Parameters
    ----------
    res : RefineResult
        The refinement of the current model over ``X``, ``Y``.
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, m)
    sigma : ndarray of shape (n,) or (n, m)
        Each answer's error bound (as for :func:`.refine.refine_network`).
    late : bool
        A repair's refit: LATE_BIRTH_GAIN, LATE_BIRTH_HOLD and LATE_BIRTH_MAX in place of
        BIRTH_GAIN, BIRTH_HOLD and BIRTH_MAX (see the module docstring for why the looser
        acceptance is safe there and not in the search).

    Returns
    -------
    (RefineResult, int)
        The refinement with the kept neurons appended as the model's last neurons, and how
        many were kept.
    """
    gain, hold, most = ((LATE_BIRTH_GAIN, LATE_BIRTH_HOLD, LATE_BIRTH_MAX) if late
                        else (BIRTH_GAIN, BIRTH_HOLD, BIRTH_MAX))
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(X.shape[0], -1),
                          Y.shape)
    born = 0
    # the refinement with a birth that lowered the misfit by less than BIRTH_GAIN, held
    # while the next birth is tried from it
    pending: RefineResult | None = None
    for _ in range(most):
        cur = pending if pending is not None else res
        if not cur.chi2 > BIRTH_CHI2:
            break
        # a held birth (pending) is new too: it steps without the refinement's bound
        fresh = 0 if pending is None else 1
        clean, out = robust_refit(cur.model, X, Y, sig, rounds, free_last=fresh)
        R = Y - clean.predict(X)
        verdict = None
        # a hinge fitted to the outlying rows; where that is refused, a twin of a neuron
        # held (two near-parallel neurons fitted as one, :func:`fit_twin`)
        for how, propose in (("fitted to %d outlying rows" % int(out.sum()),
                              lambda: fit_hinge(X, R, out)),
                             ("twin of a neuron held", lambda: fit_twin(clean, X, R, sig))):
            hinge = propose()
            if hinge is None:
                continue
            w, b, a = hinge
            cand = ReluNetwork(np.concatenate([clean.W, w[None]]), np.append(clean.b, b),
                               np.concatenate([clean.A, a[:, None]], axis=1), clean.c,
                               clean.L, metadata=dict(clean.metadata))
            # (the new neuron, fitted to the rejected rows, may have far to go)
            new = refine_network(cand, X, Y, sig, free_last=fresh + 1)
            logger.info("birth: a neuron %s takes the refined misfit %.3g -> %.3g per "
                        "answer", how, cur.chi2, new.chi2)
            new = RefineResult(new.model, res.chi2_start, new.chi2, cur.steps + new.steps,
                               cur.cg_iterations + new.cg_iterations)
            verdict = _birth_verdict(new.chi2, res.chi2, pending, gain, hold)
            if verdict is not None:
                break
        if verdict == "keep":
            res, born = new, born + 1
        elif verdict == "hold":
            # several neurons missing: this one's share of the misfit may be less than
            # 1 - BIRTH_GAIN; kept if the next birth brings the two to BIRTH_GAIN each
            pending = new
        elif verdict == "both":
            res, born, pending = new, born + 2, None
        else:
            break
    return res, born


def with_born(ns: NeuronSet, model: ReluNetwork, born: int, line: int, u: np.ndarray,
              v: np.ndarray) -> NeuronSet:
    """``ns`` followed by entries for the last ``born`` neurons of ``model``: their
    hyperplanes and output vectors, the median direction error of ``ns``, and as the point
    they were measured at, where line ``line`` (``u + t·v``) crosses their hyperplane."""
    if born == 0:
        return ns
    W = model.W[-born:]
    norm = np.maximum(np.linalg.norm(W, axis=1), 1e-300)
    Wn, bn = W / norm[:, None], model.b[-born:] / norm
    a = model.A[:, -born:].T * norm[:, None]
    wv = Wn @ v
    t = np.where(wv != 0, -(Wn @ u + bn) / np.where(wv != 0, wv, 1.0), 0.0)
    err = float(np.median(ns.err)) if ns.size else 1e-3
    new = NeuronSet(Wn, bn, a, np.full(born, err), np.zeros(born), np.full(born, line),
                    t, np.ones(born, dtype=ns.count.dtype))
    return NeuronSet(*(np.concatenate([getattr(ns, f), getattr(new, f)])
                       for f in ("W", "b", "a", "err", "rank_residual", "line", "t", "count")))


__all__ = ["BIRTH_CHI2", "BIRTH_GAIN", "BIRTH_HOLD", "BIRTH_MAX", "LATE_BIRTH_GAIN",
           "LATE_BIRTH_HOLD", "LATE_BIRTH_MAX", "REJECT_MADS", "add_missing_neurons",
           "fit_hinge", "fit_twin", "robust_refit", "with_born"]
