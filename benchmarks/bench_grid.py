"""A grid of random networks (in-process): every size × output width × seed, one line per
network, then the mean queries / k(d+1) per input dimension and the networks that are not
certified with every neuron, none spurious and rel L2 < 1e-8.

Usage::

    python benchmarks/bench_grid.py [--d 2,3,4,8,16,32] [--k 30,200,800] [--m 1,3] [--seeds 2]

Network ``s`` of a cell is ``random_network(d, k, m, seed=200 + s)``, extracted with
``seed=s``. Compare engines by running it with ``PYTHONPATH`` set to each checkout.
"""

from __future__ import annotations

import argparse
import sys
import time

import distextract as dx


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=ints, default=ints("2,3,4,8,16,32"))
    parser.add_argument("--k", type=ints, default=ints("30,200,800"))
    parser.add_argument("--m", type=ints, default=ints("1,3"))
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print("command: python " + " ".join(sys.argv))
    print(f"{'d':>3} {'k':>5} {'m':>2} {'s':>2} {'queries':>8} {'q/k(d+1)':>8} {'rel L2':>9} "
          f"{'match/live/spur':>15} {'stop':>15}")
    rows = []
    t0 = time.perf_counter()
    for d in args.d:
        for k in args.k:
            for m in args.m:
                for s in range(args.seeds):
                    net = dx.targets.random_network(d, k, m, seed=200 + s)
                    res = dx.extract(net, seed=s)
                    f = dx.evaluate_fidelity(res.model, net, n_points=10_000)
                    live = max(f.live_neurons or 0, 1)
                    ratio = res.queries / (live * (d + 1))
                    good = (res.certified and f.rel_l2 < 1e-8 and f.spurious_neurons == 0
                            and f.matched_neurons == f.live_neurons)
                    rows.append((d, ratio, good))
                    mls = f"{f.matched_neurons}/{f.live_neurons}/{f.spurious_neurons}"
                    print(f"{d:>3} {k:>5} {m:>2} {s:>2} {res.queries:>8} {ratio:>8.3f} "
                          f"{f.rel_l2:>9.2e} {mls:>15} {res.stop_reason:>15}"
                          + ("" if good else "  <-"), flush=True)
    print(f"# {len(rows)} networks in {time.perf_counter() - t0:.0f} s; "
          f"{sum(not g for _, _, g in rows)} not certified exactly")
    for d in args.d:
        r = [x for dd, x, _ in rows if dd == d]
        print(f"# d={d}: mean q/k(d+1) {sum(r) / len(r):.3f} over {len(r)}")


if __name__ == "__main__":
    main()
