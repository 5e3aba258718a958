"""Distributed extraction on a real (local) Ray instance, shared by the whole module."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import distextract as dx
from distextract._errors import BudgetExhausted, ConfigError
from distextract._extract import extract
from distextract._journal import JournaledOracle, load_journal
from distextract.distributed import (
    LeasedLimiter,
    ProgressDisplay,
    RayExecutor,
    _Limiter,
    oracle_spec,
)
from distextract.engine.tasks import EvalTask


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def net():
    return dx.targets.random_network(16, 24, 2, seed=1)


@pytest.fixture(scope="module")
def reference(net):
    """The in-process extraction with the same seed."""
    return extract(net, seed=3)


def slow_oracle(net, seconds: float, max_batch: int = 16) -> dx.CallableOracle:
    """A picklable oracle that sleeps per call of at most ``max_batch`` rows (so a kill lands
    mid-task; like an API, every answered batch is journaled as it arrives)."""

    def answer(X):
        time.sleep(seconds)
        return net.predict(X)

    return dx.CallableOracle(answer, net.input_dim, max_batch=max_batch)


def test_executor_needs_ray(net):
    if ray.is_initialized():
        pytest.skip("Ray is running in this module")
    with pytest.raises(ConfigError, match="Ray is not initialised"):
        RayExecutor(dx.NetworkOracle(net), 2)


def test_executor_start_is_abandoned_when_the_run_finished_first(ray_local, net):
    """An overlapped run whose coordinator finished in the driver does not wait for the
    workers: their start is abandoned and every actor the executor created is killed."""
    import threading

    from distextract.distributed.overlap import WorkersNotNeeded

    before = set(ray.util.list_named_actors())
    finished = threading.Event()
    finished.set()
    with pytest.raises(WorkersNotNeeded, match="before the workers were ready"):
        RayExecutor(dx.NetworkOracle(net), 2, rate=100.0, abandon=finished)
    deadline = time.monotonic() + 20
    while set(ray.util.list_named_actors()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(ray.util.list_named_actors()) == before  # no ledger or limiter left behind


def test_same_model_and_queries_as_in_process(ray_local, net, reference):
    events = []
    res = extract(net, seed=3, workers=2, progress=events.append)
    assert res.queries == reference.queries
    np.testing.assert_array_equal(res.model.W, reference.model.W)
    np.testing.assert_array_equal(res.model.b, reference.model.b)
    np.testing.assert_allclose(res.model.predict(np.ones((3, 16))),
                               reference.model.predict(np.ones((3, 16))), rtol=0, atol=0)
    dist = res.report["distributed"]
    assert dist["workers"] == 2 and dist["rows_paid"] == res.queries
    assert sum(w["paid"] for w in dist["per_worker"]) == res.queries
    assert dist["restarts"] == 0
    assert events and all("distributed" in e for e in events)
    fid = dx.evaluate_fidelity(res.model, net, n_points=2000)
    assert fid.rel_l2 < 1e-9


def test_concurrent_tasks_per_worker_ask_the_same_rows(ray_local, net, reference, tmp_path):
    """Threaded workers (4 tasks at once each) and the finer cut of the work they get: the
    same rows are asked as in-process, whatever the chunking; per-task counters add up."""
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator

    cfg = ExtractConfig()
    oracle = JournaledOracle(slow_oracle(net, 0.002), tmp_path / "journal", "main")
    with RayExecutor(oracle, 2, tasks_per_worker=4) as ex:
        assert ex.tasks_per_worker == 4
        eng = Coordinator(ex, 16, cfg, 3, None, 2 * 4, cfg.validation_points).run()
        queries, ledger = ex.queries, ex.ledger_stats()
        stats = ex.worker_stats()
    assert queries == reference.queries
    assert eng.model.hidden_dim == reference.model.hidden_dim
    np.testing.assert_allclose(eng.model.predict(np.eye(16)), reference.model.predict(np.eye(16)),
                               rtol=1e-9, atol=1e-12)
    per = ledger["per_worker"]
    assert sum(w["paid"] for w in per) == queries
    assert all(w["tasks"] >= 1 for w in per)
    # no row was asked twice by concurrent tasks of one worker: asked = paid + journal hits
    assert sum(w["asked"] for w in per) == queries + sum(w["from_journal"] for w in per)
    assert all(s is not None and s["running"] == 0 for s in stats)
    X, _ = load_journal(tmp_path / "journal", 16)
    assert X.shape[0] == queries


def test_workers_read_only_sealed_journal_segments(ray_local, net, tmp_path):
    """Workers starting while the driver journals are served the rows of its sealed segment
    and never read the one it still writes (each worker parsed the driver's live segment,
    ~115 MB in a foreign-server run, and dropped its half-written last batch)."""
    rng = np.random.default_rng(0)
    X1, X2 = rng.normal(size=(30, 16)), rng.normal(size=(50, 16))
    oracle = JournaledOracle(slow_oracle(net, 0.0), tmp_path / "journal", "main")
    try:
        oracle.query(X1)
        oracle.seal()
        oracle.query(X2)  # main.0002: held open by the driver while the workers start
        with RayExecutor(oracle, 2, seed=0) as ex:
            stats = ex.worker_stats(timeout=30)
    finally:
        oracle.close()
    live = str(tmp_path / "journal" / "main.0002.arrows")
    for s in stats:
        assert s is not None
        assert s["journal"]["rows_loaded"] == 30
        assert s["journal"]["live_segments"] == [live]
        assert s["journal"]["torn_segments"] == []


def test_tasks_per_worker_default_follows_the_http_client(ray_local):
    """max_in_flight (up to 8) tasks per worker against an HTTP API, rate-limited or not (the
    client coalesces their queries into shared requests); 1 for other oracles."""
    from distextract._http import HTTPOracle

    for kwargs, expected in (({"max_in_flight": 5}, 5), ({"max_in_flight": 32}, 8),
                             ({"max_in_flight": 8, "rate": 50.0}, 8)):
        http = HTTPOracle("http://127.0.0.1:9/", 4, **kwargs)  # never queried
        try:
            with RayExecutor(http, 1) as ex:
                assert ex.tasks_per_worker == expected, kwargs
        finally:
            http.close()
    with RayExecutor(dx.NetworkOracle(dx.targets.random_network(4, 3, 1, seed=0)), 1) as ex:
        assert ex.tasks_per_worker == 1


def test_extract_takes_tasks_per_worker(ray_local, net, reference):
    res = extract(slow_oracle(net, 0.0), 16, seed=3, workers=2, tasks_per_worker=3)
    assert res.report["distributed"]["tasks_per_worker"] == 3
    assert res.queries == reference.queries
    with pytest.raises(ConfigError, match="tasks_per_worker=3 needs Ray workers"):
        extract(net, seed=3, tasks_per_worker=3)
    with pytest.raises(ConfigError, match="tasks_per_worker"):
        extract(net, seed=3, workers=2, tasks_per_worker=0)


def test_budget_is_global_across_workers(ray_local, net):
    budget = 500
    res = extract(net, seed=3, workers=2, budget=budget)
    assert res.stop_reason == "budget" and not res.certified
    assert res.queries <= budget
    assert res.report["distributed"]["rows_paid"] <= budget


def test_executor_raises_budget_exhausted_with_its_fields(ray_local, net):
    with RayExecutor(dx.NetworkOracle(net), 2, budget=100) as ex:
        X = np.random.default_rng(0).standard_normal((60, 16))
        assert len(ex.map([EvalTask(X)])[0]) == 60
        with pytest.raises(BudgetExhausted, match="budget=100 rows") as info:
            ex.map([EvalTask(X), EvalTask(X)])
        assert info.value.budget == 100 and info.value.requested == 60
        assert ex.queries == 60  # refused requests are not sent


def test_map_keeps_task_order(ray_local, net):
    rng = np.random.default_rng(1)
    Xs = [rng.standard_normal((n, 16)) for n in (5, 1, 7, 3, 9)]
    with RayExecutor(dx.NetworkOracle(net), 2) as ex:
        out = ex.map([EvalTask(X) for X in Xs])
        assert ex.queries == sum(X.shape[0] for X in Xs)
        stats = ex.worker_stats()
    for X, Y in zip(Xs, out):
        np.testing.assert_array_equal(Y, net.predict(X))
    assert all(s is not None and s["tasks"] >= 1 for s in stats)


def _run_journaled(net, run_dir, progress=None, on_start=None):
    """Coordinator over a RayExecutor whose workers journal into ``run_dir``."""
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator

    oracle = JournaledOracle(slow_oracle(net, 0.004), run_dir / "journal", "main")
    cfg = ExtractConfig()
    with RayExecutor(oracle, 2) as ex:
        if on_start is not None:
            on_start(ex)
        eng = Coordinator(ex, 16, cfg, 3, progress, 2, cfg.validation_points).run()
        return eng, ex.queries, ex.ledger_stats()


def test_killed_worker_is_restarted_and_nothing_is_paid_twice(ray_local, net, tmp_path):
    calm, calm_rows, _ = _run_journaled(net, tmp_path / "calm")
    state = {}

    def progress(info):
        # Kill worker 0 shortly after the first line's search, while the Jacobians run.
        if info["phase"] == "search" and info.get("line") == 0 and "timer" not in state:
            state["timer"] = threading.Timer(0.05, ray.kill, args=(state["ex"].actors[0],),
                                             kwargs={"no_restart": False})
            state["timer"].start()

    hit, hit_rows, ledger = _run_journaled(net, tmp_path / "hit", progress,
                                           lambda ex: state.setdefault("ex", ex))
    assert "timer" in state, "the kill was never scheduled"
    assert ledger["per_worker"][0]["attempts"] >= 2, f"worker 0 was not restarted: {ledger}"
    assert abs(hit_rows - calm_rows) <= 0.02 * calm_rows, (hit_rows, calm_rows, ledger)
    for eng in (calm, hit):
        assert dx.evaluate_fidelity(eng.model, net, n_points=2000).rel_l2 < 1e-9
    assert hit.model.hidden_dim == calm.model.hidden_dim
    # every paid row is journaled, in segments per worker and attempt
    X, _ = load_journal(tmp_path / "hit" / "journal", 16)
    assert X.shape[0] >= 0.95 * hit_rows
    # (a restarted attempt opens its own segment only when it pays for a new row)
    names = sorted(p.name for p in (tmp_path / "hit" / "journal").iterdir())
    assert "w0.0001.arrows" in names and "w1.0001.arrows" in names, names


def _send_from_threads(proxies, sends: int, rows: int, slots: list | None = None) -> np.ndarray:
    """Each proxy acquires ``sends`` permits of ``rows`` rows from its own thread; the
    sorted times at which the permits were granted (``slots``, if given, receives the
    (slot time, grant time) pairs)."""
    stamps: list[float] = []
    lock = threading.Lock()

    def use(proxy):
        for _ in range(sends):
            at = proxy.acquire(rows)
            with lock:
                stamps.append(time.monotonic())
                if slots is not None:
                    slots.append((at, stamps[-1]))

    threads = [threading.Thread(target=use, args=(p,)) for p in proxies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.sort(stamps)


def _most_sends_in(s: np.ndarray, window: float) -> int:
    """Most of the sorted send times ``s`` in any interval of ``window`` seconds."""
    return int(np.max(np.searchsorted(s, s + window) - np.arange(s.size)))


def test_limiter_actor_leases_evenly_spaced_slots(ray_local):
    actor = ray.remote(_Limiter).options(num_cpus=0).remote(200.0, None)
    proxies = [LeasedLimiter(actor, chunk=5) for _ in range(2)]
    t0 = time.monotonic()
    pairs: list = []
    _send_from_threads(proxies, 60, 8, pairs)
    elapsed = time.monotonic() - t0
    # 120 requests at 200/s: at least 119 intervals of 5 ms, no burst, few round trips
    # (no upper bound on the time: on a loaded machine the threads themselves run late)
    assert elapsed >= 119 / 200 - 0.02
    assert sum(p.round_trips for p in proxies) <= 30
    stats = ray.get(actor.stats.remote())
    assert stats["granted"] >= 120 and stats["granted_rows"] == stats["granted"] * 8
    # the slots both proxies were leased are evenly spaced: in any 0.1 s window at most ~20
    # (+2 for the clock offset each proxy estimates from its round trips); and no permit is
    # granted before its slot. (The grant times themselves also carry the threads' wake-up
    # delays, which on a loaded machine bunch a few sends together, so they are not counted.)
    at, granted = np.array(sorted(pairs)).T
    assert _most_sends_in(at, 0.1) <= 22
    assert np.all(granted >= at)


class _SlowReplies:
    """An actor handle whose lease answers reach the caller ``delay`` seconds late (a slow
    round trip after the limiter computed the slots)."""

    def __init__(self, actor, delay: float) -> None:
        self._actor, self._delay = actor, delay
        self.lease = self

    def remote(self, *args):
        ref = self._actor.lease.remote(*args)
        ray.wait([ref])
        time.sleep(self._delay)
        return ref


def test_a_proxy_on_the_actors_node_uses_its_slot_times_as_they_are(ray_local):
    """time.monotonic is one clock per machine: a proxy on the limiter actor's node takes the
    slots at the actor's times (no offset estimated from round trips, which on a loaded
    machine were all over CLOCK_RTT_S, so slots counted from each answer's arrival and
    bunched with other workers' slots)."""
    actor = ray.remote(_Limiter).options(num_cpus=0).remote(50.0, None)
    proxy = LeasedLimiter(actor, chunk=1)
    before = time.monotonic()
    slot = proxy.acquire(1)
    assert proxy._same_clock is True
    assert before <= slot <= time.monotonic()  # the actor's own now: due at once
    assert ray.get(actor.node_id.remote()) == ray.get_runtime_context().get_node_id()


def test_slow_lease_round_trips_do_not_bunch_slots(ray_local):
    """Slots keep the limiter's spacing when one worker's lease answers arrive late (shifted
    by the trip instead, they would overlap the other worker's slots: twice the rate)."""
    actor = ray.remote(_Limiter).options(num_cpus=0).remote(100.0, None)
    quick = LeasedLimiter(actor, chunk=4)
    slow = LeasedLimiter(actor, chunk=4)
    quick.acquire(1)  # quick first trips: they map the limiter's clock onto the proxies'
    slow.acquire(1)
    slow.actor = _SlowReplies(actor, 0.12)
    s = _send_from_threads((quick, slow), 40, 1)
    # 100/s: at most ~10 sends in any 0.1 s window (+3 for scheduling jitter)
    most = _most_sends_in(s, 0.1)
    assert most <= 13, most


def test_a_429_anywhere_pauses_every_worker(ray_local):
    actor = ray.remote(_Limiter).options(num_cpus=0).remote(1000.0, None)
    a, b = LeasedLimiter(actor, chunk=2), LeasedLimiter(actor, chunk=2)
    a.acquire(1)
    a.penalize(0.3)
    t0 = time.monotonic()
    b.acquire(1)
    assert time.monotonic() - t0 >= 0.25
    assert ray.get(actor.stats.remote())["penalties"] == 1


def test_rate_limited_http_run_matches_in_process(ray_local, net):
    from distextract._http import HTTPOracle
    from distextract.serve import start_server

    with start_server(net, rate=200, latency_ms=2, max_batch=32) as server:
        http = HTTPOracle(server.url, 16, max_batch=32, rate=190, max_in_flight=4)
        try:
            res = extract(http, 16, seed=3, workers=2)
        finally:
            http.close()
        served = server.stats()
        driver_paid = http.stats()["rows_paid"]
    ref = extract(net, seed=3)
    # output="auto" sent the precision probe's 29 rows from this process first; an HTTP client
    # without a journal cannot hand their answers to the workers, which pay them again
    out = res.report["output"]
    assert out["mode"] == "logits" and out["extra_rows"] == driver_paid == 29
    assert res.queries == ref.queries + out["extra_rows"]
    dist = res.report["distributed"]
    assert dist["limiter"]["rate"] == 190
    assert served["rows_served"] == res.queries
    assert served["statuses"].get("429", 0) <= 0.01 * served["requests"] + 1
    # 4 tasks per worker (max_in_flight): their small search queries shared requests
    assert dist["tasks_per_worker"] == 4
    assert sum(h["requests_shared"] for h in dist["http"]) >= 1
    assert sum(h["rows_paid"] for h in dist["http"]) + driver_paid == res.queries


def test_hand_over_carries_a_pace_lowered_by_429s_to_the_limiter_actor(ray_local, net):
    """An overlapped run's driver lowered its configured pace after 429s (a burst-1 server);
    when the workers are ready, the limiter actor continues at that pace (it started at the
    ceiling before, and the server refused the first slots it granted)."""
    from distextract._http import HTTPOracle
    from distextract.distributed.overlap import OverlappedExecutor

    http = HTTPOracle("http://127.0.0.1:9/", 16, max_batch=8, rate=100.0, max_in_flight=2)
    try:
        http.limiter.penalize(0.001)
        time.sleep(0.3)  # past the cooldown: a second event
        http.limiter.penalize(0.001)
        assert http.limiter.pace.rate == pytest.approx(72.25)
        front = OverlappedExecutor(http, workers=1, tasks_per_worker=2, max_batch=8,
                                   request_limited=True)
        ex = RayExecutor(http, 1, seed=0)
        try:
            front.provide(ex)
            assert front.ray() is ex
            stats = ex.limiter_stats()
            assert stats["rate"] == 100.0
            assert stats["paced_rate"] == pytest.approx(72.25)
            assert stats["pace"] == pytest.approx(0.7225)
            # the server refused the driver: the actor's slots keep their spacing on the wire
            # (the driver's client and each worker's get it with their leases)
            assert stats["spacing"]
            proxy = http.limiter
            proxy.acquire(8)
            assert proxy.min_gap(8) == pytest.approx(1 / 72.25)
        finally:
            ex.close()
    finally:
        http.close()


def test_rate_discovery_is_shared_by_the_workers_through_the_limiter_actor(ray_local, net):
    """No rate given, a server it was not written with (benchmarks/foreign_server.py: token
    bucket of 30 requests/s, burst 5, fractional Retry-After, X-RateLimit-* headers): the
    workers' 429s and quota holds all reach the one limiter actor, whose discovered pace ends
    near the server's limit; the rows asked are the in-process run's."""
    import os
    import sys

    from distextract._http import HTTPOracle

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    from foreign_server import ForeignServer

    server = ForeignServer(net.W, net.b, net.A, net.c, rate=30, burst=5, retry_after="frac",
                           ratelimit_headers=True, latency=0.002, max_batch=8)
    url = server.start()
    try:
        http = HTTPOracle(url, 16, max_batch=8, max_in_flight=4, discover_rate=True)
        try:
            # logits forced: with "auto", a raw HTTP client on Ray pays the probe's 29 rows
            # twice (the test above); here the rows must be the in-process run's
            res = extract(http, 16, seed=3, workers=2, output="logits")
        finally:
            http.close()
    finally:
        server.stop()
    counters = server.counters()
    ref = extract(net, seed=3)
    assert res.queries == ref.queries == counters["rows"]
    limiter = res.report["distributed"]["limiter"]
    assert limiter["discover"] and limiter["rate"] is None
    assert limiter["penalties"] == counters["refused"]  # every worker's 429 reached it
    assert limiter["slowdowns"] >= 1 and limiter["holds"] >= 1
    assert 15 <= limiter["paced_rate"] <= 45, limiter
    assert counters["refused"] <= 0.1 * (counters["answered"] + counters["refused"]), counters


def test_http_oracle_travels_as_spec_without_its_key(monkeypatch):
    from distextract._http import HTTPOracle
    from distextract.distributed import HTTPOracleSpec

    monkeypatch.setenv("DX_TEST_KEY", "s3cret-value")
    http = HTTPOracle("http://127.0.0.1:9/api", 4, api_key_env="DX_TEST_KEY", rate=5.0,
                      max_in_flight=3)
    try:
        spec, journal = oracle_spec(http)
    finally:
        http.close()
    assert isinstance(spec, HTTPOracleSpec) and journal is None
    assert spec.rate == 5.0 and spec.settings["max_in_flight"] == 3
    import pickle

    assert b"s3cret-value" not in pickle.dumps(spec)
    built = spec.build(None, np.random.SeedSequence(0))
    try:
        assert built.api_key_env == "DX_TEST_KEY" and built.max_in_flight == 3
    finally:
        built.close()


def test_unpicklable_oracle_is_refused_with_advice():
    lock = threading.Lock()
    oracle = dx.CallableOracle(lambda X, _l=lock: X[:, :1], 3)
    with pytest.raises(ConfigError, match="cannot be sent to Ray workers"):
        oracle_spec(oracle)


def test_progress_display_line():
    import io

    out = io.StringIO()
    disp = ProgressDisplay(out, input_dim=16, limit_rows_per_s=1000.0, min_interval=0.0)
    disp({"phase": "search", "kinks": 7, "neurons": 0})
    disp({"phase": "round", "neurons": 7, "val_rel_l2": 1e-3})
    disp.update(paid=400, rows_per_s=500.0, elapsed=2.0)
    disp.close()
    text = out.getvalue()
    line = text.rstrip("\n").split("\r")[-1]
    assert "400 rows paid" in line and "50% of limit" in line
    assert "kinks 7" in line and "neurons 7" in line and "val rel L2 0.001" in line
    assert "ETA ~0s" in line  # 1.1·7·17 ≈ 131 rows < 400 paid


def test_cli_extract_with_workers(ray_local, net, tmp_path):
    import json

    from click.testing import CliRunner

    from distextract.cli import main
    from distextract.serve import start_server

    with start_server(net) as server:
        out = CliRunner().invoke(main, ["extract", "--url", server.url, "--input-dim", "16",
                                        "--out", str(tmp_path / "run"), "--workers", "2",
                                        "--seed", "3"])
        served = server.stats()
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    dist = report["extraction"]["distributed"]
    assert dist["workers"] == 2
    # output="auto": the probe's rows went first from this process, through the journal, and
    # the workers were served them from it: nothing paid twice
    detected = report["extraction"]["output"]
    assert detected["mode"] == "logits" and detected["extra_rows"] == 0
    assert dist["rows_paid"] + detected["rows"] == served["rows_served"]
    assert report["queries"]["paid"] == served["rows_served"] == report["queries"]["rows"]
    assert report["queries"]["from_journal"] == detected["rows"]
    names = {p.name for p in (tmp_path / "run" / "journal").iterdir()}
    assert {"main.0001.arrows", "w0.0001.arrows", "w1.0001.arrows"} <= names


def test_softmax_answers_on_workers_match_in_process(ray_local):
    from distextract._oracle import NetworkOracle

    net = dx.targets.random_network(8, 12, 3, seed=4)
    oracle = NetworkOracle(net, output="softmax")
    local = dx.extract(oracle, seed=2, output="softmax")
    dist = dx.extract(oracle, seed=2, output="softmax", workers=2)
    assert dist.queries == local.queries
    # output="auto" reads the probabilities from the probe, sent first from this process; the
    # workers are served its answers (the oracle travels with them): no row paid twice
    auto = dx.extract(oracle, seed=2, workers=2)
    assert auto.report["output"]["mode"] == "softmax" and auto.report["output"]["extra_rows"] == 0
    assert auto.queries == local.queries
    X = np.random.default_rng(0).standard_normal((2000, 8))
    P = oracle.query(X)
    assert np.max(np.abs(dist.model.predict_proba(X) - P)) <= 1e-6
    assert np.max(np.abs(auto.model.predict_proba(X) - P)) <= 1e-6
