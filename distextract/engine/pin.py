"""Pin a hyperplane's offset from one kink located along its own normal.

A neuron measured from a region-Jacobian jump has its direction ``ŵ`` known to ``err`` and
its normalised bias ``β`` taken from a kink point ``x`` on some line: ``β = −ŵ·x``. The
direction error ``δ`` moves that bias by ``δ·x`` — for a weak neuron (a small output vector,
so a small jump next to the finite-difference noise) this is the largest error the neuron
has (d=128, k=512: ``β`` off by 1.3e-6 where the direction is within 1.4e-6 rad).

The hyperplane's *foot*, its point nearest the origin ``p = −β ŵ``, has ``ŵ ⟂ δ``: a kink
located on the line ``p + t·ŵ`` gives ``β − t``, whose error is second order in ``δ``
(``β·δ²/2``) plus the kink's own position error (the answers' rounding over the neuron's
slope change, ~1e-11 for that weak neuron). The slope change across it is the output
vector, measured over a half-gap rather than a stencil step (a stencil step leaves a weak
neuron's output vector ~1e-6 off, relative: enough to dominate the model's error). Two
points on each side of the foot, inside the gap that the other known hyperplanes leave on
that line, give the two linear pieces; they meet at the kink. An unknown kink between them
shows as a slope change that is not the neuron's (checked to 1e-3), and a kink found
further from the foot than the neuron's own error allows is not taken, so a pin never moves a bias by more than that error.

Pure numpy; the coordinator queries the points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kinks import jump_agrees

#: Where the two points of each side sit, as fractions of the usable half-gap.
PIN_FRACTIONS = np.array([0.1, 0.9])
#: Queries per pinned neuron.
PIN_POINTS = 2 * PIN_FRACTIONS.size
#: The measured slope change must be the neuron's output vector within this (relative).
PIN_JUMP_RTOL = 1e-3
#: A neighbour's crossing is kept this many of its position errors away (measured kinks sit
#: within 0.2 of one at d=128, k=8192).
PIN_MARGIN = 3.0
#: The neuron's own kink is looked for within this many of its direction errors (relative
#: to ``max(1, |β|)``) of the foot: the bias error a direction error ``err`` causes stays
#: below 1.6·err (measured, d=128, k=512).
OWN_MARGIN = 4.0
#: Usable half-gaps shorter than this many times the neuron's own margin are not pinned.
PIN_MIN_RATIO = 2.0


@dataclass(frozen=True)
class PinPlan:
    """Points on the line through neuron ``neuron``'s foot along its unit normal."""

    neuron: int
    foot: np.ndarray   # (d,)
    normal: np.ndarray  # (d,) unit
    t: np.ndarray       # (PIN_POINTS,): the points left of the foot, then those right
    inner: float        # the kink must lie within ±inner of the foot

    def points(self) -> np.ndarray:
        return self.foot[None, :] + self.t[:, None] * self.normal[None, :]


def pin_plans(W: np.ndarray, b: np.ndarray, err: np.ndarray, idx: np.ndarray,
              scale: float, shift: np.ndarray | None = None,
              own_margin: float = OWN_MARGIN) -> list[PinPlan]:
    """Plans for neurons ``idx`` of the hyperplanes ``(W, b)`` (rows need not be unit) with
    direction errors ``err``; neurons whose foot has no usable gap (another hyperplane
    crossing within ``PIN_MIN_RATIO`` own margins, as with all-zero biases) get none.
    ``scale`` bounds how far from the foot a point goes (the input scale). ``shift``
    (len(idx), d), orthogonal to each normal, moves the line off the foot to another point
    of the hyperplane (:func:`plane_fit`; ``idx`` may then repeat a neuron). The neuron's
    own kink is looked for within ``own_margin`` direction errors of each line's start."""
    norm = np.linalg.norm(W, axis=1)
    norm[norm == 0] = 1.0
    U, beta = W / norm[:, None], b / norm
    plans = []
    for lo_i in range(0, idx.size, 256):
        sel = idx[lo_i:lo_i + 256]
        N = U[sel]                      # (P, d) line directions
        feet = -beta[sel, None] * N     # (P, d)
        off = np.zeros(sel.size)
        if shift is not None:
            feet = feet + shift[lo_i:lo_i + 256]
            off = np.linalg.norm(shift[lo_i:lo_i + 256], axis=1)
        wv = U @ N.T                    # (k, P)
        # a neighbour's signed distance along the line: g(t) = g0 + t·(w·v), known to
        # PIN_MARGIN·err·(|x| + 1); it may meet the segment [0, H] on a side when
        # |g0| − unc(0) ≤ H·(|w·v| if it approaches on that side, else 0) + H·PIN_MARGIN·err
        # (a nearly parallel neighbour with a poor direction blocks by its distance and
        # uncertainty here, not by its far-away crossing's)
        g0 = U @ feet.T + beta[:, None]
        e = PIN_MARGIN * err[:, None]
        avail = np.abs(g0) - e * (np.linalg.norm(feet, axis=1)[None, :] + 1.0)
        approach_right = np.sign(g0) * wv < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            right = avail / (np.where(approach_right, np.abs(wv), 0.0) + e)
            left = avail / (np.where(approach_right, 0.0, np.abs(wv)) + e)
        right = np.where(avail > 0, right, 0.0)
        left = np.where(avail > 0, left, 0.0)
        right[sel, np.arange(sel.size)] = np.inf
        left[sel, np.arange(sel.size)] = np.inf
        right = np.nan_to_num(right, nan=np.inf)
        left = np.nan_to_num(left, nan=np.inf)
        half_l = np.minimum(np.min(left, axis=0), scale)
        half_r = np.minimum(np.min(right, axis=0), scale)
        own = own_margin * err[sel] * (np.maximum(1.0, np.abs(beta[sel])) + off)
        for p, j in enumerate(sel):
            o = float(own[p])
            hl, hr = float(half_l[p]), float(half_r[p])
            # (a neighbour whose uncertain crossing may reach the foot leaves a gap <= 0)
            if min(hl, hr) <= PIN_MIN_RATIO * o:
                continue
            ts = np.concatenate([-(o + PIN_FRACTIONS[::-1] * (hl - o)),
                                 o + PIN_FRACTIONS * (hr - o)])
            plans.append(PinPlan(int(j), feet[p], N[p], ts, o))
    return plans


def pin_fit(plan: PinPlan, Y: np.ndarray, sigma: np.ndarray, a: np.ndarray,
            check: float) -> tuple[float, np.ndarray] | None:
    """The kink's position ``t`` on ``plan``'s line and the slope change across it (m,)
    from the answers ``Y`` (PIN_POINTS, m) at its points (errors ``sigma``,
    (PIN_POINTS,)), or None when the two pieces meet outside ``±plan.inner`` or their slope
    change is not the neuron's output vector ``a`` (m,) within PIN_JUMP_RTOL plus ``check``
    slope errors. Along the unit normal the slope change *is* the output vector (of the unit
    normal's neuron), measured over a half-gap instead of a stencil step."""
    h = PIN_FRACTIONS.size
    pieces = []
    for side in (slice(0, h), slice(h, 2 * h)):
        ts, ys = plan.t[side], Y[side]
        slope = (ys[-1] - ys[0]) / (ts[-1] - ts[0])
        pieces.append((ys[0] - slope * ts[0], slope))
    (c_l, s_l), (c_r, s_r) = pieces
    ds, dc = s_r - s_l, c_r - c_l
    dd = float(ds @ ds)
    if dd == 0.0:
        return None
    t = -float(ds @ dc) / dd
    spans = (plan.t[h - 1] - plan.t[0], plan.t[-1] - plan.t[h])
    slack = check * float(np.max(sigma)) * 2.0 * (1.0 / spans[0] + 1.0 / spans[1])
    if abs(t) > plan.inner or not bool(jump_agrees(ds, a, slack, PIN_JUMP_RTOL)):
        return None
    return t, ds


def plane_fit(points: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The hyperplane through located kink points (n, d), n ≥ d: unit normal (oriented
    like ``normal``), normalised bias, and the largest distance of a point from it."""
    centre = points.mean(axis=0)
    _, _, Vt = np.linalg.svd(points - centre, full_matrices=False)
    w = Vt[-1] * np.sign(Vt[-1] @ normal)
    beta = -float(w @ centre)
    return w, beta, float(np.max(np.abs(points @ w + beta)))


def foot_crossings(W: np.ndarray, b: np.ndarray, plan: PinPlan, reach: float) -> np.ndarray:
    """Sorted positions where every other hyperplane ``(W, b)`` crosses ``plan``'s line
    inside ``(-reach, reach)``."""
    wv = W @ plan.normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -(W @ plan.foot + b) / wv
    t[plan.neuron] = np.nan
    t = t[np.isfinite(t) & (np.abs(t) < reach)]
    return np.sort(t)


__all__ = ["PIN_POINTS", "PinPlan", "foot_crossings", "pin_fit", "pin_plans", "plane_fit"]
