"""Client-side token bucket: pacing, row limits, shared pause on 429."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import distextract as dx
from distextract._ratelimit import RateLimiter, Slowdown, TokenBucket


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


def test_penalize_pauses_every_waiting_caller_then_restarts_steadily():
    bucket = TokenBucket(rate=100)
    stamps: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            bucket.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    penalized_at = time.monotonic()
    bucket.penalize(0.3)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    during = [s for s in stamps if penalized_at + 0.001 < s < penalized_at + 0.3 - 0.005]
    assert during == []
    after = [s for s in stamps if s >= penalized_at + 0.3 - 0.005]
    assert len(after) >= 5
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert min(gaps) > 0.5 / 100  # no burst after the pause
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


def test_slowdown_when_the_server_refuses_the_pace_again():
    """A 429 during the previous one's pause is the same event; a new event within WINDOW_S
    of the previous pause's end lowers the pace one step; an isolated one does not; a quiet
    RECOVER_S raises it a step."""
    s = Slowdown()
    assert not s.refused(0.0, 1.0) and s.factor == 1.0
    assert not s.refused(0.5, 1.0) and s.factor == 1.0  # its request left before the pause
    # (which now runs to 1.5, as the limiter's does)
    assert s.refused(1.6, 1.0) and s.factor == Slowdown.STEP  # refused again right after
    assert not s.refused(10.0, 1.0) and s.factor == Slowdown.STEP  # isolated (a stall)
    assert s.current(11.0 + Slowdown.RECOVER_S - 1) == Slowdown.STEP
    assert s.current(11.0 + Slowdown.RECOVER_S + 1) == 1.0
    low = Slowdown()
    for i in range(40):  # refused every time it resumes: down to the floor, no further
        low.refused(1.1 * i, 1.0)
    assert low.factor == Slowdown.FLOOR or low.factor * Slowdown.STEP < Slowdown.FLOOR


def test_token_bucket_paces_slower_after_repeated_429s():
    bucket = TokenBucket(rate=100)
    bucket.penalize(0.05)
    time.sleep(0.07)
    bucket.penalize(0.05)  # refused again as soon as it resumed
    assert bucket.slowdown.factor == Slowdown.STEP
    time.sleep(0.06)
    start = time.monotonic()
    stamps = _run_threads(4, 6, bucket.acquire)
    rate = 100 * Slowdown.STEP
    for i, t in enumerate(stamps):  # lower bounds only (a busy machine can only delay)
        assert t - start >= i / rate - 0.01, (i, t - start)


def test_limiter_actor_leases_slower_after_repeated_429s():
    """The Ray limiter (here as a plain object) applies the same policy to every worker."""
    from distextract.distributed import _Limiter

    lim = _Limiter(100.0, None)
    lim.penalize(0.05)
    time.sleep(0.07)
    lim.penalize(0.05)
    assert lim.stats()["slowdowns"] == 1
    delays, _, _ = lim.lease(10, 64)
    gaps = [b - a for a, b in itertools.pairwise(delays)]
    assert min(gaps) == pytest.approx(1 / (100 * Slowdown.STEP), rel=1e-9)
