"""engine.solve: the output layer from the hidden layer, in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine import neurons, solve

from _planted import (
    _true_jacobian,
)


@pytest.mark.parametrize("flops", [None, 1.0])
def test_affine_from_jacobians_is_exact_over_neuron_blocks_and_few_regions(flops, monkeypatch):
    """L and c from measured region Jacobians: exact for the true hidden layer, with the
    neurons summed in blocks (k > NEURON_BLOCK) and, when the work cap allows only
    JACOBIAN_MIN_REGIONS of the regions, from those."""
    if flops is not None:
        monkeypatch.setattr(solve, "JACOBIAN_FLOPS", flops)
    net = dx.targets.random_network(6, solve.NEURON_BLOCK + 500, 2, seed=7, skip=True)
    ns = neurons.NeuronSet(net.W, net.b, net.A.T, np.full(net.hidden_dim, 1e-12),
                           np.zeros(net.hidden_dim), np.zeros(net.hidden_dim, dtype=int),
                           np.zeros(net.hidden_dim), np.ones(net.hidden_dim, dtype=int))
    X0 = np.random.default_rng(2).standard_normal((300, 6))
    J = np.stack([_true_jacobian(net, x) for x in X0])
    got = solve.solve_affine_from_jacobians(ns, X0, net.predict(X0), J)
    assert_allclose(got.L, net.L, rtol=0, atol=1e-10)
    assert_allclose(got.c, net.c, rtol=0, atol=1e-10)


@pytest.mark.parametrize("m", [1, 3])
def test_solve_full_recovers_output_layer_from_the_true_hidden_layer(m):
    d, k = 10, 14
    net = dx.targets.hard_case("skip", d, k, m, seed=41)
    norms = np.linalg.norm(net.W, axis=1)
    W, b, sign = neurons.canonical(net.W / norms[:, None], net.b / norms)
    ns = neurons.NeuronSet(W=W, b=b, a=np.zeros((k, m)), err=np.full(k, 1e-12),
                           rank_residual=np.zeros(k), line=np.zeros(k, dtype=int),
                           t=np.zeros(k), count=np.ones(k, dtype=int))
    X = np.random.default_rng(41).standard_normal((4 * (k + d + 1), d))
    model = solve.solve_full(ns, X, net.predict(X))
    # a·relu(z) = a·relu(-z) + a·z: a flipped neuron keeps its output weight, the affine
    # difference moves into L and c
    A_exp = net.A * norms[None, :]
    flip = sign < 0
    L_exp = net.L + A_exp[:, flip] @ (sign[flip, None] * W[flip])
    c_exp = net.c + A_exp[:, flip] @ (sign[flip] * b[flip])
    assert_allclose(model.A, A_exp, rtol=1e-10, atol=1e-12)
    assert_allclose(model.L, L_exp, rtol=1e-10, atol=1e-12)
    assert_allclose(model.c, c_exp, rtol=1e-10, atol=1e-12)
    Xt = np.random.default_rng(42).standard_normal((500, d))
    assert_allclose(model.predict(Xt), net.predict(Xt), rtol=1e-11, atol=1e-11)


def test_relative_error_of_the_true_model_is_zero():
    net = dx.targets.random_network(5, 6, 2, seed=0)
    X = np.random.default_rng(0).standard_normal((50, 5))
    rel, mx = solve.relative_error(net, X, net.predict(X))
    assert rel == 0.0 and mx == 0.0
