"""engine.precision: the probe of the oracle's answers and the frozen :class:`Precision`
it measures, against real networks behind real oracles."""

from __future__ import annotations

import numpy as np
import pytest

import distextract as dx
from distextract._errors import NonDeterministicOracle, TargetMismatch
from distextract._oracle import NetworkOracle
from distextract.engine.precision import Precision, measure_precision, probe_points
from distextract.engine.settings import ProbeSettings


def _probe(oracle, seed=0, d=8):
    X = probe_points(np.random.default_rng(seed), d, 1.0)
    return measure_precision(oracle(X), queries=X.shape[0])


def test_probe_points_shape_and_the_repeat_one_ulp_away():
    X = probe_points(np.random.default_rng(0), 5, 2.0)
    assert X.shape == ((2 * 4 - 1) * 4 + 1, 5)  # the default probe: 4 lines of 4 points
    X = probe_points(np.random.default_rng(0), 5, 2.0, ProbeSettings(lines=3, points=5))
    assert X.shape == ((2 * 5 - 1) * 3 + 1, 5)
    assert np.all(X[-1] == np.nextafter(X[0], np.inf))


def test_float64_answers_are_precise_and_float32_ones_imprecise():
    net = dx.targets.random_network(8, 16, 2, seed=0)
    p64 = _probe(net.predict)
    p32 = _probe(NetworkOracle(net, output="float32").query)
    assert not p64.imprecise and p64.noise < 1e-12 and not p64.absolute
    assert p32.imprecise and p32.noise >= 2.0 ** -24 > ProbeSettings().imprecise_noise


def test_answers_rounded_to_decimals_have_an_absolute_error():
    net = dx.targets.random_network(8, 16, 2, seed=0)
    p = _probe(NetworkOracle(net, output="round:4").query)
    assert p.absolute and p.imprecise
    assert p.noise * p.fref >= 1e-4 * (1 - 1e-9)  # at least the quantum


def test_a_random_oracle_and_a_smooth_one_are_named():
    net = dx.targets.random_network(8, 16, 1, seed=0)
    with pytest.raises(NonDeterministicOracle, match="same input twice"):
        _probe(dx.targets.noisy_oracle(net, 1e-6, seed=0).predict)
    with pytest.raises(TargetMismatch, match="smooth activation"):
        _probe(dx.targets.gelu_network(8, 16, 1, seed=0).predict)


def test_precision_is_frozen():
    with pytest.raises(AttributeError):
        Precision().noise = 1.0
