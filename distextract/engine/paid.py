"""The paid-row store: answers the run has paid for and keeps for the output fit.

Rows of the Jacobian stencils (a seeded sample per region on a wide line), region Jacobians
for ``L`` and ``c``, the validation points, and Gaussian rows bought by the imprecise path.
"""

from __future__ import annotations

import numpy as np

from .lines import Line
from .settings import PaidSettings


class PaidRows:
    """Rows paid for and kept.

    Attributes
    ----------
    solve_X, solve_Y : list of ndarray of shape (n_i, d), (n_i, m)
        Blocks of rows for the output fit (stencil rows, polish anchors).
    jac_X, jac_F, jac_J : list of ndarray of shape (d,), (m,), (m, d)
        Region centres, answers there and region Jacobians (for ``L`` and ``c``).
    Xv, Yv : ndarray of shape (n_val, d), (n_val, m)
        The validation points and their answers.
    Xs, Ys : ndarray of shape (n_s, d), (n_s, m)
        Gaussian rows bought for the output solve and the refinement (imprecise answers).
    settings : PaidSettings
        What is kept (default: ``PaidSettings()``).
    """

    def __init__(self, d: int, settings: PaidSettings | None = None) -> None:
        self.d = d
        self.settings = settings or PaidSettings()
        self.solve_X: list = []
        self.solve_Y: list = []
        self.jac_X: list = []
        self.jac_F: list = []
        self.jac_J: list = []
        self.Xv = np.zeros((0, d))
        self.Yv = np.zeros((0, 1))
        self.Xs = np.zeros((0, d))
        self.Ys = np.zeros((0, 1))

    @property
    def solve_row_budget(self) -> int:
        """A line's stencil rows are kept whole up to this many."""
        return self.settings.solve_row_budget

    def per_region(self, regions: int) -> int:
        """Rows of each region kept when a line's regions hold more than the row budget:
        an equal share of it, at least ``settings.solve_rows_per_region``."""
        return max(self.settings.solve_rows_per_region,
                   self.solve_row_budget // max(regions, 1))

    def hold(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Keep rows bought for the refinement (imprecise answers) with the Gaussian rows
        ``Xs``, ``Ys``: ``X`` of shape (n, d), ``Y`` of shape (n, m)."""
        m = Y.shape[1]
        self.Xs = np.concatenate([self.Xs, X], axis=0)
        self.Ys = np.concatenate([self.Ys.reshape(-1, m), Y], axis=0)

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Keep a block of rows for the output fit."""
        self.solve_X.append(X)
        self.solve_Y.append(Y)

    def keep_solve_rows(self, regions: list, rng: np.random.Generator) -> None:
        """Keep paid rows for the output solve: every row while a line's regions hold fewer
        than the row budget, else a random sample per region (at least
        ``settings.solve_rows_per_region``; drawn by the workers, :func:`.scan.measure`), so a wide
        network's coordinator neither receives nor holds every stencil row. Random rows cover
        different stencil directions in different regions."""
        if not regions:
            return
        total = sum(r.X.shape[0] for r in regions)
        per = self.per_region(len(regions))
        for r in regions:
            n = r.X.shape[0]
            if n == 0:
                continue
            if total <= self.solve_row_budget or n <= per:
                idx = slice(None)
            else:
                idx = np.sort(rng.choice(n, size=per, replace=False))
            self.add(r.X[idx], r.Y[idx])

    def keep_jacobians(self, line: Line, regions: list, rng: np.random.Generator) -> None:
        """Keep a random sample of measured regions (centre, value, Jacobian) for ``L``, ``c``
        (at most ``settings.jacobian_samples`` in all)."""
        ok = [r for r in regions if r.J is not None]
        room = self.settings.jacobian_samples - len(self.jac_J)
        if not ok or room <= 0:
            return
        take = ok if len(ok) <= room else [ok[i] for i in np.sort(
            rng.choice(len(ok), size=room, replace=False))]
        for r in take:
            self.jac_X.append(line.points([r.t0])[0])
            self.jac_F.append(r.f0)
            self.jac_J.append(r.J)

    @property
    def total(self) -> int:
        """Rows kept for the output fit."""
        return int(sum(x.shape[0] for x in self.solve_X))

    def sample(self, cap: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``cap`` random rows of those kept (all if fewer), gathered from the kept
        blocks without joining them (a join copies every kept row: ~400 MB per assemble at
        d=784)."""
        sizes = np.array([x.shape[0] for x in self.solve_X], dtype=np.int64)
        ends = np.cumsum(sizes)
        total = int(ends[-1]) if sizes.size else 0
        d = self.d
        if total <= cap:
            if not sizes.size:
                return np.zeros((0, d)), np.zeros((0, m))
            return (np.concatenate(self.solve_X, axis=0),
                    np.concatenate(self.solve_Y, axis=0))
        sel = np.sort(rng.choice(total, size=cap, replace=False))
        block = np.searchsorted(ends, sel, side="right")
        Xs = np.empty((cap, d))
        Ys = np.empty((cap, self.solve_Y[0].shape[1]))
        for p in np.unique(block):
            at = block == p
            rows = sel[at] - (ends[p] - sizes[p])
            Xs[at], Ys[at] = self.solve_X[p][rows], self.solve_Y[p][rows]
        return Xs, Ys
