"""Kink search along a probe line.

Along ``x(t)``, ``f(t) = F(x(t))`` is piecewise linear. An interval ``[a, b]`` is described by
the values and one-sided slopes at its ends. The two end lines meet at ``t*``; if ``f(t*)``
lies on both lines, ``t*`` is the single kink of the interval. If the slopes agree and the
midpoint is on the line, the interval has no kink. Otherwise the interval is split (at ``t*``
when it falls inside, at the midpoint if not) and both halves are searched.

All open intervals advance together, so one round costs two oracle requests (the checks,
then the slopes at new split points) whatever the number of intervals: the search is
latency-friendly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# evaluate(ts) -> (values (n, m), scale (n,)): values searched (F or a residual), and the
# magnitude that sets their rounding error.
Evaluator = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]

MAX_DEPTH = 400
BEND_MAX = 8  # kinks hidden_bends places at most between two kinks the search found
PRED_SIGMAS = 8.0  # a predicted kink is accepted this many prediction errors away
SIGNATURE_RTOL = 0.25  # ... when its slope change agrees with the prediction this well


def jump_agrees(measured: np.ndarray, predicted: np.ndarray, slack: float = 0.0,
                rtol: float = SIGNATURE_RTOL):
    """Whether a measured slope change (right minus left, (m,) or (n, m)) matches the one a
    neuron predicts (its output vector × |w·v|) within ``rtol`` of the prediction plus
    ``slack`` (the measurement's own slope error). A second kink merged into the
    measurement changes it; so does a neuron claiming a neighbour's kink."""
    gap = np.linalg.norm(measured - predicted, axis=-1)
    return gap <= rtol * np.linalg.norm(predicted, axis=-1) + slack


@dataclass(frozen=True)
class SearchParams:
    """Numbers the search needs, derived from the config and the measured precision.

    Attributes
    ----------
    noise : float
        Relative output precision: a value ``y`` is known to about ``noise × scale``.
    check_factor : float
        Multiple of the noise accepted as "on the line".
    slope_step : float
        Slope step as a fraction of the width of the interval being split.
    min_width : float
        Relative width below which an interval is not split further.
    check_step : float
        A candidate kink ``t*`` is confirmed by ``f(t* ∓ η)`` lying on the left / right line,
        ``η = check_step × width``.
    anchor_step : float or None
        The guided search's anchor pair in a gap sits at the gap's middle and
        ``anchor_step × gap`` beyond it (None: ``slope_step``). Imprecise answers need a
        long anchor pair for a precise slope.
    jump_rtol : float
        A predicted kink's measured slope change must agree with the prediction this well
        (relative) for the guided search to accept its gap.
    split_points : int
        Where the ends' lines do not meet inside an interval (two close kinks hide each
        other's bend), it is cut at this many evenly spaced points (each with a slope
        point) instead of its midpoint: ``log(width / gap) / log(split_points + 1)``
        rounds to separate the pair instead of ``log2(width / gap)``.
    """

    noise: float
    check_factor: float
    slope_step: float
    min_width: float
    check_step: float = 1e-3
    anchor_step: float | None = None
    jump_rtol: float = SIGNATURE_RTOL
    split_points: int = 1
    chord_check: bool = False


@dataclass(frozen=True)
class SegmentResult:
    """Outcome of searching one segment.

    Attributes
    ----------
    t : ndarray of shape (n,)
        Every position queried, sorted.
    values : ndarray of shape (n, m)
        The searched values at ``t``.
    scale : ndarray of shape (n,)
        Magnitudes that set the rounding error of ``values``.
    kinks : ndarray of shape (K,)
        Kink positions, sorted.
    resolved : ndarray of shape (K,), bool
        False where the search stopped at ``min_width`` without certifying a single kink.
    """

    t: np.ndarray
    values: np.ndarray
    scale: np.ndarray
    kinks: np.ndarray
    resolved: np.ndarray


class _End:
    __slots__ = ("f", "s", "scale", "sigma", "step", "t")

    def __init__(self, t, f, s, sigma, step, scale):
        self.t, self.f, self.s, self.sigma, self.step, self.scale = t, f, s, sigma, step, scale


class _Search:
    def __init__(self, evaluate: Evaluator, params: SearchParams,
                 known: dict | None = None) -> None:
        self.evaluate = evaluate
        self.p = params
        self.known = known or {}
        self.ts: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.scales: list[np.ndarray] = []

    def query(self, ts: list[float]) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(ts, dtype=np.float64)
        if arr.size == 0:
            return np.zeros((0, 0)), np.zeros(0)
        hit = np.array([float(t) in self.known for t in arr], dtype=bool)
        if hit.any():
            fresh = arr[~hit]
            parts = [self.known[float(t)] for t in arr[hit]]
            m = parts[0][0].shape[0]
            f = np.empty((arr.size, m))
            s = np.empty(arr.size)
            f[hit] = np.stack([p[0] for p in parts])
            s[hit] = [p[1] for p in parts]
            if fresh.size:
                f[~hit], s[~hit] = self.evaluate(fresh)
        else:
            f, s = self.evaluate(arr)
        self.ts.append(arr)
        self.vals.append(f)
        self.scales.append(s)
        return f, s

    def tol(self, scale: float) -> float:
        return self.p.check_factor * self.p.noise * scale


def _make_end(t: float, f0, sc0, t1: float, f1, sc1, noise: float) -> _End:
    step = t1 - t
    s = (f1 - f0) / step
    sigma = 2.0 * noise * max(sc0, sc1) / abs(step)
    return _End(t, f0, s, sigma, step, max(sc0, sc1))


def _off_chord(ea: _End, eb: _End, t: float, ft: np.ndarray, tol: float) -> bool:
    """Whether ``f(t)`` lies off the chord between the two ends by more than ``tol``."""
    chord = ea.f + (eb.f - ea.f) * ((t - ea.t) / (eb.t - ea.t))
    return bool(np.max(np.abs(ft - chord)) > tol)


def _line_fit(t: np.ndarray, v: np.ndarray, tol: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least-squares line through ``(t, v)`` (errors ``tol``): its (2, m)
    coefficients and the largest residual in units of ``tol``."""
    D = np.stack([np.ones_like(t), t], axis=1) / tol[:, None]
    coef = np.linalg.lstsq(D, v / tol[:, None], rcond=None)[0]
    return coef, float(np.max(np.abs(D @ coef - v / tol[:, None])))


def hidden_bends(t: np.ndarray, v: np.ndarray, scale: np.ndarray, kinks: np.ndarray,
                 rel_tol: float) -> list[float]:
    """Kinks the search's slope tests passed over, from the samples it paid: between
    consecutive kinks found, the samples must lie on one line within ``rel_tol × scale``;
    where they do not, the best two-line fit (least squares over every split of the sorted
    samples, each line through at least two) places a kink where its lines meet, and each
    side is examined again (at most BEND_MAX kinks per piece).

    A weak neuron's kink next to strong ones hides from the slope tests: the one-sided
    slopes over short steps are known to ``noise × scale / step``, far above its slope
    change (hard:norm_range, float32: slope changes of 0.04 against slope errors of 0.1 on
    a line whose strong kinks change the slope by 50), while the values, known to
    ``noise × scale``, show its bend (:func:`_off_chord` makes the search split there)."""
    out: list[float] = []
    edges = np.concatenate([[-np.inf], np.sort(kinks), [np.inf]])
    for lo, hi in zip(edges[:-1], edges[1:]):
        stack = [np.flatnonzero((t > lo) & (t < hi))]
        found = 0
        while stack and found < BEND_MAX:
            idx = stack.pop()
            if idx.size < 4:
                continue
            tt, vv, tol = t[idx], v[idx], rel_tol * scale[idx]
            if _line_fit(tt, vv, tol)[1] <= 1.0:
                continue
            best = None
            for s in range(2, idx.size - 1):
                cl, _ = _line_fit(tt[:s], vv[:s], tol[:s])
                cr, _ = _line_fit(tt[s:], vv[s:], tol[s:])
                D = np.stack([np.ones_like(tt), tt], axis=1)
                r = np.concatenate([D[:s] @ cl - vv[:s], D[s:] @ cr - vv[s:]]) / tol[:, None]
                cost = float(np.sum(r * r))
                if best is None or cost < best[0]:
                    best = (cost, s, cl, cr)
            _, s, cl, cr = best
            ds = cl[1] - cr[1]
            dd = float(ds @ ds)
            tk = -float(ds @ (cl[0] - cr[0])) / dd if dd > 0.0 else np.nan
            if tt[s - 1] < tk < tt[s]:
                out.append(tk)
                found += 1
            # (lines meeting outside their gap: more than one bend; each side again)
            stack += [idx[:s], idx[s:]]
    return out


def segment_end_points(segments: list[tuple[float, float]], slope_step: float) -> np.ndarray:
    """Positions queried first for each segment: its ends and one inward slope point each."""
    ts = []
    for a, b in segments:
        h = slope_step * (b - a)
        ts += [a, a + h, b - h, b]
    return np.asarray(ts, dtype=np.float64)


def _chord_intersection(ea: _End, t1: float, f1: np.ndarray, t2: float, f2: np.ndarray,
                        eb: _End) -> float | None:
    """Where the chord ``ea → t1`` meets the chord ``t2 → eb`` (least squares over outputs)."""
    sl = (f1 - ea.f) / (t1 - ea.t)
    sr = (eb.f - f2) / (eb.t - t2)
    ds = sl - sr
    dd = float(ds @ ds)
    if dd == 0.0:
        return None
    c0 = (f1 - sl * t1) - (f2 - sr * t2)
    return -float(ds @ c0) / dd


def search_segments(evaluate: Evaluator, segments: list[tuple[float, float]],
                    params: SearchParams, known: dict | None = None) -> list[SegmentResult]:
    """Find every kink of ``f`` on each segment.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(ts)`` with ``ts`` of shape (n,) returns ``(values (n, m), scale (n,))``.
        Called once or twice per round for all segments together.
    segments : list of (a, b)
    params : SearchParams
    known : dict, optional
        ``{t: (value (m,), scale)}`` already paid for (e.g. segment ends shared between
        segments, queried once by the coordinator); served without a query.

    Returns
    -------
    list of SegmentResult, one per segment.
    """
    S = _Search(evaluate, params, known)
    noise = params.noise
    # Ends and inward slope points of every segment, one request.
    ts = list(segment_end_points(segments, params.slope_step))
    f, sc = S.query(ts)
    open_: list[tuple[int, _End, _End, int]] = []
    for i, (a, b) in enumerate(segments):
        j = 4 * i
        ea = _make_end(a, f[j], sc[j], ts[j + 1], f[j + 1], sc[j + 1], noise)
        eb = _make_end(b, f[j + 3], sc[j + 3], ts[j + 2], f[j + 2], sc[j + 2], noise)
        open_.append((i, ea, eb, 0))
    kinks: list[list[tuple[float, bool]]] = [[] for _ in segments]

    while open_:
        # ---- plan: probes per open interval (t* check, midpoint check, split or refresh)
        probes: list[float] = []
        plans = []
        for seg, ea, eb, depth in open_:
            w = eb.t - ea.t
            if w <= params.min_width * (1.0 + abs(ea.t)) or depth > MAX_DEPTH:
                kinks[seg].append((0.5 * (ea.t + eb.t), False))
                continue
            if depth > 0 and w < 4.0 * max(abs(ea.step), abs(eb.step)):
                h = params.slope_step * w
                plans.append(("refresh", seg, ea, eb, depth, len(probes)))
                probes += [ea.t + h, eb.t - h]
                continue
            ds = ea.s - eb.s
            dsn = float(np.max(np.abs(ds)))
            slope_unc = params.check_factor * (ea.sigma + eb.sigma)
            if dsn <= slope_unc:
                plans.append(("linear", seg, ea, eb, depth, len(probes)))
                probes.append(0.5 * (ea.t + eb.t))
                continue
            c0 = ea.f - ea.s * ea.t - eb.f + eb.s * eb.t
            tstar = -float(ds @ c0) / float(ds @ ds)
            margin = 1e-3 * w
            if ea.t + margin < tstar < eb.t - margin:
                eta = min(params.check_step * w, 0.5 * (tstar - ea.t), 0.5 * (eb.t - tstar))
                plans.append(("kink", seg, ea, eb, depth, len(probes)))
                probes += [tstar - eta, tstar + eta]
            else:
                # the split point and its slope point in this round's request (one round
                # trip instead of two)
                nsp = params.split_points
                h = params.slope_step * w
                plans.append(("split", seg, ea, eb, depth, len(probes)))
                for q in range(1, nsp + 1):
                    mid = ea.t + w * q / (nsp + 1)
                    probes += [mid, mid + h if mid + h < eb.t else mid - h]
        if not plans:
            break
        f, sc = S.query(probes)
        # ---- decide; collect split points that need a slope
        splits = []
        new_open = []
        for kind, seg, ea, eb, depth, j in plans:
            if kind == "refresh":
                ea2 = _make_end(ea.t, ea.f, ea.scale, probes[j], f[j], sc[j], noise)
                eb2 = _make_end(eb.t, eb.f, eb.scale, probes[j + 1], f[j + 1], sc[j + 1], noise)
                new_open.append((seg, ea2, eb2, depth + 1))
                continue
            t = probes[j]
            ft, st = f[j], float(sc[j])
            scale = max(ea.scale, eb.scale, st)
            if kind == "linear":
                pred = ea.f + ea.s * (t - ea.t)
                predb = ea.f + ea.s * (eb.t - ea.t)
                allowed = S.tol(scale) + params.check_factor * ea.sigma * (eb.t - ea.t)
                if (np.max(np.abs(ft - pred)) <= allowed
                        and np.max(np.abs(eb.f - predb)) <= allowed
                        and not (params.chord_check and _off_chord(ea, eb, t, ft, S.tol(scale)))):
                    continue  # no kink
                splits.append((seg, ea, eb, depth, t, ft, st))
            elif kind == "kink":
                w = eb.t - ea.t
                # t - eta must lie on the left line, t + eta on the right line
                t2, ft2, st2 = probes[j + 1], f[j + 1], float(sc[j + 1])
                scale = max(scale, st2)
                pa = ea.f + ea.s * (t - ea.t)
                pb = eb.f + eb.s * (t2 - eb.t)
                base = S.tol(scale)
                ok_a = np.max(np.abs(ft - pa)) <= base + params.check_factor * ea.sigma * (t - ea.t)
                ok_b = (np.max(np.abs(ft2 - pb))
                        <= base + params.check_factor * eb.sigma * (eb.t - t2))
                if ok_a and ok_b:
                    # Chords from the ends to the probes are long, precise baselines:
                    # their intersection locates the kink; it must fall between the probes.
                    tk = _chord_intersection(ea, t, ft, t2, ft2, eb)
                    if tk is not None and t - 1e-12 * w <= tk <= t2 + 1e-12 * w:
                        kinks[seg].append((tk, True))
                        continue
                # split around the probe pair; the pair's chord gives the slope there
                # (the gap between the pair stays inside the right half)
                ep = _make_end(t, ft, st, t2, ft2, st2, noise)
                new_open.append((seg, ea, ep, depth + 1))
                new_open.append((seg, ep, eb, depth + 1))
                continue
            else:
                left = ea
                for q in range(params.split_points):
                    jj = j + 2 * q
                    em = _make_end(probes[jj], f[jj], float(sc[jj]), probes[jj + 1], f[jj + 1],
                                   float(sc[jj + 1]), noise)
                    new_open.append((seg, left, em, depth + 1))
                    left = em
                new_open.append((seg, left, eb, depth + 1))
        if splits:
            sp_ts = []
            for seg, ea, eb, depth, t, ft, st in splits:
                h = params.slope_step * (eb.t - ea.t)
                sp_ts.append(t + h if t + h < eb.t else t - h)
            f2, sc2 = S.query(sp_ts)
            for n, (seg, ea, eb, depth, t, ft, st) in enumerate(splits):
                em = _make_end(t, ft, st, sp_ts[n], f2[n], sc2[n], noise)
                new_open.append((seg, ea, em, depth + 1))
                new_open.append((seg, em, eb, depth + 1))
        open_ = new_open

    T = np.concatenate(S.ts)
    V = np.concatenate(S.vals, axis=0)
    C = np.concatenate(S.scales)
    results = []
    for i, (a, b) in enumerate(segments):
        sel = (T >= a) & (T <= b)
        order = np.argsort(T[sel], kind="stable")
        if params.chord_check:
            found = np.array([k[0] for k in kinks[i]], dtype=np.float64)
            kinks[i] += [(float(tk), True) for tk in hidden_bends(
                T[sel][order], V[sel][order], C[sel][order], found,
                params.check_factor * params.noise)]
        ks = sorted(kinks[i])
        results.append(SegmentResult(
            t=T[sel][order], values=V[sel][order], scale=C[sel][order],
            kinks=np.array([k[0] for k in ks], dtype=np.float64),
            resolved=np.array([k[1] for k in ks], dtype=bool)))
    return results


def guided_search(evaluate: Evaluator, predicted: np.ndarray, reach: float,
                  params: SearchParams, pred_tol: np.ndarray | None = None,
                  pred_jump: np.ndarray | None = None) -> SegmentResult:
    """Kink search on a line where known hyperplanes predict most kinks.

    One anchor (a point and a slope point) sits in every gap between consecutive predicted
    kinks and at both ends. Where the lines of two neighbouring anchors meet at the predicted
    kink, the gap holds that kink alone; every other gap (a new kink, a missing one, a
    corrupted slope) is searched in full with :func:`search_segments`. About two queries per
    known kink instead of a full search.

    Parameters
    ----------
    evaluate : callable
    predicted : ndarray of shape (K,)
        Predicted kink positions inside ``(-reach, reach)``, sorted.
    reach : float
    params : SearchParams
    pred_tol : ndarray of shape (K,), optional
        Uncertainty of each predicted position (imprecise hyperplanes), added to the
        acceptance window.
    pred_jump : ndarray of shape (K, m), optional
        Predicted slope change (right minus left) at each kink; when given, a gap is accepted
        only if the measured change agrees within ``SIGNATURE_RTOL`` (a second, unknown kink
        in the gap changes it).
    """
    p = np.asarray(predicted, dtype=np.float64)
    edges = np.concatenate([[-reach], p, [reach]])
    mids = 0.5 * (edges[:-1] + edges[1:])
    frac = params.slope_step if params.anchor_step is None else params.anchor_step
    steps = frac * np.diff(edges)
    ts = np.concatenate([mids, mids + steps, [-reach, reach]])
    f, sc = evaluate(ts)
    n = mids.size
    fm, fs = f[:n], f[n:2 * n]
    slopes = (fs - fm) / steps[:, None]
    sig = 2.0 * params.noise * np.maximum(sc[:n], sc[n:2 * n]) / steps
    kinks: list[tuple[float, bool]] = []
    bad: list[tuple[float, float]] = []
    for i in range(p.size):
        ds = slopes[i] - slopes[i + 1]
        c0 = (fm[i] - slopes[i] * mids[i]) - (fm[i + 1] - slopes[i + 1] * mids[i + 1])
        dd = float(ds @ ds)
        gap = mids[i + 1] - mids[i]
        unc = params.check_factor * (sig[i] + sig[i + 1]) * gap
        if dd > 0 and np.sqrt(dd) * gap > unc:
            tstar = -float(ds @ c0) / dd
            # position uncertainty: slope errors over the gap, divided by the slope change
            tol = unc / np.sqrt(dd) + params.check_step * gap
            if pred_tol is not None:
                tol += PRED_SIGMAS * pred_tol[i]
            ok = abs(tstar - p[i]) <= tol and mids[i] < tstar < mids[i + 1]
            if ok and pred_jump is not None:
                ok = bool(jump_agrees(-ds, pred_jump[i],
                                      params.check_factor * (sig[i] + sig[i + 1]),
                                      params.jump_rtol))
            if ok:
                kinks.append((tstar, True))
                continue
        bad.append((float(mids[i]), float(mids[i + 1])))
    # the outer pieces must stay on their anchors' lines up to the line's ends
    for j, end in ((0, -reach), (n - 1, reach)):
        fe = f[2 * n + (0 if end < 0 else 1)]
        pred = fm[j] + slopes[j] * (end - mids[j])
        allowed = params.check_factor * (params.noise * sc[j] + sig[j] * abs(end - mids[j]))
        if np.max(np.abs(fe - pred)) > allowed:
            bad.append((min(end, float(mids[j])), max(end, float(mids[j]))))
    known = {float(t): (f[i], float(sc[i])) for i, t in enumerate(ts)}
    extra_t, extra_v, extra_s = [ts], [f], [sc]
    if p.size == 0:
        bad = [(-reach, reach)]
    if bad:
        bad = sorted(set(bad))
        res = search_segments(evaluate, bad, params, known)
        for r in res:
            kinks += [(float(t), bool(ok)) for t, ok in zip(r.kinks, r.resolved)]
            extra_t.append(r.t)
            extra_v.append(r.values)
            extra_s.append(r.scale)
    T = np.concatenate(extra_t)
    V = np.concatenate(extra_v, axis=0)
    S = np.concatenate(extra_s)
    T, idx = np.unique(T, return_index=True)
    ks = sorted(kinks)
    return SegmentResult(t=T, values=V[idx], scale=S[idx],
                         kinks=np.array([k[0] for k in ks], dtype=np.float64),
                         resolved=np.array([k[1] for k in ks], dtype=bool))


def residual_points(predicted: np.ndarray, reach: float) -> np.ndarray:
    """Where :func:`residual_search` may sample a line: both ends and
    the middle of every gap between the sorted predicted kinks. Shape (K + 3,)."""
    p = np.asarray(predicted, dtype=np.float64)
    edges = np.concatenate([[-reach], p, [reach]])
    return np.concatenate([[-reach], 0.5 * (edges[:-1] + edges[1:]), [reach]])


def residual_flags(ts: np.ndarray, r: np.ndarray, scale: np.ndarray, predicted: np.ndarray,
                   pred_offset: np.ndarray, pred_slope: np.ndarray,
                   params: SearchParams, allowance: str = "sum") -> list[tuple[float, float]]:
    """The intervals of the line to search in full: around every sample ``ts`` (sorted, none
    at a predicted kink) where the residual ``r`` (n, m) bends by more than the answers'
    rounding and the model's error at the predicted kinks of the two chords allow (a
    chord's slope moves by at most the slope error of each predicted kink it holds, plus
    its offset error over the chord's length). ``allowance="min"``: a chord holding several
    predicted kinks is allowed only the smallest of their errors, not their sum, so sparse
    samples flag whatever dense ones would (a weak neuron's bend next to strong neurons'
    included) and, where the model's errors add up, more."""
    h = np.diff(ts)
    slopes = np.diff(r, axis=0) / h[:, None]  # chord c: samples c, c + 1
    sigma = 2.0 * params.noise * scale  # answer rounding plus the model's own
    p = np.asarray(predicted, dtype=np.float64)
    chord = np.clip(np.searchsorted(ts, p) - 1, 0, h.size - 1)
    if allowance == "min":
        tol_c = np.full(h.size, np.inf)
        np.minimum.at(tol_c, chord, pred_offset / h[chord] + pred_slope)
        tol_c[~np.isfinite(tol_c)] = 0.0
    else:
        tol_c = np.zeros(h.size)
        np.add.at(tol_c, chord, pred_offset / h[chord] + pred_slope)
    noise_c = (sigma[:-1] + sigma[1:]) / h
    change = np.linalg.norm(np.diff(slopes, axis=0), axis=1)  # at samples 1 .. n-2
    allowed = params.check_factor * (noise_c[:-1] + noise_c[1:]) + tol_c[:-1] + tol_c[1:]
    intervals: list[tuple[float, float]] = []
    for i in np.flatnonzero(change > allowed) + 1:
        a, b = float(ts[i - 1]), float(ts[i + 1])
        if intervals and a <= intervals[-1][1]:
            intervals[-1] = (intervals[-1][0], b)
        else:
            intervals.append((a, b))
    return intervals


def _inside(t: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    """Which of ``t`` lie in one of the sorted, disjoint ``intervals`` ``[a, b)``."""
    if not intervals:
        return np.zeros(t.size, dtype=bool)
    lo = np.array([iv[0] for iv in intervals])
    hi = np.array([iv[1] for iv in intervals])
    at = np.searchsorted(lo, t, side="right") - 1
    return (at >= 0) & (t < hi[np.maximum(at, 0)])


def residual_samples(evaluate: Evaluator, model_values, predicted: np.ndarray,
                     pred_offset: np.ndarray, pred_slope: np.ndarray, reach: float,
                     params: SearchParams, stride: int = 1):
    """The residual ``F − model`` sampled along a line, and the intervals it flags.

    Every ``stride``-th point of :func:`residual_points` first (the ends always): where the
    model is right the residual is linear across any number of its kinks, so sparse samples
    see a kink the model lacks (or has wrongly) as well as dense ones — its slope change
    splits between the two samples around it whatever their distance — only less precisely
    placed. They are flagged strictly: each chord is allowed the smallest error of the
    predicted kinks it holds, not their sum (a false flag costs only the second request's
    points; a missed one, a kink the dense samples would have searched). The points of
    :func:`residual_points` inside the flagged intervals follow in a second request, and the
    flags are taken again over all samples with the full allowance, so a flagged interval
    is as narrow as with every point paid. ``evaluate(ts) -> (F values, scale)``,
    ``model_values(ts) -> model values`` (each point's model value computed once).

    Returns ``(ts, values, scale, intervals)``, the samples sorted.
    """
    full = residual_points(predicted, reach)
    if stride > 1 and full.size > 2 * stride:
        keep = np.zeros(full.size, dtype=bool)
        keep[::stride] = True
        keep[-1] = True
        ts = full[keep]
    else:
        keep, ts = None, full
    f, sc = evaluate(ts)
    r = f - model_values(ts)
    intervals = residual_flags(ts, r, sc, predicted, pred_offset, pred_slope, params,
                               allowance="sum" if keep is None else "min")
    if keep is not None and intervals:
        inside = _inside(full, intervals) & ~keep
        if inside.any():
            t2 = full[inside]
            f2, sc2 = evaluate(t2)
            order = np.argsort(np.concatenate([ts, t2]), kind="stable")
            ts = np.concatenate([ts, t2])[order]
            f = np.concatenate([f, f2], axis=0)[order]
            sc = np.concatenate([sc, sc2])[order]
            r = np.concatenate([r, f2 - model_values(t2)], axis=0)[order]
            intervals = residual_flags(ts, r, sc, predicted, pred_offset, pred_slope, params)
    return ts, f, sc, intervals


def residual_pieces(ts: np.ndarray, intervals: list[tuple[float, float]]
                    ) -> list[tuple[float, float]]:
    """The flagged ``intervals`` cut at the samples ``ts`` inside them (already paid): each
    piece holds one predicted kink and perhaps the missing one, resolved in a round or two
    instead of splitting the whole interval level by level."""
    return [(float(ts[j]), float(ts[j + 1])) for a, b in intervals
            for j in range(int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b)))]


def predicted_outside(predicted: np.ndarray, intervals: list[tuple[float, float]],
                      m: int) -> SegmentResult:
    """The predicted kinks outside the searched ``intervals``, taken where predicted."""
    p = np.asarray(predicted, dtype=np.float64)
    keep = p[~_inside(p, intervals)]
    return SegmentResult(t=np.zeros(0), values=np.zeros((0, m)), scale=np.zeros(0),
                         kinks=keep, resolved=np.ones(keep.size, dtype=bool))


def residual_search(evaluate: Evaluator, model_values, predicted: np.ndarray,
                    pred_offset: np.ndarray, pred_slope: np.ndarray, reach: float,
                    params: SearchParams, stride: int = 1,
                    search: Callable[[list, dict], list[SegmentResult]] | None = None
                    ) -> list[SegmentResult]:
    """Kink search on a line against a model that predicts every kink it knows.

    One point in every gap between consecutive predicted kinks (and both ends,
    :func:`residual_points`; with ``stride`` > 1 every ``stride``-th of them first, then the
    others where those bend, :func:`residual_samples`): the residual ``r = F − model`` is
    linear between the samples wherever the model is right, so its chord slopes change only
    at a kink the model lacks, a kink it has that ``F`` lacks, or by the model's own error at
    a predicted kink (``pred_offset``: how far the residual may sit off a line there, from
    the hyperplane's position error; ``pred_slope``: the error of its slope change). Samples
    whose chord slopes change by more are searched in full (:func:`search_segments` on ``F``
    over the two chords around them, :func:`residual_flags`, cut at the samples inside,
    :func:`residual_pieces`); every other predicted kink is taken where predicted. About one
    query per known kink with ``stride`` 1, a quarter with 4 (the guided search takes two),
    and a missing neuron's residual is a ramp that stands out whatever its neighbours. The
    engine runs it with the model evaluated on its side and the searches spread over tasks
    (:func:`.scan.residual`, through ``search``).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(ts) -> (F values (n, m), scale (n,))``.
    model_values : callable
        ``model_values(ts) -> (n, m)``: the model along the line.
    predicted : ndarray of shape (K,)
        Predicted kink positions inside ``(-reach, reach)``, sorted.
    pred_offset, pred_slope : ndarray of shape (K,)
        Model error scales at each predicted kink (value offset, slope-change error).
    reach : float
    params : SearchParams
    stride : int
        Sample every ``stride``-th gap first (1: every gap at once).
    search : callable, optional
        ``search(pieces, known) -> list of SegmentResult``: searches the flagged pieces,
        given the answers already paid (``{t: (values, scale)}``). Default:
        :func:`search_segments` with ``evaluate``.

    Returns
    -------
    list of SegmentResult
        The samples, the searched intervals' results and the predicted kinks outside them;
        :func:`.regions.merge_segments` makes one scan of them.
    """
    ts, f, sc, intervals = residual_samples(evaluate, model_values, predicted, pred_offset,
                                            pred_slope, reach, params, stride)
    m = f.shape[1]
    out = [SegmentResult(t=ts, values=f, scale=sc, kinks=np.zeros(0),
                         resolved=np.zeros(0, dtype=bool)),
           predicted_outside(predicted, intervals, m)]
    if intervals:
        known = {float(t): (f[i], float(sc[i])) for i, t in enumerate(ts)}
        pieces = residual_pieces(ts, intervals)
        out += (search(pieces, known) if search is not None
                else search_segments(evaluate, pieces, params, known))
    return out
