"""A rate-limited oracle server written independently of ``distextract serve`` (issue 20).

It speaks DESIGN.md section 4 (``POST {"inputs": [[...], ...]}`` -> ``{"outputs": ...}``) on
the standard library's ``ThreadingHTTPServer``, bound to 127.0.0.1, and shares no code with
:mod:`distextract.serve`: its limiter is its own token bucket, written here, so the client's
limiter is measured against a server it was not written with. Behaviours (all selectable):

- a token bucket of ``rate`` requests/s holding at most ``burst`` requests (1, 5, 50, ...), or a
  limit of ``rows_per_min`` rows per minute (a bucket of rows filling at ``rows_per_min / 60``
  rows/s and holding at most ``rows_burst`` rows);
- on refusal, 429 with ``Retry-After`` in whole seconds rounded up (``retry_after="int"``), as a
  fraction rounded up to the millisecond (``"frac"``: ``0.050``), or none (``"none"``);
- optionally ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` on every
  answer (Reset: seconds until the bucket holds one more request, or the rows of a full
  request, as a decimal);
- ``latency`` seconds before each answer; more than ``max_batch`` rows -> 413.

It counts rows answered, 429s, and the times of the first and last answered request.

Run alone::

    python benchmarks/foreign_server.py --rate 100 --burst 5 --retry-after frac --latency 0.02
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover
    orjson = None


class Bucket:
    """Token bucket: ``rate`` tokens/s, capacity ``capacity``; starts full (thread-safe)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, cost: float) -> tuple[bool, float, float]:
        """Try to spend ``cost`` tokens now.

        Returns (granted, tokens left, seconds until ``cost`` more tokens would be there).
        """
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= cost:
                self.tokens -= cost
                ok = True
            else:
                ok = False
            wait = max(0.0, (cost - self.tokens) / self.rate)
            return ok, self.tokens, wait

    def peek(self) -> float:
        """Tokens now (nothing spent)."""
        with self.lock:
            return min(self.capacity, self.tokens + (time.monotonic() - self.stamp) * self.rate)


class ForeignServer:
    """The server and its counters (start with :meth:`start`, stop with :meth:`stop`).

    Parameters
    ----------
    W, b, A, c : ndarray
        The network F(x) = A relu(W x + b) + c (W is k x d, A is m x k).
    rate : float, optional
        Requests per second (with ``burst``); None for a rows/min limit.
    burst : float
        Requests the bucket holds.
    rows_per_min : float, optional
        Rows per minute instead of requests per second.
    rows_burst : float, optional
        Rows the rows bucket holds (default: one second of the limit).
    retry_after : {"int", "frac", "none"}
    ratelimit_headers : bool
        Send ``X-RateLimit-*`` on every answer.
    latency : float
        Seconds before each answer.
    max_batch : int
        Most rows per request (413 above).
    """

    def __init__(self, W, b, A, c, *, rate: float | None = 100.0, burst: float = 5,
                 rows_per_min: float | None = None, rows_burst: float | None = None,
                 retry_after: str = "frac", ratelimit_headers: bool = False,
                 latency: float = 0.02, max_batch: int = 64) -> None:
        if (rate is None) == (rows_per_min is None):
            raise ValueError("give exactly one of rate= and rows_per_min=")
        if retry_after not in ("int", "frac", "none"):
            raise ValueError(f"retry_after must be 'int', 'frac' or 'none', got {retry_after!r}")
        self.W, self.b, self.A, self.c = (np.asarray(v, dtype=np.float64) for v in (W, b, A, c))
        self.rate, self.burst = rate, burst
        self.rows_per_min = rows_per_min
        if rows_per_min is not None:
            per_s = rows_per_min / 60.0
            self.bucket = Bucket(per_s, rows_burst if rows_burst is not None else per_s)
        else:
            self.bucket = Bucket(rate, burst)
        self.retry_after = retry_after
        self.ratelimit_headers = ratelimit_headers
        self.latency = latency
        self.max_batch = max_batch
        self.lock = threading.Lock()
        self.rows = 0
        self.answered = 0
        self.refused = 0
        self.too_large = 0
        self.first: float | None = None
        self.last: float | None = None
        #: (time.time() at the answer or refusal, rows, status) of every request
        self.log: list[tuple[float, int, int]] = []
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def limit_rows_per_s(self) -> float:
        """The server's limit in rows/s (requests/s times ``max_batch`` for a request limit)."""
        if self.rows_per_min is not None:
            return self.rows_per_min / 60.0
        return self.rate * self.max_batch

    def counters(self) -> dict:
        with self.lock:
            return {"rows": self.rows, "answered": self.answered, "refused": self.refused,
                    "too_large": self.too_large, "first": self.first, "last": self.last}

    def answer(self, body: bytes) -> tuple[int, dict, bytes]:
        """Status, headers and body for one request."""
        data = orjson.loads(body) if orjson is not None else json.loads(body)
        X = np.asarray(data["inputs"], dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.W.shape[1]:
            return 400, {}, b'{"error": "inputs must be an (n, d) array"}'
        n = X.shape[0]
        if n > self.max_batch:
            with self.lock:
                self.too_large += 1
            return 413, {}, b'{"error": "too many rows"}'
        cost = 1.0 if self.rows_per_min is None else float(n)
        ok, left, wait = self.bucket.take(cost)
        headers = self.quota_headers(left) if not ok else {}
        if not ok:
            with self.lock:
                self.refused += 1
                self.log.append((time.time(), n, 429))
            if self.retry_after == "int":
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
            elif self.retry_after == "frac":  # milliseconds, rounded up (never "0.000")
                headers["Retry-After"] = f"{max(1, math.ceil(wait * 1000)) / 1000:.3f}"
            return 429, headers, b'{"error": "rate limited"}'
        time.sleep(self.latency)
        headers = self.quota_headers(self.bucket.peek())  # as the answer leaves
        Y = np.maximum(X @ self.W.T + self.b, 0.0) @ self.A.T + self.c
        out = (orjson.dumps({"outputs": Y}, option=orjson.OPT_SERIALIZE_NUMPY)
               if orjson is not None else json.dumps({"outputs": Y.tolist()}).encode())
        now = time.monotonic()
        with self.lock:
            self.rows += n
            self.answered += 1
            self.first = now if self.first is None else self.first
            self.last = now
            self.log.append((time.time(), n, 200))
        return 200, headers, out

    def quota_headers(self, left: float) -> dict:
        """``X-RateLimit-*`` for ``left`` tokens in the bucket (empty when not enabled):
        Remaining in requests (rows for a rows/min limit), Reset in seconds until one more
        request (a full request's rows) fits."""
        if not self.ratelimit_headers:
            return {}
        if self.rows_per_min is None:
            limit, need = self.rate, 1.0
        else:
            limit, need = self.rows_per_min, float(self.max_batch)
        return {"X-RateLimit-Limit": f"{limit:g}",
                "X-RateLimit-Remaining": str(math.floor(left)),
                "X-RateLimit-Reset": f"{max(0.0, (need - left) / self.bucket.rate):.3f}"}

    def start(self, port: int = 0) -> str:
        """Serve in a background thread; returns the URL."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                try:
                    status, headers, out = server.answer(body)
                except (ValueError, KeyError, TypeError):
                    status, headers, out = 400, {}, b'{"error": "bad request body"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True,
                         name="foreign-server").start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--burst", type=float, default=5)
    parser.add_argument("--rows-per-min", type=float, default=None)
    parser.add_argument("--retry-after", choices=["int", "frac", "none"], default="frac")
    parser.add_argument("--headers", action="store_true", help="send X-RateLimit-*")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    d, k, m = args.d, args.k, args.m
    W = rng.standard_normal((k, d)) / np.sqrt(d)
    server = ForeignServer(W, 0.1 * rng.standard_normal(k), rng.standard_normal((m, k)) / np.sqrt(k),
                           np.zeros(m), rate=None if args.rows_per_min else args.rate,
                           burst=args.burst, rows_per_min=args.rows_per_min,
                           retry_after=args.retry_after, ratelimit_headers=args.headers,
                           latency=args.latency, max_batch=args.max_batch)
    print(server.start(args.port), flush=True)
    try:
        while True:
            time.sleep(5)
            print(server.counters(), flush=True)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
