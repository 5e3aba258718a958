"""The refinement's Gaussian rows bought in rounds (:func:`.imprecise.refine_in_rounds`):
fewer rows where a held-out check passes, the full REFINE_OBS where it fails."""

from __future__ import annotations

import numpy as np

import distextract as dx
from distextract import targets
from distextract._oracle import NetworkOracle
from distextract.engine import imprecise
from distextract.fidelity import evaluate_fidelity

D, K, M = 16, 32, 1


def _run():
    net = targets.random_network(D, K, M, seed=21, bias_scale=1.0)
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=D, seed=21)
    # the benchmark's float32 match tolerances (bench_imprecise.MATCH_TOLERANCES)
    rep = evaluate_fidelity(res.model, net, n_points=4000, seed=1, cos_tol=1e-6, bias_rtol=1e-3)
    return res, rep


def _unknowns(res) -> int:
    k = res.model.hidden_dim
    return k * (D + 2) + M * (D + 1)


def test_held_out_check_passes_and_the_rest_is_not_bought():
    """d16-k32-m1 float32 seed 21: the first round's fit predicts the held-out rows within
    REFINE_HELDOUT_CHI2, so about REFINE_FIRST_OBS + REFINE_CHECK_OBS answers per unknown
    are bought, not REFINE_OBS, and the model is as exact."""
    res, rep = _run()
    ref = res.report["refinement"]
    assert ref["heldout_chi2_per_answer"] <= imprecise.REFINE_HELDOUT_CHI2
    assert "rounds" not in ref
    full = imprecise.REFINE_OBS * _unknowns(res) / M
    assert ref["rows_bought"] + ref["heldout_rows"] < 0.8 * full
    assert rep.rel_l2 <= 1e-6 and rep.all_matched and rep.spurious_neurons == 0, rep
    assert res.certified


def test_held_out_check_is_made_on_the_validation_points(monkeypatch):
    """The validation points (Gaussian rows of their own stream that no fit uses) are the
    held-out rows: none is bought for the check. With too few of them for the check
    (REFINE_CHECK_MIN_VALIDATION above the run's 128), REFINE_CHECK_OBS answers per unknown
    are bought instead, and the run pays exactly those rows more."""
    res, _ = _run()
    ref = res.report["refinement"]
    assert ref["heldout_on_validation"] and ref["heldout_rows"] == 0
    assert ref["heldout_chi2_per_answer"] <= imprecise.REFINE_HELDOUT_CHI2
    monkeypatch.setattr(imprecise, "REFINE_CHECK_MIN_VALIDATION", 10 ** 6)
    bought, _ = _run()
    ref_b = bought.report["refinement"]
    assert not ref_b["heldout_on_validation"]
    assert ref_b["heldout_rows"] == int(np.ceil(imprecise.REFINE_CHECK_OBS * _unknowns(res) / M))
    assert bought.queries - res.queries == ref_b["heldout_rows"]


def test_failed_held_out_check_buys_the_rest(monkeypatch):
    """With a held-out threshold no fit can meet (0), every run buys the rest up to
    REFINE_OBS in a second round over every row held, and still ends exact."""
    monkeypatch.setattr(imprecise, "REFINE_HELDOUT_CHI2", 0.0)
    res, rep = _run()
    ref = res.report["refinement"]
    assert ref["rounds"] == 2
    assert ref["heldout_chi2_per_answer"] > 0.0
    full = imprecise.REFINE_OBS * _unknowns(res) / M
    assert ref["rows_bought"] + ref["heldout_rows"] >= 0.95 * full
    assert rep.rel_l2 <= 1e-6 and rep.all_matched and rep.spurious_neurons == 0, rep


def test_rounds_off_buys_everything_at_once(monkeypatch):
    """REFINE_FIRST_OBS at REFINE_OBS: one round, no held-out rows (the engine before)."""
    monkeypatch.setattr(imprecise, "REFINE_FIRST_OBS", imprecise.REFINE_OBS)
    res, _ = _run()
    ref = res.report["refinement"]
    assert "heldout_rows" not in ref
    assert np.isclose(ref["rows_bought"], imprecise.REFINE_OBS * _unknowns(res) / M, rtol=0.2)
