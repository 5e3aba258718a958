"""engine.cleanup: neurons that make the model worse are removed, against a real run
(a planted network behind a counting oracle, a real LocalExecutor)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract._oracle import CountingOracle, as_oracle
from distextract.engine import cleanup
from distextract.engine._config import ExtractConfig
from distextract.engine.loop import Coordinator
from distextract.engine.neurons import NeuronSet
from distextract.engine.tasks import LocalExecutor


def _spurious(ns: NeuronSet, rng: np.random.Generator) -> NeuronSet:
    """``ns`` plus one neuron through the origin in a random direction, seen once on line 0:
    every line crosses it, none saw it."""
    d, m = ns.W.shape[1], ns.a.shape[1]
    w = rng.standard_normal(d)
    one = NeuronSet(w[None, :] / np.linalg.norm(w), np.zeros(1), rng.standard_normal((1, m)),
                    np.full(1, 1e-12), np.zeros(1), np.zeros(1, dtype=int), np.zeros(1),
                    np.ones(1, dtype=int))
    return NeuronSet(*(np.concatenate([getattr(ns, f), getattr(one, f)])
                       for f in ("W", "b", "a", "err", "rank_residual", "line", "t", "count")))


@pytest.fixture(scope="module")
def finished():
    """A certified run on a planted 8-16-1 network (its Coordinator, the network)."""
    net = dx.targets.random_network(8, 16, 1, seed=1)
    eng = Coordinator(LocalExecutor(CountingOracle(as_oracle(net))), 8, ExtractConfig(), 0)
    assert eng.run().certified
    return eng, net


def test_drop_unseen_removes_a_neuron_the_lines_crossing_it_did_not_see(finished):
    eng, net = finished
    st = eng.st
    k, before = st.neurons.size, st.counters["unseen_dropped"]
    lines = len(st.lines)  # every line crosses the spurious neuron
    st.neurons = _spurious(st.neurons, np.random.default_rng(0))
    eng.assemble()
    assert st.neurons.size == k + 1
    assert cleanup.drop_unseen(eng, min_lines=lines) == 1
    assert st.counters["unseen_dropped"] == before + 1  # the mechanism fired
    assert st.neurons.size == k and np.all(st.neurons.line >= 0)
    X = np.random.default_rng(1).standard_normal((200, 8))
    assert_allclose(st.model.predict(X), net.predict(X), rtol=0, atol=1e-8)


def test_drop_unseen_keeps_every_neuron_the_lines_saw(finished):
    eng, _ = finished
    k, before = eng.st.neurons.size, eng.st.counters["unseen_dropped"]
    assert cleanup.drop_unseen(eng, min_lines=len(eng.st.lines)) == 0
    assert eng.st.neurons.size == k and eng.st.counters["unseen_dropped"] == before
