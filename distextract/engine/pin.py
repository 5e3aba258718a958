"""Pin a hyperplane's offset from one kink located along its own normal.

A neuron measured from a region-Jacobian jump has its direction ``ŵ`` known to ``err`` and
its normalised bias ``β`` taken from a kink point ``x`` on some line: ``β = −ŵ·x``. The
direction error ``δ`` moves that bias by ``δ·x`` — for a weak neuron (a small output vector,
so a small jump next to the finite-difference noise) this is the largest error the neuron
has (d=128, k=512: ``β`` off by 1.3e-6 where the direction is within 1.4e-6 rad).

The hyperplane's *foot*, its point nearest the origin ``p = −β ŵ``, has ``ŵ ⟂ δ``: a kink
located on the line ``p + t·ŵ`` gives ``β − t``, whose error is second order in ``δ``
(``β·δ²/2``) plus the kink's own position error (the answers' rounding over the neuron's
slope change, ~1e-11 for that weak neuron). Three points on each side of the foot, inside
the gap that the other known hyperplanes leave on that line, fit the two linear pieces
(the middle point of each side checks that no unknown kink lies between them); they meet
at the kink.

Pure numpy; the coordinator queries the points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kinks import jump_agrees

#: Where the three points of each side sit, as fractions of the usable half-gap.
PIN_FRACTIONS = np.array([0.1, 0.5, 0.9])
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
    t: np.ndarray       # (6,): three points left of the foot, then three right
    inner: float        # the kink must lie within ±inner of the foot

    def points(self) -> np.ndarray:
        return self.foot[None, :] + self.t[:, None] * self.normal[None, :]


def pin_plans(W: np.ndarray, b: np.ndarray, err: np.ndarray, idx: np.ndarray,
              scale: float) -> list[PinPlan]:
    """Plans for neurons ``idx`` of the hyperplanes ``(W, b)`` (rows need not be unit) with
    direction errors ``err``; neurons whose foot has no usable gap (another hyperplane
    crossing within ``PIN_MIN_RATIO`` own margins, as with all-zero biases) get none.
    ``scale`` bounds how far from the foot a point goes (the input scale)."""
    norm = np.linalg.norm(W, axis=1)
    norm[norm == 0] = 1.0
    U, beta = W / norm[:, None], b / norm
    plans = []
    for lo_i in range(0, idx.size, 256):
        sel = idx[lo_i:lo_i + 256]
        N = U[sel]                      # (P, d) line directions
        feet = -beta[sel, None] * N     # (P, d)
        wv = U @ N.T                    # (k, P)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -(U @ feet.T + beta[:, None]) / wv
            spread = (err[:, None] * (np.linalg.norm(feet, axis=1)[None, :] + np.abs(t) + 1.0)
                      / np.abs(wv))
        t[sel, np.arange(sel.size)] = np.nan
        near = PIN_MARGIN * spread
        left = np.where(t <= 0, np.abs(t) - near, np.inf)
        right = np.where(t >= 0, t - near, np.inf)
        left = np.nan_to_num(left, nan=np.inf)
        right = np.nan_to_num(right, nan=np.inf)
        half_l = np.minimum(np.min(left, axis=0), scale)
        half_r = np.minimum(np.min(right, axis=0), scale)
        own = OWN_MARGIN * err[sel] * np.maximum(1.0, np.abs(beta[sel]))
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
            check: float) -> float | None:
    """The kink's position ``t`` on ``plan``'s line from the answers ``Y`` (6, m) at its
    points (errors ``sigma``, (6,)), or None when a side is not linear within ``check``
    errors (another kink there), the pieces meet outside ``±plan.inner``, or their slope
    change is not the neuron's output vector ``a`` (m,)."""
    pieces = []
    for side in (slice(0, 3), slice(3, 6)):
        ts, ys = plan.t[side], Y[side]
        M = np.stack([np.ones(3), ts], axis=1)
        coef, *_ = np.linalg.lstsq(M, ys, rcond=None)  # (2, m): value at 0, slope
        if np.max(np.abs(M @ coef - ys)) > check * float(np.max(sigma[side])):
            return None
        pieces.append(coef)
    (c_l, s_l), (c_r, s_r) = pieces
    ds, dc = s_r - s_l, c_r - c_l
    dd = float(ds @ ds)
    if dd == 0.0:
        return None
    t = -float(ds @ dc) / dd
    slack = check * float(np.max(sigma)) / (plan.t[3] - plan.t[2]) * 4.0
    if abs(t) > plan.inner or not bool(jump_agrees(ds, a, slack)):
        return None
    return t


__all__ = ["PinPlan", "pin_fit", "pin_plans"]
