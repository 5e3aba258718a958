"""engine.session: the query session cuts evaluations into tasks and keeps the budget,
against a real :class:`~distextract.engine.tasks.LocalExecutor`."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract._oracle import CountingOracle, as_oracle
from distextract.engine.session import QuerySession
from distextract.engine.settings import SessionSettings
from distextract.engine.tasks import EvalTask, LocalExecutor


class _Recording(LocalExecutor):
    def __init__(self, oracle, workers=1, max_batch=None, request_limited=False):
        super().__init__(oracle)
        self.workers, self.max_batch, self.request_limited = workers, max_batch, request_limited
        self.calls = []

    def map(self, tasks):
        self.calls.append([t.X.shape[0] for t in tasks if isinstance(t, EvalTask)])
        return super().map(tasks)


def test_session_cuts_evaluations_for_the_slots_unless_requests_are_rationed():
    net = dx.targets.random_network(4, 8, 1, seed=0)
    X = np.random.default_rng(0).standard_normal((700, 4))
    rows = SessionSettings().eval_task_rows
    for limited, want in ((False, [88] * 7 + [84]), (True, [rows, 188])):
        ex = _Recording(CountingOracle(as_oracle(net)), workers=8, max_batch=16,
                        request_limited=limited)
        Y = QuerySession(ex, parallelism=8).eval(X)
        assert_allclose(Y, net.predict(X), rtol=0, atol=1e-12)
        assert ex.calls == [want]


def test_session_affords_what_the_budget_holds():
    net = dx.targets.random_network(4, 8, 1, seed=0)
    s = QuerySession(LocalExecutor(CountingOracle(as_oracle(net), budget=100)))
    s.eval(np.zeros((60, 4)))
    assert s.queries == 60 and s.remaining == 40
    assert s.affords(40) and not s.affords(41)
    assert QuerySession(LocalExecutor(CountingOracle(as_oracle(net)))).affords(10**9)


def test_session_cuts_evaluations_by_its_settings():
    net = dx.targets.random_network(4, 8, 1, seed=0)
    X = np.random.default_rng(0).standard_normal((700, 4))
    ex = _Recording(CountingOracle(as_oracle(net)), workers=8, request_limited=True)
    s = QuerySession(ex, parallelism=8, settings=SessionSettings(eval_task_rows=300))
    assert_allclose(s.eval(X), net.predict(X), rtol=0, atol=1e-12)
    assert ex.calls == [[300, 300, 100]]


def test_session_cap_refuses_what_would_pass_it_and_the_budget_still_holds():
    net = dx.targets.random_network(4, 8, 1, seed=0)
    s = QuerySession(LocalExecutor(CountingOracle(as_oracle(net), budget=100)))
    s.cap = 50
    s.eval(np.zeros((30, 4)))
    assert s.remaining == 20 and s.affords(20) and not s.affords(21)
    with pytest.raises(dx.BudgetExhausted, match=r"budget=50 rows, already sent 30, next "
                                                 r"request needs 21"):
        s.eval(np.zeros((21, 4)))
    assert s.queries == 30 and s.cap_reached  # nothing was sent
    # rows that must be bought (the certificate's check rows) pass the cap, not the budget
    s.eval(np.zeros((60, 4)), capped=False)
    assert s.queries == 90 and s.remaining == 0
    with pytest.raises(dx.BudgetExhausted, match="budget=100 rows"):
        s.eval(np.zeros((11, 4)), capped=False)
    # a search is refused once the rows sent reach the cap
    with pytest.raises(dx.BudgetExhausted, match="budget=50 rows"):
        s.map([EvalTask(np.zeros((1, 4)))])
