"""engine.assemble: the output fit over the paid rows to a frozen model state, and the
one accept-if-no-worse rule."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine.assemble import ModelState, assemble, no_worse
from distextract.engine.neurons import NeuronSet
from distextract.engine.paid import PaidRows


def _neurons_of(net):
    norm = np.linalg.norm(net.W, axis=1)
    k = net.hidden_dim
    return NeuronSet(net.W / norm[:, None], net.b / norm, net.A.T * norm[:, None],
                     np.full(k, 1e-12), np.zeros(k), np.zeros(k, dtype=int), np.zeros(k),
                     np.ones(k, dtype=int))


def test_assemble_fits_the_output_layer_over_the_paid_rows():
    net = dx.targets.random_network(6, 10, 2, seed=3)
    rng = np.random.default_rng(0)
    paid = PaidRows(6)
    for _ in range(3):
        X = rng.standard_normal((40, 6))
        paid.add(X, net.predict(X))
    paid.Xv = rng.standard_normal((64, 6))
    paid.Yv = net.predict(paid.Xv)
    state = assemble(_neurons_of(net), paid, 2, np.random.default_rng(1), imprecise=False,
                     target=1e-7, solve_max_unknowns=3000)
    assert isinstance(state, ModelState) and state.val_rel_l2 < 1e-12
    X = rng.standard_normal((100, 6))
    assert_allclose(state.model.predict(X), net.predict(X), rtol=0, atol=1e-10)


def test_the_accept_rule():
    assert no_worse(1.0, 1.0) and no_worse(1.009, 1.0) and not no_worse(1.02, 1.0)
    assert no_worse(5.0, 1.0, allowed=5.0) and not no_worse(1.0 + 1e-9, 1.0, slack=1.0)
