"""The whole ``distextract extract`` CLI against a rate-limited server it was not written with
(issue 20, item 3): one table row per server behaviour.

The server is :mod:`foreign_server` (its own token bucket, no code shared with
``distextract serve``), in this process, 20 ms latency, 64-row requests, serving a random
network d=128, k=1024, m=10 (``--quick``: d=32, k=128). Behaviours: token bucket of 100
requests/s with burst 1, 5, 50; Retry-After in whole seconds (rounded up) or fractional
(``0.050``); with ``X-RateLimit-*`` headers; a limit of 384,000 rows/min (= 100 x 64 rows/s)
instead of requests/s. Each runs the CLI as its own process with ``--rate 100 --workers 8``
(``--rows-rate 6400`` for the rows/min server), and again without ``--rate`` (discovery) for
the ``disc`` rows.

Columns: rows the server answered, wall time of the whole CLI process (Python start, Ray start,
extraction, writing the run directory), rows/s over that wall time, % of the server's row limit
over the whole wall time, % over the time from the first answered request to the process's end,
429s and their share of requests, the run's Ray start and worker start seconds, the rows the
driver paid while Ray started (report.json), and the pace the shared limiter ended at
(requests/s; rows/s for the rows/min server with ``--rows-rate``).

With ``--seeds 0,1,2`` each behaviour runs once per seed (the network ``random_network(d, k,
m, seed=s)`` and the CLI's ``--seed s``); the table is printed again at the end, worst row
(lowest % of the limit over the whole wall time) first.

Usage::

    python benchmarks/bench_foreign.py [--quick] [--only burst5-frac,disc-burst5] [--workers 8]
        [--seeds 0,1]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the server's matrix products: one thread

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from foreign_server import ForeignServer

import distextract as dx

RATE = 100.0
BATCH = 64
#: name -> (server options, client limit flags; None: discovery, no flag)
BEHAVIOURS = {
    "burst1-frac": ({"burst": 1, "retry_after": "frac"}, ["--rate", "100"]),
    "burst5-frac": ({"burst": 5, "retry_after": "frac"}, ["--rate", "100"]),
    "burst50-frac": ({"burst": 50, "retry_after": "frac"}, ["--rate", "100"]),
    "burst5-int": ({"burst": 5, "retry_after": "int"}, ["--rate", "100"]),
    "burst5-headers": ({"burst": 5, "retry_after": "frac", "ratelimit_headers": True},
                       ["--rate", "100"]),
    "rows-per-min": ({"rate": None, "rows_per_min": RATE * BATCH * 60, "retry_after": "frac"},
                     ["--rows-rate", str(RATE * BATCH)]),
    "disc-burst5-frac": ({"burst": 5, "retry_after": "frac"}, []),
    "disc-burst1-int": ({"burst": 1, "retry_after": "int"}, []),
    "disc-burst5-headers": ({"burst": 5, "retry_after": "frac", "ratelimit_headers": True}, []),
    "disc-rows-per-min": ({"rate": None, "rows_per_min": RATE * BATCH * 60,
                           "retry_after": "frac"}, []),
}


def run_one(name: str, net: dx.ReluNetwork, args: argparse.Namespace, seed: int = 0,
            launcher: list[str] | None = None, capture: dict | None = None) -> dict:
    """Run the CLI once against a fresh foreign server of behaviour ``name``; one table row.

    ``launcher`` replaces ``python -m distextract`` (``foreign_phases.py`` runs the CLI
    stamped); ``capture``, when given, receives the server's log (``log``: its
    ``(time.time(), rows, status)`` entries), the process start (``w0``, ``time.time()``),
    the server's limit (``limit``, rows/s) and the CLI's stderr (``stderr``)."""
    server_opts, limit_flags = BEHAVIOURS[name]
    opts = {"rate": RATE, "latency": args.latency, "max_batch": BATCH, **server_opts}
    server = ForeignServer(net.W, net.b, net.A, net.c, **opts)
    url = server.start()
    out_dir = tempfile.mkdtemp(prefix=f"dx-foreign-{name}-")
    cmd = [*(launcher or [sys.executable, "-m", "distextract"]), "extract", "--url", url,
           "--input-dim", str(net.W.shape[1]), "--out", os.path.join(out_dir, "run"),
           "--batch-size", str(BATCH), "--workers", str(args.workers), "--seed", str(seed),
           *limit_flags]
    if args.timeline:
        cmd.insert(cmd.index("extract"), "-v")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    t0 = time.monotonic()
    w0 = time.time()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    t1 = time.monotonic()
    server.stop()
    if args.timeline:
        suffix = "" if seed == 0 else f"-seed{seed}"
        write_timeline(os.path.join(args.timeline, f"{name}{suffix}.txt"), server, w0, t1 - t0,
                       proc.stderr)
    if proc.returncode != 0:
        print(f"{name}: CLI failed ({proc.returncode}): {proc.stderr[-2000:]}", file=sys.stderr)
    c = server.counters()
    wall = t1 - t0
    if capture is not None:
        capture.update(log=list(server.log), w0=w0, limit=server.limit_rows_per_s,
                       stderr=proc.stderr)
    after_first = t1 - c["first"] if c["first"] is not None else float("nan")
    limit = server.limit_rows_per_s
    requests = c["answered"] + c["refused"]
    timing = {}
    overlap = {}
    try:
        with open(os.path.join(out_dir, "run", "report.json"), encoding="utf-8") as fh:
            report = json.load(fh)
        timing = (report["extraction"].get("distributed") or {}).get("timing") or {}
        overlap = (report["extraction"].get("distributed") or {}).get("overlap") or {}
        limiter = (report["extraction"].get("distributed") or {}).get("limiter") or {}
        discovered = limiter.get("paced_rate")
    except (OSError, KeyError, ValueError):
        discovered = None
    return {"behaviour": name, "seed": seed, "rows": c["rows"], "wall_s": wall,
            "rows_per_s": c["rows"] / wall, "pct_wall": 100 * c["rows"] / (wall * limit),
            "pct_after_first": 100 * c["rows"] / (after_first * limit),
            "429": c["refused"], "pct_429": 100 * c["refused"] / max(1, requests),
            "ray_s": timing.get("ray_start_s"), "ready_s": timing.get("workers_ready_s"),
            "first_s": (c["first"] - t0) if c["first"] is not None else None,
            "rc": proc.returncode, "final_rate": discovered,
            "driver_rows": overlap.get("driver_rows_paid")}


def write_timeline(path: str, server: ForeignServer, w0: float, wall: float,
                   log: str) -> None:
    """Per 0.5 s of the CLI's wall time: rows answered, requests, rows per request, 429s
    (server side), then the CLI's log lines (``-v``), to see where the wall time goes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    entries = list(server.log)
    nbins = int(wall / 0.5) + 1
    rows = np.zeros(nbins)
    reqs = np.zeros(nbins)
    refused = np.zeros(nbins)
    for t, n, status in entries:
        i = min(nbins - 1, max(0, int((t - w0) / 0.5)))
        if status == 200:
            rows[i] += n
            reqs[i] += 1
        else:
            refused[i] += 1
    limit = server.limit_rows_per_s * 0.5
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"wall {wall:.2f} s; bins of 0.5 s: start, rows, % of limit, requests, "
                 f"rows/request, 429s\n")
        for i in range(nbins):
            per = rows[i] / reqs[i] if reqs[i] else 0.0
            fh.write(f"{0.5 * i:6.1f} {int(rows[i]):6d} {100 * rows[i] / limit:5.0f}% "
                     f"{int(reqs[i]):4d} {per:5.1f} {int(refused[i]):3d}\n")
        fh.write("\n--- CLI log (-v), wall clock ---\n")
        fh.write(f"(process start: {time.strftime('%H:%M:%S', time.localtime(w0))}"
                 f".{int(1000 * (w0 % 1)):03d})\n")
        fh.write(log)


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def fmt_row(r: dict) -> str:
    return "  ".join([r["behaviour"], str(r["seed"]), f"{r['rows']:,}", f"{r['wall_s']:.1f}",
                      f"{r['rows_per_s']:,.0f}", f"{r['pct_wall']:.1f}",
                      f"{r['pct_after_first']:.1f}", str(r["429"]), f"{r['pct_429']:.2f}",
                      fmt(r["first_s"], ".1f"), fmt(r["ray_s"], ".1f"),
                      fmt(r["ready_s"], ".1f"), fmt(r["driver_rows"], ","),
                      fmt(r["final_rate"], ".1f"),
                      f"{r['load']:.1f}", "" if r["rc"] == 0 else f"(exit {r['rc']})"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d=32, k=128 (smoke run)")
    parser.add_argument("--only", default=",".join(BEHAVIOURS), help="comma-separated names")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds: network and CLI seed of each run")
    parser.add_argument("--timeline", default=None, metavar="DIR",
                        help="write DIR/<behaviour>.txt: rows per 0.5 s and the CLI's log")
    args = parser.parse_args()
    d, k, m = (32, 128, 10) if args.quick else (128, 1024, 10)
    seeds = [int(v) for v in args.seeds.split(",")]
    print(f"foreign server: {RATE:g} requests/s x {BATCH} rows (rows/min runs: "
          f"{RATE * BATCH * 60:,.0f} rows/min), latency {1000 * args.latency:g} ms; network "
          f"d={d} k={k} m={m} (seeds {args.seeds}); CLI --workers {args.workers}; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    header = ["behaviour", "seed", "rows", "wall s", "rows/s", "% limit (wall)", "% after 1st",
              "429s", "% 429", "1st answer s", "ray s", "ready s", "driver rows", "end pace",
              "load"]
    print("  ".join(header))
    rows = []
    nets = {s: dx.targets.random_network(d, k, m, seed=s) for s in seeds}
    for name in args.only.split(","):
        for seed in seeds:
            load0 = os.getloadavg()[0]
            r = run_one(name.strip(), nets[seed], args, seed)
            r["load"] = max(load0, os.getloadavg()[0])  # the higher of start and end
            rows.append(r)
            print(fmt_row(r), flush=True)
    if len(rows) > 1:
        print("worst row first:")
        for r in sorted(rows, key=lambda r: r["pct_wall"]):
            print(fmt_row(r))
    worst = min(rows, key=lambda r: r["pct_wall"])
    print(f"worst: {worst['behaviour']} (seed {worst['seed']}) {worst['pct_wall']:.1f}% of the "
          f"limit over the whole wall time, {worst['pct_429']:.2f}% 429s; load average "
          f"{os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
