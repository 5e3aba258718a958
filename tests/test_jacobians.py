"""engine.jacobians: region Jacobians from stencils, exact on planted networks, and the
repair of a stencil row that crosses a hyperplane."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine import jacobians

from _planted import (
    NOISE,
    CFG,
    _line,
    _query,
    _true_jacobian,
    _plan,
    _region_between_kinks,
)


@pytest.mark.parametrize("m", [1, 4])
def test_region_jacobian_is_exact(m):
    d = 12
    net = dx.targets.random_network(d, 16, m, seed=7, skip=True)
    line = _line(d, 7)
    t0, _ = _region_between_kinks(net, line)
    x0 = line.points([t0])[0]
    # step well inside the region: distance to the nearest hyperplane
    dist = np.min(np.abs(net.W @ x0 + net.b) / np.linalg.norm(net.W, axis=1))
    (r,) = jacobians.measure_regions(_query(net), line, [_plan(net, line, 0, t0, 0.1 * dist)],
                                     NOISE, CFG.check_factor, CFG.stencil_checks)
    J = _true_jacobian(net, x0)
    assert r.status == "ok"
    assert_allclose(r.J, J, rtol=0, atol=1e-9 * np.max(np.abs(J)))
    assert_allclose(r.f0, net.predict(x0[None])[0], rtol=1e-14, atol=1e-14)
    # stencil centre + d-1 columns + the checks, all kept for the output solve
    assert r.X.shape == (d + CFG.stencil_checks, d)
    assert_allclose(r.Y, net.predict(r.X), rtol=1e-14, atol=1e-14)
    assert 0 < r.precision < 1e-9


def _crossed_column(d: int, k: int, seed: int, l: int, a_new, region: int = 0):
    """A random network plus a hyperplane parallel to the line that crosses stencil column
    ``l``'s ray at half the step, measured: (the region, its true Jacobian, the step, the
    line)."""
    base = dx.targets.random_network(d, k, len(a_new), seed=seed)
    line = _line(d, seed)
    t0, _ = _region_between_kinks(base, line)
    x0 = line.points([t0])[0]
    dist = np.min(np.abs(base.W @ x0 + base.b) / np.linalg.norm(base.W, axis=1))
    h = 0.2 * dist
    q = line.basis()[:, l]  # unit, orthogonal to v: the new hyperplane never meets the line
    w_new = 3.0 * q
    b_new = -w_new @ x0 - 3.0 * 0.5 * h  # w·x + b = 0 at x0 + (h/2)·q
    net = dx.ReluNetwork(np.vstack([base.W, w_new]), np.append(base.b, b_new),
                         np.hstack([base.A, np.reshape(a_new, (-1, 1))]), base.c)
    (r,) = jacobians.measure_regions(_query(net), line, [_plan(net, line, region, t0, h)],
                                     NOISE, CFG.check_factor, CFG.stencil_checks)
    return r, _true_jacobian(net, x0), h, line


def test_region_jacobian_repairs_a_crossed_stencil_row():
    """A hyperplane parallel to the line crosses exactly one stencil ray (column ``l``) at
    half the step: the checks locate the column and it is re-measured with a smaller step."""
    l = 3
    a_new = np.random.default_rng(0).standard_normal(2)
    r, J, h, line = _crossed_column(10, 8, 11, l, a_new)
    gam = jacobians.check_directions(line, 0, CFG.stencil_checks)
    assert np.all(np.abs(gam[:, l]) < 0.5)  # so no check point crosses it
    assert r.status == "repaired"
    assert r.h < h
    assert_allclose(r.J, J, rtol=0, atol=1e-9 * np.max(np.abs(J)))


@pytest.mark.parametrize("region", range(8))
def test_two_input_stencil_checks_see_a_crossed_column(region):
    """With two inputs the stencil has one column: its checks must be other points than
    the column's own (unit check directions in one dimension are ±1, and +1 repeats the
    column point, which then confirms whatever it crossed). A hyperplane crossing the
    column's ray at half the step is noticed whatever the region's seeded checks."""
    r, J, h, _ = _crossed_column(2, 6, 5, 0, [2.0], region)
    assert r.status in ("ok", "repaired")
    assert r.h < h
    assert_allclose(r.J, J, rtol=0, atol=1e-9 * np.max(np.abs(J)))


@pytest.mark.parametrize("l", [0, 1])
@pytest.mark.parametrize("region", range(4))
def test_three_input_stencil_with_two_checks_sees_a_crossed_column(l, region):
    """With three inputs two checks are used: a hyperplane crossing column ``l``'s ray at
    half the step is noticed (the column located and measured again, or the stencil
    measured again with a shorter step when a check crossed too) and the Jacobian is
    exact."""
    r, J, h, _ = _crossed_column(3, 6, 9, l, [2.0, -1.0], region)
    assert r.status in ("ok", "repaired")
    assert r.h < h
    assert_allclose(r.J, J, rtol=0, atol=1e-9 * np.max(np.abs(J)))
