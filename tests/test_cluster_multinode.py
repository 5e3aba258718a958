"""A real two-node Ray cluster on this machine (head + one worker node): workers placed on both
nodes extract the same model with the same queries as the single-process run."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster

import distextract as dx
from distextract._extract import extract
from distextract.distributed import RayExecutor
from distextract.engine.tasks import EvalTask


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_workers_on_both_nodes_match_single_process(two_nodes):
    net = dx.targets.random_network(16, 24, 2, seed=1)
    reference = extract(net, seed=5)
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    # each node has one CPU and each worker reserves one: one worker per node
    res = extract(net, seed=5, workers=2, address=two_nodes.address)
    assert res.report["distributed"]["nodes"] == 2
    assert res.queries == reference.queries
    np.testing.assert_array_equal(res.model.W, reference.model.W)
    X = np.random.default_rng(0).standard_normal((100, 16))
    np.testing.assert_array_equal(res.model.predict(X), reference.model.predict(X))


def test_strict_spread_puts_one_worker_per_node(two_nodes):
    net = dx.targets.random_network(4, 3, 1, seed=0)
    with RayExecutor(dx.NetworkOracle(net), 2, placement="strict_spread") as ex:
        assert len(set(ex.nodes)) == 2
        out = ex.map([EvalTask(np.eye(4)), EvalTask(-np.eye(4))])
    np.testing.assert_array_equal(out[0], net.predict(np.eye(4)))
