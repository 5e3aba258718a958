"""Outputs that are not float64 logits, and oracles that are not one-hidden-layer ReLU
networks: a verdict or an honest flag, never a model presented as good."""

import numpy as np
import pytest

import distextract as dx
from distextract._oracle import NetworkOracle


def test_softmax_probabilities_are_matched():
    net = dx.targets.random_network(16, 24, 3, seed=2)
    res = dx.extract(NetworkOracle(net, output="softmax"), seed=0, output="softmax")
    X = np.random.default_rng(7).standard_normal((5000, 16))
    P = NetworkOracle(net, output="softmax").query(X)
    Q = res.model.predict_proba(X)
    assert res.certified
    assert np.max(np.abs(P - Q)) <= 1e-6
    assert np.array_equal(P.argmax(axis=1), Q.argmax(axis=1))
    assert res.model.metadata["output"] == "softmax"


def test_softmax_needs_two_classes():
    net = dx.targets.random_network(6, 4, 1, seed=0)
    with pytest.raises(dx.OracleShapeError, match="m >= 2 probabilities"):
        dx.extract(net, output="softmax")


def test_softmax_underflow_is_named():
    def saturated(X):
        P = np.zeros((X.shape[0], 2))
        P[:, 0] = 1.0
        return P

    with pytest.raises(dx.OracleValueError, match="underflowed to 0"):
        dx.extract(saturated, input_dim=4, output="softmax")


def test_unknown_output_kind():
    with pytest.raises(dx.ConfigError, match="output must be 'auto', 'logits' or 'softmax'"):
        dx.extract(dx.targets.random_network(4, 4, 1), output="probabilities")


@pytest.mark.parametrize("make", [
    lambda: dx.targets.gelu_network(16, 32, 3, seed=0),
    lambda: dx.targets.softplus_network(16, 32, 3, seed=0),
])
def test_smooth_activation_is_refused_by_the_probe(make):
    with pytest.raises(dx.TargetMismatch, match="no sharp kinks") as info:
        dx.extract(make(), input_dim=16, seed=0)
    # the opening request alone: the probe (29 rows) and the first line's 16 segment ends
    # with their slope points (49), sent together; no search, no validation points
    assert info.value.queries == 29 + 49


@pytest.mark.parametrize("d, h, m", [(16, 16, 3), (64, 64, 10)])
def test_two_hidden_layers_are_refused(d, h, m):
    target = dx.targets.two_layer_relu_network(d, h, h, m, seed=0)
    with pytest.raises(dx.TargetMismatch, match="kinks do not lie on fixed hyperplanes") as info:
        dx.extract(target, input_dim=d, seed=0)
    assert info.value.queries <= 30 * h * (d + 1)


def test_two_hidden_layers_flagged_when_asked():
    target = dx.targets.two_layer_relu_network(16, 16, 16, 3, seed=0)
    res = dx.extract(target, input_dim=16, seed=0, on_mismatch="flag")
    assert not res.certified
    assert res.stop_reason == "target_mismatch"
    assert "fixed hyperplanes" in res.report["verdict"]


def test_non_deterministic_oracle_is_refused_even_when_tiny():
    noisy = dx.targets.noisy_oracle(dx.targets.random_network(8, 8, 2, seed=0), 1e-9, seed=0)
    with pytest.raises(dx.NonDeterministicOracle, match="same input twice") as info:
        dx.extract(noisy, input_dim=8, seed=0)
    assert isinstance(info.value, dx.TargetMismatch)


def test_precision_is_measured_and_reported():
    net = dx.targets.random_network(16, 16, 2, seed=1)
    r64 = dx.extract(net, seed=0)
    r32 = dx.extract(NetworkOracle(net, output="float32"), seed=0, on_mismatch="flag")
    n64 = r64.report["precision"]["relative_noise"]
    n32 = r32.report["precision"]["relative_noise"]
    assert n64 < 1e-14
    assert 1e-9 < n32 < 1e-6
    # an imprecise oracle is never presented as certified beyond what it supports
    if r32.certified:
        assert dx.evaluate_fidelity(r32.model, net).rel_l2 <= 1e5 * n32


def test_probabilities_with_output_logits_forced_are_named_in_the_verdict():
    """Softmax answers are smooth: with output='logits' forced the probe refuses them, and
    says why and what to pass (not 'a smooth activation'). (output='auto' reads them as
    probabilities: test_detect.py.)"""
    from distextract._oracle import NetworkOracle

    net = dx.targets.random_network(16, 32, 3, seed=3)
    with pytest.raises(dx.TargetMismatch, match="output='softmax'") as info:
        dx.extract(NetworkOracle(net, output="softmax"), input_dim=16, seed=0, output="logits")
    assert "are probabilities" in str(info.value)
