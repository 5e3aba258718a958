"""Neurons from rank-one Jacobian jumps, and their deduplication.

Across the kink between regions ``j`` and ``j+1`` of a line, ``J_{j+1} - J_j = â ŵᵀ``
(``ŵ`` unit, oriented along the line direction). The kink point gives the bias. The same
hyperplane seen twice (other lines, opposite orientation) is merged; the output vector ``â``
does not change under the flip ``(ŵ, b̂) → (−ŵ, −b̂)`` because the jump is measured in the
direction of ``ŵ`` (the affine difference ``â·(ŵ·x + b̂)`` goes to the output solve).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
SPREAD_FACTOR = 20.0  # a jump whose rest beyond rank one (over its rounding bound) exceeds
# the line's median this many times breaks the chain of joint_jumps (random d=128, k=1024,
# m=10: the largest of 1,009 was 8.7 times the median; missed weak kinks: 10^2 to 10^9)
JOINT_MAX_OUTPUTS = 128
JOINT_MIN_INPUTS = 8  # fewer inputs: not done (random d=2, 3, 4, 6, k=1000 networks came out
# some better, some up to 8x worse, with the same rows; d=8-32: 29 of 32 better)
JOINT_TRUST = 1.0  # a joint jump further from the two-region one than this × the latter's
# error bound is not taken (random d=12, k=1000, m=3: a weak neuron, |a|·|w| = 0.009, went
# 3e-7 rad off, where no neuron's two-region direction was more than 6e-8 off)


@dataclass(frozen=True)
class Jump:
    """The rank-one jump of a line's Jacobian across one kink, from its two regions.

    Attributes
    ----------
    w : ndarray (d,)       unit direction
    a : ndarray (m,)       output vector (the jump is ``a wᵀ``)
    rank_residual : float  second / first singular value
    err : float            error bound of ``w`` (radians)
    spread : float         the jump's singular values after the first, squared, over its
                           two regions' rounding bounds squared (more than rounding: a
                           second kink inside it)
    """

    w: np.ndarray
    a: np.ndarray
    rank_residual: float
    err: float
    spread: float


def canonical(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip each row so its largest-magnitude component is positive. Returns (W, b, sign)."""
    idx = np.argmax(np.abs(W), axis=1)
    sign = np.sign(W[np.arange(W.shape[0]), idx])
    sign[sign == 0] = 1.0
    return W * sign[:, None], b * sign, sign


def jumps_to_neurons(line: Line, regions: list[RegionJacobian], edges: np.ndarray,
                     rank_factor: float = RANK_FACTOR, at_kinks: bool = False,
                     joint: bool = True) -> NeuronSet:
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
    joint : bool
        Estimate the jumps of runs of consecutive regions jointly (:func:`joint_jumps`);
        False: each from its two regions alone (imprecise answers, whose rounding bounds
        are loose: 1-4% more rows on float32 and 6-digit answers for no gain). A neuron's
        ``err`` stays its two-region bound either way.
    """
    by = {r.region: r for r in regions if r.J is not None}
    jumps: dict[int, Jump] = {}  # keyed by the region before the kink
    for j in sorted(by):
        if j + 1 not in by:
            continue
        r0, r1 = by[j], by[j + 1]
        w, a, rr, norm, rest = _rank_one(r1.J - r0.J)
        if norm == 0.0:
            continue
        prec = max(r0.precision, r1.precision)
        err = np.sqrt(2.0 * line.dim) * prec / norm
        if rr > max(RANK_FLOOR, rank_factor * err):
            # a rank-two jump: two kinks merged into one; neither neuron is taken from it
            # (later lines cross the two hyperplanes apart)
            continue
        jumps[j] = Jump(w, a, rr, err, rest / (r0.precision ** 2 + r1.precision ** 2 or 1.0))
    if joint:
        for j, (w, a) in joint_jumps(by, jumps).items():
            jumps[j] = replace(jumps[j], w=w, a=a)
    rows = []
    for j, jump in jumps.items():
        r0, r1 = by[j], by[j + 1]
        w, a, rr, err = jump.w, jump.a, jump.rank_residual, jump.err
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


def _rank_one(dJ: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Nearest rank-one ``a wᵀ`` of a jump (``w`` unit): ``(w, a, s2/s1, s1, Σ_{k≥2} s_k²)``."""
    if dJ.shape[0] == 1:
        norm = float(np.linalg.norm(dJ[0]))
        return (dJ[0] / norm if norm else dJ[0]), np.array([norm]), 0.0, norm, 0.0
    U, s, Vt = np.linalg.svd(dJ, full_matrices=False)
    rr = float(s[1] / s[0]) if s.size > 1 and s[0] > 0 else 0.0
    return Vt[0], U[:, 0] * s[0], rr, float(s[0]), float(np.sum(s[1:] ** 2))


def joint_jumps(by: dict, two: dict[int, Jump]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The jumps of a line's runs of consecutive measured regions, estimated jointly.

    Along a run the region Jacobians are ``J_{j+1} = J_j + a_j w_jᵀ``; each measurement
    ``J̃_j = J_j + E_j`` carries its own stencil rounding ``E_j`` (independent between
    regions, ∝ 1/h; each output's own size, estimated from the jumps, is divided out). The
    jump of two regions alone, ``J̃_{j+1} - J̃_j``, has both regions' rounding in it. But
    with ``m`` outputs a rank-one jump only moves ``J`` along one output direction ``a_j``:
    in every other direction ``J_j`` is also ``J_{j-1}``, seen by the region before, and
    ``J_{j-2}`` unless ``a_{j-1}`` moved it, and so on. With the output vectors ``a`` held
    at their two-region values, each input coordinate's column is a linear chain (state:
    the column of ``J``, ``m`` numbers; each step free along ``a_j``), solved exactly by a
    forward and a backward pass of information filtering; the jump's column comes from the
    two passes' information on both sides of the kink. d=128, k=1024, m=10: the model's rel
    L2 about 2× smaller, same rows. With one output there is nothing to share (each step is
    free in every direction): the result is the two-region jump.

    Guards: a jump holding more than rounding beyond its rank one (``spread``: its singular
    values after the first, squared, over its two regions' rounding bounds squared; more
    than SPREAD_FACTOR × the line's median) ends a run — a kink the search missed beside the
    found one, too weak for the rank test, would otherwise be taken for rounding of the
    neighbours and moved into their jumps; a joint direction further from the two-region
    one than JOINT_TRUST × its error bound is not taken; fewer than JOINT_MIN_INPUTS inputs
    or more than JOINT_MAX_OUTPUTS outputs (each region costs ``O(m³)``): not done.

    ``by``: measured regions by index; ``two``: the two-region :class:`Jump` s kept, keyed
    by the region before the kink. Returns ``{j: (w unit, a)}`` for the jumps inside
    runs of at least three regions that pass the guards."""
    keys = sorted(two)
    if not keys:
        return {}
    m, d = by[keys[0]].J.shape
    if m < 2 or m > JOINT_MAX_OUTPUTS or d < JOINT_MIN_INPUTS:
        return {}
    z = np.array([two[j].spread for j in keys])
    cut = SPREAD_FACTOR * float(np.median(z))
    keys = [j for j, zj in zip(keys, z) if zj <= cut]
    if not keys:
        return {}
    # each output's own rounding (the bound is one number for all outputs; an output 100x
    # larger than another rounds 100x coarser): from the rows of what the jumps hold beyond
    # rank one; the chain runs on outputs scaled to equal rounding
    rest = np.array([np.sum((by[j + 1].J - by[j].J - np.outer(two[j].a, two[j].w)) ** 2,
                            axis=1) / (by[j].precision ** 2 + by[j + 1].precision ** 2 or 1.0)
                     for j in keys])
    sig = np.sqrt(np.median(rest, axis=0))
    if not np.all(np.isfinite(sig)) or sig.max() <= 0:
        return {}
    sig = np.maximum(sig, 1e-6 * sig.max())
    used = set(keys) | {j + 1 for j in keys}
    # each region weighs as its stencil step squared (a column's rounding is noise·scale/h),
    # but no step counts for more than the line's median: longer ones did worse than their
    # rounding says (weighted by their rounding bounds, 5 of 34 random and anisotropic-output
    # networks came out 1.1-1.3x worse than with two-region jumps; capped steps: 2 of them,
    # 1.12x and 1.14x; every region alike: none, but d128-k8192 at 9.6e-9, not 8.2e-9)
    cap = float(np.median([by[j].h for j in used]))
    prec = {j: 1.0 / min(by[j].h, cap) if by[j].h > 0 else np.inf for j in used}
    a = {j: two[j].a / sig for j in keys}
    out = {}
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[i - 1] + 1:
            run = keys[start:i]
            if len(run) >= 2:
                out.update(_run_jumps(by, sig, prec, a, run, m, d))
            start = i
    out = {j: (w, av * sig) for j, (w, av) in out.items()}
    for j, (w, _a) in list(out.items()):
        w2, err = two[j].w, two[j].err
        if min(np.linalg.norm(w - w2), np.linalg.norm(w + w2)) > JOINT_TRUST * err:
            del out[j]
    return out


def _run_jumps(by: dict, sig: np.ndarray, prec: dict, a: dict, run: list, m: int,
               d: int) -> dict:
    """:func:`joint_jumps` of one run (``run``: the regions before its kinks; ``sig``: each
    output's rounding, divided out of the Jacobians as they are read; ``prec``: the
    regions' relative rounding)."""
    regions = run + [run[-1] + 1]
    p = np.array([prec[j] for j in regions], dtype=float)
    if not np.all(np.isfinite(p) & (p > 0)):
        return {}  # the weights need every region's step
    eye = np.eye(m)
    wts = dict(zip(regions, (float(np.median(p)) / p) ** 2))

    def forget(lam, eta, av):  # the step along av is free: drop what was known along it
        la = lam @ av
        q = float(av @ la)
        if q <= 0.0:
            return lam, eta
        return lam - np.outer(la, la) / q, eta - np.outer(la, av @ eta) / q

    def observe(lam, eta, j):  # add region j's measurement of J
        return lam + wts[j] * eye, eta + wts[j] * (by[j].J / sig[:, None])

    def forward(state, n):  # information on J at regions[n], from regions[:n + 1]
        lam, eta = state
        if n:
            lam, eta = forget(lam, eta, a[regions[n - 1]])
        return observe(lam, eta, regions[n])

    # the forward pass keeps every block-th state; the backward pass recomputes one block
    # at a time from them (memory ~2·sqrt(R) states instead of R: m=128, d=784 states are
    # 0.8 MB each)
    block = max(1, int(np.ceil(np.sqrt(len(regions)))))
    marks = {}
    state = (np.zeros((m, m)), np.zeros((m, d)))
    for n in range(len(regions)):
        state = forward(state, n)
        if n % block == 0:
            marks[n] = state
    fwd: dict = {}

    def forward_at(n):
        if n not in fwd:
            fwd.clear()
            start = n - n % block
            fwd[start] = st = marks[start]
            for q in range(start + 1, min(start + block, len(regions))):
                fwd[q] = st = forward(st, q)
        return fwd[n]

    # backward pass: information on J_{j+1} from regions j+1 onwards, combined with the
    # forward one on J_j: maximise over (J_j, β) with J_{j+1} = J_j + a βᵀ
    out = {}
    lam, eta = np.zeros((m, m)), np.zeros((m, d))
    M = np.zeros((m + 1, m + 1))
    for n in range(len(regions) - 1, 0, -1):
        j1 = regions[n]
        if n < len(regions) - 1:
            lam, eta = forget(lam, eta, a[j1])
        lam, eta = observe(lam, eta, j1)
        j = regions[n - 1]
        av = a[j]
        lf, ef = forward_at(n - 1)
        lav = lam @ av
        M[:m, :m] = lf + lam
        M[:m, m] = lav
        M[m, :m] = lav
        M[m, m] = av @ lav
        rhs = np.vstack([ef + eta, (av @ eta)[None, :]])
        try:
            beta = np.linalg.solve(M, rhs)[m]
        except np.linalg.LinAlgError:
            continue
        norm = float(np.linalg.norm(beta))
        if norm > 0.0 and np.all(np.isfinite(beta)):
            out[j] = (beta / norm, av * norm)
    return out


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
        # ceiling, and this keeps them two neurons)
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


def crossings_inside(t: np.ndarray, reach: float, margin: float,
                     tol: np.ndarray | None = None) -> np.ndarray:
    """The predicted crossings a searched line can see: indices of ``t`` (K,) that are finite
    and strictly inside the line, ``|t| < reach·(1 − margin)`` (and whose tolerance ``tol`` is
    finite, if given), sorted by ``t``. The one definition of the predicted-crossing filter;
    its callers keep their own margins (further lines 1e-9, polish lines 1e-6)."""
    ok = np.isfinite(t) & (np.abs(t) < reach * (1 - margin))
    if tol is not None:
        ok &= np.isfinite(tol)
    idx = np.flatnonzero(ok)
    return idx[np.argsort(t[idx])]


def explain_kinks(line: Line, kinks: np.ndarray, ns: NeuronSet, factor: float = EXPLAIN_FACTOR,
                  wide: bool = False, jumps: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
    # neuron's kink next to a known one's is not explained by it (else such a neuron is
    # found only by a line where the two kinks lie apart). Float64: every neuron within
    # reach of a kink still counts as seen (two crossings closer than the search resolution
    # make one kink).
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
