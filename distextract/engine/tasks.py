"""Units of work a worker runs against its own oracle: search segments of a line, measure
region Jacobians, evaluate points. Plain functions over picklable dataclasses, so the same
code runs in-process or inside a Ray actor."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._model import ReluNetwork
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
    """Search ``segments`` of ``line`` for kinks of ``F`` (or of ``F - model``)."""

    line: Line
    segments: list
    params: SearchParams
    fref: float
    model: ReluNetwork | None = None
    known: dict = field(default_factory=dict)
    absolute: bool = False


@dataclass(frozen=True, eq=False)
class JacobianTask:
    """Measure the Jacobians of planned regions of ``line`` (of ``F - model`` if given)."""

    line: Line
    plans: list
    noise: float
    check_factor: float
    n_checks: int
    fref: float
    model: ReluNetwork | None = None
    absolute: bool = False


@dataclass(frozen=True, eq=False)
class GuidedTask:
    """Search ``line`` for kinks of ``F`` where known hyperplanes predict ``predicted``."""

    line: Line
    predicted: np.ndarray
    params: SearchParams
    fref: float
    model: ReluNetwork | None = None
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
    line, model, fref, absolute = task.line, task.model, task.fref, task.absolute

    def values(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Y = oracle.query(X)
        sc = output_scale(Y, fref, absolute)
        if model is not None:
            Y = Y - model.predict(X)
        return Y, sc

    if isinstance(task, SearchTask):
        return search_segments(lambda ts: values(line.points(ts)), task.segments, task.params,
                               task.known)
    if isinstance(task, GuidedTask):
        return [guided_search(lambda ts: values(line.points(ts)), task.predicted,
                              line.reach, task.params, task.pred_tol, task.pred_jump)]
    if isinstance(task, JacobianTask):
        return measure_regions(values, line, task.plans, task.noise, task.check_factor,
                               task.n_checks)
    raise TypeError(f"unknown task type {type(task).__name__}")


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
