"""Polish hyperplanes from kink positions, for imprecise (float32, rounded) answers.

A region Jacobian measured by finite differences is only as precise as ``noise/h``, and the
stencil step ``h`` is bounded by the distance to the nearest hyperplane: with float32 answers
that leaves a neuron's direction known to about 1e-3. A kink's *position* on a line is far
more precise: two long chords, one on each side, meet there, and their slopes come from
points a quarter of a gap apart instead of a stencil step apart.

Every kink found on a further line is a point ``x`` on its neuron's hyperplane:
``w·x + b = 0``. Once the known hyperplanes predict where a line crosses them, two anchor
points in every gap between predicted crossings (about two queries per neuron) locate every
crossing; a neuron seen on ``n`` lines has ``n`` exact linear constraints on ``(w, b)``, and
the Jacobian estimate fills the directions they do not fix yet (a Gaussian prior with the
estimate's own error). After ``d + 1`` lines the hyperplane comes from kinks alone.

Pure numpy; the coordinator queries the anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kinks import jump_agrees

#: An outer gap (between the line's end and the first or last crossing) is used up to this
#: many typical gaps wide: its anchors then sit where the two neighbouring gaps' would.
OUTER_GAPS = 2.0
#: A measured crossing counts for its neuron when it lies within this many position errors
#: (measurement and prediction together) of the prediction, and its slope change agrees
#: with the neuron's (:func:`.kinks.jump_agrees`).
ACCEPT_SIGMAS = 8.0


@dataclass(frozen=True)
class Crossing:
    """One predicted crossing measured on a line.

    Attributes
    ----------
    neuron : int
        Index of the neuron predicted there.
    t : float
        Measured position (intersection of the two anchor chords).
    sigma_t : float
        Its standard error.
    jump : ndarray of shape (m,)
        Measured slope change (right minus left) along the line.
    """

    neuron: int
    t: float
    sigma_t: float
    jump: np.ndarray


def anchor_points(tp: np.ndarray, reach: float) -> np.ndarray:
    """Two anchors per gap between sorted predicted crossings ``tp`` (and the outer gaps):
    at a quarter and three quarters of each gap. Shape (2·(K+1),), gap-major."""
    K = tp.size
    if K == 0:
        return np.array([-0.5 * reach, 0.5 * reach])
    gaps = np.diff(tp)
    typical = float(np.median(gaps)) if gaps.size else reach
    lo = max(-reach, tp[0] - OUTER_GAPS * typical)
    hi = min(reach, tp[-1] + OUTER_GAPS * typical)
    edges = np.concatenate([[lo], tp, [hi]])
    left, right = edges[:-1], edges[1:]
    width = right - left
    return np.stack([left + 0.25 * width, left + 0.75 * width], axis=1).reshape(-1)


def locate_crossings(tp: np.ndarray, neuron: np.ndarray, anchors: np.ndarray,
                     values: np.ndarray, sigma_f: np.ndarray, W: np.ndarray, a: np.ndarray,
                     line_v: np.ndarray, tol_pred: np.ndarray) -> list[Crossing]:
    """Measure every predicted crossing from the anchors of its two gaps.

    Parameters
    ----------
    tp : ndarray (K,)
        Predicted crossings, sorted.
    neuron : ndarray (K,) int
        Neuron predicted at each crossing.
    anchors, values : ndarray (2(K+1),), (2(K+1), m)
        Anchor positions from :func:`anchor_points` and the answers there.
    sigma_f : ndarray (2(K+1),)
        Absolute error of each answer.
    W : ndarray (n, d), a : ndarray (n, m)
        Unit normals and output vectors of the known neurons.
    line_v : ndarray (d,)
    tol_pred : ndarray (K,)
        Position uncertainty of each prediction.

    Returns
    -------
    list of Crossing, for the crossings that pass the position and signature checks.
    """
    K = tp.size
    if K == 0:
        return []
    t1, t2 = anchors[0::2], anchors[1::2]
    f1, f2 = values[0::2], values[1::2]
    s1, s2 = sigma_f[0::2], sigma_f[1::2]
    span = t2 - t1
    # two predictions at the same point leave a gap of zero width between them: it has no
    # slope, and the crossings beside it are skipped (they were, through NaN comparisons)
    wide = span > 0.0
    span = np.where(wide, span, 1.0)
    slope = (f2 - f1) / span[:, None]  # (K+1, m)
    # predicted slope change at each crossing: the neuron's output vector × |w·v|
    pred = a[neuron] * np.abs(W[neuron] @ line_v)[:, None]
    pred_norm = np.linalg.norm(pred, axis=1)
    sig_slope = np.hypot(s1, s2) / span
    out = []
    for i in range(K):
        L, R = i, i + 1
        if not (wide[L] and wide[R]):
            continue
        ds = slope[R] - slope[L]  # right minus left
        dd = float(ds @ ds)
        if dd == 0.0:
            continue
        # left line through its far anchor point, right line through its near one
        c0 = (f2[L] - slope[L] * t2[L]) - (f1[R] - slope[R] * t1[R])
        t = float(ds @ c0) / dd
        if not (t2[L] < t < t1[R]):
            continue
        # error of each line's value at t: anchor errors carried over the distance
        eL = s2[L] + sig_slope[L] * abs(t - t2[L])
        eR = s1[R] + sig_slope[R] * abs(t - t1[R])
        sigma_t = float(np.hypot(eL, eR) / np.sqrt(dd))
        if abs(t - tp[i]) > ACCEPT_SIGMAS * np.hypot(sigma_t, tol_pred[i]):
            continue
        slack = 4.0 * float(np.sqrt(sig_slope[L] ** 2 + sig_slope[R] ** 2))
        if not (pred_norm[i] > 0.0 and jump_agrees(ds, pred[i], slack)):
            continue
        # the crossing could be a neighbour's: its prediction is as close and its output
        # vector fits as well
        if any(0 <= j < K and abs(t - tp[j]) <= ACCEPT_SIGMAS * np.hypot(sigma_t, tol_pred[j])
               and pred_norm[j] > 0.0 and jump_agrees(ds, pred[j], slack)
               for j in (i - 1, i + 1)):
            continue
        out.append(Crossing(neuron=int(neuron[i]), t=t, sigma_t=sigma_t, jump=ds))
    return out


@dataclass
class HyperplaneEvidence:
    """Prior (the Jacobian estimate) and kink constraints of every neuron.

    ``rows[n]`` holds the constraint rows ``(x, 1)/σ`` of neuron ``n`` (``σ``: the standard
    error of ``w·x + b`` at the measured kink, for unit ``w``).
    """

    W0: np.ndarray
    b0: np.ndarray
    err0: np.ndarray
    rows: list
    predicted: np.ndarray  # lines on which each neuron was predicted to cross
    bias_sd: np.ndarray  # prior standard deviation of each bias (normal error × |kink|)

    @classmethod
    def start(cls, W: np.ndarray, b: np.ndarray, err: np.ndarray,
              kinks: np.ndarray | None = None, kink_sigma: np.ndarray | None = None
              ) -> HyperplaneEvidence:
        """Priors from the Jacobian estimates; ``kinks`` (n, d): the point where each neuron
        was first measured, a constraint with standard error ``kink_sigma`` (n,) (the
        bias then comes from kinks alone: the prior only holds the normal)."""
        rows = [[] for _ in range(W.shape[0])]
        reach = np.abs(b)
        if kinks is not None:
            reach = np.linalg.norm(kinks, axis=1)
            for n in range(W.shape[0]):
                rows[n].append(np.append(kinks[n], 1.0) / max(float(kink_sigma[n]), 1e-300))
        return cls(W.copy(), b.copy(), err.copy(), rows, np.zeros(W.shape[0], dtype=int),
                   err * (1.0 + reach))

    def take(self, idx: np.ndarray) -> HyperplaneEvidence:
        """The evidence of neurons ``idx`` only (after removing some)."""
        return HyperplaneEvidence(self.W0[idx], self.b0[idx], self.err0[idx],
                                  [self.rows[i] for i in idx], self.predicted[idx],
                                  self.bias_sd[idx])

    def unconfirmed(self, lines: int) -> np.ndarray:
        """Neurons predicted on at least ``lines`` lines whose kink was never found there:
        not a hyperplane of the target (a merge of two kinks, a garbage jump)."""
        return np.flatnonzero((self.predicted >= lines) & (self.counts() == 0))

    def add(self, crossings: list[Crossing], u: np.ndarray, v: np.ndarray) -> None:
        for c in crossings:
            n = c.neuron
            x = u + c.t * v
            sigma = max(abs(float(self.W0[n] @ v)) * c.sigma_t, 1e-300)
            self.rows[n].append(np.append(x, 1.0) / sigma)

    def counts(self) -> np.ndarray:
        return np.array([len(r) for r in self.rows], dtype=int)

    def fit(self, n: int) -> tuple[np.ndarray, float, float]:
        """Posterior mean of neuron ``n``'s ``(w, b)`` (unit ``w``) and its direction error.

        Minimises ``Σ (x̃_j·p)² + |p − p0|²/σ0²`` (``σ0`` per component from the prior's
        direction error), in the dual form: ``n_obs × n_obs`` systems, cheap below ``d``.
        """
        d = self.W0.shape[1]
        p0 = np.append(self.W0[n], self.b0[n])
        if not self.rows[n]:
            return self.W0[n], float(self.b0[n]), float(self.err0[n])
        # prior variances: the normal's direction error spread over its d components; the
        # bias error is that error carried to the kink the neuron was measured at
        sw = max(float(self.err0[n]), 1e-15) / np.sqrt(d)
        P = np.full(d + 1, sw * sw)
        P[d] = max(float(self.bias_sd[n]), 1e-15) ** 2
        R = np.asarray(self.rows[n])  # (r, d+1)
        RP = R * P[None, :]
        G = RP @ R.T + np.eye(R.shape[0])
        z = np.linalg.solve(G, R @ p0)
        p = p0 - RP.T @ z
        # posterior covariance C = P − (RP)ᵀ G⁻¹ (RP); its trace across the direction of p
        # (the scale of (w, b) is free, so variance along p is no error)
        tr = float(np.sum(P)) - float(np.sum(RP * np.linalg.solve(G, RP)))
        q = p / np.linalg.norm(p)
        RPq = RP @ q
        tr -= float(np.sum(P * q * q)) - float(RPq @ np.linalg.solve(G, RPq))
        norm = float(np.linalg.norm(p[:d]))
        err = float(np.sqrt(max(tr, 0.0))) / max(norm, 1e-300)
        return p[:d] / norm, float(p[d] / norm), err

    def residuals(self, n: int, w: np.ndarray, b: float) -> np.ndarray:
        """Normalised residuals of neuron ``n``'s constraints at ``(w, b)``."""
        if not self.rows[n]:
            return np.zeros(0)
        R = np.asarray(self.rows[n])
        return R @ np.append(w, b)


__all__ = ["Crossing", "HyperplaneEvidence", "anchor_points", "locate_crossings"]
