"""Client-side rate limiting: requests/s and rows/s, shared by every thread of one API key.

:class:`RateLimiter` is the protocol the HTTP client talks to; :class:`TokenBucket` is the
thread-safe in-process implementation. The Ray layer can replace it by an object that leases
permits from a shared actor, as long as it offers the same two methods:

- ``acquire(rows)`` blocks until one request carrying ``rows`` rows may be sent;
- ``penalize(seconds)`` is called when the server answers 429: every user of the limiter pauses
  for ``seconds`` and then resumes at the steady rate, without a burst.

The buckets use the generic cell rate algorithm (GCRA, "virtual scheduling"): each bucket keeps
the time at which it would be full again (its *theoretical arrival time*). A caller reserves its
slot under the lock and sleeps outside it, so callers are served in order, nobody polls, and the
long-run rate never exceeds the configured rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._errors import ConfigError


@runtime_checkable
class RateLimiter(Protocol):
    """What the HTTP client needs from a rate limiter (thread-safe)."""

    def acquire(self, rows: int = 1) -> None:
        """Block until one request of ``rows`` rows may be sent."""

    def penalize(self, seconds: float) -> None:
        """Pause every user of this limiter for ``seconds`` (server answered 429)."""


class Slowdown:
    """How much below its configured rate a limiter paces, from the 429s it gets.

    A 429 while the previous one's pause is still running is part of the same event (its
    request went out before the pause was known). A server that refuses again within
    :attr:`WINDOW_S` of the previous pause's end refuses the pace itself, not a stall: every
    whole-second ``Retry-After`` then costs a second of the whole fleet, so the pace drops
    to :attr:`STEP` of itself (at most down to :attr:`FLOOR`). A server whose limit keeps
    no burst (requests spaced at least ``1/rate`` apart on arrival) refuses every request
    that jitter brings early: at its exact rate a run refused 189 of 576 requests and used
    15% of the limit. After :attr:`RECOVER_S` without a 429 the pace goes one step back up.
    Isolated 429s (a stalled server, then a backlog) only pause.
    """

    STEP = 0.85
    FLOOR = 0.25
    WINDOW_S = 2.0
    RECOVER_S = 30.0

    def __init__(self) -> None:
        self.factor = 1.0
        self.slowdowns = 0
        self._pause_end = -math.inf
        self._quiet_from = -math.inf  # the last pause's end, or the last step back up

    def refused(self, now: float, seconds: float) -> bool:
        """A 429 at ``now`` asking for ``seconds``; True when the pace changed."""
        self.current(now)
        changed = False
        # a new event (not during the pause) soon after the last one's end
        if (self._pause_end <= now <= self._pause_end + self.WINDOW_S
                and self.factor > self.FLOOR):
            self.factor = max(self.FLOOR, self.factor * self.STEP)
            self.slowdowns += 1
            changed = True
        self._pause_end = max(self._pause_end, now + max(0.0, seconds))
        self._quiet_from = self._pause_end
        return changed

    def current(self, now: float) -> float:
        """The pace factor at ``now`` (a step back up per quiet RECOVER_S)."""
        while self.factor < 1.0 and now - self._quiet_from > self.RECOVER_S:
            self.factor = min(1.0, self.factor / self.STEP)
            self._quiet_from += self.RECOVER_S
        return self.factor


def _check_rate(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ConfigError(f"{name} must be a positive number or None (no limit), got {value!r}")
    return float(value)


class _Bucket:
    """One GCRA bucket: ``rate`` tokens/s, capacity ``burst`` tokens (not thread-safe)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.interval = 1.0 / rate
        self.burst = float(burst)
        self.tat = -math.inf  # time at which the bucket is full again

    def earliest(self, cost: float, now: float) -> float:
        """Earliest time at which ``cost`` tokens are available (cost capped at the capacity)."""
        need = min(cost, self.burst)
        return max(now, self.tat - (self.burst - need) * self.interval)

    def take(self, cost: float, at: float) -> None:
        """Spend ``cost`` tokens at time ``at`` (which :meth:`earliest` allowed)."""
        self.tat = max(self.tat, at) + cost * self.interval

    def empty_at(self, when: float) -> None:
        """Make the bucket hold one token at ``when``: a steady restart, no burst.

        Reservations made before are void (their holders queue again), so this overwrites.
        """
        self.tat = when + (self.burst - 1.0) * self.interval


class TokenBucket:
    """Thread-safe token buckets for requests/s and rows/s, with a shared pause on 429.

    Parameters
    ----------
    rate : float, optional
        Requests per second (None: no request limit).
    rows_rate : float, optional
        Rows per second (None: no row limit).
    burst : float, optional
        Requests that may be sent back to back after an idle period. Default 1: requests are
        evenly spaced, which keeps a server-side limit of the same rate happy.
    rows_burst : float, optional
        Rows that may be sent back to back. Default ``rows_rate / 10`` (a tenth of a second),
        at least 1. A request larger than the capacity waits for a full bucket and then
        borrows the rest, so it is never refused.
    clock : callable, optional
        Monotonic clock in seconds (tests may inject one together with ``sleep``).

    Attributes
    ----------
    waited_s : float
        Total time callers spent blocked in :meth:`acquire`.
    penalties : int
        Number of :meth:`penalize` calls.
    """

    def __init__(self, rate: float | None = None, rows_rate: float | None = None, *,
                 burst: float | None = None, rows_burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = _check_rate("rate", rate)
        self.rows_rate = _check_rate("rows_rate", rows_rate)
        burst = 1.0 if burst is None else _check_rate("burst", burst)
        if self.rows_rate is not None and rows_burst is None:
            rows_burst = max(1.0, self.rows_rate / 10.0)
        rows_burst = _check_rate("rows_burst", rows_burst)
        if burst < 1 or (rows_burst is not None and rows_burst < 1):
            raise ConfigError(f"burst and rows_burst must be >= 1, got {burst}, {rows_burst}")
        self.burst = burst
        self.rows_burst = rows_burst
        self._requests = None if self.rate is None else _Bucket(self.rate, burst)
        self._rows = None if self.rows_rate is None else _Bucket(self.rows_rate, rows_burst)
        self._clock = clock
        self._cond = threading.Condition()
        self._paused_until = -math.inf
        self.penalties = 0
        self.waited_s = 0.0
        self.slowdown = Slowdown()

    def acquire(self, rows: int = 1) -> None:
        """Block until a request carrying ``rows`` rows may be sent, then account for it.

        Parameters
        ----------
        rows : int
            Rows in the request (>= 1).
        """
        if rows < 1:
            raise ConfigError(f"rows must be >= 1, got {rows}")
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                if self._paused_until > now:
                    self._cond.wait(self._paused_until - now)
                    continue
                send_at = now
                self._pace(now)
                for bucket, cost in ((self._requests, 1.0), (self._rows, float(rows))):
                    if bucket is not None:
                        send_at = max(send_at, bucket.earliest(cost, now))
                for bucket, cost in ((self._requests, 1.0), (self._rows, float(rows))):
                    if bucket is not None:
                        bucket.take(cost, send_at)
                generation = self.penalties
                # Sleep until our slot; a penalty meanwhile voids the slot (the buckets were
                # reset), so the caller queues again behind the pause.
                while self.penalties == generation and self._clock() < send_at:
                    self._cond.wait(send_at - self._clock())
                if self.penalties == generation:
                    break
            self.waited_s += self._clock() - start

    def penalize(self, seconds: float) -> None:
        """Pause all callers for ``seconds`` and restart at the steady rate afterwards.

        Parameters
        ----------
        seconds : float
            Pause length (the server's Retry-After); non-positive values are ignored.
        """
        if not seconds > 0:
            return
        with self._cond:
            now = self._clock()
            if self.slowdown.refused(now, float(seconds)):
                self._pace(now)
            until = now + float(seconds)
            self._paused_until = max(self._paused_until, until)
            for bucket in (self._requests, self._rows):
                if bucket is not None:
                    bucket.empty_at(self._paused_until)
            self.penalties += 1
            self._cond.notify_all()

    def _pace(self, now: float) -> None:
        """Buckets at the configured rates times the slowdown factor (under the lock)."""
        f = self.slowdown.current(now)
        for bucket, rate in ((self._requests, self.rate), (self._rows, self.rows_rate)):
            if bucket is not None:
                bucket.interval = 1.0 / (rate * f)

    def describe(self) -> dict:
        """Settings as a JSON-serialisable dict."""
        return {"type": type(self).__name__, "rate": self.rate, "rows_rate": self.rows_rate,
                "burst": self.burst, "rows_burst": self.rows_burst}

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, rows_rate={self.rows_rate}, burst={self.burst})"


__all__ = ["RateLimiter", "Slowdown", "TokenBucket"]
