"""engine.certificate: held-out check rows near every hyperplane, bought after an imprecise
extraction, name the neurons the answers contradict; ``certified`` is never true with one."""

from __future__ import annotations

import numpy as np
import pytest

import distextract as dx
from distextract import targets
from distextract._oracle import NetworkOracle
from distextract.engine.certificate import (
    CHECK_ERRORS,
    below_floor,
    check_points,
    contribution,
    judge,
)
from distextract.engine import imprecise, repair, scan
from distextract.engine.tasks import output_scale


def _with_neuron(net, w, b, a):
    return dx.ReluNetwork(np.vstack([net.W, w]), np.append(net.b, b),
                          np.hstack([net.A, np.reshape(a, (-1, 1))]), net.c, net.L)


def test_check_points_straddle_each_hyperplane():
    net = targets.random_network(6, 5, 2, seed=0)
    X = check_points(net, np.random.default_rng(0), 2.0, offset=0.25)
    k = net.hidden_dim
    pre = X @ net.W.T + net.b  # (2k, k)
    norm = np.linalg.norm(net.W, axis=1)
    np.testing.assert_allclose(pre[np.arange(k), np.arange(k)] / norm, 0.5, rtol=1e-9)
    np.testing.assert_allclose(pre[k + np.arange(k), np.arange(k)] / norm, -0.5, rtol=1e-9)


def test_judge_names_a_neuron_whose_offset_is_wrong_and_says_which_side():
    """float16 answers of a planted network against a model equal to it but for one
    neuron's offset: only that neuron is named, its active side contradicted (other
    neurons' rows on that side are missed too, and explained by it); the exact model
    passes."""
    net = targets.random_network(8, 6, 1, seed=1)
    oracle = NetworkOracle(net, output="float16")
    X = check_points(net, np.random.default_rng(2), 1.0)
    Y = oracle.query(X)
    tol = 2.0 ** -11 * output_scale(Y, 1.0)
    assert judge(net, X, Y, tol)[0] == []
    b = net.b.copy()
    b[4] += 0.2 * np.linalg.norm(net.W[4])  # the largest output weight (-0.51)
    bad = dx.ReluNetwork(net.W, b, net.A, net.c, net.L)
    found, miss = judge(bad, X, Y, tol)
    # the rows of other neurons on its active side are missed too: explained by it
    assert np.sum(miss > CHECK_ERRORS) > 1
    assert [u.neuron for u in found] == [4]
    assert found[0].active > CHECK_ERRORS >= found[0].inactive
    assert "active side" in found[0].reason and found[0].ratio == pytest.approx(miss[4])


def test_contribution_is_the_rms_over_the_gaussian_bulk():
    rng = np.random.default_rng(0)
    net = targets.random_network(5, 4, 2, seed=2)
    X = rng.standard_normal((400_000, 5)) * 1.5
    H = np.maximum(X @ net.W.T + net.b, 0.0)
    want = np.sqrt(np.mean(H * H, axis=0)) * np.max(np.abs(net.A), axis=0)
    np.testing.assert_allclose(contribution(net.W, net.b, net.A, 1.5), want, rtol=1e-2)
    tiny = _with_neuron(net, np.eye(5)[0], 0.0, [1e-9, 0.0])
    assert below_floor(tiny, 2.0 ** -24, 1.0).tolist() == [False] * 4 + [True]


def test_a_neuron_the_answers_cannot_determine_is_not_certified_and_neurons_are_named(
        monkeypatch):
    """A planted neuron (x1 > 1 active, output weight 1e-5) whose slope change hides in the
    float32 rounding but whose contribution (2e-6 relative) is above the target: the run is
    not certified and the certificate names the model neurons whose check rows the answers
    contradict, with the reason; the same network without it is certified, nothing named.
    (A neuron the model lacks is seen only where check rows reach its active side: one active
    beyond x1 > 2.5 passes unseen, BENCHMARKS.md "Issue 19, part A".)"""
    d = 8
    base = targets.random_network(d, 8, 1, seed=0)
    net = _with_neuron(base, np.eye(d)[0], -1.0, [1e-5])
    # the refinement's retry over the line rows finds this neuron (rel L2 4.7e-8, direction
    # 9e-3 rad off, bias 0.8% off: unmatched at the benchmark's tolerances, and certified);
    # without it the model lacks the neuron, which is what this test checks; so does the
    # repair after the certificate (tests/test_repair.py), off here
    monkeypatch.setattr(imprecise, "REFINE_LINE_FUTILE", 0)
    monkeypatch.setattr(repair, "REPAIR_ROUNDS", 0)
    # ... and so does the search's chord check (test_a_hidden_neuron_is_found_by_the_chord_check)
    monkeypatch.setattr(scan, "IMPRECISE_CHORD_CHECK", False)
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=d, seed=0)
    assert not res.certified and res.stop_reason != "certified"
    cert, unc = res.report["certificate"], res.report["uncertain"]
    assert cert["checked"] and cert["rows"] == 2 * res.model.hidden_dim
    assert unc and all(u["ratio"] > CHECK_ERRORS and "tolerances" in u["reason"] for u in unc)
    assert cert["worst"] == pytest.approx(max(u["ratio"] for u in unc))
    clean = dx.extract(NetworkOracle(base, output="float32"), input_dim=d, seed=0)
    assert clean.certified and clean.report["uncertain"] == []
    assert clean.report["certificate"]["worst"] < CHECK_ERRORS
    # never bought for float64 answers (their golden traces stay as they were)
    f64 = dx.extract(NetworkOracle(base), input_dim=d, seed=0)
    assert f64.report["certificate"] is None and f64.report["uncertain"] is None


def test_a_hidden_neuron_is_found_by_the_chord_check(monkeypatch):
    """The planted neuron above (output weight 1e-5, its slope change under the float32
    slope errors of the search's short steps): the values show its bend, the search's chord
    check finds its kink, and the run ends with it matched at the benchmark's float32
    tolerances (cos 1e-6, bias 1e-3), rel L2 2.2e-8, named uncertain (1.3e-3 rad off, pinned
    no closer by the rows held); without the chord check the model lacks it (rel L2 2.3e-6)."""
    from distextract.fidelity import evaluate_fidelity

    d = 8
    net = _with_neuron(targets.random_network(d, 8, 1, seed=0), np.eye(d)[0], -1.0, [1e-5])
    monkeypatch.setattr(imprecise, "REFINE_LINE_FUTILE", 0)

    def run():
        res = dx.extract(NetworkOracle(net, output="float32"), input_dim=d, seed=0)
        rep = evaluate_fidelity(res.model, net, n_points=10_000, seed=1, cos_tol=1e-6,
                                bias_rtol=1e-3)
        return res, rep

    res, rep = run()
    assert rep.matched_neurons == rep.live_neurons == 9 and rep.spurious_neurons == 0
    assert rep.rel_l2 < 1e-7
    # found 1.3e-3 rad off, at the match tolerance: the rows held cannot pin it closer, and
    # the certificate says so (certificate.unpinned) rather than certify it
    assert not res.certified
    assert [u for u in res.report["uncertain"] if "pin its hyperplane" in u["reason"]]
    monkeypatch.setattr(scan, "IMPRECISE_CHORD_CHECK", False)
    monkeypatch.setattr(repair, "REPAIR_ROUNDS", 0)  # (it finds the neuron too: test_repair)
    res, rep = run()
    assert rep.matched_neurons < 9 and rep.rel_l2 > 1e-6 and not res.certified


def test_the_check_rows_pass_the_query_bound_not_the_budget():
    """A run ended by its query bound still buys its check rows (they are part of the cost);
    a budget too small for them leaves the model unchecked and uncertified. The repair runs
    past the bound too (repair.REPAIR_PAST_BOUND; here one round, no line searched, 3,520
    rows, validation 3.9e-2 -> 2.8e-8) and the run stays uncertified ("budget")."""
    from distextract._oracle import CountingOracle
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator
    from distextract.engine.settings import LoopSettings, Settings
    from distextract.engine.tasks import LocalExecutor

    d = 16
    net = targets.random_network(d, 32, 1, seed=1)
    oracle = CountingOracle(NetworkOracle(net, output="float32"))
    coord = Coordinator(LocalExecutor(oracle), d, ExtractConfig(), 0,
                        settings=Settings(loop=LoopSettings(query_bound_factor=1.0)))
    eng = coord.run()
    # the cap refused a request, then the check rows went out beyond it, and a repair
    # round's rows and fresh check rows too
    assert eng.stop_reason == "budget" and coord.session.cap_reached and not eng.certified
    kept = sum(r["kept"] for r in eng.certificate.get("repairs", []))
    assert kept >= 1 and eng.certificate["repairs"][0]["lines"] == 0
    assert eng.certificate["checked"]
    assert eng.certificate["rows"] == 2 * eng.model.hidden_dim * (1 + kept)
    assert oracle.queries > eng.derived["query_bound"]
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=d, seed=0,
                     budget=eng.derived["query_bound"])
    assert not res.certified and res.queries <= eng.derived["query_bound"]
    assert res.report["certificate"]["checked"] is False


def test_the_affine_map_replaces_a_model_it_beats():
    """At the end of an imprecise run the best affine map over the Gaussian rows held
    replaces a model that validates worse (here a model spoiled on purpose: output weights
    flipped), and report["affine_fallback"] says so; a good model stays."""
    from distextract._oracle import CountingOracle
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator
    from distextract.engine.solve import relative_error
    from distextract.engine.tasks import LocalExecutor

    d = 8
    net = targets.random_network(d, 8, 1, seed=0)
    coord = Coordinator(LocalExecutor(CountingOracle(NetworkOracle(net, output="float32"))),
                        d, ExtractConfig(), 0)
    eng = coord.run()
    assert eng.affine_fallback["taken"] is False
    assert eng.affine_fallback["affine_rel_l2"] > 100 * eng.val_rel_l2
    st, paid = coord.st, coord.paid
    good = st.model
    st.model = dx.ReluNetwork(good.W, good.b, -3.0 * good.A, good.c, good.L)
    st.val_rel_l2 = relative_error(st.model, paid.Xv, paid.Yv)[0]
    out = coord.affine_fallback()
    assert out["taken"] and out["model_rel_l2"] > out["affine_rel_l2"]
    assert st.model.hidden_dim == 0 and st.neurons.size == 0
    assert st.val_rel_l2 == out["affine_rel_l2"] == relative_error(st.model, paid.Xv,
                                                                    paid.Yv)[0]
    # the extraction's report: a dict on the imprecise path, None for float64 answers
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=d, seed=0)
    assert res.report["affine_fallback"]["taken"] is False
    assert dx.extract(NetworkOracle(net), input_dim=d, seed=0).report["affine_fallback"] is None


def test_the_summary_names_the_uncertain_neurons(tmp_path, monkeypatch):
    """summary.txt (``distextract report``) states the query bound, the check rows and each
    uncertain neuron with its reason; a taken affine fallback is said too."""
    from distextract.report import RunData, _certificate_lines, summarize
    from distextract.rundir import write_run_outputs

    d = 8
    base = targets.random_network(d, 8, 1, seed=0)
    net = _with_neuron(base, np.eye(d)[0], -1.0, [1e-5])
    # the refinement's retry over the line rows finds this neuron (rel L2 4.7e-8, direction
    # 9e-3 rad off, bias 0.8% off: unmatched at the benchmark's tolerances, and certified);
    # without it the model lacks the neuron, which is what this test checks; so does the
    # repair after the certificate (tests/test_repair.py), off here
    monkeypatch.setattr(imprecise, "REFINE_LINE_FUTILE", 0)
    monkeypatch.setattr(repair, "REPAIR_ROUNDS", 0)
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=d, seed=0)
    write_run_outputs(tmp_path, res)
    text = summarize(RunData(tmp_path))
    assert f"Query bound: {res.report['derived']['query_bound']:,} rows" in text
    unc = res.report["uncertain"]
    assert f"Certificate: {2 * res.model.hidden_dim:,} held-out check rows" in text
    assert f"{len(unc)} neuron" in text
    for u in unc:
        assert f"  neuron {u['neuron']}: {u['reason']}" in text
    lines = _certificate_lines({"affine_fallback": {"taken": True, "model_neurons": 40,
                                                    "affine_rel_l2": 0.3, "model_rel_l2": 0.5},
                                "certificate": {"checked": False}})
    assert lines[0].startswith("Affine fallback: the best affine map replaced the 40-neuron")
    assert "not checked" in lines[1]


def test_a_model_neuron_under_the_observability_floor_is_uncertain(certified_float32_coordinator):
    """A neuron the model holds whose whole contribution is under 16 roundings of the
    answers cannot be confirmed by them, however well its check rows agree: named, and the
    other neurons of a good float32 model are not."""
    from distextract.engine.certificate import certify

    d = 8
    coord = certified_float32_coordinator
    k = coord.st.model.hidden_dim
    coord.st.model = _with_neuron(coord.st.model, np.eye(d)[2], 0.2, [1e-9])
    out = certify(coord)
    assert [u["neuron"] for u in out["uncertain"]] == [k]
    assert "observability floor" in out["uncertain"][0]["reason"]


def test_a_hyperplane_the_rows_pin_loosely_is_uncertain():
    """Standard errors of each hyperplane from the rows held (certificate.unpinned): a
    neuron adding 1e-6 of the output, float32 answers over 300 rows, is pinned to ~4e-3 rad,
    looser than the float32 match tolerance (PIN_ANGLE at PIN_SIGMAS errors); the strong
    ones to ~1e-7. Four such weak neurons off by more than the tolerance, their check rows
    within the noise, once made a false certificate (hard:norm_range seed 34)."""
    from distextract.engine.certificate import PIN_ANGLE, PIN_SIGMAS, unpinned

    d = 6
    net = targets.random_network(d, 5, 1, seed=2)
    net = _with_neuron(net, np.eye(d)[1], 0.2, [1e-6])
    X = np.random.default_rng(3).standard_normal((300, d))
    Y = net.predict(X).astype(np.float32).astype(np.float64).reshape(-1, 1)
    sigma = 2.0 ** -24 * (np.abs(Y[:, 0]) + np.median(np.abs(Y)))
    ang, off = unpinned(net, X, Y, sigma, 1.0)
    assert PIN_SIGMAS * ang[-1] > PIN_ANGLE and np.all(PIN_SIGMAS * ang[:-1] < 1e-2 * PIN_ANGLE)
    assert off[-1] > 10 * np.max(off[:-1])
