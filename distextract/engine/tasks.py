"""Units of work a worker runs against its own oracle: search segments of a line, measure
region Jacobians, evaluate points. Plain functions over picklable dataclasses, so the same
code runs in-process or inside a Ray actor."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .jacobians import RegionPlan, measure_regions
from .kinks import SearchParams, guided_search, search_segments
from .lines import Line


def output_scale(Y: np.ndarray, fref: float, absolute: bool = False) -> np.ndarray:
    """Magnitude that sets the rounding error of each answer row: ``max|y| + fref`` for
    relative rounding (float64, float32), the constant ``fref`` for answers rounded to a fixed
    number of decimals (their error does not grow with the value)."""
    if absolute:
        return np.full(Y.shape[0], float(fref))
    return np.max(np.abs(Y), axis=1) + fref


@dataclass(frozen=True, eq=False)
class SearchTask:
    """Search ``segments`` of ``line`` for kinks of ``F``."""

    line: Line
    segments: list
    params: SearchParams
    fref: float
    known: dict = field(default_factory=dict)
    absolute: bool = False


@dataclass(frozen=True, eq=False)
class JacobianTask:
    """Measure the Jacobians of planned regions of ``line``.

    ``keep_rows``: return at most this many of each region's paid rows (a sample seeded by
    the line and the region's index; None: all). The coordinator keeps only a sample
    for the output solve, and a wide line's stencil rows are ``k·d`` vectors of ``d``
    inputs: 1.1 GB at d=128, k=8192; at d=1,024, k=1e5 they would not fit anywhere."""

    line: Line
    plans: list
    noise: float
    check_factor: float
    n_checks: int
    fref: float
    absolute: bool = False
    keep_rows: int | None = None


@dataclass(frozen=True, eq=False)
class GuidedTask:
    """Search ``line`` for kinks of ``F`` where known hyperplanes predict ``predicted``."""

    line: Line
    predicted: np.ndarray
    params: SearchParams
    fref: float
    absolute: bool = False
    pred_tol: np.ndarray | None = None
    pred_jump: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class EvalTask:
    """Evaluate the oracle at ``X`` (n, d)."""

    X: np.ndarray


def run_task(oracle, task):
    """Run one task with ``oracle`` (anything with ``query(X) -> Y``)."""
    if isinstance(task, EvalTask):
        return oracle.query(task.X)
    line, fref, absolute = task.line, task.fref, task.absolute

    def values(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Y = oracle.query(X)
        return Y, output_scale(Y, fref, absolute)

    if isinstance(task, SearchTask):
        return search_segments(lambda ts: values(line.points(ts)), task.segments, task.params,
                               task.known)
    if isinstance(task, GuidedTask):
        return [guided_search(lambda ts: values(line.points(ts)), task.predicted,
                              line.reach, task.params, task.pred_tol, task.pred_jump)]
    if isinstance(task, JacobianTask):
        regions = measure_regions(values, line, task.plans, task.noise, task.check_factor,
                                  task.n_checks)
        if task.keep_rows is not None:
            regions = [_sample_rows(r, task.keep_rows, line.seed) for r in regions]
        return regions
    raise TypeError(f"unknown task type {type(task).__name__}")


def _sample_rows(region, keep: int, line_seed: int):
    """``region`` with at most ``keep`` of its rows (seeded by its line and its index)."""
    n = region.X.shape[0]
    if n <= keep:
        return region
    rng = np.random.default_rng([line_seed, 3, region.region])
    idx = np.sort(rng.choice(n, size=keep, replace=False))
    return replace(region, X=region.X[idx], Y=region.Y[idx])


class LocalExecutor:
    """Runs tasks one after another in this process."""

    def __init__(self, oracle) -> None:
        self.oracle = oracle

    def map(self, tasks: list) -> list:
        return [run_task(self.oracle, t) for t in tasks]

    @property
    def queries(self) -> int:
        return int(self.oracle.queries)

    @property
    def remaining(self) -> int | None:
        """Rows left in the budget (None: no budget)."""
        return getattr(self.oracle, "remaining", None)

    def close(self) -> None:
        pass


__all__ = ["EvalTask", "GuidedTask", "JacobianTask", "LocalExecutor", "RegionPlan", "SearchTask", "run_task"]
