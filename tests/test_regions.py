"""engine.regions: region plans along a line and the rounding error they leave."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine import kinks, regions
from distextract.engine.tasks import output_scale

from _planted import (
    NOISE,
    CFG,
    _line,
    _search_params,
    _line_evaluator,
    _planted_on_line,
    _plan,
    _measure_around_kinks,
)


def test_plans_for_some_regions_are_those_regions_plans():
    """make_plans(regions=...) plans only the regions asked for (the foot line of a pinned
    neuron crosses every hyperplane; two of its regions are measured), the same plans."""
    d = 8
    net = dx.targets.random_network(d, 40, 2, seed=3)
    line = _line(d, 3)
    scan = regions.merge_segments(kinks.search_segments(
        _line_evaluator(net, line), line.segments(8), _search_params()))
    scan = regions.add_points(scan, *_paid(net, line, regions.missing_points(scan, line.reach)))
    every = regions.make_plans(scan, line.reach, d, CFG.stencil_checks, 0.1)
    assert len(every) > 20
    some = {every[3].region, every[4].region, every[-1].region, 10_000}
    chosen = regions.make_plans(scan, line.reach, d, CFG.stencil_checks, 0.1, regions=some)
    assert [p.region for p in chosen] == sorted(some - {10_000})
    for p in chosen:
        q = next(q for q in every if q.region == p.region)
        assert (p.t0, p.h, p.scale0) == (q.t0, q.h, q.scale0)
        np.testing.assert_array_equal(p.slope, q.slope)


def _paid(net, line, t):
    Y = net.predict(line.points(t))
    return t, Y, output_scale(Y, 1.0)


def test_rounding_error_is_the_measured_precisions_in_quadrature():
    """The estimate the first line's step choice uses (regions.rounding_error) is what
    measure_regions then reports: sqrt(d · Σ precision²) over the measured regions; a
    step four times longer leaves a quarter of it."""
    d = 9
    line = _line(d, 21)
    net = _planted_on_line(line, np.array([-3.0, -0.5, 0.8, 2.5]), m=1, seed=21)
    measured, _edges, _t = _measure_around_kinks(net, line)
    assert all(r.status == "ok" for r in measured)
    plans = [_plan(net, line, r.region, r.t0, r.h) for r in measured]
    plans = [replace(p, f0=r.f0, scale0=float(output_scale(r.f0[None, :], 1.0)[0]))
             for p, r in zip(plans, measured)]
    est = regions.rounding_error(plans, NOISE, d)
    assert_allclose(est, np.sqrt(d * np.sum([r.precision ** 2 for r in measured])), rtol=1e-12)
    longer = [replace(p, h=4 * p.h) for p in plans]
    assert_allclose(regions.rounding_error(longer, NOISE, d), est / 4, rtol=1e-12)
    assert regions.rounding_error([], NOISE, d) == 0.0
