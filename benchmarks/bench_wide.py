"""One very wide random network extracted in-process, the target's evaluation timed apart.

    python benchmarks/bench_wide.py --k 16384        # d=128, m=10 (about 5 min on 16 cores)

Prints queries / k(d+1), rel L2 on 10,000 fresh points, matched / live / spurious neurons,
the stop reason, wall seconds split into the target's evaluation and the extractor's work
(µs per query), and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import distextract as dx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=16384)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="network seed (extraction seed 0)")
    args = parser.parse_args()
    net = dx.targets.random_network(args.d, args.k, args.m, seed=args.seed)
    spent = [0.0]

    def target(X):
        t = time.perf_counter()
        Y = net(X)
        spent[0] += time.perf_counter() - t
        return Y

    t0 = time.perf_counter()
    res = dx.extract(target, args.d, seed=0)
    wall = time.perf_counter() - t0
    fid = dx.evaluate_fidelity(res.model, net, n_points=10_000, seed=1)
    work = wall - spent[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# python benchmarks/bench_wide.py --d {args.d} --k {args.k} --m {args.m} "
          f"--seed {args.seed}")
    print(f"queries {res.queries} = {res.queries / (args.k * (args.d + 1)):.4f} k(d+1), "
          f"rel L2 {fid.rel_l2:.3g}, matched/live/spurious {fid.matched_neurons}/"
          f"{fid.live_neurons}/{fid.spurious_neurons}, {res.stop_reason}, wall {wall:.1f} s "
          f"(target {spent[0]:.1f} s, extractor {work:.1f} s = "
          f"{1e6 * work / max(res.queries, 1):.1f} us/query), peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
