"""Pay the first queries in the driver while Ray starts (issue 20, item 3).

Starting Ray's worker actors takes seconds (5 to 20 s after ``ray.init`` on the project's
loaded 2-core machine, BENCHMARKS.md), during which a rate-limited run would send nothing.
With :class:`OverlappedExecutor` the coordinator starts at once: its tasks run in the
driver, at most :data:`DRIVER_TASKS` at a time on threads started once (:class:`_Pool`), over
the driver's own oracle (its HTTP client,
its journal, its limiter), in a thread of its own, while the main thread imports Ray, runs
``ray.init`` and builds the :class:`~distextract.distributed.executor.RayExecutor` (Ray must be
used from the thread that started it). ``ray.init`` forks Ray's processes from the driver, and
a fork while another thread is inside a multithreaded OpenBLAS call left that call spinning
for minutes once: BLAS is held to one thread until ``ray.init`` returns
(:func:`~distextract.distributed.run._single_threaded_blas`; given back at the coordinator's
next :meth:`~OverlappedExecutor.map`), and without :mod:`threadpoolctl` ``ray.init`` runs
first, before the coordinator. When the workers are ready, the
driver's HTTP client takes its send slots from the run's limiter actor (one shared pace; a
discovered pace is handed over), every task not yet started goes to the workers, and the
driver's threads finish the tasks they hold. The rows asked do not change: a task asks the
same rows wherever it runs, and results keep their order.

Only without a budget: a global budget is exact because every row is reserved at one ledger
before it is sent, and the driver's rows before the ledger exists would need a second one.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

from .._oracle import CountingOracle, Oracle

logger = logging.getLogger(__name__)

#: Seconds between two looks at whether the workers are ready during a local map.
READY_POLL_S = 0.05
#: Tasks the driver runs at once while the workers start. It still takes up to one task per
#: worker slot (``workers × tasks_per_worker``: what it takes stays with it when the workers
#: are ready, the rest goes to them), but runs this many of them at a time. A task sends all
#: its rows of a round at once (a Jacobian task of the first line: 16 regions, ~2,100 rows,
#: 33 requests of 64), and the driver's HTTP client sends at most ``max_in_flight`` (8)
#: requests at a time: 8 tasks keep it full. The 64 tasks of 8 workers x 8 slots made their
#: first rounds' CPU (stencils, ~20 ms a task) all at once, and the client's sender threads
#: waited for the GIL behind them: in phase-stamped CLI runs (``burst5-int``, load 7 to 15)
#: the first 4 s of the first line's Jacobian map lost 1.3 to 2.8 s of the server's limit
#: with 64 at once, 0.4 to 0.8 s with 8 (BENCHMARKS.md, branch ``rate5``). (Taking only 8
#: left most of a burst-1 run's tasks to the workers: 41% of the limit instead of 52%.)
DRIVER_TASKS = 8


class _Pool:
    """The driver's task threads, started once, before the run's first request.

    A map used to start its own threads. ``Thread.start`` waits until the new thread has run,
    and while Ray starts, the driver's task threads, its HTTP sender threads and ``ray.init``
    all want the GIL (a 64-thread map took 3 to 4.3 s from its first task's start to its
    64th's in phase-stamped CLI runs). Here each map hands its runners to threads already
    waiting (:class:`queue.SimpleQueue`)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, daemon=True, name=f"dx-local-{j}")
                         for j in range(self.size)]
        for t in self._threads:
            t.start()
        self._closed = False

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            fn()

    def run(self, fns: list) -> threading.Event:
        """Run each of ``fns`` (at most ``size``) in a thread of its own; the event is set when
        they have all returned (they must not raise)."""
        done = threading.Event()
        left = [len(fns)]
        lock = threading.Lock()

        def runner(fn: Any) -> Any:
            def go() -> None:
                try:
                    fn()
                finally:
                    with lock:
                        left[0] -= 1
                        if left[0] == 0:
                            done.set()
            return go

        if not fns:
            done.set()
        for fn in fns:
            self._queue.put(runner(fn))
        return done

    def close(self) -> None:
        """Let the threads end once they have run what they hold (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)

    def threads(self) -> list:
        return list(self._threads)


class WorkersNotNeeded(Exception):
    """The coordinator finished in the driver before the workers were ready: their start is
    abandoned (:class:`~.executor.RayExecutor`'s ``abandon``) rather than waited for."""


def _find(oracle: Any, attr: str) -> Any:
    """The first oracle in the wrapper chain (``inner``) that has ``attr``."""
    seen = 0
    while oracle is not None and seen < 8:
        if hasattr(oracle, attr):
            return oracle
        oracle, seen = getattr(oracle, "inner", None), seen + 1
    return None


class OverlappedExecutor:
    """The coordinator's executor while Ray starts, then the Ray executor's front.

    Parameters
    ----------
    oracle : Oracle
        The driver's oracle (possibly journaled); tasks run on it until the workers are ready.
    workers, tasks_per_worker : int
        As the Ray executor will have them (the coordinator cuts its work by them).
    max_batch : int, optional
    request_limited : bool
        As :attr:`RayExecutor.request_limited` will be.
    """

    def __init__(self, oracle: Oracle, workers: int, tasks_per_worker: int,
                 max_batch: int | None, request_limited: bool) -> None:
        self.oracle = oracle
        self.local = CountingOracle(oracle)
        self.workers = workers
        self.tasks_per_worker = tasks_per_worker
        self.max_batch = max_batch
        self.request_limited = request_limited
        self.parallelism = workers * tasks_per_worker
        self.t0 = time.perf_counter()
        self.ready_s: float | None = None
        self.switched_s: float | None = None
        self.local_tasks = 0
        self.map_seconds = 0.0
        self._journal = _find(oracle, "rows_from_journal")
        self._journal0 = 0 if self._journal is None else self._journal.rows_from_journal
        self._ray: Any = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._switched = False
        self._lock = threading.Lock()
        self._deferred: list = []
        self.local_threads = min(self.parallelism, DRIVER_TASKS)
        self._running = threading.Semaphore(self.local_threads)
        self._pool = _Pool(self.parallelism)

    # ------------------------------------------------------------ deferred work
    def at_next_map(self, fn: Any) -> None:
        """Call ``fn()`` when the coordinator next enters :meth:`map` (its tasks of the last
        map have all finished, the next have not started: no engine thread computes), or at
        :meth:`run_deferred`, whichever comes first."""
        with self._lock:
            self._deferred.append(fn)

    def run_deferred(self) -> None:
        """Call what :meth:`at_next_map` deferred (once each)."""
        with self._lock:
            fns, self._deferred = self._deferred, []
        for fn in fns:
            fn()

    # ------------------------------------------------------------------ start
    def provide(self, executor: Any = None, error: BaseException | None = None) -> None:
        """The Ray executor is ready (or could not be built: ``error``, raised in the
        coordinator at its next map). Called by the thread that started Ray, which must be
        the main thread (Ray 2.60 hangs when it is used from the main thread after
        ``ray.init`` ran in another), so the coordinator runs in a thread of its own."""
        self._ray, self._error = executor, error
        self.ready_s = time.perf_counter() - self.t0
        self._ready.set()

    def ray(self, wait: bool = False) -> Any:
        """The Ray executor once ready (None before, unless ``wait``); switches to it."""
        if wait:
            self._ready.wait()
        if not self._ready.is_set():
            return None
        if self._error is not None:
            raise self._error
        with self._lock:
            if not self._switched:
                self._switch()
        return self._ray

    def _switch(self) -> None:
        """The driver's HTTP client takes its slots from the limiter actor from now on."""
        import ray

        from .limiter import LeasedLimiter

        self._switched = True
        self.switched_s = time.perf_counter() - self.t0
        self._pool.close()  # no local map from now on (the tasks they hold still finish)
        actor = getattr(self._ray, "_limiter", None)
        http = _find(self.oracle, "limiter")
        if actor is None or http is None or not hasattr(http, "_hold"):
            return
        local = http.limiter
        pace = getattr(local, "pace", None)
        if pace is not None:  # a discovery, or a ceiling lowered by 429s
            ray.get(actor.adopt_pace.remote(pace.rate, pace.target, pace.slow_start,
                                            pace.scale, pace.slow_refused))
        # the actor's first slots follow the driver's booked ones: granted from a fresh
        # schedule they doubled the rate for a moment (the demo's server refused 3-4 requests)
        schedule = getattr(local, "schedule", None)
        if schedule is not None:
            ray.get(actor.continue_after.remote(schedule.booked_for(time.monotonic()),
                                                bool(getattr(schedule, "spacing", False))))
        proxy = LeasedLimiter(actor, 1, self._ray.rows_rate)
        http.limiter = proxy
        http._hold = proxy.hold

    # -------------------------------------------------------------- executor
    def map(self, tasks: list) -> list:
        """Run ``tasks`` in order: in the driver until the workers are ready, then on them."""
        t0 = time.perf_counter()
        self.run_deferred()
        try:
            return self._map(tasks)
        finally:
            self.map_seconds += time.perf_counter() - t0

    def _map(self, tasks: list) -> list:
        from ..engine.tasks import run_task

        ex = self.ray()
        if ex is not None:
            return ex.map(tasks)
        results: list[Any] = [None] * len(tasks)
        pending = collections.deque(enumerate(tasks))
        errors: list[BaseException] = []
        lock = threading.Lock()

        def local_thread() -> None:
            while True:
                with lock:
                    if not pending or errors or self._ready.is_set():
                        return
                    i, task = pending.popleft()
                    self.local_tasks += 1
                try:
                    with self._running:  # taken here, run DRIVER_TASKS at a time
                        results[i] = run_task(self.local, task)
                except BaseException as exc:  # noqa: BLE001 - re-raised below, in order
                    with lock:
                        errors.append(exc)
                    return

        finished = self._pool.run([local_thread] * min(len(tasks), self.parallelism))
        while not finished.is_set() and not self._ready.wait(READY_POLL_S):
            pass
        rest: list = []
        if self._ready.is_set():
            with lock:
                rest = list(pending)
                pending.clear()
        remote_error: BaseException | None = None
        if rest:
            try:
                ex = self.ray()
                for (i, _), value in zip(rest, ex.map([task for _, task in rest]),
                                         strict=True):
                    results[i] = value
            except BaseException as exc:  # noqa: BLE001 - after the local threads finish
                remote_error = exc
        finished.wait()
        if errors:
            raise errors[0]
        if remote_error is not None:
            raise remote_error
        return results

    def close_local(self) -> None:
        """End the driver's task threads (after the run; idempotent)."""
        self._pool.close()

    def driver_limiter_stats(self) -> dict | None:
        """Counters of the driver's own rate limiter (its HTTP client's), if it has one."""
        http = _find(self.oracle, "limiter")
        stats = getattr(getattr(http, "limiter", None), "stats", None)
        return stats() if callable(stats) else None

    def local_paid(self) -> int:
        """Rows the driver sent to the oracle (journal hits excluded)."""
        hits = 0 if self._journal is None else self._journal.rows_from_journal - self._journal0
        return int(self.local.queries) - int(hits)

    @property
    def queries(self) -> int:
        """Rows paid: the driver's and, once ready, the workers'."""
        ex = self._ray if self._switched else None
        return self.local_paid() + (0 if ex is None else int(ex.queries))

    @property
    def remaining(self) -> int | None:
        return None  # only without a budget (module docstring)


__all__ = ["OverlappedExecutor", "WorkersNotNeeded"]
