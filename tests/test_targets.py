"""Targets: each generator has the property it claims."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import distextract as dx
from distextract import targets
from distextract.targets import HARD_CASES, hard_case, random_network

D, K, M = 12, 64, 2


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between two vectors, accurate for tiny angles (no arccos of ~1)."""
    u = u / np.linalg.norm(u)
    v = v / np.linalg.norm(v)
    along = u @ v
    return float(np.arctan2(np.linalg.norm(v - along * u), along))


def _gaussian(n: int, d: int, seed: int = 123) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


# ---------------------------------------------------------------------------- random network
def test_random_network_shapes_scales_and_reproducibility():
    net = random_network(64, 200, 3, seed=5)
    assert (net.input_dim, net.hidden_dim, net.output_dim) == (64, 200, 3)
    norms = np.linalg.norm(net.W, axis=1)
    assert 0.9 < norms.mean() < 1.1
    distance = np.abs(net.b) / norms
    assert np.median(distance) < 1.0 and distance.max() < 4.0  # hyperplanes in the bulk
    assert_array_equal(net.L, 0.0)
    again = random_network(64, 200, 3, seed=5)
    assert_array_equal(net.W, again.W)
    assert_array_equal(net.A, again.A)
    assert not np.array_equal(net.W, random_network(64, 200, 3, seed=6).W)
    assert net.metadata == {"generator": "random_network", "seed": 5, "skip": False}


def test_random_network_skip_term():
    net = random_network(8, 4, 2, seed=0, skip=True)
    assert net.L.shape == (2, 8)
    assert np.all(net.L != 0)
    # The skip term is the same network's linear part: same W, b, A, c as without it.
    plain = random_network(8, 4, 2, seed=0)
    assert_array_equal(net.W, plain.W)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d": 0, "k": 4}, "d must be >= 1, got 0"),
        ({"d": 3, "k": -1}, "k must be >= 1, got -1"),
        ({"d": 3, "k": 2, "m": 1.5}, "m must be an integer, got 1.5"),
        ({"d": 3, "k": 2, "seed": np.random.default_rng(0)}, "seed must be a non-negative int"),
        ({"d": 3, "k": 2, "seed": -1}, "seed must be a non-negative int .*, got -1"),
    ],
)
def test_random_network_bad_arguments(kwargs, message):
    with pytest.raises(dx.ConfigError, match=message):
        random_network(**kwargs)


# -------------------------------------------------------------------------------- hard cases
def test_hard_case_names():
    assert HARD_CASES == ("wide", "tiny_output", "far_hyperplanes", "near_parallel",
                          "duplicates", "cancelling", "zero_bias", "norm_range", "sparse", "skip")
    with pytest.raises(dx.ConfigError, match="unknown hard case 'nope'; expected one of wide, "):
        hard_case("nope", 3, 4)


@pytest.mark.parametrize("name", HARD_CASES)
def test_hard_case_is_reproducible_and_saves(name, tmp_path):
    net = hard_case(name, D, K, M, seed=3)
    assert (net.input_dim, net.hidden_dim, net.output_dim) == (D, K, M)
    assert net.metadata["case"] == name
    assert_array_equal(net.W, hard_case(name, D, K, M, seed=3).W)
    net.save(tmp_path / "net.arrow")
    back = dx.ReluNetwork.load(tmp_path / "net.arrow")
    assert back.metadata == net.metadata
    assert_array_equal(back.b, net.b)


def test_wide_is_the_random_network():
    net = hard_case("wide", 4, 64, seed=2)
    base = random_network(4, 64, seed=2)
    assert_array_equal(net.W, base.W)
    assert_array_equal(net.A, base.A)


def test_tiny_output():
    net = hard_case("tiny_output", D, K, M, seed=1)
    base = random_network(D, K, M, seed=1)
    tiny = np.array(net.metadata["neurons"])
    assert len(tiny) == K // 4
    ratio = net.A[:, tiny] / base.A[:, tiny]
    assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape))  # one factor per neuron
    assert np.all((ratio >= 1e-9) & (ratio <= 1e-6))
    others = np.setdiff1d(np.arange(K), tiny)
    assert_array_equal(net.A[:, others], base.A[:, others])


def test_far_hyperplanes_are_constant_in_the_bulk():
    net = hard_case("far_hyperplanes", D, K, M, seed=1)
    far = np.array(net.metadata["neurons"])
    distance = net.b[far] / np.linalg.norm(net.W[far], axis=1)
    assert np.all((np.abs(distance) >= 10) & (np.abs(distance) <= 50))
    assert (distance > 0).any() and (distance < 0).any()  # always-on and always-off ones
    Z = net.hidden(_gaussian(10_000, D))[:, far]
    assert np.all((Z > 0).all(axis=0) | (Z < 0).all(axis=0))


def test_near_parallel_pairs():
    net = hard_case("near_parallel", D, K, M, seed=1)
    pairs = np.array(net.metadata["pairs"])
    assert len(pairs) == K // 8
    for (i, j), recorded in zip(pairs, net.metadata["angles"]):
        theta = _angle(net.W[i], net.W[j])
        assert 1e-5 <= theta <= 1e-3
        assert_allclose(theta, recorded, rtol=1e-6)
        gap = abs(net.b[i] / np.linalg.norm(net.W[i]) - net.b[j] / np.linalg.norm(net.W[j]))
        assert 1e-3 * (1 - 1e-9) <= gap <= 1.0 + 1e-9


def test_near_parallel_needs_two_inputs():
    with pytest.raises(dx.ConfigError, match="'near_parallel' needs d >= 2 inputs, got d=1"):
        hard_case("near_parallel", 1, 8)


@pytest.mark.parametrize("name", ["near_parallel", "duplicates", "cancelling"])
def test_pair_cases_need_two_neurons(name):
    with pytest.raises(dx.ConfigError, match=f"{name!r} plants neuron pairs and needs k >= 2"):
        hard_case(name, 3, 1)


def test_duplicates_share_hyperplanes():
    net = hard_case("duplicates", D, K, M, seed=4)
    pairs = net.metadata["pairs"]
    kinds = net.metadata["kinds"]
    assert set(kinds) == {"same", "scaled", "opposite"}
    for (i, j), kind in zip(pairs, kinds):
        scale = np.linalg.norm(net.W[j]) / np.linalg.norm(net.W[i])
        sign = -1.0 if kind == "opposite" else 1.0
        assert_allclose(net.W[j], sign * scale * net.W[i], rtol=1e-14, atol=1e-15)
        assert_allclose(net.b[j], sign * scale * net.b[i], rtol=1e-14, atol=1e-15)
        if kind == "same":
            assert_array_equal(net.W[j], net.W[i])
            assert net.b[j] == net.b[i]
        else:
            assert 0.1 <= scale <= 10
        assert not np.allclose(net.A[:, j], 0)  # output weights stay independent


def test_cancelling_pairs():
    net = hard_case("cancelling", D, K, M, seed=4)
    X = _gaussian(2000, D)
    H = np.maximum(net.hidden(X), 0.0)
    kinds = net.metadata["kinds"]
    assert set(kinds) == {"full_same", "full_opposite", "partial"}
    for (i, j), kind in zip(net.metadata["pairs"], kinds):
        r_i, r_j = np.linalg.norm(net.W[i]), np.linalg.norm(net.W[j])
        merged = net.A[:, i] * r_i + net.A[:, j] * r_j
        part = np.outer(H[:, i], net.A[:, i]) + np.outer(H[:, j], net.A[:, j])  # (n, m)
        if kind == "full_same":
            assert_allclose(merged, 0.0, atol=1e-15)
            assert_allclose(part, 0.0, atol=1e-14)
        elif kind == "full_opposite":
            assert_allclose(merged, 0.0, atol=1e-15)
            affine = np.outer(X @ net.W[i] + net.b[i], net.A[:, i])  # a·relu(z) − a·relu(−z) = a·z
            assert_allclose(part, affine, atol=1e-13)
        else:
            ratio = np.linalg.norm(merged) / np.linalg.norm(net.A[:, i] * r_i)
            assert 0.1 - 1e-12 <= ratio <= 0.5 + 1e-12


def test_zero_bias():
    net = hard_case("zero_bias", D, K, M, seed=0)
    assert_array_equal(net.b, 0.0)
    assert np.all(net.W != 0)


def test_norm_range_spans_six_orders():
    net = hard_case("norm_range", D, K, M, seed=0)
    base = random_network(D, K, M, seed=0)
    norms = np.linalg.norm(net.W, axis=1)
    assert_allclose([norms.min(), norms.max()], [1e-3, 1e3], rtol=1e-12)
    assert np.all((norms >= 1e-3 * (1 - 1e-12)) & (norms <= 1e3 * (1 + 1e-12)))
    # Only the scale changed: directions and hyperplane distances are the random network's.
    base_norms = np.linalg.norm(base.W, axis=1)
    assert_allclose(net.W / norms[:, None], base.W / base_norms[:, None], rtol=1e-12, atol=1e-15)
    assert_allclose(net.b / norms, base.b / base_norms, rtol=1e-12, atol=1e-15)
    assert_array_equal(net.A, base.A)


def test_sparse_weights():
    net = hard_case("sparse", 50, K, M, seed=0)
    nnz = (net.W != 0).sum(axis=1)
    assert nnz.min() == 1 and nnz.max() == 3
    base = random_network(50, K, M, seed=0)
    assert_allclose(np.linalg.norm(net.W, axis=1), np.linalg.norm(base.W, axis=1), rtol=1e-12)
    assert_array_equal(net.b, base.b)
    assert hard_case("sparse", 2, 8).W.shape == (8, 2)  # nnz capped at d


def test_skip_case():
    net = hard_case("skip", D, K, M, seed=0)
    assert net.L.shape == (M, D) and np.all(net.L != 0)


# ---------------------------------------------------------------------------- digits network
@pytest.fixture(scope="module")
def digits():
    return targets.digits_network(hidden=32, seed=0)


def test_digits_network_reproduces_sklearn(digits):
    net, X_test, y_test = digits
    fit = targets._fit_digits(32, 0)
    clf = fit.classifier
    assert (net.input_dim, net.hidden_dim, net.output_dim) == (64, 32, 10)
    assert X_test.shape == (450, 64) and y_test.shape == (450,)
    logits = net.predict(X_test)
    assert_array_equal(np.argmax(logits, axis=1), clf.predict(X_test))
    # Softmax is shift-invariant: log-probability differences are logit differences.
    logp = np.log(clf.predict_proba(X_test))
    assert_allclose(logp - logp[:, :1], logits - logits[:, :1], rtol=1e-10, atol=1e-10)
    assert np.mean(np.argmax(logits, axis=1) == y_test) > 0.9
    assert_allclose(X_test.mean(axis=0), 0.0, atol=0.2)  # standardised inputs
    assert net.metadata["input"] == "standardised"


def _sklearn_fit(task, hidden, seed):
    """The estimator trained_network documents, trained here on the same data."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    X, y = targets._trained_task_data(task, seed)
    kind = MLPClassifier if task == "classification" else MLPRegressor
    return kind(hidden_layer_sizes=(hidden,), max_iter=2000, random_state=seed).fit(X, y), X


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("task", sorted(targets.TRAINED_TASKS))
def test_trained_network_computes_what_sklearn_trained(task):
    net = targets.trained_network(task, hidden=8, seed=3)
    d, m = targets.TRAINED_TASKS[task]
    assert (net.input_dim, net.hidden_dim, net.output_dim) == (d, 8, m)
    est, X = _sklearn_fit(task, 8, 3)
    out = net.predict(X[:200])
    if task == "classification":
        assert_array_equal(np.argmax(out, axis=1), est.predict(X[:200]))
        logp = np.log(est.predict_proba(X[:200]))
        assert_allclose(logp - logp[:, :1], out - out[:, :1], rtol=1e-9, atol=1e-9)
    else:
        assert_allclose(out[:, 0], est.predict(X[:200]), rtol=1e-12, atol=1e-12)
    with pytest.raises(dx.ConfigError, match="task must be one of"):
        targets.trained_network("mnist")


def test_digits_network_returns_copies():
    X_test = targets.digits_network(hidden=32, seed=0)[1]
    X_test[:] = 0.0
    again = targets.digits_network(hidden=32, seed=0)[1]
    assert not np.all(again == 0.0)


# ------------------------------------------------------------------------- non-ReLU targets
@pytest.mark.parametrize(
    "make",
    [
        lambda: targets.gelu_network(5, 7, 3, seed=1),
        lambda: targets.softplus_network(5, 7, 3, seed=1, beta=4.0),
        lambda: targets.two_layer_relu_network(5, 6, 7, 3, seed=1),
    ],
    ids=["gelu", "softplus", "two_layer"],
)
def test_non_relu_targets_are_deterministic_callables(make):
    target = make()
    assert (target.input_dim, target.output_dim) == (5, 3)
    X = _gaussian(11, 5)
    Y = target.predict(X)
    assert Y.shape == (11, 3)
    assert_array_equal(target(X), Y)
    assert_array_equal(make().predict(X), Y)
    with pytest.raises(dx.ConfigError, match=r"X must have 5 columns, got shape \(2, 4\)"):
        target.predict(np.zeros((2, 4)))
    oracle = dx.as_oracle(target, input_dim=5)
    assert_array_equal(oracle.query(X), Y)


def _second_difference(target, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(d), rng.standard_normal(d)
    t = np.linspace(-3, 3, 601)
    y = target.predict(u + t[:, None] * v)[:, 0]
    return np.abs(np.diff(y, 2))


def test_smooth_targets_have_no_kinks_but_relu_does():
    relu = random_network(5, 7, seed=1)
    d2_relu = _second_difference(relu, 5)
    # Piecewise linear: second differences vanish except at a few kinks.
    assert np.mean(d2_relu < 1e-12) > 0.9
    for smooth in (targets.gelu_network(5, 7, seed=1), targets.softplus_network(5, 7, seed=1)):
        assert np.mean(_second_difference(smooth, 5) < 1e-12) < 0.5


def test_softplus_tends_to_relu():
    relu = random_network(5, 7, 2, seed=1)
    sharp = targets.softplus_network(5, 7, 2, seed=1, beta=1e4)
    X = _gaussian(100, 5)
    assert_allclose(sharp.predict(X), relu.predict(X), atol=1e-3)


def test_softplus_bad_beta():
    with pytest.raises(dx.ConfigError, match="beta must be a positive finite number, got 0"):
        targets.softplus_network(3, 2, beta=0)


def test_two_layer_network_is_piecewise_linear_with_many_kinks():
    net = targets.two_layer_relu_network(5, 16, 16, seed=2)
    d2 = _second_difference(net, 5)
    assert np.mean(d2 < 1e-12) > 0.8  # piecewise linear ...
    assert np.sum(d2 > 1e-9) >= 3  # ... with kinks


def test_noisy_oracle_is_not_deterministic():
    net = random_network(4, 6, 2, seed=0)
    noisy = targets.noisy_oracle(net, sigma=1e-3, seed=1)
    assert (noisy.input_dim, noisy.output_dim) == (4, 2)
    X = np.tile(_gaussian(1, 4), (2000, 1))
    Y1, Y2 = noisy(X), noisy.predict(X)
    assert not np.array_equal(Y1, Y2)
    assert_allclose((Y1 - net.predict(X)).std(), 1e-3, rtol=0.1)
    assert_allclose(targets.noisy_oracle(net, 1e-3, seed=1)(X), Y1)  # reproducible stream


@pytest.mark.parametrize(
    "network, sigma, message",
    [
        (random_network(2, 2), 0.0, "sigma must be a positive finite number, got 0.0"),
        (random_network(2, 2), float("nan"), "sigma must be a positive finite number"),
        (lambda X: X, 1.0, "network must have predict, input_dim and output_dim"),
    ],
)
def test_noisy_oracle_bad_arguments(network, sigma, message):
    with pytest.raises(dx.ConfigError, match=message):
        targets.noisy_oracle(network, sigma)
