"""engine.pin: a hyperplane's offset pinned from one kink along its own normal."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

import distextract as dx
from distextract.engine import pin

from _planted import (
    NOISE,
    CFG,
)


def _unit(net: dx.ReluNetwork):
    """The planted hyperplanes as unit normals, normalised biases, output vectors."""
    norm = np.linalg.norm(net.W, axis=1)
    return net.W / norm[:, None], net.b / norm, net.A.T * norm[:, None]


def test_pin_locates_an_offset_bias_along_the_normal():
    """A weak neuron whose bias is off by 1e-5 and direction by ~1e-6 rad: the kink on the
    line along its normal through its foot gives the planted normalised bias to ~1e-10 and
    the slope change there its output vector."""
    net = dx.targets.random_network(16, 24, 2, seed=11)
    A = net.A.copy()
    A[:, 5] *= 1e-3  # a weak neuron: small output vector
    net = dx.ReluNetwork(net.W, net.b, A, net.c, net.L)
    U, beta, a = _unit(net)
    rng = np.random.default_rng(12)
    W = U.copy()
    W[5] += 1e-6 * rng.standard_normal(16)
    W[5] /= np.linalg.norm(W[5])
    b = beta.copy()
    b[5] += 1e-5
    err = np.full(24, 1e-9)
    err[5] = 1e-5
    plans = pin.pin_plans(W, b, err, np.array([5]), 1.0)
    assert len(plans) == 1 and plans[0].neuron == 5
    p = plans[0]
    Y = net.predict(p.points())
    sigma = NOISE * (np.max(np.abs(Y), axis=1) + 1.0)
    fit = pin.pin_fit(p, Y, sigma, a[5] * (1 + 1e-4), CFG.check_factor)
    assert fit is not None
    t, jump = fit
    assert abs((b[5] - t) - beta[5]) < 1e-10 * max(1.0, abs(beta[5])), (b[5] - t, beta[5])
    # the slope change along the unit normal is the output vector (given 1e-4 off)
    assert_allclose(jump, a[5], rtol=1e-8)


def test_pin_refuses_a_side_crossed_by_an_unknown_hyperplane():
    """A hyperplane the plan does not know crossing between the two points of one side
    changes the measured slope change: no offset is taken from it (the same plan without
    it pins)."""
    net = dx.targets.random_network(8, 6, 2, seed=13)
    U, beta, a = _unit(net)
    plans = pin.pin_plans(U, beta, np.full(6, 1e-9), np.array([2]), 10.0)
    assert len(plans) == 1
    p = plans[0]
    Y = net.predict(p.points())
    sigma = NOISE * (np.max(np.abs(Y), axis=1) + 1.0)
    assert pin.pin_fit(p, Y, sigma, a[2], CFG.check_factor) is not None
    # an unknown neuron whose hyperplane crosses the plan's line between its left points
    w = np.random.default_rng(15).standard_normal(8)
    x = p.foot + 0.5 * (p.t[0] + p.t[1]) * p.normal
    hidden = dx.ReluNetwork(np.vstack([net.W, w]), np.append(net.b, -w @ x),
                            np.hstack([net.A, np.ones((2, 1))]), net.c, net.L)
    Y = hidden.predict(p.points())
    sigma = NOISE * (np.max(np.abs(Y), axis=1) + 1.0)
    assert pin.pin_fit(p, Y, sigma, a[2], CFG.check_factor) is None


def test_pin_plans_skip_a_foot_other_hyperplanes_pass_through():
    """All-zero biases: every hyperplane passes through the origin, every foot: no gap."""
    rng = np.random.default_rng(14)
    W = rng.standard_normal((10, 6))
    assert pin.pin_plans(W, np.zeros(10), np.full(10, 1e-6), np.arange(10), 1.0) == []


def test_pin_plans_ignore_a_distant_nearly_parallel_neighbour():
    """A neighbour hyperplane nearly parallel to the pin line, a unit away from the foot and
    known only to 1e-3, crosses the line far off: it must not block the pin (its uncertain
    far crossing blocked 299 of 306 pins in a norm-range network)."""
    rng = np.random.default_rng(23)
    w = rng.standard_normal(8)
    w /= np.linalg.norm(w)
    q = rng.standard_normal(8)
    q -= (q @ w) * w
    q /= np.linalg.norm(q)
    u = q + 1e-4 * w  # nearly orthogonal to w: nearly parallel to the line along w
    u /= np.linalg.norm(u)
    foot = -0.3 * w  # neuron 0: w·x + 0.3 = 0
    b_u = -(u @ foot) - 1.0  # one unit from the foot, crossing the line ~1e4 away
    plans = pin.pin_plans(np.vstack([w, u]), np.array([0.3, b_u]), np.array([1e-6, 1e-3]),
                          np.array([0]), 1.0)
    assert len(plans) == 1
    assert plans[0].t[0] < -0.5 and plans[0].t[-1] > 0.5  # the whole input-scale window
