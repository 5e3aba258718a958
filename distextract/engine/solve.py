"""Output-layer solve: with the hidden layer fixed, ``A``, ``L`` and ``c`` are linear
unknowns, fitted by least squares over queries already paid for (no new queries)."""

from __future__ import annotations

import numpy as np

from .._model import ReluNetwork
from .neurons import NeuronSet

#: Rows whose hidden activations (rows × k) are formed at once: at k=1e5 a 4,100-row fit
#: would otherwise hold 3.3 GB of them.
ROW_BLOCK = 512
#: Neurons per block of the predicted region Jacobians (solve_affine_from_jacobians).
NEURON_BLOCK = 2048
#: Most work (regions × k × m × d) the Jacobian-based L, c may take, and the fewest regions.
JACOBIAN_FLOPS = 3e10
JACOBIAN_MIN_REGIONS = 64


def _lstsq_scaled(M: np.ndarray, Y: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(M, axis=0)
    norms[norms == 0] = 1.0
    coef, *_ = np.linalg.lstsq(M / norms, Y, rcond=None)
    return coef / norms[:, None]


def solve_affine(ns: NeuronSet, X: np.ndarray, Y: np.ndarray) -> ReluNetwork:
    """Keep the jump output vectors; fit only ``L`` and ``c``.

    Parameters
    ----------
    ns : NeuronSet
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, m)
    """
    A = ns.a.T
    R = np.array(Y, dtype=np.float64, copy=True)
    for i in range(0, X.shape[0], ROW_BLOCK):  # hidden activations a block at a time
        R[i:i + ROW_BLOCK] -= np.maximum(X[i:i + ROW_BLOCK] @ ns.W.T + ns.b, 0.0) @ A.T
    M = np.concatenate([X, np.ones((X.shape[0], 1))], axis=1)
    coef = _lstsq_scaled(M, R)
    d = X.shape[1]
    return ReluNetwork(ns.W, ns.b, A, coef[d], coef[:d].T)


def solve_affine_from_jacobians(ns: NeuronSet, X0: np.ndarray, F0: np.ndarray,
                                J: np.ndarray) -> ReluNetwork:
    """Keep the jump output vectors; take ``L`` and ``c`` from measured region Jacobians.

    In a region around ``x0`` the network's Jacobian is ``L + Σ_active a_i w_iᵀ``, so each
    measured region gives ``L`` directly (and ``c`` from its value); the median over regions
    ignores the few regions a missing neuron spoils. Unlike a least-squares fit over the paid
    points (which cluster along a few lines, so most input directions are seen only through
    tiny stencil steps), this is well conditioned in every direction.

    Parameters
    ----------
    ns : NeuronSet
    X0 : ndarray of shape (r, d)
        Region centres.
    F0 : ndarray of shape (r, m)
        Values there.
    J : ndarray of shape (r, m, d)
        Measured Jacobians.
    """
    A = ns.a.T
    m, k = A.shape
    r, d = X0.shape
    # each region gives L on its own (the median needs a few dozen): at most as many as
    # JACOBIAN_FLOPS allow (r·k·m·d; k=1e5, d=1,024, m=10: 64 regions, not 2,048)
    keep = max(JACOBIAN_MIN_REGIONS, int(JACOBIAN_FLOPS // max(1, k * m * d)))
    if r > keep:
        sel = np.linspace(0, r - 1, keep).round().astype(int)
        X0, F0, J, r = X0[sel], F0[sel], J[sel], keep
    pre = X0 @ ns.W.T + ns.b  # (r, k)
    act = (pre > 0).astype(np.float64)
    # Σ_active a_i w_iᵀ per region, over blocks of neurons (the (k, m·d) products of a wide
    # network are GBs at once)
    Jn = np.zeros((r, m * d))
    for lo in range(0, k, NEURON_BLOCK):
        blk = slice(lo, lo + NEURON_BLOCK)
        AW = (A[:, blk].T[:, :, None] * ns.W[blk][:, None, :]).reshape(-1, m * d)
        Jn += act[:, blk] @ AW
    L = np.median(J - Jn.reshape(r, m, d), axis=0)
    Fn = np.maximum(pre, 0.0) @ A.T
    c = np.median(F0 - Fn - X0 @ L.T, axis=0)
    return ReluNetwork(ns.W, ns.b, A, c, L)


def solve_full(ns: NeuronSet, X: np.ndarray, Y: np.ndarray) -> ReluNetwork:
    """Fit ``A``, ``L`` and ``c`` together (columns scaled for conditioning)."""
    H = np.maximum(X @ ns.W.T + ns.b, 0.0)
    M = np.concatenate([H, X, np.ones((X.shape[0], 1))], axis=1)
    coef = _lstsq_scaled(M, Y)
    k, d = ns.size, X.shape[1]
    return ReluNetwork(ns.W, ns.b, coef[:k].T, coef[k + d], coef[k:k + d].T)


def relative_error(model: ReluNetwork, X: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, max abs error) of ``model`` on ``(X, Y)``."""
    if X.shape[0] == 0:
        return float("nan"), float("nan")
    P = model.predict(X)
    num = float(np.sum((P - Y) ** 2))
    den = float(np.sum(Y ** 2))
    rel = np.sqrt(num / den) if den > 0 else np.sqrt(num)
    return float(rel), float(np.max(np.abs(P - Y)))
