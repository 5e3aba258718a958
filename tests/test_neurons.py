"""engine.neurons: jumps between measured regions to neurons (two-region and joint), the
merge of one hyperplane seen twice (dedup), which kinks known hyperplanes explain, and the
predicted-crossing filter."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine import jacobians, lines, neurons
from distextract.engine.neurons import crossings_inside

from _planted import (
    CFG,
    _line,
    _planted_on_line,
    _measure_around_kinks,
)


@pytest.mark.parametrize("m", [1, 3])
def test_jumps_give_the_planted_neurons(m):
    d = 9
    line = _line(d, 21)
    planted_t = np.array([-3.0, -0.5, 0.8, 2.5])
    net = _planted_on_line(line, planted_t, m=m, seed=21)
    regions, edges, _t = _measure_around_kinks(net, line)
    assert all(r.status == "ok" for r in regions)
    ns = neurons.jumps_to_neurons(line, regions, edges)
    assert ns.size == planted_t.size
    norms = np.linalg.norm(net.W, axis=1)
    order = np.argsort(-(net.W @ line.u + net.b) / (net.W @ line.v))  # along the line
    for i, p in enumerate(order):
        w_true = net.W[p] / norms[p]
        sign = float(np.sign(ns.W[i] @ w_true))
        assert_allclose(ns.W[i], sign * w_true, rtol=0, atol=1e-9)
        assert_allclose(ns.b[i], sign * net.b[p] / norms[p], rtol=0, atol=1e-9)
        # output vector of the jump: a_i·||w_i|| (unchanged by the orientation flip)
        assert_allclose(ns.a[i], net.A[:, p] * norms[p], rtol=1e-9, atol=0)
        assert_allclose(ns.t[i], planted_t[i], rtol=0, atol=1e-8)
        if m > 1:
            assert ns.rank_residual[i] < 1e-9
    assert np.all(ns.err < 1e-9)


def _jacobian_chain(m, d, steps, sigma, seed, missed=None):
    """Measured Jacobians of ``steps + 1`` consecutive regions (rounding ``sigma`` per entry)
    whose jumps are the rank-one ``a wᵀ`` returned; ``missed=(i, size)`` adds a second,
    weaker rank-one term of ``size × sigma`` to jump ``i`` (a kink the search missed)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((steps, m))
    W = rng.standard_normal((steps, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    J = [rng.standard_normal((m, d))]
    for i in range(steps):
        step = np.outer(A[i], W[i])
        if missed is not None and i == missed[0]:
            step = step + missed[1] * sigma * np.outer(rng.standard_normal(m),
                                                       rng.standard_normal(d))
        J.append(J[-1] + step)
    by = {j: jacobians.RegionJacobian(
        region=j, t0=0.0, f0=np.zeros(m), J=Jj + sigma * rng.standard_normal((m, d)), h=1.0,
        status="ok", X=np.zeros((0, d)), Y=np.zeros((0, m)), precision=sigma)
        for j, Jj in enumerate(J)}
    return by, W


def _jump_errors(by, W, trust=None):
    """Direction errors of each jump's ``w``: from its two regions alone, and joint (NaN
    where :func:`neurons.joint_jumps` left a jump out). ``trust``: the error bound given
    for every two-region jump (default: one that trusts every joint jump)."""
    two, kept = {}, {}
    for j in range(W.shape[0]):
        w, av, rr, _norm, rest = neurons._rank_one(by[j + 1].J - by[j].J)
        spread = rest / (by[j].precision ** 2 + by[j + 1].precision ** 2)
        two[j] = w
        kept[j] = neurons.Jump(w, av, rr, np.inf if trust is None else trust, spread)
    joint = neurons.joint_jumps(by, kept)

    def err(w, j):
        return min(np.linalg.norm(w - W[j]), np.linalg.norm(w + W[j]))
    return (np.array([err(two[j], j) for j in range(W.shape[0])]),
            np.array([err(joint[j][0], j) if j in joint else np.nan
                      for j in range(W.shape[0])]))


@pytest.mark.parametrize("m, d, ratio", [(10, 128, 0.6), (10, 32, 0.8), (3, 32, 0.85)])
def test_joint_jumps_are_more_precise_than_two_region_jumps(m, d, ratio):
    by, W = _jacobian_chain(m, d, 100, 1e-8, seed=m + d)
    two, joint = _jump_errors(by, W)
    assert not np.any(np.isnan(joint))
    assert np.median(joint) < ratio * np.median(two)  # measured 0.49, 0.67, 0.76


def test_joint_jumps_with_one_output_are_the_two_region_jumps():
    by, W = _jacobian_chain(1, 16, 20, 1e-8, seed=1)
    _two, joint = _jump_errors(by, W)
    assert np.all(np.isnan(joint))  # nothing to share: jumps_to_neurons keeps its own


def test_joint_jumps_further_than_the_two_region_error_bound_are_not_taken():
    by, W = _jacobian_chain(10, 32, 30, 1e-8, seed=2)
    kept = {}
    for j in range(W.shape[0]):
        w, av, rr, _norm, rest = neurons._rank_one(by[j + 1].J - by[j].J)
        kept[j] = neurons.Jump(w, av, rr, np.inf, rest / (2 * 1e-8 ** 2))
    joint = neurons.joint_jumps(by, kept)
    moved = np.array([min(np.linalg.norm(joint[j][0] - kept[j].w),
                          np.linalg.norm(joint[j][0] + kept[j].w)) for j in sorted(joint)])
    bound = float(np.median(moved))
    kept = {j: replace(jump, err=bound / neurons.JOINT_TRUST) for j, jump in kept.items()}
    strict = neurons.joint_jumps(by, kept)
    assert set(strict) == {j for j, mv in zip(sorted(joint), moved) if mv <= bound}
    assert 0 < len(strict) < len(joint)


def test_a_kink_missed_inside_a_jump_does_not_spread_along_the_chain():
    # the missed term is 1,000x the rounding: taken for the neighbours' rounding it made
    # their directions 1,000x worse (2.8e-5 against 3.7e-8 from two regions alone)
    by, W = _jacobian_chain(10, 32, 100, 1e-8, seed=3, missed=(50, 1e3))
    two, joint = _jump_errors(by, W)
    assert np.isnan(joint[50])
    near = [j for j in range(40, 61) if j != 50]
    assert np.nanmax(joint[near]) <= np.max(two[near])


def _with_and_without_joint_jumps(net, monkeypatch, n_points):
    """rel L2 of the extraction of ``net`` with joint jumps and with two-region jumps only
    (asserting that both asked nearly the same rows: the estimates feed later choices, such
    as a pin's window, so the count may move by a few rows with the BLAS's thread count)."""
    res = dx.extract(net, seed=0)
    monkeypatch.setattr(neurons, "joint_jumps", lambda by, two: {})
    alone = dx.extract(net, seed=0)
    assert abs(res.queries - alone.queries) <= 0.002 * alone.queries
    return tuple(dx.evaluate_fidelity(r.model, net, n_points=n_points, seed=1).rel_l2
                 for r in (res, alone))


def test_joint_jumps_make_the_model_more_precise_with_the_same_rows(monkeypatch):
    err, err_alone = _with_and_without_joint_jumps(
        dx.targets.random_network(64, 128, 10, seed=0), monkeypatch, 4000)
    assert err < 0.7 * err_alone  # measured 1.8e-11 against 3.8e-11


def test_joint_jumps_leave_a_weak_neuron_as_precise_as_two_regions_do(monkeypatch):
    # random d=12, k=1000, m=3: taking every joint jump, one weak neuron went 3e-7 rad off
    # and the model came out 2x worse; JOINT_TRUST keeps that neuron's own jump
    err, err_alone = _with_and_without_joint_jumps(
        dx.targets.random_network(12, 1000, 3, seed=200), monkeypatch, 10_000)
    assert err <= 1.25 * err_alone  # measured 6.1e-10 against 7.6e-10 (every jump: 1.7e-9)


def test_dedup_merges_the_same_hyperplane_seen_with_opposite_orientation():
    d = 9
    line = _line(d, 31)
    net = _planted_on_line(line, [-1.0, 0.5, 2.0], m=2, seed=31)
    # a second line through the same hyperplanes, walked in the opposite direction
    flipped = lines.Line(index=1, u=line.u + 0.3 * line.basis()[:, 0], v=-line.v,
                         reach=line.reach, seed=line.seed + 1)
    seen = []
    for ln in (line, flipped):
        regions, edges, _ = _measure_around_kinks(net, ln)
        seen.append(neurons.jumps_to_neurons(ln, regions, edges))
    # the raw jump directions were oriented along each line's v: opposite for the two lines
    both = neurons.NeuronSet.concat(seen)
    assert both.size == 6
    merged = neurons.dedup(both, CFG.dedup_factor)
    assert merged.size == 3
    assert_allclose(np.sort(merged.count), [2, 2, 2])
    norms = np.linalg.norm(net.W, axis=1)
    for w, b in zip(merged.W, merged.b):
        p = int(np.argmax(np.abs(net.W @ w) / norms))
        sign = float(np.sign(w @ net.W[p]))
        assert_allclose(w, sign * net.W[p] / norms[p], rtol=0, atol=1e-9)
        assert_allclose(b, sign * net.b[p] / norms[p], rtol=0, atol=1e-9)


def test_dedup_never_merges_two_kinks_of_one_line():
    """A hyperplane crosses a line once: two measurements from distinct kinks of one line
    are two hyperplanes, however close (imprecise answers raise the merge ceiling past a
    near-parallel pair's separation); the same two from different lines are merged."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(8)
    w /= np.linalg.norm(w)
    W = np.stack([w, w + 1e-6 * rng.standard_normal(8)])
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    pair = neurons.NeuronSet(W, np.array([0.3, 0.3 + 1e-6]), np.ones((2, 1)),
                             np.full(2, 1e-3), np.zeros(2), np.array([0, 0]),
                             np.array([0.1, 0.1003]), np.ones(2, dtype=int))
    ceiling = 0.05  # the most an imprecise run allows
    assert neurons.dedup(pair, CFG.dedup_factor, ceiling).size == 2
    other_line = neurons.NeuronSet(pair.W, pair.b, pair.a, pair.err, pair.rank_residual,
                                   np.array([0, 1]), pair.t, pair.count)
    assert neurons.dedup(other_line, CFG.dedup_factor, ceiling).size == 1


def test_dedup_keeps_near_parallel_distinct_hyperplanes_apart():
    rng = np.random.default_rng(0)
    d = 12
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    u = rng.standard_normal(d)
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    w2 = np.cos(1e-5) * w + np.sin(1e-5) * u  # 1e-5 rad apart, same bias
    W = np.array([w, -w, w2])  # the first two: one hyperplane, opposite orientation
    b = np.array([0.2, -0.2, 0.2])
    W, b, _ = neurons.canonical(W, b)
    ns = neurons.NeuronSet(W=W, b=b, a=np.ones((3, 1)), err=np.full(3, 1e-11),
                           rank_residual=np.zeros(3), line=np.arange(3), t=np.zeros(3),
                           count=np.ones(3, dtype=int))
    merged = neurons.dedup(ns, CFG.dedup_factor)
    assert merged.size == 2
    assert sorted(merged.count.tolist()) == [1, 2]


def test_a_known_hyperplane_explains_one_kink_only():
    """Two kinks within one known hyperplane's tolerance: the closer is its crossing, the
    other a missing neuron's (k=8192 networks had such neurons found one per line)."""
    line = _line(6, seed=21)
    w = np.random.default_rng(22).standard_normal(6)
    w /= np.linalg.norm(w)
    t0 = 1.5
    b = -float(w @ (line.u + t0 * line.v))
    ns = neurons.NeuronSet(w[None, :], np.array([b]), np.ones((1, 1)), np.array([1e-4]),
                           np.zeros(1), np.zeros(1, dtype=int), np.array([t0]),
                           np.ones(1, dtype=int))
    _, spread, _ = neurons.predicted_crossings(line, ns)
    near = t0 + 0.5 * neurons.EXPLAIN_FACTOR * spread[0]  # inside its tolerance
    unexplained, unconfirmed, confirmed, by, _ = neurons.explain_kinks(
        line, np.array([t0 + 1e-12, near]), ns)
    assert list(unexplained) == [1]
    assert list(by) == [0, -1]
    assert confirmed[0] and unconfirmed.size == 0


def test_predicted_crossings_inside_a_line_are_filtered_and_sorted():
    t = np.array([3.0, -1.0, np.inf, 10.0, -10.0 * (1 - 1e-12), np.nan, 0.5])
    assert crossings_inside(t, 10.0, 1e-9).tolist() == [1, 6, 0]
    assert crossings_inside(t, 10.0, 1e-9, tol=np.array([1, np.inf, 1, 1, 1, 1, 1.0])
                            ).tolist() == [6, 0]
