"""engine.finish: pins, against a real run (a planted network behind a counting oracle,
a real LocalExecutor)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.testing import assert_allclose

import distextract as dx
from distextract._oracle import CountingOracle, as_oracle
from distextract.engine import finish
from distextract.engine._config import ExtractConfig
from distextract.engine.loop import Coordinator
from distextract.engine.tasks import LocalExecutor


def _planted_bias(net, w):
    """The normalised bias of the planted neuron whose hyperplane has unit normal ``w``."""
    norm = np.linalg.norm(net.W, axis=1)
    cos = (net.W / norm[:, None]) @ w
    i = int(np.argmax(np.abs(cos)))
    assert abs(abs(cos[i]) - 1.0) < 1e-9
    return float(np.sign(cos[i]) * net.b[i] / norm[i])


def test_pin_puts_an_offset_bias_back_on_the_hyperplane():
    """A neuron of a certified model whose bias is moved by 1e-6 and whose error estimate
    says 1e-5 rad is pinned: the kink on the line along its normal gives the planted
    normalised bias back to 1e-9, and the report says one neuron was pinned."""
    net = dx.targets.random_network(8, 16, 1, seed=1)
    eng = Coordinator(LocalExecutor(CountingOracle(as_oracle(net))), 8, ExtractConfig(), 0)
    assert eng.run().certified
    st = eng.st
    ns = st.neurons
    j = int(np.argmax(np.linalg.norm(ns.a, axis=1)))
    true_b = _planted_bias(net, ns.W[j])
    b, err = ns.b.copy(), np.full(ns.size, 1e-12)
    b[j] += 1e-6
    err[j] = 1e-5
    st.neurons = replace(ns, b=b, err=err)
    eng.assemble()
    assert st.val_rel_l2 > 1e-7
    assert finish.pin(eng) >= 1
    assert st.finishing["pinned"] >= 1 and st.finishing["candidates"] >= 1
    k = int(np.argmax(np.abs(st.neurons.W @ ns.W[j])))
    assert_allclose(st.neurons.b[k], true_b, rtol=0, atol=1e-9)
    assert st.val_rel_l2 < 1e-9
