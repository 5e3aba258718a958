"""``output="auto"`` against ``output="logits"`` / ``"softmax"``: same rows, same model?

For every target of ``python -m distextract.bench --suite quick`` (float64 logits), extract
twice in-process with the same seed, once with ``output="logits"`` and once with the default
``output="auto"``, recording every row the oracle received. Prints per target: rows each run
sent, oracle calls, whether the two multisets of rows are identical, the largest difference
between the two models' parameters, and what ``auto`` detected. Then the same for a few
targets behind float32, round:6 and softmax answers (``auto`` against the mode that was
forced before: ``logits`` for float32 and round:6, ``softmax`` for probabilities).

Usage::

    python benchmarks/bench_output_auto.py            # quick suite, seed 0 (about a minute)
    python benchmarks/bench_output_auto.py --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

import distextract as dx
from distextract._oracle import output_transform
from distextract.bench import suite


class Recorder:
    """A callable oracle recording every row it answers."""

    def __init__(self, net, kind: str = "float64") -> None:
        self.net, self.transform = net, output_transform(kind)
        self.rows: list[bytes] = []
        self.calls = 0

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows.extend(np.ascontiguousarray(X).tobytes()[i * X.shape[1] * 8:
                                                           (i + 1) * X.shape[1] * 8]
                         for i in range(X.shape[0]))
        return self.transform(self.net.predict(X))

    def digest(self) -> str:
        return hashlib.sha256(b"".join(sorted(self.rows))).hexdigest()[:12]


def model_diff(a: dx.ReluNetwork, b: dx.ReluNetwork) -> float:
    if (a.W.shape, a.A.shape) != (b.W.shape, b.A.shape):
        return float("inf")
    return max(float(np.max(np.abs(x - y), initial=0.0))
               for x, y in ((a.W, b.W), (a.b, b.b), (a.A, b.A), (a.c, b.c), (a.L, b.L)))


def compare(name: str, net, kind: str, forced: str, seed: int) -> None:
    runs = {}
    for output in (forced, "auto"):
        rec = Recorder(net, kind)
        t0 = time.perf_counter()
        res = dx.extract(rec, input_dim=net.input_dim, seed=seed, output=output)
        runs[output] = (rec, res, time.perf_counter() - t0)
    (rf, res_f, wf), (ra, res_a, wa) = runs[forced], runs["auto"]
    same_rows = rf.digest() == ra.digest() and len(rf.rows) == len(ra.rows)
    det = res_a.report["output"]
    print(f"{name:<26} {kind:>8} {forced:>8} {res_f.queries:>7} {res_a.queries:>7} "
          f"{rf.calls:>6} {ra.calls:>6} {'yes' if same_rows else 'NO':>5} "
          f"{model_diff(res_f.model, res_a.model):>9.2g} {wf:>6.1f} {wa:>6.1f}  "
          f"{det['mode']}/{det['answers']}/{det['confidence']}, extra {det['extra_rows']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{'target':<26} {'answers':>8} {'forced':>8} {'rows f':>7} {'rows a':>7} "
          f"{'calls f':>6} {'calls a':>6} {'same':>5} {'max|dθ|':>9} {'wall f':>6} "
          f"{'wall a':>6}  auto detected (mode/format/confidence)")
    for t in suite("quick"):
        compare(t.name, t.build(args.seed), "float64", "logits", args.seed)
    for d, k, m in ((16, 32, 3), (32, 64, 4)):
        net = dx.targets.random_network(d, k, m, seed=args.seed)
        for kind, forced in (("float32", "logits"), ("round:6", "logits"),
                             ("softmax", "softmax")):
            compare(f"random-d{d}-k{k}-m{m}", net, kind, forced, args.seed)


if __name__ == "__main__":
    main()
