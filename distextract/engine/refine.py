"""Refine every parameter of the model at once by Gauss-Newton over the paid answers.

With imprecise answers (float32, rounded decimals) a hyperplane measured from region
Jacobians is known to about ``noise / h`` (``h``: the stencil step, bounded by the distance to
the nearest hyperplane), about 1e-3 for float32 at d=64, k=128. Each paid answer, though, is
an equation ``F(x) = A·relu(Wx + b) + c + Lx`` in *all* the parameters, and a Gaussian point
sees about half the neurons active: a few Gaussian points per unknown pin every parameter
to near the answers' own precision. Near the current model the equations are linear in the
parameter change (the activation pattern is the current one everywhere but within the
hyperplane error of a hyperplane), so a few Gauss-Newton steps converge.

Each step solves the weighted linear least-squares problem ``min |Σ⁻¹(J·δ − r)|`` by
conjugate gradients on the normal equations, matrix-free (``J·δ`` and ``Jᵀ·r`` cost
``O(rows·k·(d + m))``), preconditioned by the exact diagonal blocks: one ``(d+1)²`` block per
neuron (its ``w``, ``b``) and one ``(k+d+1)²`` block per output (its ``A`` row, ``L`` row,
``c``). The rescaling ``(w, b, a) → (αw, αb, a/α)`` leaves the model unchanged; a tiny ridge
keeps the blocks invertible and the step free of it.

Pure numpy; the coordinator decides which rows to use and pays for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .._model import ReluNetwork

logger = logging.getLogger(__name__)

#: Gauss-Newton steps at most (each one re-linearises at the new activation pattern).
MAX_STEPS = 20
#: A step that lowers the weighted sum of squares by less than this fraction ends the loop.
MIN_GAIN = 1e-3
#: Conjugate-gradient iterations per step at most, and the relative (preconditioned)
#: residual at which they stop.
CG_MAX = 300
CG_TOL = 1e-12
#: Ridge on every preconditioner block and on the normal equations, relative to the
#: block's mean diagonal: far below any information the rows carry.
RIDGE = 1e-10
#: Step halvings tried before a step is abandoned.
HALVINGS = 6


@dataclass(frozen=True)
class RefineResult:
    """Outcome of :func:`refine_network`.

    Attributes
    ----------
    model : ReluNetwork
        The refined network (the input model when no step lowered the misfit).
    chi2_start, chi2 : float
        Weighted mean squared residual (in units of each answer's error) before and after.
    steps : int
        Gauss-Newton steps taken.
    cg_iterations : int
        Conjugate-gradient iterations over all steps.
    """

    model: ReluNetwork
    chi2_start: float
    chi2: float
    steps: int
    cg_iterations: int


def refine_work(rows: int, k: int, d: int, m: int) -> float:
    """Floating-point operations of one conjugate-gradient iteration (for a size gate)."""
    return 4.0 * rows * k * (d + m + 1)


class _Normal:
    """``Jᵀ Ω J`` and its block preconditioner at one linearisation point."""

    def __init__(self, X: np.ndarray, W: np.ndarray, b: np.ndarray, A: np.ndarray,
                 w2: np.ndarray) -> None:
        self.X, self.A, self.w2 = X, A, w2
        self.k, self.d = W.shape
        self.m = A.shape[0]
        Z = X @ W.T + b
        self.mask = (Z > 0).astype(np.float64)
        self.H = np.maximum(Z, 0.0)
        n = X.shape[0]
        X1 = np.concatenate([X, np.ones((n, 1))], axis=1)
        # neuron blocks: Σ_x [active] (Σ_i ω_i² a_ij²) x̃ x̃ᵀ
        coef = self.mask * (w2 @ (A * A))
        d1 = self.d + 1
        blocks = np.empty((self.k, d1, d1))
        for j in range(self.k):
            act = coef[:, j] > 0
            Xa = X1[act] * np.sqrt(coef[act, j])[:, None]
            blocks[j] = Xa.T @ Xa
        self.neuron_ridge = self._ridge(blocks)
        blocks += self.neuron_ridge[:, None, None] * np.eye(d1)
        self.neuron_inv = np.linalg.inv(blocks)
        # output blocks: Σ_x ω_i² φ φᵀ with φ = (relu(Wx + b), x, 1)
        Phi = np.concatenate([self.H, X1], axis=1)
        p = Phi.shape[1]
        oblocks = np.empty((self.m, p, p))
        for i in range(self.m):
            Pa = Phi * np.sqrt(w2[:, i])[:, None]
            oblocks[i] = Pa.T @ Pa
        self.output_ridge = self._ridge(oblocks)
        oblocks += self.output_ridge[:, None, None] * np.eye(p)
        self.output_inv = np.linalg.inv(oblocks)

    @staticmethod
    def _ridge(blocks: np.ndarray) -> np.ndarray:
        if blocks.shape[0] == 0 or blocks.shape[1] == 0:  # no neurons left (a constant target)
            return np.zeros(blocks.shape[0])
        diag = np.einsum("jii->ji", blocks).mean(axis=1)
        floor = max(float(diag.mean()), 1e-300)
        return RIDGE * np.maximum(diag, floor)

    # parameter vectors: (dW (k,d+1) with the bias last, dO (m, k+d+1): A row, L row, c)
    def apply(self, dN: np.ndarray, dO: np.ndarray) -> np.ndarray:
        """``J·δ`` (rows, m)."""
        k, d = self.k, self.d
        pre = self.X @ dN[:, :d].T + dN[:, d]
        return ((self.mask * pre) @ self.A.T + self.H @ dO[:, :k].T
                + self.X @ dO[:, k:k + d].T + dO[:, k + d])

    def apply_t(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Jᵀ·S`` for a residual-shaped ``S`` (rows, m)."""
        G = (S @ self.A) * self.mask
        dN = np.concatenate([G.T @ self.X, G.sum(axis=0)[:, None]], axis=1)
        dO = np.concatenate([S.T @ self.H, S.T @ self.X, S.sum(axis=0)[:, None]], axis=1)
        return dN, dO

    def normal(self, dN: np.ndarray, dO: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gN, gO = self.apply_t(self.apply(dN, dO) * self.w2)
        return (gN + self.neuron_ridge[:, None] * dN, gO + self.output_ridge[:, None] * dO)

    def precondition(self, gN: np.ndarray, gO: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.einsum("jab,jb->ja", self.neuron_inv, gN),
                np.einsum("iab,ib->ia", self.output_inv, gO))

    def solve(self, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Preconditioned conjugate gradients for ``Jᵀ Ω J δ = Jᵀ Ω R``."""
        rN, rO = self.apply_t(R * self.w2)
        xN, xO = np.zeros_like(rN), np.zeros_like(rO)
        zN, zO = self.precondition(rN, rO)
        pN, pO = zN, zO
        rz = float(np.sum(rN * zN) + np.sum(rO * zO))
        rz0 = rz
        it = 0
        while it < CG_MAX and rz > CG_TOL * rz0 and rz > 0:
            it += 1
            qN, qO = self.normal(pN, pO)
            pq = float(np.sum(pN * qN) + np.sum(pO * qO))
            if not pq > 0:
                break
            alpha = rz / pq
            xN += alpha * pN
            xO += alpha * pO
            rN -= alpha * qN
            rO -= alpha * qO
            zN, zO = self.precondition(rN, rO)
            rz_new = float(np.sum(rN * zN) + np.sum(rO * zO))
            pN = zN + (rz_new / rz) * pN
            pO = zO + (rz_new / rz) * pO
            rz = rz_new
        return xN, xO, it


def _misfit(X, Y, w2, W, b, A, c, L) -> tuple[float, np.ndarray]:
    R = Y - (np.maximum(X @ W.T + b, 0.0) @ A.T + c + X @ L.T)
    return float(np.sum(R * R * w2)), R


def refine_network(model: ReluNetwork, X: np.ndarray, Y: np.ndarray,
                   sigma: np.ndarray) -> RefineResult:
    """Gauss-Newton refinement of all of ``model``'s parameters to the answers ``Y`` at ``X``.

    Parameters
    ----------
    model : ReluNetwork
        Starting point (close enough that most activation patterns are right).
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, m)
        Paid answers.
    sigma : ndarray of shape (n,) or (n, m)
        Standard error of each answer (rows or single answers); weights ``1/σ²``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(X.shape[0], -1), Y.shape)
    if not np.all(sig > 0):
        raise ValueError("refine_network: every answer needs a positive standard error")
    w2 = 1.0 / (sig * sig)
    W, b, A, c = model.W.copy(), model.b.copy(), model.A.copy(), model.c.copy()
    L = model.L.copy()
    k, d = W.shape
    n_obs = Y.size
    chi, R = _misfit(X, Y, w2, W, b, A, c, L)
    chi_start = chi
    steps = cg_total = 0
    for _ in range(MAX_STEPS):
        lin = _Normal(X, W, b, A, w2)
        dN, dO, it = lin.solve(R)
        cg_total += it
        step = 1.0
        for _ in range(HALVINGS + 1):
            cand = (W + step * dN[:, :d], b + step * dN[:, d], A + step * dO[:, :k],
                    c + step * dO[:, k + d], L + step * dO[:, k:k + d])
            chi_new, R_new = _misfit(X, Y, w2, *cand)
            if chi_new < chi:
                break
            step *= 0.5
        if not chi_new < chi:
            break
        gain = (chi - chi_new) / chi
        logger.debug("refine step %d: %d CG iterations, step %g, chi2/obs %.4g -> %.4g",
                     steps, it, step, chi / n_obs, chi_new / n_obs)
        W, b, A, c, L = cand
        chi, R = chi_new, R_new
        steps += 1
        if gain < MIN_GAIN:
            break
    refined = ReluNetwork(W, b, A, c, L, metadata=dict(model.metadata))
    return RefineResult(refined, chi_start / n_obs, chi / n_obs, steps, cg_total)


__all__ = ["RefineResult", "refine_network", "refine_work"]
