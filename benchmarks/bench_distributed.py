"""Distributed extraction benchmarks (issue #4): latency-bound scaling, rate-limit utilisation,
a very wide network.

(a) latency-bound: ``distextract serve`` in its own process with 50 ms latency, 64-row batch
    limit, no rate limit; network d=64, k=512, m=10; wall time and rows/s with 1, 2, 4, 8 Ray
    workers (each keeping ``--in-flight`` requests in flight and running as many tasks at once,
    up to 8) and the scaling ratio ``(rows/s with n) / (n · rows/s with 1)``. A first line
    measures this machine's ceiling: client processes with 64 requests in flight each against
    the same server, no extraction, one alone and ``--ceiling-clients`` at once (a single
    client is bound by its own process's JSON and HTTP work on a small machine, not by the
    server; "% of ceiling" is against the several clients' sum).
(b) rate-limited: 20 ms latency, 100 requests/s, 64-row batches, d=128, k=1024, m=10, 8 workers
    sharing one leased limit: rows/s against the limit (100 × 64 rows/s), share of 429s, and
    queries against the single-process engine's count on the same network and seed.
(c) wide: d=128, k=8192, m=10, in-process oracle inside 2 workers: wall time split (oracle,
    worker compute, coordinator), coordinator memory (tracemalloc peak of the driver and RSS),
    queries / (k (d+1)), relative L2 by :func:`distextract.evaluate_fidelity`.

Usage::

    python benchmarks/bench_distributed.py [--quick] [--only a,b,c] [--in-flight 8]

``--quick`` shrinks every network (and the latency sweep) for a smoke run.
"""

from __future__ import annotations

import os

# One BLAS thread per process (driver, server, workers): on a small machine OpenBLAS's spinning
# threads in a dozen processes slow a 64-row matrix product from 0.2 ms to 16 ms.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import ray

import distextract as dx
from distextract._extract import extract
from distextract._http import HTTPOracle
from distextract._wire import BACKEND
from distextract.serve import launch_server_process


def address(args: argparse.Namespace) -> str:
    """The running Ray instance (so that even 1 worker runs as a Ray actor)."""
    return args.address or ray.get_runtime_context().gcs_address


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def save_net(d: int, k: int, m: int, seed: int, tmp: str) -> tuple[dx.ReluNetwork, str]:
    net = dx.targets.random_network(d, k, m, seed=seed)
    path = os.path.join(tmp, f"net_{d}_{k}_{m}.arrow")
    net.save(path)
    return net, path


def _client(url: str, d: int, out) -> None:
    """One client process: rows/s of 3 queries of 64 × 64 rows, 64 requests in flight."""
    http = HTTPOracle(url, d, max_batch=64, max_in_flight=64, seed=0)
    X = np.random.default_rng(0).standard_normal((64 * 64, d))
    http.query(X[:64])
    t0 = time.perf_counter()
    for _ in range(3):
        http.query(X)
    out.put(3 * X.shape[0] / (time.perf_counter() - t0))
    http.close()


def _client_rates(url: str, d: int, n: int) -> list[float]:
    """Rows/s of ``n`` client processes querying ``url`` at the same time (one client alone
    is bound by its own process on a small machine, not by the server)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, d, out)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return rates


def bench_latency(args: argparse.Namespace, tmp: str) -> None:
    d, k = (32, 64) if args.quick else (64, 512)
    sweep = [1, 2, 4] if args.quick else [1, 2, 4, 8]
    net, path = save_net(d, k, 10, 0, tmp)
    with launch_server_process(path, latency_ms=50, max_batch=64) as server:
        one = _client_rates(server.url, d, 1)[0]
        many = _client_rates(server.url, d, args.ceiling_clients)
    ceiling = sum(many)
    print(f"\nceiling of this machine (no extraction, 64 requests in flight per client): one "
          f"client {one:,.0f} rows/s; {len(many)} client processes at once {ceiling:,.0f} "
          f"rows/s = {ceiling / 64:.0f} requests/s (50 ms latency alone would allow "
          f"{64 * 64 / 0.05:,.0f} rows/s per client)")
    rows = []
    base = None
    for n in sweep:
        with launch_server_process(path, latency_ms=50, max_batch=64) as server:
            http = HTTPOracle(server.url, d, max_batch=64, max_in_flight=args.in_flight, seed=0)
            t0 = time.perf_counter()
            res = extract(http, d, seed=0, workers=n, address=address(args))
            wall = time.perf_counter() - t0
            http.close()
            served = server.stats()
        dist = res.report["distributed"]
        run_s = dist["timing"]["run_s"]
        rps = res.queries / run_s
        base = base or rps
        fid = dx.evaluate_fidelity(res.model, net, n_points=4000)
        rows.append([n, dist["tasks_per_worker"], f"{run_s:.1f}", f"{wall:.1f}", res.queries,
                     served["requests"], f"{res.queries / served['requests']:.1f}",
                     f"{rps:,.0f}", f"{rps / (n * base):.2f}",
                     f"{100 * rps / ceiling:.0f}", f"{fid.rel_l2:.1e}"])
    table(f"(a) latency-bound: serve 50 ms, 64-row batches, no rate limit, d={d} k={k} m=10, "
          f"{args.in_flight} requests in flight per worker",
          ["workers", "tasks/worker", "run_s", "wall_s(+ray)", "queries", "requests", "rows/req",
           "rows/s",
           "scaling", "% of ceiling", "rel_L2"], rows)


def bench_rate(args: argparse.Namespace, tmp: str) -> None:
    d, k = (32, 128) if args.quick else (128, 1024)
    workers = 8
    rate, batch = 100, 64
    net, path = save_net(d, k, 10, 0, tmp)
    single = extract(net, seed=0)
    with launch_server_process(path, latency_ms=20, max_batch=batch, rate=rate,
                               retry_after_ms=args.retry_after_ms,
                               burst=args.burst) as server:
        http = HTTPOracle(server.url, d, max_batch=batch, rate=rate * args.client_rate,
                          max_in_flight=args.in_flight, seed=0)
        res = extract(http, d, seed=0, workers=workers, address=address(args))
        http.close()
        served = server.stats()
    dist = res.report["distributed"]
    run_s = dist["timing"]["run_s"]
    limit = rate * batch
    requests = served["requests"]
    n429 = served["statuses"].get("429", 0)
    rows_per_req = res.queries / max(1, requests - n429)
    fid = dx.evaluate_fidelity(res.model, net, n_points=4000)
    hint = ", server sends Retry-After-Ms" if args.retry_after_ms else ""
    if args.burst is not None:
        hint += f", server burst {args.burst:g}"
    lim = dist.get("limiter") or {}
    table(f"(b) rate-limited: serve 20 ms, {rate} req/s, {batch}-row batches, d={d} k={k} m=10, "
          f"{workers} workers x {dist['tasks_per_worker']} tasks, one leased limit at "
          f"{args.client_rate:g} x the server's{hint}",
          ["run_s", "queries", "single_proc", "ratio", "rows/s", "% of rows limit",
           "req/s", "% of req limit", "rows/req", "429s", "% 429", "slowdowns", "end pace",
           "rel_L2"],
          [[f"{run_s:.1f}", res.queries, single.queries, f"{res.queries / single.queries:.3f}",
            f"{res.queries / run_s:,.0f}", f"{100 * res.queries / run_s / limit:.1f}",
            f"{requests / run_s:.1f}", f"{100 * (requests - n429) / run_s / rate:.1f}",
            f"{rows_per_req:.1f}", n429, f"{100 * n429 / max(1, requests):.2f}",
            lim.get("slowdowns", 0), f"{lim.get('pace', 1.0):.2f}", f"{fid.rel_l2:.1e}"]])


def bench_wide(args: argparse.Namespace, tmp: str) -> None:
    d, k = (64, 1024) if args.quick else (128, 8192)
    net, _ = save_net(d, k, 10, 0, tmp)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = extract(dx.NetworkOracle(net), d, seed=0, workers=2, address=address(args))
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dist = res.report["distributed"]
    tm = dist["timing"]
    fid = dx.evaluate_fidelity(res.model, net, n_points=10_000)
    table(f"(c) wide: d={d} k={k} m=10, in-process oracle in 2 workers",
          ["wall_s", "run_s", "oracle_s", "worker_compute_s", "coordinator_s", "driver_peak_MiB",
           "driver_rss_MiB", "queries", "q/(k(d+1))", "neurons", "rel_L2", "certified"],
          [[f"{wall:.1f}", f"{tm['run_s']:.1f}", f"{tm['worker_oracle_s']:.1f}",
            f"{tm['worker_compute_s']:.1f}", f"{tm['coordinator_s']:.1f}",
            f"{peak / 2**20:.0f}", f"{rss:.0f}", res.queries,
            f"{res.queries / (k * (d + 1)):.3f}", res.model.hidden_dim, f"{fid.rel_l2:.1e}",
            res.certified]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller networks (smoke run)")
    parser.add_argument("--only", default="a,b,c", help="which benchmarks: a,b,c")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="HTTP requests in flight per worker")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--ceiling-clients", type=int, default=3,
                        help="(a): client processes at once for the ceiling line")
    parser.add_argument("--client-rate", type=float, default=1.0,
                        help="(b): the client's requests/s limit as a fraction of the server's "
                             "(each 429 pauses every worker for the server's Retry-After)")
    parser.add_argument("--burst", type=float, default=None,
                        help="(b): the server's token-bucket capacity (default rate/10; 1: "
                             "requests must arrive at least 1/rate apart)")
    parser.add_argument("--retry-after-ms", action="store_true",
                        help="(b): the server also sends Retry-After-Ms with its 429s")
    args = parser.parse_args()
    print("command: python " + " ".join(sys.argv))
    print(f"machine: {os.cpu_count()} CPUs, ray {ray.__version__}, JSON on the wire: {BACKEND}")
    if args.address is None:
        ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(address=args.address, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for key, fn in (("a", bench_latency), ("b", bench_rate), ("c", bench_wide)):
                if key in args.only.split(","):
                    fn(args, tmp)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
