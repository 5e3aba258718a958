"""engine.settings: the settings derived from the config and the measured precision, their
place in the report, and stage settings passed to a run."""

from __future__ import annotations

import distextract as dx
from distextract._oracle import CountingOracle, NetworkOracle, as_oracle
from distextract.engine._config import EPS64, ExtractConfig
from distextract.engine.precision import Precision
from distextract.engine.settings import (
    CROSSING_RATE,
    IMPRECISE_LINE_SEGMENTS,
    LINE_SEGMENTS,
    WIDE_CROSSING_RATE,
    derive,
)
from distextract.engine.tasks import LocalExecutor


def test_settings_are_derived_from_the_config_and_the_measured_precision():
    cfg = ExtractConfig()
    f64, f32 = Precision(noise=4 * EPS64), Precision(noise=2.0 ** -24)
    d64, d32 = derive(cfg, f64), derive(cfg, f32)
    assert (d64.line_segments, d64.crossing_rate, d64.target_rel_l2) == (
        LINE_SEGMENTS, CROSSING_RATE, 1e-7)
    assert (d32.line_segments, d32.crossing_rate) == (IMPRECISE_LINE_SEGMENTS,
                                                      WIDE_CROSSING_RATE)
    assert d32.check_factor < d64.check_factor and d32.target_rel_l2 > 1e-7
    assert derive(cfg, f64, long_steps=True).crossing_rate == WIDE_CROSSING_RATE
    fixed = derive(cfg.updated(line_segments=5, stencil_crossing_rate=0.2,
                               target_rel_l2=1e-9), f32)
    assert (fixed.line_segments, fixed.crossing_rate, fixed.target_rel_l2) == (5, 0.2, 1e-9)


def test_the_derived_settings_are_in_the_report():
    net = dx.targets.random_network(8, 8, 1, seed=0)
    res = dx.extract(NetworkOracle(net, output="float32"), seed=0)
    der = res.report["derived"]
    assert der["imprecise"] is True and der["line_segments"] == IMPRECISE_LINE_SEGMENTS
    assert der["crossing_rate"] == res.report["precision"]["stencil_crossing_rate"]
    assert der["target_rel_l2"] == res.report["target_rel_l2"]


def test_a_run_takes_its_stage_settings_as_an_argument():
    """Settings are passed, not monkeypatched: with an opening budget factor no budget can
    meet, the probe and the validation points go in requests of their own."""
    from distextract.engine.loop import Coordinator
    from distextract.engine.settings import LoopSettings, Settings

    net = dx.targets.random_network(16, 32, 1, seed=1)
    sizes = {}
    for name, settings in {"default": None,
                           "apart": Settings(loop=LoopSettings(opening_budget_factor=10**6))
                           }.items():
        calls = []

        def f(X, calls=calls):
            calls.append(X.shape[0])
            return net.predict(X)
        oracle = CountingOracle(as_oracle(f, 16), budget=10**5)
        eng = Coordinator(LocalExecutor(oracle), 16, ExtractConfig(), 0,
                          settings=settings).run()
        assert eng.certified
        sizes[name] = calls[:2]
    assert sizes["default"][0] == 29 + 49  # probe and the first line's segment ends
    assert sizes["apart"] == [29, 128]  # probe, then the validation points
