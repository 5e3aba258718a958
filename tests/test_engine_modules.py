"""The engine's stage modules on their own: the precision probe, the query session, the
paid-row store and output assembly, the named random streams, the derived settings.

Each against the real component (a real network behind a counting oracle, a real
:class:`~distextract.engine.tasks.LocalExecutor`); end-to-end runs are in test_extract.py
and test_golden.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract._errors import NonDeterministicOracle, TargetMismatch
from distextract._oracle import CountingOracle, NetworkOracle, as_oracle
from distextract.engine._config import EPS64, ExtractConfig
from distextract.engine.assemble import ModelState, assemble, no_worse
from distextract.engine.lines import line_reach, make_line
from distextract.engine.neurons import NeuronSet, crossings_inside
from distextract.engine.paid import PaidRows
from distextract.engine.precision import (
    IMPRECISE_NOISE,
    PROBE_LINES,
    PROBE_POINTS,
    Precision,
    measure_precision,
    probe_points,
)
from distextract.engine.seeds import Streams
from distextract.engine.session import EVAL_TASK_ROWS, QuerySession
from distextract.engine.settings import (
    CROSSING_RATE,
    IMPRECISE_LINE_SEGMENTS,
    LINE_SEGMENTS,
    WIDE_CROSSING_RATE,
    derive,
)
from distextract.engine.tasks import EvalTask, LocalExecutor


def _probe(oracle, seed=0, d=8):
    X = probe_points(np.random.default_rng(seed), d, 1.0)
    return measure_precision(oracle(X), queries=X.shape[0])


# ------------------------------------------------------------------------ precision
def test_probe_points_shape_and_the_repeat_one_ulp_away():
    X = probe_points(np.random.default_rng(0), 5, 2.0)
    assert X.shape == ((2 * PROBE_POINTS - 1) * PROBE_LINES + 1, 5)
    assert np.all(X[-1] == np.nextafter(X[0], np.inf))


def test_float64_answers_are_precise_and_float32_ones_imprecise():
    net = dx.targets.random_network(8, 16, 2, seed=0)
    p64 = _probe(net.predict)
    p32 = _probe(NetworkOracle(net, output="float32").query)
    assert not p64.imprecise and p64.noise < 1e-12 and not p64.absolute
    assert p32.imprecise and p32.noise >= 2.0 ** -24 > IMPRECISE_NOISE


def test_answers_rounded_to_decimals_have_an_absolute_error():
    net = dx.targets.random_network(8, 16, 2, seed=0)
    p = _probe(NetworkOracle(net, output="round:4").query)
    assert p.absolute and p.imprecise
    assert p.noise * p.fref >= 1e-4 * (1 - 1e-9)  # at least the quantum


def test_a_random_oracle_and_a_smooth_one_are_named():
    net = dx.targets.random_network(8, 16, 1, seed=0)
    with pytest.raises(NonDeterministicOracle, match="same input twice"):
        _probe(dx.targets.noisy_oracle(net, 1e-6, seed=0).predict)
    with pytest.raises(TargetMismatch, match="smooth activation"):
        _probe(dx.targets.gelu_network(8, 16, 1, seed=0).predict)


def test_precision_is_frozen():
    with pytest.raises(AttributeError):
        Precision().noise = 1.0


# -------------------------------------------------------------------------- session
class _Recording(LocalExecutor):
    def __init__(self, oracle, workers=1, max_batch=None, request_limited=False):
        super().__init__(oracle)
        self.workers, self.max_batch, self.request_limited = workers, max_batch, request_limited
        self.calls = []

    def map(self, tasks):
        self.calls.append([t.X.shape[0] for t in tasks if isinstance(t, EvalTask)])
        return super().map(tasks)


def test_session_cuts_evaluations_for_the_slots_unless_requests_are_rationed():
    net = dx.targets.random_network(4, 8, 1, seed=0)
    X = np.random.default_rng(0).standard_normal((700, 4))
    for limited, want in ((False, [88] * 7 + [84]), (True, [EVAL_TASK_ROWS, 188])):
        ex = _Recording(CountingOracle(as_oracle(net)), workers=8, max_batch=16,
                        request_limited=limited)
        Y = QuerySession(ex, parallelism=8).eval(X)
        assert_allclose(Y, net.predict(X), rtol=0, atol=1e-12)
        assert ex.calls == [want]


def test_session_affords_what_the_budget_holds():
    net = dx.targets.random_network(4, 8, 1, seed=0)
    s = QuerySession(LocalExecutor(CountingOracle(as_oracle(net), budget=100)))
    s.eval(np.zeros((60, 4)))
    assert s.queries == 60 and s.remaining == 40
    assert s.affords(40) and not s.affords(41)
    assert QuerySession(LocalExecutor(CountingOracle(as_oracle(net)))).affords(10**9)


# ------------------------------------------------------------- paid rows, assembly
def _neurons_of(net):
    norm = np.linalg.norm(net.W, axis=1)
    k = net.hidden_dim
    return NeuronSet(net.W / norm[:, None], net.b / norm, net.A.T * norm[:, None],
                     np.full(k, 1e-12), np.zeros(k), np.zeros(k, dtype=int), np.zeros(k),
                     np.ones(k, dtype=int))


def test_assemble_fits_the_output_layer_over_the_paid_rows():
    net = dx.targets.random_network(6, 10, 2, seed=3)
    rng = np.random.default_rng(0)
    paid = PaidRows(6)
    for _ in range(3):
        X = rng.standard_normal((40, 6))
        paid.add(X, net.predict(X))
    paid.Xv = rng.standard_normal((64, 6))
    paid.Yv = net.predict(paid.Xv)
    state = assemble(_neurons_of(net), paid, 2, np.random.default_rng(1), imprecise=False,
                     target=1e-7, solve_max_unknowns=3000)
    assert isinstance(state, ModelState) and state.val_rel_l2 < 1e-12
    X = rng.standard_normal((100, 6))
    assert_allclose(state.model.predict(X), net.predict(X), rtol=0, atol=1e-10)


def test_paid_rows_sample_is_seeded_and_draws_from_every_block():
    paid = PaidRows(2, solve_row_budget=10)
    for i in range(4):
        paid.add(np.full((50, 2), float(i)), np.full((50, 1), float(i)))
    X1, Y1 = paid.sample(40, 1, np.random.default_rng(5))
    X2, _ = paid.sample(40, 1, np.random.default_rng(5))
    assert X1.shape == (40, 2) and np.array_equal(X1, X2)
    assert set(np.unique(Y1)) == {0.0, 1.0, 2.0, 3.0}
    assert paid.total == 200 and paid.sample(500, 1, np.random.default_rng(0))[0].shape == (200, 2)
    assert paid.per_region(100) == 8  # the floor: SOLVE_ROWS_PER_REGION


def test_the_accept_rule():
    assert no_worse(1.0, 1.0) and no_worse(1.009, 1.0) and not no_worse(1.02, 1.0)
    assert no_worse(5.0, 1.0, allowed=5.0) and not no_worse(1.0 + 1e-9, 1.0, slack=1.0)


# ------------------------------------------------------------- streams, lines, settings
def test_named_streams_are_independent_and_reproducible():
    a, b = Streams.from_seed(7), Streams.from_seed(7)
    assert np.array_equal(a.validation().standard_normal(4), b.validation().standard_normal(4))
    draws = [s.standard_normal(4) for s in (a.probe(), a.validation(), a.assemble(0),
                                            a.assemble(1), a.solve_rows(0), a.pin_shift(),
                                            a.orient(0), a.remeasure_line(0), a.refine_rows())]
    assert len({d.tobytes() for d in draws}) == len(draws)


def test_line_reach_is_one_definition():
    line = make_line(0, 9, np.random.SeedSequence(0), 2.0, line_reach(9, 64.0, 2.0))
    assert line.reach == 64.0 * 3.0 * 2.0


def test_predicted_crossings_inside_a_line_are_filtered_and_sorted():
    t = np.array([3.0, -1.0, np.inf, 10.0, -10.0 * (1 - 1e-12), np.nan, 0.5])
    assert crossings_inside(t, 10.0, 1e-9).tolist() == [1, 6, 0]
    assert crossings_inside(t, 10.0, 1e-9, tol=np.array([1, np.inf, 1, 1, 1, 1, 1.0])
                            ).tolist() == [6, 0]


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
