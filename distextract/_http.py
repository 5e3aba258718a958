"""An :class:`~distextract.Oracle` behind an HTTP API (protocol of DESIGN.md section 4).

Built on **httpx**: a maintained client with connection pooling and keep-alive, precise
timeouts, typed transport errors (so a lost answer is told apart from a refused connection),
and an injectable transport (``httpx.MockTransport``) that lets the retry logic be tested
without a network.

Concurrency uses **``max_in_flight`` sender threads around one ``httpx.Client``** rather than an
``AsyncClient`` on a background event loop. The oracle interface is synchronous and is called from ordinary threads
and Ray actors; the rate limiter is a blocking object that the Ray layer replaces by an actor
proxy (``ray.get`` blocks too). Threads compose with both directly, own no event loop that
could clash with the caller's (Jupyter, async Ray actors), and at the request rates of a
priced API (hundreds per second at most) the GIL costs nothing measurable: the threads spend
their time waiting on sockets and on the limiter.

Coalescing. Queries from every thread go into one queue of rows; a sender thread takes the
rate-limit permit *first* and only then fills its request with up to ``max_batch`` queued rows,
oldest first, from as many queries as needed (a query's rows may ride in several requests).
So concurrent small queries (a kink search round sends a few rows) share requests instead of
each spending a permit, and rows that arrive while a permit is pending join the request. With
a rows/s limit the request carries exactly the rows its permit was taken for. Each query gets
its own rows' answers back; counters and the budget count rows, so they are unchanged.

Pacing at the wire. A paced request's slot is taken ``WIRE_LEAD_S`` before its time; the
sender then fills and encodes it, and the body's bytes are written to the socket at the slot's
time by a hook in the connection's network stream (:class:`_WirePacer`), not when the sender
thread gets the GIL back after encoding: on the CLI's busy driver (64 engine threads) the time
from a slot to the wire varied by several milliseconds, and a late request followed by one on
time reached a server that keeps no burst less than an interval apart (it refused it). The
hook also holds the paced bodies of this process to the limiter's rate at the wire
(:meth:`TokenBucket.wire_gap`): a process that woke late for its slots catches up at most
``WIRE_BURST`` (3) bodies back to back, and once the server has refused a request (the
limiter's spacing) it keeps every body at least an interval after the previous one.

Accounting. ``rows_paid`` counts rows the server may have charged for: requests answered with a
2xx status, and requests whose answer was lost after they were sent (read timeout, reset,
disconnect). Rows of requests the server refused with an error status (429, 413, 5xx, other
4xx) are counted in ``rows_refused``: the server computed nothing for them. Rows of requests
that never reached it (connection refused) count nowhere. The hard ``budget`` applies to paid
rows; rows are reserved before each request is sent, so concurrent requests never exceed it.
"""

from __future__ import annotations

import collections
import email.utils
import json
import logging
import math
import os
import queue
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np

from ._errors import (
    BudgetExhausted,
    ConfigError,
    OracleHTTPError,
    OracleShapeError,
    OracleValueError,
)
from ._oracle import Oracle
from ._ratelimit import RateLimiter, TokenBucket
from ._validation import check_positive_int
from ._wire import dumps_rows, loads

logger = logging.getLogger(__name__)

#: Longest piece of a server message quoted in an exception.
MESSAGE_CHARS = 300
#: Seconds an idle sender thread waits for rows before it exits.
SENDER_IDLE_S = 5.0
#: Seconds before its slot a paced request is let go to be filled and encoded; its body then
#: waits at the wire for the slot itself (:class:`_WirePacer`).
WIRE_LEAD_S = 0.003
#: Retry kinds counted in :attr:`HTTPOracle.retries`.
RETRY_KINDS = ("429", "5xx", "timeout", "reset", "connect", "413")
_SECRET_QUERY = re.compile(r"key|token|secret|sig|auth|pass", re.IGNORECASE)


class _Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


#: Environment variables from which httpx takes a proxy for an ``http://`` URL.
PROXY_ENV = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def tls_verify(url: str) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a client of ``url``.

    ``https://``: True (httpx's default context, the CA bundle loaded). ``http://``: a TLS
    client context with no CA loaded, which refuses every certificate. httpx builds its TLS
    context when the client is made, TLS or not, and loading the CA bundle there took 47 ms
    (62 ms on the project's loaded machine) of each process's start: the CLI's driver before
    its first request, and each Ray worker. A client of an ``http://`` URL never speaks TLS
    (it follows no redirect); were it ever asked to, it would fail closed, not unverified.
    Through a proxy from the environment (:data:`PROXY_ENV`, possibly an ``https://`` one)
    it keeps httpx's default.

    Parameters
    ----------
    url : str
        The oracle's URL (``http://`` or ``https://``).

    Returns
    -------
    ssl.SSLContext or bool
    """
    if url.lower().startswith("https://") or any(os.environ.get(k) for k in PROXY_ENV):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, no CA


def redact_url(url: str) -> str:
    """``url`` without user info and with secret-looking query values replaced by ``***``."""
    u = httpx.URL(url)
    if u.userinfo:
        u = u.copy_with(username=None, password=None)
    if u.query:
        params = [(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in u.params.multi_items()]
        u = u.copy_with(params=params)
    return str(u)


def _server_message(resp: httpx.Response) -> str:
    """The server's explanation from an error response, one line, truncated."""
    text = resp.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if key in body:
                text = body[key] if isinstance(body[key], str) else json.dumps(body[key])
                break
    text = " ".join(str(text).split())
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + "... (truncated)"
    return text or "(empty body)"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (int or float) or HTTP-date.

    Returns None when the header is absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """The wait a 429 asks for: ``Retry-After-Ms`` (milliseconds, sent by some APIs because
    ``Retry-After`` only carries whole seconds) when present and readable, else ``Retry-After``.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms.strip()) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    return parse_retry_after(headers.get("retry-after"))


#: Header pairs (remaining, reset) of an exhausted quota, first match wins: the common
#: ``X-RateLimit-*`` and the IETF draft's ``RateLimit-*``.
QUOTA_HEADERS = (("x-ratelimit-remaining", "x-ratelimit-reset"),
                 ("ratelimit-remaining", "ratelimit-reset"))
#: A ``*-Reset`` value above this is a Unix time (GitHub's form), not seconds from now.
EPOCH_RESET_MIN = 1e8


def quota_reset_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds until the server's quota refills, when an answer says it is spent.

    ``X-RateLimit-Remaining: 0`` (or ``RateLimit-Remaining: 0``) with a readable
    ``X-RateLimit-Reset`` (``RateLimit-Reset``): seconds from now (integer or fraction), or a
    Unix time when larger than :data:`EPOCH_RESET_MIN`. None when the quota is not spent or
    the headers are absent or unreadable.
    """
    for remaining_name, reset_name in QUOTA_HEADERS:
        remaining = headers.get(remaining_name)
        if remaining is None:
            continue
        try:
            left = float(remaining.strip())
            reset = float(headers.get(reset_name, "").strip())
        except ValueError:
            return None
        if not (math.isfinite(left) and math.isfinite(reset)) or left > 0:
            return None
        if reset > EPOCH_RESET_MIN:
            reset -= time.time() if now is None else now
        return max(0.0, reset)
    return None


class _Transient(Exception):
    """One failed attempt that may be retried (internal)."""

    def __init__(self, kind: str, detail: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


class _TooLarge(Exception):
    """The server answered 413 (internal)."""


class _WirePacer:
    """Writes each paced request's body to its socket at the request's slot time, and holds
    the paced bodies of this client to a rate of their own at the wire: one ``gap`` (the
    limiter's interval) per body with at most ``burst`` back to back (a GCRA: a body of gap
    ``gap`` leaves no sooner than ``last + gap - (burst - 1) * gap``, where ``last`` is the
    previous body's virtual time, the later of its write and ``last + gap``). With ``burst`` 1 (the limiter's spacing, once the
    server refused a request) no body leaves less than ``gap`` after the previous one; before
    that (:data:`~distextract._ratelimit.WIRE_BURST`) the bodies of a process that woke late
    for their slots catch up at most that many at once instead of all together.

    The sender thread arms it (:meth:`arm`: slot time, gap, body length) just before handing
    the request to httpx; the network stream's write of that many bytes in the same thread
    waits for its turn (:meth:`wait`) under one lock, so the paced bodies of all sender
    threads leave in turn and their spacing is measured where it counts, at the socket.
    Writes that are not armed (headers, unpaced requests) pass straight through.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.last = -math.inf  # the previous paced body's virtual time (GCRA, monotonic)
        self.paced = 0
        self.late_s = 0.0  # total lateness of paced bodies past their slot
        self.spaced = 0  # bodies held back by the wire's rate (the gap after the previous one)
        self.reslotted = 0  # new slots taken by bodies that reached the wire late

    #: A body later than this share of its gap past its slot takes a new slot (``reslot``):
    #: the slot it leaves unused is lost, so only for lateness that could meet the next one.
    LATE_SHARE = 0.5
    #: A write that returns later than this after it started was stalled (the GIL held by
    #: ``ray.init``): the next body's gap counts from its end, else from its start.
    STALLED_WRITE_S = 0.005
    #: New slots one body may take before it is sent late anyway.
    MAX_RESLOTS = 3

    def arm(self, slot: float, gap: float, nbytes: int,
            reslot: Callable[[], float] | None = None,
            resume_at: Callable[[], float] | None = None, burst: float = 1.0) -> None:
        """Pace the next write of ``nbytes`` bytes by this thread: at ``slot``, within the
        wire's rate of one ``gap`` per body and ``burst`` bodies back to back (``burst`` 1:
        ``gap`` after the previous paced body). ``reslot`` (a limiter shared with other
        processes) gives a new slot for a body that reaches the wire later than
        ``max(LATE_SHARE, burst - 1)`` gaps past its slot: sent late, it would arrive just
        before the next slots' requests, sent on time by other processes. ``resume_at`` gives
        the end of the limiter's pause (a 429's or an exhausted quota's, which may come after
        the body was let go): the body waits for it too."""
        self._local.turn = (float(slot), max(0.0, float(gap)), int(nbytes), reslot, resume_at,
                            max(1.0, float(burst)))

    def disarm(self) -> None:
        self._local.turn = None

    def write(self, stream: Any, buffer: bytes, timeout: float | None) -> None:
        turn = getattr(self._local, "turn", None)
        if turn is None or len(buffer) != turn[2]:
            stream.write(buffer, timeout)
            return
        self._local.turn = None
        slot, gap, _, reslot, resume_at, burst = turn
        tries = 0
        late = max(self.LATE_SHARE, burst - 1.0) * gap
        while (reslot is not None and gap > 0 and tries < self.MAX_RESLOTS
               and time.monotonic() > slot + late):
            slot, tries = reslot(), tries + 1
        self.reslotted += tries
        with self._lock:
            now = entered = time.monotonic()
            while True:
                wire = self.last + (2.0 - burst) * gap
                at = max(slot, wire, resume_at() if resume_at is not None else -math.inf)
                if now >= at:
                    break
                time.sleep(at - now)
                now = time.monotonic()
            self.paced += 1
            self.late_s += max(0.0, now - slot)
            self.spaced += wire > max(slot, entered)  # held back by the wire's rate
            try:
                stream.write(buffer, timeout)
            finally:
                # the next gap counts from this write's start (the time after a write also
                # holds the wait for the GIL back, ~1 ms a body on the busy driver), or from
                # its end when it stalled (ray.init holds the GIL for ~0.5 s: the next body
                # must not follow this late one at once)
                end = time.monotonic()
                sent = end if end - now > self.STALLED_WRITE_S else now
                self.last = max(self.last + gap, sent)

    def stats(self) -> dict:
        with self._lock:
            return {"paced": self.paced, "late_s": self.late_s, "spaced": self.spaced,
                    "reslotted": self.reslotted}


class _PacedStream:
    """A network stream whose writes go through a :class:`_WirePacer` (internal)."""

    def __init__(self, inner: Any, pacer: _WirePacer) -> None:
        self._inner = inner
        self._pacer = pacer

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pacer.write(self._inner, buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> _PacedStream:
        return _PacedStream(self._inner.start_tls(ssl_context, server_hostname, timeout),
                            self._pacer)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PacedBackend:
    """httpcore network backend whose streams are :class:`_PacedStream` (internal)."""

    def __init__(self, inner: Any, pacer: _WirePacer) -> None:
        self._inner = inner
        self._pacer = pacer

    def connect_tcp(self, *args: Any, **kwargs: Any) -> _PacedStream:
        return _PacedStream(self._inner.connect_tcp(*args, **kwargs), self._pacer)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _PacedStream:
        return _PacedStream(self._inner.connect_unix_socket(*args, **kwargs), self._pacer)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _install_wire_pacer(client: httpx.Client) -> _WirePacer | None:
    """Route the writes of ``client``'s default transport through a new :class:`_WirePacer`;
    None where httpx's transport is not the one this was written for (then requests are
    paced when they are handed to httpx, as before)."""
    try:
        import httpcore
    except ImportError:  # pragma: no cover - httpx depends on it
        return None
    transport = getattr(client, "_transport", None)
    pool = getattr(transport, "_pool", None)
    if type(transport) is not httpx.HTTPTransport or type(pool) is not httpcore.ConnectionPool \
            or not hasattr(pool, "_network_backend"):
        return None
    pacer = _WirePacer()
    pool._network_backend = _PacedBackend(pool._network_backend, pacer)
    return pacer


def _takes_lead(limiter: Any) -> bool:
    """Whether ``limiter.acquire`` takes ``lead`` (let go early, returns the slot's time)."""
    import inspect

    try:
        return "lead" in inspect.signature(limiter.acquire).parameters
    except (TypeError, ValueError):
        return False


class _Call:
    """One caller's query: its rows, the answers sender threads put in its inbox (internal)."""

    __slots__ = ("X", "cancelled", "error", "inbox", "queued")

    def __init__(self, X: np.ndarray) -> None:
        self.X = X
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.queued = 0  # rows of this call still in the queue
        self.cancelled = False
        self.error: BaseException | None = None


class _Piece:
    """Rows ``start:stop`` of one call, waiting to ride in a request (internal)."""

    __slots__ = ("call", "start", "stop")

    def __init__(self, call: _Call, start: int, stop: int) -> None:
        self.call = call
        self.start = start
        self.stop = stop

    def rows(self) -> np.ndarray:
        return self.call.X[self.start:self.stop]


class HTTPOracle(Oracle):
    """Query a network behind an HTTP API; several requests in flight, rate-limited, retried.

    Parameters
    ----------
    url : str
        Endpoint receiving ``POST {"inputs": [[...], ...]}``.
    input_dim : int
        d, the length of every input row.
    api_key_env : str, optional
        *Name* of the environment variable holding the API key, sent as
        ``Authorization: Bearer <key>``. The key itself is never logged, described or quoted.
    max_batch : int
        Most rows per request; larger queries are split. Lowered automatically on a 413.
    rate : float, optional
        Client-side limit in requests per second (None: no limit).
    rows_rate : float, optional
        Client-side limit in rows per second (None: no limit).
    max_in_flight : int
        Requests in flight at once (threads and pooled connections).
    timeout : float
        Seconds for each request (connect timeout is ``min(timeout, 10)``).
    retries : int
        Retries of one request after transient failures (5xx, timeouts, resets, refused
        connections) before giving up.
    rate_limit_retries : int
        Retries of one request after 429 answers before giving up.
    backoff, backoff_max : float
        Capped exponential backoff: attempt ``i`` waits ``U(0.5, 1) * min(backoff_max,
        backoff * 2**i)`` seconds (the jitter spreads retries of concurrent requests).
    max_retry_after : float
        Longest Retry-After honoured; a longer one stops with :class:`OracleHTTPError`.
    budget : int, optional
        Hard cap on paid rows (see the module docstring); :class:`BudgetExhausted` is raised
        before a request that could exceed it is sent.
    input_field, output_field : str
        JSON field names of the request and the answer.
    limiter : RateLimiter, optional
        Shared limiter (e.g. one per API key across workers). Default: a :class:`TokenBucket`
        from ``rate`` and ``rows_rate``. Every 429 pauses it for the server's Retry-After
        (``Retry-After-Ms`` when the server sends one: finer than Retry-After's whole seconds;
        else ``X-RateLimit-Reset`` when ``X-RateLimit-Remaining`` is 0; the backoff when it
        gives no wait or zero) and lowers its pace once per event. An answer saying the quota
        is spent (``X-RateLimit-Remaining: 0`` with ``X-RateLimit-Reset``, or the IETF
        draft's ``RateLimit-*``) holds every request until the reset, without a 429.
    seed : int or numpy.random.Generator, optional
        Randomness of the backoff jitter.
    transport : httpx.BaseTransport, optional
        Injected transport (tests use ``httpx.MockTransport``).
    discover_rate : bool
        With neither ``rate`` nor ``rows_rate`` (and no ``limiter``): discover the server's
        requests/s limit from its 429s (slow start, then additive increase and multiplicative
        decrease: :class:`~distextract._ratelimit.Pace`) instead of sending unpaced.
    linger : float
        Longest wait, in seconds, of a partly filled request for rows of other threads that
        are about to query (only after :meth:`set_activity` says such threads exist; the Ray
        workers do). Default 2 ms.

    Attributes
    ----------
    rows_paid, rows_answered, rows_refused, requests : int
        Counters (see the module docstring); ``requests`` counts HTTP requests attempted.
    requests_shared : int
        Requests that carried rows of more than one concurrent query (coalesced).
    retries : dict of str to int
        Retries by kind: ``'429'``, ``'5xx'``, ``'timeout'``, ``'reset'``, ``'connect'``,
        ``'413'`` (a 413 split counts once).
    statuses : collections.Counter
        HTTP status codes received.
    """

    def __init__(self, url: str, input_dim: int, *, api_key_env: str | None = None,
                 max_batch: int = 64, rate: float | None = None, rows_rate: float | None = None,
                 max_in_flight: int = 8, timeout: float = 30.0, retries: int = 8,
                 rate_limit_retries: int = 100, backoff: float = 0.1, backoff_max: float = 10.0,
                 max_retry_after: float = 300.0, budget: int | None = None,
                 input_field: str = "inputs", output_field: str = "outputs",
                 limiter: RateLimiter | None = None,
                 seed: int | np.random.Generator | None = None,
                 transport: httpx.BaseTransport | None = None, linger: float = 0.002,
                 discover_rate: bool = False) -> None:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {url!r}")
        self.url = url
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.output_dim: int | None = None
        self.max_batch = check_positive_int("max_batch", max_batch)
        self.max_in_flight = check_positive_int("max_in_flight", max_in_flight)
        self.retries_allowed = check_positive_int("retries", retries, minimum=0)
        self.rate_limit_retries = check_positive_int("rate_limit_retries", rate_limit_retries, 0)
        for name, value in (("timeout", timeout), ("backoff", backoff),
                            ("backoff_max", backoff_max), ("max_retry_after", max_retry_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.budget = None if budget is None else check_positive_int("budget", budget)
        self.input_field = input_field
        self.output_field = output_field
        self.api_key_env = api_key_env
        self._secret: _Secret | None = None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(
                    f"environment variable {api_key_env} (api_key_env) is not set or empty; "
                    f"export it with the API key, or omit api_key_env for an open API"
                )
            self._secret = _Secret(key)
            headers["Authorization"] = f"Bearer {key}"
        if limiter is None:
            limiter = TokenBucket(rate, rows_rate, discover=discover_rate)
        elif rate is not None or rows_rate is not None:
            raise ConfigError("give either limiter= or rate=/rows_rate=, not both")
        elif not isinstance(limiter, RateLimiter):
            raise ConfigError(
                f"limiter must offer acquire(rows) and penalize(seconds), got "
                f"{type(limiter).__name__}"
            )
        self.limiter = limiter
        self.discover_rate = bool(discover_rate) and rate is None and rows_rate is None
        hold = getattr(limiter, "hold", None)
        self._hold: Callable[[float], None] | None = hold if callable(hold) else None
        self.rate = rate
        self.rows_rate = rows_rate
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.max_in_flight,
                                max_keepalive_connections=self.max_in_flight),
            transport=transport, verify=tls_verify(url),
        )
        # the body of a paced request leaves at its slot's time (module docstring); only on
        # httpx's own transport (an injected one is left as it is)
        self._pacer = None if transport is not None else _install_wire_pacer(self._client)
        self._lead = self._pacer is not None and _takes_lead(limiter)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[_Piece] = collections.deque()
        self._queued = 0  # rows waiting in the queue (count against the budget)
        self._claimed = 0  # rows (or requests) that senders waiting for a permit will take
        self._blocked = 0  # callers waiting for answers
        self._senders: list[threading.Thread] = []
        self._active: Callable[[], int] | None = None
        self.linger = float(linger)
        # A limiter without a rows/s limit lets a request fill up to max_batch after its permit
        self._rows_limited = getattr(limiter, "rows_rate", True) is not None
        self.requests_shared = 0
        self._reserved = 0
        self.rows_paid = 0
        self.rows_answered = 0
        self.rows_refused = 0
        self.requests = 0
        self.retries = {kind: 0 for kind in RETRY_KINDS}
        self.statuses: Counter = Counter()
        self._closed = False

    # ----------------------------------------------------------------- public
    def query_stream(self, X: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        """Send ``X`` in batches and yield each answered batch as soon as it arrives.

        Every answered batch is yielded even if another batch fails; the first error is raised
        after them. This lets a journal record every paid answer before an error propagates.

        Parameters
        ----------
        X : array-like of shape (n, d)

        Yields
        ------
        rows : slice
            Rows of ``X`` answered.
        Y : ndarray of shape (rows, m)
        """
        X = self._validate(X)
        if X.shape[0] == 0:
            return
        yield from self._stream(X)

    def stats(self) -> dict:
        """Counters as a JSON-serialisable dict (a consistent snapshot)."""
        with self._lock:
            return {"rows_paid": self.rows_paid, "rows_answered": self.rows_answered,
                    "rows_refused": self.rows_refused, "requests": self.requests,
                    "requests_shared": self.requests_shared,
                    "wire": None if self._pacer is None else self._pacer.stats(),
                    "retries": dict(self.retries),
                    "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                    "max_batch": self.max_batch}

    def describe(self) -> dict:
        """What this oracle is, without secrets (the key's variable *name* only)."""
        return {"type": type(self).__name__, "url": redact_url(self.url),
                "input_dim": self.input_dim, "output_dim": self.output_dim,
                "input_field": self.input_field, "output_field": self.output_field,
                "api_key_env": self.api_key_env,
                "settings": {"max_batch": self.max_batch, "rate": self.rate,
                             "rows_rate": self.rows_rate, "max_in_flight": self.max_in_flight,
                             "timeout": self.timeout, "retries": self.retries_allowed,
                             "budget": self.budget}}

    def close(self) -> None:
        """Stop the worker threads and close the connections."""
        if not self._closed:
            with self._cond:
                self._closed = True
                pending = [p for p in self._queue if not p.call.cancelled]
                self._queue.clear()
                self._queued = 0
                self._cond.notify_all()
            self._deliver(pending, None, ConfigError("this HTTPOracle was closed"))
            for t in list(self._senders):
                t.join(timeout=self.timeout + 1.0)
            self._client.close()

    def __repr__(self) -> str:
        return (f"HTTPOracle(url={redact_url(self.url)!r}, input_dim={self.input_dim}, "
                f"max_batch={self.max_batch}, api_key_env={self.api_key_env!r})")

    def __getstate__(self) -> Any:
        raise TypeError(
            "HTTPOracle cannot be pickled (it holds connections and the API key); build one per "
            "process from its settings and share the rate limit through a limiter"
        )

    # -------------------------------------------------------------- internals
    def _validate(self, X: Any) -> np.ndarray:
        from ._validation import as_matrix

        if self._closed:
            raise ConfigError("this HTTPOracle is closed; create a new one")
        X = as_matrix("X", X, self.input_dim)
        if not np.all(np.isfinite(X)):
            raise ConfigError("X holds NaN or Inf; JSON cannot carry them to the server")
        return X

    def _query(self, X: np.ndarray) -> np.ndarray:
        X = self._validate(X)
        Y: np.ndarray | None = None
        for rows, part in self._stream(X):
            if Y is None:
                Y = np.empty((X.shape[0], part.shape[1]))
            Y[rows] = part
        assert Y is not None
        return Y

    def _stream(self, X: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        n = X.shape[0]
        call = _Call(X)
        step = self.max_batch
        with self._cond:
            if self._closed:
                raise ConfigError("this HTTPOracle is closed; create a new one")
            if self.budget is not None:
                used = self.rows_paid + self._reserved + self._queued
                if used + n > self.budget:
                    raise BudgetExhausted(self.budget, used, n)
            for i in range(0, n, step):
                self._queue.append(_Piece(call, i, min(i + step, n)))
            call.queued = n
            self._queued += n
            self._blocked += 1
            self._start_senders()
            self._cond.notify_all()
        answered = 0
        try:
            while answered < n:
                rows, part = call.inbox.get()
                answered += rows.stop - rows.start
                if isinstance(part, BaseException):
                    if call.error is None:
                        call.error = part
                        with self._cond:
                            answered += self._cancel(call)  # not sent yet: nothing paid
                    continue
                yield rows, part
        finally:
            with self._cond:
                self._blocked -= 1
                self._cancel(call)
                self._cond.notify_all()
        if call.error is not None:
            raise call.error

    def _cancel(self, call: _Call) -> int:
        """Withdraw the rows of ``call`` still waiting in the queue; returns their number
        (lock held)."""
        rows, call.queued = call.queued, 0
        call.cancelled = True
        self._queued -= rows
        return rows

    # ------------------------------------------------------------- coalescing
    def set_activity(self, active: Callable[[], int] | None) -> None:
        """Tell the client how many threads may query it soon (e.g. a worker's running tasks).

        A partly filled request then waits up to ``linger`` seconds while some of those threads
        are still computing (not blocked in a query), so their rows can join it. Without it (or
        when every such thread is blocked here) a request leaves as soon as a sender is free.
        """
        self._active = active

    def _start_senders(self) -> None:
        while len(self._senders) < self.max_in_flight:
            t = threading.Thread(target=self._sender_loop, daemon=True,
                                 name=f"dx-http-{len(self._senders)}")
            self._senders.append(t)
            t.start()

    def _unclaimed(self) -> int:
        """Queued rows that no sender waiting for a permit will take (lock held)."""
        if self._rows_limited:
            return self._queued - self._claimed
        return self._queued - self._claimed * self.max_batch

    def _others_computing(self) -> bool:
        """Whether a thread that may add rows soon is not blocked in a query (lock held)."""
        active = self._active
        if active is None:
            return False
        try:
            return int(active()) > self._blocked
        except Exception:  # noqa: BLE001 - a broken hint must not stop queries
            return False

    def _sender_loop(self) -> None:
        """One of ``max_in_flight`` sender threads: permit first, then fill the request.

        The rate-limit permit is taken before the request's rows are chosen, so rows that
        arrive while the permit is pending (from any caller) ride in the same request, and
        a request of the client's ``max_batch`` rows uses the permit fully.
        """
        while True:
            with self._cond:
                while not self._closed and self._unclaimed() <= 0:
                    if not self._cond.wait(SENDER_IDLE_S) and self._unclaimed() <= 0:
                        # idle: exit (a client never closed leaks no threads; the next query
                        # starts senders again)
                        self._senders.remove(threading.current_thread())
                        return
                if self._closed:
                    return
                deadline = time.monotonic() + self.linger
                while (not self._closed and 0 < self._unclaimed() < self.max_batch
                       and self._others_computing()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                claim = min(self.max_batch, self._unclaimed())
                if claim <= 0:
                    continue
                self._claimed += claim if self._rows_limited else 1
            error: BaseException | None = None
            slot = None
            try:
                slot = self._acquire(claim)
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                error = exc
            with self._cond:
                self._claimed -= claim if self._rows_limited else 1
                cap = claim if self._rows_limited else self.max_batch
                pieces = self._take(cap)
                rows = sum(p.stop - p.start for p in pieces)
                if error is None and rows:
                    self._reserved += rows  # from queued to reserved: the budget stays exact
                    if len({id(p.call) for p in pieces}) > 1:
                        self.requests_shared += 1
                self._cond.notify_all()
            if not pieces:
                continue
            if error is not None:
                self._deliver(pieces, None, error)
                continue
            X = pieces[0].rows() if len(pieces) == 1 else np.concatenate(
                [p.rows() for p in pieces], axis=0)
            try:
                Y = self._send(X, reserved=True, slot=slot)
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                self._deliver(pieces, None, exc)
            else:
                self._deliver(pieces, Y, None)

    def _acquire(self, rows: int) -> float | None:
        """Take a rate-limit slot for a request of ``rows`` rows; returns its time when the
        wire pacer is to hold the body until then (let go :data:`WIRE_LEAD_S` early), else
        None (let go at the slot: the body leaves when it is ready)."""
        if self._lead:
            return self.limiter.acquire(rows, lead=WIRE_LEAD_S)
        self.limiter.acquire(rows)
        return None

    def _wire_gap(self, rows: int) -> tuple[float, float]:
        """The wire's interval and burst for a request of ``rows`` rows (the limiter's
        ``wire_gap``; from a limiter with only ``min_gap``: that spacing, one body at a time;
        from one with neither: no pacing but the slot)."""
        wire = getattr(self.limiter, "wire_gap", None)
        if callable(wire):
            gap, burst = wire(rows)
            return float(gap), float(burst)
        gap = getattr(self.limiter, "min_gap", None)
        return (float(gap(rows)) if callable(gap) else 0.0), 1.0

    def _take(self, cap: int) -> list[_Piece]:
        """Pop up to ``cap`` queued rows, oldest first, splitting a piece if needed (lock held)."""
        out: list[_Piece] = []
        room = cap
        while room > 0 and self._queue:
            piece = self._queue[0]
            if piece.call.cancelled:
                self._queue.popleft()
                continue
            size = piece.stop - piece.start
            if size <= room:
                self._queue.popleft()
                out.append(piece)
            else:
                out.append(_Piece(piece.call, piece.start, piece.start + room))
                piece.start += room
                size = room
            piece.call.queued -= size
            self._queued -= size
            room -= size
        return out

    @staticmethod
    def _deliver(pieces: list[_Piece], Y: np.ndarray | None,
                 error: BaseException | None) -> None:
        offset = 0
        for p in pieces:
            size = p.stop - p.start
            rows = slice(p.start, p.stop)
            p.call.inbox.put((rows, error if error is not None else Y[offset:offset + size]))
            offset += size

    def _send(self, X: np.ndarray, reserved: bool = False, slot: float | None = None
              ) -> np.ndarray:
        """One request, with retries; splits on 413. Runs in a sender thread.

        ``reserved``: the first attempt's rows are already reserved against the budget and its
        rate-limit permit already taken (by the sender loop), for the time ``slot`` when the
        wire pacer holds its body until then.
        """
        n = X.shape[0]
        body = dumps_rows(self.input_field, X)
        transient = limited = 0
        first = reserved
        while True:
            try:
                held, first = first, False
                return self._attempt(X, body, held, slot if held else None)
            except _TooLarge:
                with self._lock:
                    self.retries["413"] += 1
                if n == 1:
                    raise OracleHTTPError(
                        f"HTTP 413 from {redact_url(self.url)} for a single-row request: the "
                        f"server refuses even one row of d={self.input_dim}; check input_dim "
                        f"and the server's size limit", status=413) from None
                half = (n + 1) // 2
                with self._lock:
                    if half < self.max_batch:
                        logger.info("server answered 413 for %d rows; max_batch lowered to %d",
                                    n, half)
                        self.max_batch = half
                # Resend in requests of the current max_batch (other threads may have lowered
                # it further meanwhile), read again before each part.
                parts, i = [], 0
                while i < n:
                    step = min(self.max_batch, half)
                    parts.append(self._send(X[i:i + step]))
                    i += step
                return np.concatenate(parts, axis=0)
            except _Transient as failure:
                with self._lock:
                    self.retries[failure.kind] += 1
                if failure.kind == "429":
                    limited += 1
                    if limited > self.rate_limit_retries:
                        raise self._give_up(failure, limited) from None
                    wait_s = failure.retry_after
                    if wait_s is None or wait_s <= 0:
                        # no wait given (or "0", a past date): resending at once only meets
                        # the limit again
                        wait_s = self._backoff(limited - 1)
                    elif wait_s > self.max_retry_after:
                        raise OracleHTTPError(
                            f"HTTP 429 from {redact_url(self.url)}: the server asks to wait "
                            f"{wait_s:.0f} s, more than max_retry_after={self.max_retry_after:g} "
                            f"s; lower rate= or raise max_retry_after", status=429) from None
                    logger.info("HTTP 429 (rate limited); pausing all requests for %.3g s", wait_s)
                    self.limiter.penalize(wait_s)
                    continue
                transient += 1
                if transient > self.retries_allowed:
                    raise self._give_up(failure, transient) from None
                delay = self._backoff(transient - 1)
                logger.info("transient failure (%s: %s); retry %d/%d in %.3g s", failure.kind,
                            failure.detail, transient, self.retries_allowed, delay)
                time.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        with self._lock:
            jitter = float(self._rng.uniform(0.5, 1.0))
        return jitter * min(self.backoff_max, self.backoff * 2.0 ** attempt)

    def _give_up(self, failure: _Transient, attempts: int) -> OracleHTTPError:
        where = redact_url(self.url)
        if failure.kind == "connect":
            msg = (f"cannot connect to {where}: {failure.detail} (tried {attempts} times); check "
                   f"the URL and that the server is running")
        elif failure.kind == "429":
            msg = (f"still rate limited (HTTP 429) by {where} after {attempts - 1} retries; lower "
                   f"rate= or raise rate_limit_retries")
        else:
            msg = (f"giving up on {where} after {attempts} attempts; last failure: "
                   f"{failure.detail}; raise retries= (now {self.retries_allowed}) or check the "
                   f"server")
        return OracleHTTPError(self._redact(msg), status=failure.status)

    def _redact(self, text: str) -> str:
        if self._secret is not None and self._secret.value:
            text = text.replace(self._secret.value, "<secret>")
        return text

    def _reserve(self, n: int) -> None:
        with self._lock:
            used = self.rows_paid + self._reserved + self._queued
            if self.budget is not None and used + n > self.budget:
                raise BudgetExhausted(self.budget, used, n)
            self._reserved += n

    def _settle(self, n: int, paid: bool, status: int | None) -> None:
        with self._lock:
            self._reserved -= n
            if paid:
                self.rows_paid += n
            elif status is not None:
                self.rows_refused += n
            if status is not None:
                self.statuses[status] += 1

    def _attempt(self, X: np.ndarray, body: bytes, held: bool = False,
                 slot: float | None = None) -> np.ndarray:
        """Send once. Returns the answer or raises _Transient, _TooLarge or a final error.

        ``held``: rows reserved and permit taken already (at ``slot``, see :meth:`_acquire`)."""
        n = X.shape[0]
        if not held:
            self._reserve(n)
        paid, status = False, None
        try:
            if not held:
                slot = self._acquire(n)
            with self._lock:
                self.requests += 1
            if slot is not None and self._pacer is not None:
                gap, burst = self._wire_gap(n)
                shared = getattr(self.limiter, "shared", False)
                resume = getattr(self.limiter, "resume_at", None)
                self._pacer.arm(slot, gap, len(body),
                                (lambda: self._acquire(n)) if shared else None,
                                resume if callable(resume) else None, burst)
            try:
                resp = self._client.post(self.url, content=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise _Transient("connect", f"{type(exc).__name__}: {exc}") from None
            except httpx.TimeoutException as exc:
                paid = True  # the request was sent; the server may have computed it
                raise _Transient("timeout", f"{type(exc).__name__} after {self.timeout:g} s"
                                 f" ({exc})") from None
            except httpx.TransportError as exc:
                paid = True
                raise _Transient("reset", f"{type(exc).__name__}: {exc}") from None
            finally:
                if self._pacer is not None:
                    self._pacer.disarm()  # a request that failed before its body was written
            status = resp.status_code
            spent_for = quota_reset_seconds(resp.headers)
            if spent_for and self._hold is not None and status != 429:
                # the quota is spent: every user of the limiter waits for it, no 429 needed
                self._hold(spent_for)
            if 200 <= status < 300:
                paid = True
                return self._parse(resp, n)
            if status == 413:
                raise _TooLarge()
            if status == 429:
                wait = retry_after_seconds(resp.headers)
                raise _Transient("429", "HTTP 429", 429, spent_for if wait is None else wait)
            if status >= 500:
                raise _Transient("5xx", f"HTTP {status}: {_server_message(resp)}", status)
            hint = ""
            if status in (401, 403):
                hint = (f"; check the API key in environment variable {self.api_key_env}"
                        if self.api_key_env else "; the server wants an API key: pass api_key_env")
            raise OracleHTTPError(self._redact(
                f"HTTP {status} from {redact_url(self.url)}: {_server_message(resp)}{hint}"),
                status=status)
        finally:
            self._settle(n, paid, status)

    def _parse(self, resp: httpx.Response, n: int) -> np.ndarray:
        """Decode and check a 2xx answer for ``n`` rows."""
        where = redact_url(self.url)
        try:
            body = loads(resp.content)
        except ValueError:
            kind = resp.headers.get("content-type", "no content-type")
            snippet = " ".join(resp.text.split())[:120]
            raise OracleValueError(self._redact(
                f"{where} answered HTTP {resp.status_code} with a body that is not JSON "
                f"({kind}): {snippet!r}; check that the URL is the API endpoint")) from None
        if not isinstance(body, dict) or self.output_field not in body:
            keys = sorted(body) if isinstance(body, dict) else type(body).__name__
            raise OracleShapeError(
                f"{where} answered without an {self.output_field!r} field (got {keys}); set "
                f"output_field= to the field holding the outputs")
        try:
            Y = np.asarray(body[self.output_field], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise OracleShapeError(
                f"{where} answered {self.output_field!r} that is not an (n, m) array of "
                f"numbers for {n} rows: {exc}") from None
        if Y.ndim == 1 and Y.shape[0] == n:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape[0] != n:
            raise OracleShapeError(
                f"{where} answered shape {Y.shape} for {n} input rows; expected ({n}, m)")
        with self._lock:
            if self.output_dim is None:
                self.output_dim = int(Y.shape[1])
            elif Y.shape[1] != self.output_dim:
                raise OracleShapeError(
                    f"{where} answered {Y.shape[1]} outputs per row; earlier answers had "
                    f"{self.output_dim}")
        if not np.all(np.isfinite(Y)):
            bad = int(np.sum(~np.all(np.isfinite(Y), axis=1)))
            raise OracleValueError(
                f"{where} answered NaN, Inf or null in {bad} of {n} rows; the oracle's outputs "
                f"must be finite numbers")
        with self._lock:
            self.rows_answered += n
        return Y


__all__ = ["PROXY_ENV", "HTTPOracle", "parse_retry_after", "quota_reset_seconds", "redact_url",
           "retry_after_seconds", "tls_verify"]
