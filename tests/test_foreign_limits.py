"""The client against rate-limited servers it was not written with (issue 20, item 3).

The server is ``benchmarks/foreign_server.py``: its own token bucket (no code shared with
``distextract serve``), fractional or integer ``Retry-After``, optional ``X-RateLimit-*``
headers, a rows/min limit. Real HTTP on loopback, small networks, a few seconds each.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import httpx
import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract._http import HTTPOracle, quota_reset_seconds
from distextract._ratelimit import TokenBucket

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from foreign_server import ForeignServer  # noqa: E402

NET = dx.targets.random_network(4, 6, 2, seed=5)


@contextlib.contextmanager
def foreign(**options):
    options.setdefault("latency", 0.005)
    server = ForeignServer(NET.W, NET.b, NET.A, NET.c, **options)
    url = server.start()
    try:
        yield server, url
    finally:
        server.stop()


class Spy(TokenBucket):
    """A real TokenBucket that records what the client asked of it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.penalties_s: list[float] = []
        self.holds_s: list[float] = []
        self._spy_lock = threading.Lock()

    def penalize(self, seconds: float) -> None:
        with self._spy_lock:
            self.penalties_s.append(seconds)
        super().penalize(seconds)

    def hold(self, seconds: float) -> None:
        with self._spy_lock:
            self.holds_s.append(seconds)
        super().hold(seconds)


def _query_all(oracle: HTTPOracle, n: int, seed: int = 0) -> None:
    X = np.random.default_rng(seed).normal(size=(n, 4))
    assert_allclose(oracle.query(X), NET.predict(X), rtol=1e-12, atol=1e-12)


def test_fractional_retry_after_is_honoured_as_a_fraction():
    with foreign(rate=40, burst=1, retry_after="frac") as (server, url):
        spy = Spy()  # unpaced: the server's 429s are the only brake
        with HTTPOracle(url, 4, max_batch=4, max_in_flight=4, limiter=spy, seed=0) as oracle:
            _query_all(oracle, 48)
        counters = server.counters()
    assert counters["refused"] >= 1 and len(spy.penalties_s) == counters["refused"]
    # each pause is the server's fraction of a second (<= 1/40 s), not rounded up to 1 s
    assert all(0 < s <= 1 / 40 + 1e-3 for s in spy.penalties_s), spy.penalties_s
    assert oracle.rows_paid == counters["rows"] == 48


def test_burst1_server_at_the_clients_rate_spacing_after_the_first_429():
    """A server keeping no burst, at the client's own rate: the first 429 turns the limiter's
    spacing on (no request lets go less than an interval after the previous one), the answers
    are right, and refusals stay a small share (the server's own jitter can still refuse)."""
    with foreign(rate=50, burst=1, retry_after="frac") as (server, url):
        bucket = TokenBucket(rate=50)
        with HTTPOracle(url, 4, max_batch=4, max_in_flight=4, limiter=bucket,
                        seed=0) as oracle:
            _query_all(oracle, 4 * 60)
        counters = server.counters()
    stats = bucket.stats()
    assert stats["spacing"] == (counters["refused"] > 0) == (stats["penalties"] > 0)
    assert counters["answered"] == 60 and counters["refused"] <= 12, counters


def test_integer_retry_after_is_honoured_in_whole_seconds():
    with foreign(rate=40, burst=1, retry_after="int") as (server, url):
        spy = Spy()
        with HTTPOracle(url, 4, max_batch=4, max_in_flight=2, limiter=spy, seed=0) as oracle:
            _query_all(oracle, 16)
    assert spy.penalties_s and set(spy.penalties_s) == {1.0}


def test_ratelimit_headers_hold_every_request_until_the_reset():
    """X-RateLimit-Remaining: 0 with X-RateLimit-Reset holds the limiter until the reset (a
    fraction of a second here), every request waiting, and a hold that delays the next slot
    lowers the pace. A client told a rate 20% above the server's is refused only by requests
    already on their way when the quota ran out (1 to 3 of 80 on a loaded 2-core machine)."""
    with foreign(rate=50, burst=5, retry_after="frac", ratelimit_headers=True) as (server, url):
        spy = Spy(rate=60)
        with HTTPOracle(url, 4, max_batch=4, max_in_flight=4, limiter=spy, seed=0) as oracle:
            _query_all(oracle, 320)
        counters = server.counters()
    assert spy.holds_s and all(0 < s <= 1 / 50 + 1e-3 for s in spy.holds_s), spy.holds_s
    assert spy.stats()["holds"] == len(spy.holds_s)
    assert counters["refused"] <= 4, counters
    assert counters["rows"] == 320


def test_quota_headers_are_read_in_their_common_forms():
    h = httpx.Headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0.250"})
    assert quota_reset_seconds(h) == pytest.approx(0.25)
    assert quota_reset_seconds(httpx.Headers({"X-RateLimit-Remaining": "3",
                                              "X-RateLimit-Reset": "1"})) is None
    epoch = httpx.Headers({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000002"})
    assert quota_reset_seconds(epoch, now=1_700_000_000.0) == pytest.approx(2.0)
    draft = httpx.Headers({"RateLimit-Remaining": "0", "RateLimit-Reset": "3"})
    assert quota_reset_seconds(draft) == 3.0
    assert quota_reset_seconds(httpx.Headers({"X-RateLimit-Remaining": "0",
                                              "X-RateLimit-Reset": "soon"})) is None


def test_discovery_converges_near_the_limit_with_few_429s():
    """No rate given: slow start, then AIMD on 429s finds the server's 100 requests/s."""
    with foreign(rate=100, burst=5, retry_after="frac") as (server, url):
        with HTTPOracle(url, 4, max_batch=2, max_in_flight=8, discover_rate=True,
                        seed=0) as oracle:
            X = np.random.default_rng(1).normal(size=(2, 4))

            def work() -> None:  # 8 callers, each always waiting for its next answer
                for _ in range(60):
                    oracle.query(X)

            threads = [threading.Thread(target=work) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pace = oracle.limiter.stats()
        counters = server.counters()
    assert pace["discover"] and pace["slowdowns"] >= 1
    assert 60 <= pace["paced_rate"] <= 130, pace
    total = counters["answered"] + counters["refused"]
    assert counters["refused"] <= 0.05 * total, counters
    assert counters["answered"] == 480


def test_rows_per_minute_limit_is_respected_with_rows_rate():
    """A limit on rows per minute (6,000 = 100 rows/s, 50 rows of burst), met by
    ``rows_rate=100``: the rows answered never run ahead of the server's bucket."""
    with foreign(rate=None, rows_per_min=6000, rows_burst=50, retry_after="frac",
                 max_batch=16) as (server, url):
        with HTTPOracle(url, 4, max_batch=16, max_in_flight=4, rows_rate=100,
                        seed=0) as oracle:
            _query_all(oracle, 240)
        counters = server.counters()
    assert counters["rows"] == 240
    assert counters["refused"] <= 1, counters  # jitter may cost one, the pace none
    span = counters["last"] - counters["first"]
    assert counters["rows"] <= 50 + 100 * span + 16  # burst + rate x time (+ one request)


# ------------------------------------------------------ driver pays while Ray starts
class _SlowOracle(dx.Oracle):
    """An in-process network that takes ``delay`` seconds per query (a slow API)."""

    def __init__(self, delay: float, after: int = 0, then=None) -> None:
        self.input_dim, self.output_dim, self.max_batch = 4, 2, None
        self.delay = delay
        self.calls = 0
        self.after, self.then = after, then
        self._lock = threading.Lock()

    def _query(self, X):
        import time

        time.sleep(self.delay)
        with self._lock:
            self.calls += 1
            fire = self.then is not None and self.calls == self.after
        if fire:
            self.then()
        return NET.predict(X)


class _Workers:
    """Stands in for the RayExecutor in a unit test of the hand-over (injected)."""

    def __init__(self) -> None:
        self.seen: list = []
        self.queries = 0

    def map(self, tasks):
        self.seen.extend(tasks)
        self.queries += sum(t.X.shape[0] for t in tasks)
        return [NET.predict(t.X) for t in tasks]


def test_overlapped_executor_hands_tasks_not_started_to_the_workers_in_order():
    from distextract.distributed.overlap import OverlappedExecutor
    from distextract.engine.tasks import EvalTask

    workers = _Workers()
    box = {}
    # the workers become ready while the driver answers its 4th task (mid-map)
    slow = _SlowOracle(0.02, after=4, then=lambda: box["front"].provide(workers))
    front = box["front"] = OverlappedExecutor(slow, workers=1, tasks_per_worker=2,
                                              max_batch=None, request_limited=False)
    Xs = [np.random.default_rng(i).normal(size=(3, 4)) for i in range(12)]
    out = front.map([EvalTask(X) for X in Xs])
    for X, Y in zip(Xs, out, strict=True):  # every answer in its task's place
        assert_allclose(Y, NET.predict(X), rtol=1e-12)
    local = front.local_tasks  # the 4 answered, and the other thread's task then running
    assert 4 <= local <= 5 and len(workers.seen) == 12 - local
    assert front.queries == 3 * 12  # the driver's rows plus the workers'
    assert front.map([EvalTask(Xs[0])])[0].shape == (3, 2) and len(workers.seen) == 13 - local


class _Concurrency(_SlowOracle):
    """Records how many queries run at once, and in which threads."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.now = self.most = 0
        self.threads: set = set()

    def _query(self, X):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.get_ident())
        try:
            return super()._query(X)
        finally:
            with self._lock:
                self.now -= 1


def test_overlapped_executor_runs_at_most_driver_tasks_at_once_on_threads_started_once():
    """8 workers x 8 slots: the coordinator cuts 64 tasks, the driver takes them all but runs
    8 at a time (its HTTP client sends 8 requests at a time; 64 tasks' CPU at once kept its
    senders from the GIL), on threads started before the first map, not per map."""
    from distextract.distributed.overlap import DRIVER_TASKS, OverlappedExecutor
    from distextract.engine.tasks import EvalTask

    oracle = _Concurrency(0.01)
    before = threading.active_count()
    front = OverlappedExecutor(oracle, workers=8, tasks_per_worker=8, max_batch=None,
                               request_limited=True)
    try:
        assert front.parallelism == 64 and DRIVER_TASKS == 8
        assert threading.active_count() == before + 64  # started with the executor
        Xs = [np.random.default_rng(i).normal(size=(2, 4)) for i in range(64)]
        for _ in range(2):
            out = front.map([EvalTask(X) for X in Xs])
            for X, Y in zip(Xs, out, strict=True):
                assert_allclose(Y, NET.predict(X), rtol=1e-12)
            assert threading.active_count() == before + 64  # none started per map
        assert oracle.most == DRIVER_TASKS  # 8 at once (64 before)
        assert front.local_tasks == 128
    finally:
        front.close_local()


def test_blas_is_held_to_one_thread_while_ray_init_forks_and_given_back_at_the_next_map():
    """The overlapped ray.init holds every BLAS pool to one thread (a fork during a
    multithreaded OpenBLAS call can hang it); the coordinator's next map gives them back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from distextract.distributed.overlap import OverlappedExecutor
    from distextract.distributed.run import _single_threaded_blas
    from distextract.engine.tasks import EvalTask

    before = [(p["prefix"], p["num_threads"]) for p in threadpoolctl.threadpool_info()]
    restore = _single_threaded_blas()
    assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info())
    front = OverlappedExecutor(_SlowOracle(0.0), workers=1, tasks_per_worker=1,
                               max_batch=None, request_limited=False)
    front.at_next_map(restore)
    assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info())
    front.map([EvalTask(np.zeros((1, 4)))])
    assert [(p["prefix"], p["num_threads"]) for p in threadpoolctl.threadpool_info()] == before
    front.run_deferred()  # nothing left: called once only
    assert [(p["prefix"], p["num_threads"]) for p in threadpoolctl.threadpool_info()] == before


def test_overlapped_executor_raises_when_ray_could_not_start():
    from distextract.distributed.overlap import OverlappedExecutor
    from distextract.engine.tasks import EvalTask

    front = OverlappedExecutor(_SlowOracle(0.0), workers=1, tasks_per_worker=1,
                               max_batch=None, request_limited=False)
    front.provide(error=dx.ConfigError("no Ray here"))
    with pytest.raises(dx.ConfigError, match="no Ray here"):
        front.map([EvalTask(np.zeros((1, 4)))])


def test_cli_with_workers_pays_its_first_rows_in_the_driver_while_ray_starts(tmp_path):
    """The whole CLI in its own process (Ray not started yet): the driver's rows and the
    workers' add up to the server's count and to the in-process run's rows."""
    import json
    import subprocess

    pytest.importorskip("ray")
    net = dx.targets.random_network(16, 24, 2, seed=1)
    server = ForeignServer(net.W, net.b, net.A, net.c, rate=50, burst=5, retry_after="frac",
                           latency=0.005, max_batch=16)
    url = server.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "distextract", "extract", "--url", url, "--input-dim", "16",
             "--out", str(tmp_path / "run"), "--batch-size", "16", "--workers", "2",
             "--rate", "50", "--seed", "0"],
            capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    dist = report["extraction"]["distributed"]
    counters = server.counters()
    assert dist["overlap"]["driver_tasks"] >= 1 and dist["overlap"]["driver_rows_paid"] > 0
    # the coordinator started before ray.init: it paid rows while Ray's processes started
    # (threadpoolctl, which scikit-learn installs, holds BLAS to one thread meanwhile)
    assert 0 < dist["overlap"]["rows_during_ray_init"] <= dist["overlap"]["driver_rows_paid"]
    # --output auto (the default) paid the precision probe from this process before the
    # executor started (journaled, then served to the tasks): the executor paid the rest
    probe = report["extraction"]["output"]["rows"]
    assert report["extraction"]["output"]["detected"] and probe == 29
    assert dist["rows_paid"] + probe == report["queries"]["paid"] == counters["rows"]
    assert report["queries"]["paid"] == dx.extract(net, seed=0).queries
    if dist["workers_used"]:  # the workers were ready before the run ended: they took over
        assert dist["timing"]["workers_ready_s"] >= dist["timing"]["ray_start_s"] > 0
    else:  # the driver finished first: the workers' start was abandoned, not waited for
        assert "workers_ready_s" not in dist["timing"] and dist["per_worker"] == []
        assert dist["overlap"]["driver_rows_paid"] == dist["rows_paid"]
        assert dist["timing"]["run_s"] < report["wall_seconds"]


def _run_python(code: str):
    """Run ``code`` in a fresh Python process (as the CLI starts its own Ray); it must exit 0."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_stop_ray_stops_every_process_ray_init_started():
    """_stop_ray kills Ray's autoscaler monitor first (ray.shutdown waits a second for it
    otherwise), then ray.shutdown stops the rest: no process of that Ray instance is left.
    In a process of its own, as the CLI starts and stops its own Ray."""
    pytest.importorskip("ray")
    code = (
        "import logging, os, ray\n"
        "from distextract.distributed.run import _stop_ray\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False,\n"
        "         logging_level=logging.WARNING)\n"
        "node = ray._private.worker._global_node\n"
        "procs = {kind: [i.process for i in infos]\n"
        "         for kind, infos in node.all_processes.items()}\n"
        "assert procs.get('monitor'), sorted(procs)\n"
        "_stop_ray()\n"
        "alive = [kind for kind, ps in procs.items() for p in ps if p.poll() is None]\n"
        "print('ALIVE', alive, 'MONITOR', procs['monitor'][0].returncode)\n")
    proc = _run_python(code)
    # nothing left running; the monitor was killed (SIGKILL: -9), not waited for
    assert "ALIVE [] MONITOR -9" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_start_ray_lowers_the_priority_of_rays_helper_processes():
    """A local ray.init started with the look-out (_HelperNice): the dashboard, the log
    monitor and the autoscaler's monitor run at RAY_HELPER_NICE;
    the GCS and the raylet keep the driver's priority. In a process of its own, as the CLI
    starts its own Ray."""
    pytest.importorskip("ray")
    code = (
        "import os, ray\n"
        "from distextract.distributed.run import (RAY_HELPERS, _HelperNice, _start_ray,\n"
        "                                         _stop_ray)\n"
        "nice = _HelperNice()\n"
        "assert _start_ray(None, 1, nice)\n"
        "nice.join(30)\n"
        "node = ray._private.worker._global_node\n"
        "level = {kind: sorted({os.getpriority(os.PRIO_PROCESS, i.process.pid)\n"
        "                       for i in infos})\n"
        "         for kind, infos in node.all_processes.items()}\n"
        "found = sorted(set(nice.reniced.values()))\n"
        "now = sorted({os.getpriority(os.PRIO_PROCESS, p) for p in nice.reniced})\n"
        "_stop_ray()\n"
        "print('FOUND', found == sorted(RAY_HELPERS), 'NOW', now, 'OWN',\n"
        "      os.getpriority(os.PRIO_PROCESS, 0), 'LEVEL', level)\n")
    proc = _run_python(code)
    out = proc.stdout
    own = int(out.split("OWN ")[1].split()[0])
    level = eval(out.split("LEVEL ")[1])  # noqa: S307 - our own subprocess's dict
    assert "FOUND True" in out, out
    assert f"NOW [{max(own, 10)}]" in out, out  # every helper found, at nice 10
    assert level["gcs_server"] == [own] and level["raylet"] == [own], out
    assert level["log_monitor"] == [max(own, 10)] and level["monitor"] == [max(own, 10)], out


def _marked_alive(mark: str) -> list[str]:
    """Live processes (zombies excluded) whose environment holds ``DX_TEST_MARK=mark``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if f"DX_TEST_MARK={mark}".encode() not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in "ZX":
            out.append(stat.split(")")[0] + ")")
    return out


def test_cli_ends_without_ray_shutdown_and_leaves_no_process(tmp_path):
    """The CLI with workers ends right after its run directory is written: Ray's processes are
    handed to a detached stopper instead of ray.shutdown's waits. The run directory is
    complete, the exit status 0, and no process the run started (Ray's, its workers', the
    stopper itself: all carry the environment's mark) is left alive."""
    import json
    import subprocess
    import uuid

    pytest.importorskip("ray")
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to find the run's processes")
    net = dx.targets.random_network(16, 24, 2, seed=1)
    server = ForeignServer(net.W, net.b, net.A, net.c, rate=50, burst=5, retry_after="frac",
                           latency=0.005, max_batch=16)
    url = server.start()
    mark = uuid.uuid4().hex
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "distextract", "-v", "extract", "--url", url,
             "--input-dim", "16", "--out", str(tmp_path / "run"), "--batch-size", "16",
             "--workers", "2", "--rate", "50", "--seed", "0"],
            capture_output=True, text=True, timeout=300, check=False,
            env=dict(os.environ, DX_TEST_MARK=mark))
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Extracted " in proc.stdout and "certified=True" in proc.stdout, proc.stdout
    assert "Ray left running until the process exits" in proc.stderr, proc.stderr[-3000:]
    assert "handed to a detached stopper" in proc.stderr, proc.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["queries"]["paid"] == server.counters()["rows"]
    model = dx.ReluNetwork.load(str(tmp_path / "run" / "model.arrow"))
    X = np.random.default_rng(0).standard_normal((200, 16))
    assert_allclose(model.predict(X), net.predict(X), rtol=1e-6, atol=1e-6)
    left = _marked_alive(mark)
    for _ in range(100):  # the stopper kills them once the CLI has ended (milliseconds)
        if not left:
            break
        threading.Event().wait(0.1)
        left = _marked_alive(mark)
    assert left == [], left


def test_foreign_phases_charges_each_phase_its_time_minus_its_rows_at_the_limit():
    """The phase harness's tables (benchmarks/foreign_phases.py): a phase loses its duration
    minus the rows answered within it at the limit; one-second bins count answered rows,
    the driver's written bodies and their spacing; 429s come from the CLI's log."""
    import time as _time

    from foreign_phases import per_second, phase_losses, refusals

    answers = [(0.5, 64), (1.2, 64), (1.21, 64), (2.9, 32)]
    phases = phase_losses([("b", 1.0, 2.0), ("a", 0.0, 3.0)], answers, limit=128.0)
    assert [p["phase"] for p in phases] == ["a", "b"]
    assert phases[0]["rows"] == 224 and phases[0]["lost_s"] == pytest.approx(3.0 - 224 / 128)
    assert phases[1]["rows"] == 128 and phases[1]["lost_s"] == pytest.approx(0.0)
    bins = per_second(answers, [(1.0, 0.01), (1.02, 0.01), (1.05, 0.02)], [(1.0, 80.0)],
                      limit=128.0, wall=2.5)
    assert [b["pct"] for b in bins] == pytest.approx([50.0, 100.0, 25.0])
    assert bins[1]["written"] == 3 and bins[1]["gap_ms"] == pytest.approx(25.0)
    assert bins[1]["wire_gap_ms"] == pytest.approx(40 / 3) and bins[1]["pace"] == 80.0
    assert bins[0]["gap_ms"] is None and bins[0]["pace"] is None
    t0 = _time.mktime(_time.strptime("2026-12-06 03:00:00", "%Y-%m-%d %H:%M:%S"))
    log = ("2026-12-06 03:00:01,250 INFO distextract._http: HTTP 429 (rate limited); "
           "pausing all requests for 0.009 s\n"
           "2026-12-06 03:00:02,000 INFO httpx: HTTP Request: POST / 200\n"
           "2026-12-06 03:00:03,500 INFO distextract._http: HTTP 429 (rate limited); "
           "pausing all requests for 1 s\n")
    assert refusals(log, t0) == [(pytest.approx(1.25), 0.009), (pytest.approx(3.5), 1.0)]
