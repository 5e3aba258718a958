"""Distributed extraction on Ray: worker actors, one global budget, one global rate limit.

This is the only module of the package that imports Ray. The engine's coordinator
(:class:`distextract.engine.loop.Coordinator`) runs in the driver and only calls
``executor.map(tasks)`` and reads ``executor.queries``; :class:`RayExecutor` runs those tasks on
worker actors, so a distributed run asks exactly the rows an in-process run asks (same seed).

Actors::

    driver ── Coordinator ── RayExecutor.map ──► _Worker × N   (each owns its oracle client)
                  │                                 │   reserve rows before sending
                  │                                 ├──► _Ledger    (global budget, exact paid rows)
                  │                                 └──► _Limiter   (global rate limit, leased slots)
                  └── progress poller (stats of ledger, limiter and workers) ──► ProgressDisplay

- **Workers** are plain classes made remote at construction
  (``ray.remote(_Worker).options(max_restarts=..., max_task_retries=..., max_concurrency=...)``).
  Each is a threaded actor running ``tasks_per_worker`` tasks at once (a task is a sequence of
  dependent round trips, so one task per worker leaves the oracle's latency idle); the
  coordinator cuts its work into about ``workers × tasks_per_worker`` tasks. An HTTP client
  coalesces the small queries of a worker's concurrent tasks into shared requests (permit
  first, then fill: :mod:`distextract._http`), so more tasks also mean fuller requests under a
  requests/s limit. The rows asked do
  not depend on either number. A worker killed
  mid-task is restarted by Ray and its task retried by Ray; with a journal directory (one
  :class:`~distextract._journal.JournaledOracle` segment per worker and attempt) the rows the
  dead attempt was answered are served from the journal, not paid again.
- **Budget and counting**: every row a worker sends is reserved at the ledger actor *before* it
  is sent, so the global budget is never exceeded and ``queries`` counts every row that reached
  the oracle, rows of retried tasks included (rows served from the journal are free).
- **Rate limit**: one limiter actor per API key leases send *slots* (GCRA virtual scheduling:
  evenly spaced send times, requests/s and rows/s) in chunks of about ``lease_horizon`` seconds
  of the rate, so a worker does not pay a round trip per request (DESIGN.md section 6: ≈1,500
  round trips/s but ≈115,000 permits/s when leased in chunks). A 429 seen by any worker pauses
  the limiter, so every worker slows down.
- **Progress**: the driver polls the ledger, the limiter and each worker's ``stats()`` (its own
  concurrency group, so it answers while a task runs) and feeds a one-line display on stderr.

Oracles travel to the workers as *specs*: a picklable oracle (``NetworkOracle``,
``CallableOracle``, any picklable :class:`~distextract.Oracle`) travels as itself; an
:class:`~distextract.HTTPOracle` (deliberately unpicklable: it holds connections, threads and the
API key) travels as :class:`HTTPOracleSpec`, its settings without the key; each worker builds
its own client and reads the key from the environment variable named by ``api_key_env``
(on a cluster it is forwarded to the workers through the actors' ``runtime_env``). A spec
over ``INLINE_SPEC_BYTES`` (an in-process network) is held by the ledger and fetched from it
when a worker starts or restarts; the workers find the ledger and the limiter by their
per-run names.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from ._errors import BudgetExhausted, ConfigError, DistextractError
from ._oracle import CountingOracle, Oracle
from ._ratelimit import Slowdown
from ._validation import check_positive_int

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only (3.10 supported)

logger = logging.getLogger(__name__)

#: Seconds of the rate one limiter lease covers (split between the workers).
LEASE_HORIZON_S = 0.1
#: A leased slot older than this is dropped instead of being used late: a worker that woke
#: late (a busy CPU) and sent its overdue slots at once would burst past the server's bucket.
STALE_SLOT_S = 0.05
#: A lease round trip at most this long maps the limiter's clock onto a worker's.
CLOCK_RTT_S = 0.01
#: Most tasks one worker actor runs at once by default (threads of its default concurrency
#: group); an HTTP oracle's default is its ``max_in_flight`` up to this number.
MAX_TASKS_PER_WORKER = 8
INLINE_SPEC_BYTES = 64 * 1024  # a larger oracle spec goes to the object store (RayExecutor)
#: Tasks shipped to a worker beyond those it runs, so a free thread never waits for the driver.
QUEUED_PER_WORKER = 1
#: Seconds between two polls of the actors' counters by the driver.
POLL_INTERVAL_S = 0.5
#: Concurrency group of the workers' stats method (answers while a task runs).
STATS_GROUP = "stats"


# ------------------------------------------------------------------ oracle specs
@dataclass(frozen=True)
class HTTPOracleSpec:
    """The settings of an :class:`~distextract.HTTPOracle`, without its key or connections.

    ``build`` makes a fresh client in the process that calls it (a worker actor). The API key is
    read there from the environment variable named ``api_key_env``.
    """

    url: str
    input_dim: int
    settings: dict = field(default_factory=dict)
    rate: float | None = None
    rows_rate: float | None = None
    budget: int | None = None

    @classmethod
    def from_oracle(cls, http: Any) -> HTTPOracleSpec:
        """Read the settings of a live :class:`~distextract.HTTPOracle`."""
        settings = {"api_key_env": http.api_key_env, "max_batch": http.max_batch,
                    "max_in_flight": http.max_in_flight, "timeout": http.timeout,
                    "retries": http.retries_allowed,
                    "rate_limit_retries": http.rate_limit_retries, "backoff": http.backoff,
                    "backoff_max": http.backoff_max, "max_retry_after": http.max_retry_after,
                    "input_field": http.input_field, "output_field": http.output_field}
        rate, rows_rate = http.rate, http.rows_rate
        if rate is None and rows_rate is None:
            limiter = http.limiter
            rate, rows_rate = getattr(limiter, "rate", None), getattr(limiter, "rows_rate", None)
        return cls(http.url, http.input_dim, settings, rate, rows_rate, http.budget)

    def build(self, limiter: Any, seed: np.random.SeedSequence) -> Oracle:
        """A new client using the shared ``limiter`` (None: no client-side limit)."""
        from ._http import HTTPOracle

        kwargs = dict(self.settings)
        if limiter is not None:
            kwargs["limiter"] = limiter
        return HTTPOracle(self.url, self.input_dim, seed=np.random.default_rng(seed), **kwargs)


@dataclass(frozen=True)
class PickledOracleSpec:
    """A picklable oracle shipped as itself (``NetworkOracle``, ``CallableOracle``, ...)."""

    oracle: Any

    def build(self, limiter: Any, seed: np.random.SeedSequence) -> Oracle:
        return self.oracle


@dataclass(frozen=True)
class SoftmaxSpec:
    """An oracle answering probabilities: workers build ``inner``, journal its raw answers,
    and turn them into centred log-probabilities (:class:`~distextract.SoftmaxLogitOracle`)."""

    inner: Any


def oracle_spec(oracle: Oracle) -> tuple[Any, str | None]:
    """How ``oracle`` travels to the workers.

    Parameters
    ----------
    oracle : Oracle
        Possibly a :class:`~distextract._journal.JournaledOracle` around the paid oracle.

    Returns
    -------
    spec : HTTPOracleSpec or PickledOracleSpec
    journal_dir : str or None
        The journal directory of a journaled oracle (workers write their own segments there).

    Raises
    ------
    ConfigError
        When the oracle cannot be shipped to another process.
    """
    from ._http import HTTPOracle
    from ._journal import JournaledOracle
    from ._oracle import SoftmaxLogitOracle

    if isinstance(oracle, SoftmaxLogitOracle):
        inner, journal = oracle_spec(oracle.inner)
        return SoftmaxSpec(inner), journal
    journal = None
    if isinstance(oracle, JournaledOracle):
        journal, oracle = oracle.journal_dir, oracle.inner
    if isinstance(oracle, CountingOracle):
        oracle = oracle.inner
    if isinstance(oracle, HTTPOracle):
        return HTTPOracleSpec.from_oracle(oracle), journal
    try:
        import cloudpickle

        cloudpickle.dumps(oracle)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means "cannot ship"
        raise ConfigError(
            f"the oracle {type(oracle).__name__} cannot be sent to Ray workers (pickling failed: "
            f"{exc}); pass a picklable oracle (NetworkOracle, CallableOracle of a module-level "
            f"function) or run in-process with workers=1") from None
    return PickledOracleSpec(oracle), journal


# -------------------------------------------------------------------- exceptions
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


# ----------------------------------------------------------------------- limiter
class _Limiter:
    """Global rate limit: leases evenly spaced send slots (GCRA), pauses on 429.

    Parameters
    ----------
    rate : float, optional
        Requests per second.
    rows_rate : float, optional
        Rows per second.
    """

    def __init__(self, rate: float | None, rows_rate: float | None) -> None:
        self.rate = rate
        self.rows_rate = rows_rate
        self.req_tat = -math.inf  # time the request bucket (capacity 1) is free again
        self.row_tat = -math.inf
        self.row_burst = None if rows_rate is None else max(1.0, rows_rate / 10.0)
        self.paused_until = -math.inf
        self.generation = 0
        self.granted = 0
        self.granted_rows = 0
        self.leases = 0
        self.penalties = 0
        self.slowdown = Slowdown()
        self.t0 = time.monotonic()

    def lease(self, n: int, rows: int) -> tuple[list[float], int, float]:
        """Reserve ``n`` slots of one request of ``rows`` rows each.

        Returns
        -------
        delays : list of float
            Seconds from now at which each slot may be used.
        generation : int
            Penalty generation (changes on every 429).
        now : float
            This actor's ``time.monotonic()`` the delays count from (a worker maps the slots
            onto its own clock with it; shifting them by its round trip instead would let
            slow trips bunch different workers' slots into bursts).
        """
        now = time.monotonic()
        f = self.slowdown.current(now)
        delays = []
        for _ in range(n):
            at = max(now, self.paused_until)
            if self.rate is not None:
                at = max(at, self.req_tat)
            if self.rows_rate is not None:
                need = min(float(rows), self.row_burst)
                at = max(at, self.row_tat - (self.row_burst - need) / self.rows_rate)
            if self.rate is not None:
                self.req_tat = at + 1.0 / (self.rate * f)
            if self.rows_rate is not None:
                self.row_tat = max(self.row_tat, at) + rows / (self.rows_rate * f)
            delays.append(at - now)
        self.granted += n
        self.granted_rows += n * rows
        self.leases += 1
        return delays, self.generation, now

    def penalize(self, seconds: float) -> int:
        """Pause every slot not yet granted for ``seconds``; returns the new generation."""
        if seconds > 0:
            now = time.monotonic()
            self.slowdown.refused(now, seconds)
            self.paused_until = max(self.paused_until, now + seconds)
            self.req_tat = max(self.req_tat, self.paused_until)
            self.row_tat = max(self.row_tat, self.paused_until)
            self.penalties += 1
            self.generation += 1
        return self.generation

    def stats(self) -> dict:
        return {"rate": self.rate, "rows_rate": self.rows_rate, "granted": self.granted,
                "granted_rows": self.granted_rows, "leases": self.leases,
                "penalties": self.penalties, "slowdowns": self.slowdown.slowdowns,
                "pace": self.slowdown.current(time.monotonic()),
                "elapsed": time.monotonic() - self.t0}


class LeasedLimiter:
    """Worker-side proxy of the limiter actor; offers the HTTP client's limiter protocol.

    ``acquire(rows)`` takes the next leased slot and sleeps until its time; when none is left
    it leases a chunk of ``chunk`` slots in one round trip. ``penalize(seconds)`` forwards a
    429 to the actor (pausing every worker) and drops this worker's unused slots.

    Parameters
    ----------
    actor : ray.actor.ActorHandle
        The limiter actor.
    chunk : int
        Slots leased per round trip.
    rows_rate : float, optional
        The actor's rows/s limit (None: requests/s only, so the HTTP client may fill a request
        up to its ``max_batch`` after taking a slot).
    """

    def __init__(self, actor: Any, chunk: int = 1, rows_rate: float | None = None) -> None:
        self.actor = actor
        self.chunk = check_positive_int("chunk", chunk)
        self.rows_rate = rows_rate
        self._slots: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.waited_s = 0.0
        self.round_trips = 0
        self._best_rtt = math.inf
        self._offset = 0.0

    def acquire(self, rows: int = 1) -> None:
        """Block until one request of ``rows`` rows may be sent."""
        if rows < 1:
            raise ConfigError(f"rows must be >= 1, got {rows}")
        start = time.monotonic()
        with self._lock:
            while self._slots:
                at, allowance = self._slots.popleft()
                if allowance >= rows and at > start - STALE_SLOT_S:
                    break
            else:
                sent = time.monotonic()
                delays, _, actor_now = ray.get(self.actor.lease.remote(self.chunk, rows))
                got = time.monotonic()
                self.round_trips += 1
                # The actor's clock minus ours, from the quickest round trip so far (its
                # error is at most half that trip): slots keep the actor's spacing whatever
                # each trip's delay. Until one trip was quick, slots count from the answer.
                rtt = got - sent
                if rtt < self._best_rtt:
                    self._best_rtt = rtt
                    self._offset = actor_now - 0.5 * (sent + got)
                if self._best_rtt <= CLOCK_RTT_S:
                    base = max(actor_now - self._offset, sent)
                else:
                    base = got
                self._slots.extend((base + d, rows) for d in delays[1:])
                at = base + delays[0]
        wait = at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            self.waited_s += time.monotonic() - start

    def penalize(self, seconds: float) -> None:
        """The server answered 429: pause every worker for ``seconds``."""
        with self._lock:
            self._slots.clear()
        ray.get(self.actor.penalize.remote(float(seconds)))

    def __getstate__(self) -> dict:
        return {"actor": self.actor, "chunk": self.chunk, "rows_rate": self.rows_rate}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["actor"], state["chunk"], state.get("rows_rate"))


# ------------------------------------------------------------------------ worker
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
        from .engine.tasks import run_task

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
            from ._journal import JournaledOracle

            self.journal = JournaledOracle(self.metered, journal_dir, f"w{index}")
            self.oracle = self.journal
        if softmax:
            from ._oracle import SoftmaxLogitOracle

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

    def run(self, task: Any, model: Any = None) -> Any:
        """Run one engine task; library errors come back as :class:`_RemoteError` values."""
        if model is not None:
            task = replace(task, model=model)
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


# ---------------------------------------------------------------------- executor
class RayExecutor:
    """Runs engine tasks on Ray worker actors; the executor the coordinator talks to.

    Parameters
    ----------
    oracle : Oracle
        The oracle to query (shipped to each worker as a spec, see :func:`oracle_spec`). A
        :class:`~distextract._journal.JournaledOracle` makes every worker journal its rows in
        the same journal directory (segments ``w<i>.<attempt>.arrows``).
    workers : int
        Number of worker actors.
    budget : int, optional
        Global cap on paid rows across all workers.
    rate, rows_rate : float, optional
        Global client-side limit (requests/s, rows/s) shared by all workers. Default: the HTTP
        oracle's own ``rate``/``rows_rate``. None for both: no limiter actor.
    journal_dir : str, optional
        Overrides the journal directory taken from a journaled oracle.
    placement : {"spread", "strict_spread", "pack"} or None
        ``"spread"``: Ray's SPREAD scheduling strategy (best effort over nodes);
        ``"strict_spread"``: a STRICT_SPREAD placement group (one worker per node; needs as many
        nodes as workers); ``"pack"`` or None: Ray's default.
    num_cpus : float
        CPUs each worker reserves (scheduling).
    max_restarts, max_task_retries : int
        Ray's actor fault tolerance: a killed worker is restarted up to ``max_restarts`` times
        and its queued and running tasks retried up to ``max_task_retries`` times (-1: always).
    seed : int
        Root of the workers' independent random streams (HTTP backoff jitter).
    tasks_per_worker : int, optional
        Tasks each worker runs at once (threads of its default concurrency group), so a worker
        keeps several sequences of dependent round trips in flight. Default: an HTTP oracle's
        ``max_in_flight`` capped at :data:`MAX_TASKS_PER_WORKER` (the client coalesces the
        concurrent tasks' small queries into shared requests, so under a requests/s limit too
        more tasks fill requests better — measured in BENCHMARKS.md); 1 for other oracles (a
        user's callable need not be thread-safe). The coordinator cuts its work into about
        ``workers × tasks_per_worker`` tasks (its ``parallelism``).
    actor_options : dict, optional
        Extra ``.options(...)`` for the worker actors (``resources``, ``runtime_env``, ...).

    Attributes
    ----------
    actors : list of ray.actor.ActorHandle
        The worker actors (e.g. to kill one in a test).
    nodes : list of str
        Node id of each worker at start.
    """

    def __init__(self, oracle: Oracle, workers: int = 2, *, budget: int | None = None,
                 rate: float | None = None, rows_rate: float | None = None,
                 journal_dir: str | None = None, placement: str | None = None,
                 num_cpus: float = 1.0, max_restarts: int = 4, max_task_retries: int = -1,
                 seed: int = 0, tasks_per_worker: int | None = None,
                 actor_options: dict | None = None) -> None:
        if not ray.is_initialized():
            raise ConfigError("Ray is not initialised; call ray.init(...) or use "
                              "run_distributed(), which starts Ray for you")
        self.workers = check_positive_int("workers", workers)
        if placement not in (None, "spread", "strict_spread", "pack"):
            raise ConfigError(f"placement must be 'spread', 'strict_spread', 'pack' or None, "
                              f"got {placement!r}")
        spec, journal = oracle_spec(oracle)
        self.journal_dir = journal_dir if journal_dir is not None else journal
        outer = spec
        if isinstance(spec, SoftmaxSpec):
            spec = spec.inner
        if isinstance(spec, HTTPOracleSpec):
            budget = budget if budget is not None else spec.budget
            spec = replace(spec, budget=None)
            if rate is None and rows_rate is None:
                rate, rows_rate = spec.rate, spec.rows_rate
        self.spec = SoftmaxSpec(spec) if isinstance(outer, SoftmaxSpec) else spec
        self.rate, self.rows_rate = rate, rows_rate
        if tasks_per_worker is None:
            tasks_per_worker = 1
            if isinstance(spec, HTTPOracleSpec):  # spec: the unwrapped one
                in_flight = int(spec.settings.get("max_in_flight") or 1)
                tasks_per_worker = max(1, min(MAX_TASKS_PER_WORKER, in_flight))
        self.tasks_per_worker = check_positive_int("tasks_per_worker", tasks_per_worker)
        self.max_batch = getattr(oracle, "max_batch", None)
        self.budget = budget
        run_id = uuid.uuid4().hex[:12]
        self._names = {"ledger": f"distextract-ledger-{run_id}", "limiter": None}
        # A small spec (an HTTP API's) travels inline in each worker's constructor arguments,
        # which Ray keeps for restarts; a large one (an in-process network) is held by the
        # ledger, which lives as long as the run, and a (re)started worker fetches it there.
        # (Object-store values or actor handles among a restartable actor's constructor
        # arguments make Ray log an error-level warning on every run.)
        big = len(ray.cloudpickle.dumps(self.spec)) > INLINE_SPEC_BYTES
        self._ledger = ray.remote(_Ledger).options(
            num_cpus=0, max_restarts=0, name=self._names["ledger"]).remote(
                budget, self.workers, self.spec if big else None)
        self._limiter = None
        lease_chunk = 1
        if rate is not None or rows_rate is not None:
            self._names["limiter"] = f"distextract-limiter-{run_id}"
            self._limiter = ray.remote(_Limiter).options(
                num_cpus=0, max_restarts=0, name=self._names["limiter"]).remote(rate, rows_rate)
            per_s = rate if rate is not None else rows_rate / max(1, self.max_batch or 64)
            lease_chunk = max(1, int(per_s * LEASE_HORIZON_S / self.workers))
        self._pg = None
        options: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": max_restarts,
                                   "max_task_retries": max_task_retries,
                                   "max_concurrency": self.tasks_per_worker}
        options.update(actor_options or {})
        self._placement_options = self._placement(placement, num_cpus)
        key_env = spec.settings.get("api_key_env") if isinstance(spec, HTTPOracleSpec) else None
        if key_env and os.environ.get(key_env) and "runtime_env" not in options:
            # Forward the key to workers on other nodes (they do not share our environment).
            options["runtime_env"] = {"env_vars": {key_env: os.environ[key_env]}}
        cls = ray.remote(concurrency_groups={STATS_GROUP: 1})(_Worker)
        spec_arg = None if big else self.spec
        self.actors = []
        for i in range(self.workers):
            opts = dict(options)
            opts.update(self._placement_options(i))
            self.actors.append(cls.options(**opts).remote(
                i, spec_arg, self._names["ledger"], self._names["limiter"], lease_chunk,
                self.journal_dir, seed, rows_rate))
        infos = self._get([a.ready.remote() for a in self.actors])
        self.nodes = [info["node_id"] for info in infos]
        self.pids = [info["pid"] for info in infos]
        self._closed = False
        self.map_seconds = 0.0
        self.tasks_run = 0
        logger.info("Ray executor: %d workers on %d node(s)", self.workers, len(set(self.nodes)))

    def _placement(self, placement: str | None, num_cpus: float) -> Callable[[int], dict]:
        if placement == "spread":
            return lambda i: {"scheduling_strategy": "SPREAD"}
        if placement == "strict_spread":
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = {"CPU": num_cpus} if num_cpus > 0 else {"CPU": 0.01}
            self._pg = placement_group([dict(bundle) for _ in range(self.workers)],
                                       strategy="STRICT_SPREAD")
            ready, _ = ray.wait([self._pg.ready()], timeout=60)
            if not ready:
                raise ConfigError(
                    f"placement='strict_spread' needs {self.workers} nodes with {num_cpus} free "
                    f"CPU each; the cluster could not place them within 60 s")
            return lambda i: {"scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self._pg, placement_group_bundle_index=i)}
        return lambda i: {}

    @staticmethod
    def _get(refs: Any) -> Any:
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    # --------------------------------------------------------------- executor API
    def map(self, tasks: list) -> list:
        """Run ``tasks`` on the workers; results in the order of ``tasks``.

        Each worker holds up to ``tasks_per_worker`` running tasks plus
        :data:`QUEUED_PER_WORKER` queued ones; a worker that finishes a task takes the next.
        Models carried by tasks are put in the object store once per call.

        Raises
        ------
        DistextractError
            The first library error a task raised (e.g. :class:`BudgetExhausted`), after every
            task already running has finished (so the paid-row count is final).
        """
        if self._closed:
            raise ConfigError("this RayExecutor is closed; create a new one")
        t0 = time.perf_counter()
        results: list[Any] = [None] * len(tasks)
        model_refs: dict[int, Any] = {}
        pending = collections.deque(enumerate(tasks))
        inflight: dict[Any, tuple[int, int]] = {}
        load = [0] * self.workers
        error: BaseException | None = None

        def submit(w: int) -> None:
            i, task = pending.popleft()
            model = getattr(task, "model", None)
            ref = None
            if model is not None:
                key = id(model)
                if key not in model_refs:
                    model_refs[key] = ray.put(model)
                ref = model_refs[key]
                task = replace(task, model=None)
            inflight[self.actors[w].run.remote(task, ref)] = (i, w)
            load[w] += 1

        for _ in range(self.tasks_per_worker + QUEUED_PER_WORKER):
            for w in range(self.workers):
                if pending:
                    submit(w)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                i, w = inflight.pop(ref)
                load[w] -= 1
                value = self._get(ref)
                if isinstance(value, _RemoteError):
                    error = error or value.rebuild()
                results[i] = value
                if pending and error is None:
                    submit(w)
        self.map_seconds += time.perf_counter() - t0
        self.tasks_run += len(tasks)
        if error is not None:
            raise error
        return results

    @property
    def queries(self) -> int:
        """Rows sent to the oracle by all workers (every attempt), exact."""
        return int(ray.get(self._ledger.total.remote()))

    @property
    def remaining(self) -> int | None:
        """Rows left in the global budget (None: no budget)."""
        return None if self.budget is None else self.budget - self.queries

    # ------------------------------------------------------------------ counters
    def ledger_stats(self) -> dict:
        """Global counters (paid rows, per-worker rows, attempts, timings)."""
        return ray.get(self._ledger.snapshot.remote())

    def limiter_stats(self) -> dict | None:
        """Counters of the shared limiter (None without a rate limit)."""
        return None if self._limiter is None else ray.get(self._limiter.stats.remote())

    def worker_stats(self, timeout: float = 2.0) -> list[dict | None]:
        """Live counters of each worker (None for a worker that did not answer in time)."""
        refs = [a.stats.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        ready_set = set(ready)
        out: list[dict | None] = []
        for ref in refs:
            try:
                out.append(ray.get(ref) if ref in ready_set else None)
            except ray.exceptions.RayError:
                out.append(None)
        return out

    @property
    def request_limited(self) -> bool:
        """Whether requests themselves are rationed (a requests/s limit): the coordinator
        then keeps its small work in few tasks, whose requests go out fuller."""
        return self.rate is not None

    def limit_rows_per_s(self) -> float | None:
        """The global limit in rows/s (None: unlimited)."""
        limits = []
        if self.rows_rate is not None:
            limits.append(self.rows_rate)
        if self.rate is not None and self.max_batch:
            limits.append(self.rate * self.max_batch)
        return min(limits) if limits else None

    def close(self) -> list[dict | None]:
        """Close the workers' oracles and journals, then kill the actors.

        Returns
        -------
        list of dict or None
            Each worker's final counters.
        """
        if self._closed:
            return []
        self._closed = True
        finals: list[dict | None] = []
        for actor in self.actors:
            try:
                finals.append(ray.get(actor.close.remote(), timeout=30))
            except (ray.exceptions.RayError, TimeoutError) as exc:
                logger.warning("worker did not close cleanly: %s", exc)
                finals.append(None)
        for actor in [*self.actors, self._ledger, self._limiter]:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._pg)
        return finals

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- progress
class ProgressDisplay:
    """A single refreshing line on a stream: rows paid, rows/s vs the limit, kinks, neurons,
    validation error, ETA.

    Call it with the engine's progress dicts and the poller's counters (``update``).
    The ETA assumes about ``1.1·(d+1)`` rows per neuron still to find (DESIGN.md §2, step 4)
    with the neurons found so far as the estimate of k, or the budget when one is set; it is a
    rough guide, shown as ``~``.

    Parameters
    ----------
    stream : file, optional
        Default ``sys.stderr``.
    input_dim : int, optional
        d (for the ETA).
    limit_rows_per_s : float, optional
        The global rate limit in rows/s.
    budget : int, optional
    min_interval : float
        Seconds between two redraws.
    """

    def __init__(self, stream: Any = None, input_dim: int | None = None,
                 limit_rows_per_s: float | None = None, budget: int | None = None,
                 min_interval: float = 0.2) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.d = input_dim
        self.limit = limit_rows_per_s
        self.budget = budget
        self.min_interval = min_interval
        self.state: dict = {"paid": 0, "kinks": 0, "neurons": 0, "val_rel_l2": float("inf"),
                            "phase": "start", "rows_per_s": 0.0, "elapsed": 0.0, "restarts": 0}
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self._width = 0

    def __call__(self, info: dict) -> None:
        """Engine progress callback."""
        with self._lock:
            if info.get("phase") == "search":
                self.state["kinks"] += int(info.get("kinks", 0))
            for key in ("neurons", "val_rel_l2", "phase"):
                if key in info:
                    self.state[key] = info[key]
        self.draw()

    def update(self, **counters: Any) -> None:
        """Counters polled from the actors (``paid``, ``rows_per_s``, ``elapsed``, ...)."""
        with self._lock:
            self.state.update(counters)
        self.draw()

    def line(self) -> str:
        s = self.state
        rate = f"{s['rows_per_s']:,.0f} rows/s"
        if self.limit:
            rate += f" ({100 * s['rows_per_s'] / self.limit:.0f}% of limit)"
        eta = "?"
        if s["rows_per_s"] > 0:
            target = None
            if self.budget is not None:
                target = self.budget
            elif self.d and s["neurons"]:
                target = 1.1 * s["neurons"] * (self.d + 1)
            if target is not None:
                eta = f"~{max(0.0, target - s['paid']) / s['rows_per_s']:.0f}s"
        val = s["val_rel_l2"]
        val_s = "-" if not np.isfinite(val) else f"{val:.2g}"
        out = (f"[{s['elapsed']:6.1f}s] {s['phase']:<8} {s['paid']:,} rows paid | {rate} | "
               f"kinks {s['kinks']:,} | neurons {s['neurons']:,} | val rel L2 {val_s} | "
               f"ETA {eta}")
        if s["restarts"]:
            out += f" | restarts {s['restarts']}"
        return out

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        self.draw(force=True)
        self.stream.write("\n")
        self.stream.flush()


class _Poller(threading.Thread):
    """Driver thread polling the ledger, limiter and workers' counters."""

    def __init__(self, executor: RayExecutor, sink: Callable[..., None],
                 interval: float = POLL_INTERVAL_S) -> None:
        super().__init__(name="dx-progress", daemon=True)
        self.executor = executor
        self.sink = sink
        self.interval = interval
        self.halt = threading.Event()
        self.samples: collections.deque = collections.deque(maxlen=10)
        self.last: dict = {}

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the display must never stop the run
                logger.debug("progress poll failed: %s", exc)

    def poll(self) -> dict:
        ex = self.executor
        ledger = ex.ledger_stats()
        workers = ex.worker_stats(timeout=self.interval)
        now = time.monotonic()
        self.samples.append((now, ledger["paid"]))
        t_first, p_first = self.samples[0]
        rows_per_s = (ledger["paid"] - p_first) / (now - t_first) if now > t_first else 0.0
        restarts = sum(max(0, w["attempts"] - 1) for w in ledger["per_worker"])
        self.last = {"paid": ledger["paid"], "rows_per_s": rows_per_s,
                     "elapsed": ledger["elapsed"], "restarts": restarts,
                     "workers_busy": sum(1 for w in workers if w and w.get("busy_s") is not None)}
        self.sink(**self.last)
        return self.last


# ------------------------------------------------------------------- entry point
def _start_ray(address: str | None, workers: int) -> bool:
    """Start or join Ray; returns True when this call started it (and should stop it)."""
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray already initialised; using it (address=%r ignored)", address)
        return False
    if address is None:
        ncpu = max(os.cpu_count() or 1, workers)
        logger.info("starting a local Ray instance (%d CPUs)", ncpu)
        ray.init(address="local", num_cpus=ncpu, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True)
    else:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
    return True


def run_distributed(oracle: Oracle, d: int, cfg: Any, seed: int, budget: int | None,
                    workers: int, address: str | None, progress: Callable[[dict], None] | None,
                    n_val: int, **executor_options: Any) -> tuple[Any, int, dict]:
    """Run the engine's coordinator over Ray workers (called by :func:`distextract.extract`).

    Parameters
    ----------
    oracle : Oracle
        The oracle (a journaled oracle makes every worker journal into its directory).
    d : int
        Input dimension.
    cfg : ExtractConfig
    seed : int
    budget : int, optional
        Global cap on paid rows across workers.
    workers : int
        Number of worker actors.
    address : str, optional
        Ray address: None starts a local Ray instance (and stops it afterwards); ``"auto"`` or
        ``"ray://host:10001"`` joins a cluster. An already initialised Ray is used as it is.
    progress : callable, optional
        Engine progress callback; receives the engine's dicts enriched with the polled
        counters under ``"distributed"``. With no callback and a terminal on stderr, a
        :class:`ProgressDisplay` line is shown.
    n_val : int
        Validation points.
    **executor_options
        Passed to :class:`RayExecutor` (``tasks_per_worker``, ``placement``, ``rate``,
        ``journal_dir``, ...).

    Returns
    -------
    engine : EngineResult
    queries : int
        Rows paid across all workers and attempts.
    extra : dict
        ``{"distributed": {...}}`` merged into the report: workers, nodes, restarts, per-worker
        rows, limiter counters, time split.
    """
    from .engine.loop import Coordinator

    workers = check_positive_int("workers", workers)
    t0 = time.perf_counter()
    started = _start_ray(address, workers)
    t_ray = time.perf_counter() - t0
    display = None
    executor = None
    poller = None
    try:
        executor = RayExecutor(oracle, workers, budget=budget, seed=seed, **executor_options)
        t_ready = time.perf_counter() - t0
        if progress is None and getattr(sys.stderr, "isatty", lambda: False)():
            display = ProgressDisplay(input_dim=d, limit_rows_per_s=executor.limit_rows_per_s(),
                                      budget=budget)
        sink = display.update if display is not None else (lambda **kw: None)
        poller = _Poller(executor, sink)
        poller.start()

        def engine_progress(info: dict) -> None:
            if display is not None:
                display(info)
            if progress is not None:
                progress({**info, "distributed": dict(poller.last)})

        # Cut the work into enough tasks to fill every worker's concurrent slots.
        parallelism = workers * executor.tasks_per_worker
        coord = Coordinator(executor, d, cfg, seed, engine_progress, parallelism, n_val)
        t1 = time.perf_counter()
        eng = coord.run()
        run_s = time.perf_counter() - t1
        poller.halt.set()
        poller.join()
        queries = executor.queries
        ledger = executor.ledger_stats()
        limiter = executor.limiter_stats()
        finals = executor.close()
        per = ledger["per_worker"]
        oracle_s = sum(w["oracle_s"] for w in per)
        task_s = sum(w["task_s"] for w in per)
        extra = {"distributed": {
            "workers": workers, "tasks_per_worker": executor.tasks_per_worker,
            "address": address, "nodes": len(set(executor.nodes)),
            "rows_paid": queries, "rows_asked": sum(w["asked"] for w in per),
            "rows_from_journal": sum(w["from_journal"] for w in per),
            "restarts": sum(max(0, w["attempts"] - 1) for w in per),
            "per_worker": per, "limiter": limiter,
            "limit_rows_per_s": executor.limit_rows_per_s(),
            "rows_per_s": queries / run_s if run_s > 0 else None,
            "http": [f.get("http") for f in finals if f is not None and "http" in f] or None,
            "timing": {"ray_start_s": t_ray, "workers_ready_s": t_ready, "run_s": run_s,
                       "worker_oracle_s": oracle_s, "worker_compute_s": task_s - oracle_s,
                       "coordinator_s": run_s - executor.map_seconds},
        }}
        return eng, queries, extra
    finally:
        if poller is not None:
            poller.halt.set()
        if display is not None:
            display.close()
        if executor is not None:
            executor.close()
        if started:
            ray.shutdown()


__all__ = ["HTTPOracleSpec", "LeasedLimiter", "PickledOracleSpec", "ProgressDisplay",
           "RayExecutor", "oracle_spec", "run_distributed"]
