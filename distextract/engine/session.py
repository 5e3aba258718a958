"""The query session: the only holder of the executor. It cuts work into tasks for the
executor's concurrent slots, evaluates points, and says whether the budget holds a request.

The executor runs tasks in-process (:class:`.tasks.LocalExecutor`) or on Ray workers; either
way it offers ``map(tasks)``, ``queries`` and ``remaining``, and optionally ``workers``,
``max_batch`` and ``request_limited``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .._errors import BudgetExhausted
from .kinks import SearchParams, segment_end_points
from .lines import Line
from .settings import SessionSettings
from .tasks import EvalTask, SearchTask


class Executor(Protocol):
    """Runs engine tasks against the oracle (in-process or on Ray workers)."""

    def map(self, tasks: list) -> list: ...

    @property
    def queries(self) -> int: ...

    @property
    def remaining(self) -> int | None: ...


def chunks(items: list, size: int) -> list[list]:
    """``items`` in consecutive lists of at most ``size``."""
    return [items[i:i + size] for i in range(0, len(items), size)]


class QuerySession:
    """Every query of a run goes through here.

    Parameters
    ----------
    executor : Executor
    parallelism : int
        Concurrent task slots of the executor (workers × tasks per worker).
    settings : SessionSettings, optional
        How work is cut into tasks (default: ``SessionSettings()``).

    Attributes
    ----------
    cap : int or None
        The run's own bound on rows sent (:attr:`.settings.Derived.query_bound`), on top of
        the executor's budget: a request that would go beyond it raises
        :class:`~distextract.BudgetExhausted` (a search task is refused once the rows sent
        reach it: its size is not known in advance). None: no bound.
    """

    def __init__(self, executor: Any, parallelism: int = 1,
                 settings: SessionSettings | None = None) -> None:
        self.executor = executor
        self.parallelism = max(1, parallelism)
        self.settings = settings or SessionSettings()
        self.cap: int | None = None
        self.cap_reached = False  # a request was refused at the cap

    @property
    def queries(self) -> int:
        """Rows sent so far."""
        return self.executor.queries

    @property
    def remaining(self) -> int | None:
        """Rows left in the budget and under the cap (None: neither)."""
        left = self.executor.remaining
        if self.cap is None:
            return left
        under = max(0, self.cap - self.queries)
        return under if left is None else min(left, under)

    def _check_cap(self, rows: int) -> None:
        if self.cap is not None and self.queries + rows > self.cap:
            self.cap_reached = True
            raise BudgetExhausted(self.cap, self.queries, rows)

    def affords(self, rows: int) -> bool:
        """Whether the budget holds ``rows`` more rows (always, without a budget): work that
        fits goes in one round trip, else in chunks that each keep what they paid for."""
        left = self.remaining
        return left is None or left >= rows

    def map(self, tasks: list) -> list:
        """Run ``tasks``; one result each, in order (refused once the cap is reached)."""
        self._check_cap(1)
        return self.executor.map(tasks)

    @property
    def spread(self) -> bool:
        """Whether work should be cut for every concurrent slot even where that sends more,
        emptier requests: yes unless requests themselves are rationed (a requests/s limit).
        A worker keeping one request in flight then answers a 512-row evaluation in one
        round trip per slot instead of eight in a row."""
        return self.parallelism > 1 and not getattr(self.executor, "request_limited", False)

    def eval(self, X: np.ndarray, capped: bool = True) -> np.ndarray:
        """The oracle's answers at ``X`` (n, d), cut into evaluation tasks; beyond the cap
        only when not ``capped`` (the certificate's check rows: the executor's budget still
        holds)."""
        if capped:
            self._check_cap(X.shape[0])
        rows = self.settings.eval_task_rows
        if self.spread:
            batch = getattr(self.executor, "max_batch", None) or self.settings.eval_min_rows
            rows = min(rows, max(batch, -(-X.shape[0] // self.parallelism)))
        tasks = [EvalTask(X[i:i + rows]) for i in range(0, X.shape[0], rows)]
        return np.concatenate(self.executor.map(tasks), axis=0)

    def search(self, line: Line, segments: list, params: SearchParams, fref: float,
               absolute: bool, known: dict) -> list:
        """Search ``segments`` of ``line`` in full, cut into a task per worker, or under a
        requests/s limit into a few (the search advances in rounds that wait for their
        answers however it is cut, and fewer tasks send fuller requests); each task is
        handed the answers already paid (``known``) at its segments' ends and slope
        points."""
        self._check_cap(1)
        # (a worker keeping several requests in flight sends a task's round in one round
        # trip however many rows it has: one task per worker is enough)
        cut = self.settings.search_tasks
        if self.spread:
            cut = max(cut, getattr(self.executor, "workers", 1))
        per_task = max(1, -(-len(segments) // min(self.parallelism, cut)))
        tasks = []
        for group in chunks(segments, per_task):
            points = (float(t) for t in segment_end_points(group, params.slope_step))
            kn = {t: known[t] for t in points if t in known}
            tasks.append(SearchTask(line, group, params, fref, known=kn, absolute=absolute))
        return [r for batch in self.executor.map(tasks) for r in batch]
