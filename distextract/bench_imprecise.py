"""The imprecise-answer suite of :mod:`distextract.bench` (issue 19): float32, rounded,
float16 and bfloat16 answers over many seeds and several generators, judged by the **worst**
row of each group.

Usage::

    python -m distextract.bench --suite imprecise                  # every group, default seeds
    python -m distextract.bench --suite imprecise --seeds 20 --only 'bias*'
    python -m distextract.bench --suite imprecise --outputs float32 --seeds 3

Each row is one network (a generator and a seed) extracted from one kind of answer. The
neuron match uses tolerances suited to the answers' precision (the fidelity report's defaults,
``|cos| > 1 − 1e-9`` and bias ``1e-6``, are float64's): :data:`MATCH_TOLERANCES`.

Columns: ``<flr``, live neurons of the true network below the observability floor (their
whole output contribution, rms over the Gaussian bulk, under 16 relative roundings of the
answers, or, for the weaker of two near-parallel neurons, what the pair adds beyond one
neuron at its output-weighted hyperplane, :func:`.engine.certificate.below_floor`: the
answers cannot show them; they are not counted missed); ``unc``, neurons the run's certificate names uncertain
(``report["uncertain"]``); ``cert``, whether the run certified its model. The summary
counts false certificates: certified, fidelity target missed.
"""

from __future__ import annotations

import fnmatch
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import targets
from ._extract import extract
from ._model import ReluNetwork
from .engine.certificate import below_floor
from .fidelity import evaluate_fidelity, match_neurons

#: Issue 19's targets (worst case over the suite): rel L2 at most this per kind of answer.
TARGETS = {"float32": 1e-6, "round:6": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
#: Query target: at most this many k_live·(d+1) rows.
QUERY_FACTOR = 3.0
#: Neuron-match tolerances (cos_tol, bias_rtol) per kind of answer. float32 / round:6: a
#: direction within about 1.4e-3 rad and a normalised bias within 1e-3 (a neuron that far
#: off adds about that relative error where it is active, far above the 1e-6 target, so a
#: model meeting the target matches at these tolerances); float16 / bfloat16: 4.5e-2 rad, 3e-2.
MATCH_TOLERANCES = {"float32": (1e-6, 1e-3), "round:6": (1e-6, 1e-3),
                    "float16": (1e-3, 3e-2), "bfloat16": (1e-3, 3e-2)}


@dataclass(frozen=True)
class Row:
    """A network family of the suite: ``build(seed)`` for ``seeds`` seeds."""

    group: str
    name: str
    build: Callable[[int], ReluNetwork]
    seeds: int
    outputs: tuple[str, ...] = ("float32", "round:6")


def _rand(group: str, d: int, k: int, m: int, seeds: int, bias: float = targets.BIAS_SCALE,
          spread: float | None = None, outputs: tuple[str, ...] = ("float32", "round:6")) -> Row:
    name = f"d{d}-k{k}-m{m}-b{bias:g}" + (f"-spread{spread:g}" if spread else "")
    return Row(group, name, lambda seed: targets.random_network(
        d, k, m, seed=seed, bias_scale=bias, norm_spread=spread), seeds, outputs)


def rows(seeds: int | None = None) -> list[Row]:
    """Every row of the suite; ``seeds`` overrides each row's default seed count."""
    low = ("float16", "bfloat16")
    out = [
        # bias standard deviation 0.5 (the default, N(0, 0.25)), 1 and 2
        _rand("bias", 16, 32, 1, 20, 0.5), _rand("bias", 16, 32, 1, 20, 1.0),
        _rand("bias", 16, 32, 1, 20, 2.0),
        _rand("bias", 32, 64, 1, 20, 0.5), _rand("bias", 32, 64, 1, 20, 1.0),
        _rand("bias", 32, 64, 1, 20, 2.0),
        _rand("spread", 32, 64, 1, 20, 1.0, spread=100.0),
        _rand("outputs", 32, 64, 3, 20, 1.0), _rand("outputs", 32, 64, 10, 10, 1.0),
        _rand("low", 16, 32, 1, 10, 1.0, outputs=low), _rand("low", 32, 64, 3, 5, 1.0, outputs=low),
    ]
    out += [Row("hard", f"hard:{h}-d16-k32",
                (lambda h: lambda seed: targets.hard_case(h, 16, 32, seed=seed))(h), 5)
            for h in targets.HARD_CASES]
    out.append(Row("sklearn", "digits-h16",
                   lambda seed: targets.digits_network(hidden=16, seed=seed)[0], 5))
    # trained on scikit-learn's synthetic tasks (targets.trained_network)
    out += [Row("sklearn", f"{task}-h{h}",
                (lambda task, h: lambda seed: targets.trained_network(task, h, seed))(task, h), 5)
            for task, h in (("friedman", 32), ("regression", 64), ("classification", 48))]
    out += [_rand("large", 64, 128, 10, 3, 1.0), _rand("large", 128, 256, 10, 1, 1.0,
                                                       outputs=("float32",))]
    if seeds is not None:
        out = [Row(r.group, r.name, r.build, seeds, r.outputs) for r in out]
    return out


def run_row(net: ReluNetwork, output: str, seed: int) -> dict:
    """Extract ``net`` from ``output`` answers and judge it (one table line)."""
    from .bench import TimedOracle

    oracle = TimedOracle(net, output)
    c0, w0 = time.process_time(), time.perf_counter()
    res = extract(oracle, input_dim=net.input_dim, seed=seed)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    cos_tol, bias_rtol = MATCH_TOLERANCES[output]
    rep = evaluate_fidelity(res.model, net, n_points=10_000, seed=seed + 1,
                            cos_tol=cos_tol, bias_rtol=bias_rtol)
    live = rep.live_neurons or 0
    d = net.input_dim
    noise = res.report.get("precision", {}).get("relative_noise") or 0.0
    # live target groups below the observability floor: reported, not counted missed
    match = match_neurons(res.model, net, cos_tol=cos_tol, bias_rtol=bias_rtol,
                          reference_scale=rep.target_rms or 1.0)
    hidden = below_floor(net, noise, rep.target_rms or 1.0)
    groups = match.target_group
    floor = np.array([bool(np.all(hidden[groups == g])) for g in range(match.target_live.size)],
                     dtype=bool)
    below = int(np.sum(match.target_live & floor))
    missed = int(np.sum(match.target_live & ~match.target_matched & ~floor))
    uncertain = res.report.get("uncertain")
    ratio = res.queries / (live * (d + 1)) if live else float("nan")
    fidelity_met = bool(rep.rel_l2 <= TARGETS[output] and missed == 0
                        and rep.spurious_neurons == 0)
    met = fidelity_met and ratio <= QUERY_FACTOR
    certified = res.stop_reason == "certified"
    return {"output": output, "seed": seed, "d": d, "k": net.hidden_dim, "m": net.output_dim,
            "queries": res.queries, "ratio": ratio, "rel_l2": rep.rel_l2,
            "val_rel_l2": res.report.get("validation", {}).get("rel_l2"),
            "matched": rep.matched_neurons, "live": live, "spurious": rep.spurious_neurons,
            "missed": missed, "below_floor": below,
            "uncertain": None if uncertain is None else len(uncertain),
            "model_neurons": res.model.hidden_dim,
            "stop": res.stop_reason, "certified": certified, "met": met,
            # certified although the model misses the fidelity target (the query target is
            # not the certificate's business)
            "false_certificate": certified and not fidelity_met,
            "noise": noise,
            "cpu_s": cpu - oracle.cpu, "wall_s": wall}


HEADER = (f"{'row':<34} {'answers':<8} {'seed':>4} {'queries':>7} {'q/k(d+1)':>8} "
          f"{'rel L2':>9} {'match/live/spur':>15} {'<flr':>4} {'unc':>4} {'stop':>15} "
          f"{'cert':>4} {'met':>3} {'cpu s':>6}")


def format_row(name: str, r: dict) -> str:
    mls = f"{r['matched']}/{r['live']}/{r['spurious']}"
    unc = "-" if r["uncertain"] is None else r["uncertain"]
    return (f"{name:<34} {r['output']:<8} {r['seed']:>4} {r['queries']:>7} {r['ratio']:>8.3f} "
            f"{r['rel_l2']:>9.2e} {mls:>15} {r['below_floor']:>4} {unc:>4} {r['stop']:>15} "
            f"{'yes' if r['certified'] else 'no':>4} {'yes' if r['met'] else 'NO':>3} "
            f"{r['cpu_s']:>6.1f}")


def summarize(results: list[tuple[Row, dict]]) -> list[str]:
    """The worst row per (group, answers): worst rel L2, most missed (above the observability
    floor) and spurious neurons, most live neurons below the floor, highest q/k(d+1), most
    extractor CPU; the rows certified, and the false certificates (certified, target
    missed), which must be none."""
    lines = [f"{'worst of group':<10} {'answers':<8} {'rows':>4} {'met':>5} {'rel L2 (row)':<40} "
             f"{'missed':>6} {'spur':>4} {'<flr':>4} {'q/k(d+1)':>8} {'cpu s':>6} {'cert':>4} "
             f"{'false cert':>10}"]
    keys = sorted({(r.group, res["output"]) for r, res in results})
    for group, output in keys:
        sel = [(r, res) for r, res in results if r.group == group and res["output"] == output]
        worst = max(sel, key=lambda p: p[1]["rel_l2"])
        where = f"{worst[1]['rel_l2']:.2e} ({worst[0].name} s{worst[1]['seed']})"
        met = f"{sum(res['met'] for _, res in sel)}/{len(sel)}"
        lines.append(
            f"{group:<10} {output:<8} {len(sel):>4} {met:>5} {where:<40} "
            f"{max(res['missed'] or 0 for _, res in sel):>6} "
            f"{max(res['spurious'] for _, res in sel):>4} "
            f"{max(res['below_floor'] for _, res in sel):>4} "
            f"{max(res['ratio'] for _, res in sel):>8.3f} "
            f"{max(res['cpu_s'] for _, res in sel):>6.1f} "
            f"{sum(res['certified'] for _, res in sel):>4} "
            f"{sum(res['false_certificate'] for _, res in sel):>10}")
    return lines


def main(seeds: int | None, only: tuple[str, ...], outputs: tuple[str, ...],
         json_path: str | None, first_seed: int = 0) -> None:
    """Run the suite and print every row, then the worst row of each group."""
    selected = rows(seeds)
    if only:
        selected = [r for r in selected if any(fnmatch.fnmatchcase(r.name, p)
                                                or fnmatch.fnmatchcase(r.group, p)
                                                for p in only)]
    print("# python -m distextract.bench --suite imprecise"
          + (f" --seeds {seeds}" if seeds is not None else "")
          + (f" --seed {first_seed}" if first_seed else "")
          + "".join(f" --only '{p}'" for p in only)
          + "".join(f" --outputs {o}" for o in outputs))
    print(HEADER)
    sys.stdout.flush()
    results: list[tuple[Row, dict]] = []
    t0 = time.perf_counter()
    for row in selected:
        for seed in range(first_seed, first_seed + row.seeds):
            net = row.build(seed)
            for output in row.outputs:
                if outputs and output not in outputs:
                    continue
                res = run_row(net, output, seed)
                res["row"], res["group"] = row.name, row.group
                results.append((row, res))
                print(format_row(row.name, res))
                sys.stdout.flush()
                if json_path:
                    with open(json_path, "w", encoding="utf-8") as fh:
                        json.dump([r for _, r in results], fh, indent=1)
    print(f"# {len(results)} extractions in {time.perf_counter() - t0:.1f} s")
    for line in summarize(results):
        print(line)
    false = [res for _, res in results if res["false_certificate"]]
    print(f"# false certificates (certified, fidelity target missed): {len(false)}")
