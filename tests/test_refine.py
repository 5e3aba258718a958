"""engine.refine: Gauss-Newton refinement of every parameter over Gaussian rows."""

from __future__ import annotations

import numpy as np
import pytest

import distextract as dx
from distextract.engine import imprecise, refine, solve


def _perturbed(net: dx.ReluNetwork, scale: float, seed: int) -> dx.ReluNetwork:
    rng = np.random.default_rng(seed)

    def jiggle(M):
        return M * (1.0 + scale * rng.standard_normal(M.shape))

    return dx.ReluNetwork(jiggle(net.W), jiggle(net.b), jiggle(net.A), jiggle(net.c),
                          jiggle(net.L))


@pytest.mark.parametrize("method", ["vp", "joint"])
@pytest.mark.parametrize("rounding", [None, np.float32])
def test_refine_recovers_every_parameter(rounding, method):
    """Gauss-Newton over Gaussian rows takes a model whose every parameter is off by 1e-3
    (relative) to the answers' own precision: exact answers to ~1e-10, float32 answers to
    about their rounding; the weighted misfit ends near one answer error per answer."""
    net = dx.targets.random_network(8, 12, 3, seed=4)
    net = dx.ReluNetwork(net.W, net.b, net.A, net.c, 0.3 * np.ones((3, 8)))
    start = _perturbed(net, 1e-3, seed=5)
    X = np.random.default_rng(6).standard_normal((400, 8))
    Y = net.predict(X)
    noise = 1e-12
    if rounding is not None:
        Y = Y.astype(rounding).astype(np.float64)
        noise = float(np.finfo(rounding).eps)
    sigma = noise * (np.max(np.abs(Y), axis=1) + 1.0)
    res = refine.refine_network(start, X, Y, sigma, method=method)
    Xt = np.random.default_rng(7).standard_normal((2000, 8))
    before = solve.relative_error(start, Xt, net.predict(Xt))[0]
    after = solve.relative_error(res.model, Xt, net.predict(Xt))[0]
    assert before > 1e-4
    assert after < (1e-9 if rounding is None else 1e-6), (before, after)
    assert res.steps >= 1 and res.chi2 < 1e-6 * res.chi2_start
    assert res.chi2 < (1e3 if rounding is None else 10.0)


@pytest.mark.parametrize("method", ["vp", "joint"])
def test_refine_silences_a_spurious_neuron(method):
    """A neuron the target does not have gets an output vector at the noise: the
    coordinator's pruning then finds it without effect."""
    net = dx.targets.random_network(6, 8, 4, seed=8)
    rng = np.random.default_rng(9)
    extra_w = rng.standard_normal((1, 6))
    start = _perturbed(dx.ReluNetwork(np.vstack([net.W, extra_w]), np.append(net.b, 0.2),
                                      np.hstack([net.A, 0.05 * np.ones((4, 1))]), net.c,
                                      net.L), 1e-4, seed=10)
    X = rng.standard_normal((600, 6))
    Y = net.predict(X)
    res = refine.refine_network(start, X, Y, np.full(X.shape[0], 1e-12), method=method)
    strength = np.linalg.norm(res.model.A, axis=0) * np.linalg.norm(res.model.W, axis=1)
    assert strength[-1] < 1e-8 * np.median(strength[:-1]), strength


def test_refine_rejects_a_nonpositive_error():
    net = dx.targets.random_network(4, 3, 1, seed=1)
    X = np.ones((10, 4))
    with pytest.raises(ValueError, match="positive standard error"):
        refine.refine_network(net, X, net.predict(X), np.zeros(10))


def _float32_problem(d, k, m, n, seed, bias_scale=0.5):
    net = dx.targets.random_network(d, k, m, seed=seed, bias_scale=bias_scale)
    start = _perturbed(net, 1e-3, seed=seed + 1)
    X = np.random.default_rng(seed + 2).standard_normal((n, d))
    Y = net.predict(X).astype(np.float32).astype(np.float64)
    sigma = 2.0 ** -24 * (np.max(np.abs(Y), axis=1) + np.median(np.abs(Y)))
    return net, start, X, Y, sigma


def test_variable_projection_recovers_a_planted_network_from_float32_answers():
    """d12-k24-m3, every parameter 1e-3 off, 8 float32 answers per unknown: variable
    projection reaches the answers' rounding (χ² per answer below 1, fresh points to
    ~1e-7), in fewer conjugate-gradient iterations than the joint solver on the same rows
    (its Schur-complement blocks see what the output layer absorbs)."""
    # (seed 12: every neuron has over 100 rows on its rarer side; with a dozen, as at seed
    # 11, its hyperplane is not determined by the rows, by either method)
    net, start, X, Y, sigma = _float32_problem(12, 24, 3, 1100, seed=12)
    vp = refine.refine_network(start, X, Y, sigma, method="vp")
    joint = refine.refine_network(start, X, Y, sigma, method="joint")
    Xt = np.random.default_rng(12).standard_normal((4000, 12))
    err = solve.relative_error(vp.model, Xt, net.predict(Xt))[0]
    assert err < 3e-7, err
    assert vp.chi2 < 1.0 and vp.chi2 < 1e-6 * vp.chi2_start
    assert vp.chi2 <= 1.5 * joint.chi2, (vp.chi2, joint.chi2)
    assert vp.cg_iterations < joint.cg_iterations / 3, (vp.cg_iterations, joint.cg_iterations)


def test_variable_projection_output_layer_is_the_least_squares_solve():
    """At the refined hidden layer, ``(A, L, c)`` is the weighted least-squares fit of the
    answers by ``(relu(Wx + b), x, 1)``; per-answer errors (a different weight per output)
    take the per-output solves."""
    net, start, X, Y, _ = _float32_problem(6, 8, 2, 500, seed=3)
    rng = np.random.default_rng(4)
    sigma = 1e-7 * np.exp(rng.uniform(-1, 1, Y.shape))  # per answer
    res = refine.refine_network(start, X, Y, sigma, method="vp")
    m = res.model
    Phi = np.concatenate([np.maximum(X @ m.W.T + m.b, 0.0), X, np.ones((500, 1))], axis=1)
    for i in range(2):
        w = 1.0 / sigma[:, i]
        theta = np.linalg.lstsq(Phi * w[:, None], Y[:, i] * w, rcond=None)[0]
        np.testing.assert_allclose(np.concatenate([m.A[i], m.L[i], [m.c[i]]]), theta,
                                   rtol=1e-6, atol=1e-9)
    assert res.chi2 < 1.0


def test_preconditioner_blocks_updated_from_changed_rows_equal_a_rebuild():
    """The per-neuron sums ``Σ ω x̃ x̃ᵀ`` over active rows, moved to a new activation
    pattern from the rows that changed, equal the sums computed afresh."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    X1 = np.concatenate([X, np.ones((300, 1))], axis=1)
    w2 = np.repeat(rng.uniform(0.5, 2.0, (300, 1)), 3, axis=1)
    W, b = rng.standard_normal((7, 5)), rng.standard_normal(7)
    inc = refine._Blocks(X1, w2, rowwise=True)
    inc.update(X @ W.T + b > 0)
    W2, b2 = W + 0.3 * rng.standard_normal(W.shape), b + 0.3 * rng.standard_normal(7)
    mask2 = X @ W2.T + b2 > 0
    inc.update(mask2)
    fresh = refine._Blocks(X1, w2, rowwise=True)
    fresh.update(mask2)
    assert inc.updated > 0 and inc.rebuilt == 7
    np.testing.assert_allclose(inc.S, fresh.S, rtol=1e-12, atol=1e-12)


def test_fit_answers_tries_the_joint_refinement_above_its_threshold(monkeypatch):
    """imprecise.fit_answers: variable projection alone at a misfit under
    REFINE_FIT_CHI2; above it, the joint refinement from the same start too (where its
    iterations cost at most REFINE_JOINT_MAX_WORK), and the lower misfit of the two."""
    net, start, X, Y, sigma = _float32_problem(6, 8, 1, 300, seed=5)
    vp = refine.refine_network(start, X, Y, sigma, method="vp")
    joint = refine.refine_network(start, X, Y, sigma, method="joint")
    calls = []
    real = refine.refine_network

    def counted(model, X, Y, sigma, method="vp"):
        calls.append(method)
        return real(model, X, Y, sigma, method=method)

    monkeypatch.setattr(imprecise, "refine_network", counted)
    res, born = imprecise.fit_answers(start, X, Y, sigma)
    assert calls == ["vp"] and res.chi2 == vp.chi2 and born == 0
    monkeypatch.setattr(imprecise, "REFINE_FIT_CHI2", -1.0)
    res, born = imprecise.fit_answers(start, X, Y, sigma)
    assert calls[1:] == ["vp", "joint"] and born == 0
    assert res.chi2 == min(vp.chi2, joint.chi2)
    # ... and only where its conjugate-gradient iteration is cheap enough
    monkeypatch.setattr(imprecise, "REFINE_JOINT_MAX_WORK", 1e3)
    res, born = imprecise.fit_answers(start, X, Y, sigma)
    assert calls[3:] == ["vp"] and res.chi2 == vp.chi2


def test_refine_rejects_an_unknown_method():
    net = dx.targets.random_network(4, 3, 1, seed=1)
    X = np.ones((10, 4))
    with pytest.raises(ValueError, match="method must be 'vp' or 'joint', got 'lm'"):
        refine.refine_network(net, X, net.predict(X), np.ones(10), method="lm")


def test_variable_projection_bounds_each_neurons_step_over_six_decades_of_weight_norms(
        monkeypatch):
    """``||w_i||`` log-uniform over 1e-3..1e3 (targets' norm_range, d8-k16, not a benchmark
    network), float32 answers, every neuron present and 2e-3 rad off: with each neuron's
    step bounded (refine.VP_MAX_MOVE) the fit reaches the answers' errors and every neuron
    comes back; unbounded, the strong neurons' misfit swings weak ones up to 1 rad away
    (χ² 204 per answer, rel L2 2.7e-6)."""
    net = dx.targets.hard_case("norm_range", 8, 16, seed=3)
    d, k = 8, 16
    norms = np.linalg.norm(net.W, axis=1)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((int(2.5 * (k * (d + 2) + d + 1)), d))
    Y = net.predict(X).astype(np.float32).astype(np.float64)
    sigma = np.finfo(np.float32).eps * (np.max(np.abs(Y), axis=1) + np.median(np.abs(Y)))
    D = rng.standard_normal(net.W.shape)
    D -= np.sum(D * net.W, axis=1, keepdims=True) * net.W / norms[:, None] ** 2
    W = net.W + 2e-3 * D / np.linalg.norm(D, axis=1, keepdims=True) * norms[:, None]
    start = dx.ReluNetwork(W, net.b, net.A, net.c, net.L)
    Xt = np.random.default_rng(2).standard_normal((4000, d))

    def fit():
        res = refine.refine_network(start, X, Y, sigma)
        U = res.model.W / np.linalg.norm(res.model.W, axis=1)[:, None]
        angle = np.arccos(np.clip(np.abs(np.sum(U * net.W / norms[:, None], axis=1)), 0, 1))
        return res, angle, solve.relative_error(res.model, Xt, net.predict(Xt))[0]

    res, angle, err = fit()
    assert res.chi2 < 1.0 and err < 1e-7, (res.chi2, err)
    assert angle.max() < 3e-3, angle
    monkeypatch.setattr(refine, "VP_MAX_MOVE", None)
    res, angle, err = fit()
    assert res.chi2 > 10.0 and err > 1e-6 and angle.max() > 0.1, (res.chi2, err)


@pytest.mark.parametrize("weight", [1.0, 1e32])
def test_variable_projection_products_in_float32_match_float64(monkeypatch, weight):
    """On wide refinements the conjugate-gradient products run in float32 (refine.OP_DTYPE,
    here forced on a small one: refine.OP_MIN_WORK 0): they agree with the float64 products to
    float32's rounding, stay finite when the answers' weights 1/σ² reach
    1e64 (σ 1e-32, far outside float32's range before the power-of-two scaling), and the
    refinement reaches the same model as with float64 products."""
    net, start, X, Y, sigma = _float32_problem(12, 24, 3, 1100, seed=12)
    sigma = sigma / weight
    Xt = np.random.default_rng(12).standard_normal((4000, 12))
    out = {}
    for dtype in (np.float64, np.float32):
        monkeypatch.setattr(refine, "OP_DTYPE", dtype)
        monkeypatch.setattr(refine, "OP_MIN_WORK", 0.0)
        res = refine.refine_network(start, X, Y, sigma, method="vp")
        out[dtype] = (res, solve.relative_error(res.model, Xt, net.predict(Xt))[0])
    (r64, e64), (r32, e32) = out[np.float64], out[np.float32]
    assert np.isfinite(r32.chi2) and r32.chi2 < 1e-6 * r32.chi2_start
    assert e32 < 3e-7 and e32 < 2.0 * e64 + 1e-8, (e32, e64)
    assert r32.chi2 <= 1.5 * r64.chi2, (r32.chi2, r64.chi2)
    # the operator itself, at the start: float32 products within float32's rounding
    n, d = X.shape
    X1 = np.concatenate([X, np.ones((n, 1))], axis=1)
    w2 = np.broadcast_to((1.0 / sigma ** 2)[:, None], Y.shape)
    fit = refine._OutputFit(X1, np.maximum(X @ start.W.T + start.b, 0.0), Y, w2, True,
                            np.concatenate([start.A, start.L, start.c[:, None]], axis=1))
    mask = (X @ start.W.T + start.b) > 0
    A = fit.theta[:, :start.W.shape[0]]
    blocks = refine._Blocks(X1, w2, True)
    blocks.update(mask)
    ops = {}
    x_scale = refine._pow2(X1)
    for dtype in (np.float64, np.float32):  # (the operand's dtype is the products')
        ops[dtype] = refine._Hidden(X1, (X1 * x_scale).astype(dtype), x_scale, mask, A, w2,
                                    fit, blocks)
    dN = np.random.default_rng(3).standard_normal((start.W.shape[0], d + 1)) * 1e-20
    for f in ("apply", "normal"):
        a64, a32 = getattr(ops[np.float64], f)(dN), getattr(ops[np.float32], f)(dN)
        assert np.all(np.isfinite(a32))
        assert np.linalg.norm(a32 - a64) <= 1e-5 * np.linalg.norm(a64), f
    # Jᵀ·S and the projection on their own (float32: other operand orders, the projection's
    # solve through the inverse Cholesky factor)
    S = np.random.default_rng(4).standard_normal(Y.shape) * w2
    t64, t32 = ops[np.float64].apply_t(S), ops[np.float32].apply_t(S)
    assert np.linalg.norm(t32 - t64) <= 1e-5 * np.linalg.norm(t64)
    V = ops[np.float64].apply(dN)
    p64, p32 = fit.project(V), fit.project(V, np.float32)
    assert np.all(np.isfinite(p32))
    assert np.linalg.norm(p32 - p64) <= 1e-4 * np.linalg.norm(p64)


def test_float32_products_only_for_wide_refinements_of_neurons_of_like_scale():
    """refine._op_dtype: float64 for a small refinement (float32 saves little there) and for
    neurons whose output scales span more than OP_MAX_SPREAD (hard:norm_range: a weak
    neuron's part of J·δ would keep float32's precision relative to the strong ones');
    float32 for a wide one of like-scaled neurons (d128-k256-m10 over 80,000 rows)."""
    rng = np.random.default_rng(0)
    wide = dx.targets.random_network(128, 256, 10, seed=0)
    X = rng.standard_normal((4000, 128))
    # a CG iteration over 80,000 rows of this network costs ~1.4e10 flops; over 4,000, 7e8
    assert refine.refine_work(4000, 256, 128, 10) >= refine.OP_MIN_WORK
    assert refine._op_dtype(X, wide, 10, 1.0) == np.float32
    assert refine._op_dtype(X[:100], wide, 10, 1.0) == np.float64  # 1.8e7 flops
    spread = dx.targets.hard_case("norm_range", 128, 256, seed=0)
    assert refine._op_dtype(X, spread, spread.output_dim, 1.0) == np.float64


def test_wide_refinements_stop_their_conjugate_gradients_at_their_own_tolerance(monkeypatch):
    """refine.VP_CG_TOL_WIDE: where the products run in float32 (here forced on a small
    refinement), the conjugate gradients stop at it, not at VP_CG_TOL: looser, fewer
    iterations, and the refinement still reaches the answers' errors."""
    net, start, X, Y, sigma = _float32_problem(12, 24, 3, 1100, seed=12)
    Xt = np.random.default_rng(12).standard_normal((4000, 12))
    monkeypatch.setattr(refine, "OP_MIN_WORK", 0.0)
    out = {}
    for tol in (1e-4, 3e-2):
        monkeypatch.setattr(refine, "VP_CG_TOL_WIDE", tol)
        res = refine.refine_network(start, X, Y, sigma, method="vp")
        out[tol] = (res, solve.relative_error(res.model, Xt, net.predict(Xt))[0])
    (tight, e_tight), (loose, e_loose) = out[1e-4], out[3e-2]
    assert loose.cg_iterations < tight.cg_iterations, (loose.cg_iterations, tight.cg_iterations)
    assert loose.chi2 < 1e-6 * loose.chi2_start and e_loose < 3e-7, (loose.chi2, e_loose)
    # the float64 products keep VP_CG_TOL
    monkeypatch.setattr(refine, "OP_MIN_WORK", np.inf)
    a = refine.refine_network(start, X, Y, sigma, method="vp").cg_iterations
    monkeypatch.setattr(refine, "VP_CG_TOL_WIDE", 1e-4)
    assert refine.refine_network(start, X, Y, sigma, method="vp").cg_iterations == a
