"""A real HTTP server that answers the DESIGN.md section 4 protocol from a network file.

Use it to rehearse an extraction against a copy of a real setting: latency per request, a
requests/s limit (429 + Retry-After), a batch limit (413), random transient failures (503),
connections dropped after the answer was computed, an API key (401), and float32, rounded or
softmax outputs. It counts what it served and reports it at ``GET /stats``.

Python API::

    handle = start_server(network, latency_ms=20, rate=100, max_batch=64)
    handle.url, handle.stats(), handle.stop()

    proc = launch_server_process("model.arrow", rate=100)   # a separate process (kill -9 tests)
    proc.url, proc.stats(), proc.kill(), proc.stop()

Built on the standard library's ``ThreadingHTTPServer`` (one daemon thread per connection,
HTTP/1.1 keep-alive): dozens of concurrent connections, each sleeping its latency, cost a
thread each and no CPU.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import ConfigError
from ._model import ReluNetwork
from ._oracle import output_transform
from ._wire import dumps, dumps_rows, loads

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only (3.10 supported)

logger = logging.getLogger(__name__)

#: Environment variables that cap BLAS threads (set to 1 for a server child process).
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Seconds of history kept in the ``per_second`` counters of ``GET /stats``.
TIMELINE_SECONDS = 3600
#: Answers the server can be told to corrupt (rehearsing misbehaving APIs).
CORRUPT_KINDS = ("html", "shape", "nan")


@dataclass(frozen=True)
class ServerConfig:
    """How the server behaves.

    Parameters
    ----------
    host : str
        Interface to bind (loopback by default).
    port : int
        Port; 0 picks a free one.
    latency_ms : float
        Delay added to every computed answer.
    rate : float, optional
        Requests per second allowed (token bucket of capacity ``burst``); excess requests get
        429 with ``Retry-After`` (whole seconds, as HTTP defines it).
    retry_after_ms : bool
        Also send ``Retry-After-Ms`` with the wait in milliseconds, as some APIs do (the
        whole-second ``Retry-After`` rounds a 10 ms wait up to 1 s).
    burst : float, optional
        Requests allowed back to back; default ``max(1, rate / 10)``.
    max_batch : int, optional
        Most rows per request; larger requests get 413.
    fail_rate : float
        Probability that a request gets 503 (before computing anything).
    drop_rate : float
        Probability that the connection is closed after the answer was computed (the rows
        count as served: the client paid for them and lost the answer).
    api_key_env : str, optional
        Name of the environment variable holding the accepted key; requests without
        ``Authorization: Bearer <key>`` get 401.
    output : str
        ``float64``, ``float32``, ``round:N`` or ``softmax``.
    corrupt : str, optional
        Misbehave on purpose: ``html`` (an HTML page with status 200), ``shape`` (one row
        short), ``nan`` (NaN outputs).
    seed : int, optional
        Seed of the random failures and drops.
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    rate: float | None = None
    burst: float | None = None
    retry_after_ms: bool = False
    max_batch: int | None = None
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    api_key_env: str | None = None
    output: str = "float64"
    corrupt: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("fail_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value}")
        if self.latency_ms < 0:
            raise ConfigError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 requests/s or None, got {self.rate}")
        if self.burst is not None and not self.burst >= 1:
            raise ConfigError(f"burst must be >= 1, got {self.burst}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1 or None, got {self.max_batch}")
        if self.corrupt is not None and self.corrupt not in CORRUPT_KINDS:
            raise ConfigError(f"corrupt must be one of {CORRUPT_KINDS} or None, got "
                              f"{self.corrupt!r}")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set "
                              f"or empty; export the key the server should accept")
        output_transform(self.output)  # validates the kind


class _Limiter:
    """Non-blocking token bucket: ``take()`` -> seconds to wait (0 when allowed)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class _State:
    """Counters and shared objects of one server (thread-safe)."""

    def __init__(self, network: ReluNetwork, config: ServerConfig) -> None:
        self.network = network
        self.config = config
        self.transform = output_transform(config.output)
        self.key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self.limiter = None
        if config.rate is not None:
            burst = config.burst if config.burst is not None else max(1.0, config.rate / 10.0)
            self.limiter = _Limiter(config.rate, burst)
        self.rng = np.random.default_rng(config.seed)
        self.lock = threading.Lock()
        self.rows_served = 0
        self.requests = 0
        self.dropped = 0
        self.statuses: Counter = Counter()
        self.batch_rows: Counter = Counter()
        self.seconds: collections.deque = collections.deque(maxlen=TIMELINE_SECONDS)
        self.started = time.monotonic()
        self.waiting = 0  # requests inside their simulated latency now, and at most
        self.peak_waiting = 0

    def in_flight(self, step: int) -> None:
        with self.lock:
            self.waiting += step
            self.peak_waiting = max(self.peak_waiting, self.waiting)

    def draw(self) -> tuple[float, float]:
        with self.lock:
            return float(self.rng.random()), float(self.rng.random())

    def count(self, status: int | str, rows: int = 0) -> None:
        with self.lock:
            self.statuses[str(status)] += 1
            self.rows_served += rows
            if rows:
                self.batch_rows[rows] += 1
            second = int(time.monotonic() - self.started)
            if not self.seconds or self.seconds[-1][0] != second:
                self.seconds.append([second, 0, 0, 0])
            entry = self.seconds[-1]
            entry[1] += 1
            entry[2] += rows
            entry[3] += str(status) == "429"

    def stats(self) -> dict:
        with self.lock:
            return {"rows_served": self.rows_served, "requests": self.requests,
                    "dropped": self.dropped, "statuses": dict(sorted(self.statuses.items())),
                    "batch_rows": {str(k): v for k, v in sorted(self.batch_rows.items())},
                    "per_second": [list(e) for e in self.seconds],
                    "uptime_s": time.monotonic() - self.started,
                    "peak_concurrent": self.peak_waiting,
                    "input_dim": self.network.input_dim, "output_dim": self.network.output_dim}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "distextract-serve"
    # Headers and body go out in separate writes; with Nagle's algorithm the body would wait
    # for the client's delayed ACK (~40 ms per request on keep-alive connections).
    disable_nagle_algorithm = True
    state: _State  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _retry_headers(self, wait_s: float) -> dict:
        headers = {"Retry-After": str(max(1, math.ceil(wait_s)))}
        if self.state.config.retry_after_ms:
            headers["Retry-After-Ms"] = str(max(1, math.ceil(wait_s * 1000.0)))
        return headers

    def _send_json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        data = dumps(payload)
        self._send_bytes(status, data, "application/json", headers)

    def _send_bytes(self, status: int, data: bytes, ctype: str,
                    headers: dict | None = None, rows: int = 0) -> None:
        self.state.count(status, rows)  # counted even if the client is gone
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/stats":
            data = dumps(self.state.stats())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._send_json(404, {"error": "POST queries to / ; GET /stats for counters"})

    def do_POST(self) -> None:
        st = self.state
        cfg = st.config
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with st.lock:
            st.requests += 1
        if st.key is not None and self.headers.get("Authorization") != f"Bearer {st.key}":
            self._send_json(401, {"error": "missing or invalid API key (Authorization: Bearer)"})
            return
        if st.limiter is not None:
            wait_s = st.limiter.take()
            if wait_s > 0:
                self._send_json(429, {"error": f"rate limit of {cfg.rate:g} requests/s exceeded"},
                                self._retry_headers(wait_s))
                return
        try:
            body = loads(raw)
            X = np.asarray(body["inputs"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(400, {"error": f"body must be JSON {{\"inputs\": [[...], ...]}}: "
                                           f"{type(exc).__name__}: {exc}"})
            return
        d = st.network.input_dim
        if X.ndim != 2 or X.shape[1] != d:
            self._send_json(400, {"error": f"inputs must have shape (n, {d}), got {X.shape}"})
            return
        if cfg.max_batch is not None and X.shape[0] > cfg.max_batch:
            self._send_json(413, {"error": f"batch of {X.shape[0]} rows exceeds the limit of "
                                           f"{cfg.max_batch} rows"})
            return
        fail, drop = st.draw()
        if fail < cfg.fail_rate:
            self._send_json(503, {"error": "service temporarily unavailable (simulated)"})
            return
        if cfg.latency_ms:
            st.in_flight(+1)
            try:
                time.sleep(cfg.latency_ms / 1000.0)
            finally:
                st.in_flight(-1)
        Y = st.transform(st.network.predict(X))
        n = X.shape[0]
        if drop < cfg.drop_rate:
            with st.lock:
                st.rows_served += n
                st.dropped += 1
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if cfg.corrupt == "html":
            self._send_bytes(200, b"<html><body><h1>Welcome to nginx!</h1></body></html>",
                             "text/html", rows=n)
            return
        if cfg.corrupt == "shape":
            Y = Y[:-1]
        elif cfg.corrupt == "nan":
            Y = Y.copy()
            Y[0, 0] = np.nan
        self._send_bytes(200, dumps_rows("outputs", Y), "application/json", rows=n)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            # The client went away (timeout, dropped connection): its rows are already counted.
            logger.debug("client %s disconnected: %s", client_address, exc)
        else:
            logger.exception("error while serving %s", client_address)


@dataclass
class ServerHandle:
    """A server running in a background thread of this process."""

    url: str
    _server: _Server
    _thread: threading.Thread
    _state: _State

    def stats(self) -> dict:
        """Counters: rows_served, requests, dropped, statuses (by code), batch_rows (answered
        requests by their number of rows), per_second (``[second, responses, rows, 429s]``
        for each second since the start), peak_concurrent (most requests inside their
        simulated latency at once)."""
        return self._state.stats()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_server(network: ReluNetwork | str | os.PathLike, config: ServerConfig) -> _Server:
    """Bind (but do not start) a server for ``network`` (a ReluNetwork or a model path)."""
    if not isinstance(network, ReluNetwork):
        network = ReluNetwork.load(network)
    state = _State(network, config)
    handler = type("Handler", (_Handler,), {"state": state})
    try:
        server = _Server((config.host, config.port), handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc}; choose another "
                          f"--port (0 picks a free one)") from exc
    server.state = state  # type: ignore[attr-defined]
    return server


def server_url(server: _Server) -> str:
    host, port = server.server_address[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def start_server(network: ReluNetwork | str | os.PathLike, **options: Any) -> ServerHandle:
    """Serve ``network`` from a daemon thread; options are :class:`ServerConfig` fields.

    Returns
    -------
    ServerHandle
        ``.url``, ``.stats()``, ``.stop()``; also a context manager.
    """
    server = make_server(network, ServerConfig(**options))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="dx-serve", daemon=True)
    thread.start()
    return ServerHandle(server_url(server), server, thread, server.state)  # type: ignore


def fetch_stats(url: str, timeout: float = 5.0) -> dict:
    """``GET {url}stats`` of a running server."""
    import httpx

    return httpx.get(url.rstrip("/") + "/stats", timeout=timeout).json()


_URL_LINE = re.compile(r"(http://\S+/)")


class ServerProcess:
    """``distextract serve`` running as a child process (see :func:`launch_server_process`)."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc = proc
        self.url = url
        self.pid = proc.pid

    def stats(self) -> dict:
        """The server's counters (``GET /stats``)."""
        return fetch_stats(self.url)

    def kill(self) -> None:
        """SIGKILL the process."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> str:
        """Interrupt it like Ctrl-C; returns what it printed after the URL line."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def launch_server_process(model_path: str | os.PathLike, *, env: dict | None = None,
                          startup_timeout: float = 30.0, **options: Any) -> ServerProcess:
    """Start ``python -m distextract serve MODEL_PATH`` and wait for the URL it prints.

    Parameters
    ----------
    model_path : path
        A network file written by :meth:`ReluNetwork.save`.
    env : dict, optional
        Environment of the child (default: this process's), plus one BLAS thread
        (:data:`BLAS_THREAD_VARIABLES` set to 1 unless given).
    options
        :class:`ServerConfig` fields, passed as command-line options.
    """
    cmd = [sys.executable, "-m", "distextract", "serve", os.fspath(model_path)]
    env = dict(os.environ if env is None else env)
    for var in BLAS_THREAD_VARIABLES:  # read when numpy loads BLAS: set before the child starts
        env.setdefault(var, "1")
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = f"--{name.replace('_', '-')}"
        cmd += [flag] if value is True else [flag, str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, bufsize=1)
    deadline = time.monotonic() + startup_timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        match = _URL_LINE.search(line)
        if match:
            return ServerProcess(proc, match.group(1))
    proc.kill()
    proc.wait()
    raise ConfigError(f"the server process did not report its URL: {''.join(lines)[-500:]!r}")


def _one_blas_thread() -> None:
    """Limit BLAS to one thread in this (server) process, where threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def serve_forever(network: ReluNetwork | str | os.PathLike, config: ServerConfig,
                  on_ready: Callable[[str], None] | None = None) -> dict:
    """Serve in the calling thread until KeyboardInterrupt; returns the final stats.

    BLAS runs on one thread (threadpoolctl, when installed; :func:`launch_server_process` also
    sets ``OPENBLAS_NUM_THREADS=1`` and friends): a request's product is small, and on a machine
    shared with workers, BLAS threads spinning in every process made a 64-row product take
    16 ms instead of 0.2 ms (BENCHMARKS.md, issue 4).
    """
    _one_blas_thread()
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (SIGINT) stops the server even when this process inherited SIGINT ignored
        # (a parent that ignores it, e.g. under nohup or beside Ray: Python then installs no
        # KeyboardInterrupt handler, and ServerProcess.stop() had to kill it after 10 s)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    server = make_server(network, config)
    if on_ready is not None:
        on_ready(server_url(server))
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return server.state.stats()  # type: ignore[attr-defined]


__all__ = ["ServerConfig", "ServerHandle", "ServerProcess", "fetch_stats",
           "launch_server_process", "make_server", "serve_forever", "start_server"]
