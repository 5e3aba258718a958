"""The global rate limit of a distributed run: the limiter actor and its worker-side proxy."""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any

import ray

from .._errors import ConfigError
from .._ratelimit import Slowdown
from .._validation import check_positive_int

#: Seconds of the rate one limiter lease covers (split between the workers).
LEASE_HORIZON_S = 0.1
#: A leased slot older than this is dropped instead of being used late: a worker that woke
#: late (a busy CPU) and sent its overdue slots at once would burst past the server's bucket.
STALE_SLOT_S = 0.05
#: A lease round trip at most this long maps the limiter's clock onto a worker's.
CLOCK_RTT_S = 0.01


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

