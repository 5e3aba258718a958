"""RayExecutor: runs the engine's tasks on worker actors under one budget and one rate limit."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from .._errors import ConfigError
from .._oracle import Oracle
from .._ratelimit import limit_rows_per_s
from .._validation import check_positive_int
from .actors import STATS_GROUP, _Ledger, _RemoteError, _Worker
from .limiter import LEASE_HORIZON_S, _Limiter
from .overlap import WorkersNotNeeded
from .specs import (  # noqa: F401 - executor_plan, MAX_TASKS_PER_WORKER: importable here too
    INLINE_SPEC_BYTES,
    MAX_TASKS_PER_WORKER,
    HTTPOracleSpec,
    SoftmaxSpec,
    executor_plan,
)

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only (3.10 supported)

logger = logging.getLogger(__name__)

#: Seconds between two looks at an ``abandon`` event while the workers start.
READY_POLL_S = 0.05
#: Tasks shipped to a worker beyond those it runs, so a free thread never waits for the driver.
QUEUED_PER_WORKER = 1


class RayExecutor:
    """Runs engine tasks on Ray worker actors; the executor the coordinator talks to.

    Parameters
    ----------
    oracle : Oracle
        The oracle to query (shipped to each worker as a spec, see :func:`oracle_spec`). A
        :class:`~distextract._journal.JournaledOracle` makes every worker journal its rows in
        the same journal directory (segments ``w<i>.<attempt>.arrows``); a worker, as it
        starts, is served the rows of the *sealed* segments there, never those of a segment
        still being written (:func:`~.run.run_distributed` seals the driver's first: call
        ``seal()`` on the journaled oracle when building the executor yourself).
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
    discover : bool, optional
        With no rate limit: discover the server's requests/s limit in the shared limiter
        actor (every worker's 429s lower one pace). Default: the HTTP oracle's
        ``discover_rate``.
    actor_options : dict, optional
        Extra ``.options(...)`` for the worker actors (``resources``, ``runtime_env``, ...).
    abandon : threading.Event, optional
        Set by another thread when the workers will not be needed (an overlapped run whose
        coordinator finished in the driver first): while they start, the actors are then
        killed and :class:`~.overlap.WorkersNotNeeded` is raised instead of waiting for them.

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
                 actor_options: dict | None = None, discover: bool | None = None,
                 abandon: threading.Event | None = None) -> None:
        if not ray.is_initialized():
            raise ConfigError("Ray is not initialised; call ray.init(...) or use "
                              "run_distributed(), which starts Ray for you")
        self.workers = check_positive_int("workers", workers)
        if placement not in (None, "spread", "strict_spread", "pack"):
            raise ConfigError(f"placement must be 'spread', 'strict_spread', 'pack' or None, "
                              f"got {placement!r}")
        plan = executor_plan(oracle, rate=rate, rows_rate=rows_rate, discover=discover,
                             tasks_per_worker=tasks_per_worker, budget=budget)
        spec, journal = plan["spec"], plan["journal_dir"]
        self.journal_dir = journal_dir if journal_dir is not None else journal
        self.spec = spec
        rate, rows_rate = plan["rate"], plan["rows_rate"]
        self.rate, self.rows_rate, self.discover = rate, rows_rate, plan["discover"]
        self.tasks_per_worker = plan["tasks_per_worker"]
        budget = plan["budget"]
        if isinstance(spec, SoftmaxSpec):
            spec = spec.inner
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
        if rate is not None or rows_rate is not None or self.discover:
            self._names["limiter"] = f"distextract-limiter-{run_id}"
            self._limiter = ray.remote(_Limiter).options(
                num_cpus=0, max_restarts=0, name=self._names["limiter"]).remote(
                    rate, rows_rate, self.discover)
            if not self.discover:  # a discovered pace changes: lease one slot at a time
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
        refs = [a.ready.remote() for a in self.actors]
        while abandon is not None:
            if abandon.is_set():
                self._kill()
                raise WorkersNotNeeded("the run finished before the workers were ready")
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=READY_POLL_S)
            if len(done) == len(refs):
                break
        infos = self._get(refs)
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
        pending = collections.deque(enumerate(tasks))
        inflight: dict[Any, tuple[int, int]] = {}
        load = [0] * self.workers
        error: BaseException | None = None

        def submit(w: int) -> None:
            i, task = pending.popleft()
            inflight[self.actors[w].run.remote(task)] = (i, w)
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
        return self.rate is not None or self.discover

    def limit_rows_per_s(self) -> float | None:
        """The global limit in rows/s (None: unlimited or discovered)."""
        return limit_rows_per_s(self.rate, self.rows_rate, self.max_batch)

    def _kill(self) -> None:
        """Kill every actor of this executor at once, without asking the workers to close (an
        abandoned start: some are not running yet)."""
        self._closed = True
        for actor in [*self.actors, self._ledger, self._limiter]:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._pg)

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
        refs = [actor.close.remote() for actor in self.actors]  # all at once, not in turn
        deadline = time.monotonic() + 30
        for ref in refs:
            try:
                finals.append(ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
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

