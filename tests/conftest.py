"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from distextract import targets


@pytest.fixture
def certified_float32_coordinator():
    """A :class:`~distextract.engine.loop.Coordinator` that has extracted
    ``random_network(8, 8, 1, seed=0)`` from float32 answers in-process and certified the
    model with no neuron uncertain (asserted here): the starting point of tests that change
    the model and certify it again."""
    from distextract._oracle import CountingOracle, NetworkOracle
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator
    from distextract.engine.tasks import LocalExecutor

    d = 8
    net = targets.random_network(d, 8, 1, seed=0)
    coord = Coordinator(LocalExecutor(CountingOracle(NetworkOracle(net, output="float32"))),
                        d, ExtractConfig(), 0)
    eng = coord.run()
    assert eng.certified and eng.certificate["uncertain"] == []
    return coord
