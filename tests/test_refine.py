"""engine.refine: Gauss-Newton refinement of every parameter over Gaussian rows."""

from __future__ import annotations

import numpy as np
import pytest

import distextract as dx
from distextract.engine import refine, solve


def _perturbed(net: dx.ReluNetwork, scale: float, seed: int) -> dx.ReluNetwork:
    rng = np.random.default_rng(seed)

    def jiggle(M):
        return M * (1.0 + scale * rng.standard_normal(M.shape))

    return dx.ReluNetwork(jiggle(net.W), jiggle(net.b), jiggle(net.A), jiggle(net.c),
                          jiggle(net.L))


@pytest.mark.parametrize("rounding", [None, np.float32])
def test_refine_recovers_every_parameter(rounding):
    """Gauss-Newton over Gaussian rows takes a model whose every parameter is off by 1e-3
    (relative) to the answers' own precision: exact answers to ~1e-10, float32 answers to
    about their rounding; the weighted misfit ends near one answer error per answer."""
    net = dx.targets.random_network(8, 12, 3, seed=4)
    net = dx.ReluNetwork(net.W, net.b, net.A, net.c, 0.3 * np.ones((3, 8)))
    start = _perturbed(net, 1e-3, seed=5)
    X = np.random.default_rng(6).standard_normal((400, 8))
    Y = net.predict(X)
    noise = 1e-12
    if rounding is not None:
        Y = Y.astype(rounding).astype(np.float64)
        noise = float(np.finfo(rounding).eps)
    sigma = noise * (np.max(np.abs(Y), axis=1) + 1.0)
    res = refine.refine_network(start, X, Y, sigma)
    Xt = np.random.default_rng(7).standard_normal((2000, 8))
    before = solve.relative_error(start, Xt, net.predict(Xt))[0]
    after = solve.relative_error(res.model, Xt, net.predict(Xt))[0]
    assert before > 1e-4
    assert after < (1e-9 if rounding is None else 1e-6), (before, after)
    assert res.steps >= 1 and res.chi2 < 1e-6 * res.chi2_start
    assert res.chi2 < (1e3 if rounding is None else 10.0)


def test_refine_silences_a_spurious_neuron():
    """A neuron the target does not have gets an output vector at the noise: the
    coordinator's pruning then finds it without effect."""
    net = dx.targets.random_network(6, 8, 4, seed=8)
    rng = np.random.default_rng(9)
    extra_w = rng.standard_normal((1, 6))
    start = _perturbed(dx.ReluNetwork(np.vstack([net.W, extra_w]), np.append(net.b, 0.2),
                                      np.hstack([net.A, 0.05 * np.ones((4, 1))]), net.c,
                                      net.L), 1e-4, seed=10)
    X = rng.standard_normal((600, 6))
    Y = net.predict(X)
    res = refine.refine_network(start, X, Y, np.full(X.shape[0], 1e-12))
    strength = np.linalg.norm(res.model.A, axis=0) * np.linalg.norm(res.model.W, axis=1)
    assert strength[-1] < 1e-8 * np.median(strength[:-1]), strength


def test_refine_rejects_a_nonpositive_error():
    net = dx.targets.random_network(4, 3, 1, seed=1)
    X = np.ones((10, 4))
    with pytest.raises(ValueError, match="positive standard error"):
        refine.refine_network(net, X, net.predict(X), np.zeros(10))
