"""Latency model of a distributed extraction (issue #4 (a)): how the engine's chain of
sequential round trips bounds its scaling with workers, whatever the machine.

The engine runs in-process against the target; every task is replayed on a model of ``W``
workers that each keep one request in flight (``--in-flight 1`` of bench_distributed.py):
an oracle call of ``n`` rows costs ``ceil(n / batch)`` round trips of ``latency`` in a row,
and each map of the coordinator puts its tasks, in order, on the first free worker (what
``RayExecutor.map`` does) and waits for the last. The rows asked are those of a real run.

Per worker count: the modelled wall time and scaling ``T(1) / (W·T(W))``. Then, for the
largest count, each phase of the run (the opening, the first line, every further line, the
finishing) with

- ``requests`` summed over its tasks and ``rounds``: the oracle calls that must follow one
  another whatever the scheduling (per map, the most calls any one task makes; a call of
  200 rows spread over four workers is one round trip, so this is a floor);
- ``now``: its modelled time; ``floor``: the most any scheduling that keeps the engine's
  dependencies could reach, ``max(requests_1 / W, rounds) × latency`` with ``requests_1``
  the one-worker run's requests (the work cannot shrink below it, the chain not below its
  rounds). Phases depend on each other (a line's search needs the model that the previous
  line's Jacobians made), so the floors add up.

Usage::

    python benchmarks/bench_critical_path.py [--d 64 --k 512 --m 10 --seed 0]
        [--latency-ms 50 --batch 64 --workers 1,2,4,8]

The model leaves out what the real machine adds: Ray's dispatch, the coordinator's own
compute and the server's time (run bench_distributed.py for measured figures).
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import distextract as dx
from distextract._oracle import CountingOracle, as_oracle
from distextract.engine._config import ExtractConfig
from distextract.engine.loop import Coordinator
from distextract.engine.tasks import JacobianTask, SearchTask, run_task


class _Calls:
    """One task's view of the oracle: the row count of each call, in order."""

    def __init__(self, oracle) -> None:
        self.oracle = oracle
        self.rows: list[int] = []

    def query(self, X: np.ndarray) -> np.ndarray:
        self.rows.append(int(X.shape[0]))
        return self.oracle.query(X)


class LatencyModel:
    """An executor that runs tasks here and keeps the time ``W`` one-request workers take."""

    request_limited = False

    def __init__(self, oracle: CountingOracle, workers: int, batch: int, latency: float
                 ) -> None:
        self.oracle = oracle
        self.workers = workers
        self.max_batch = batch
        self.latency = latency
        self.clock = 0.0
        self.phase = "opening"
        self.log: list[dict] = []

    def map(self, tasks: list) -> list:
        results, trips, calls = [], [], []
        for task in tasks:
            rec = _Calls(self.oracle)
            results.append(run_task(rec, task))
            trips.append(sum(math.ceil(n / self.max_batch) for n in rec.rows))
            calls.append(len(rec.rows))
        free = [0.0] * min(self.workers, len(tasks))
        end = 0.0
        for n in trips:
            start = heapq.heappop(free)
            end = max(end, start + n * self.latency)
            heapq.heappush(free, start + n * self.latency)
        self.clock += end
        self.log.append({"phase": self.phase, "kind": type(tasks[0]).__name__,
                         "tasks": len(tasks), "requests": sum(trips),
                         "rounds": max(calls), "time": end, "trips": trips,
                         "spans": [_span(t) for t in tasks]})
        return results

    @property
    def queries(self) -> int:
        return int(self.oracle.queries)

    @property
    def remaining(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def _span(task) -> tuple[float, float] | None:
    """The stretch of its line a search or Jacobian task covers."""
    if isinstance(task, SearchTask):
        return min(a for a, _ in task.segments), max(b for _, b in task.segments)
    if isinstance(task, JacobianTask):
        return min(p.t0 for p in task.plans), max(p.t0 for p in task.plans)
    return None


def pipelined_first_line(log: list[dict], workers: int, latency: float) -> float:
    """The first line's time if each Jacobian task started as soon as the search tasks
    around its regions were done, the region centres riding free in its requests and the
    validation points in the opening (an optimistic estimate): a streaming scheduler that this
    engine does not have (its longer-steps decision and the first line's kink count are
    taken over the whole line; both would have to be taken per segment), with the Jacobian
    tasks cut finer."""
    maps = [e for e in log if e["phase"] == "line 0"]
    search = next(e for e in maps if e["kind"] == "SearchTask")
    jac = next(e for e in maps if e["kind"] == "JacobianTask")
    free = [0.0] * workers
    done = []
    for n in search["trips"]:
        start = heapq.heappop(free)
        done.append(start + n * latency)
        heapq.heappush(free, done[-1])
    seg = search["spans"]
    jobs = []
    for (lo, hi), n in zip(jac["spans"], jac["trips"]):
        # the search tasks holding its regions' centres, and their neighbours (a region's
        # edges may lie in the next segment)
        near = [i for i, (a, b) in enumerate(seg) if b >= lo and a <= hi]
        near = range(max(min(near) - 1, 0), min(max(near) + 2, len(seg)))
        # cut into tasks of about a tenth of a worker's share of the line, so that
        # workers freed at different times share the rest evenly
        pieces = max(1, round(n / max(1.0, 0.1 * sum(jac["trips"]) / workers)))
        for q in range(pieces):
            part = n // pieces + (q < n % pieces)
            jobs.append((max(done[i] for i in near), part * latency))
    end = max(done)
    for ready, dur in sorted(jobs):
        start = max(heapq.heappop(free), ready)
        end = max(end, start + dur)
        heapq.heappush(free, start + dur)
    return end


def run(net: dx.ReluNetwork, workers: int, seed: int, batch: int, latency: float
        ) -> LatencyModel:
    cfg = ExtractConfig()
    ex = LatencyModel(CountingOracle(as_oracle(net, net.input_dim), None), workers, batch,
                      latency)

    def progress(info: dict) -> None:
        # the probe ends the opening; maps after a line's "round" belong to the next line
        if info["phase"] == "probe":
            ex.phase = "line 0"
        elif info["phase"] == "round":
            ex.phase = f"line {info['line'] + 1}"

    coord = Coordinator(ex, net.input_dim, cfg, seed, progress, workers, cfg.validation_points)
    res = coord.run()
    # the maps after the last line's round are the finishing pass
    last = f"line {len(res.lines)}"
    for entry in ex.log:
        if entry["phase"] == last:
            entry["phase"] = "finishing"
    ex.result = res
    return ex


def phases(log: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in log:
        p = out.setdefault(e["phase"], {"maps": 0, "requests": 0, "rounds": 0, "time": 0.0})
        p["maps"] += 1
        p["requests"] += e["requests"]
        p["rounds"] += e["rounds"]
        p["time"] += e["time"]
    return out


def table(header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", default="1,2,4,8")
    args = ap.parse_args(argv)
    counts = sorted({int(w) for w in args.workers.split(",")} | {1})
    lat = args.latency_ms / 1e3
    net = dx.targets.random_network(args.d, args.k, args.m, seed=args.seed)
    print(f"# python benchmarks/bench_critical_path.py --d {args.d} --k {args.k} --m {args.m} "
          f"--seed {args.seed} --latency-ms {args.latency_ms:g} --batch {args.batch}")
    print(f"network d={args.d} k={args.k} m={args.m} seed={args.seed}; each worker keeps one "
          f"{args.batch}-row request in flight, {args.latency_ms:g} ms each")
    runs = {w: run(net, w, 0, args.batch, lat) for w in counts}
    one = runs[1]
    rows = []
    for w in counts:
        ex = runs[w]
        req = sum(e["requests"] for e in ex.log)
        rows.append([w, ex.queries, req, f"{ex.clock:.2f}", f"{one.clock / (w * ex.clock):.2f}",
                     ex.result.stop_reason])
    print()
    table(["workers", "queries", "requests", "model_s", "scaling", "stop"], rows)

    W = counts[-1]
    ph, ph1 = phases(runs[W].log), phases(one.log)
    rows = []
    now = floor = 0.0
    for name, p in ph.items():
        work = ph1.get(name, p)["requests"] / W
        fl = max(work, p["rounds"]) * lat
        now += p["time"]
        floor += fl
        rows.append([name, p["maps"], ph1.get(name, p)["requests"], p["requests"], p["rounds"],
                     f"{p['time']:.2f}", f"{work * lat:.2f}", f"{fl:.2f}"])
    rows.append(["total", sum(p["maps"] for p in ph.values()), sum(e["requests"] for e in one.log),
                 sum(e["requests"] for e in runs[W].log), sum(p["rounds"] for p in ph.values()),
                 f"{now:.2f}", f"{one.clock / W:.2f}", f"{floor:.2f}"])
    print(f"\nphases at {W} workers (requests_1: the one-worker run's; work: requests_1 / {W} "
          f"× latency; floor: max(work, rounds × latency))")
    table(["phase", "maps", "requests_1", "requests", "rounds", "now_s", "work_s", "floor_s"],
          rows)
    line0 = ph["line 0"]["time"]
    piped = pipelined_first_line(runs[W].log, W, lat)
    total = runs[W].clock - line0 + piped
    print(f"\nthe first line streamed (Jacobians start as their search tasks end): "
          f"{line0:.2f} s -> {piped:.2f} s, run {runs[W].clock:.2f} s -> {total:.2f} s")
    print(f"scaling at {W} workers: modelled {one.clock / (W * runs[W].clock):.2f}; first line "
          f"streamed {one.clock / (W * total):.2f}; every phase at its floor (no scheduling "
          f"does better) {one.clock / (W * floor):.2f}")


if __name__ == "__main__":
    main()
