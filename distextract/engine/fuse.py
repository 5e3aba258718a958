"""One neuron split in two: imprecise answers only.

With float32 or rounded answers a true neuron is sometimes found twice (two kinks of one
hyperplane measured apart, a birth next to a neuron already held): two model neurons whose
hyperplanes nearly coincide, their output vectors summing to the true one's. Outside the thin
wedge between the two hyperplanes such a pair computes the true neuron exactly (up to an
affine term the output layer absorbs, ``relu(z) = z + relu(-z)`` where one of them points the
other way); inside it the model is off by the weaker one's output times the hyperplanes'
separation. The wedge holds a small share of the Gaussian bulk (0.1% in d16-k32-m1 biases
N(0, 0.25) seed 24: 93% of the squared error of 10,000 test points in 10 of them, rel L2
2.3e-5, the 128 validation points at 3.2e-8), so the refinement's rows and the validation
points rarely see it, and a refinement over them has no reason to undo the split.

This module names such pairs (:func:`close_pairs`: hyperplanes within :data:`FUSE_ANGLE` in
direction and :data:`FUSE_GAP` input scales in offset, either orientation), places rows
inside their wedges, where the two hypotheses (one neuron, or two) differ most
(:func:`wedge_points`), and fuses a pair into one neuron (:func:`fused`) when the refitted
misfit over the rows held, wedge rows included, allows it (:func:`fuse_pairs`). Two true
neurons that close (the ``near_parallel`` hard case) keep apart: their wedge rows raise the
fused model's misfit. The certificate checks the wedges of the final model's close pairs
with held-out rows of its own (:mod:`.certificate`).
"""

from __future__ import annotations

import logging

import numpy as np

from .._model import ReluNetwork

logger = logging.getLogger(__name__)

FUSE_ANGLE = 0.3  # rad: two hyperplanes closer than this in direction ...
FUSE_GAP = 0.3  # ... and in offset (input scales) are a candidate pair
FUSE_MAX_PAIRS = 64  # candidate pairs given wedge rows at most (closest first)
FUSE_MAX_FAILS = 8  # fusing stops after this many pairs the refit kept apart
FUSE_ROWS = 4  # wedge rows bought per candidate pair
FUSE_FEET = 8  # Gaussian feet drawn per wedge row: the one with the widest gap is kept


def _unit(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    norm = np.linalg.norm(W, axis=1)
    norm[norm == 0] = 1.0
    return W / norm[:, None], b / norm, norm


def close_pairs(W: np.ndarray, b: np.ndarray, s: float, angle: float = FUSE_ANGLE,
                gap: float = FUSE_GAP, limit: int | None = None) -> np.ndarray:
    """Pairs of hyperplanes ``W x + b = 0`` within ``angle`` radians in direction and ``gap``
    input scales (``s``) in offset, in either orientation, closest first (by
    ``angle/FUSE_ANGLE + gap/FUSE_GAP``), all of them or the ``limit`` closest. Shape
    (p, 3): ``i < j`` and
    the sign ``+1`` / ``-1`` that orients ``j`` as ``i``."""
    k = W.shape[0]
    if k < 2:
        return np.zeros((0, 3), dtype=int)
    U, beta, _ = _unit(W, b)
    C = U @ U.T
    sign = np.where(C < 0.0, -1, 1)
    theta = np.arccos(np.clip(np.abs(C), 0.0, 1.0))
    offset = np.abs(beta[:, None] - sign * beta[None, :]) / s
    i, j = np.nonzero(np.triu((theta < angle) & (offset < gap), 1))
    if i.size == 0:
        return np.zeros((0, 3), dtype=int)
    score = theta[i, j] / angle + offset[i, j] / gap
    order = np.argsort(score, kind="stable")[:limit]
    return np.stack([i[order], j[order], sign[i[order], j[order]]], axis=1)


def wedge_points(W: np.ndarray, b: np.ndarray, pairs: np.ndarray, rng: np.random.Generator,
                 s: float, per_pair: int = FUSE_ROWS, feet: int = FUSE_FEET) -> np.ndarray:
    """For each pair (``close_pairs``), ``per_pair`` points inside the wedge between its two
    hyperplanes, where their sides disagree: the feet on the first hyperplane of Gaussian
    points (scale ``s``), the widest-gapped of ``feet`` draws each, moved halfway towards
    the second one along the first's normal. Shape (p·per_pair, d)."""
    d = W.shape[1]
    if len(pairs) == 0 or per_pair == 0:
        return np.zeros((0, d))
    U, beta, _ = _unit(W, b)
    out = []
    for i, j, sg in pairs:
        ui, uj, bj = U[i], sg * U[j], sg * beta[j]
        Z = rng.standard_normal((per_pair * feet, d)) * s
        F = Z - (Z @ ui + beta[i])[:, None] * ui  # feet on hyperplane i
        zj = F @ uj + bj  # signed distance (nearly) to hyperplane j
        best = np.argmax(np.abs(zj).reshape(per_pair, feet), axis=1) + feet * np.arange(per_pair)
        c = max(float(ui @ uj), 1e-3)
        out.append(F[best] - (0.5 * zj[best] / c)[:, None] * ui)
    return np.concatenate(out, axis=0)


def fused(model: ReluNetwork, i: int, j: int, sign: int) -> ReluNetwork:
    """``model`` with neuron ``j`` folded into neuron ``i`` (``sign``: ``j``'s orientation
    relative to ``i``'s): one hyperplane, the output-weighted mean of the two, carrying both
    output vectors. A flipped ``j`` leaves an affine term (``relu(-z) = relu(z) - z``), which
    the refit's output solve takes up."""
    U, beta, norm = _unit(model.W, model.b)
    A = model.A * norm[None, :]  # output vectors per unit-normal neuron
    wi, wj = np.max(np.abs(A[:, i])), np.max(np.abs(A[:, j]))
    u = wi * U[i] + wj * sign * U[j]
    nu = np.linalg.norm(u)
    if nu == 0.0:
        u, nu = U[i], 1.0
    W, b, A2 = U.copy(), beta.copy(), A.copy()
    W[i], b[i] = u / nu, (wi * beta[i] + wj * sign * beta[j]) / nu
    A2[:, i] = A[:, i] + A[:, j]
    keep = np.array([q for q in range(W.shape[0]) if q != j], dtype=int)
    return ReluNetwork(W[keep], b[keep], A2[:, keep], model.c, model.L,
                       metadata=dict(model.metadata))


def fuse_pairs(res, X: np.ndarray, Y: np.ndarray, refit, allowed, s: float,
               max_fails: int = FUSE_MAX_FAILS):
    """Fuse close pairs of ``res.model`` (a refinement result over ``X``, ``Y``) while the
    refit (``refit(model)`` → result with ``.model``, ``.chi2``) of the fused model stays
    within ``allowed(chi2, dropped)`` of the current misfit. Closest pair first, each pair
    tried once, until ``max_fails`` pairs were kept apart. Returns the result and the indices of
    ``res.model``'s neurons kept (a fused pair keeps its first)."""
    idx = np.arange(res.model.W.shape[0])
    tried: set[tuple[int, int]] = set()
    fails = 0
    while fails < max_fails:
        pairs = close_pairs(res.model.W, res.model.b, s)
        pairs = [p for p in pairs if (int(idx[p[0]]), int(idx[p[1]])) not in tried]
        if not pairs:
            break
        i, j, sg = (int(v) for v in pairs[0])
        tried.add((int(idx[i]), int(idx[j])))
        new = refit(fused(res.model, i, j, sg))
        limit_chi2 = allowed(res.chi2, 1)
        logger.debug("fuse: neurons %d and %d: chi2 %.3g fused, %.3g allowed", idx[i], idx[j],
                     new.chi2, limit_chi2)
        if new.chi2 <= limit_chi2:
            logger.info("fuse: neurons %d and %d are one (chi2 %.3g -> %.3g per answer)",
                        idx[i], idx[j], res.chi2, new.chi2)
            res, idx = new, np.delete(idx, j)
        else:
            fails += 1
    return res, idx


__all__ = ["close_pairs", "fuse_pairs", "fused", "wedge_points"]
