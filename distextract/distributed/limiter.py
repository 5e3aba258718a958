"""The global rate limit of a distributed run: the limiter actor and its worker-side proxy."""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any

import ray

from .._errors import ConfigError
from .._ratelimit import Schedule
from .._validation import check_positive_int

#: Seconds of the rate one limiter lease covers (split between the workers).
LEASE_HORIZON_S = 0.1
#: A leased slot older than this is dropped instead of being used late: a worker that woke
#: late (a busy CPU) and sent its overdue slots at once would burst past the server's bucket.
STALE_SLOT_S = 0.05
#: A lease round trip at most this long maps the limiter's clock onto a worker's.
CLOCK_RTT_S = 0.01
#: Once the server refused a request for coming early (spacing on), no slot is leased less
#: than this far ahead: a slot due when the lease leaves reaches its process late, which then
#: sends it right before another process's next slot (a burst-1 server refused them).
SPACED_AHEAD_S = 0.005


class _Limiter:
    """Global rate limit of a run: leases evenly spaced send slots, pauses on 429.

    The actor holds the one :class:`~distextract._ratelimit.Schedule` of the run (the same
    GCRA and AIMD pace as the in-process :class:`~distextract._ratelimit.TokenBucket`), so
    every worker's requests share one pace, and a 429 or an exhausted-quota header seen by
    any worker pauses (and, for a 429, slows) them all. Slots already leased stay valid.

    Parameters
    ----------
    rate : float, optional
        Requests per second.
    rows_rate : float, optional
        Rows per second.
    discover : bool
        With neither: discover the server's requests/s limit from its 429s.
    """

    def __init__(self, rate: float | None, rows_rate: float | None,
                 discover: bool = False) -> None:
        self.rate = rate
        self.rows_rate = rows_rate
        self.schedule = Schedule(rate, rows_rate, 1.0, None, discover, void_on_pause=False)
        self.generation = 0
        self.leases = 0
        self.t0 = time.monotonic()

    def lease(self, n: int, rows: int) -> tuple[list[float], int, float, float, float]:
        """Reserve ``n`` slots of one request of ``rows`` rows each.

        Returns
        -------
        delays : list of float
            Seconds from now at which each slot may be used.
        generation : int
            Pause generation (changes on every 429 and hold).
        now : float
            This actor's ``time.monotonic()`` the delays count from (a worker maps the slots
            onto its own clock with it; shifting them by its round trip instead would let
            slow trips bunch different workers' slots into bursts).
        gap : float
            Shortest spacing of these requests on the wire (``Schedule.min_gap``).
        wire : tuple of float
            The wire's interval and burst for them (``Schedule.wire_gap``).
        """
        now = time.monotonic()
        earliest = now + (SPACED_AHEAD_S if self.schedule.spacing else 0.0)
        delays = [self.schedule.reserve(rows, earliest) - now for _ in range(n)]
        self.leases += 1
        return (delays, self.generation, now, self.schedule.min_gap(rows),
                self.schedule.wire_gap(rows))

    def penalize(self, seconds: float) -> int:
        """A 429: pause every slot not yet granted for ``seconds`` and lower the pace once per
        event; returns the new generation."""
        if seconds > 0:
            self.schedule.refused(time.monotonic(), seconds)
            self.generation += 1
        return self.generation

    def hold(self, seconds: float) -> int:
        """An exhausted quota: pause every slot not yet granted for ``seconds``."""
        if seconds > 0:
            self.schedule.hold(time.monotonic(), seconds)
            self.generation += 1
        return self.generation

    def continue_after(self, seconds: float, spacing: bool = False) -> None:
        """Continue the driver's schedule, whose booked slots run ``seconds`` from now (with
        its spacing on when the server had refused one of the driver's requests: at the
        ceiling with no spacing, the first slots of the hand-over met a burst-1 server that
        had refused the driver already, and 4 were refused within 5 ms)."""
        self.schedule.continue_after(time.monotonic(), seconds)
        if spacing:
            self.schedule.spacing = True

    def adopt_pace(self, rate: float, target: float, slow_start: bool,
                   scale: float | None = None, slow_refused: float | None = None) -> None:
        """Continue the pace the driver's limiter reached while the workers started: a
        discovery, or a configured rate lowered by 429s (starting again at the ceiling, the
        actor's first slots met the server that had just refused the driver: a burst-1 server
        refused 5 to 7 requests at each hand-over)."""
        pace = self.schedule.pace
        if pace is None:
            return
        if pace.ceiling is not None:
            rate = min(float(rate), pace.ceiling)
        pace.rate, pace.target, pace.slow_start = float(rate), float(target), bool(slow_start)
        pace.scale = float(scale) if scale is not None else pace.rate
        if slow_refused is not None:
            pace.slow_refused = float(slow_refused)
        self.schedule._apply_pace()

    def node_id(self) -> str:
        """The node this actor runs on (a proxy on the same node shares its clock)."""
        return ray.get_runtime_context().get_node_id()

    def stats(self) -> dict:
        out = self.schedule.stats()
        out.update(leases=self.leases, elapsed=time.monotonic() - self.t0)
        return out


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

    #: Its slots are shared with other processes (the HTTP client's wire pacer takes a new
    #: one for a request that reaches the wire late, rather than bunch it with theirs).
    shared = True

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
        self._gap = 0.0
        self._wire = (0.0, 1.0)
        self._same_clock: bool | None = None  # known at the first lease
        self._paused_until = -math.inf  # pauses this process asked for (429s, quota holds)

    def min_gap(self, rows: int = 1) -> float:
        """Shortest spacing on the wire the limiter asked for with the last lease."""
        return self._gap

    def wire_gap(self, rows: int = 1) -> tuple[float, float]:
        """The wire's interval and burst the limiter gave with the last lease
        (:meth:`~distextract._ratelimit.Schedule.wire_gap`)."""
        return self._wire

    def acquire(self, rows: int = 1, lead: float = 0.0) -> float:
        """Block until one request of ``rows`` rows may be sent (``lead`` seconds before
        that: the caller holds the request until the slot itself); the slot's time (this
        process's ``time.monotonic()``) is returned."""
        if rows < 1:
            raise ConfigError(f"rows must be >= 1, got {rows}")
        start = time.monotonic()
        with self._lock:
            while self._slots:
                at, allowance = self._slots.popleft()
                if allowance >= rows and at > start - STALE_SLOT_S:
                    break
            else:
                if self._same_clock is None:
                    self._same_clock = self._on_actor_node()
                sent = time.monotonic()
                delays, _, actor_now, self._gap, wire = ray.get(
                    self.actor.lease.remote(self.chunk, rows))
                self._wire = (float(wire[0]), float(wire[1]))
                got = time.monotonic()
                self.round_trips += 1
                # The actor's clock minus ours: none on the actor's node (time.monotonic is
                # the machine's one clock); else from the quickest round trip so far (its
                # error is at most half that trip): slots keep the actor's spacing whatever
                # each trip's delay. Until one trip was quick, slots count from the answer.
                rtt = got - sent
                if rtt < self._best_rtt:
                    self._best_rtt = rtt
                    self._offset = actor_now - 0.5 * (sent + got)
                if self._same_clock:
                    base = actor_now
                elif self._best_rtt <= CLOCK_RTT_S:
                    base = max(actor_now - self._offset, sent)
                else:
                    base = got
                self._slots.extend((base + d, rows) for d in delays[1:])
                at = base + delays[0]
        wait = at - lead - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            self.waited_s += time.monotonic() - start
        return at

    def _on_actor_node(self) -> bool:
        """Whether this process runs on the limiter actor's node (False when unknown)."""
        try:
            here = ray.get_runtime_context().get_node_id()
            return here is not None and ray.get(self.actor.node_id.remote()) == here
        except Exception:  # noqa: BLE001 - an actor without node_id (tests' stand-ins)
            return False

    def resume_at(self) -> float:
        """End of the last pause this process asked for (``time.monotonic()``; -inf when
        none): a request let go early (``lead``) waits for it at the wire."""
        return self._paused_until

    def penalize(self, seconds: float) -> None:
        """The server answered 429: pause every worker for ``seconds``."""
        with self._lock:
            self._slots.clear()
            self._paused_until = max(self._paused_until, time.monotonic() + float(seconds))
        ray.get(self.actor.penalize.remote(float(seconds)))

    def hold(self, seconds: float) -> None:
        """The server's quota is spent for ``seconds``: pause every worker (no slowdown)."""
        with self._lock:
            self._slots.clear()
            self._paused_until = max(self._paused_until, time.monotonic() + float(seconds))
        self.actor.hold.remote(float(seconds))  # no need to wait: later leases come after it

    def __getstate__(self) -> dict:
        return {"actor": self.actor, "chunk": self.chunk, "rows_rate": self.rows_rate}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["actor"], state["chunk"], state.get("rows_rate"))

