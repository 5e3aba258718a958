"""End-to-end extraction through the public API: planted networks, hard cases, the digits
network, exact query accounting, budgets and every error path of :func:`distextract.extract`.

Sizes are small (the big networks belong in ``python -m distextract.bench``).
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

import distextract as dx

EXACT_REL_L2 = 1e-8  # issue 2: random and trained networks, float64 oracle
DATA = Path(__file__).parent / "data"
HARD_REL_L2 = 1e-6  # issue 2: every hard case


class RowCounter:
    """A callable oracle that counts the rows it actually receives."""

    def __init__(self, net: dx.ReluNetwork, flat: bool = False) -> None:
        self.net = net
        self.flat = flat
        self.rows = 0
        self.calls = 0
        self.sizes: list[int] = []

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.rows += X.shape[0]
        self.calls += 1
        self.sizes.append(X.shape[0])
        Y = self.net.predict(X)
        return Y[:, 0] if self.flat else Y


def _fidelity(res: dx.ExtractionResult, net: dx.ReluNetwork) -> dx.FidelityReport:
    return dx.evaluate_fidelity(res.model, net, n_points=10_000, seed=123)


# --------------------------------------------------------------------- random networks
@pytest.mark.parametrize("d,k,m,seed", [
    (8, 8, 1, 0), (16, 32, 1, 1), (32, 64, 1, 2), (32, 16, 1, 6),
    (16, 24, 3, 3), (24, 48, 3, 4), (32, 16, 3, 5),
])
def test_random_network_is_recovered(d, k, m, seed):
    net = dx.targets.random_network(d, k, m, seed=seed)
    res = dx.extract(net, seed=seed)
    rep = _fidelity(res, net)
    assert rep.live_neurons == k
    assert rep.matched_neurons == k, rep
    assert rep.spurious_neurons == 0, rep
    assert rep.rel_l2 <= EXACT_REL_L2, rep
    assert res.certified and res.stop_reason == "certified"
    assert res.model.input_dim == d and res.model.output_dim == m
    assert res.val_rel_l2 <= EXACT_REL_L2
    assert res.report["queries"] == res.queries
    assert res.report["hidden_found"] == res.model.hidden_dim


def test_extraction_is_reproducible_from_the_seed():
    net = dx.targets.random_network(12, 16, 2, seed=9)
    a = dx.extract(net, seed=4)
    b = dx.extract(net, seed=4)
    assert a.queries == b.queries
    np.testing.assert_array_equal(a.model.W, b.model.W)
    np.testing.assert_array_equal(a.model.A, b.model.A)
    assert a.model.metadata["seed"] == 4


# random_network(128, 512, seed=0): neuron 223 of the model has output weight 9e-5 (the
# median is ~1e-2); its Jacobian jump left the normalised bias off by 1.3e-6, past DESIGN.md's
# 1e-6, until the pin stage re-located it along its normal.
# random_network(128, 1024, seed=3): a neuron with output weight 7e-6 kept 1 - cos = 1.9e-9
# from its Jacobian jump (DESIGN.md matches at 1e-9) until its hyperplane was fitted to kinks
# located on it; two strong neurons measured 20-50x less precisely than the median made most
# of rel L2 2.8e-8 until they were measured again at their foot; the stencil rounding the
# first line's planned steps would leave (estimated 1e-7) made them longer: 1.8e-8 -> 9e-9.
@pytest.mark.parametrize("k,seed,rel_l2", [(512, 0, EXACT_REL_L2), (1024, 3, EXACT_REL_L2)])
def test_weak_neurons_are_pinned_to_the_matching_tolerances(k, seed, rel_l2):
    net = dx.targets.random_network(128, k, 1, seed=seed)
    res = dx.extract(net, seed=seed)
    rep = _fidelity(res, net)
    assert rep.matched_neurons == rep.live_neurons == k, rep
    assert rep.spurious_neurons == 0, rep
    assert res.certified and rep.rel_l2 <= rel_l2, rep


# random_network(128, 1024, seed=1): one neuron has output weight 3.9e-7 (the median is 2e-2).
# The first line crosses it 2.5e-3 from a strong neuron, under the slope error of the search's
# short slope steps; on later lines its slope change (~2e-8) hides under the model's own error
# at its neighbours' kinks. It left rel L2 5.3e-7 (precision_floor) until one line searched
# in full with long slope steps found it. That line also places the kink of a strong neuron
# measured 32 input scales from its foot 3.5e-7 off its hyperplane (its 9e-9 rad direction
# error, correctly estimated, moved its bias 2.7e-7: half the model's error); the pin the
# offset asks for, with longer stencil steps and two close pairs measured again at their
# feet, took rel L2 2.6e-8 -> 6.0e-9.
def test_a_weak_neuron_under_the_models_error_is_found_by_the_sensitive_line(tmp_path):
    from distextract.report import RunData, summarize
    from distextract.rundir import write_run_outputs

    net = dx.targets.random_network(128, 1024, 1, seed=1)
    res = dx.extract(net, seed=1)
    kinds = [rec.kind for rec in res.engine.lines]
    assert kinds.count("sensitive") == 1, kinds
    write_run_outputs(tmp_path, res)  # lines.arrow says which line it was; so does the summary
    assert RunData(tmp_path).lines.column("kind").to_pylist() == kinds
    assert "1 sensitive" in summarize(RunData(tmp_path))
    rep = _fidelity(res, net)
    assert res.certified and rep.rel_l2 <= EXACT_REL_L2, rep
    # its error estimate (1.8e-2 rad, ~50x the true one) left no gap wide enough for its pin
    # and kink-fitted direction among 1,024 hyperplanes until a tighter window was tried
    assert rep.matched_neurons == rep.live_neurons == 1024 and rep.spurious_neurons == 0, rep


@pytest.mark.parametrize("delta", [1e-6, 3e-5])
def test_a_neuron_mislocated_on_the_first_line_is_corrected(delta):
    """Fault injection: after the first line, one neuron's bias and the kink position it
    was measured at move by ``delta`` together (as when a slope step across a weak
    neighbour mislocates a kink). Later lines find its kink off its plane, measure it again,
    and the validation points settle which measurement to keep (before: precision_floor,
    rel L2 2.4e-6 for 3e-5)."""
    from distextract._oracle import CountingOracle, as_oracle
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator
    from distextract.engine.neurons import NeuronSet
    from distextract.engine.tasks import LocalExecutor

    class Mislocated(Coordinator):
        def first_line(self) -> None:
            super().first_line()
            ns = self.st.neurons
            j = int(np.argsort(np.linalg.norm(ns.a, axis=1))[ns.size // 2])
            b, t = ns.b.copy(), ns.t.copy()
            b[j] += delta * np.linalg.norm(ns.W[j])
            rec = self.st.lines[int(ns.line[j])]
            t[j] = -(ns.W[j] @ rec.u + b[j]) / (ns.W[j] @ rec.v)
            self.st.neurons = NeuronSet(ns.W, b, ns.a, ns.err, ns.rank_residual, ns.line, t,
                                        ns.count)
            self.assemble()

    net = dx.targets.random_network(32, 64, 1, seed=0)
    oracle = CountingOracle(as_oracle(net, 32))
    eng = Mislocated(LocalExecutor(oracle), 32, ExtractConfig(), 0, None, 1, 128).run()
    rep = dx.evaluate_fidelity(eng.model, net, n_points=10_000, seed=123)
    assert eng.certified and rep.rel_l2 <= EXACT_REL_L2, rep
    assert rep.matched_neurons == rep.live_neurons == 64 and rep.spurious_neurons == 0, rep
    assert eng.counters["remeasured"] + eng.counters["settled"] >= 1, eng.counters


def _recovered_exactly(net, seed: int = 0, live: int | None = None,
                       max_lines: int | None = None):
    """Extract ``net``: certified, every live neuron matched (``live`` of them, if given),
    none spurious, rel L2 within EXACT_REL_L2, in at most ``max_lines`` lines if given."""
    res = dx.extract(net, seed=seed)
    rep = _fidelity(res, net)
    assert rep.matched_neurons == rep.live_neurons and rep.spurious_neurons == 0, rep
    assert live is None or rep.live_neurons == live, rep
    assert res.certified and rep.rel_l2 <= EXACT_REL_L2, rep
    vals = [r["val_rel_l2"] for r in res.report["rounds"]]
    assert max_lines is None or len(vals) <= max_lines, vals
    return res


def test_a_spurious_neuron_most_lines_do_not_see_is_dropped():
    """A network trained by scikit-learn (8 inputs, 1,000 hidden, an MLPRegressor on a
    synthetic regression; stored in tests/data so that no scikit-learn version changes it):
    its first line merges two kinks into one jump, which m=1 cannot tell apart, and the
    garbage direction, once 'confirmed' by a neighbour's kink, was seen on 2 of the 8 lines
    crossing it; it stayed (1000/1000 + 1 spurious, rel L2 1.7e-3, precision_floor) until
    neurons most lines do not see were tested for removal."""
    # tested after the first clean line, not only in the finishing pass (8 lines before)
    res = _recovered_exactly(dx.ReluNetwork.load(DATA / "trained_8d_h1000.arrow"), live=1000,
                             max_lines=4)
    assert res.report["counters"]["unseen_dropped"] >= 1, res.report["counters"]


def test_a_line_whose_new_neurons_make_validation_worse_is_repaired():
    """A random d=2, k=1000, m=1 network: line 2's one new neuron (two kinks merged into
    one jump; m=1 cannot tell) took validation from 1e-5 to 1.9e-2, and five more lines
    were searched before the neuron went (8 lines, 9.9·k(d+1)). When a line's new neurons
    make validation worse, old neurons measured where they cross (merges) are tested for
    removal first, then the new ones: validation does not jump up from one line to the next
    (a new neuron that is right but measured a little worse than a neighbour it refines may
    leave it a few percent higher). Here the merge rule is the one that fires (the
    counters say so: no new neuron is rejected)."""
    res = _recovered_exactly(dx.targets.random_network(2, 1000, 1, seed=2))
    vals = [r["val_rel_l2"] for r in res.report["rounds"]]
    assert all(b <= 2 * a for a, b in itertools.pairwise(vals)), vals
    assert res.report["counters"]["merges_dropped"] >= 1, res.report["counters"]


def test_an_old_neuron_that_merged_two_new_ones_is_dropped():
    """A random d=3, k=1000, m=1 network: the first line merged two kinks into one jump (m=1
    cannot tell a rank-two jump) and kept the merge as one neuron; line 2 found the two
    real neurons, which doubled what the merge carried and made validation worse. Old
    neurons measured where the new ones cross their line are tested for removal first
    (rejecting the new ones left rel L2 8e-4 at precision_floor; before that guard the
    finishing pass fixed it after five more lines)."""
    res = _recovered_exactly(dx.targets.random_network(3, 1000, 1, seed=100), max_lines=4)
    assert res.report["counters"]["merges_dropped"] >= 1, res.report["counters"]


def test_a_merge_goes_when_a_line_finds_its_two_neurons():
    """A random d=8, k=1000, m=1 network: the merge of two kinks kept validation at 3.5e-3
    through five clean lines (10,000 rows) until the finishing pass dropped it. Line 2
    finds the two real neurons and the merge goes there: 4 lines instead of 8."""
    res = _recovered_exactly(dx.targets.random_network(8, 1000, 1, seed=0), live=1000,
                             max_lines=4)
    assert res.report["counters"]["merges_dropped"] >= 1, res.report["counters"]


def test_a_weak_neuron_pinned_off_its_foot_gets_its_bias_to_the_matching_tolerance():
    """A random d=8, k=1000, m=1 network: a very weak neuron (|a|·|w| = 1.8e-5, direction
    known to 2.6e-5 rad) whose foot is crowded is pinned on a line through another point of
    its hyperplane; the direction error times that shift left its bias 1.2e-6 off (matched
    999/1000, one "spurious"). The mirrored line cancels it: every neuron matched."""
    res = _recovered_exactly(dx.targets.random_network(8, 1000, 1, seed=201), seed=1,
                             live=1000)
    assert res.report["counters"]["pins_mirrored"] >= 1, res.report["counters"]


def test_probe_and_first_line_ends_share_one_request():
    """One round trip instead of two (each costs a slow API's latency); the validation
    points go with the first line's region centres. With a budget too small to pay for
    them all at once the probe and the validation points go first, one after the other."""
    net = dx.targets.random_network(16, 32, 1, seed=1)
    oracle = RowCounter(net)
    dx.extract(oracle, input_dim=16, seed=0)
    assert oracle.sizes[0] == 29 + 49  # probe, 16 segment ends and their slope points
    assert 128 not in oracle.sizes  # no request of the validation points alone
    small = RowCounter(net)
    # 500 rows: 50 validation points (budget // 10), an opening of 128 rows; the engine
    # sends it at once only when the budget holds four times as many
    dx.extract(small, input_dim=16, seed=0, budget=500)
    assert small.sizes[:2] == [29, 50]


def test_small_work_spread_over_every_slot_unless_requests_are_rationed():
    """With 8 concurrent slots and no requests/s limit, evaluations are cut into a task per
    slot (one round trip each for a worker keeping one request in flight) and the first
    line's segments into a task per worker; under a requests/s limit they stay in few, full
    tasks. Either way the same rows are asked and the same hyperplanes come out."""
    from distextract._oracle import CountingOracle, as_oracle
    from distextract.engine._config import ExtractConfig
    from distextract.engine.loop import Coordinator
    from distextract.engine.settings import SessionSettings
    from distextract.engine.tasks import EvalTask, LocalExecutor, SearchTask

    class Recording(LocalExecutor):
        max_batch = 16
        workers = 8

        def __init__(self, oracle, request_limited):
            super().__init__(oracle)
            self.request_limited = request_limited
            self.calls = []

        def map(self, tasks):
            self.calls.append(tasks)
            return super().map(tasks)

    net = dx.targets.random_network(16, 32, 1, seed=1)
    runs = {}
    for limited in (False, True):
        ex = Recording(CountingOracle(as_oracle(net, 16)), limited)
        eng = Coordinator(ex, 16, ExtractConfig(), 0, None, 8, 128).run()
        runs[limited] = (ex, eng)
    (spread, e1), (rationed, e2) = runs[False], runs[True]
    assert spread.queries == rationed.queries
    # (the network evaluates 16 rows and 128 rows with last-ulp differences)
    np.testing.assert_allclose(e1.model.W, e2.model.W, rtol=0, atol=1e-9)
    np.testing.assert_allclose(e1.model.A, e2.model.A, rtol=1e-6)

    def evals(ex):
        return [[t.X.shape[0] for t in c] for c in ex.calls if isinstance(c[0], EvalTask)]

    def first_search(ex):
        return next(len(c) for c in ex.calls if isinstance(c[0], SearchTask))

    # the opening (29 + 49 rows) and the 128 validation points with the region centres
    big = [sizes for sizes in evals(spread) if sum(sizes) > 8 * 16]
    assert big and all(len(s) == 8 and max(s) - min(s) <= 16 for s in big), evals(spread)
    assert all(len(s) == 1 for s in evals(rationed) if sum(s) <= 512), evals(rationed)
    assert first_search(spread) == 8
    assert first_search(rationed) == SessionSettings().search_tasks


def test_stencil_steps_lengthen_when_their_rounding_would_miss_the_goal():
    """The first line's stencil rounding, estimated before its Jacobians are paid for,
    decides the step: at the default goal a small network keeps the short steps; asked
    for 1e-12 it takes WIDE_CROSSING_RATE's longer ones (d=128, k=1024 seed 3: rel L2
    1.8e-8 -> 9.0e-9 for 1.4% more queries, BENCHMARKS.md); a configured rate is kept."""
    from distextract.engine.settings import CROSSING_RATE, WIDE_CROSSING_RATE

    net = dx.targets.random_network(16, 32, 1, seed=1)
    rate = {}
    for name, opts in {"default": {}, "tight": {"target_rel_l2": 1e-12},
                       "fixed": {"target_rel_l2": 1e-12, "stencil_crossing_rate": 0.1}}.items():
        res = dx.extract(net, seed=0, **opts)
        rate[name] = res.report["precision"]["stencil_crossing_rate"]
        assert _fidelity(res, net).rel_l2 <= EXACT_REL_L2
    assert rate == {"default": CROSSING_RATE, "tight": WIDE_CROSSING_RATE, "fixed": 0.1}


# --------------------------------------------------------------------------- hard cases
HARD_SIZES = [(16, 32, 1, 0), (12, 24, 3, 1)]


@pytest.mark.parametrize("d,k,m,seed", HARD_SIZES)
@pytest.mark.parametrize("name", dx.targets.HARD_CASES)
def test_hard_case_is_recovered(name, d, k, m, seed):
    net = dx.targets.hard_case(name, d, k, m, seed=seed)
    res = dx.extract(net, seed=seed)
    rep = _fidelity(res, net)
    assert rep.rel_l2 <= HARD_REL_L2, rep


# A neuron whose normal is nearly orthogonal to the first lines' directions crosses them
# outside their reach; the engine keeps searching lines while the error is above target.
def test_hard_case_norm_range_small_seed1():
    net = dx.targets.hard_case("norm_range", 12, 24, 1, seed=1)
    res = dx.extract(net, seed=1)
    assert _fidelity(res, net).rel_l2 <= HARD_REL_L2
    assert res.certified


def test_neuron_outside_every_line_reach_is_found_by_further_lines():
    # random_network(32, 128, seed=0): neuron 95 crosses lines 0 and 1 at t = 847 and 3994,
    # far beyond their reach of 362; the first clean line leaves rel L2 5e-3 > target.
    net = dx.targets.random_network(32, 128, 1, seed=0)
    res = dx.extract(net, seed=0)
    rep = _fidelity(res, net)
    assert rep.matched_neurons == rep.live_neurons == 128, rep
    assert rep.rel_l2 <= EXACT_REL_L2, rep


# ----------------------------------------------------------------------- trained network
@pytest.mark.parametrize("hidden", [16, 32])
def test_digits_network_is_recovered(hidden):
    net, X_test, _ = dx.targets.digits_network(hidden=hidden, seed=0)
    res = dx.extract(net, seed=0)
    rep = _fidelity(res, net)
    assert rep.rel_l2 <= EXACT_REL_L2, rep
    assert rep.spurious_neurons == 0
    assert rep.matched_neurons == rep.live_neurons
    np.testing.assert_array_equal(res.model.predict(X_test).argmax(axis=1),
                                  net.predict(X_test).argmax(axis=1))


def test_a_trained_networks_weak_neuron_is_oriented_even_when_small():
    """A breast-cancer classifier trained by scikit-learn on raw features (d=30, h=128) has a
    neuron with output weight 3e-6 of the median: its Jacobian jump leaves its direction
    1.1e-9 off (DESIGN.md matches at 1e-9) until it is fitted to kinks on its hyperplane,
    which the 2% share of k(d+1) queries did not allow at this size (less than one neuron)."""
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier

    del sklearn
    X, y = load_breast_cancer(return_X_y=True)
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the fit
        mlp.fit(X, y)
    net = dx.ReluNetwork(W=mlp.coefs_[0].T, b=mlp.intercepts_[0], A=mlp.coefs_[1].T,
                         c=mlp.intercepts_[1])
    res = dx.extract(net, seed=0)
    rep = _fidelity(res, net)
    assert res.report["finishing"]["oriented"] >= 1
    assert rep.matched_neurons == rep.live_neurons == 128 and rep.spurious_neurons == 0, rep
    assert rep.rel_l2 <= EXACT_REL_L2, rep


def test_a_constant_target_gives_an_affine_model_without_warnings():
    """Every neuron dead everywhere: F is constant, its answers repeat exactly (read as
    quantised), and the refinement ends with no neuron left; it used to warn 'Mean of empty
    slice' from numpy on the way."""
    rng = np.random.default_rng(0)
    net = dx.ReluNetwork(W=rng.standard_normal((8, 5)), b=np.full(8, -100.0),
                         A=rng.standard_normal((2, 8)), c=np.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = dx.extract(net, seed=0)
    assert res.certified and res.model.hidden_dim == 0
    X = rng.standard_normal((100, 5))
    np.testing.assert_allclose(res.model.predict(X), net.predict(X), rtol=0, atol=1e-12)


def test_tiny_outputs_are_not_taken_for_rounded_answers():
    """Answers of size 1e-8 are within 1e-6 of the integer 0: the probe took them for
    answers rounded to 0 decimals (relative noise 3e7) and the run ended at rel L2 0.1."""
    from distextract.engine.precision import decimal_quantum

    Y = np.random.default_rng(0).standard_normal((20, 2)) * 1e-8
    assert decimal_quantum(Y) is None
    assert decimal_quantum(np.round(Y * 1e9, 3)) == 1e-3
    base = dx.targets.random_network(16, 32, 2, seed=3)
    net = dx.ReluNetwork(W=base.W, b=base.b, A=base.A * 1e-8, c=base.c * 1e-8)
    res = dx.extract(net, seed=0)
    rep = _fidelity(res, net)
    assert res.certified and rep.rel_l2 <= EXACT_REL_L2, rep
    assert rep.matched_neurons == rep.live_neurons == 32 and rep.spurious_neurons == 0, rep


# ---------------------------------------------------------------------- query accounting
@pytest.mark.parametrize("m,flat", [(1, True), (1, False), (3, False)])
def test_queries_equal_rows_the_oracle_received(m, flat):
    net = dx.targets.random_network(10, 12, m, seed=2)
    oracle = RowCounter(net, flat=flat)
    res = dx.extract(oracle, input_dim=10, seed=0)
    assert oracle.rows > 0
    assert res.queries == oracle.rows
    assert res.report["queries"] == oracle.rows
    assert res.model.metadata["queries"] == oracle.rows
    assert dx.evaluate_fidelity(res.model, net, n_points=2000).rel_l2 <= EXACT_REL_L2


@pytest.mark.parametrize("budget", [150, 400, 900])
def test_budget_is_never_exceeded(budget):
    net = dx.targets.random_network(16, 32, 1, seed=1)
    oracle = RowCounter(net)
    res = dx.extract(oracle, input_dim=16, seed=0, budget=budget)
    assert oracle.rows <= budget
    assert res.queries == oracle.rows
    assert res.certified is False
    assert res.stop_reason == "budget"
    assert res.report["certified"] is False
    assert res.model.predict(np.zeros((2, 16))).shape == (2, 1)  # best model so far


def test_a_sufficient_budget_certifies():
    net = dx.targets.random_network(8, 8, 1, seed=0)
    free = dx.extract(net, seed=0)
    oracle = RowCounter(net)
    res = dx.extract(oracle, input_dim=8, seed=0, budget=free.queries)
    # (a budget caps the validation points at budget // 10, so the runs may differ)
    assert res.certified and res.stop_reason == "certified"
    assert res.queries == oracle.rows <= free.queries


# --------------------------------------------------------------------------- error paths
def _net(d: int = 6, m: int = 2) -> dx.ReluNetwork:
    return dx.targets.random_network(d, 5, m, seed=0)


def test_wrong_number_of_rows_is_an_oracle_shape_error():
    net = _net()
    with pytest.raises(dx.OracleShapeError, match=r"the oracle returned shape \(\d+, 2\) for \d+ input rows"):
        dx.extract(lambda X: net.predict(X)[:-1], input_dim=6)


def test_three_dimensional_answer_is_an_oracle_shape_error():
    net = _net()
    with pytest.raises(dx.OracleShapeError, match=r"expected \(\d+, m\) or \(\d+,\)"):
        dx.extract(lambda X: net.predict(X)[:, :, None], input_dim=6)


def test_changing_output_width_is_an_oracle_shape_error():
    net = _net()
    calls = []

    def fn(X):
        calls.append(1)
        Y = net.predict(X)
        return Y if len(calls) == 1 else np.hstack([Y, Y])

    with pytest.raises(dx.OracleShapeError, match="returned 4 outputs per row, earlier answers had 2"):
        dx.extract(fn, input_dim=6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_answers_are_an_oracle_value_error(bad):
    net = _net()

    def fn(X):
        Y = net.predict(X)
        Y[0, 1] = bad
        return Y

    with pytest.raises(dx.OracleValueError, match=r"the oracle returned NaN or Inf in 1 of \d+ rows"):
        dx.extract(fn, input_dim=6)


def test_non_numeric_answers_are_an_oracle_value_error():
    with pytest.raises(dx.OracleValueError, match="the oracle returned non-numeric values"):
        dx.extract(lambda X: [["a", "b"]] * X.shape[0], input_dim=6)


def test_non_deterministic_oracle_is_refused():
    noisy = dx.targets.noisy_oracle(_net(), sigma=1e-6, seed=0)
    with pytest.raises(dx.NonDeterministicOracle,
                       match="answered the same input twice with different outputs"):
        dx.extract(noisy, input_dim=6)


def test_input_dim_mismatch_with_a_network_oracle():
    with pytest.raises(dx.ConfigError,
                       match=r"input_dim=7 does not match the network's input dimension 6"):
        dx.extract(_net(), input_dim=7)


def test_input_dim_required_for_a_callable():
    with pytest.raises(dx.ConfigError, match="input_dim is required when the oracle is a plain callable"):
        dx.extract(lambda X: X)


def test_budget_too_small():
    with pytest.raises(dx.ConfigError, match=r"budget=20 rows is too small to extract anything "
                                             r"from a d=6 oracle: .* need at least \d+ rows"):
        dx.extract(_net(), budget=20)


@pytest.mark.parametrize("budget", [0, -5, 2.5, "100"])
def test_budget_must_be_a_positive_int(budget):
    with pytest.raises(dx.ConfigError, match="budget"):
        dx.extract(_net(), budget=budget)


def test_unknown_config_option():
    with pytest.raises(dx.ConfigError, match=r"unknown config option\(s\): \['line_reech'\]"):
        dx.extract(_net(), line_reech=3.0)


def test_invalid_config_value():
    with pytest.raises(dx.ConfigError, match=r"config.line_reach must be > 0, got 0"):
        dx.extract(_net(), line_reach=0)


@pytest.mark.parametrize("name, value, message", [
    ("line_segments", 0, r"config.line_segments must be >= 1 or None, got 0"),
    ("stencil_crossing_rate", -0.1, r"config.stencil_crossing_rate must be > 0 or None, got -0.1"),
    ("residual_stride", 0, r"config.residual_stride must be >= 1, got 0"),
])
def test_invalid_derived_setting(name, value, message):
    with pytest.raises(dx.ConfigError, match=message):
        dx.extract(_net(), **{name: value})


def test_derived_settings_can_be_fixed():
    """The precision-derived segment count and crossing rate take an explicit value; the
    first line then searches exactly that many segments (more segment ends paid)."""
    net = _net()
    auto = dx.extract(net, seed=0)
    fixed = dx.extract(net, seed=0, line_segments=64, stencil_crossing_rate=0.3)
    assert auto.certified and fixed.certified
    assert auto.queries != fixed.queries
    assert auto.engine.lines[0].queries < fixed.engine.lines[0].queries


def test_residual_stride_finds_the_same_network_for_fewer_rows():
    """Later lines sampled in every 4th gap first (the default) or every gap at once: the
    same neurons and validation error, the sparse lines cheaper (d=3, k=300: about 1 row
    per known kink against a quarter)."""
    net = dx.targets.random_network(3, 300, 1, seed=0)
    dense = dx.extract(net, seed=0, residual_stride=1)
    sparse = dx.extract(net, seed=0)
    assert dense.certified and sparse.certified
    assert sparse.model.W.shape == dense.model.W.shape
    assert sparse.val_rel_l2 == pytest.approx(dense.val_rel_l2, rel=0.05)
    later = [sum(r.queries for r in res.engine.lines[1:]) for res in (dense, sparse)]
    assert later[1] < 0.6 * later[0], later
    assert sparse.queries < dense.queries


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, None])
def test_bad_seed(seed):
    with pytest.raises(dx.ConfigError, match="seed must be a non-negative integer, got"):
        dx.extract(_net(), seed=seed)


def test_errors_stop_before_querying():
    net = _net()
    oracle = RowCounter(net)
    with pytest.raises(dx.ConfigError):
        dx.extract(oracle, input_dim=6, seed=-1)
    with pytest.raises(dx.ConfigError):
        dx.extract(oracle, input_dim=6, budget=3)
    assert oracle.rows == 0


def test_report_says_what_the_finishing_pass_did():
    net = dx.targets.random_network(16, 24, 2, seed=7)
    res = dx.extract(net, seed=7)
    fin = res.report["finishing"]
    assert set(fin) >= {"candidates", "planned", "pinned", "dropped", "oriented",
                        "remeasured", "queries", "validation_rel_l2_before",
                        "validation_rel_l2_after"}
    assert 0 <= fin["pinned"] <= fin["planned"] <= fin["candidates"]
    assert fin["queries"] >= 4 * fin["pinned"]
    assert fin["validation_rel_l2_after"] == res.val_rel_l2


def test_guided_later_lines_still_recover_the_network():
    # ExtractConfig(residual_scan=False): later lines re-locate every known kink (two
    # queries each) instead of searching the residual; same recovery, more queries
    net = dx.targets.random_network(24, 48, 2, seed=12)
    guided = dx.extract(net, seed=12, config=dx.ExtractConfig(residual_scan=False))
    residual = dx.extract(net, seed=12)
    for res in (guided, residual):
        rep = _fidelity(res, net)
        assert rep.matched_neurons == rep.live_neurons == 48, rep
        assert rep.spurious_neurons == 0 and rep.rel_l2 <= EXACT_REL_L2, rep
        assert res.certified
    assert residual.report["config"]["residual_scan"] is True
