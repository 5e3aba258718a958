"""Client-side rate limiting: requests/s and rows/s, shared by every thread of one API key.

:class:`RateLimiter` is the protocol the HTTP client talks to; :class:`TokenBucket` is the
thread-safe in-process implementation. The Ray layer replaces it by an object that leases
send slots from a shared actor (:mod:`distextract.distributed.limiter`), offering the same
methods:

- ``acquire(rows)`` blocks until one request carrying ``rows`` rows may be sent;
- ``penalize(seconds)`` is called when the server answers 429: every user of the limiter pauses
  for ``seconds`` and then resumes at the steady pace, without a burst;
- optionally ``hold(seconds)``, called when the server says its quota is spent
  (``X-RateLimit-Remaining: 0`` with ``X-RateLimit-Reset``): pause without lowering the pace.

One algorithm serves both (:class:`Schedule`): the generic cell rate algorithm (GCRA, "virtual
scheduling") over a requests/s and a rows/s bucket. Each bucket keeps the time at which it
would be full again (its *theoretical arrival time*); a caller books its slot under the lock
and sleeps outside it, so callers are served in order, nobody polls, and the long-run rate
never exceeds the pace. The pace (:class:`Pace`) is the configured rate lowered by 429s and
raised back additively (AIMD), or, with no configured rate and ``discover=True``, the server's
limit discovered the same way.
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


class Pace:
    """The rate a limiter sends at, adapted to the server's 429s (AIMD, as TCP does).

    With a configured ``ceiling`` (the rate the user gave) the pace starts there; without one
    it *discovers* the server's limit: it starts at :attr:`START_RATE` and doubles per second
    of sending at the pace (slow start) until the first 429. Every 429 *event* multiplies the
    pace by :attr:`DECREASE` (multiplicative decrease; by :attr:`MILD_DECREASE` when it comes
    more than :attr:`CALM_S` after the previous one: an isolated refusal) and sets the target it may come back
    to quickly; above that target, it grows by :attr:`INCREASE` of the ceiling per second of
    sending at the pace (additive increase, ``3%/s``: from 0.5 of the ceiling back to 0.95 in
    15 s), never above the ceiling; a discovery, which has no ceiling, grows by
    :attr:`INCREASE` of the pace its first 429 refused (or of itself, when higher) per second.
    Time counts
    only while callers actually wait for the pace (a client sending less than the pace allows
    says nothing about the server's limit, so the pace does not grow then).

    A 429 during the pause of a previous one, or within :attr:`COOLDOWN_S` of the last
    decrease, belongs to the same event (its request was sent before the decrease was known):
    it pauses but does not lower the pace again. A 429 in a discovery's slow start halves the
    pace (the slow start overshot by up to one doubling); it ends the slow start only when it
    confirms an earlier one, coming at no more than :attr:`CONFIRM` times the pace that one
    refused (a lone 429 far below the limit, from arrival jitter or requests a stalled
    process let go together, no longer ends the discovery there); the confirming 429's pace
    is then the estimate of the server's limit, and :attr:`DECREASE` of it the quick-recovery
    target.

    Not thread-safe: the limiter holding it locks.

    Parameters
    ----------
    ceiling : float, optional
        Highest rate (the configured one); None: discover.
    start : float, optional
        Starting rate of a discovery (default :attr:`START_RATE`).
    """

    DECREASE = 0.85
    #: The decrease of a 429 event more than :attr:`CALM_S` after the previous one (an
    #: isolated refusal: a server that refuses by arrival jitter, burst 1, at a pace it took
    #: for seconds): a step of safety margin, not a rate above its limit (those come in
    #: runs, each lowering the pace by :attr:`DECREASE`).
    MILD_DECREASE = 0.95
    CALM_S = 5.0
    INCREASE = 0.03
    COOLDOWN_S = 0.25
    START_RATE = 20.0
    #: Lowest pace, as a share of the ceiling (or in requests/s for a discovery).
    FLOOR = 0.05
    MIN_RATE = 0.05
    #: Longest stretch of one wait counted as time sent at the pace (a caller alone waiting
    #: for one slow slot must not grow the pace by its whole wait).
    MAX_STEP_S = 0.1
    #: A slow start's 429 at no more than CONFIRM times the pace of the one before it
    #: confirms the limit (the slow start doubles past a lone one).
    CONFIRM = 2.0

    def __init__(self, ceiling: float | None = None, start: float | None = None) -> None:
        self.ceiling = ceiling
        self.discover = ceiling is None
        self.rate = ceiling if ceiling is not None else float(start or self.START_RATE)
        self.slow_start = self.discover
        #: What the additive increase is a share of: the ceiling, or in a discovery the pace
        #: the first 429 refused.
        self.scale = self.rate
        self.target = math.inf  # up to here the pace doubles per second (quick recovery)
        self.decreases = 0
        #: Pace of the slow start's last 429 (None: none yet).
        self.slow_refused: float | None = None
        self._last_decrease = -math.inf
        self._pause_end = -math.inf
        self._last_grow: float | None = None

    @property
    def factor(self) -> float:
        """The pace as a share of the ceiling (1.0 for a discovery)."""
        return 1.0 if self.ceiling is None else self.rate / self.ceiling

    def saturated(self, now: float) -> None:
        """A caller waited for the pace at ``now``: grow by the time sent at the pace."""
        last, self._last_grow = self._last_grow, now
        if last is None or now <= last:
            return
        dt = min(now - last, self.MAX_STEP_S)
        if self.slow_start or self.rate < self.target:
            grown = self.rate * 2.0 ** dt
            if not self.slow_start:
                grown = min(grown, self.target)
        else:  # additive: INCREASE of the ceiling (of the first refused pace, or of the
            # pace itself when higher) per second
            grown = self.rate + self.INCREASE * max(self.scale, self.rate) * dt
        self.rate = grown if self.ceiling is None else min(self.ceiling, grown)

    def idle(self) -> None:
        """No caller waits: the next wait starts a new stretch of saturated time."""
        self._last_grow = None

    def refused(self, now: float, seconds: float) -> bool:
        """A 429 at ``now`` asking for ``seconds``; True when the pace was lowered."""
        same_event = now < self._pause_end or now < self._last_decrease + self.COOLDOWN_S
        self._pause_end = max(self._pause_end, now + max(0.0, seconds))
        if same_event:
            return False
        if self.slow_start:
            previous, self.slow_refused = self.slow_refused, self.rate
            if previous is not None and self.rate <= self.CONFIRM * previous:
                self.target = self.DECREASE * self.rate
                self.scale = self.rate  # the first estimate of the server's limit
                self.slow_start = False
            self.rate *= 0.5
        else:
            calm = self.decreases > 0 and now - self._last_decrease > self.CALM_S
            self.rate *= self.MILD_DECREASE if calm else self.DECREASE
            self.target = self.rate
        floor = self.MIN_RATE if self.ceiling is None else self.FLOOR * self.ceiling
        self.rate = max(floor, self.rate)
        self.decreases += 1
        self._last_decrease = now
        self._last_grow = None
        return True


def limit_rows_per_s(rate: float | None, rows_rate: float | None,
                     rows_per_request: int | None) -> float | None:
    """A client-side limit in rows/s: ``rate × rows_per_request`` and ``rows_rate``, the
    smaller (None: unlimited)."""
    limits = []
    if rate is not None and rows_per_request:
        limits.append(rate * rows_per_request)
    if rows_rate is not None:
        limits.append(rows_rate)
    return min(limits) if limits else None


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

    def empty_at(self, when: float, keep_booked: bool = False) -> None:
        """Hold one token at ``when``: a steady restart after a pause, no burst.

        ``keep_booked``: slots booked beyond ``when`` stay booked (else they are void)."""
        tat = when + (self.burst - 1.0) * self.interval
        self.tat = max(self.tat, tat) if keep_booked else tat


#: GIL switch interval (seconds) of a process whose threads send at paced slots (the CLI's
#: run, a rate-limited Ray worker): at Python's default 5 ms a sender woken for its slot waits
#: up to that long behind a computing thread, and the slot after it then leaves early; a server
#: that keeps no burst refuses it.
PACED_SWITCH_INTERVAL_S = 0.001


#: A quota hold ending later than the next free slot by more than this lowers the pace.
HOLD_SLACK_S = 0.001

#: Paced bodies one process may write back to back at the wire (catching up on slots it
#: reached late) before the server has refused a request; 1 once it has (:attr:`Schedule.
#: spacing`). A busy process (the CLI's driver while Ray starts, a Ray worker at nice 15) wakes
#: late for its slots, and its late bodies then left together: five at once met a server
#: keeping a burst of 5 requests with its bucket empty (a 429, whose whole-second Retry-After
#: stopped every sender for a second and turned spacing on for the rest of the run). A server
#: keeping a burst of at least this many never refuses the catch-up; one keeping less refuses
#: the first, as it would refuse any jitter.
WIRE_BURST = 3


class Schedule:
    """The one rate-limit algorithm: send times of requests under a requests/s and a rows/s
    limit, paced by :class:`Pace`, paused by 429s and by exhausted-quota headers.

    GCRA virtual scheduling: :meth:`reserve` gives each request the earliest time both buckets
    allow and books it, so requests are evenly spaced and the long-run rate never exceeds the
    pace. Used under a lock by :class:`TokenBucket` (threads of one process) and by the Ray
    limiter actor (every worker of a run), so both apply the same policy. Not thread-safe.

    Parameters
    ----------
    rate, rows_rate : float, optional
        Requests/s and rows/s limits (the ceilings of the pace).
    burst, rows_burst : float
        Bucket capacities (requests, rows).
    discover : bool
        With neither limit given: discover a requests/s limit (:class:`Pace`).
    void_on_pause : bool
        A pause voids the slots booked before it (their callers queue again: the in-process
        limiter); False keeps them booked (the Ray limiter, whose leased slots stay out).
    """

    def __init__(self, rate: float | None, rows_rate: float | None, burst: float = 1.0,
                 rows_burst: float | None = None, discover: bool = False,
                 void_on_pause: bool = False) -> None:
        self.void_on_pause = void_on_pause
        self.rate = rate
        self.rows_rate = rows_rate
        self.discover = bool(discover) and rate is None and rows_rate is None
        if rows_rate is not None and rows_burst is None:
            rows_burst = max(1.0, rows_rate / 10.0)
        self.burst, self.rows_burst = burst, rows_burst
        self.pace: Pace | None = None
        if self.discover:
            self.pace = Pace(None)
        elif rate is not None:
            self.pace = Pace(rate)
        elif rows_rate is not None:
            self.pace = Pace(rows_rate)
        req_rate = self.pace.rate if self.discover else rate
        self._requests = None if req_rate is None else _Bucket(req_rate, burst)
        self._rows = None if rows_rate is None else _Bucket(rows_rate, rows_burst)
        self.paused_until = -math.inf
        self.penalties = 0
        self.holds = 0
        self.granted = 0
        self.granted_rows = 0
        #: Spacing of the requests actually let go (:meth:`let_go`), on from the first 429.
        self.spacing = False
        self._spaced_until = -math.inf
        self.respaced = 0

    @property
    def limited(self) -> bool:
        """Whether any bucket paces the requests (else only pauses apply)."""
        return self._requests is not None or self._rows is not None

    def _apply_pace(self) -> None:
        if self.pace is None:
            return
        f = self.pace.factor
        if self.discover:
            self._requests.interval = 1.0 / self.pace.rate
            return
        for bucket, rate in ((self._requests, self.rate), (self._rows, self.rows_rate)):
            if bucket is not None:
                bucket.interval = 1.0 / (rate * f)

    def earliest(self, rows: int, now: float) -> float:
        """Earliest send time of a request of ``rows`` rows (nothing booked)."""
        at = max(now, self.paused_until)
        for bucket, cost in ((self._requests, 1.0), (self._rows, float(rows))):
            if bucket is not None:
                at = max(at, bucket.earliest(cost, now))
        return at

    def reserve(self, rows: int, now: float) -> float:
        """Book the earliest send time of a request of ``rows`` rows; returns it."""
        at = self.earliest(rows, now)
        for bucket, cost in ((self._requests, 1.0), (self._rows, float(rows))):
            if bucket is not None:
                bucket.take(cost, at)
        if self.pace is not None:
            if at > now and at > self.paused_until:
                self.pace.saturated(at)  # it waited for the pace itself
                self._apply_pace()
            elif at <= now:
                self.pace.idle()
        self.granted += 1
        self.granted_rows += rows
        return at

    def spaced_until(self) -> float:
        """Earliest time the next request may be let go, one interval (at the pace) after the
        last one actually let go (-inf while :attr:`spacing` is off).

        Booked slots are evenly spaced, but a caller that wakes late for its slot (a busy
        CPU: a thread waiting for the GIL) is followed by one on time, and a stall lets several
        booked slots pass that their callers then use at once: gaps shorter than the interval,
        which a server keeping no burst refuses. Once the server has refused a request
        (:meth:`refused`) no request leaves less than an interval after the previous one
        actually left: the lateness is lost, as a burst-1 server would lose it anyway, but the
        request is not refused."""
        return self._spaced_until if self.spacing else -math.inf

    def let_go(self, rows: int, now: float) -> None:
        """A caller was let go at ``now`` with a request of ``rows`` rows (its slot's time or
        later): the next one leaves an interval later at the earliest (:meth:`spaced_until`)."""
        gap = 0.0
        if self._requests is not None:
            gap = self._requests.interval
        if self._rows is not None:
            gap = max(gap, rows * self._rows.interval)
        self._spaced_until = now + gap

    def min_gap(self, rows: int) -> float:
        """Shortest time between two requests on the wire, the second of ``rows`` rows: one
        interval at the pace once the server has refused a request (:attr:`spacing`), else 0
        (bunched requests are within a burst the server keeps)."""
        if not self.spacing:
            return 0.0
        gap = 0.0
        if self._requests is not None:
            gap = self._requests.interval
        if self._rows is not None:
            gap = max(gap, rows * self._rows.interval)
        return gap

    def wire_gap(self, rows: int) -> tuple[float, float]:
        """The wire's own rate for a request of ``rows`` rows: one interval at the pace (0
        when nothing paces the requests) and the bodies that may leave back to back,
        :data:`WIRE_BURST` (or as many of these rows as the rows bucket holds, when more: a
        rows/min server kept 1 s of burst and lost 2-3 points to a catch-up of 3), or 1 once
        the server has refused a request (:attr:`spacing`):
        the HTTP client's wire pacer holds its bodies to it (a GCRA of its own)."""
        gap = 0.0
        burst = float(WIRE_BURST)
        if self._requests is not None:
            gap = self._requests.interval
        if self._rows is not None:
            gap = max(gap, rows * self._rows.interval)
            # no fewer than the rows bucket itself lets go back to back after an idle spell
            burst = max(burst, self._rows.burst / max(1, rows))
        return gap, (1.0 if self.spacing else burst)

    def booked_for(self, now: float) -> float:
        """Seconds from ``now`` until the slots already booked are spent (0 when none are)."""
        tats = [b.tat for b in (self._requests, self._rows) if b is not None]
        return max([0.0] + [t - now for t in tats])

    def continue_after(self, now: float, seconds: float) -> None:
        """Take over from another schedule whose booked slots run ``seconds`` past ``now``:
        no slot here before then and no burst credit from the time before it (the server
        counts both senders' requests against one limit)."""
        for bucket in (self._requests, self._rows):
            if bucket is not None:
                bucket.tat = max(bucket.tat, now + max(0.0, seconds))

    def refused(self, now: float, seconds: float) -> bool:
        """The server answered 429 asking for ``seconds``: pause every request until then and
        lower the pace once per event; returns True when the pace was lowered."""
        seconds = max(0.0, float(seconds))
        lowered = self.pace.refused(now, seconds) if self.pace is not None else False
        if lowered:
            self._apply_pace()
        self.penalties += 1
        self.spacing = True
        self._pause(now + seconds)
        return lowered

    def hold(self, now: float, seconds: float) -> bool:
        """The server said its quota is spent for ``seconds`` (``X-RateLimit-Remaining: 0``):
        send nothing until then.

        A hold that delays the next free slot means the pace outruns the server's refill
        (a burst-1 server says "spent" after every request, but its reset then comes before
        the next slot): it lowers the pace as a 429 event would, before any 429. Returns True
        when the pace was lowered."""
        if not seconds > 0:
            return False
        self.holds += 1
        until = now + float(seconds)
        lowered = False
        if self.pace is not None and until > self.earliest(1, now) + HOLD_SLACK_S:
            lowered = self.pace.refused(now, 0.0)
            if lowered:
                self._apply_pace()
        self._pause(until)
        return lowered

    def _pause(self, until: float) -> None:
        if until <= self.paused_until:
            return
        self.paused_until = until
        for bucket in (self._requests, self._rows):
            if bucket is not None:
                bucket.empty_at(until, keep_booked=not self.void_on_pause)

    def stats(self) -> dict:
        """Counters and the current pace (JSON-serialisable)."""
        pace = self.pace
        return {"rate": self.rate, "rows_rate": self.rows_rate, "discover": self.discover,
                "granted": self.granted, "granted_rows": self.granted_rows,
                "penalties": self.penalties, "holds": self.holds,
                "spacing": self.spacing, "respaced": self.respaced,
                "slowdowns": 0 if pace is None else pace.decreases,
                "pace": 1.0 if pace is None else pace.factor,
                "paced_rate": None if pace is None else pace.rate}


class TokenBucket:
    """Thread-safe rate limit for the threads of one process: a :class:`Schedule` under a lock.

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
    discover : bool
        With neither ``rate`` nor ``rows_rate``: discover the server's requests/s limit from
        its 429s (:class:`Pace`) instead of sending unpaced.
    clock : callable, optional
        Monotonic clock in seconds (a test may inject one that records what the limiter saw;
        waits use the real time).

    Attributes
    ----------
    waited_s : float
        Total time callers spent blocked in :meth:`acquire`.
    penalties : int
        Number of :meth:`penalize` calls.
    """

    def __init__(self, rate: float | None = None, rows_rate: float | None = None, *,
                 burst: float | None = None, rows_burst: float | None = None,
                 discover: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
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
        self.schedule = Schedule(self.rate, self.rows_rate, burst, rows_burst, discover,
                                 void_on_pause=True)
        self.discover = self.schedule.discover
        self._clock = clock
        self._cond = threading.Condition()
        self._epoch = 0  # changes on every pause: reservations made before are void
        self.waited_s = 0.0

    @property
    def penalties(self) -> int:
        return self.schedule.penalties

    @property
    def pace(self) -> Pace | None:
        """The adaptive pace (None when nothing paces the requests)."""
        return self.schedule.pace

    def acquire(self, rows: int = 1, lead: float = 0.0) -> float:
        """Block until a request carrying ``rows`` rows may be sent, then account for it.

        Parameters
        ----------
        rows : int
            Rows in the request (>= 1).
        lead : float
            Let the caller go this many seconds before its slot, to prepare the request; it
            then holds the request until the returned time itself, spaced by
            :meth:`min_gap` (the HTTP client's wire pacer), and this limiter leaves the
            spacing to it.

        Returns
        -------
        float
            The slot's time (the clock's, ``time.monotonic`` by default).
        """
        if rows < 1:
            raise ConfigError(f"rows must be >= 1, got {rows}")
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                if self.schedule.paused_until > now:
                    self._cond.wait(self.schedule.paused_until - now)
                    continue
                send_at = self.schedule.reserve(rows, now)
                epoch = self._epoch
                # Sleep until our slot, and an interval after the last request let go once
                # the server refused one (Schedule.spaced_until); a pause meanwhile voids the
                # slot (the buckets were reset), so the caller queues again behind the pause.
                respaced = False
                while self._epoch == epoch:
                    spaced = -math.inf if lead > 0 else self.schedule.spaced_until()
                    now = self._clock()
                    if now >= send_at - lead and now >= spaced:
                        break
                    respaced = respaced or now >= send_at
                    self._cond.wait(max(send_at - lead, spaced) - now)
                if self._epoch == epoch:
                    break
            now = self._clock()
            self.schedule.let_go(rows, now)
            self.schedule.respaced += respaced
            self.waited_s += now - start
        return send_at

    def min_gap(self, rows: int = 1) -> float:
        """Shortest spacing on the wire of a request of ``rows`` rows after the previous one
        (:meth:`Schedule.min_gap`)."""
        with self._cond:
            return self.schedule.min_gap(rows)

    def wire_gap(self, rows: int = 1) -> tuple[float, float]:
        """The wire's rate and burst for a request of ``rows`` rows
        (:meth:`Schedule.wire_gap`)."""
        with self._cond:
            return self.schedule.wire_gap(rows)

    def resume_at(self) -> float:
        """End of the current pause (a 429's, a quota hold's; the clock's time, -inf when
        none began): a request let go early (``lead``) waits for it at the wire."""
        with self._cond:
            return self.schedule.paused_until

    def penalize(self, seconds: float) -> None:
        """The server answered 429: pause all callers for ``seconds``, lower the pace once per
        event (:class:`Pace`), and restart at the steady pace afterwards.

        Parameters
        ----------
        seconds : float
            Pause length (the server's Retry-After); non-positive values are ignored.
        """
        if not seconds > 0:
            return
        with self._cond:
            self.schedule.refused(self._clock(), float(seconds))
            self._epoch += 1
            self._cond.notify_all()

    def hold(self, seconds: float) -> None:
        """The server's quota is spent for ``seconds`` (``X-RateLimit-Remaining: 0``): send
        nothing until then, without lowering the pace."""
        if not seconds > 0:
            return
        with self._cond:
            self.schedule.hold(self._clock(), float(seconds))
            self._epoch += 1
            self._cond.notify_all()

    def stats(self) -> dict:
        """The schedule's counters and pace."""
        with self._cond:
            return self.schedule.stats()

    def describe(self) -> dict:
        """Settings as a JSON-serialisable dict."""
        return {"type": type(self).__name__, "rate": self.rate, "rows_rate": self.rows_rate,
                "burst": self.burst, "rows_burst": self.rows_burst, "discover": self.discover}

    def __repr__(self) -> str:
        return (f"TokenBucket(rate={self.rate}, rows_rate={self.rows_rate}, burst={self.burst}, "
                f"discover={self.discover})")


__all__ = ["PACED_SWITCH_INTERVAL_S", "WIRE_BURST", "Pace", "RateLimiter", "Schedule", "TokenBucket",
           "limit_rows_per_s"]
