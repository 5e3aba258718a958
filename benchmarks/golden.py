"""Golden traces: the engine's exact oracle traffic and result, recorded once, replayed after
every refactoring step to prove that the step changed nothing.

Usage::

    python benchmarks/golden.py record                  # every case -> tests/golden/*.json
    python benchmarks/golden.py check                   # replay every case; non-zero on change
    python benchmarks/golden.py check --only 'quick:*'  # glob on case names; repeatable
    python benchmarks/golden.py check --skip 'issue5:*-float32' --skip 'issue5:*-round:6'
    python benchmarks/golden.py list

A trace holds, for every oracle call in order, its row count and the first 8 hex digits of a
sha256 of the call's X and Y float64 bytes (so a mismatch names the call where the runs
diverged), a rolling sha256 over all calls, and the result: the final model's hash (the bytes of
W, b, A, c and L), stop reason, rounds, queries, certified and val_rel_l2 (``repr`` of the float:
every bit). A case that raises (a :class:`~distextract.TargetMismatch` verdict) records the
exception type and message instead of a result.

The cases: the ``quick``, ``lowd``, ``hard`` and ``issue5`` suites of ``python -m
distextract.bench`` at seed 0, the ``issue2`` row ``random-d128-k1024-m1``, a run that exhausts
its budget and an ``on_mismatch="flag"`` run. Every case runs in-process (the
``LocalExecutor``), where the order of oracle calls is deterministic.

BLAS threading changes bits: with OpenBLAS on 2 threads instead of 1, 17 of 61 cases diverged
(the lowd rows with k >= 200, every hard d64-k256 row, d128-k1024: a least-squares fit's last
bits, then a different row). So every case runs with BLAS limited to one thread
(``threadpoolctl``, installed with scikit-learn, a test dependency); recording twice gave the
same hashes. The traces hold for this numpy/OpenBLAS build on this CPU family (OpenBLAS picks
its kernels by CPU): on another machine, record the baseline there first (from the commit
before the change under test), then check.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from distextract import bench, targets
from distextract._errors import DistextractError
from distextract._extract import extract
from distextract._model import ReluNetwork
from distextract._oracle import CallableOracle, NetworkOracle, Oracle

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden"

#: Cases replayed by the pytest test on every run (a few seconds in all).
CI_CASES = ("quick:random-d16-k32-m1", "quick:hard:duplicates", "quick:hard:tiny_output",
            "budget:hard:tiny_output-d16-k32-b1600", "flag:gelu-d8-k16", "flag:relu-8-8-8-1")


class RecordingOracle(Oracle):
    """An oracle wrapper that logs every call: its row count and a hash of its X and Y.

    It forwards ``input_dim``, ``output_dim`` and ``max_batch`` of the wrapped oracle, so the
    engine asks exactly what it asks of the wrapped oracle alone.

    Parameters
    ----------
    inner : Oracle
    """

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner
        self.input_dim = inner.input_dim
        self.output_dim = inner.output_dim
        self.max_batch = inner.max_batch
        self.calls: list[str] = []
        self._rolling = hashlib.sha256()

    def _query(self, X: np.ndarray) -> np.ndarray:
        Y = self.inner.query(X)
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(np.asarray(Y, dtype=np.float64)).tobytes())
        digest = h.digest()
        self._rolling.update(digest)
        self.calls.append(f"{X.shape[0]}:{digest.hex()[:8]}")
        return Y

    @property
    def rolling(self) -> str:
        """sha256 over the digests of every call so far, in order."""
        return self._rolling.hexdigest()

    def close(self) -> None:
        self.inner.close()


def model_hash(model: ReluNetwork) -> str:
    """sha256 of the model's arrays (W, b, A, c, L) as float64 bytes, with their shapes."""
    h = hashlib.sha256()
    for name in ("W", "b", "A", "c", "L"):
        arr = getattr(model, name)
        if arr is None:
            h.update(f"{name}:None;".encode())
            continue
        arr = np.ascontiguousarray(arr, dtype=np.float64)
        h.update(f"{name}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Case:
    """One golden run: a name and a function that runs it on a recording oracle."""

    name: str
    run: Callable[[], dict]


def _trace(rec: RecordingOracle, res: Any = None, exc: BaseException | None = None) -> dict:
    out: dict[str, Any] = {"calls": len(rec.calls), "rows": sum(int(c.split(":")[0])
                                                                for c in rec.calls)}
    if exc is not None:
        out["raised"] = f"{type(exc).__name__}: {exc}"
    else:
        out.update(model=model_hash(res.model), stop_reason=res.stop_reason,
                   rounds=rounds(res.report["rounds"]), queries=res.queries,
                   certified=res.certified,
                   val_rel_l2=repr(res.val_rel_l2), hidden=res.model.hidden_dim)
    out["rolling"] = rec.rolling
    out["trace"] = rec.calls
    return out


def rounds(info: list[dict]) -> list[list]:
    """Each round as [line, kinks, added, removed, neurons, queries, repr(val_rel_l2)] (its
    wall time left out)."""
    return [[r["line"], r["kinks"], r["added"], r["removed"], r["neurons"], r["queries"],
             repr(r["val_rel_l2"])] for r in info]


def _run(rec: RecordingOracle, **kwargs: Any) -> dict:
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            res = extract(rec, **kwargs)
    except DistextractError as exc:
        return _trace(rec, exc=exc)
    return _trace(rec, res)


def _bench_case(suite: str, target: bench.BenchTarget, seed: int = 0) -> Case:
    def run() -> dict:
        net = target.build(seed)
        # as bench.run_one: a plain callable of the network (output_dim unknown to the engine)
        rec = RecordingOracle(CallableOracle(net.predict, net.input_dim))
        return _run(rec, input_dim=net.input_dim, seed=seed)
    return Case(f"{suite}:{target.name}", run)


def _issue5_cases(seed: int = 0) -> list[Case]:
    d, k, m = 64, 128, 10
    cases = []
    for out in ("float32", "round:6", "softmax"):
        def run(out: str = out) -> dict:
            net = targets.random_network(d, k, m, seed=seed)
            rec = RecordingOracle(NetworkOracle(net, output=out))
            return _run(rec, seed=seed, output="softmax" if out == "softmax" else "logits",
                        on_mismatch="flag")
        cases.append(Case(f"issue5:random-d64-k128-m10-{out}", run))
    others = {
        "gelu-d64-k128-m10": lambda: targets.gelu_network(d, k, m, seed=seed),
        "relu-64-64-64-10": lambda: targets.two_layer_relu_network(d, 64, 64, m, seed=seed),
        "noisy-sigma1e-9": lambda: targets.noisy_oracle(
            targets.random_network(d, k, m, seed=seed), 1e-9, seed=seed),
    }
    for name, build in others.items():
        def run(build: Callable[[], Any] = build) -> dict:
            target = build()
            rec = RecordingOracle(CallableOracle(target.predict, d))
            return _run(rec, input_dim=d, seed=seed)
        cases.append(Case(f"issue5:{name}", run))
    return cases


def _budget_case() -> Case:
    # 1,763 rows certify this target; 1,600 run out during the third line (27 neurons found)
    def run() -> dict:
        net = targets.hard_case("tiny_output", 16, 32, 1, seed=0)
        rec = RecordingOracle(CallableOracle(net.predict, 16))
        return _run(rec, input_dim=16, seed=0, budget=1600)
    return Case("budget:hard:tiny_output-d16-k32-b1600", run)


def _flag_cases() -> list[Case]:
    builds = {"gelu-d8-k16": lambda: targets.gelu_network(8, 16, 1, seed=0),
              "relu-8-8-8-1": lambda: targets.two_layer_relu_network(8, 8, 8, 1, seed=0)}
    out = []
    for name, build in builds.items():
        def run(build: Callable[[], Any] = build) -> dict:
            target = build()
            rec = RecordingOracle(CallableOracle(target.predict, 8))
            return _run(rec, input_dim=8, seed=0, on_mismatch="flag")
        out.append(Case(f"flag:{name}", run))
    return out


def cases() -> list[Case]:
    """Every golden case, in recording order."""
    out: list[Case] = []
    for suite in ("quick", "lowd", "hard"):
        out += [_bench_case(suite, t) for t in bench.suite(suite)]
    out += _issue5_cases()
    out += [_bench_case("issue2", t) for t in bench.suite("issue2")
            if t.name == "random-d128-k1024-m1"]
    out += [_budget_case(), *_flag_cases()]
    return out


def select(only: tuple[str, ...] | list[str]) -> list[Case]:
    """The cases whose name matches one of the glob patterns (all when none given)."""
    every = cases()
    if not only:
        return every
    chosen = [c for c in every if any(fnmatch.fnmatchcase(c.name, p) for p in only)]
    if not chosen:
        raise SystemExit(f"no golden case matches {list(only)}; see `golden.py list`")
    return chosen


def _path(name: str) -> Path:
    suite = name.split(":", 1)[0]
    return GOLDEN_DIR / f"{suite}.json"


def load(name: str) -> dict | None:
    """The recorded trace of one case (None when not recorded)."""
    p = _path(name)
    if not p.exists():
        return None
    return json.loads(p.read_text()).get(name)


def save(results: dict[str, dict]) -> None:
    """Merge traces into their suite files (one JSON file per suite, sorted keys)."""
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    by_file: dict[Path, dict] = {}
    for name, tr in results.items():
        p = _path(name)
        if p not in by_file:
            by_file[p] = json.loads(p.read_text()) if p.exists() else {}
        by_file[p][name] = tr
    for p, data in by_file.items():
        lines = ["{"]
        items = sorted(data.items())
        for i, (name, tr) in enumerate(items):
            head = {k: v for k, v in tr.items() if k != "trace"}
            body = json.dumps(head, sort_keys=True)[:-1]
            calls = json.dumps(tr["trace"], separators=(",", ":"))
            sep = "," if i < len(items) - 1 else ""
            lines.append(f' {json.dumps(name)}: {body}, "trace": {calls}}}{sep}')
        lines.append("}")
        p.write_text("\n".join(lines) + "\n")


RESULT_KEYS = ("raised", "model", "stop_reason", "rounds", "queries", "certified",
               "val_rel_l2", "hidden")


def compare(want: dict, got: dict) -> str | None:
    """None when the traces agree, else a line saying where they first differ."""
    a, b = want["trace"], got["trace"]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"call {i}: recorded {x}, now {y}"
    if len(a) != len(b):
        return f"calls: recorded {len(a)}, now {len(b)} (first {min(len(a), len(b))} agree)"
    for key in RESULT_KEYS:
        if want.get(key) != got.get(key):
            return f"{key}: recorded {want.get(key)!r}, now {got.get(key)!r}"
    if want["rolling"] != got["rolling"]:
        return "rolling hash differs"
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["record", "check", "list"])
    ap.add_argument("--only", action="append", default=[],
                    help="glob on case names (e.g. 'quick:*'); repeatable")
    ap.add_argument("--skip", action="append", default=[],
                    help="glob on case names to leave out (e.g. 'issue5:*-float32'); repeatable")
    args = ap.parse_args(argv)
    chosen = [c for c in select(args.only)
              if not any(fnmatch.fnmatchcase(c.name, p) for p in args.skip)]
    if args.command == "list":
        for c in chosen:
            print(c.name)
        return 0
    print(f"{'case':<44} {'calls':>6} {'rows':>8} {'stop':>16} {'s':>6}  result")
    failed = 0
    recorded: dict[str, dict] = {}
    t_all = time.perf_counter()
    for c in chosen:
        t0 = time.perf_counter()
        got = c.run()
        dt = time.perf_counter() - t0
        stop = got.get("stop_reason") or got.get("raised", "").split(":")[0]
        if args.command == "record":
            recorded[c.name] = got
            verdict = "recorded"
        else:
            want = load(c.name)
            if want is None:
                verdict, failed = "NOT RECORDED", failed + 1
            else:
                diff = compare(want, got)
                verdict = "identical" if diff is None else f"DIFFERS at {diff}"
                failed += diff is not None
        print(f"{c.name:<44} {got['calls']:>6} {got['rows']:>8} {stop:>16} {dt:>6.1f}  "
              f"{verdict}")
        sys.stdout.flush()
    if recorded:
        save(recorded)
    print(f"# {len(chosen)} cases in {time.perf_counter() - t_all:.1f} s"
          + (f"; {failed} differ" if args.command == "check" else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
