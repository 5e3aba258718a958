"""engine.fuse: a neuron found twice (two nearly coincident hyperplanes) is fused back into
one where the rows inside its wedge allow it, two true neurons that close are not, and the
certificate checks the wedges of the pairs a model keeps."""

from __future__ import annotations

import numpy as np

import distextract as dx
from distextract import targets
from distextract._oracle import NetworkOracle
from distextract.engine import imprecise, refine, scan
from distextract.engine.fuse import close_pairs, fuse_pairs, fused, wedge_points
from distextract.engine.refine import refine_network


def _rotated(w, angle, rng):
    """``w`` turned by ``angle`` radians towards a random orthogonal direction."""
    n = np.linalg.norm(w)
    u = w / n
    p = rng.standard_normal(w.size)
    p -= (p @ u) * u
    p /= np.linalg.norm(p)
    return n * (np.cos(angle) * u + np.sin(angle) * p)


def _split(net, q, angle, share, flip, rng):
    """``net`` with neuron ``q`` split in two: itself carrying ``1 - share`` of its output and
    a copy turned by ``angle`` carrying ``share`` (pointing the other way when ``flip``: an
    affine term makes up for it)."""
    w2 = _rotated(net.W[q], angle, rng)
    b2, a2 = net.b[q], share * net.A[:, q]
    A = net.A.copy()
    A[:, q] *= 1.0 - share
    c, L = net.c.copy(), net.L.copy()
    if flip:  # a·relu(z) = a·relu(-(-z)) = a·relu(-z) + a·z
        w2, b2 = -w2, -b2
        L = L - np.outer(a2, w2)
        c = c - a2 * b2
    return dx.ReluNetwork(np.vstack([net.W, w2]), np.append(net.b, b2),
                          np.hstack([A, a2[:, None]]), c, L)


def test_close_pairs_in_either_orientation_closest_first():
    rng = np.random.default_rng(0)
    net = targets.random_network(12, 6, 2, seed=3)
    W = np.vstack([net.W, _rotated(net.W[1], 0.01, rng), -_rotated(net.W[4], 0.03, rng)])
    b = np.concatenate([net.b, [net.b[1], -net.b[4]]])
    pairs = close_pairs(W, b, 1.0)
    assert pairs.tolist() == [[1, 6, 1], [4, 7, -1]]
    # an offset farther than the gap, or a turn wider than the angle: no pair
    assert close_pairs(W[[1, 6]], b[[1, 6]] + [0.0, 0.4 * np.linalg.norm(W[6])], 1.0).size == 0
    far = np.vstack([W[1], _rotated(W[1], 0.4, rng)])
    assert close_pairs(far, b[[1, 1]], 1.0).size == 0
    # the gap is in input scales
    assert len(close_pairs(W[[1, 6]], b[[1, 6]] + [0.0, 0.4 * np.linalg.norm(W[6])], 4.0)) == 1


def test_wedge_points_lie_between_the_two_hyperplanes():
    rng = np.random.default_rng(1)
    net = targets.random_network(10, 4, 1, seed=0)
    W = np.vstack([net.W[0], -_rotated(net.W[0], 0.02, rng)])
    b = np.array([net.b[0], -net.b[0] - 0.01 * np.linalg.norm(W[1])])
    pairs = close_pairs(W, b, 1.0)
    X = wedge_points(W, b, pairs, np.random.default_rng(2), 1.0, per_pair=6)
    assert X.shape == (6, 10)
    z = X @ W.T + b
    # opposite orientation: inside the wedge both sides are active (or both inactive)
    assert np.all(np.sign(z[:, 0]) == np.sign(z[:, 1]))
    # halfway: at the same distance from both
    np.testing.assert_allclose(np.abs(z[:, 0]) / np.linalg.norm(W[0]),
                               np.abs(z[:, 1]) / np.linalg.norm(W[1]), rtol=0.05)


def test_fusing_an_exact_split_gives_the_neuron_back():
    net = targets.random_network(8, 5, 3, seed=2)
    twin = _split(net, 2, 0.0, 0.3, flip=False, rng=np.random.default_rng(0))
    one = fused(twin, 2, 5, 1)
    X = np.random.default_rng(3).standard_normal((500, 8))
    np.testing.assert_allclose(one.predict(X), net.predict(X), atol=1e-12)
    assert one.hidden_dim == net.hidden_dim


def test_a_split_neuron_is_fused_and_two_true_neurons_are_not():
    """Refit over Gaussian rows plus wedge rows: a neuron split into two hyperplanes 0.02 rad
    apart (the second pointing the other way) is fused and the refit is exact; two true
    neurons as close (a network that has both) keep apart."""
    rng = np.random.default_rng(4)
    d = 8
    net = targets.random_network(d, 6, 1, seed=5)
    X = rng.standard_normal((600, d))
    sigma = np.full(600, 1e-9)

    def run(true_net, start):
        pairs = close_pairs(start.W, start.b, 1.0)
        Xa = np.concatenate([X, wedge_points(start.W, start.b, pairs, rng, 1.0)])
        Ya = true_net.predict(Xa)
        sig = np.full(Xa.shape[0], 1e-9)
        res = refine_network(start, Xa, Ya, sig)
        return fuse_pairs(res, Xa, Ya, lambda m: refine_network(m, Xa, Ya, sig),
                          lambda chi2, n: 1.05 * chi2 + 4.0 * (d + 3) * n / Ya.size, 1.0)

    split = _split(net, 3, 0.02, 0.4, flip=True, rng=rng)
    res, idx = run(net, split)  # truth: one neuron
    assert idx.tolist() == [0, 1, 2, 3, 4, 5]
    Xt = np.random.default_rng(6).standard_normal((20_000, d))
    err = np.linalg.norm(res.model.predict(Xt) - net.predict(Xt)) / np.linalg.norm(
        net.predict(Xt))
    assert err < 1e-7
    res2, idx2 = run(split, split)  # truth: both neurons
    assert idx2.tolist() == list(range(7))
    del sigma


def test_a_run_whose_search_splits_a_neuron_ends_with_one(monkeypatch):
    """d16-k32-m1, biases N(0, 0.25), seed 24, float32 answers: the search finds one weak
    neuron twice (hyperplanes 0.01 rad apart, one flipped). Fused, every neuron matches; with
    fusing switched off the model is off by 1e-3 of the output scale in the wedge (rel L2
    5.5e-5) and the certificate's wedge rows refuse it."""
    from distextract.fidelity import evaluate_fidelity

    # the path that splits it: the refit over the line rows held (imprecise.refine's
    # retry) takes another one on this seed
    monkeypatch.setattr(imprecise, "REFINE_LINE_FUTILE", 0)
    # ... and so do the refinement's rounds (refine_in_rounds): all its rows at once
    monkeypatch.setattr(imprecise, "REFINE_FIRST_OBS", imprecise.REFINE_OBS)
    # ... and the refinement's steps unbounded and the search's checks of values against
    # chords off (each of them keeps this seed from splitting the neuron at all)
    monkeypatch.setattr(refine, "VP_MAX_MOVE", None)
    monkeypatch.setattr(scan, "IMPRECISE_CHORD_CHECK", False)
    net = targets.random_network(16, 32, 1, seed=24, bias_scale=0.5)
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=16, seed=24)
    rep = evaluate_fidelity(res.model, net, n_points=10_000, seed=25, cos_tol=1e-6,
                            bias_rtol=1e-3)
    assert res.report["counters"]["neurons_fused"] >= 1
    assert rep.rel_l2 < 1e-6 and rep.spurious_neurons == 0 and rep.matched_neurons == 32
    assert res.certified
    monkeypatch.setattr(imprecise, "close_pairs", lambda W, b, s, limit=None: np.zeros((0, 3), dtype=int))
    bad = dx.extract(NetworkOracle(net, output="float32"), input_dim=16, seed=24)
    rep = evaluate_fidelity(bad.model, net, n_points=10_000, seed=25, cos_tol=1e-6,
                            bias_rtol=1e-3)
    # (main before the twin births: validation read 3e-8 and only the wedge rows saw it; a
    # twin born beside the split pair now shows in validation too, 3.3e-6)
    assert rep.rel_l2 > 1e-6
    assert not bad.certified and bad.report["certificate"]["pairs"] >= 1
    named = [u for u in bad.report["uncertain"] if "wedge" in u["reason"]]
    assert len(named) == 2


def test_a_neuron_the_wedge_refit_leaves_without_effect_is_pruned():
    """digits-h16 seed 30, float32 answers, stencil crossing rate 0.15: the refit over the
    wedge rows of a close pair it does not fuse leaves one of the two at an output of 1.9e-7
    (the others' about 4). Without the prune after the fuse it stays, a spurious neuron the
    certificate refuses; with it the model has the 16 neurons and certifies."""
    from distextract.fidelity import evaluate_fidelity

    net = targets.digits_network(hidden=16, seed=30)[0]
    res = dx.extract(NetworkOracle(net, output="float32"), input_dim=net.input_dim, seed=30,
                     config=dx.ExtractConfig(stencil_crossing_rate=0.15))
    rep = evaluate_fidelity(res.model, net, n_points=10_000, seed=31, cos_tol=1e-6,
                            bias_rtol=1e-3)
    assert res.model.hidden_dim == 16 and rep.spurious_neurons == 0
    assert rep.rel_l2 < 1e-6 and res.certified
