"""engine.loop: with imprecise answers the searched lines end when they stop lowering the
validation error (LoopSettings.imprecise_stall_lines), against real runs (a planted network
behind a float32 oracle, a real LocalExecutor)."""

from __future__ import annotations

import numpy as np

import distextract as dx
from distextract._oracle import CountingOracle, NetworkOracle
from distextract.engine import solve
from distextract.engine._config import ExtractConfig
from distextract.engine.loop import Coordinator
from distextract.engine.settings import LoopSettings, Settings
from distextract.engine.tasks import LocalExecutor


def _run(net, stall_lines):
    # the few-changes rule off, so that only the stall (or clean lines) ends the lines
    loop = LoopSettings(imprecise_few_changes=-1, imprecise_few_share=0.0,
                        imprecise_stall_lines=stall_lines)
    eng = Coordinator(LocalExecutor(CountingOracle(NetworkOracle(net, "float32"))),
                      net.input_dim, ExtractConfig(), 0, settings=Settings(loop=loop))
    return eng, eng.run()


def test_searched_lines_end_when_two_in_a_row_leave_the_error_where_it_was():
    net = dx.targets.random_network(24, 64, 3, seed=2, bias_scale=1.0)
    X = np.random.default_rng(1).standard_normal((4000, 24))
    free, free_res = _run(net, 10**6)
    held, held_res = _run(net, 2)
    assert held_res.certified and free_res.certified
    assert len(held.st.lines) < len(free.st.lines)
    assert held.session.queries < free.session.queries
    assert solve.relative_error(held_res.model, X, net.predict(X))[0] < 1e-6
    # the last two lines searched left the error above 0.9 of the best before them
    vals = [r["val_rel_l2"] for r in held.st.rounds]
    assert min(vals[-2:]) >= 0.9 * min(vals[:-2])
