"""engine.lines: random lines through the input space, their reach, and the model along them."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine.lines import line_reach, make_line

from _planted import (
    _line,
)


def test_model_values_along_a_line_equal_the_model_at_its_points():
    """The residual search evaluates the model along a line from its pre-activations'
    affine form (k·d once, not per point); it must agree with predict (skip term too)."""
    net = dx.targets.random_network(24, 40, 3, seed=5, skip=True)
    line = _line(24, 8, index=2)
    t = np.sort(np.random.default_rng(1).uniform(-30, 30, 1100))
    want = net.predict(line.points(t))
    got = line.model_values(net, t, block=256)
    assert_allclose(got, want, rtol=0, atol=1e-12 * np.max(np.abs(want)))


def test_line_reach_is_one_definition():
    line = make_line(0, 9, np.random.SeedSequence(0), 2.0, line_reach(9, 64.0, 2.0))
    assert line.reach == 64.0 * 3.0 * 2.0
