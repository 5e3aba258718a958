"""run_distributed: start or join Ray, run the coordinator over a RayExecutor, report.

Ray is imported here only when it is needed (joining, or starting it): with the overlapped
start, the coordinator's first rounds run while this module imports Ray and ``ray.init``
starts its processes (several seconds, longer on a loaded machine).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._oracle import Oracle
from .._ratelimit import limit_rows_per_s
from .._validation import check_positive_int
from .overlap import OverlappedExecutor, WorkersNotNeeded, _find
from .progress import ProgressDisplay
from .specs import executor_plan

if TYPE_CHECKING:
    from .executor import RayExecutor

logger = logging.getLogger(__name__)

#: Seconds between two polls of the actors' counters by the driver.
POLL_INTERVAL_S = 0.5


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
        if hasattr(ex, "ray"):  # an OverlappedExecutor: the workers' counters once ready
            ex = ex.ray()
            if ex is None:
                return self.last
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
def _ray_initialized() -> bool:
    """Whether Ray is initialised in this process (without importing it)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _single_threaded_blas() -> Callable[[], None] | None:
    """Limit the BLAS (and OpenMP) thread pools of this process to one thread; returns what
    restores them, or None when :mod:`threadpoolctl` is not installed.

    ``ray.init`` forks Ray's processes from the driver (its ``Popen`` has a ``preexec_fn``, so
    no ``vfork``), and OpenBLAS tears its thread pool down around a fork: a fork while another
    thread was inside a multithreaded BLAS call left that call spinning for minutes in one test
    run. With one BLAS thread no call uses the pool, so the coordinator may compute while
    ``ray.init`` runs.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1).restore_original_limits


#: Niceness given to the helper processes of a local Ray instance this process starts.
RAY_HELPER_NICE = 10
#: Ray's helper processes (their command lines): the dashboard (started even with
#: ``include_dashboard=False``), the log monitor and the autoscaler's monitor. Not the GCS or
#: the raylet (the driver's connect and the workers' start wait on them), nor the dashboard's
#: agent and the runtime-env agent (the raylet waits for them to register: at nice 10 on a
#: loaded machine a start timed out once, "node timed out during startup"), nor the workers
#: (Ray starts them at nice 15).
RAY_HELPERS = ("dashboard/dashboard.py", "_private/log_monitor.py",
               "autoscaler/_private/monitor.py")
#: Seconds between two looks for new helpers, and the longest the look-out runs.
HELPER_POLL_S = 0.1
HELPER_WATCH_S = 60.0


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (``/proc/<pid>/task/*/children``; [] where unreadable)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                out += [int(v) for v in fh.read().split()]
        except (OSError, ValueError):
            continue
    return out


class _HelperNice(threading.Thread):
    """Lowers the CPU priority of a starting local Ray's helper processes as they appear.

    ``ray.init`` starts them at the driver's niceness (0), and they take ~2.6 CPU-seconds in
    their first seconds (BENCHMARKS.md, branch ``rate4``) while the driver (an overlapped
    start: its engine threads and HTTP senders) and, on one machine, a rate-limited server
    want the CPU. Each helper that appears among this process's descendants is set to
    :data:`RAY_HELPER_NICE` (only ever raised: a process already nicer keeps its value). Runs
    until :meth:`stop` or :data:`HELPER_WATCH_S`. Linux ``/proc`` only; elsewhere it finds no
    children and does nothing."""

    def __init__(self) -> None:
        super().__init__(name="dx-ray-nice", daemon=True)
        self.halt = threading.Event()
        self.reniced: dict[int, str] = {}

    def stop(self) -> None:
        self.halt.set()

    def look(self) -> None:
        """One look at this process's descendants (not below Ray's workers)."""
        todo, seen = [os.getpid()], set()
        while todo:
            pid = todo.pop()
            for child in _children(pid):
                if child in seen:
                    continue
                seen.add(child)
                if child in self.reniced:
                    continue
                try:
                    with open(f"/proc/{child}/cmdline", "rb") as fh:
                        # the program and its script (the raylet's arguments name the
                        # agents' scripts too)
                        argv = fh.read().decode(errors="replace").split("\0")[:3]
                except OSError:
                    continue
                helper = next((h for h in RAY_HELPERS if any(a.endswith(h) for a in argv)),
                              None)
                if helper is None:
                    if not any(a.endswith("default_worker.py") for a in argv):
                        todo.append(child)  # the raylet starts the agents
                    continue
                try:
                    if os.getpriority(os.PRIO_PROCESS, child) < RAY_HELPER_NICE:
                        os.setpriority(os.PRIO_PROCESS, child, RAY_HELPER_NICE)
                except OSError:
                    continue
                self.reniced[child] = helper

    def run(self) -> None:
        deadline = time.monotonic() + HELPER_WATCH_S
        while True:
            self.look()
            if len(set(self.reniced.values())) == len(RAY_HELPERS):
                return  # each of them found
            if self.halt.wait(HELPER_POLL_S) or time.monotonic() > deadline:
                return


def _start_ray(address: str | None, workers: int, nice: _HelperNice | None = None) -> bool:
    """Start or join Ray; returns True when this call started it (and should stop it).
    ``nice`` (not started) is started just before a local instance's ``ray.init``."""
    import ray

    if ray.is_initialized():
        if address is not None:
            logger.info("Ray already initialised; using it (address=%r ignored)", address)
        return False
    if address is None:
        ncpu = max(os.cpu_count() or 1, workers)
        logger.info("starting a local Ray instance (%d CPUs)", ncpu)
        if nice is not None:
            nice.start()
        ray.init(address="local", num_cpus=ncpu, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True)
    else:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
    return True


def _stop_ray() -> None:
    """``ray.shutdown()`` of the local Ray this run started, less its wait for the autoscaler's
    monitor.

    ``ray.shutdown`` stops each of Ray's processes in turn, a SIGTERM and up to a second's wait
    each; the autoscaler's monitor (of no use to a local instance of fixed size) lets the whole
    second pass before it is killed (1.0 of 1.3 s measured, ``BENCHMARKS.md``). It is killed
    here first and reaped, so ``ray.shutdown`` finds it gone. Ray's private node handle is used
    defensively: where it is missing (another Ray version), ``ray.shutdown`` does it all.
    """
    import ray

    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node as node

        infos = [] if node is None else node.all_processes.get(
            ray_constants.PROCESS_TYPE_MONITOR, [])
        for info in infos:
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=5)
    except Exception as exc:  # noqa: BLE001 - ray.shutdown below stops it anyway
        logger.debug("could not stop Ray's monitor first: %s", exc)
    ray.shutdown()


# ------------------------------------------------- Ray left running for the process's exit
class _ExitStop:
    """Whether :func:`run_distributed` leaves the local Ray it started for
    :func:`stop_left_ray` (:func:`leave_ray_for_exit`), and whether one is left."""

    enabled = False
    left = False


#: Seconds the detached stopper waits for this process to end before it kills Ray's processes
#: anyway (it normally ends within milliseconds of starting the stopper).
STOPPER_WAIT_S = 10.0

#: The detached stopper (``python -c``, standard library only): waits until the process given
#: first has ended (gone or a zombie), then SIGKILLs each ``pid:start`` given after it whose
#: start time (``/proc/<pid>/stat`` field 22) is still the same (a reused pid is left alone).
_STOPPER = r"""
import os, signal, sys, time
def start(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]
parent, wait = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + wait
while start(parent) is not None and time.monotonic() < deadline:
    time.sleep(0.005)
for item in sys.argv[3:]:
    pid, t = item.split(":")
    if start(int(pid)) == t:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


def leave_ray_for_exit(enabled: bool = True) -> None:
    """Let :func:`run_distributed` leave the local Ray instance it starts running when the
    run ends without error, for :func:`stop_left_ray` to stop as this process exits (a
    cluster joined with ``address`` is left as before: ``ray.shutdown`` disconnects).

    For a process that ends right after the run (``distextract extract``): its run directory
    is written first, and Ray's processes are then killed without ``ray.shutdown``'s waits
    (0.3 to 0.4 s, plus about 0.5 s of the interpreter's own teardown with Ray loaded, which
    the CLI skips too). A run that fails stops Ray at once as before."""
    _ExitStop.enabled = bool(enabled)


def _stat_start(pid: int) -> str | None:
    """Start time of a live process (``/proc/<pid>/stat`` field 22); None when it is gone or
    a zombie, or without ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]


def _descendants(pids: list[int]) -> list[int]:
    """Every live descendant of ``pids`` (from ``/proc``; empty without it)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(name))
    out: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_left_ray() -> int:
    """Stop the local Ray instance :func:`run_distributed` left running
    (:func:`leave_ray_for_exit`), for a process about to end with ``os._exit``; returns the
    number of Ray processes handed to the detached stopper (0 when no Ray was left).

    Ray's reaper is killed first and reaped (when its parent ends it kills its whole process
    group, which holds the shell's job or a calling program). Every other process of the
    instance and every process they started (workers, agents) is then handed, by pid and
    start time, to a detached stopper (a small ``python -c`` in a session of its own, no
    shared output) that SIGKILLs them once this process has ended: this process's Ray core
    worker never sees them die, so it cannot fail the exit, and nothing waits for them. Ray's
    own processes die with this one anyway (Ray starts them to do so on Linux); the stopper
    makes sure their children do too. Without ``/proc`` (not Linux) ``ray.shutdown()`` does
    it all, waiting."""
    if not _ExitStop.left:
        return 0
    _ExitStop.left = False
    t0 = time.perf_counter()
    import subprocess

    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node as node

        infos = {kind: list(items) for kind, items in node.all_processes.items()}
        procs = [i.process for kind, items in infos.items() for i in items
                 if kind != ray_constants.PROCESS_TYPE_REAPER]
        for info in infos.get(ray_constants.PROCESS_TYPE_REAPER, []):
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=5)
        if not os.path.isdir("/proc"):
            raise OSError("no /proc")
    except Exception as exc:  # noqa: BLE001 - another Ray version, or not Linux
        logger.debug("stopping Ray with ray.shutdown (%s)", exc)
        _stop_ray()
        return 0
    pids = [p.pid for p in procs if p.poll() is None]
    targets = [(pid, _stat_start(pid)) for pid in pids + _descendants(pids)]
    targets = [(pid, t) for pid, t in targets if t is not None and pid != os.getpid()]
    subprocess.Popen(
        [sys.executable, "-c", _STOPPER, str(os.getpid()), str(STOPPER_WAIT_S),
         *[f"{pid}:{t}" for pid, t in targets]],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)
    logger.info("Ray's %d processes handed to a detached stopper in %.3f s", len(targets),
                time.perf_counter() - t0)
    return len(targets)


def _run_while_starting(coord: Any, front: OverlappedExecutor,
                        start: Callable[[threading.Event], RayExecutor]) -> tuple[Any, Any]:
    """Run the coordinator in a thread (its first tasks in this process) while this thread
    starts Ray and the workers.

    Returns the engine result and the Ray executor, or None for it when the coordinator
    finished before the workers were ready (their start is then abandoned, not waited for:
    :class:`~.overlap.WorkersNotNeeded`); raises the run's error."""
    box: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            box["eng"] = coord.run()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc
        finally:
            finished.set()

    thread = threading.Thread(target=run, name="dx-coordinator", daemon=True)
    thread.start()
    abandoned = False
    try:
        front.provide(start(finished))
    except WorkersNotNeeded:
        abandoned = True
        logger.info("the run finished in the driver before the workers were ready; their "
                    "start is abandoned")
    except BaseException as exc:  # noqa: BLE001 - the coordinator raises it at its next map
        front.provide(error=exc)
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["eng"], (None if abandoned else front.ray(wait=True))


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
        ``journal_dir``, ...), except ``overlap_start``: without a budget, and when this call
        starts or joins Ray, run the first tasks in the driver while Ray and its workers start
        (:mod:`.overlap`): ``ray.init`` too when :mod:`threadpoolctl` can hold BLAS to one
        thread until it returns (:func:`_single_threaded_blas`), else only the workers' start.

    Returns
    -------
    engine : EngineResult
    queries : int
        Rows paid across all workers and attempts.
    extra : dict
        ``{"distributed": {...}}`` merged into the report: workers, nodes, restarts, per-worker
        rows, limiter counters, time split; ``workers_used`` is False when an overlapped run
        finished in the driver before the workers were ready (their start abandoned).
    """
    from ..engine.loop import Coordinator

    workers = check_positive_int("workers", workers)
    # The workers read only sealed journal segments: seal the driver's now, so the rows it
    # paid so far (the output probe's) reach them; what it pays from here (an overlapped
    # start) goes to its next segment, which they never read while it is written.
    journal = _find(oracle, "seal")
    if journal is not None:
        sealed = journal.seal()
        if sealed is not None:
            logger.info("journal segment %s sealed before the workers start", sealed)
    # overlap only while Ray itself starts (an initialised Ray builds the workers in ~1 s)
    overlap = (bool(executor_options.pop("overlap_start", False)) and budget is None
               and not _ray_initialized())
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    started = succeeded = False
    display = None
    executor = None
    front = None
    poller = None

    def start_ray() -> None:
        nonlocal started
        started = _start_ray(address, workers, nice)
        timing["ray_start_s"] = time.perf_counter() - t0

    restore_blas: Callable[[], None] | None = None
    ray_init_rows = [0]  # rows the driver paid while ray.init ran
    nice = _HelperNice()  # started by a local ray.init (_start_ray)

    def start(abandon: threading.Event | None = None) -> RayExecutor:
        from .executor import RayExecutor

        if "ray_start_s" not in timing:
            start_ray()
            if front is not None:
                ray_init_rows[0] = front.local_paid()
                if restore_blas is not None:
                    front.at_next_map(restore_blas)  # when no engine thread is computing
        if abandon is not None and abandon.is_set():
            raise WorkersNotNeeded("the run finished while Ray started")
        ex = RayExecutor(oracle, workers, budget=budget, seed=seed, abandon=abandon,
                         **executor_options)
        timing["workers_ready_s"] = time.perf_counter() - t0
        return ex

    try:
        if overlap:
            # ray.init forks its processes from this one: the driver computes meanwhile only
            # with BLAS held to one thread (_single_threaded_blas); without threadpoolctl Ray
            # starts first and only the workers' start (no fork here) overlaps the driver
            restore_blas = _single_threaded_blas()
            if restore_blas is None:
                start_ray()
        if overlap:
            plan = executor_plan(oracle, budget=budget, **{
                k: executor_options.get(k) for k in ("rate", "rows_rate", "discover",
                                                     "tasks_per_worker")})
            max_batch = getattr(oracle, "max_batch", None)
            front = OverlappedExecutor(oracle, workers, plan["tasks_per_worker"], max_batch,
                                       plan["request_limited"])
            coordinated: Any = front
            tasks_per_worker = plan["tasks_per_worker"]
            limit = limit_rows_per_s(plan["rate"], plan["rows_rate"], max_batch)
        else:
            executor = start()
            coordinated = executor
            tasks_per_worker = executor.tasks_per_worker
            limit = executor.limit_rows_per_s()
        if progress is None and getattr(sys.stderr, "isatty", lambda: False)():
            display = ProgressDisplay(input_dim=d, limit_rows_per_s=limit, budget=budget)
        sink = display.update if display is not None else (lambda **kw: None)
        poller = _Poller(coordinated, sink)
        poller.start()

        def engine_progress(info: dict) -> None:
            if display is not None:
                display(info)
            if progress is not None:
                progress({**info, "distributed": dict(poller.last)})

        # Cut the work into enough tasks to fill every worker's concurrent slots.
        parallelism = workers * tasks_per_worker
        coord = Coordinator(coordinated, d, cfg, seed, engine_progress, parallelism, n_val)
        t1 = time.perf_counter()
        if front is None:
            eng = coord.run()
        else:
            eng, executor = _run_while_starting(coord, front, start)
        run_s = time.perf_counter() - t1
        logger.info("coordinator finished after %.2f s", run_s)
        poller.halt.set()
        poller.join()
        queries = front.queries if front is not None else executor.queries
        map_s = front.map_seconds if front is not None else executor.map_seconds
        if executor is not None:
            ledger = executor.ledger_stats()
            limiter = executor.limiter_stats()
            finals = executor.close()
        else:  # every task ran in the driver: its own limiter's counters
            ledger = {"per_worker": []}
            limiter = front.driver_limiter_stats()
            finals = []
        per = ledger["per_worker"]
        oracle_s = sum(w["oracle_s"] for w in per)
        task_s = sum(w["task_s"] for w in per)
        extra = {"distributed": {
            "workers": workers, "tasks_per_worker": tasks_per_worker,
            "workers_used": executor is not None,
            "address": address, "nodes": 0 if executor is None else len(set(executor.nodes)),
            "rows_paid": queries,
            "rows_asked": sum(w["asked"] for w in per) + (
                0 if front is None else int(front.local.queries)),
            "rows_from_journal": sum(w["from_journal"] for w in per),
            "restarts": sum(max(0, w["attempts"] - 1) for w in per),
            "per_worker": per, "limiter": limiter,
            "limit_rows_per_s": limit,
            "rows_per_s": queries / run_s if run_s > 0 else None,
            "http": [f.get("http") for f in finals if f is not None and "http" in f] or None,
            "timing": {**timing, "run_s": run_s,
                       "worker_oracle_s": oracle_s, "worker_compute_s": task_s - oracle_s,
                       "coordinator_s": run_s - map_s},
        }}
        if front is not None:
            extra["distributed"]["overlap"] = {
                "driver_tasks": front.local_tasks, "driver_rows_paid": front.local_paid(),
                "rows_during_ray_init": ray_init_rows[0], "switched_s": front.switched_s}
        succeeded = True
        return eng, queries, extra
    finally:
        nice.stop()
        if poller is not None:
            poller.halt.set()
        if display is not None:
            display.close()
        if front is not None:
            front.run_deferred()  # BLAS threads back (the coordinator has stopped)
            front.close_local()
        if restore_blas is not None:
            restore_blas()  # also when ray.init failed (nothing deferred then); idempotent
        if front is not None and executor is None:
            executor = front._ray  # built, but the run failed: close it
        t_close = time.perf_counter()
        if executor is not None:
            executor.close()
        t_shut = time.perf_counter()
        if started and succeeded and _ExitStop.enabled and address is None:
            _ExitStop.left = True  # a local instance: stopped by stop_left_ray at the exit
            logger.info("workers closed in %.2f s; Ray left running until the process exits",
                        t_shut - t_close)
        else:
            if started:
                _stop_ray()
            logger.info("workers closed in %.2f s, Ray shut down in %.2f s",
                        t_shut - t_close, time.perf_counter() - t_shut)




__all__ = ["leave_ray_for_exit", "run_distributed", "stop_left_ray"]
