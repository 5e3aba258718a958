"""Fidelity: relative L2, max error, argmax agreement and neuron matching."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import distextract as dx
from distextract import fidelity
from distextract.fidelity import evaluate_fidelity, match_neurons
from distextract.targets import hard_case, random_network

D, K, M = 10, 24, 3
N_POINTS = 3000


@pytest.fixture(scope="module")
def target() -> dx.ReluNetwork:
    return random_network(D, K, M, seed=7)


def _drop(net: dx.ReluNetwork, i: int) -> dx.ReluNetwork:
    keep = np.arange(net.hidden_dim) != i
    return dx.ReluNetwork(net.W[keep], net.b[keep], net.A[:, keep], net.c, net.L)


def _add(net: dx.ReluNetwork, w: np.ndarray, b: float, a: np.ndarray) -> dx.ReluNetwork:
    return dx.ReluNetwork(np.vstack([net.W, w]), np.append(net.b, b),
                          np.hstack([net.A, np.reshape(a, (-1, 1))]), net.c, net.L)


def _equivalent(net: dx.ReluNetwork, seed: int = 0) -> dx.ReluNetwork:
    """Same function: neurons permuted, rescaled (s > 0) and half of them flipped, with the
    flip's affine remainder a·(w·x + b) moved into L and c (a·relu(z) = a·relu(−z) + a·z)."""
    rng = np.random.default_rng(seed)
    k = net.hidden_dim
    scale = 10.0 ** rng.uniform(-2, 2, size=k)
    flip = rng.random(k) < 0.5
    sign = np.where(flip, -1.0, 1.0)
    W = net.W * (sign * scale)[:, None]
    b = net.b * sign * scale
    A = net.A / scale
    L = net.L + net.A[:, flip] @ net.W[flip]
    c = net.c + net.A[:, flip] @ net.b[flip]
    perm = rng.permutation(k)
    return dx.ReluNetwork(W[perm], b[perm], A[:, perm], c, L)


# ------------------------------------------------------------------------------- basic cases
def test_identical_model(target):
    rep = evaluate_fidelity(target, target, n_points=N_POINTS)
    assert rep.rel_l2 == 0.0 and rep.rel_mse == 0.0 and rep.max_abs_error == 0.0
    assert rep.argmax_agreement == 1.0
    assert rep.target_neurons == rep.live_neurons == rep.matched_neurons == K
    assert rep.spurious_neurons == 0 and rep.missed_neurons == 0 and rep.all_matched
    assert rep.model_neurons == K and rep.n_points == N_POINTS
    assert rep.target_rms > 0


def test_one_neuron_removed(target):
    rep = evaluate_fidelity(_drop(target, 5), target, n_points=N_POINTS)
    assert rep.live_neurons == K and rep.matched_neurons == K - 1 and rep.missed_neurons == 1
    assert rep.spurious_neurons == 0 and not rep.all_matched
    assert rep.rel_l2 > 1e-3
    assert_allclose(rep.rel_l2 ** 2, rep.rel_mse, rtol=1e-12)
    assert rep.max_abs_error > 0


def test_scaled_permuted_flipped_model_matches(target):
    model = _equivalent(target)
    assert not np.allclose(model.L, 0)
    rep = evaluate_fidelity(model, target, n_points=N_POINTS)
    assert rep.matched_neurons == rep.live_neurons == K and rep.spurious_neurons == 0
    assert rep.rel_l2 < 1e-13
    assert rep.argmax_agreement == 1.0


def test_spurious_neuron_counted(target):
    rng = np.random.default_rng(1)
    model = _add(target, rng.standard_normal(D) / np.sqrt(D), 0.3, rng.standard_normal(M))
    rep = evaluate_fidelity(model, target, n_points=N_POINTS)
    assert rep.spurious_neurons == 1 and rep.matched_neurons == K and rep.model_neurons == K + 1
    assert rep.rel_l2 > 1e-3


def test_negligible_or_cancelled_extra_neurons_are_not_spurious(target):
    rng = np.random.default_rng(2)
    w = rng.standard_normal(D)
    tiny = _add(target, w, 0.1, np.full(M, 1e-15))
    assert evaluate_fidelity(tiny, target, n_points=500).spurious_neurons == 0
    # Two model neurons on one new hyperplane whose output weights cancel: no kink, not spurious.
    a = rng.standard_normal(M)
    pair = _add(_add(target, w, 0.1, a), -2.0 * w, -0.2, -a / 2.0)
    rep = evaluate_fidelity(pair, target, n_points=500)
    assert rep.spurious_neurons == 0
    assert rep.rel_l2 > 1e-3  # the cancelling pair is affine (a·z), not zero


def test_duplicate_split_model_matches(target):
    """A target neuron split into two model neurons (either orientation) merges back."""
    model = _add(target, -3.0 * target.W[0], -3.0 * target.b[0], np.zeros(M))
    A = model.A.copy()
    A[:, 0] /= 2.0
    A[:, -1] = A[:, 0] / 3.0  # a/2·relu(z) + a/6·relu(−3z) = a·relu(z) − a/2·z
    L = model.L + 0.5 * np.outer(target.A[:, 0], target.W[0])
    c = model.c + 0.5 * target.A[:, 0] * target.b[0]
    model = dx.ReluNetwork(model.W, model.b, A, c, L)
    rep = evaluate_fidelity(model, target, n_points=N_POINTS)
    assert rep.rel_l2 < 1e-13
    assert rep.matched_neurons == K and rep.spurious_neurons == 0


@pytest.mark.parametrize(
    "bias_shift, angle, matched",
    [(1e-8, 0.0, True), (1e-5, 0.0, False), (0.0, 1e-5, True), (0.0, 1e-4, False)],
)
def test_matching_tolerances(target, bias_shift, angle, matched):
    """Bias within 1e-6 relative and |cos| > 1 - 1e-9 (an angle below about 4.5e-5 rad)."""
    i = 3
    w = target.W[i]
    r = np.linalg.norm(w)
    u = np.random.default_rng(3).standard_normal(D)
    u -= (u @ w) / r ** 2 * w
    u *= r / np.linalg.norm(u)
    w_new = np.cos(angle) * w + np.sin(angle) * u
    b_new = target.b[i] + bias_shift * r * max(1.0, abs(target.b[i]) / r)
    W = target.W.copy()
    b = target.b.copy()
    W[i], b[i] = w_new, b_new
    model = dx.ReluNetwork(W, b, target.A, target.c)
    m = match_neurons(model, target)
    assert m.matched == (K if matched else K - 1)
    assert m.spurious == (0 if matched else 1)


# ------------------------------------------------------------------------ live / hard cases
def test_live_counts_of_hard_cases():
    k = 48
    far = hard_case("far_hyperplanes", D, k, seed=0)
    assert evaluate_fidelity(far, far, n_points=200).live_neurons == k - k // 4
    dup = hard_case("duplicates", D, k, seed=0)
    rep = evaluate_fidelity(dup, dup, n_points=200)
    assert rep.live_neurons == rep.matched_neurons == k - len(dup.metadata["pairs"])
    canc = hard_case("cancelling", D, k, seed=0)
    kinds = canc.metadata["kinds"]
    n_full = sum(kind.startswith("full") for kind in kinds)
    rep = evaluate_fidelity(canc, canc, n_points=200)
    assert rep.live_neurons == k - 2 * n_full - (len(kinds) - n_full)
    assert rep.spurious_neurons == 0
    near = hard_case("near_parallel", D, k, seed=0)
    assert evaluate_fidelity(near, near, n_points=200).live_neurons == k  # all distinct
    norm = hard_case("norm_range", D, k, seed=0)
    rep = evaluate_fidelity(_equivalent(norm), norm, n_points=200)
    assert rep.live_neurons == rep.matched_neurons == k and rep.spurious_neurons == 0
    assert rep.rel_l2 < 1e-12


def test_far_neurons_found_or_not_do_not_count():
    net = hard_case("far_hyperplanes", D, 16, seed=1)
    far = net.metadata["neurons"]
    keep = np.setdiff1d(np.arange(16), far)
    model = dx.ReluNetwork(net.W[keep], net.b[keep], net.A[:, keep], net.c, net.L)
    rep = evaluate_fidelity(model, net, n_points=500)
    assert rep.matched_neurons == rep.live_neurons == 16 - len(far)


def test_live_distance_is_a_parameter():
    net = hard_case("far_hyperplanes", D, 16, seed=1)
    rep = evaluate_fidelity(net, net, n_points=100, live_distance=100.0)
    assert rep.live_neurons == 16


def test_zero_rows_are_ignored(target):
    W = target.W.copy()
    W[0] = 0.0
    zero = dx.ReluNetwork(W, target.b, target.A, target.c)
    m = match_neurons(zero, zero)
    assert m.live == K - 1 and m.target_group[0] == -1 and m.spurious == 0


def test_pair_search_matches_brute_force():
    """The |β|-window search finds exactly the pairs an all-pairs comparison finds."""
    rng = np.random.default_rng(0)
    d, n = 6, 700
    U = rng.standard_normal((n, d))
    beta = np.where(rng.random(n) < 0.3, 0.0, rng.standard_normal(n))
    # Perturbed copies around the tolerances, in either orientation.
    src = rng.integers(0, n, size=300)
    sign = rng.choice([-1.0, 1.0], size=300)
    noise = 10.0 ** rng.uniform(-12, -3, size=(300, 1))
    U2 = sign[:, None] * (U[src] + noise * rng.standard_normal((300, d)))
    beta2 = sign * (beta[src] + 10.0 ** rng.uniform(-9, -5, size=300))
    Ua = np.vstack([U, U2])
    ba = np.concatenate([beta, beta2])
    Ua /= np.linalg.norm(Ua, axis=1, keepdims=True)
    found = fidelity._pairs(Ua, ba, Ua[:n], ba[:n], fidelity.COS_TOL, fidelity.BIAS_RTOL)
    C = Ua @ Ua[:n].T
    s = np.sign(C)
    ok = (np.abs(C) > 1 - fidelity.COS_TOL) & (
        np.abs(ba[:, None] - s * ba[None, :n]) <= fidelity.BIAS_RTOL * np.maximum(1, np.abs(ba[:n])))
    expected = np.argwhere(ok)
    assert len(expected) > n + 50  # the perturbed copies produce both matches and misses
    assert len(expected) < n + 300
    key = lambda p: set(map(tuple, p.tolist()))
    assert key(found) == key(expected)


# ----------------------------------------------------------------------- targets of all kinds
def test_callable_and_oracle_targets(target):
    base = evaluate_fidelity(_drop(target, 0), target, n_points=500)
    rep = evaluate_fidelity(_drop(target, 0), target.predict, n_points=500)
    assert rep.rel_l2 == base.rel_l2 and rep.max_abs_error == base.max_abs_error
    assert rep.target_neurons is rep.live_neurons is rep.matched_neurons is None
    assert rep.spurious_neurons is None and rep.missed_neurons is None and rep.all_matched is None
    counting = dx.CountingOracle(dx.NetworkOracle(target))
    rep = evaluate_fidelity(_drop(target, 0), counting, n_points=500, batch=64)
    assert rep.rel_l2 == pytest.approx(base.rel_l2, rel=1e-12)
    assert counting.queries == 500


def test_one_output_callable_returning_vector():
    net = random_network(4, 5, 1, seed=0)
    rep = evaluate_fidelity(net, lambda X: net.predict(X)[:, 0], n_points=100)
    assert rep.rel_l2 == 0.0 and rep.argmax_agreement is None


def test_points_do_not_depend_on_batch(target):
    model = _drop(target, 2)
    a = evaluate_fidelity(model, target, n_points=1000, seed=4)
    b = evaluate_fidelity(model, target, n_points=1000, seed=4, batch=37)
    assert_allclose(a.rel_l2, b.rel_l2, rtol=1e-12)
    assert a.max_abs_error == b.max_abs_error and a.argmax_agreement == b.argmax_agreement
    c = evaluate_fidelity(model, target, n_points=1000, seed=5)
    assert c.rel_l2 != a.rel_l2


def test_argmax_agreement_partial(target):
    A = target.A.copy()
    A[[0, 1]] = A[[1, 0]]
    c = target.c.copy()
    c[[0, 1]] = c[[1, 0]]
    swapped = dx.ReluNetwork(target.W, target.b, A, c)
    rep = evaluate_fidelity(swapped, target, n_points=1000)
    assert 0.0 < rep.argmax_agreement < 1.0
    assert rep.matched_neurons == K  # same hyperplanes, different output layer


def test_zero_target():
    zero = dx.ReluNetwork(np.ones((1, 2)), [0.0], [[0.0]], [0.0])
    assert evaluate_fidelity(zero, zero, n_points=10).rel_l2 == 0.0
    other = dx.ReluNetwork(np.ones((1, 2)), [0.0], [[1.0]], [0.0])
    assert evaluate_fidelity(other, zero, n_points=10).rel_l2 == float("inf")


def test_as_dict_is_json(target):
    rep = evaluate_fidelity(_drop(target, 0), target, n_points=200)
    out = json.loads(json.dumps(rep.as_dict()))
    assert out["missed_neurons"] == 1 and out["live_neurons"] == K
    assert set(out) >= {"rel_l2", "rel_mse", "max_abs_error", "argmax_agreement",
                        "matched_neurons", "spurious_neurons", "n_points"}


# ------------------------------------------------------------------------------ bad input
def test_bad_input_messages(target):
    with pytest.raises(dx.ConfigError, match="model must be a ReluNetwork, got function"):
        evaluate_fidelity(lambda X: X, target)
    other_d = random_network(D + 1, 4, M)
    with pytest.raises(dx.ConfigError,
                       match=f"model has input_dim={D + 1} but target has input_dim={D}"):
        evaluate_fidelity(other_d, target)
    other_m = random_network(D, 4, M + 1)
    with pytest.raises(dx.ConfigError,
                       match=f"model has output_dim={M + 1} but target has output_dim={M}"):
        evaluate_fidelity(other_m, target)
    with pytest.raises(dx.ConfigError,
                       match=r"target returned shape \(10, 2\) for 10 rows; expected \(10, 3\)"):
        evaluate_fidelity(target, lambda X: np.zeros((len(X), 2)), n_points=10)
    with pytest.raises(dx.ConfigError, match="target returned NaN or Inf"):
        evaluate_fidelity(target, lambda X: np.full((len(X), M), np.nan), n_points=10)
    with pytest.raises(dx.ConfigError, match="target must be a ReluNetwork, an Oracle or a "
                                             "callable"):
        evaluate_fidelity(target, 3.0)
    with pytest.raises(dx.ConfigError, match="n_points must be >= 1, got 0"):
        evaluate_fidelity(target, target, n_points=0)
    with pytest.raises(dx.ConfigError, match="batch must be >= 1, got 0"):
        evaluate_fidelity(target, target, batch=0)
    with pytest.raises(dx.ConfigError, match=f"model has input_dim={D + 1} but target has"):
        match_neurons(other_d, target)
    with pytest.raises(dx.ConfigError, match="target must be a ReluNetwork, got function"):
        match_neurons(target, lambda X: X)


def test_report_is_frozen(target):
    rep = evaluate_fidelity(target, target, n_points=10)
    with pytest.raises(AttributeError):
        rep.rel_l2 = 1.0  # type: ignore[misc]
    assert_array_equal(match_neurons(target, target).pairs[:, 0],
                       match_neurons(target, target).pairs[:, 1])


def test_public_names():
    assert dx.evaluate_fidelity is evaluate_fidelity and dx.FidelityReport is fidelity.FidelityReport
    assert dx.targets.random_network is random_network
    assert {"FidelityReport", "evaluate_fidelity", "targets"} <= set(dx.__all__)
    assert dx.__all__ == sorted(dx.__all__)
