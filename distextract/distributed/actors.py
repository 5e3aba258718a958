"""Worker and ledger actors of a distributed run (plain classes, made remote by the executor)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from .._errors import BudgetExhausted, DistextractError
from .._oracle import CountingOracle, Oracle
from .limiter import LeasedLimiter
from .specs import SoftmaxSpec

logger = logging.getLogger(__name__)

#: Concurrency group of the workers' stats method (answers while a task runs).
STATS_GROUP = "stats"


@dataclass(frozen=True)
class _RemoteError:
    """A library error raised in a worker, carried back as a value.

    Some distextract exceptions take several constructor arguments and do not unpickle; the
    worker returns this instead of raising, and the driver raises the same exception again.
    """

    cls: type
    args: tuple
    state: dict

    @classmethod
    def of(cls, exc: BaseException) -> _RemoteError:
        return cls(type(exc), exc.args, dict(vars(exc)))

    def rebuild(self) -> BaseException:
        exc = self.cls.__new__(self.cls)
        Exception.__init__(exc, *self.args)
        vars(exc).update(self.state)
        return exc


# ------------------------------------------------------------------------ ledger
class _Ledger:
    """Global budget and exact count of paid rows (one actor per run; never restarted)."""

    def __init__(self, budget: int | None, workers: int, spec: Any = None) -> None:
        self.budget = budget
        self._spec = spec  # a large oracle spec, which the workers fetch from here
        self.paid = 0
        self.refused = 0
        self.t0 = time.monotonic()
        self.per_worker = [{"paid": 0, "attempts": 0, "tasks": 0, "asked": 0,
                            "from_journal": 0, "oracle_s": 0.0, "task_s": 0.0}
                           for _ in range(workers)]

    def spec(self) -> Any:
        return self._spec

    def register(self, worker: int) -> int:
        """Record a (re)start of ``worker``; returns its attempt number (1 for the first)."""
        self.per_worker[worker]["attempts"] += 1
        return self.per_worker[worker]["attempts"]

    def reserve(self, worker: int, rows: int, need: int | None = None) -> tuple[bool, int]:
        """Reserve ``rows`` before they are sent, granted only if ``need`` rows (default
        ``rows``: the rest of the query they belong to) still fit the budget.

        Returns (granted, rows paid before)."""
        used = self.paid
        if self.budget is not None and used + max(rows, need or 0) > self.budget:
            self.refused += 1
            return False, used
        self.paid += rows
        self.per_worker[worker]["paid"] += rows
        return True, used

    def task_done(self, worker: int, asked: int, from_journal: int, oracle_s: float,
                  task_s: float) -> None:
        w = self.per_worker[worker]
        w["tasks"] += 1
        w["asked"] += asked
        w["from_journal"] += from_journal
        w["oracle_s"] += oracle_s
        w["task_s"] += task_s

    def total(self) -> int:
        return self.paid

    def snapshot(self) -> dict:
        return {"paid": self.paid, "budget": self.budget, "refused_reservations": self.refused,
                "elapsed": time.monotonic() - self.t0,
                "per_worker": [dict(w) for w in self.per_worker]}



class _MeteredOracle(Oracle):
    """Reserves rows at the ledger before sending, checks answers, times the oracle."""

    def __init__(self, inner: Oracle, ledger: Any, worker: int) -> None:
        self.inner = inner
        self.ledger = ledger
        self.worker = worker
        self.input_dim = inner.input_dim
        self.output_dim = inner.output_dim
        self.max_batch = inner.max_batch
        self._checker = CountingOracle(inner)
        self.rows_sent = 0
        self.oracle_s = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's task: rows sent, oracle seconds

    def task_counters(self) -> tuple[int, float]:
        """Rows sent and oracle seconds of the calling thread (one task per thread)."""
        return getattr(self._local, "rows", 0), getattr(self._local, "seconds", 0.0)

    def _reserve(self, n: int, need: int | None = None) -> None:
        ok, used = ray.get(self.ledger.reserve.remote(self.worker, n, need))
        if not ok:
            raise BudgetExhausted(ray.get(self.ledger.snapshot.remote())["budget"], used, n)
        with self._lock:
            self.rows_sent += n
        self._local.rows = getattr(self._local, "rows", 0) + n

    def _spent(self, seconds: float) -> None:
        with self._lock:
            self.oracle_s += seconds
        self._local.seconds = getattr(self._local, "seconds", 0.0) + seconds

    def _query(self, X: np.ndarray) -> np.ndarray:
        self._reserve(X.shape[0])
        t = time.perf_counter()
        try:
            Y = self.inner.query(X)
        finally:
            self._spent(time.perf_counter() - t)
        return self._checker.check_answer(X, Y)

    def query_stream(self, X: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream answers batch by batch when the inner oracle can (journal every batch)."""
        stream = getattr(self.inner, "query_stream", None)
        if stream is None:
            # An oracle that splits requests itself (max_batch): send and yield batch by batch,
            # each reserved just before it is sent, so a worker killed mid-query has paid (and
            # the journal holds) only the batches answered.
            n, step = X.shape[0], self.max_batch or X.shape[0]
            for i in range(0, n, step):
                rows = slice(i, min(i + step, n))
                part = X[rows]
                self._reserve(part.shape[0], need=n - i)
                t = time.perf_counter()
                try:
                    Y = self.inner.query(part)
                finally:
                    self._spent(time.perf_counter() - t)
                yield rows, self._checker.check_answer(part, Y)
            return
        self._reserve(X.shape[0])
        t = time.perf_counter()
        try:
            for rows, Y in stream(X):
                yield rows, self._checker.check_answer(X[rows], Y)
        finally:
            self._spent(time.perf_counter() - t)

    def close(self) -> None:
        self.inner.close()


class _Worker:
    """Runs engine tasks against its own oracle (made remote by :class:`RayExecutor`).

    A threaded actor: up to ``tasks_per_worker`` tasks run at once (each a sequence of
    dependent round trips), sharing the worker's thread-safe oracle stack
    (journal → metered → client; the HTTP client keeps ``max_in_flight`` requests in flight).
    Counters are kept per task (thread), so concurrent tasks do not mix their statistics.
    """

    def __init__(self, index: int, spec: Any, ledger_name: str, limiter_name: str | None,
                 lease_chunk: int, journal_dir: str | None, seed: int,
                 rows_rate: float | None = None) -> None:
        from .._ratelimit import PACED_SWITCH_INTERVAL_S
        from ..engine.tasks import run_task

        if limiter_name is not None:  # paced senders in this process: wake them on time
            sys.setswitchinterval(min(sys.getswitchinterval(), PACED_SWITCH_INTERVAL_S))
        # the ledger and the limiter come by name, a large spec (None here) from the ledger
        # (RayExecutor.__init__ says why)
        ledger = ray.get_actor(ledger_name)
        limiter = None if limiter_name is None else ray.get_actor(limiter_name)
        if spec is None:
            spec = ray.get(ledger.spec.remote())
        softmax = isinstance(spec, SoftmaxSpec)
        if softmax:
            spec = spec.inner

        self._run_task = run_task
        self.index = index
        self.ledger = ledger
        self.attempt = ray.get(ledger.register.remote(index))
        proxy = None if limiter is None else LeasedLimiter(limiter, lease_chunk, rows_rate)
        self.limiter = proxy
        stream = np.random.SeedSequence(seed, spawn_key=(0x7D15, index, self.attempt))
        self.base = spec.build(proxy, stream)
        self.metered = _MeteredOracle(self.base, ledger, index)
        self.oracle: Oracle = self.metered
        self.journal = None
        if journal_dir is not None:
            from .._journal import JournaledOracle

            # only sealed segments: never the driver's (or another worker's) live one
            self.journal = JournaledOracle(self.metered, journal_dir, f"w{index}",
                                           sealed_only=True)
            self.oracle = self.journal
        if softmax:
            from .._oracle import SoftmaxLogitOracle

            self.oracle = SoftmaxLogitOracle(self.oracle)
        self.tasks = 0
        self.running = 0
        self.busy_since: float | None = None
        self._lock = threading.Lock()
        set_activity = getattr(self.base, "set_activity", None)
        if callable(set_activity):
            # the HTTP client lets a partly filled request wait briefly while other tasks of
            # this worker are still computing their next rows (coalescing)
            set_activity(lambda: self.running)
        if self.attempt > 1:
            logger.warning("worker %d restarted (attempt %d)", index, self.attempt)

    def ready(self) -> dict:
        """Where this worker runs (node id, pid) once constructed."""
        return {"index": self.index, "attempt": self.attempt, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def run(self, task: Any) -> Any:
        """Run one engine task; library errors come back as :class:`_RemoteError` values."""
        t0 = time.perf_counter()
        sent0, oracle0 = self.metered.task_counters()
        with self._lock:
            if self.running == 0:
                self.busy_since = time.monotonic()
            self.running += 1
        counter = _AskCounter(self.oracle, self)
        try:
            result = self._run_task(counter, task)
        except DistextractError as exc:
            result = _RemoteError.of(exc)
        finally:
            with self._lock:
                self.running -= 1
                if self.running == 0:
                    self.busy_since = None
                self.tasks += 1
            sent1, oracle1 = self.metered.task_counters()
            # rows this task asked that were not sent were answered by the journal
            from_journal = counter.asked - (sent1 - sent0) if self.journal is not None else 0
            self.ledger.task_done.remote(self.index, counter.asked, from_journal,
                                         oracle1 - oracle0, time.perf_counter() - t0)
        return result

    @ray.method(concurrency_group=STATS_GROUP)
    def stats(self) -> dict:
        """Live counters of this attempt (answers while a task runs)."""
        with self._lock:
            busy = None if self.busy_since is None else time.monotonic() - self.busy_since
            out = {"index": self.index, "attempt": self.attempt, "tasks": self.tasks,
                   "running": self.running, "rows_sent": self.metered.rows_sent,
                   "oracle_s": self.metered.oracle_s, "busy_s": busy}
        if self.journal is not None:
            out["journal"] = self.journal.stats()
        http_stats = getattr(self.base, "stats", None)
        if callable(http_stats):
            out["http"] = http_stats()
        if self.limiter is not None:
            out["limiter"] = {"waited_s": self.limiter.waited_s,
                              "round_trips": self.limiter.round_trips}
        return out

    def close(self) -> dict:
        """Close the oracle (and the journal segment); returns the final counters."""
        out = self.stats()
        self.oracle.close()
        return out


class _AskCounter:
    """Counts rows one task asks (journal hits included) for the worker's statistics."""

    def __init__(self, oracle: Oracle, worker: _Worker) -> None:
        self.oracle = oracle
        self.worker = worker
        self.asked = 0

    def query(self, X: np.ndarray) -> np.ndarray:
        self.asked += int(np.shape(X)[0])
        return self.oracle.query(X)

    @property
    def queries(self) -> int:
        return self.worker.metered.rows_sent

