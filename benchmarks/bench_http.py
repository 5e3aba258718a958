"""Rate-limit utilisation of HTTPOracle against ``distextract serve`` on loopback.

The server runs as a separate process with a per-request latency, a batch limit and a
requests/s limit; the client sends ``--rows`` rows through one ``HTTPOracle`` per configuration.
Printed per configuration: achieved rows/s, its ratio to the server's limit
(rate x max_batch rows/s), the share of requests answered 429, retries, and paid rows versus
the server's own count.

Usage::

    python benchmarks/bench_http.py [--rows 20000] [--latency-ms 20] [--max-batch 64] \
        [--server-rate 100] [--d 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import distextract as dx
from distextract._http import HTTPOracle
from distextract.serve import launch_server_process


def run_one(model_path: str, args: argparse.Namespace, client_rate: float | None,
            in_flight: int, X: np.ndarray) -> dict:
    with launch_server_process(model_path, latency_ms=args.latency_ms, max_batch=args.max_batch,
                               rate=args.server_rate) as server:
        with HTTPOracle(server.url, X.shape[1], max_batch=args.max_batch, rate=client_rate,
                        max_in_flight=in_flight, seed=0) as oracle:
            oracle.query(X[: args.max_batch])  # warm the connection pool (not timed)
            time.sleep(1.0)  # let the server's bucket refill
            before = server.stats()
            paid0 = oracle.rows_paid
            t0 = time.perf_counter()
            oracle.query(X)
            wall = time.perf_counter() - t0
            after = server.stats()
            stats = oracle.stats()
    requests = after["requests"] - before["requests"]
    n429 = after["statuses"].get("429", 0) - before["statuses"].get("429", 0)
    limit = args.server_rate * args.max_batch
    return {
        "client rate": "none" if client_rate is None else f"{client_rate:g}/s",
        "in flight": in_flight,
        "rows/s": X.shape[0] / wall,
        "ratio": X.shape[0] / wall / limit,
        "429 %": 100.0 * n429 / max(requests, 1),
        "requests": requests,
        "retries": sum(stats["retries"].values()),
        "paid": stats["rows_paid"] - paid0,
        "served": after["rows_served"] - before["rows_served"],
        "wall s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--server-rate", type=float, default=100.0)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--configs", default="100:8,95:8,none:8",
                        help="client_rate:in_flight pairs ('none': no client-side limit)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    k, m = 64, 4
    net = dx.ReluNetwork(rng.normal(size=(k, args.d)), rng.normal(size=k),
                         rng.normal(size=(m, k)), rng.normal(size=m))
    X = rng.normal(size=(args.rows, args.d))
    limit = args.server_rate * args.max_batch
    print(f"server: latency {args.latency_ms:g} ms, max_batch {args.max_batch}, "
          f"{args.server_rate:g} requests/s -> limit {limit:,.0f} rows/s; "
          f"{args.rows:,} rows of d={args.d}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.arrow")
        net.save(path)
        rows = []
        for spec in args.configs.split(","):
            rate_s, flight_s = spec.split(":")
            rate = None if rate_s == "none" else float(rate_s)
            rows.append(run_one(path, args, rate, int(flight_s), X))
    header = ["client rate", "in flight", "rows/s", "ratio", "429 %", "requests", "retries",
              "paid", "served", "wall s"]
    fmt = {"rows/s": "{:,.0f}", "ratio": "{:.3f}", "429 %": "{:.2f}", "wall s": "{:.2f}"}
    cells = [[fmt.get(h, "{}").format(r[h]) for h in header] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
