"""Target networks for tests and benchmarks.

Everything here is a *target*: something an extractor is pointed at through an oracle. The
extraction code never imports this module.

Families
--------
:func:`random_network`
    A generic one-hidden-layer ReLU network whose hyperplanes meet the Gaussian bulk.
:func:`hard_case` with a name from :data:`HARD_CASES`
    One generator per hard case of DESIGN.md section 2, each built on top of
    :func:`random_network` with a subset of neurons altered. What each case plants, what the
    extractor faces, and which neurons are *live* (hyperplane within the Gaussian bulk and a
    non-zero merged output weight, as counted by :func:`distextract.fidelity.evaluate_fidelity`)
    is listed in :func:`hard_case`.
:func:`digits_network`
    A network trained by scikit-learn on its bundled digits set (test-only dependency).
:func:`gelu_network`, :func:`softplus_network`, :func:`two_layer_relu_network`, :func:`noisy_oracle`
    Targets that are *not* deterministic one-hidden-layer ReLU networks; an extractor must
    refuse them (:class:`distextract.TargetMismatch` / :class:`distextract.NonDeterministicOracle`)
    instead of returning a silently bad model.

All randomness comes from ``numpy.random.default_rng(seed)``; the same arguments give the
same network. Generated networks carry JSON metadata describing how they were made
(``generator``, ``case``, ``seed`` and the indices of altered neurons), which the tests use to
check each case's claimed property.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import ConfigError
from ._model import ReluNetwork
from ._validation import as_matrix, check_positive_int

logger = logging.getLogger(__name__)

#: Names accepted by :func:`hard_case`, one per hard case of DESIGN.md section 2.
HARD_CASES: tuple[str, ...] = (
    "wide",
    "tiny_output",
    "far_hyperplanes",
    "near_parallel",
    "duplicates",
    "cancelling",
    "zero_bias",
    "norm_range",
    "sparse",
    "skip",
)

#: Standard deviation of the normalised biases ``b_i / ||w_i||`` of :func:`random_network`:
#: every hyperplane lies within a few tenths of the origin, i.e. inside the Gaussian bulk.
BIAS_SCALE = 0.5

#: Range of output-weight shrink factors of the ``tiny_output`` case.
TINY_OUTPUT_RANGE = (1e-9, 1e-6)
#: Range of hyperplane distances ``|b|/||w||`` of the ``far_hyperplanes`` case.
FAR_DISTANCE_RANGE = (10.0, 50.0)
#: Range of angles (radians) between the normals of a ``near_parallel`` pair.
NEAR_PARALLEL_ANGLE_RANGE = (1e-5, 1e-3)
#: Range of normalised-bias differences of a ``near_parallel`` pair.
NEAR_PARALLEL_BIAS_GAP_RANGE = (1e-3, 1.0)
#: Range of weight norms ``||w_i||`` of the ``norm_range`` case (six orders of magnitude).
NORM_RANGE = (1e-3, 1e3)
#: Most nonzeros per row of ``W`` in the ``sparse`` case.
SPARSE_MAX_NONZEROS = 3


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int (targets are reproducible from it), "
                          f"got {seed!r}")
    return np.random.default_rng(int(seed))


def _dims(d: int, k: int, m: int) -> tuple[int, int, int]:
    return (check_positive_int("d", d), check_positive_int("k", k), check_positive_int("m", m))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int) -> np.ndarray:
    return 10.0 ** rng.uniform(np.log10(lo), np.log10(hi), size=size)


def _random_parts(d: int, k: int, m: int, rng: np.random.Generator, skip: bool,
                  bias_scale: float = BIAS_SCALE):
    W = rng.standard_normal((k, d)) / np.sqrt(d)
    b = bias_scale * rng.standard_normal(k)
    A = rng.standard_normal((m, k)) / np.sqrt(k)
    c = rng.standard_normal(m)
    L = rng.standard_normal((m, d)) / np.sqrt(d) if skip else None
    return W, b, A, c, L


def random_network(d: int, k: int, m: int = 1, seed: int = 0, skip: bool = False,
                   bias_scale: float = BIAS_SCALE,
                   norm_spread: float | None = None) -> ReluNetwork:
    """A random one-hidden-layer ReLU network whose hyperplanes meet the Gaussian bulk.

    ``W`` rows ~ N(0, I_d / d) (so ``||w_i|| ≈ 1``), ``b`` ~ N(0, bias_scale²) (hyperplane
    distances ``|b_i|/||w_i||`` of order ``bias_scale``, 0.5 by default), ``A`` ~ N(0, 1/k)
    (``F`` of order one whatever k), ``c`` ~ N(0, 1), and with ``skip=True`` a skip term
    ``L`` ~ N(0, 1/d). With ``norm_spread=s`` every row ``(w_i, b_i)`` is then rescaled by a
    log-uniform factor in ``[1/√s, √s]`` (hyperplanes unchanged, per-neuron output strengths
    ``|a_i|·||w_i||`` spread over a factor ``s``); the factors are drawn after everything else,
    so the defaults give the same network as before for every seed.

    Parameters
    ----------
    d : int
        Input dimension.
    k : int
        Hidden neurons.
    m : int, default 1
        Outputs.
    seed : int, default 0
        Seed for ``numpy.random.default_rng``.
    skip : bool, default False
        Add a nonzero linear skip term ``L`` of shape (m, d).
    bias_scale : float, default BIAS_SCALE (0.5)
        Standard deviation of the biases (> 0); the issue-19 networks use 1 and 2.
    norm_spread : float, optional
        Ratio (>= 1) of the largest to the smallest row-norm factor (see above).

    Returns
    -------
    ReluNetwork
        With ``W`` (k, d), ``b`` (k,), ``A`` (m, k), ``c`` (m,), ``L`` (m, d).
    """
    d, k, m = _dims(d, k, m)
    if not (np.isfinite(bias_scale) and bias_scale > 0):
        raise ConfigError(f"bias_scale must be a positive finite number, got {bias_scale!r}")
    if norm_spread is not None and not (np.isfinite(norm_spread) and norm_spread >= 1):
        raise ConfigError(f"norm_spread must be a finite number >= 1, got {norm_spread!r}")
    rng = _rng(seed)
    W, b, A, c, L = _random_parts(d, k, m, rng, bool(skip), float(bias_scale))
    meta: dict[str, Any] = {"generator": "random_network", "seed": int(seed),
                            "skip": bool(skip)}
    if bias_scale != BIAS_SCALE:
        meta["bias_scale"] = float(bias_scale)
    if norm_spread is not None:
        scale = _log_uniform(rng, 1.0 / np.sqrt(norm_spread), np.sqrt(norm_spread), size=k)
        W *= scale[:, None]
        b *= scale
        meta["norm_spread"] = float(norm_spread)
    return ReluNetwork(W, b, A, c, L, meta)


def _choose(rng: np.random.Generator, k: int, count: int) -> np.ndarray:
    return np.sort(rng.choice(k, size=count, replace=False))


def _choose_pairs(rng: np.random.Generator, k: int, name: str) -> np.ndarray:
    if k < 2:
        raise ConfigError(f"hard case {name!r} plants neuron pairs and needs k >= 2, got k={k}")
    n_pairs = max(min(3, k // 2), k // 8)  # at least one pair of each kind when k >= 6
    idx = rng.choice(k, size=2 * n_pairs, replace=False)
    return idx.reshape(n_pairs, 2)


def hard_case(name: str, d: int, k: int, m: int = 1, seed: int = 0) -> ReluNetwork:
    """A network exercising one hard case of DESIGN.md section 2.

    Each case starts from :func:`random_network` ``(d, k, m, seed)`` and alters a subset of
    neurons (a quarter of them, at least one; pair cases alter ``max(min(3, k // 2), k // 8)``
    disjoint pairs, so every kind of pair appears once k >= 6). The altered indices are stored in ``metadata`` (``"neurons"`` or ``"pairs"``).
    *Live* below means: hyperplane within the Gaussian bulk and non-zero merged output weight
    after merging neurons that share a hyperplane (what
    :func:`distextract.fidelity.evaluate_fidelity` counts as ``live_neurons``).

    ``"wide"``
        A plain random network; the caller picks ``k ≫ d`` (the benchmark uses k = 8·d and
        more). The extractor faces many kinks per probe line and needs several lines to meet
        every hyperplane. All k neurons are live.
    ``"tiny_output"``
        The output columns ``A[:, i]`` of a quarter of the neurons are multiplied by a
        log-uniform factor in ``TINY_OUTPUT_RANGE`` (1e-9 to 1e-6). Their kinks are barely
        visible above rounding; they matter little for the L2 error. All k are live (tiny but
        non-zero); ``metadata["neurons"]`` lists the tiny ones.
    ``"far_hyperplanes"``
        A quarter of the neurons get ``|b_i|/||w_i||`` uniform in ``FAR_DISTANCE_RANGE`` (10 to 50) with a random sign: each is always on (affine,
        absorbed by ``L x + c``) or always off (dead) under N(0, I). Live: the other neurons.
    ``"near_parallel"`` (needs d >= 2)
        Pairs (i, j) with ``w_j`` rotated away from ``w_i`` by a log-uniform angle in
        ``NEAR_PARALLEL_ANGLE_RANGE`` (1e-5 to 1e-3 rad) and normalised biases that differ by a
        log-uniform gap in ``NEAR_PARALLEL_BIAS_GAP_RANGE`` (1e-3 to 1): two kinks very close
        on a probe line, and Jacobian jumps with nearly parallel directions. All k are live
        and distinct (the bias gap exceeds the matching tolerance).
    ``"duplicates"``
        Pairs (i, j) on the same hyperplane: ``w_j = s·w_i``, ``b_j = s·b_i`` with ``s`` cycling
        through exact copy (s = 1), rescaled (s log-uniform in 0.1..10) and opposite
        orientation (s = −(0.1..10)); ``A[:, j]`` stays independent. Each pair shows one kink
        with jump ``(a_i||w_i|| + a_j||w_j||)·ŵ`` and merges into one neuron. Live: k minus
        one per pair. ``metadata["kinds"]`` names each pair's kind.
    ``"cancelling"``
        Pairs (i, j) on the same hyperplane (``w_j = s·w_i``, ``b_j = s·b_i``) with output
        weights chosen so the merged weight ``a_i||w_i|| + a_j||w_j||`` vanishes or shrinks:
        kinds cycle through ``"full_same"`` (s > 0: the pair's contribution is zero),
        ``"full_opposite"`` (s < 0: the pair is exactly affine, ``a_i||w_i||·(ŵ·x + b̂)``) and
        ``"partial"`` (merged weight (1 − ρ)·a_i||w_i||, ρ in 0.5..0.9). No kink at all for a
        full pair. Live: k minus two per full pair minus one per partial pair.
    ``"zero_bias"``
        All ``b = 0``: every hyperplane passes through the origin, so probe lines must not.
        All k are live.
    ``"norm_range"``
        Row norms ``||w_i||`` log-uniform over ``NORM_RANGE`` (1e-3 to 1e3, the two extremes
        included when k >= 2), directions and normalised biases kept (so every hyperplane still
        meets the bulk); ``A`` is kept, so per-neuron output strengths ``|a_i|·||w_i||`` span
        the same six orders of magnitude. All k are live.
    ``"sparse"``
        Each row of ``W`` has 1 to ``SPARSE_MAX_NONZEROS`` (3) nonzeros (at most d) at random
        positions, rescaled to the row norm of the random network (so ``||w_i|| ≈ 1`` and the
        hyperplane distances are unchanged): many exact zeros in every direction, axis-aligned
        hyperplanes for single-nonzero rows (with small d several rows share a support and
        some are parallel, but their biases differ). All k are live.
    ``"skip"``
        A nonzero linear skip term ``L`` ~ N(0, 1/d) of shape (m, d). All k are live.

    Parameters
    ----------
    name : str
        One of :data:`HARD_CASES`.
    d, k, m : int
        Inputs, hidden neurons, outputs.
    seed : int, default 0

    Returns
    -------
    ReluNetwork
        ``metadata`` holds ``generator="hard_case"``, ``case``, ``seed`` and the altered
        neuron indices.
    """
    if name not in HARD_CASES:
        raise ConfigError(f"unknown hard case {name!r}; expected one of {', '.join(HARD_CASES)}")
    d, k, m = _dims(d, k, m)
    rng = _rng(seed)
    W, b, A, c, L = _random_parts(d, k, m, rng, skip=(name == "skip"))
    meta: dict[str, Any] = {"generator": "hard_case", "case": name, "seed": int(seed)}
    n_alter = max(1, k // 4)

    if name == "tiny_output":
        idx = _choose(rng, k, n_alter)
        A[:, idx] *= _log_uniform(rng, *TINY_OUTPUT_RANGE, size=idx.size)
        meta["neurons"] = idx.tolist()
    elif name == "far_hyperplanes":
        idx = _choose(rng, k, n_alter)
        dist = rng.uniform(*FAR_DISTANCE_RANGE, size=idx.size)
        sign = rng.choice([-1.0, 1.0], size=idx.size)
        b[idx] = sign * dist * np.linalg.norm(W[idx], axis=1)
        meta["neurons"] = idx.tolist()
    elif name == "near_parallel":
        if d < 2:
            raise ConfigError(f"hard case 'near_parallel' needs d >= 2 inputs, got d={d}")
        pairs = _choose_pairs(rng, k, name)
        angles = _log_uniform(rng, *NEAR_PARALLEL_ANGLE_RANGE, size=len(pairs))
        gaps = _log_uniform(rng, *NEAR_PARALLEL_BIAS_GAP_RANGE, size=len(pairs))
        gaps *= rng.choice([-1.0, 1.0], size=len(pairs))
        for (i, j), theta, gap in zip(pairs, angles, gaps):
            r_i = np.linalg.norm(W[i])
            r_j = np.linalg.norm(W[j])
            w_hat = W[i] / r_i
            u = rng.standard_normal(d)
            u -= (u @ w_hat) * w_hat
            u /= np.linalg.norm(u)
            W[j] = r_j * (np.cos(theta) * w_hat + np.sin(theta) * u)
            b[j] = r_j * (b[i] / r_i + gap)
        meta["pairs"] = pairs.tolist()
        meta["angles"] = angles.tolist()
    elif name in ("duplicates", "cancelling"):
        pairs = _choose_pairs(rng, k, name)
        kinds_cycle = (("same", "scaled", "opposite") if name == "duplicates"
                       else ("full_same", "full_opposite", "partial"))
        kinds = [kinds_cycle[p % 3] for p in range(len(pairs))]
        for (i, j), kind in zip(pairs, kinds):
            if kind == "same":
                s = 1.0
            else:
                s = float(_log_uniform(rng, 0.1, 10.0, 1)[0])
            if kind in ("opposite", "full_opposite") or (kind == "partial" and rng.random() < 0.5):
                s = -s
            W[j] = s * W[i]
            b[j] = s * b[i]
            if name == "cancelling":
                rho = 1.0 if kind.startswith("full") else float(rng.uniform(0.5, 0.9))
                A[:, j] = -rho * A[:, i] * np.linalg.norm(W[i]) / np.linalg.norm(W[j])
        meta["pairs"] = pairs.tolist()
        meta["kinds"] = kinds
    elif name == "zero_bias":
        b[:] = 0.0
    elif name == "norm_range":
        norms = _log_uniform(rng, *NORM_RANGE, size=k)
        if k >= 2:
            extremes = rng.choice(k, size=2, replace=False)
            norms[extremes] = NORM_RANGE
        scale = norms / np.linalg.norm(W, axis=1)
        W *= scale[:, None]
        b *= scale
    elif name == "sparse":
        norms = np.linalg.norm(W, axis=1)
        W[:] = 0.0
        top = min(d, SPARSE_MAX_NONZEROS)
        nnz = rng.integers(1, top + 1, size=k)
        for i in range(k):
            cols = rng.choice(d, size=nnz[i], replace=False)
            values = rng.standard_normal(nnz[i])
            W[i, cols] = norms[i] * values / np.linalg.norm(values)
    # "wide" and "skip" need nothing beyond the random parts.
    logger.debug("hard case %s: d=%d k=%d m=%d seed=%s", name, d, k, m, seed)
    return ReluNetwork(W, b, A, c, L, meta)


# ---------------------------------------------------------------------------- trained network
@dataclass(frozen=True)
class _DigitsFit:
    """Everything :func:`digits_network` trains (kept for tests that compare with sklearn)."""

    classifier: Any
    scaler: Any
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=4)
def _fit_digits(hidden: int, seed: int, max_iter: int = 1000) -> _DigitsFit:
    """Train the digits classifier (cached: training is deterministic and takes seconds)."""
    try:
        import warnings

        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "digits_network needs scikit-learn (a test-only dependency); install it with "
            "`pip install -e \".[test]\"` or `pip install scikit-learn`"
        ) from exc
    hidden = check_positive_int("hidden", hidden)
    _rng(seed)  # validates the seed
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_train)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu", max_iter=max_iter,
                        random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(X_train), y_train)
    return _DigitsFit(clf, scaler, scaler.transform(X_train), scaler.transform(X_test),
                      np.asarray(y_train), np.asarray(y_test))


def digits_network(hidden: int = 32, seed: int = 0) -> tuple[ReluNetwork, np.ndarray, np.ndarray]:
    """A ReLU network trained by scikit-learn on its bundled digits set (no download).

    ``MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu")`` is trained on 75% of
    ``sklearn.datasets.load_digits`` (stratified split seeded by ``seed``) after
    ``StandardScaler``. The returned network takes **standardised** inputs (64 features) and
    returns the classifier's 10 decision logits, so ``argmax(net.predict(X_test))`` equals
    ``clf.predict(X_test)``. Standardised inputs are the natural scale for the N(0, I)
    measure of the fidelity criterion: the trained hyperplanes then meet the Gaussian bulk
    the way they meet the data. (Folding the scaler into ``W`` and ``b`` to accept raw pixels
    would be exact too, but raw pixels lie far outside N(0, I).)

    scikit-learn is a test-only dependency, imported here.

    Parameters
    ----------
    hidden : int, default 32
        Hidden ReLU units.
    seed : int, default 0
        Seed of the split and of the classifier's initialisation.

    Returns
    -------
    network : ReluNetwork
        d = 64, k = hidden, m = 10.
    X_test : ndarray of shape (450, 64)
        Standardised held-out digits.
    y_test : ndarray of shape (450,)
        Their true labels (0..9).
    """
    fit = _fit_digits(hidden, seed)
    clf = fit.classifier
    W = clf.coefs_[0].T
    b = clf.intercepts_[0]
    A = clf.coefs_[1].T
    c = clf.intercepts_[1]
    accuracy = float(np.mean(clf.predict(fit.X_test) == fit.y_test))
    meta = {"generator": "digits_network", "hidden": int(hidden), "seed": int(seed),
            "test_accuracy": accuracy, "input": "standardised"}
    net = ReluNetwork(W, b, A, c, None, meta)
    logger.info("digits network: hidden=%d, test accuracy %.4f", hidden, accuracy)
    return net, fit.X_test.copy(), fit.y_test.copy()


#: trained_network's tasks: name -> (inputs, outputs); scikit-learn's synthetic data sets (no
#: download), inputs standardised
TRAINED_TASKS = {"friedman": (10, 1), "regression": (20, 1), "classification": (20, 4)}


def _trained_task_data(task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trained_network`'s training set: 2,000 standardised samples and their targets."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    if task == "friedman":
        X, y = datasets.make_friedman1(2000, 10, random_state=seed)
    elif task == "regression":
        X, y = datasets.make_regression(2000, 20, n_informative=10, noise=1.0,
                                        random_state=seed)
        y = y / y.std()
    else:
        X, y = datasets.make_classification(2000, 20, n_informative=12, n_classes=4,
                                            random_state=seed)
    return StandardScaler().fit_transform(X), y


def trained_network(task: str, hidden: int = 32, seed: int = 0) -> ReluNetwork:
    """A ReLU network trained by scikit-learn on a synthetic task (no download): weights as
    training leaves them (correlated, uneven norms, some units nearly dead), unlike the
    generators above.

    - ``"friedman"``: ``make_friedman1`` (10 inputs, 5 of them used), ``MLPRegressor``, 1 output;
    - ``"regression"``: ``make_regression`` (20 inputs, 10 informative, noise 1, targets
      scaled to unit variance), ``MLPRegressor``, 1 output;
    - ``"classification"``: ``make_classification`` (20 inputs, 12 informative, 4 classes),
      ``MLPClassifier``, its 4 decision logits.

    2,000 samples each, inputs standardised (``StandardScaler``), the network taking
    standardised inputs (as :func:`digits_network`). scikit-learn is a test-only dependency,
    imported here.

    Parameters
    ----------
    task : {"friedman", "regression", "classification"}
    hidden : int, default 32
        Hidden ReLU units.
    seed : int, default 0
        Seed of the data set and of the network's initialisation.

    Returns
    -------
    ReluNetwork
        d = ``TRAINED_TASKS[task][0]``, k = ``hidden``, m = ``TRAINED_TASKS[task][1]``;
        ``predict`` equals the regressor's ``predict`` (the classifier's logits: their argmax
        is its ``predict``).
    """
    if task not in TRAINED_TASKS:
        raise ConfigError(f"task must be one of {sorted(TRAINED_TASKS)}, got {task!r}")
    try:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier, MLPRegressor
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "trained_network needs scikit-learn (a test-only dependency); install it with "
            "`pip install -e \".[test]\"` or `pip install scikit-learn`") from exc
    hidden = check_positive_int("hidden", hidden)
    _rng(seed)  # validates the seed
    X, y = _trained_task_data(task, seed)
    kind = MLPClassifier if task == "classification" else MLPRegressor
    est = kind(hidden_layer_sizes=(hidden,), activation="relu", max_iter=2000,
               random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    meta = {"generator": "trained_network", "task": task, "hidden": int(hidden),
            "seed": int(seed), "input": "standardised"}
    return ReluNetwork(est.coefs_[0].T, est.intercepts_[0], est.coefs_[1].T,
                       est.intercepts_[1], None, meta)

# ------------------------------------------------------------------------ non-ReLU targets
class _Target:
    """Shared plumbing: ``input_dim``, ``output_dim``, input validation, ``__call__``."""

    input_dim: int
    output_dim: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Evaluate the target.

        Parameters
        ----------
        X : array-like of shape (n, d)

        Returns
        -------
        Y : ndarray of shape (n, m)
        """
        return self._predict(as_matrix("X", X, self.input_dim))

    def _predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.predict(X)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.input_dim}, m={self.output_dim})"


class _OneHiddenLayer(_Target):
    """``F(x) = A·act(Wx + b) + c``; subclasses define ``_activation``."""

    def __init__(self, W: np.ndarray, b: np.ndarray, A: np.ndarray, c: np.ndarray) -> None:
        self.W, self.b, self.A, self.c = W, b, A, c
        self.input_dim = int(W.shape[1])
        self.hidden_dim = int(W.shape[0])
        self.output_dim = int(A.shape[0])

    def _activation(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self._activation(X @ self.W.T + self.b) @ self.A.T + self.c


class GeluNetwork(_OneHiddenLayer):
    """``F(x) = A·gelu(Wx + b) + c`` with the tanh form of GELU (smooth: no kinks at all).

    Parameters
    ----------
    W : ndarray of shape (k, d)
    b : ndarray of shape (k,)
    A : ndarray of shape (m, k)
    c : ndarray of shape (m,)
    """

    def _activation(self, z: np.ndarray) -> np.ndarray:
        return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))


class SoftplusNetwork(_OneHiddenLayer):
    """``F(x) = A·softplus(β(Wx + b))/β + c`` (smooth; tends to ReLU as β grows).

    Parameters
    ----------
    W : ndarray of shape (k, d)
    b : ndarray of shape (k,)
    A : ndarray of shape (m, k)
    c : ndarray of shape (m,)
    beta : float, default 1.0
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, A: np.ndarray, c: np.ndarray,
                 beta: float = 1.0) -> None:
        super().__init__(W, b, A, c)
        self.beta = float(beta)

    def _activation(self, z: np.ndarray) -> np.ndarray:
        return np.logaddexp(0.0, self.beta * z) / self.beta


def gelu_network(d: int, k: int, m: int = 1, seed: int = 0) -> GeluNetwork:
    """A one-hidden-layer GELU network, weights drawn as in :func:`random_network`.

    Parameters
    ----------
    d, k, m : int
        Inputs, hidden units, outputs.
    seed : int, default 0

    Returns
    -------
    GeluNetwork
        Callable, ``predict(X: (n, d)) -> (n, m)``.
    """
    d, k, m = _dims(d, k, m)
    W, b, A, c, _ = _random_parts(d, k, m, _rng(seed), skip=False)
    return GeluNetwork(W, b, A, c)


def softplus_network(d: int, k: int, m: int = 1, seed: int = 0,
                     beta: float = 1.0) -> SoftplusNetwork:
    """A one-hidden-layer softplus network ``A·softplus(β(Wx+b))/β + c``.

    Parameters
    ----------
    d, k, m : int
        Inputs, hidden units, outputs.
    seed : int, default 0
    beta : float, default 1.0
        Sharpness; the curvature near each hyperplane spreads over a width of about 1/β.

    Returns
    -------
    SoftplusNetwork
    """
    d, k, m = _dims(d, k, m)
    if not (np.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta must be a positive finite number, got {beta!r}")
    W, b, A, c, _ = _random_parts(d, k, m, _rng(seed), skip=False)
    return SoftplusNetwork(W, b, A, c, float(beta))


class TwoLayerReluNetwork(_Target):
    """``F(x) = A·relu(W2·relu(W1 x + b1) + b2) + c``: piecewise linear, but its kinks lie on
    bent surfaces, not hyperplanes, so it is not a one-hidden-layer ReLU network."""

    def __init__(self, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray,
                 A: np.ndarray, c: np.ndarray) -> None:
        self.W1, self.b1, self.W2, self.b2, self.A, self.c = W1, b1, W2, b2, A, c
        self.input_dim = int(W1.shape[1])
        self.hidden_dims = (int(W1.shape[0]), int(W2.shape[0]))
        self.output_dim = int(A.shape[0])

    def _predict(self, X: np.ndarray) -> np.ndarray:
        h1 = np.maximum(X @ self.W1.T + self.b1, 0.0)
        h2 = np.maximum(h1 @ self.W2.T + self.b2, 0.0)
        return h2 @ self.A.T + self.c


def two_layer_relu_network(d: int, h1: int, h2: int, m: int = 1,
                           seed: int = 0) -> TwoLayerReluNetwork:
    """A two-hidden-layer ReLU network.

    ``W1`` ~ N(0, 1/d), ``b1`` ~ N(0, BIAS_SCALE²); the second layer is centred on the first
    layer's mean activation so its kinks also meet the bulk.

    Parameters
    ----------
    d : int
        Inputs.
    h1, h2 : int
        Units of the first and second hidden layers.
    m : int, default 1
    seed : int, default 0

    Returns
    -------
    TwoLayerReluNetwork
    """
    d = check_positive_int("d", d)
    h1 = check_positive_int("h1", h1)
    h2 = check_positive_int("h2", h2)
    m = check_positive_int("m", m)
    rng = _rng(seed)
    W1 = rng.standard_normal((h1, d)) / np.sqrt(d)
    b1 = BIAS_SCALE * rng.standard_normal(h1)
    W2 = rng.standard_normal((h2, h1)) / np.sqrt(h1)
    # Centre the second layer on the first layer's mean activation over N(0, I_d).
    mean_h1 = np.maximum(rng.standard_normal((256, d)) @ W1.T + b1, 0.0).mean(axis=0)
    b2 = -W2 @ mean_h1 + 0.5 * BIAS_SCALE * rng.standard_normal(h2)
    A = rng.standard_normal((m, h2)) / np.sqrt(h2)
    c = rng.standard_normal(m)
    return TwoLayerReluNetwork(W1, b1, W2, b2, A, c)


class NoisyOracle(_Target):
    """Wraps a target and adds fresh N(0, σ²) noise to every answer: the same point asked
    twice gets different answers (non-deterministic). Thread-safe; the noise stream is
    reproducible from the seed for a given sequence of calls."""

    def __init__(self, network: Any, sigma: float, seed: int = 0) -> None:
        self.network = network
        self.sigma = float(sigma)
        self.input_dim = int(network.input_dim)
        self.output_dim = int(network.output_dim)
        self._rng = _rng(seed)
        self._lock = threading.Lock()

    def _predict(self, X: np.ndarray) -> np.ndarray:
        Y = np.asarray(self.network.predict(X), dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        with self._lock:
            noise = self._rng.standard_normal(Y.shape)
        return Y + self.sigma * noise


def noisy_oracle(network: Any, sigma: float = 1e-6, seed: int = 0) -> NoisyOracle:
    """``network`` plus fresh Gaussian noise of standard deviation ``sigma`` on every answer.

    Parameters
    ----------
    network : ReluNetwork or any object with ``predict``, ``input_dim`` and ``output_dim``
    sigma : float, default 1e-6
        Noise standard deviation (> 0).
    seed : int, default 0

    Returns
    -------
    NoisyOracle
    """
    for attr in ("predict", "input_dim", "output_dim"):
        if not hasattr(network, attr):
            raise ConfigError(
                f"network must have predict, input_dim and output_dim (e.g. a ReluNetwork); "
                f"{type(network).__name__} has no {attr!r}"
            )
    if not (np.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a positive finite number, got {sigma!r}")
    return NoisyOracle(network, sigma, seed)


__all__ = [
    "BIAS_SCALE",
    "FAR_DISTANCE_RANGE",
    "HARD_CASES",
    "NEAR_PARALLEL_ANGLE_RANGE",
    "NEAR_PARALLEL_BIAS_GAP_RANGE",
    "NORM_RANGE",
    "SPARSE_MAX_NONZEROS",
    "TINY_OUTPUT_RANGE",
    "TRAINED_TASKS",
    "GeluNetwork",
    "NoisyOracle",
    "SoftplusNetwork",
    "TwoLayerReluNetwork",
    "digits_network",
    "gelu_network",
    "hard_case",
    "noisy_oracle",
    "random_network",
    "softplus_network",
    "trained_network",
    "two_layer_relu_network",
]
