"""Rows near rarely crossed hyperplanes, for the refinement of imprecise answers.

The Gauss-Newton refinement (:mod:`.refine`) learns a neuron's ``(w, b)`` from the answers at
points on the neuron's less likely side of its hyperplane and near it. Gaussian rows put a
share ``Φ(−|b|/||w||)`` of themselves there: for a hyperplane 2.5 input scales from the origin
that is 0.6%, and the ~2.5 answers per unknown the refinement buys leave such a neuron with
a handful of rows or none, so it keeps the ~1e-3 error of its Jacobian estimate (or a wrong
output weight). With biases ~ N(0, 1) or wider, a fifth to a third of the neurons are that
far out. Those neurons get rows of their own: Gaussian points whose component along the
neuron's normal is redrawn to lie within a fraction of an input scale of its hyperplane
(half on each side), as many as the Gaussian rows fail to supply.

Pure numpy; the coordinator pays for the rows.
"""

from __future__ import annotations

import math

import numpy as np

#: Rows per parameter of a neuron (its d + 1 hyperplane parameters and output weight)
#: wanted on its rare side; Gaussian rows that land there count towards them.
COVER_OBS = 1.5
#: Standard deviation of a cover row's signed distance to its hyperplane, in input scales.
COVER_WIDTH = 0.5
#: Newton steps that move a quiet row onto the model's zero set (:func:`quiet_points`): the
#: model is piecewise affine, so each step lands on the zero set of the region it starts in,
#: and a few more settle the rows whose step crossed a hyperplane.
QUIET_NEWTON = 8
#: A quiet row that moved farther than this many input scales (times sqrt(d), the Gaussian
#: radius) from its start (a region where the model is nearly flat) is left where it started.
QUIET_MAX_MOVE = 1.0


def rare_side_share(W: np.ndarray, b: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Gaussian probability of the less likely side of each hyperplane.

    Parameters
    ----------
    W : ndarray of shape (k, d)
    b : ndarray of shape (k,)
    scale : float
        Input scale (points are N(0, scale² I)).

    Returns
    -------
    ndarray of shape (k,)
        ``Φ(−|b_i| / (||w_i||·scale))``.
    """
    norms = np.maximum(np.linalg.norm(W, axis=1), 1e-300)
    beta = np.abs(b) / (norms * scale)
    return 0.5 * np.array([math.erfc(x / math.sqrt(2.0)) for x in beta])


def rare_side_rows(W: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` (n, d) on the less populated side of each hyperplane (shape (k,), int)."""
    if X.shape[0] == 0 or W.shape[0] == 0:
        return np.zeros(W.shape[0], dtype=int)
    active = np.count_nonzero(X @ W.T + b > 0, axis=0)
    return np.minimum(active, X.shape[0] - active)


def cover_rows_wanted(held: np.ndarray, d: int) -> np.ndarray:
    """Cover rows each neuron needs (shape (k,), int) when ``held`` rows already lie on its
    rare side (:func:`rare_side_rows`): enough for ``COVER_OBS·(d + 2)`` rows there, half
    of the cover rows landing there.

    Rows, not answers: a row answers every output, but each answer of it sees the neuron's
    hyperplane at the same point, and it is the spread of the points on the rare side that
    places the hyperplane (its ``d + 1`` parameters need that many points in general
    position, whatever the number of outputs). Counting answers (``/ m``) left a far neuron
    of a ten-output network with a tenth of the rows it needs: the error floor of those
    networks (6e-6 to 6e-4 at d32-k64-m10)."""
    want = COVER_OBS * (d + 2)
    return np.ceil(np.maximum(0.0, 2.0 * (want - np.asarray(held)))).astype(int)


def cover_points(W: np.ndarray, b: np.ndarray, counts: np.ndarray, rng: np.random.Generator,
                 scale: float = 1.0) -> np.ndarray:
    """``counts[i]`` points near hyperplane ``i`` for every neuron.

    Each is ``g ~ N(0, scale² I)`` with its component along the unit normal ``ŵ_i`` replaced
    so that ``ŵ_i·x + b_i/||w_i||`` is ``N(0, (COVER_WIDTH·scale)²)``: the Gaussian measure's
    cross-section at the hyperplane, half on each side.

    Returns
    -------
    ndarray of shape (sum(counts), d)
    """
    k, d = W.shape
    counts = np.asarray(counts, dtype=int)
    out = np.empty((int(counts.sum()), d))
    at = 0
    for i in np.flatnonzero(counts > 0):
        n = int(counts[i])
        norm = float(np.linalg.norm(W[i]))
        if norm == 0.0:
            out[at:at + n] = rng.standard_normal((n, d)) * scale
            at += n
            continue
        u = W[i] / norm
        g = rng.standard_normal((n, d)) * scale
        along = -b[i] / norm + COVER_WIDTH * scale * rng.standard_normal(n)
        out[at:at + n] = g + (along - g @ u)[:, None] * u[None, :]
        at += n
    return out


def quiet_points(model, n: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """``n`` rows where ``model`` answers (nearly) zero: Gaussian points ``N(0, scale² I)``
    moved onto its zero set by QUIET_NEWTON minimum-norm Newton steps ``x ← x − J⁺ F(x)``
    (``J``: the model's Jacobian at ``x``, (m, d)).

    Relative rounding (float32) errs by a share of each answer: where the answers are
    near zero it errs by a share of the output scale's floor only, and a weak neuron
    (a slope change far below the rounding of the large answers elsewhere) is measured there
    to far better than on Gaussian rows (hard:norm_range d16-k32 seed 30, float32, refined
    from the true network: over 1,146 Gaussian rows a neuron adding 21 roundings ends
    7.7e-3 rad off; with 500 quiet rows more, every neuron within 1e-3 rad). A point whose
    steps move it more than QUIET_MAX_MOVE Gaussian radii stays where it started.

    Parameters
    ----------
    model : ReluNetwork
        The current model (d inputs, m outputs).
    n : int
    rng : numpy.random.Generator
    scale : float
        Input scale.

    Returns
    -------
    ndarray of shape (n, d)
    """
    d = model.W.shape[1]
    start = rng.standard_normal((n, d)) * scale
    X = start.copy()
    for _ in range(QUIET_NEWTON):
        F = model.predict(X).reshape(n, -1)
        act = (X @ model.W.T + model.b) > 0.0
        # J_x = A·diag(active)·W + L for every row: (n, m, d)
        J = np.einsum("mk,nk,kd->nmd", model.A, act.astype(np.float64), model.W) + model.L
        X = X - np.einsum("ndm,nm->nd", np.linalg.pinv(J), F)
    far = np.linalg.norm(X - start, axis=1) > QUIET_MAX_MOVE * scale * math.sqrt(d)
    X[far] = start[far]
    return X


__all__ = ["COVER_OBS", "COVER_WIDTH", "QUIET_MAX_MOVE", "QUIET_NEWTON", "cover_points",
           "cover_rows_wanted", "quiet_points", "rare_side_rows", "rare_side_share"]
