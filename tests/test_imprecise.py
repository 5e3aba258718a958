"""Imprecise answers (float32, rounded decimals): precision detection, hyperplanes polished
from kink positions, and end-to-end extractions against real rounding oracles."""

from __future__ import annotations

import numpy as np
import pytest

import distextract as dx
from distextract import targets
from distextract._oracle import NetworkOracle
from distextract.engine.precision import decimal_quantum, is_float32
from distextract.engine.polish import HyperplaneEvidence, anchor_points, locate_crossings
from distextract.fidelity import evaluate_fidelity


def test_decimal_quantum_and_float32_detection():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((20, 4)) * 3
    assert decimal_quantum(np.round(Y, 6)) == pytest.approx(1e-6)
    assert decimal_quantum(np.round(Y, 3)) == pytest.approx(1e-3)
    assert decimal_quantum(Y) is None
    f32 = Y.astype(np.float32).astype(np.float64)
    assert is_float32(f32) and not is_float32(Y)
    assert decimal_quantum(f32) is None


def test_bfloat16_and_float16_answers_are_not_taken_for_decimals():
    """bfloat16 values in [1, 2) are multiples of 2^-7, short decimals (7 digits): the
    decimal step 1e-7 is far finer than their binary rounding (2^-8 relative), so they are
    binary answers, not ``decimals:7`` (a run that took them for decimals bought 581,500
    rows and ended at rel L2 4.1)."""
    from distextract._oracle import _bfloat16
    from distextract.engine.precision import binary_rounding, measure_precision, probe_points

    rng = np.random.default_rng(4)
    Y = _bfloat16(1.0 + rng.random((200, 1)))
    assert np.all(Y == np.round(Y, 7))  # every answer a multiple of 1e-7 ...
    assert binary_rounding(Y) == 2.0 ** -8
    assert decimal_quantum(Y) is None  # ... but not decimal-rounded
    f16 = (10.0 + rng.random((200, 2))).astype(np.float16).astype(np.float64)
    assert decimal_quantum(f16) is None
    # coarse decimals that happen to be binary-exact stay decimals (0.5 steps of size ~10)
    halves = np.round(20.0 * rng.random((200, 1))) / 2
    assert decimal_quantum(halves) == pytest.approx(0.1)
    # the probe of a bfloat16 oracle measures a relative rounding of at least 2^-8
    net = targets.random_network(8, 6, 1, seed=0)
    X = probe_points(np.random.default_rng(0), 8, 1.0)
    p = measure_precision(_bfloat16(net.predict(X).reshape(X.shape[0], -1)), 0)
    assert not p.absolute and p.noise >= 2.0 ** -8


def _plane(rng, d):
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    return w, float(rng.standard_normal())


def test_evidence_fit_recovers_the_plane_from_points_on_it():
    rng = np.random.default_rng(1)
    d = 8
    w, b = _plane(rng, d)
    # prior off by about 1e-2 in direction
    w0 = w + 1e-2 * rng.standard_normal(d) / np.sqrt(d)
    b0 = b + 1e-2
    n0 = np.linalg.norm(w0)
    ev = HyperplaneEvidence.start(w0[None] / n0, np.array([b0 / n0]), np.array([2e-2]))
    errs = []
    for _ in range(d + 3):
        x = rng.standard_normal(d) * 3
        x -= (w @ x + b) * w  # project onto the plane
        v = rng.standard_normal(d)
        v /= np.linalg.norm(v)
        from distextract.engine.polish import Crossing
        ev.add([Crossing(neuron=0, t=0.0, sigma_t=1e-9, jump=np.zeros(1))], x, v)
        wf, bf, err = ev.fit(0)
        errs.append(err)
    cos = abs(float(wf @ w))
    assert 1 - cos < 1e-12
    assert bf * np.sign(wf @ w) == pytest.approx(b, abs=1e-7)
    assert errs[-1] < 1e-3 * errs[0]  # the error estimate falls as constraints come in


def test_locate_crossings_on_a_piecewise_linear_line():
    """A line through 5 planted ReLU units: every predicted crossing (predictions off by a
    little) is measured to ~1e-9; a prediction far off its kink is not accepted."""
    rng = np.random.default_rng(2)
    d, k, m = 6, 5, 3
    W = rng.standard_normal((k, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    A = rng.standard_normal((m, k))
    u = rng.standard_normal(d)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    t_true = np.sort(np.linspace(-4, 4, k) + 0.1 * rng.standard_normal(k))
    b = -(W @ u + t_true * (W @ v))  # kink of unit j at t_true[j]

    def f(ts):
        X = u[None] + ts[:, None] * v[None]
        return np.maximum(X @ W.T + b, 0) @ A.T

    a = A.T.copy()  # output vectors per unit normal
    tp = t_true + 1e-3 * rng.standard_normal(k)
    tp[2] = t_true[2] + 0.3  # far beyond its stated uncertainty
    tol = np.full(k, 1e-3)
    anchors = anchor_points(tp, 50.0)
    Y = f(anchors)
    found = locate_crossings(tp, np.arange(k), anchors, Y, np.full(anchors.size, 1e-15), W, a,
                             v, tol)
    got = {c.neuron: c.t for c in found}
    assert 2 not in got
    assert set(got) == {0, 1, 3, 4}
    for n, t in got.items():
        assert t == pytest.approx(t_true[n], abs=1e-9)


@pytest.mark.parametrize("output, rel_max", [("float32", 1e-6), ("round:6", 3e-6)])
def test_extract_imprecise_oracle(output, rel_max):
    """Real rounding oracles: float32 answers and answers rounded to 6 decimals. The
    Gauss-Newton refinement over bought Gaussian rows takes the model from the Jacobians'
    ~1e-3 to near the rounding (the float32 rounding is ~6e-8 relative) within about
    3·k·(d+1) queries, drops the neurons it leaves without effect, and the report says
    what it did."""
    d, k, m = 32, 64, 5
    net = targets.random_network(d, k, m, seed=3)
    oracle = NetworkOracle(net, output=output)
    res = dx.extract(oracle, input_dim=d, seed=0, on_mismatch="flag")
    rep = evaluate_fidelity(res.model, net, n_points=4000, seed=1)
    assert rep.rel_l2 <= rel_max, rep
    assert res.certified
    assert rep.all_matched, rep
    assert res.queries <= 3.2 * k * (d + 1)
    assert res.report["precision"]["relative_noise"] > 1e-8
    ref = res.report["refinement"]
    assert ref["kept"] and ref["rows_bought"] > 0
    assert ref["validation_rel_l2_after"] < 1e-2 * ref["validation_rel_l2_before"]


def test_binary_rounding_names_the_format():
    from distextract.engine.precision import binary_rounding

    Y = np.random.default_rng(0).standard_normal((20, 3))
    assert binary_rounding(Y) is None
    assert binary_rounding(Y.astype(np.float32)) == 2.0 ** -24
    assert binary_rounding(Y.astype(np.float16)) == 2.0 ** -11
    assert binary_rounding(np.round(Y, 6)) is None


def test_float32_single_output_precision_is_not_underestimated():
    """With one float32 output the probe's fine second differences are often all exactly 0;
    the run must still treat the answers as float32 (it once measured 4e-16 and split
    intervals on rounding until it ran out of memory)."""
    d, k = 64, 128
    net = targets.random_network(d, k, 1, seed=0)
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=d, seed=0,
                     on_mismatch="flag", budget=3000)
    assert res.report["precision"]["relative_noise"] >= 2.0 ** -24
    assert res.queries <= 3000


def test_float32_model_printed_with_shortest_repr():
    """A float32 model whose answers travel as their shortest decimal repr (what a JSON API
    in front of a float32 model typically sends): every answer has few enough digits to be a
    multiple of 1e-9 or so, which the probe took for decimal rounding; the absolute noise
    model built on that quantum failed every check on the larger answers and the first line
    split until the budget ran out (60,000 rows, 0 neurons). Now float32-level precision."""
    net = dx.targets.random_network(16, 32, 2, seed=3)
    W, b, A, c = (x.astype(np.float32) for x in (net.W, net.b, net.A, net.c))

    def oracle(X):
        H = np.maximum(X.astype(np.float32) @ W.T + b, 0) @ A.T + c
        return np.array([[float(str(v)) for v in row] for row in H.astype(np.float32)])

    res = dx.extract(oracle, input_dim=16, seed=0, budget=20_000)
    rep = dx.evaluate_fidelity(res.model, net, cos_tol=1e-5, bias_rtol=1e-3)
    assert res.certified and rep.rel_l2 <= 1e-6, rep
    assert rep.matched_neurons == 32 and rep.spurious_neurons == 0, rep


def test_prune_after_a_refinement_that_could_not_fit_drops_only_what_adds_nothing():
    """A model missing one true neuron (its fit stays far above the answers' float16
    errors) with two extra neurons: one whose output is at the noise, one active on no row
    held (undetermined). Both go; every true neuron the model has stays."""
    from distextract.engine.imprecise import PRUNE_MAX_CHI2, PRUNE_UNCONVERGED_NOISE, prune
    from distextract.engine.refine import RefineResult

    d, k = 6, 6
    net = targets.random_network(d, k, 1, seed=5)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1500, d))
    Y = NetworkOracle(net, output="float16").query(X).reshape(-1, 1)
    sigma = 2.0 ** -11 * (np.abs(Y[:, 0]) + 1.0)
    strong = int(np.argmax(np.abs(net.A[0])))
    keep_true = [j for j in range(k) if j != strong]  # the strongest neuron missing
    w_far = np.eye(d)[1]
    W = np.vstack([net.W[keep_true], np.eye(d)[0], w_far])
    b = np.concatenate([net.b[keep_true], [0.3, -50.0]])  # the last never active
    A = np.hstack([net.A[:, keep_true], [[1e-6, 0.5]]])
    model = dx.ReluNetwork(W, b, A, net.c, net.L)
    # where a refinement that could not fit would leave it (refinement would turn the spare
    # neuron into the missing one here)
    chi2 = float(np.mean(((Y - model.predict(X)) / sigma[:, None]) ** 2))
    res = RefineResult(model, chi2, chi2, 0, 0)
    assert res.chi2 > 100 * PRUNE_MAX_CHI2  # unconverged: a neuron is missing
    new, keep = prune(None, res, X, Y, sigma, np.arange(model.hidden_dim))
    # the spare and the never-active neuron go; so may a true one adding under 10 answer
    # errors (rms): here the true neuron 3, 2.2 errors, under the float16 observability floor
    H = np.maximum(X @ W.T + b, 0.0)
    contrib = np.sqrt(np.mean(H * H, axis=0)) * np.abs(A[0])
    noise = float(np.sqrt(np.mean(sigma ** 2)))
    must_stay = [j for j in range(len(keep_true)) if contrib[j] >= PRUNE_UNCONVERGED_NOISE * noise]
    assert len(must_stay) >= 4 and set(must_stay) <= set(keep.tolist())
    assert not {len(keep_true), len(keep_true) + 1} & set(keep.tolist())
    assert new.model.hidden_dim == keep.size and new.chi2 <= 1.05 * res.chi2


def test_locate_crossings_skips_zero_width_gaps_without_warnings():
    """Two predictions at the same point (two neurons whose predicted crossings coincide)
    leave a gap of zero width: the crossings beside it are skipped, quietly (no division by
    zero), and the others are still located."""
    import warnings

    rng = np.random.default_rng(3)
    d, k = 5, 4
    W = rng.standard_normal((k, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    A = rng.standard_normal((1, k))
    u, v = rng.standard_normal(d), rng.standard_normal(d)
    v /= np.linalg.norm(v)
    t_true = np.array([-3.0, -1.0, 1.0, 3.0])
    b = -(W @ u + t_true * (W @ v))
    tp = np.array([-3.0, -1.0, -1.0, 3.0])  # neuron 2 predicted where neuron 1 is
    anchors = anchor_points(tp, 50.0)
    X = u[None] + anchors[:, None] * v[None]
    Y = np.maximum(X @ W.T + b, 0) @ A.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = locate_crossings(tp, np.arange(k), anchors, Y, np.full(anchors.size, 1e-15),
                                 W, A.T.copy(), v, np.full(k, 1e-3))
    got = {c.neuron: c.t for c in found}
    assert 1 not in got and 2 not in got  # beside the zero-width gap
    assert got[0] == pytest.approx(-3.0, abs=1e-9)
