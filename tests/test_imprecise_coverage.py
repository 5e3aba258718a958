"""Issue 19: float32 answers on networks whose hyperplanes lie further out (biases ~ N(0, 1)
and wider), the generators and answer formats of the imprecise benchmark suite, and the
rows the refinement buys near rarely crossed hyperplanes."""

from __future__ import annotations

import numpy as np
import pytest

import distextract as dx
from distextract import targets
from distextract._errors import ConfigError
from distextract._http import HTTPOracle
from distextract._oracle import CountingOracle, NetworkOracle, output_transform
from distextract.engine.birth import add_missing_neurons, fit_hinge
from distextract.engine.coverage import (
    COVER_WIDTH,
    cover_points,
    cover_rows_wanted,
    rare_side_rows,
    rare_side_share,
)
from distextract.engine import imprecise, refine
from distextract.engine.loop import Coordinator
from distextract.engine.tasks import LocalExecutor
from distextract.engine.refine import RefineResult, refine_network
from distextract.fidelity import evaluate_fidelity
from distextract.serve import launch_server_process

#: Neuron-match tolerances for float32 answers (the benchmark's, bench_imprecise).
COS_TOL, BIAS_RTOL = 1e-6, 1e-3


def test_random_network_bias_scale_and_norm_spread():
    base = targets.random_network(16, 400, 2, seed=4)
    wide = targets.random_network(16, 400, 2, seed=4, bias_scale=2.0)
    np.testing.assert_array_equal(wide.W, base.W)
    np.testing.assert_allclose(wide.b, 4.0 * base.b, rtol=1e-15)  # same draws, sd 0.5 -> 2
    assert wide.metadata["bias_scale"] == 2.0 and "bias_scale" not in base.metadata
    spread = targets.random_network(16, 400, 2, seed=4, norm_spread=100.0)
    factor = np.linalg.norm(spread.W, axis=1) / np.linalg.norm(base.W, axis=1)
    assert factor.min() >= 0.1 and factor.max() <= 10.0 and factor.max() / factor.min() > 30
    # hyperplanes unchanged: (w, b) rescaled together
    np.testing.assert_allclose(spread.b / factor, base.b, rtol=1e-12)
    with pytest.raises(ConfigError, match="bias_scale must be a positive"):
        targets.random_network(4, 4, bias_scale=0.0)
    with pytest.raises(ConfigError, match="norm_spread must be a finite number >= 1"):
        targets.random_network(4, 4, norm_spread=0.5)


def test_float16_and_bfloat16_answers():
    Y = np.array([[1.0, 1.0 / 3.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -2.5e-3]])
    bf = output_transform("bfloat16")(Y)
    # 8 significant bits, ties to even: 1 + 2^-8 -> 1, 1 + 3·2^-8 -> 1 + 2^-6
    np.testing.assert_array_equal(bf[0, [0, 2, 3]], [1.0, 1.0, 1.0 + 2.0 ** -6])
    assert abs(bf[0, 1] - 1 / 3) <= 2.0 ** -9 / 3 * 2 and abs(bf[0, 4] / -2.5e-3 - 1) <= 2.0 ** -8
    np.testing.assert_array_equal(output_transform("float16")(Y), Y.astype(np.float16))
    with pytest.raises(ConfigError, match="float16, bfloat16"):
        output_transform("float8")


def test_cover_rows_go_to_far_hyperplanes_only():
    rng = np.random.default_rng(0)
    d = 8
    W = rng.standard_normal((3, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    b = np.array([0.1, -2.5, 4.0])  # distances 0.1, 2.5, 4 input scales
    share = rare_side_share(W, b)
    np.testing.assert_allclose(share, [0.4602, 0.00621, 3.17e-5], rtol=1e-3)
    held = rare_side_rows(W, b, rng.standard_normal((1000, d)))
    assert held[0] > 400 and held[1] < 20 and held[2] <= 2
    want = cover_rows_wanted(held, d)
    assert want[0] == 0 and want[1] > 0 and want[2] >= want[1]
    X = cover_points(W, b, want, rng)
    assert X.shape == (want.sum(), d)
    # each neuron's rows straddle its hyperplane within a few COVER_WIDTHs
    for i, rows in ((1, X[:want[1]]), (2, X[want[1]:])):
        z = rows @ W[i] + b[i]
        assert np.abs(np.mean(z)) < COVER_WIDTH and 0.3 < np.mean(z > 0) < 0.7
        assert np.std(z) == pytest.approx(COVER_WIDTH, rel=0.3)


def test_cover_rows_count_rows_not_answers():
    """A neuron needs COVER_OBS·(d + 2) *rows* on its rare side whatever the number of
    outputs: each row's m answers see its hyperplane at one point. (Counting answers gave a
    far neuron of a ten-output d=30 network 5 answers' worth, i.e. nothing once 10 rows
    were held: the m = 10 error floor.)"""
    d = 30
    want = cover_rows_wanted(np.array([0, 10, 47, 48, 100]), d)
    np.testing.assert_array_equal(want, [96, 76, 2, 0, 0])  # 2·(1.5·32 − held), at least 0


def _judge(res, net):
    rep = evaluate_fidelity(res.model, net, n_points=10_000, seed=7, cos_tol=COS_TOL,
                            bias_rtol=BIAS_RTOL)
    return rep


def test_float32_far_hyperplanes_are_recovered():
    """Biases ~ N(0, 4): a third of the hyperplanes lie over 2 input scales out, where the
    refinement's Gaussian rows barely land; without rows near them this network ended at
    rel L2 6.9e-4 with 28 of 30 live neurons matched and 3 spurious — and certified."""
    net = targets.random_network(16, 32, 1, seed=0, bias_scale=2.0)
    res = dx.extract(NetworkOracle(net, output="float32"), seed=0)
    rep = _judge(res, net)
    assert rep.rel_l2 <= 1e-6, rep
    assert rep.all_matched and rep.spurious_neurons == 0, rep
    assert res.certified and res.report["target_rel_l2"] <= 1e-6


def test_float32_ten_outputs_far_hyperplanes_are_recovered():
    """d16-k32-m10, biases ~ N(0, 4): with cover rows counted in answers (m per row) the far
    neurons got a tenth of the rows they need and this network ended at rel L2 1.6e-5, 29
    of 30 live neurons matched, 1 spurious (precision_floor); counted in rows, every neuron
    is pinned."""
    net = targets.random_network(16, 32, 10, seed=0, bias_scale=2.0)
    res = dx.extract(NetworkOracle(net, output="float32"), seed=0)
    rep = _judge(res, net)
    assert rep.rel_l2 <= 1e-6, rep
    assert rep.all_matched and rep.spurious_neurons == 0, rep
    assert res.certified


@pytest.mark.parametrize("seed", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_float32_certificate_only_when_the_target_is_met(seed):
    """biases ~ N(0, 1), d16-k32-m1: whatever the model reaches, ``certified`` holds only
    when the model meets the float32 target (rel L2 <= 1e-6, every live neuron matched, none
    spurious). Seed 1 (slow: ~170 s on the loaded 2-core machine) needs the cover rows topped
    up for a neuron a recheck line added. Seed 2's searched lines miss a weak neuron far out (strength 2e-3, distance
    1.9); it used to end at 3.9e-4 with 5 spurious neurons; the refinement's outliers now
    supply it."""
    net = targets.random_network(16, 32, 1, seed=seed, bias_scale=1.0)
    res = dx.extract(NetworkOracle(net, output="float32"), seed=seed)
    rep = _judge(res, net)
    met = rep.rel_l2 <= 1e-6 and rep.all_matched and rep.spurious_neurons == 0
    assert res.certified == met, (res.stop_reason, rep)
    if not met:
        assert res.stop_reason == "precision_floor"


def test_float32_answers_from_a_real_server(tmp_path):
    """``distextract serve --output float32`` on loopback, biases ~ N(0, 1)."""
    net = targets.random_network(8, 16, 2, seed=1, bias_scale=1.0)
    path = tmp_path / "net.arrow"
    net.save(path)
    with launch_server_process(path, output="float32") as server:
        with HTTPOracle(server.url, 8) as oracle:
            res = dx.extract(oracle, seed=0)
    rep = _judge(res, net)
    assert res.report["precision"]["relative_noise"] == 2.0 ** -24
    assert rep.rel_l2 <= 1e-6 and rep.all_matched and rep.spurious_neurons == 0, rep
    assert res.certified


def test_fit_hinge_from_its_active_rows():
    rng = np.random.default_rng(3)
    d = 6
    X = rng.standard_normal((400, d))
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    b, a = -1.2, np.array([0.5, -2.0])
    R = np.maximum(X @ w + b, 0.0)[:, None] * a[None, :]
    start = (X @ w + b) > 0.3  # part of the active side only
    wf, bf, af = fit_hinge(X, R, start)
    assert wf @ w == pytest.approx(1.0, abs=1e-12) and bf == pytest.approx(b, abs=1e-12)
    np.testing.assert_allclose(af, a, rtol=1e-12)
    assert fit_hinge(X, R, np.zeros(400, dtype=bool)) is None


def test_a_missing_weak_neuron_is_added_from_the_refinement_outliers():
    """A model lacking one weak neuron far out (active on ~3% of the rows), refined over
    float32 answers: the misfit stays far above the noise until the neuron fitted to the
    robust refit's rejected rows is added; then it is at the noise and the neuron matches."""
    net = targets.random_network(8, 12, 1, seed=5)
    j = 3
    W, b, A = net.W.copy(), net.b.copy(), net.A.copy()
    b[j] = -1.9 * np.linalg.norm(W[j])
    A[:, j] *= 0.05
    target = dx.ReluNetwork(W, b, A, net.c, net.L)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8))
    Y = output_transform("float32")(target.predict(X))
    sigma = 2.0 ** -24 * np.maximum(np.abs(Y), np.median(np.abs(Y)))
    keep = np.setdiff1d(np.arange(12), [j])
    start = dx.ReluNetwork(W[keep], b[keep], A[:, keep], net.c, net.L)
    res = refine_network(start, X, Y, sigma)
    assert res.chi2 > 1e3
    res2, born = add_missing_neurons(res, X, Y, sigma)
    assert born == 1 and res2.chi2 <= 1.0
    new_w = res2.model.W[-1] / np.linalg.norm(res2.model.W[-1])
    true_w = W[j] / np.linalg.norm(W[j])
    assert abs(new_w @ true_w) > 1 - 1e-8


def test_births_of_several_missing_neurons_are_judged_two_at_a_time(monkeypatch):
    """Five equal weak neurons missing (far out, ~3% active each), float32 answers: the
    first birth takes the misfit 3.5e11 -> 1.2e11 per answer, the second only to 6.3e10
    (above BIRTH_GAIN, below BIRTH_HOLD): held, the third from it brings the two below
    BIRTH_GAIN² (2.4e10) and all three are kept, each near a missing neuron (refused alone,
    the run kept one birth). The existing neurons' steps unbounded (refine.VP_MAX_MOVE None),
    as when this was measured: bounded, they stay bent further towards the missing ones
    (3.8e11 per answer before the births) and the second birth reaches 1.07e11, short of
    BIRTH_GAIN²."""
    monkeypatch.setattr(refine, "VP_MAX_MOVE", None)
    net = targets.random_network(8, 14, 1, seed=5)
    W, b, A = net.W.copy(), net.b.copy(), net.A.copy()
    miss = [3, 7, 11, 1, 5]
    for j in miss:
        b[j] = -1.9 * np.linalg.norm(W[j])
        A[:, j] *= 0.05 / np.abs(A[:, j]).max() / np.linalg.norm(W[j])
    target = dx.ReluNetwork(W, b, A, net.c, net.L)
    X = np.random.default_rng(0).standard_normal((900, 8))
    Y = output_transform("float32")(target.predict(X))
    sigma = 2.0 ** -24 * np.maximum(np.abs(Y), np.median(np.abs(Y)))
    keep = np.setdiff1d(np.arange(14), miss)
    start = dx.ReluNetwork(W[keep], b[keep], A[:, keep], net.c, net.L)
    res = refine_network(start, X, Y, sigma)
    res2, born = add_missing_neurons(res, X, Y, sigma)
    assert born == 3 and res2.chi2 < 0.1 * res.chi2
    U = W / np.linalg.norm(W, axis=1)[:, None]
    new = res2.model.W[-3:] / np.linalg.norm(res2.model.W[-3:], axis=1)[:, None]
    # two neurons still missing bend them: within 0.08 rad (random directions: ~1.3)
    assert np.all(np.max(np.abs(new @ U[miss].T), axis=1) > 0.99)


def test_a_refinement_that_validates_as_well_is_kept(monkeypatch):
    """A refinement whose validation error equals the current one (to rounding) is kept
    (REFINE_TIE): its misfit is the one the recheck reads, not the previous run's."""
    net = targets.random_network(8, 12, 2, seed=3, bias_scale=1.0)
    eng = Coordinator(LocalExecutor(CountingOracle(NetworkOracle(net, output="float32"))), 8,
                      dx.ExtractConfig(), 0)
    eng.run()
    st = eng.st
    assert st.refinement is not None
    model, val = st.model, st.val_rel_l2
    # a refit that moves nothing, at a misfit of its own
    monkeypatch.setattr(imprecise, "refine_network",
                        lambda m, X, Y, sigma, method="vp": RefineResult(m, 0.25, 0.25, 0, 0))
    imprecise.refine(eng, extra_rows=False, cover=False)
    assert st.model is model and st.val_rel_l2 == val
    assert st.refinement["chi2_per_answer"] == 0.25


def test_float32_stuck_refinement_is_retried_over_the_line_rows():
    """d16-k32-m1, biases ~ N(0, 0.25), seed 6: the refinement over the Gaussian rows stops
    at χ² 8.6e6 per answer, a neuron misplaced; it used to end at rel L2 4.7e-4 with 12 of
    32 neurons matched and 18 spurious (precision_floor). Refitted over the line rows held
    too, then over the Gaussian rows again, it reaches the answers' errors."""
    net = targets.random_network(16, 32, 1, seed=6, bias_scale=0.5)
    res = dx.extract(NetworkOracle(net, output="float32"), seed=6)
    rep = _judge(res, net)
    assert rep.rel_l2 <= 1e-6, rep
    assert rep.all_matched and rep.spurious_neurons == 0, rep
    assert res.report["refinement"]["line_row_retries_kept"] >= 1, res.report["refinement"]


def test_line_row_retry_only_after_a_fit_that_failed(monkeypatch):
    """imprecise.refine: a fit over the Gaussian rows at most REFINE_FIT_CHI2 per answer is
    not retried; above it, the retry fits the Gaussian rows plus at most REFINE_LINE_ROWS
    line rows per Gaussian row, then the Gaussian rows again (real fits, counted)."""
    net = targets.random_network(8, 12, 1, seed=3, bias_scale=1.0)
    eng = Coordinator(LocalExecutor(CountingOracle(NetworkOracle(net, output="float32"))), 8,
                      dx.ExtractConfig(), 0)
    eng.run()
    n_gauss, n_line = eng.paid.Xs.shape[0], eng.paid.total
    assert n_gauss > 0 and n_line > 0
    rows = []
    real = imprecise.fit_answers

    def counted(model, X, Y, sigma, **kw):
        rows.append(X.shape[0])
        return real(model, X, Y, sigma, **kw)

    monkeypatch.setattr(imprecise, "fit_answers", counted)
    before = eng.st.refinement.get("line_row_retries", 0)
    monkeypatch.setattr(imprecise, "REFINE_FIT_CHI2", np.inf)
    imprecise.refine(eng, extra_rows=False, cover=False)
    assert rows == [n_gauss]
    assert eng.st.refinement["line_row_retries"] == before
    monkeypatch.setattr(imprecise, "REFINE_FIT_CHI2", -1.0)
    imprecise.refine(eng, extra_rows=False, cover=False)
    wide = n_gauss + min(int(imprecise.REFINE_LINE_ROWS * n_gauss), n_line)
    assert rows[1:] == [n_gauss, wide, n_gauss]
    assert eng.st.refinement["line_row_retries"] == before + 1
    # none where a CG iteration over the Gaussian rows costs more than REFINE_LINE_MAX_WORK
    monkeypatch.setattr(imprecise, "REFINE_LINE_MAX_WORK", 0.0)
    del rows[:]
    imprecise.refine(eng, extra_rows=False, cover=False)
    assert rows == [n_gauss] and eng.st.refinement["line_row_retries"] == before + 1
    monkeypatch.setattr(imprecise, "REFINE_LINE_MAX_WORK", np.inf)
    # a retry that does not take the misfit below REFINE_LINE_GAIN of the first fit's is
    # futile; after REFINE_LINE_FUTILE of them the run retries no more
    monkeypatch.setattr(imprecise, "REFINE_LINE_GAIN", 0.0)
    futile = eng.st.refinement["line_row_retries_futile"]
    while eng.st.refinement["line_row_retries_futile"] < imprecise.REFINE_LINE_FUTILE:
        imprecise.refine(eng, extra_rows=False, cover=False)
        assert eng.st.refinement["line_row_retries_futile"] == futile + 1
        futile += 1
    del rows[:]
    imprecise.refine(eng, extra_rows=False, cover=False)
    assert rows == [n_gauss]
