"""Neurons from rank-one Jacobian jumps, and their deduplication.

Across the kink between regions ``j`` and ``j+1`` of a line, ``J_{j+1} - J_j = â ŵᵀ``
(``ŵ`` unit, oriented along the line direction). The kink point gives the bias. The same
hyperplane seen twice (other lines, opposite orientation) is merged; the output vector ``â``
does not change under the flip ``(ŵ, b̂) → (−ŵ, −b̂)`` because the jump is measured in the
direction of ``ŵ`` (the affine difference ``â·(ŵ·x + b̂)`` goes to the output solve).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .jacobians import RegionJacobian
from .kinks import jump_agrees
from .lines import Line


@dataclass(frozen=True)
class NeuronSet:
    """Neurons as arrays (n of them).

    Attributes
    ----------
    W : ndarray of shape (n, d)    unit normals, canonical sign
    b : ndarray of shape (n,)
    a : ndarray of shape (n, m)    jump output vectors
    err : ndarray of shape (n,)    estimated direction error (radians)
    rank_residual : ndarray (n,)   second / first singular value of the jump (0 for m = 1)
    line : ndarray (n,) int        line where first seen
    t : ndarray (n,)               kink position on that line
    count : ndarray (n,) int       observations merged into this neuron
    """

    W: np.ndarray
    b: np.ndarray
    a: np.ndarray
    err: np.ndarray
    rank_residual: np.ndarray
    line: np.ndarray
    t: np.ndarray
    count: np.ndarray

    @property
    def size(self) -> int:
        return int(self.W.shape[0])

    @classmethod
    def empty(cls, d: int, m: int) -> NeuronSet:
        z = np.zeros(0)
        return cls(np.zeros((0, d)), z, np.zeros((0, m)), z, z, z.astype(int), z,
                   z.astype(int))

    def take(self, idx) -> NeuronSet:
        return NeuronSet(self.W[idx], self.b[idx], self.a[idx], self.err[idx],
                         self.rank_residual[idx], self.line[idx], self.t[idx], self.count[idx])

    def replaced(self, idx, other: NeuronSet, other_idx) -> NeuronSet:
        """A copy whose neurons ``idx`` are measured as ``other``'s ``other_idx`` (hyperplane,
        output vector, error, where measured); their rank residual and count stay."""
        W, b, a, err = self.W.copy(), self.b.copy(), self.a.copy(), self.err.copy()
        line, t = self.line.copy(), self.t.copy()
        W[idx], b[idx], a[idx], err[idx] = (other.W[other_idx], other.b[other_idx],
                                            other.a[other_idx], other.err[other_idx])
        line[idx], t[idx] = other.line[other_idx], other.t[other_idx]
        return NeuronSet(W, b, a, err, self.rank_residual, line, t, self.count)

    @staticmethod
    def concat(sets: list[NeuronSet]) -> NeuronSet:
        return NeuronSet(*(np.concatenate([getattr(s, f) for s in sets], axis=0)
                           for f in ("W", "b", "a", "err", "rank_residual", "line", "t",
                                     "count")))


RANK_FLOOR = 1e-6    # second / first singular value of a jump above which it is not rank one
RANK_FACTOR = 10.0  # ... or above this many times the jump's relative measurement error


def canonical(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip each row so its largest-magnitude component is positive. Returns (W, b, sign)."""
    idx = np.argmax(np.abs(W), axis=1)
    sign = np.sign(W[np.arange(W.shape[0]), idx])
    sign[sign == 0] = 1.0
    return W * sign[:, None], b * sign, sign


def jumps_to_neurons(line: Line, regions: list[RegionJacobian], edges: np.ndarray,
                     rank_factor: float = RANK_FACTOR, at_kinks: bool = False) -> NeuronSet:
    """One neuron per kink whose two neighbouring regions were both measured.

    Parameters
    ----------
    line : Line
    regions : list of RegionJacobian
        Measured regions of ``line`` (any order; failed ones are skipped).
    edges : ndarray of shape (K + 2,)
        Region boundaries ``[-reach, kinks..., reach]``.
    rank_factor : float
        A jump whose second singular value exceeds ``rank_factor × err`` of the first is
        rank two (two merged kinks) and dropped. ``err`` bounds the measurement error; for
        float64 it is loose (rounding of intermediate sums), for float32 or rounded answers
        the bound is about ten times the true error, so a factor near one separates them.
    at_kinks : bool
        Take the bias from the searched kink position (imprecise answers: the search's long
        chords place it far better than the region slopes do).
    """
    by = {r.region: r for r in regions if r.J is not None}
    rows = []
    for j in sorted(by):
        if j + 1 not in by:
            continue
        r0, r1 = by[j], by[j + 1]
        dJ = r1.J - r0.J  # (m, d)
        if dJ.shape[0] == 1:
            norm = float(np.linalg.norm(dJ[0]))
            if norm == 0.0:
                continue
            w = dJ[0] / norm
            a = np.array([norm])
            rr = 0.0
        else:
            U, s, Vt = np.linalg.svd(dJ, full_matrices=False)
            if s[0] == 0.0:
                continue
            w = Vt[0]
            a = U[:, 0] * s[0]
            rr = float(s[1] / s[0]) if s.size > 1 else 0.0
            norm = float(s[0])
        if w @ line.v < 0:
            w, a = -w, -a
        # kink position: where the two region lines along the line meet
        s0 = r0.J @ line.v
        s1 = r1.J @ line.v
        ds = s0 - s1
        c0 = (r1.f0 - s1 * r1.t0) - (r0.f0 - s0 * r0.t0)
        dd = float(ds @ ds)
        tk = float(ds @ c0) / dd if dd > 0 else 0.5 * (edges[j + 1] + edges[j + 1])
        if at_kinks or not (r0.t0 <= tk <= r1.t0):
            tk = float(edges[j + 1])
        x = line.u + tk * line.v
        b = -float(w @ x)
        prec = max(r0.precision, r1.precision)
        err = np.sqrt(2.0 * line.dim) * prec / norm
        if rr > max(RANK_FLOOR, rank_factor * err):
            # a rank-two jump: two kinks merged into one; neither neuron is taken from it
            # (later lines cross the two hyperplanes apart)
            continue
        rows.append((w, b, a, err, rr, tk))
    d = line.dim
    if not rows:
        m = regions[0].f0.shape[0] if regions else 1
        return NeuronSet.empty(d, m)
    W = np.array([r[0] for r in rows])
    b = np.array([r[1] for r in rows])
    W, b, _ = canonical(W, b)
    return NeuronSet(W=W, b=b, a=np.array([r[2] for r in rows]),
                     err=np.array([r[3] for r in rows]),
                     rank_residual=np.array([r[4] for r in rows]),
                     line=np.full(len(rows), line.index), t=np.array([r[5] for r in rows]),
                     count=np.ones(len(rows), dtype=int))


MATCH_CEILING = 1e-4  # never merge hyperplanes further apart than this (near-parallel pairs)


def match_pairs(A: NeuronSet, B: NeuronSet, factor: float, floor: float = 1e-12,
                ceiling: float = MATCH_CEILING) -> list[tuple[int, int]]:
    """Pairs (i in A, j in B) of the same hyperplane, found by sorting on a projection.

    Two neurons match when their canonical normals and biases agree within
    ``factor × (err_i + err_j) + floor``, at most ``ceiling`` each (bias relative to
    ``1 + |b|``). Cost
    ``O((|A| + |B|) log(|A| + |B|) · d)`` plus the near pairs, never all pairs.
    """
    if A.size == 0 or B.size == 0:
        return []
    d = A.W.shape[1]
    r = np.random.default_rng(12345).standard_normal(d)
    r /= np.linalg.norm(r)
    ka = A.W @ r + 0.5 * A.b / (1.0 + np.abs(A.b))
    kb = B.W @ r + 0.5 * B.b / (1.0 + np.abs(B.b))
    tol_a = np.minimum(factor * A.err + floor, ceiling)
    tol_b = np.minimum(factor * B.err + floor, ceiling)
    order = np.argsort(kb)
    kbs = kb[order]
    pairs = []
    max_tb = float(tol_b.max())
    for i in range(A.size):
        lo = np.searchsorted(kbs, ka[i] - 2 * (tol_a[i] + max_tb), side="left")
        hi = np.searchsorted(kbs, ka[i] + 2 * (tol_a[i] + max_tb), side="right")
        if lo >= hi:
            continue
        cand = order[lo:hi]
        tol = tol_a[i] + tol_b[cand]
        dw = np.max(np.abs(B.W[cand] - A.W[i]), axis=1)
        db = np.abs(B.b[cand] - A.b[i]) / (1.0 + np.abs(A.b[i]))
        hit = cand[(dw <= tol) & (db <= tol)]
        pairs.extend((i, int(j)) for j in hit)
    return pairs


def dedup(ns: NeuronSet, factor: float, ceiling: float = MATCH_CEILING,
          robust: bool = False) -> NeuronSet:
    """Merge observations of the same hyperplane (averaging, weighted by precision); never
    hyperplanes further apart than ``ceiling`` (raised for imprecise answers, whose
    measurements of one hyperplane scatter more). ``robust``: keep the most precise
    observation of each group instead of the average (imprecise answers, where one
    merged-kink measurement would drag an average off)."""
    if ns.size <= 1:
        return ns
    parent = np.arange(ns.size)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in match_pairs(ns, ns, factor, ceiling=ceiling):
        # a hyperplane crosses a line once: two kinks of one line are two hyperplanes
        # (imprecise answers: a near-parallel pair's measurements agree within the raised
        # ceiling and were merged into one neuron)
        if i != j and not (ns.line[i] == ns.line[j] and ns.t[i] != ns.t[j]):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(ns.size)])
    uniq, inv = np.unique(roots, return_inverse=True)
    if uniq.size == ns.size:
        return ns
    n = uniq.size
    if robust:
        best = np.full(n, -1)
        for i in range(ns.size):
            g = inv[i]
            if best[g] < 0 or ns.err[i] < ns.err[best[g]]:
                best[g] = i
        out = ns.take(best)
        count = np.zeros(n, dtype=int)
        np.add.at(count, inv, ns.count)
        return NeuronSet(out.W, out.b, out.a, out.err, out.rank_residual, out.line, out.t,
                         count)
    wts = 1.0 / np.maximum(ns.err, 1e-300) ** 2
    W = np.zeros((n, ns.W.shape[1]))
    b = np.zeros(n)
    a = np.zeros((n, ns.a.shape[1]))
    wsum = np.zeros(n)
    np.add.at(W, inv, ns.W * wts[:, None])
    np.add.at(b, inv, ns.b * wts)
    np.add.at(a, inv, ns.a * wts[:, None])
    np.add.at(wsum, inv, wts)
    W /= wsum[:, None]
    b /= wsum
    a /= wsum[:, None]
    norms = np.linalg.norm(W, axis=1)
    W /= norms[:, None]
    b /= norms
    count = np.zeros(n, dtype=int)
    np.add.at(count, inv, ns.count)
    err = 1.0 / np.sqrt(wsum)
    first = np.array([np.flatnonzero(inv == g)[0] for g in range(n)])
    rr = np.zeros(n)
    np.maximum.at(rr, inv, ns.rank_residual)
    return NeuronSet(W, b, a, err, rr, ns.line[first], ns.t[first], count)


def predicted_crossings(line: Line, ns: NeuronSet
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each known hyperplane crosses ``line``: positions ``t`` (inf/nan when parallel),
    their uncertainty ``err × (|x| + 1) / |w·v|`` (the hyperplane's position error there) and
    ``w·v``, each of shape (n,)."""
    wv = ns.W @ line.v
    with np.errstate(divide="ignore", invalid="ignore"):
        tm = -(ns.W @ line.u + ns.b) / wv
        spread = ns.err * (np.sqrt(line.u @ line.u + tm ** 2) + 1.0) / np.abs(wv)
    return tm, spread, wv


EXPLAIN_FACTOR = 20.0  # a hyperplane explains a kink within this many position errors


def explain_kinks(line: Line, kinks: np.ndarray, ns: NeuronSet, factor: float = EXPLAIN_FACTOR,
                  wide: bool = False, jumps: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Compare the kinks found on ``line`` with the crossings the known hyperplanes predict.

    A kink is explained when a known hyperplane crosses the line within
    ``factor × err × (|x| + 1) / |w·v|`` of it (the hyperplane's position uncertainty there).
    Candidates are looked for within ``1e-3·(1 + |t|)`` of a kink; with ``wide`` (imprecise
    hyperplanes) within their whole uncertainty. A neuron explains one kink and a kink is
    explained by one neuron, closest pairs first; given the measured slope change at each
    kink (``jumps``, (K, m)), a neuron explains a kink only if its output vector predicts
    that change within ``SIGNATURE_RTOL``.

    Returns
    -------
    unexplained : ndarray of int
        Indices into ``kinks`` of kinks no known hyperplane explains (new neurons).
    unconfirmed : ndarray of int
        Indices into ``ns`` of neurons whose predicted crossing lies inside the searched
        range but matches no kink (spurious).
    confirmed : ndarray of bool, shape (n,)
        Neurons that explained a kink on this line.
    by : ndarray of int, shape (K,)
        The neuron explaining each kink (-1: none or several).
    loose : ndarray of bool, shape (K,)
        Kinks explained by a hyperplane further off than its error estimate allows.
    """
    if ns.size == 0:
        return (np.arange(kinks.size), np.zeros(0, dtype=int), np.zeros(0, dtype=bool),
                np.full(kinks.size, -1), np.zeros(kinks.size, dtype=bool))
    tm, spread, wv = predicted_crossings(line, ns)
    tol = factor * spread + 1e-9 * (1.0 + np.abs(tm))
    inside = np.isfinite(tm) & (np.abs(tm) < line.reach * (1 - 1e-6))
    order = np.argsort(tm[inside])
    idx = np.flatnonzero(inside)[order]
    ts = tm[idx]
    explained = np.zeros(kinks.size, dtype=bool)
    confirmed = np.zeros(ns.size, dtype=bool)
    by = np.full(kinks.size, -1)
    loose = np.zeros(kinks.size, dtype=bool)
    pairs: list[tuple[float, int, int]] = []
    span = float(np.max(tol[idx])) if wide and idx.size else 0.0
    span = min(span, 2.0 * line.reach)
    for j, t in enumerate(kinks):
        radius = max(1e-3 * (1 + abs(t)), span)
        lo = np.searchsorted(ts, t - radius)
        hi = np.searchsorted(ts, t + radius)
        if wide:
            cand = idx[lo:hi]
            cand = cand[np.abs(tm[cand] - t) <= tol[cand]]
            if jumps is not None and np.all(np.isfinite(jumps[j])) and cand.size:
                pred = ns.a[cand] * np.abs(wv[cand])[:, None]
                cand = cand[jump_agrees(jumps[j][None, :], pred)]
            pairs.extend((abs(float(tm[n]) - float(t)), j, int(n)) for n in cand)
            continue
        for n in idx[lo:hi]:
            if abs(tm[n] - t) <= tol[n]:
                pairs.append((abs(float(tm[n]) - float(t)), j, int(n)))
    # one kink per neuron and one neuron per kink, closest predictions first: a missing
    # neuron's kink next to a known one's is not explained by it (k=8192: such neurons
    # were found one per line). Float64: every neuron within reach of a kink still counts
    # as seen (two crossings closer than the search resolution make one kink).
    used = np.zeros(ns.size, dtype=bool)
    for _, j, n in sorted(pairs):
        if not explained[j] and not used[n]:
            explained[j] = True
            used[n] = True
            by[j] = n
    confirmed |= used
    if not wide:
        for _, j, n in pairs:
            confirmed[n] = True
    # A kink between its neighbours that known, otherwise unconfirmed hyperplanes cross is
    # those neurons (two crossings closer than the search resolution merge into one kink).
    for j in np.flatnonzero(~explained):
        lo_t = kinks[j - 1] if j > 0 else -line.reach
        hi_t = kinks[j + 1] if j + 1 < kinks.size else line.reach
        cand = idx[np.searchsorted(ts, lo_t, side="right"):np.searchsorted(ts, hi_t)]
        cand = cand[~confirmed[cand]]
        if cand.size:
            confirmed[cand] = True
            explained[j] = True
            if cand.size == 1:  # one hyperplane, further off than its error says
                by[j] = cand[0]
                loose[j] = True
    unconfirmed = np.flatnonzero(inside & ~confirmed)
    return np.flatnonzero(~explained), unconfirmed, confirmed, by, loose
