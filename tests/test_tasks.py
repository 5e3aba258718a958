"""engine.tasks: the work a worker does for the coordinator (Jacobian tasks and the
sample of rows they send back)."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine import tasks
from distextract.engine._config import ExtractConfig

from _planted import (
    NOISE,
    CFG,
    _line,
    _planted_on_line,
    _plan,
)


class _Oracle:
    def __init__(self, net):
        self.net = net

    def query(self, X):
        return self.net.predict(X)


def test_jacobian_tasks_send_a_seeded_sample_of_each_regions_rows():
    d = 9
    line = _line(d, 23)
    net = _planted_on_line(line, [-2.0, 0.3, 1.9], m=2, seed=23)
    plans = [_plan(net, line, j, float(c), 0.05) for j, c in enumerate([-3.0, -1.0, 1.0, 3.0])]

    def run(keep):
        task = tasks.JacobianTask(line, plans, NOISE, CFG.check_factor, CFG.stencil_checks,
                                  1.0, keep_rows=keep)
        return tasks.run_task(_Oracle(net), task)
    every, some, again = run(None), run(5), run(5)
    for full, r, r2 in zip(every, some, again):
        assert full.X.shape[0] > 5 and r.X.shape == (5, d)
        assert_allclose(r.J, full.J, rtol=0, atol=0)  # the Jacobian is measured on every row
        assert_allclose(r.Y, net.predict(r.X), rtol=0, atol=1e-12)
        assert all(any(np.array_equal(x, y) for y in full.X) for x in r.X)
        assert np.array_equal(r.X, r2.X)  # seeded: the same sample every time


def test_a_line_with_more_rows_than_the_solve_keeps_is_sent_as_a_sample(monkeypatch):
    """With a row budget of 400 (PaidSettings(solve_row_budget=...)), the workers send each
    region's rows as a sample of solve_rows_per_region, and the model is still exact."""
    from distextract._oracle import CountingOracle, as_oracle
    from distextract.engine.loop import Coordinator
    from distextract.engine.settings import PaidSettings, Settings

    sent = []
    orig = tasks._sample_rows

    def sample(region, keep, seed):  # a spy: records what the worker-side sample kept
        out = orig(region, keep, seed)
        sent.append((region.X.shape[0], out.X.shape[0], keep))
        return out
    monkeypatch.setattr(tasks, "_sample_rows", sample)
    net = dx.targets.random_network(16, 48, 3, seed=4)
    coord = Coordinator(tasks.LocalExecutor(CountingOracle(as_oracle(net, 16))), 16,
                        ExtractConfig(), 0,
                        settings=Settings(paid=PaidSettings(solve_row_budget=400)))
    res = coord.run()
    assert sent and all(n_out == min(n, keep) for n, n_out, keep in sent)
    assert max(keep for _n, _o, keep in sent) == PaidSettings().solve_rows_per_region
    assert res.certified
    assert dx.evaluate_fidelity(res.model, net, n_points=2000, seed=1).rel_l2 < 1e-8
