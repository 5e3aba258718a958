"""Refine every parameter of the model at once by Gauss-Newton over the paid answers.

With imprecise answers (float32, rounded decimals) a hyperplane measured from region
Jacobians is known to about ``noise / h`` (``h``: the stencil step, bounded by the distance to
the nearest hyperplane), about 1e-3 for float32 at d=64, k=128. Each paid answer, though, is
an equation ``F(x) = A·relu(Wx + b) + c + Lx`` in *all* the parameters, and a Gaussian point
sees about half the neurons active: a few Gaussian points per unknown pin every parameter
to near the answers' own precision. Near the current model the equations are linear in the
parameter change (the activation pattern is the current one everywhere but within the
hyperplane error of a hyperplane), so a few Gauss-Newton steps converge.

**Variable projection** (the default): for a fixed hidden layer ``(W, b)`` the output layer
``(A, L, c)`` is an exact weighted linear least-squares solve over the features
``(relu(Wx + b), x, 1)``, so Gauss-Newton runs over ``(W, b)`` only. Each step solves
``Jᵀ Ω P⊥ J δ = Jᵀ Ω r`` (``P⊥``: the weighted projection off the features) by conjugate
gradients, matrix-free (``O(rows·(k·d + (k + d)·m))`` an iteration) and inexactly (to 1%),
preconditioned by one ``(d+1)²`` block per neuron: its sum over active rows less what the
output layer's ``x`` and ``1`` absorb (a Schur complement), updated from the rows whose
activation changed since the last step. On a d64-k128-m10 float32 problem that is 27
conjugate-gradient iterations where the joint solver below takes 6,000.

**Joint** (``method="joint"``): every parameter at once, the same matrix-free conjugate
gradients on the full normal equations, preconditioned by the exact diagonal blocks: one
``(d+1)²`` block per neuron (its ``w``, ``b``) and one ``(k+d+1)²`` block per output (its
``A`` row, ``L`` row, ``c``). The rescaling ``(w, b, a) → (αw, αb, a/α)`` leaves the model
unchanged; a tiny ridge keeps the blocks invertible and the step free of it.

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
#: Variable projection: conjugate gradients stop at this relative residual (an inexact
#: Gauss-Newton step: the next step corrects what this one leaves).
VP_CG_TOL = 1e-2
#: ... and this on wide refinements (float32 products, OP_DTYPE): there a step's gain is set by
#: the linearisation, not by the solve (d128-k256-m10 float32: the misfit falls ~3x a step
#: whether the conjugate gradients stop at 1e-2 or 1e-4; the linear model predicted 0.26 per
#: answer from 1,367 and the step reached 365, its rows' activations unchanged: the spare
#: neurons of a wide first model, and the near-duplicate pairs the fuse later merges). Seed 31's
#: fit after the fuse's wedge rows, offline: 503 CG iterations, 32.7 s at 1e-2; 320, 20.3 s at
#: 3e-2 (misfit 0.041 -> 0.018 per answer).
VP_CG_TOL_WIDE = 3e-2
#: ... or when an iteration lowers χ² by less than this per answer (far below the answers'
#: errors: the rest of the step would move the model by a small fraction of them).
VP_CG_FLOOR = 1e-5
#: Ridge of the output layer's least-squares solve, relative to each feature's weighted
#: sum of squares (it pulls the directions the rows leave undetermined to the current values).
VP_RIDGE = 1e-12
#: Once the misfit is at the answers' errors (χ² per answer at most NOISE_CHI2), a step that
#: lowers it by less than NOISE_GAIN ends the loop.
NOISE_CHI2 = 1.0
NOISE_GAIN = 0.5
#: Variable projection: a step moves no neuron's hyperplane by more than this many input
#: scales (None: unbounded). The linearisation holds only while few rows change side; a weak
#: neuron's step, in its own units, is huge where a strong neuron's misfit leaks into it
#: (hard:norm_range d16-k32 seed 30, ``||w||`` over 1e-3..1e3, float32, every neuron present
#: 2e-3 rad off: unbounded or at 0.5, neurons adding 1e-4..1e-2 of the output swing up to
#: 1.5 rad away and the fit stalls at χ² 6 per answer; at 0.1 to 0.3, χ² 0.03 in 8 to 12
#: steps, each neuron adding 1e-3 or more within 1.3e-3 rad). At 0.1 issue5's d64-k128-m10
#: round:6 run took 29,165 queries instead of 25,860 (slower refinements); at 0.3 the same.
VP_MAX_MOVE: float | None = 0.3
#: Variable projection on wide refinements: the conjugate-gradient products ``J·δ``, ``Jᵀ·S``
#: and the projection's two products with the features (most of a wide refinement's time:
#: d128-k256-m10 float32, 300 of 390 s) run in this dtype. Their rounding (~1e-7 relative)
#: only makes each inexact step (VP_CG_TOL, 1e-2) a little less exact; the right-hand side
#: ``Jᵀ Ω r``, the output layer's solves, the residuals and the misfit that accepts a step
#: stay float64, so the fixed point is the float64 one (exact answers still refine to
#: 1e-10). Operands are scaled by powers of two (exact) into float32's range. d128-k256-m10
#: float32 seed 30, one BLAS thread: 197 -> 147 s of extractor CPU with J·δ and Jᵀ·S (same
#: queries and rel L2), 153 -> 98 s with the projection's too (80,380 -> 79,020 rows, same
#: rel L2); d64-k128-m10 seed 31: 11.0 -> 8.6 s, same rows and rel L2.
OP_DTYPE = np.float32
#: ... only where one conjugate-gradient iteration costs at least this (refine_work, flops):
#: on small refinements float32 saves little and costs fits (the projection subtracts the
#: part of ``J·δ`` the features explain, often most of it, and the rest carries that part's
#: rounding: d16-k32-m1 float32 seed 21, ~2e6 a CG iteration, held-out χ² 8.4 per answer
#: against 4, the rest of the rows bought) ...
OP_MIN_WORK = 1e8
#: ... and only where the neurons' output scales (``|a_j|·|(w_j, b_j)|`` at a typical row)
#: span at most this factor, the largest over the 10th percentile: a weak neuron's part of
#: ``J·δ`` is summed with the strong ones' and keeps float32's precision relative to theirs
#: (hard:norm_range d16-k32 seed 40, norms log-uniform over six decades, float32 answers:
#: 1.05e-6 with float64 products, 3.8e-5 with float32). (Not the smallest: the refinement
#: silences a spurious neuron's output weights to the noise, and a d64-k128-m10 model with a
#: few such spans 1e8; its 10th percentile, 4 to 5.)
OP_MAX_SPREAD = 1e4


def _op_dtype(X: np.ndarray, model: ReluNetwork, m: int, xs: float):
    """The dtype of the conjugate-gradient products for this refinement: OP_DTYPE for a wide
    one whose neurons' scales span at most OP_MAX_SPREAD (the largest over the 10th
    percentile), float64 otherwise."""
    n, d = X.shape
    k = model.W.shape[0]
    if k == 0 or refine_work(n, k, d, m) < OP_MIN_WORK:
        return np.float64
    scale = (np.linalg.norm(model.A, axis=0)
             * np.sqrt(np.sum(model.W ** 2, axis=1) * xs * xs + model.b ** 2))
    scale = scale[scale > 0]
    if scale.size == 0 or scale.max() > OP_MAX_SPREAD * np.quantile(scale, 0.1):
        return np.float64
    return OP_DTYPE


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


def _refine_joint(model: ReluNetwork, X: np.ndarray, Y: np.ndarray,
                  sigma: np.ndarray) -> RefineResult:
    """Joint Gauss-Newton refinement of all of ``model``'s parameters (``method="joint"`` of
    :func:`refine_network`, whose docstring describes the parameters)."""
    X, Y, w2 = _validated(X, Y, sigma)
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



def _validated(X, Y, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(X.shape[0], -1), Y.shape)
    if not np.all(sig > 0):
        raise ValueError("refine_network: every answer needs a positive standard error")
    return X, Y, 1.0 / (sig * sig)


class _OutputFit:
    """The output layer ``(A, L, c)`` of hidden layer ``(W, b)``: the weighted linear
    least-squares solve over the features ``φ(x) = (relu(Wx + b), x, 1)``, one per output
    (one for all when every row weighs its outputs alike), with a tiny ridge pulling the
    directions the rows leave undetermined towards ``theta0`` (the current output layer),
    then one step of iterative refinement without it."""

    def __init__(self, X1: np.ndarray, H: np.ndarray, Y: np.ndarray, w2: np.ndarray,
                 rowwise: bool, theta0: np.ndarray) -> None:
        self.Phi = np.concatenate([H, X1], axis=1)
        # (scaled features, their transpose, scale, inverse Cholesky factor): _op
        self._phi_op: tuple[np.ndarray, np.ndarray, float, np.ndarray] | None = None
        self.w2, self.rowwise = w2, rowwise
        p = self.Phi.shape[1]
        groups = [w2[:, 0]] if rowwise else [w2[:, i] for i in range(w2.shape[1])]
        self.factors = []
        theta = np.empty((Y.shape[1], p))
        for g, om in enumerate(groups):
            G = self.Phi.T @ (self.Phi * om[:, None])
            s = np.sqrt(np.diag(G))
            s[~(s > 0)] = 1.0
            Gs = G / np.outer(s, s)
            Gs[np.diag_indices(p)] += VP_RIDGE
            chol = np.linalg.cholesky(Gs)
            self.factors.append((chol, s))
            cols = slice(None) if rowwise else slice(g, g + 1)
            pull = (VP_RIDGE * s * s)[:, None] * theta0[cols].T
            t = self._solve(g, self.Phi.T @ (Y[:, cols] * om[:, None]) + pull)
            # one step of iterative refinement on the unridged equations: the ridge's pull
            # (and the normal equations' rounding) leave the determined directions
            t += self._solve(g, self.Phi.T @ ((Y[:, cols] - self.Phi @ t) * om[:, None]))
            theta[cols] = t.T
        self.theta = theta

    def _solve(self, g: int, rhs: np.ndarray) -> np.ndarray:
        chol, s = self.factors[g]
        z = np.linalg.solve(chol, rhs / s[:, None])
        return np.linalg.solve(chol.T, z) / s[:, None]

    def _op(self, dtype) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """The features scaled by a power of two in ``dtype``, in both memory orders, the
        scale, and the inverse of the Cholesky factor (made on first use: a fit's products
        use one dtype)."""
        if self._phi_op is None:
            s = _pow2(self.Phi)
            P = (self.Phi * s).astype(dtype)
            self._phi_op = (P, np.ascontiguousarray(P.T), s, np.linalg.inv(self.factors[0][0]))
        return self._phi_op

    def project(self, V: np.ndarray, dtype=None) -> np.ndarray:
        """``V`` (rows, m) less its weighted least-squares fit by the features (per output);
        the two products with the features in ``dtype`` (scaled) when given, one output
        weighting only. There the solve goes through the inverse of the Cholesky factor (two
        small products; ``numpy.linalg.solve`` factors a triangular matrix afresh each call,
        d128-k256-m10: 6 of 17 ms), and each product takes the operand order BLAS runs
        fastest (the thin products read the features once: 8.3 -> 4.6 and 5.4 -> 3.9 ms);
        at float32's rounding either way."""
        if self.rowwise and dtype is not None and dtype != np.float64:
            P, PT, sp, Linv = self._op(dtype)
            sd = self.factors[0][1]
            S = V * self.w2[:, :1]
            s = _pow2(S)
            rhs = ((S * s).astype(dtype).T @ P).T.astype(np.float64) / (s * sp)
            coef = (Linv.T @ (Linv @ (rhs / sd[:, None]))) / sd[:, None]
            c = _pow2(coef)
            return V - ((coef * c).astype(dtype).T @ PT).T.astype(np.float64) / (c * sp)
        if self.rowwise:
            coef = self._solve(0, self.Phi.T @ (V * self.w2[:, :1]))
            return V - self.Phi @ coef
        out = np.empty_like(V)
        for i in range(V.shape[1]):
            coef = self._solve(i, self.Phi.T @ (V[:, i] * self.w2[:, i])[:, None])
            out[:, i] = V[:, i] - (self.Phi @ coef)[:, 0]
        return out


class _Hidden:
    """Variable projection's linearisation in the hidden layer at one point: the operator
    ``δ(W, b) ↦ P⊥ J δ`` (``J``: the answers' derivative in ``(W, b)`` at the fitted output
    layer; ``P⊥``: the weighted projection off the output layer's features) and the neuron
    block preconditioner, kept across steps (:class:`_Blocks`)."""

    def __init__(self, X1: np.ndarray, X1op: np.ndarray, x_scale: float, mask: np.ndarray,
                 A: np.ndarray, w2: np.ndarray, fit: _OutputFit, blocks: "_Blocks") -> None:
        self.X1, self.mask, self.A, self.w2, self.fit = X1, mask, A, w2, fit
        # the conjugate-gradient products' operands, in X1op's dtype (_op_dtype; the
        # projection's products too): X1op is X1 scaled by x_scale (_pow2(X1)), A likewise
        self.X1op, self.x_scale, self.op = X1op, x_scale, X1op.dtype
        self.a_scale = _pow2(A)
        self.Aop = (A * self.a_scale).astype(self.op)
        self.mask_op = mask.astype(self.op)
        self.inv, self.ridge = blocks.inverse(A)

    def apply(self, dN: np.ndarray) -> np.ndarray:
        """``J·δ`` (rows, m), computed in the operands' dtype."""
        s = _pow2(dN)
        pre = self.X1op @ (dN * s).astype(self.op).T
        pre *= self.mask_op  # in place: one (rows, k) array fewer each iteration
        return (pre @ self.Aop.T).astype(np.float64) / (s * self.x_scale * self.a_scale)

    def apply_t(self, S: np.ndarray, exact: bool = False) -> np.ndarray:
        """``Jᵀ·S`` (k, d+1) for a residual-shaped ``S``: in float64 when ``exact`` (the
        right-hand side), in the operands' dtype otherwise."""
        if exact:
            G = (S @ self.A) * self.mask
            return G.T @ self.X1
        s = _pow2(S)
        G = (S * s).astype(self.op) @ self.Aop
        G *= self.mask_op
        # in float32, (X1ᵀ G)ᵀ: the same product as Gᵀ X1, which BLAS runs slower (20 -> 14
        # ms, d128-k256; float64 keeps Gᵀ X1, whose bits small refinements were fitted with)
        JtS = G.T @ self.X1op if self.op == np.float64 else (self.X1op.T @ G).T
        return JtS.astype(np.float64) / (s * self.x_scale * self.a_scale)

    def normal(self, dN: np.ndarray) -> np.ndarray:
        return (self.apply_t(self.fit.project(self.apply(dN), self.op) * self.w2)
                + self.ridge[:, None] * dN)

    def solve(self, R: np.ndarray, tol: float, floor: float) -> tuple[np.ndarray, int]:
        """Preconditioned conjugate gradients for ``Jᵀ Ω P⊥ J δ = Jᵀ Ω R``, stopped when the
        residual falls to ``tol`` of the right-hand side (preconditioned norms) or when an
        iteration lowers the linearised misfit by less than ``floor``."""
        r = self.apply_t(R * self.w2, exact=True)
        x = np.zeros_like(r)
        z = np.einsum("jab,jb->ja", self.inv, r)
        p = z
        rz = rz0 = float(np.sum(r * z))
        it = 0
        while it < CG_MAX and rz > tol * tol * rz0 and rz > 0:
            it += 1
            q = self.normal(p)
            pq = float(np.sum(p * q))
            if not pq > 0:
                break
            alpha = rz / pq
            x += alpha * p
            r -= alpha * q
            if alpha * rz < floor:  # the misfit it still lowers is far below the noise
                break
            z = np.einsum("jab,jb->ja", self.inv, r)
            rz_new = float(np.sum(r * z))
            p = z + (rz_new / rz) * p
            rz = rz_new
        return x, it


class _Blocks:
    """``S_j = Σ_x [w_j·x + b_j > 0] ω_x x̃ x̃ᵀ`` per neuron (``x̃ = (x, 1)``), updated from the
    rows whose activation changed since the last step; the preconditioner block of neuron
    ``j`` is ``|a_j|² S_j`` when every row weighs its outputs alike (``ω_x``), rebuilt from
    every row otherwise."""

    def __init__(self, X1: np.ndarray, w2: np.ndarray, rowwise: bool) -> None:
        self.X1, self.w2, self.rowwise = X1, w2, rowwise
        self.mask: np.ndarray | None = None
        self.S: np.ndarray | None = None
        self.Kinv = None
        self.rebuilt = self.updated = 0  # blocks computed from every row / from changes

    def _gram(self, rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
        Xa = self.X1[rows] * np.sqrt(weight)[:, None]
        return Xa.T @ Xa

    def update(self, mask: np.ndarray) -> None:
        """Move to the activation pattern ``mask`` (rows, k) bool."""
        if not self.rowwise:
            self.mask = mask
            return
        om = self.w2[:, 0]
        k = mask.shape[1]
        d1 = self.X1.shape[1]
        if self.S is None or self.mask is None or self.mask.shape != mask.shape:
            self.S = np.empty((k, d1, d1))
            for j in range(k):
                act = mask[:, j]
                self.S[j] = self._gram(act, om[act])
            self.rebuilt += k
        else:
            changed = mask != self.mask
            for j in np.flatnonzero(changed.any(axis=0)):
                on = changed[:, j] & mask[:, j]
                off = changed[:, j] & ~mask[:, j]
                if on.any():
                    self.S[j] += self._gram(on, om[on])
                if off.any():
                    self.S[j] -= self._gram(off, om[off])
                self.updated += 1
        self.mask = mask

    def inverse(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inverse preconditioner blocks (k, d+1, d+1) and each block's ridge (k,)."""
        k = A.shape[1]
        d1 = self.X1.shape[1]
        if self.rowwise:
            if self.Kinv is None:
                om = self.w2[:, 0]
                self.Kinv = np.linalg.inv(self._gram(np.ones(om.size, dtype=bool), om))
            # the output layer's x and 1 absorb the part of a neuron's change that is
            # linear in x̃ over all rows: its block less that (a Schur complement)
            S = self.S - self.S @ self.Kinv @ self.S
            blocks = S * np.sum(A * A, axis=0)[:, None, None]
        else:
            coef = self.mask * (self.w2 @ (A * A))
            blocks = np.empty((k, d1, d1))
            for j in range(k):
                act = coef[:, j] > 0
                blocks[j] = self._gram(act, coef[act, j])
            self.rebuilt += k
        ridge = _Normal._ridge(blocks)
        blocks = blocks + ridge[:, None, None] * np.eye(d1)
        return np.linalg.inv(blocks), ridge


def _pow2(M: np.ndarray) -> float:
    """A power of two that brings ``max |M|`` into [1, 2) (1 for an empty or zero ``M``):
    scaling by it is exact, and keeps float32 products of weighted residuals (weights
    ``1/σ²`` up to ~1e32) and of tiny steps inside float32's range."""
    top = float(np.max(np.abs(M))) if M.size else 0.0
    if not (top > 0.0 and np.isfinite(top)):
        return 1.0
    return float(np.ldexp(1.0, -(np.frexp(top)[1] - 1)))


def _capped_moves(dN: np.ndarray, W: np.ndarray, xs: float, cap: float) -> np.ndarray:
    """The step ``dN`` (k, d+1) with each neuron's part scaled down so that its hyperplane
    moves by at most ``cap`` input scales ``xs``: ``sqrt(|δw|²·xs² + δb²) / (|w|·xs)``, the
    change of ``(w·x + b)/|w|`` at a typical row (see VP_MAX_MOVE)."""
    d = W.shape[1]
    norm = np.maximum(np.linalg.norm(W, axis=1), 1e-300)
    move = np.sqrt(np.sum(dN[:, :d] ** 2, axis=1) * xs * xs + dN[:, d] ** 2) / (norm * xs)
    f = np.minimum(1.0, cap / np.maximum(move, 1e-300))
    return dN * f[:, None]


def _refine_vp(model: ReluNetwork, X: np.ndarray, Y: np.ndarray,
               sigma: np.ndarray, free_last: int = 0) -> RefineResult:
    """Variable projection (``method="vp"`` of :func:`refine_network`)."""
    X, Y, w2 = _validated(X, Y, sigma)
    n, d = X.shape
    k, m = model.W.shape[0], Y.shape[1]
    n_obs = Y.size
    rowwise = bool(np.all(w2 == w2[:, :1]))
    xs = float(np.sqrt(np.mean(X * X))) if X.size else 1.0
    X1 = np.concatenate([X, np.ones((n, 1))], axis=1)
    x_scale = _pow2(X1)
    X1op = (X1 * x_scale).astype(_op_dtype(X, model, m, xs))
    cg_tol = VP_CG_TOL if X1op.dtype == np.float64 else VP_CG_TOL_WIDE
    chi_start = _misfit(X, Y, w2, model.W, model.b, model.A, model.c, model.L)[0]

    def at(W, b, theta):
        Z = X @ W.T + b
        fit = _OutputFit(X1, np.maximum(Z, 0.0), Y, w2, rowwise, theta)
        R = Y - fit.Phi @ fit.theta.T
        return fit, Z > 0, float(np.sum(R * R * w2)), R

    W, b = model.W.copy(), model.b.copy()
    theta = np.concatenate([model.A, model.L, model.c[:, None]], axis=1)
    fit, mask, chi, R = at(W, b, theta)
    blocks = _Blocks(X1, w2, rowwise)
    steps = cg_total = 0
    for _ in range(MAX_STEPS if k else 0):
        blocks.update(mask)
        A = fit.theta[:, :k]
        lin = _Hidden(X1, X1op, x_scale, mask, A, w2, fit, blocks)
        dN, it = lin.solve(R, cg_tol, VP_CG_FLOOR * n_obs)
        if VP_MAX_MOVE is not None:
            bounded = k - free_last
            dN[:bounded] = _capped_moves(dN[:bounded], W[:bounded], xs, VP_MAX_MOVE)
        cg_total += it
        step = 1.0
        for _ in range(HALVINGS + 1):
            cand = (W + step * dN[:, :d], b + step * dN[:, d])
            new = at(*cand, fit.theta)
            if new[2] < chi:
                break
            step *= 0.5
        if not new[2] < chi:
            break
        gain = (chi - new[2]) / chi
        logger.debug("refine step %d: %d CG iterations, step %g, chi2/obs %.4g -> %.4g",
                     steps, it, step, chi / n_obs, new[2] / n_obs)
        W, b = cand
        fit, mask, chi, R = new
        steps += 1
        if gain < MIN_GAIN or (chi <= NOISE_CHI2 * n_obs and gain < NOISE_GAIN):
            break
    theta = fit.theta
    if not chi < chi_start:  # nothing gained (the ridge's pull can cost a trifle)
        return RefineResult(model, chi_start / n_obs, chi_start / n_obs, 0, cg_total)
    refined = ReluNetwork(W, b, theta[:, :k], theta[:, k + d], theta[:, k:k + d],
                          metadata=dict(model.metadata))
    logger.debug("refine: preconditioner blocks rebuilt %d, updated %d", blocks.rebuilt,
                 blocks.updated)
    return RefineResult(refined, chi_start / n_obs, chi / n_obs, steps, cg_total)


def refine_network(model: ReluNetwork, X: np.ndarray, Y: np.ndarray, sigma: np.ndarray,
                   method: str = "vp", free_last: int = 0) -> RefineResult:
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
    method : {"vp", "joint"}
        ``"vp"`` (variable projection, the default): the output layer is the exact
        weighted least-squares solve for the current hidden layer, and Gauss-Newton runs in
        the hidden layer only; ``"joint"``: Gauss-Newton in every parameter at once.
    free_last : int
        Variable projection: the model's last ``free_last`` neurons (new ones, fitted to a
        residual: far from their place) step without the VP_MAX_MOVE bound.
    """
    if method == "vp":
        return _refine_vp(model, X, Y, sigma, free_last)
    if method == "joint":
        return _refine_joint(model, X, Y, sigma)
    raise ValueError(
        f"refine_network: method must be 'vp' or 'joint', got {method!r}")


__all__ = ["RefineResult", "refine_network", "refine_work"]
