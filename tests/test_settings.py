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
    QUERY_BOUND_FACTOR,
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


def test_imprecise_answers_get_a_query_bound_from_the_first_line():
    cfg = ExtractConfig()
    f64, f32 = Precision(noise=4 * EPS64), Precision(noise=2.0 ** -24)
    assert derive(cfg, f32, first_kinks=40, d=16).query_bound == QUERY_BOUND_FACTOR * 40 * 17
    assert derive(cfg, f32, first_kinks=40, d=16, bound_factor=2).query_bound == 2 * 40 * 17
    assert derive(cfg, f32, first_kinks=40, d=16, bound_factor=2,
                  opening=500).query_bound == 500 + 2 * 40 * 17
    assert derive(cfg, f64, first_kinks=40, d=16).query_bound is None  # float64: none
    assert derive(cfg, f32, d=16).query_bound is None  # before the first line


def test_a_run_that_reaches_its_query_bound_stops_as_budget():
    """With the bound at 1 × first-line kinks × (d + 1) after the first line (a float32 run
    needs about 3), the
    session refuses the request that would pass it: the run ends as "budget", not certified,
    the report names the bound and that it was reached; the bound is the run's own, the
    oracle's budget is untouched."""
    from distextract.engine.loop import Coordinator
    from distextract.engine.settings import LoopSettings, Settings

    d = 16
    net = dx.targets.random_network(d, 32, 1, seed=1)
    oracle = CountingOracle(NetworkOracle(net, output="float32"), budget=10**6)
    coord = Coordinator(LocalExecutor(oracle), d, ExtractConfig(), 0,
                        settings=Settings(loop=LoopSettings(query_bound_factor=1.0)))
    eng = coord.run()
    bound = eng.derived["query_bound"]
    opening = coord.st.opening_queries  # probe, validation points, first line
    assert eng.lines[0].queries < opening < eng.lines[0].queries + 29 + 128 + 1
    assert bound == opening + eng.lines[0].kinks.size * (d + 1)
    assert eng.stop_reason == "budget" and not eng.certified
    assert eng.derived["query_bound_reached"] is True
    # an evaluation is refused before it passes the bound; a line search once the rows
    # sent reach it (its size is not known in advance): one search's rows at most over,
    # besides the certificate's check rows and the repair's rows (repair.REPAIR_PAST_BOUND:
    # here 3,520 rows, bought beyond the bound within the oracle's budget)
    repaired = sum(r["rows"] for r in eng.certificate.get("repairs", []))
    assert oracle.queries - repaired <= bound + max(rec.queries for rec in eng.lines)
    free = Coordinator(LocalExecutor(CountingOracle(NetworkOracle(net, output="float32"))),
                       d, ExtractConfig(), 0).run()
    assert free.derived["query_bound_reached"] is False
    assert free.derived["query_bound"] - QUERY_BOUND_FACTOR * free.lines[0].kinks.size * (
        d + 1) == opening
