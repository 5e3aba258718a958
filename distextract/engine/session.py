"""The query session: the only holder of the executor. It cuts work into tasks for the
executor's concurrent slots, evaluates points, and says whether the budget holds a request.

The executor runs tasks in-process (:class:`.tasks.LocalExecutor`) or on Ray workers; either
way it offers ``map(tasks)``, ``queries`` and ``remaining``, and optionally ``workers``,
``max_batch`` and ``request_limited``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

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
    """

    def __init__(self, executor: Any, parallelism: int = 1,
                 settings: SessionSettings | None = None) -> None:
        self.executor = executor
        self.parallelism = max(1, parallelism)
        self.settings = settings or SessionSettings()

    @property
    def queries(self) -> int:
        """Rows sent so far."""
        return self.executor.queries

    @property
    def remaining(self) -> int | None:
        """Rows left in the budget (None: no budget)."""
        return self.executor.remaining

    def affords(self, rows: int) -> bool:
        """Whether the budget holds ``rows`` more rows (always, without a budget): work that
        fits goes in one round trip, else in chunks that each keep what they paid for."""
        left = self.remaining
        return left is None or left >= rows

    def map(self, tasks: list) -> list:
        """Run ``tasks``; one result each, in order."""
        return self.executor.map(tasks)

    @property
    def spread(self) -> bool:
        """Whether work should be cut for every concurrent slot even where that sends more,
        emptier requests: yes unless requests themselves are rationed (a requests/s limit).
        A worker keeping one request in flight then answers a 512-row evaluation in one
        round trip per slot instead of eight in a row."""
        return self.parallelism > 1 and not getattr(self.executor, "request_limited", False)

    def eval(self, X: np.ndarray) -> np.ndarray:
        """The oracle's answers at ``X`` (n, d), cut into evaluation tasks."""
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
