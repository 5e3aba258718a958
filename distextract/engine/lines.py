"""Probe lines ``x(t) = u + t·v`` through the Gaussian bulk."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Line:
    """A probe line.

    Attributes
    ----------
    index : int
        Position in the run (0 is the first line).
    u : ndarray of shape (d,)
        Offset, drawn from N(0, s² I) so the line misses the origin almost surely.
    v : ndarray of shape (d,)
        Unit direction.
    reach : float
        The line is searched on ``t ∈ [-reach, reach]``.
    seed : int
        Seed of every random choice tied to this line (stencil bases, checks).
    """

    index: int
    u: np.ndarray
    v: np.ndarray
    reach: float
    seed: int
    _basis: list = field(default_factory=list, repr=False)

    @property
    def dim(self) -> int:
        return int(self.u.shape[0])

    def points(self, t: np.ndarray) -> np.ndarray:
        """Points ``u + t v`` of shape (n, d) for ``t`` of shape (n,)."""
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        return self.u[None, :] + t[:, None] * self.v[None, :]

    def model_values(self, model, t: np.ndarray, block: int = 512) -> np.ndarray:
        """``model.predict(self.points(t))``, (n, m), without forming the points: along the
        line every pre-activation is affine in ``t`` (``w·u + b + t·w·v``), so the cost is
        ``k·d`` once plus ``n·k·m``, not ``n·k·d`` (a k=1e5, d=1,024 model on a line's 1e5
        residual samples: 1e10 instead of 1e13 flops), in blocks of ``block`` positions."""
        t = np.asarray(t, dtype=np.float64)
        pre0 = model.W @ self.u + model.b
        slope = model.W @ self.v
        lin0 = model.L @ self.u + model.c
        lin1 = model.L @ self.v
        out = np.empty((t.size, model.A.shape[0]))
        for i in range(0, t.size, block):
            tb = t[i:i + block]
            H = np.maximum(pre0[None, :] + tb[:, None] * slope[None, :], 0.0)
            out[i:i + block] = H @ model.A.T + lin0[None, :] + tb[:, None] * lin1[None, :]
        return out

    def basis(self) -> np.ndarray:
        """Orthonormal basis of the complement of ``v``, shape (d, d-1), random but seeded."""
        if not self._basis:
            d = self.dim
            rng = np.random.default_rng([self.seed, 1])
            M = rng.standard_normal((d, d))
            M[:, 0] = self.v
            Q, R = np.linalg.qr(M)
            Q = Q * np.sign(np.diag(R))[None, :]
            self._basis.append(np.ascontiguousarray(Q[:, 1:]))
        return self._basis[0]

    def segments(self, count: int) -> list[tuple[float, float]]:
        """Cut ``[-reach, reach]`` into ``count`` segments holding similar numbers of kinks.

        Kinks sit at ``t = -(w·u + b)/(w·v)``, roughly ``sqrt(d)``·Cauchy distributed, so the
        cuts are uniform in ``arctan(t / sqrt(d))``.
        """
        scale = np.sqrt(self.dim)
        lim = np.arctan(self.reach / scale)
        theta = np.linspace(-lim, lim, count + 1)
        cuts = np.tan(theta) * scale
        cuts[0], cuts[-1] = -self.reach, self.reach
        return [(float(cuts[i]), float(cuts[i + 1])) for i in range(count)]


def line_reach(d: int, line_reach: float, input_scale: float) -> float:
    """How far a line reaches either side of its base point: ``line_reach·sqrt(d)·s`` (a
    Gaussian input's norm is about ``sqrt(d)·s``). The one definition, for searched lines
    and the lines along a neuron's normal alike."""
    return line_reach * np.sqrt(d) * input_scale


def make_line(index: int, dim: int, seed_seq: np.random.SeedSequence, input_scale: float,
              reach: float) -> Line:
    """Draw line ``index`` from its own child seed (independent of scheduling order)."""
    child = np.random.SeedSequence(entropy=seed_seq.entropy,
                                   spawn_key=(*seed_seq.spawn_key, 7, index))
    rng = np.random.default_rng(child)
    u = rng.standard_normal(dim) * input_scale
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    line_seed = int(rng.integers(2**63 - 1))
    return Line(index=index, u=u, v=v, reach=float(reach), seed=line_seed)
