"""Planted networks and line helpers shared by the stage tests (test_kinks, test_jacobians,
test_regions, test_tasks, test_neurons, test_pin): networks whose kinks, Jacobians and
neurons are known in closed form."""

from __future__ import annotations

import numpy as np

import distextract as dx
from distextract.engine import jacobians, kinks, lines
from distextract.engine._config import EPS64, ExtractConfig
from distextract.engine.tasks import output_scale


NOISE = 4 * EPS64  # the engine's floor for the relative precision of a float64 oracle
CFG = ExtractConfig()
SEGMENTS = 16  # the engine's first-line segment count for float64 answers


def _line(d: int, seed: int, index: int = 0) -> lines.Line:
    reach = CFG.line_reach * np.sqrt(d)
    return lines.make_line(index, d, np.random.SeedSequence(seed), 1.0, reach)


def _search_params(check_step: float = CFG.check_step) -> kinks.SearchParams:
    return kinks.SearchParams(noise=NOISE, check_factor=CFG.check_factor,
                              slope_step=CFG.slope_step, min_width=CFG.min_width,
                              check_step=check_step)


def _line_evaluator(net: dx.ReluNetwork, line: lines.Line, calls: list | None = None):
    """``evaluate(ts)`` for the kink search: the network along ``line``."""
    def evaluate(ts: np.ndarray):
        if calls is not None:
            calls.append(len(ts))
        Y = net.predict(line.points(ts))
        return Y, output_scale(Y, 1.0)
    return evaluate


def _query(net: dx.ReluNetwork):
    """``query(X)`` for the Jacobian stage."""
    def query(X: np.ndarray):
        Y = net.predict(X)
        return Y, output_scale(Y, 1.0)
    return query


def _crossings(net: dx.ReluNetwork, line: lines.Line) -> np.ndarray:
    """Sorted positions where ``line`` crosses the planted hyperplanes, inside its reach."""
    t = -(net.W @ line.u + net.b) / (net.W @ line.v)
    return np.sort(t[np.abs(t) < line.reach])


def _planted_on_line(line: lines.Line, ts, m: int, seed: int) -> dx.ReluNetwork:
    """A network whose k = len(ts) hyperplanes cross ``line`` exactly at ``ts``."""
    rng = np.random.default_rng(seed)
    ts = np.asarray(ts, dtype=np.float64)
    W = rng.standard_normal((ts.size, line.dim))
    b = -np.einsum("ij,ij->i", W, line.points(ts))
    A = rng.standard_normal((m, ts.size))
    return dx.ReluNetwork(W, b, A, rng.standard_normal(m))


def _true_jacobian(net: dx.ReluNetwork, x: np.ndarray) -> np.ndarray:
    on = (net.W @ x + net.b) > 0
    return net.A[:, on] @ net.W[on] + net.L


def _plan(net: dx.ReluNetwork, line: lines.Line, region: int, t0: float, h: float
          ) -> jacobians.RegionPlan:
    slope = _true_jacobian(net, line.points([t0])[0]) @ line.v
    return jacobians.RegionPlan(region=region, t0=t0, f0=None, scale0=0.0, slope=slope, h=h)


def _region_between_kinks(net, line):
    """(t0, half-width) of the widest region between two consecutive planted kinks."""
    t = _crossings(net, line)
    j = int(np.argmax(np.diff(t)))
    return 0.5 * (t[j] + t[j + 1]), 0.5 * (t[j + 1] - t[j])


def _measure_around_kinks(net, line):
    t = _crossings(net, line)
    edges = np.concatenate([[-line.reach], t, [line.reach]])
    centres = 0.5 * (edges[:-1] + edges[1:])
    plans = []
    for j, c in enumerate(centres):
        x = line.points([c])[0]
        dist = np.min(np.abs(net.W @ x + net.b) / np.linalg.norm(net.W, axis=1))
        plans.append(_plan(net, line, j, float(c), 0.05 * dist))
    regions = jacobians.measure_regions(_query(net), line, plans, NOISE, CFG.check_factor,
                                        CFG.stencil_checks)
    return regions, edges, t
