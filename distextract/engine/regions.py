"""From a searched line to region plans: centres, slopes along the line, stencil steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .jacobians import RegionPlan
from .kinks import SegmentResult


@dataclass(frozen=True)
class LineScan:
    """Everything paid for along one line, merged over its segments.

    Attributes
    ----------
    t : ndarray of shape (n,)
        Sorted unique positions.
    values : ndarray of shape (n, m)
    scale : ndarray of shape (n,)
    kinks : ndarray of shape (K,)
        Sorted kink positions.
    resolved : ndarray of shape (K,), bool
    """

    t: np.ndarray
    values: np.ndarray
    scale: np.ndarray
    kinks: np.ndarray
    resolved: np.ndarray

    @property
    def m(self) -> int:
        return int(self.values.shape[1])


def merge_segments(results: list[SegmentResult], extra: list[tuple] = ()) -> LineScan:
    """Merge segment results (and extra ``(t, values, scale)`` batches) of one line."""
    ts = [r.t for r in results] + [e[0] for e in extra]
    vs = [r.values for r in results] + [e[1] for e in extra]
    ss = [r.scale for r in results] + [e[2] for e in extra]
    t = np.concatenate(ts)
    v = np.concatenate(vs, axis=0)
    s = np.concatenate(ss)
    t, idx = np.unique(t, return_index=True)
    kinks = np.concatenate([r.kinks for r in results]) if results else np.zeros(0)
    res = np.concatenate([r.resolved for r in results]) if results else np.zeros(0, bool)
    order = np.argsort(kinks, kind="stable")
    kinks, res = kinks[order], res[order]
    if kinks.size > 1:  # a kink on a shared segment end can be found twice
        keep = np.concatenate([[True], np.diff(kinks) > 1e-9 * (1.0 + np.abs(kinks[1:]))])
        kinks, res = kinks[keep], res[keep]
    return LineScan(t=t, values=v[idx], scale=s[idx], kinks=kinks, resolved=res)


def region_edges(scan: LineScan, reach: float) -> np.ndarray:
    """Region boundaries ``[-reach, kinks..., reach]``."""
    return np.concatenate([[-reach], scan.kinks, [reach]])


def add_points(scan: LineScan, t: np.ndarray, values: np.ndarray, scale: np.ndarray
               ) -> LineScan:
    """``scan`` with extra paid points."""
    tt = np.concatenate([scan.t, t])
    vv = np.concatenate([scan.values, values], axis=0)
    ss = np.concatenate([scan.scale, scale])
    tt, idx = np.unique(tt, return_index=True)
    return LineScan(t=tt, values=vv[idx], scale=ss[idx], kinks=scan.kinks,
                    resolved=scan.resolved)


def _wanted(R: int, regions) -> range | list[int]:
    return range(R) if regions is None else sorted(int(j) for j in regions if 0 <= j < R)


def missing_points(scan: LineScan, reach: float, interior_margin: float = 0.01,
                   regions: set | None = None) -> np.ndarray:
    """Line positions to query so that every region has a centre point and a baseline.

    A region gets its centre queried unless a paid point lies in its middle half; it gets a
    second point at a quarter-width from the centre unless paid interior points already span a
    quarter of the region.
    """
    edges = region_edges(scan, reach)
    want = []
    for j in _wanted(len(edges) - 1, regions):
        lo, hi = edges[j], edges[j + 1]
        w = hi - lo
        c = 0.5 * (lo + hi)
        inner = _interior(scan.t, lo, hi, interior_margin)
        ti = scan.t[inner]
        have_centre = ti.size and np.min(np.abs(ti - c)) < 0.25 * w
        if not have_centre:
            want.append(c)
            ti = np.append(ti, c)
        if ti.max() - ti.min() < 0.25 * w:
            far = c + 0.3 * w if abs(ti.mean() - (c + 0.3 * w)) > abs(ti.mean() - (c - 0.3 * w)) \
                else c - 0.3 * w
            want.append(far)
    return np.asarray(want, dtype=np.float64)


def _interior(t: np.ndarray, lo: float, hi: float, margin: float) -> np.ndarray:
    w = hi - lo
    lo_i = np.searchsorted(t, lo + margin * w, side="right")
    hi_i = np.searchsorted(t, hi - margin * w, side="left")
    mask = np.zeros(t.shape, dtype=bool)
    mask[lo_i:hi_i] = True
    return mask


def fit_region_lines(scan: LineScan, reach: float, interior_margin: float = 0.01,
                     regions=None):
    """Least-squares line through each region's interior points (only those of
    ``regions``, if given: the others come back with ``ok`` False).

    Returns
    -------
    centre : ndarray (R,)     position of the point used as stencil centre
    f0 : ndarray (R, m)       value there
    scale0 : ndarray (R,)
    slope : ndarray (R, m)
    ok : ndarray (R,) bool    False where a region has fewer than two interior points
    """
    edges = region_edges(scan, reach)
    R = len(edges) - 1
    m = scan.m
    centre = np.zeros(R)
    f0 = np.zeros((R, m))
    sc0 = np.zeros(R)
    slope = np.zeros((R, m))
    ok = np.zeros(R, dtype=bool)
    for j in _wanted(R, regions):
        lo, hi = edges[j], edges[j + 1]
        inner = np.flatnonzero(_interior(scan.t, lo, hi, interior_margin))
        if inner.size == 0:
            continue
        c = 0.5 * (lo + hi)
        k = inner[np.argmin(np.abs(scan.t[inner] - c))]
        centre[j], f0[j], sc0[j] = scan.t[k], scan.values[k], scan.scale[k]
        if inner.size >= 2:
            tt = scan.t[inner] - scan.t[k]
            vv = scan.values[inner] - scan.values[k]
            slope[j] = (tt @ vv) / (tt @ tt)
            ok[j] = True
    return centre, f0, sc0, slope, ok


def stencil_steps(edges: np.ndarray, centre: np.ndarray, dim: int, n_checks: int,
                  crossing_rate: float, extra_kinks: np.ndarray | None = None,
                  window: int = 3, regions=None) -> np.ndarray:
    """Stencil step per region (of ``regions`` if given; 0 for the others) from the local
    density of hyperplanes along the line.

    Each of the ``d - 1 + n_checks`` stencil rays crosses a hyperplane with probability
    about ``rho·h`` (``rho``: hyperplanes met per unit length near the centre, the same in
    every direction for a random basis), so ``h = crossing_rate / ((d - 1 + n_checks)·rho)``.
    ``n_checks`` is the configured count even with two or three inputs, where
    :func:`.jacobians.measure_regions` uses two: the step sized for the two used (a third
    longer at d=2) crosses more hyperplanes, so more stencils are measured again, for no
    better error.
    """
    kinks = edges[1:-1]
    if extra_kinks is not None and extra_kinks.size:
        kinks = np.sort(np.concatenate([kinks, extra_kinks]))
    R = len(edges) - 1
    h = np.zeros(R)
    rays = dim - 1 + n_checks
    for j in _wanted(R, regions):
        c = centre[j]
        if kinks.size == 0:
            rho = 1.0 / max(edges[-1] - edges[0], 1e-300)
        else:
            pos = np.searchsorted(kinks, c)
            lo = max(pos - window, 0)
            hi = min(pos + window, kinks.size)
            n = hi - lo
            span = kinks[hi - 1] - kinks[lo] if n >= 2 else 0.0
            span = max(span, abs(c - kinks[lo]), abs(c - kinks[hi - 1]))
            rho = n / max(span, 1e-300)
        step = crossing_rate / (rays * rho)
        width = edges[j + 1] - edges[j]
        h[j] = min(step, 0.5 * width)
    return h


def rounding_error(plans: list[RegionPlan], noise: float, dim: int) -> float:
    """The model error the plans' stencil rounding would leave, in output units per unit of
    input scale: each region's Jacobian entries carry ``2·noise·scale/h`` (what
    :func:`.jacobians.measure_regions` reports as its precision), a neuron's direction
    about ``sqrt(2d)`` of it over its output weight, and its term of the model that times
    its output weight; summed in quadrature over the regions. An upper estimate (the
    measured errors run about a tenth of it)."""
    if not plans:
        return 0.0
    prec = np.array([2.0 * noise * p.scale0 / p.h for p in plans])
    return float(np.sqrt(dim * np.sum(prec ** 2)))


def make_plans(scan: LineScan, reach: float, dim: int, n_checks: int, crossing_rate: float,
               extra_kinks: np.ndarray | None = None, max_step: float = np.inf,
               regions=None) -> list[RegionPlan]:
    """Region plans for every region (of ``regions``, if given: a line crossing 8,192
    hyperplanes has 8,193) that has a usable centre and slope."""
    edges = region_edges(scan, reach)
    centre, f0, sc0, slope, ok = fit_region_lines(scan, reach, regions=regions)
    h = np.minimum(stencil_steps(edges, centre, dim, n_checks, crossing_rate, extra_kinks,
                                 regions=regions), max_step)
    return [RegionPlan(region=j, t0=float(centre[j]), f0=f0[j], scale0=float(sc0[j]),
                       slope=slope[j], h=float(h[j])) for j in range(len(ok)) if ok[j]]


def kink_jumps(scan: LineScan, reach: float) -> np.ndarray:
    """Slope change (right minus left) at every kink of ``scan``, from the two paid points
    furthest apart in each neighbouring region (NaN where a region has fewer than two).
    Shape (K, m)."""
    edges = region_edges(scan, reach)
    R = len(edges) - 1
    slopes = np.full((R, scan.m), np.nan)
    for j in range(R):
        inner = np.flatnonzero(_interior(scan.t, edges[j], edges[j + 1], 1e-3))
        if inner.size >= 2:
            i0, i1 = inner[0], inner[-1]
            slopes[j] = (scan.values[i1] - scan.values[i0]) / (scan.t[i1] - scan.t[i0])
    return slopes[1:] - slopes[:-1]
