"""Client-side token bucket: pacing, row limits, shared pause on 429."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

import distextract as dx
from distextract._ratelimit import WIRE_BURST, Pace, RateLimiter, Schedule, TokenBucket


def _run_threads(n_threads: int, per_thread: int, fn) -> list[float]:
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(per_thread):
            fn()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(stamps)


def test_requests_are_paced_at_the_rate_across_threads():
    bucket = TokenBucket(rate=50)
    start = time.monotonic()
    stamps = _run_threads(4, 8, bucket.acquire)
    # 32 requests at 50/s with burst 1: the i-th release may not come before i/50 s. (A busy
    # machine can only delay releases, so these lower bounds cannot fail by slowness; upper
    # bounds on wall time would.)
    for i, t in enumerate(stamps):
        assert t - start >= i / 50 - 0.01, (i, t - start)


def test_rows_rate_limits_rows_and_large_requests_borrow():
    bucket = TokenBucket(rows_rate=1000, rows_burst=100)
    start = time.monotonic()
    _run_threads(3, 2, lambda: bucket.acquire(100))
    # 600 rows at 1000 rows/s with a full bucket of 100 at start: >= 0.5 s.
    assert time.monotonic() - start >= 0.5 - 0.01
    big = TokenBucket(rows_rate=1000, rows_burst=10)
    t0 = time.monotonic()
    big.acquire(500)  # larger than the capacity: allowed on a full bucket, then owes
    assert time.monotonic() - t0 < 0.05
    big.acquire(1)
    assert time.monotonic() - t0 >= 0.45


class _SeenClock:
    """The real monotonic clock, remembering each thread's last reading: the time at which
    the limiter (reading it under its lock) decided to release that thread's request, which
    a stamp taken after ``acquire`` returns would blur by the thread's scheduling delay."""

    def __init__(self) -> None:
        self.local = threading.local()

    def __call__(self) -> float:
        self.local.t = time.monotonic()
        return self.local.t

    def last(self) -> float:
        return self.local.t


def test_penalize_pauses_every_waiting_caller_then_restarts_steadily():
    # Timing-robust form (a baseline run on a loaded machine failed the earlier one): releases
    # are stamped with the limiter's own clock reading, taken under its lock when it lets a
    # request go, and the pause starts at penalize's own reading. So a thread descheduled
    # between its release and its stamp cannot look like a release during the pause, and
    # "no burst after the pause" is checked by the schedule's lower bounds (the i-th release
    # after the pause not before pause_end + i/rate), which slowness cannot break.
    clock = _SeenClock()
    bucket = TokenBucket(rate=100, clock=clock)
    stamps: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            bucket.acquire()
            with lock:
                stamps.append(clock.last())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    bucket.penalize(0.3)
    penalized_at = clock.last()  # penalize's reading, under the lock
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert [s for s in stamps if s < penalized_at], "nothing was released before the pause"
    during = [s for s in stamps if penalized_at <= s < penalized_at + 0.3]
    assert during == []
    after = sorted(s for s in stamps if s >= penalized_at + 0.3)
    assert len(after) >= 5
    # the 429 lowered the pace once (AIMD); waiting callers since raised it by at most
    # INCREASE of the ceiling per second (< 1 s here); the final (highest) pace bounds every
    # interval from below
    pace = bucket.pace.rate
    assert 100 * Pace.DECREASE <= pace <= 100 * (Pace.DECREASE + Pace.INCREASE)
    for i, s in enumerate(after):  # evenly spaced from the pause's end: no burst
        assert s >= penalized_at + 0.3 + i / pace - 1e-6, (i, s - penalized_at)
    assert bucket.penalties == 1


def test_unlimited_bucket_does_not_block_but_honours_penalties():
    bucket = TokenBucket()
    t0 = time.monotonic()
    for _ in range(2000):
        bucket.acquire(64)
    assert time.monotonic() - t0 < 0.5
    bucket.penalize(0.2)
    t1 = time.monotonic()
    bucket.acquire()
    assert time.monotonic() - t1 >= 0.19
    bucket.penalize(0)  # ignored
    assert bucket.penalties == 1


def test_token_bucket_satisfies_the_protocol():
    assert isinstance(TokenBucket(rate=5), RateLimiter)
    assert not isinstance(object(), RateLimiter)
    assert TokenBucket(rate=5, rows_rate=100).describe()["rows_burst"] == 10.0


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 0}, "rate must be a positive number or None"),
    ({"rate": float("inf")}, "rate must be a positive number or None"),
    ({"rows_rate": -5}, "rows_rate must be a positive number or None"),
    ({"rate": 5, "burst": 0.5}, "burst and rows_burst must be >= 1"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(dx.ConfigError, match=match):
        TokenBucket(**kwargs)


def test_acquire_rejects_empty_requests():
    with pytest.raises(dx.ConfigError, match="rows must be >= 1, got 0"):
        TokenBucket(rate=5).acquire(0)


def test_pace_aimd_with_a_ceiling_injected_times():
    """A 429 event lowers the pace by DECREASE once (429s during its pause or within
    COOLDOWN_S are the same event); time spent waiting for the pace raises it by INCREASE of
    the ceiling per second up to the ceiling; time not spent waiting does not count."""
    p = Pace(100.0)
    assert p.refused(0.0, 0.05) and p.rate == pytest.approx(85.0)
    assert not p.refused(0.03, 0.05)  # during the pause: same event
    assert not p.refused(0.2, 0.05)  # within the cooldown: same event
    assert p.refused(0.5, 0.05) and p.rate == pytest.approx(85.0 * 0.85)
    low = p.rate
    t = 1.0
    for _ in range(100):  # 1 s of saturated sending, in steps of 10 ms
        t += 0.01
        p.saturated(t)
    # additive: INCREASE of the ceiling per second (99 steps of 10 ms after the first)
    assert p.rate == pytest.approx(low + Pace.INCREASE * 100.0 * 0.99, rel=1e-9)
    p.idle()
    p.saturated(t + 50.0)  # a new stretch: nothing grows over the idle time
    assert p.rate == pytest.approx(low + Pace.INCREASE * 100.0 * 0.99, rel=1e-9)
    for i in range(1, 100_000):
        p.saturated(t + 50.0 + 0.01 * i)
    assert p.rate == 100.0  # never above the ceiling
    floor = Pace(10.0)
    for i in range(200):
        floor.refused(float(i), 0.01)
    assert floor.rate == pytest.approx(Pace.FLOOR * 10.0)


def test_pace_discovery_slow_start_then_aimd_injected_times():
    p = Pace(None)
    assert p.discover and p.rate == Pace.START_RATE
    for i in range(1, 201):  # 2 s saturated: doubles per second
        p.saturated(0.01 * i)
    assert p.rate == pytest.approx(4 * Pace.START_RATE * 2 ** -0.01, rel=1e-6)
    lone = p.rate
    assert p.refused(2.0, 0.01)  # a lone 429: halve, keep doubling (not the limit yet)
    assert p.slow_start and p.rate == pytest.approx(lone / 2)
    for i in range(1, 101):  # 1 s saturated: back where it was refused
        p.saturated(2.0 + 0.01 * i)
    assert p.rate == pytest.approx(lone * 0.5 * 2 ** 0.99, rel=1e-6)
    refused_at = p.rate  # within CONFIRM x the lone one's pace: the limit is confirmed
    assert p.refused(3.0, 0.01) and not p.slow_start
    assert p.rate == pytest.approx(refused_at / 2)
    assert p.target == pytest.approx(Pace.DECREASE * refused_at)
    for i in range(1, 201):  # quick recovery to the target, then additive increase
        p.saturated(3.5 + 0.01 * i)
    assert p.target < p.rate < p.target * (1 + 2 * Pace.INCREASE)  # < 2 s above the target
    r0 = p.rate
    for i in range(1, 101):  # 1 s more: additive, INCREASE of the first refused pace
        p.saturated(5.5 + 0.01 * i)
    assert p.rate == pytest.approx(r0 + Pace.INCREASE * refused_at, rel=1e-9)
    assert p.refused(6.0, 0.01) and p.target == p.rate


def test_pace_discovery_passes_a_lone_429_far_below_the_limit_injected_times():
    """A 429 early in a discovery (arrival jitter, requests bunched by a stall) halves the
    pace but the slow start doubles on past it; a later 429 more than CONFIRM times faster
    is a lone one again, and the next within CONFIRM times of it ends the slow start there."""
    p = Pace(None)
    assert p.refused(0.0, 0.01) and p.slow_start  # at 20/s: a lone one
    t = 0.0
    while p.rate < 4.5 * Pace.START_RATE:  # doubles on, far past it
        t += 0.01
        p.saturated(t)
    assert p.slow_start and p.slow_refused == Pace.START_RATE
    high = p.rate
    assert p.refused(t, 0.01) and p.slow_start  # > CONFIRM x 20: lone again
    while p.rate < 0.9 * high:
        t += 0.01
        p.saturated(t)
    confirmed = p.rate
    assert p.refused(t + 0.01, 0.01) and not p.slow_start
    assert p.scale == pytest.approx(confirmed) and p.target == pytest.approx(
        Pace.DECREASE * confirmed)
    assert p.decreases == 3


def test_schedule_is_the_one_gcra_with_pauses_and_holds_injected_times():
    s = Schedule(100.0, None, discover=False)
    ats = [s.reserve(64, 0.0) for _ in range(5)]
    assert ats == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    # quota spent until before the next free slot (0.05): nothing changes
    assert not s.hold(0.045, 0.004) and s.pace.rate == 100.0
    assert s.reserve(64, 0.045) == pytest.approx(0.05)
    # spent until after it: nothing before 0.16, and the pace outran the server: lowered
    assert s.hold(0.055, 0.105) and s.pace.rate == pytest.approx(85.0)
    assert s.reserve(64, 0.06) == pytest.approx(0.16)
    assert s.reserve(64, 0.06) == pytest.approx(0.16 + 1 / 85.0)
    assert s.holds == 2 and s.penalties == 0
    assert s.refused(0.5, 0.05)  # 429: pause and lower the pace again
    assert s.reserve(64, 0.51) == pytest.approx(0.55)
    assert s.reserve(64, 0.51) == pytest.approx(0.55 + 1 / (85.0 * 0.85))
    rows = Schedule(None, 1000.0, rows_burst=100)
    assert rows.reserve(100, 0.0) == 0.0
    assert rows.reserve(100, 0.0) == pytest.approx(0.1)
    free = Schedule(None, None)
    assert not free.limited and free.reserve(64, 3.0) == 3.0


def test_token_bucket_paces_slower_after_a_429():
    bucket = TokenBucket(rate=100)
    bucket.penalize(0.05)
    assert bucket.pace.factor == Pace.DECREASE
    time.sleep(0.06)
    start = time.monotonic()
    stamps = _run_threads(4, 6, bucket.acquire)
    rate = 100 * Pace.DECREASE
    for i, t in enumerate(stamps):  # lower bounds only (a busy machine can only delay)
        assert t - start >= i / rate - 0.01, (i, t - start)


def test_limiter_actor_leases_slower_after_a_429():
    """The Ray limiter (here as a plain object) applies the same schedule to every worker."""
    from distextract.distributed import _Limiter

    lim = _Limiter(100.0, None)
    lim.penalize(0.05)
    assert lim.stats()["slowdowns"] == 1
    delays, *_ = lim.lease(10, 64)
    gaps = [b - a for a, b in itertools.pairwise(delays)]
    assert gaps[0] == pytest.approx(1 / (100 * Pace.DECREASE), rel=1e-6)
    # leased slots are time sent at the pace: it grows by at most INCREASE per second
    assert all(1 / (100 * Pace.DECREASE * (1 + Pace.INCREASE)) < g <= gaps[0] for g in gaps)


def test_a_schedule_continues_after_the_slots_another_one_booked():
    """The overlapped start's hand-over: the driver's schedule booked slots 0.35 s ahead; the
    limiter actor's schedule that takes over grants nothing before then, and no burst credit
    from the time before it."""
    from distextract._ratelimit import Schedule

    driver = Schedule(10.0, None, 1.0, None, False)
    assert driver.booked_for(0.0) == 0.0
    for _ in range(4):
        driver.reserve(1, 0.0)  # 0.0, 0.1, 0.2, 0.3: booked until 0.4
    assert np.isclose(driver.booked_for(0.05), 0.35)
    actor = Schedule(10.0, None, 1.0, None, False)
    actor.continue_after(0.05, driver.booked_for(0.05))
    slots = [actor.reserve(1, 0.05) for _ in range(3)]
    np.testing.assert_allclose(slots, [0.4, 0.5, 0.6], atol=1e-12)
    # a schedule with nothing booked hands over nothing
    fresh = Schedule(10.0, None, 1.0, None, False)
    fresh.continue_after(2.0, Schedule(10.0, None, 1.0, None, False).booked_for(2.0))
    assert fresh.reserve(1, 2.0) == 2.0


def _stalled_release(bucket: TokenBucket, callers: int = 4, stall: float = 0.15) -> list[float]:
    """Let ``callers`` threads book their slots, then stall them all (the bucket's lock held,
    as a busy CPU would) until every slot has passed; the times they were let go, sorted."""
    stamps: list[float] = []

    def call() -> None:
        bucket.acquire()
        stamps.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    time.sleep(0.005)  # every caller has booked its slot and sleeps until it
    with bucket._cond:
        time.sleep(stall)
    for t in threads:
        t.join()
    return sorted(stamps)


def test_token_bucket_spaces_callers_let_go_late_once_the_server_refused_one():
    """A stall lets several booked slots pass; their callers would then leave back to back
    (gaps a server keeping no burst refuses). Once a 429 was seen, none leaves less than an
    interval after the previous one; before it, the schedule's catch-up is kept (a server
    with a burst takes it)."""
    free = _stalled_release(TokenBucket(rate=40))
    assert min(b - a for a, b in itertools.pairwise(free)) < 0.010

    bucket = TokenBucket(rate=40)
    bucket.penalize(0.001)  # a 429: spacing on (and the pace lowered once)
    time.sleep(0.01)
    stamps = _stalled_release(bucket)
    interval = 1 / bucket.pace.rate
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(g >= interval - 0.002 for g in gaps), (interval, gaps)
    stats = bucket.stats()
    assert stats["spacing"] and stats["respaced"] >= 2


def test_limiter_actor_leases_ahead_once_spacing_is_on():
    """After a 429 (spacing on) no slot is leased due now: one due when its lease leaves
    reaches its process late and is sent right before another process's next slot."""
    from distextract.distributed import _Limiter
    from distextract.distributed.limiter import SPACED_AHEAD_S

    lim = _Limiter(100.0, None)
    delays, _, _, gap, wire = lim.lease(1, 64)
    assert delays[0] == 0.0 and gap == 0.0  # no spacing yet: due now, no wire gap
    assert wire == (pytest.approx(0.01), WIRE_BURST)  # the wire's catch-up is bounded
    lim.penalize(0.001)
    time.sleep(0.01)  # past the pause: the schedule is free again
    delays, _, _, gap, wire = lim.lease(1, 64)
    assert delays[0] >= SPACED_AHEAD_S - 1e-9
    assert gap == pytest.approx(1 / (100 * Pace.DECREASE))
    assert wire == (pytest.approx(gap), 1.0)  # spacing: one body at a time


def test_token_bucket_lets_go_early_by_the_lead_and_returns_the_slot():
    bucket = TokenBucket(rate=20)
    first = bucket.acquire(1, lead=0.03)
    t0 = time.monotonic()
    slot = bucket.acquire(1, lead=0.03)
    let_go = time.monotonic()
    assert slot == pytest.approx(first + 0.05, abs=1e-9)  # the slot itself is 1/20 s on
    assert let_go <= slot - 0.02 and let_go >= t0  # let go ~30 ms before it
    assert bucket.min_gap(1) == 0.0
    assert bucket.wire_gap(1) == (pytest.approx(1 / 20), WIRE_BURST)
    bucket.penalize(0.001)
    assert bucket.min_gap(1) == pytest.approx(1 / (20 * Pace.DECREASE))
    assert bucket.wire_gap(1) == (pytest.approx(1 / (20 * Pace.DECREASE)), 1.0)


def test_wire_gap_of_a_rows_limit_is_the_rows_interval_of_the_request():
    bucket = TokenBucket(rows_rate=6400)  # rows_burst 640: ten bodies of 64 rows
    assert bucket.wire_gap(64) == (pytest.approx(0.01), pytest.approx(10.0))
    assert bucket.wire_gap(32) == (pytest.approx(0.005), pytest.approx(20.0))
    assert TokenBucket(rows_rate=100).wire_gap(64) == (pytest.approx(0.64), WIRE_BURST)
    assert TokenBucket().wire_gap(64) == (0.0, WIRE_BURST)  # nothing paces: no wire rate


def test_an_isolated_429_lowers_the_pace_by_a_margin_step_runs_of_them_by_decrease():
    """A 429 more than CALM_S after the previous decrease (a burst-1 server refusing by arrival
    jitter at a pace it took for seconds) costs MILD_DECREASE; the first one and those that
    follow within CALM_S (a rate above the limit) cost DECREASE each."""
    pace = Pace(100.0)
    assert pace.refused(0.0, 0.01)
    assert pace.rate == pytest.approx(100 * Pace.DECREASE)
    assert pace.refused(1.0, 0.01)  # within CALM_S: a run
    assert pace.rate == pytest.approx(100 * Pace.DECREASE ** 2)
    assert pace.refused(1.0 + Pace.CALM_S + 0.5, 0.01)  # isolated
    assert pace.rate == pytest.approx(100 * Pace.DECREASE ** 2 * Pace.MILD_DECREASE)
    assert Pace.DECREASE < Pace.MILD_DECREASE < 1
