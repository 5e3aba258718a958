"""How close an extracted model is to its target (DESIGN.md section 5).

:func:`evaluate_fidelity` measures, on fresh ``N(0, I_d)`` points,

- ``rel_l2``: the relative L2 error ``sqrt(E||F − F'||² / E||F||²)`` (the square root of the
  ratio in DESIGN.md; thresholds such as "relative L2 ≤ 1e-8" refer to this number, and the
  ratio itself is reported as ``rel_mse``),
- ``max_abs_error``: ``max |F − F'|`` over points and outputs,
- ``argmax_agreement``: the fraction of points where both pick the same output (m >= 2),

and, when the target is a :class:`~distextract.ReluNetwork`, counts neurons with
:func:`match_neurons`:

- neurons are compared as hyperplanes: unit normal ``ŵ = w/||w||`` and normalised bias
  ``β = b/||w||``, up to orientation (``(ŵ, β) ~ (−ŵ, −β)``), so neuron scale, permutation
  and orientation flips (whose affine remainder the output layer absorbs) do not matter;
- a model neuron *matches* a target neuron when ``|cos(ŵ, ŵ')| > 1 − cos_tol`` and
  ``|β' − s·β| ≤ bias_rtol·max(1, |β|)`` with ``s`` the sign of the cosine
  (defaults 1e-9 and 1e-6, DESIGN.md section 5);
- neurons of one network that match each other (exact duplicates, either orientation) are
  merged into one *hyperplane group* whose merged output weight is ``Σ a_i·||w_i||``; that sum
  does not depend on orientation, because ``a·relu(z) = a·relu(−z) + a·z``;
- a target group is *live* when its hyperplane meets the Gaussian bulk
  (``|β| < live_distance``) and its merged output weight does not cancel
  (``||Σ a_i||w_i|| || > cancel_rtol · Σ ||a_i||·||w_i||``);
- *matched* counts live target groups hit by at least one model neuron; a model group is
  *spurious* when its merged output strength exceeds ``spurious_rtol`` times the target's RMS
  output and none of its neurons matches any target neuron.

Pairs are found without an all-pairs Python loop: both sides are sorted by ``|β|`` (matching
implies nearly equal ``|β|``), and blocks of one side are compared with the matching ``|β|``
window of the other by one matrix product each. Random biases make the windows small; all-zero
biases degrade to a blocked all-pairs product, still vectorised.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._errors import ConfigError
from ._model import ReluNetwork
from ._oracle import Oracle
from ._validation import check_positive_int

logger = logging.getLogger(__name__)

#: Default |cos| tolerance: a match needs ``|cos(ŵ, ŵ')| > 1 − COS_TOL`` (DESIGN.md §5).
COS_TOL = 1e-9
#: Default bias tolerance: ``|β' − s·β| ≤ BIAS_RTOL·max(1, |β|)`` (DESIGN.md §5).
BIAS_RTOL = 1e-6
#: Default bulk radius: a Gaussian point lies on the far side of a hyperplane at distance 4
#: with probability 3e-5, so a hyperplane farther out is nearly affine in the bulk.
LIVE_DISTANCE = 4.0
#: Default cancellation tolerance: a hyperplane group whose merged output weight is below this
#: fraction of the sum of its members' strengths cancels (rounding of an exact cancellation).
CANCEL_RTOL = 1e-9
#: Default spurious threshold: a model neuron whose strength ``||a_i||·||w_i||`` is below this
#: fraction of the target's RMS output cannot move the relative L2 error by more than about
#: 1e-8, the strictest target of the project, so it is not counted as spurious.
SPURIOUS_RTOL = 1e-8
#: Target memory of one evaluation block in float64 elements (about 32 MB).
_BLOCK_ELEMENTS = 1 << 22
#: Rows of one side compared per matrix product in :func:`match_neurons`.
_MATCH_BLOCK = 256


@dataclass(frozen=True)
class NeuronMatch:
    """Neuron-level comparison of a model with a target (see :func:`match_neurons`).

    Attributes
    ----------
    pairs : ndarray of shape (p, 2), int
        ``(model_index, target_index)`` of every matching pair of neurons.
    target_group : ndarray of shape (k_target,), int
        Hyperplane group of each target neuron; -1 for a neuron with ``w = 0``.
    target_live : ndarray of shape (g_target,), bool
        Whether each target group is live.
    target_matched : ndarray of shape (g_target,), bool
        Whether some model neuron matches the group.
    model_group : ndarray of shape (k_model,), int
        Hyperplane group of each model neuron; -1 for a neuron with ``w = 0``.
    model_spurious : ndarray of shape (g_model,), bool
        Whether each model group is spurious.
    """

    pairs: np.ndarray
    target_group: np.ndarray
    target_live: np.ndarray
    target_matched: np.ndarray
    model_group: np.ndarray
    model_spurious: np.ndarray

    @property
    def live(self) -> int:
        """Number of live target groups."""
        return int(self.target_live.sum())

    @property
    def matched(self) -> int:
        """Number of live target groups matched by the model."""
        return int((self.target_live & self.target_matched).sum())

    @property
    def spurious(self) -> int:
        """Number of spurious model groups."""
        return int(self.model_spurious.sum())


@dataclass(frozen=True)
class FidelityReport:
    """Result of :func:`evaluate_fidelity`.

    Attributes
    ----------
    n_points : int
        Fresh N(0, I_d) points used.
    rel_l2 : float
        ``sqrt(E||F − F'||² / E||F||²)``; the number the project's thresholds refer to
        (0 when both are 0, inf when only ``F`` is 0).
    rel_mse : float
        ``E||F − F'||² / E||F||²`` (``rel_l2`` squared), the ratio as written in DESIGN.md.
    max_abs_error : float
        ``max |F − F'|`` over points and outputs.
    target_rms : float
        ``sqrt(E||F||²)`` of the target on the same points.
    argmax_agreement : float or None
        Fraction of points where ``argmax F == argmax F'``; None when m = 1.
    model_neurons : int
        Hidden neurons of the model.
    target_neurons, live_neurons, matched_neurons, spurious_neurons : int or None
        Neuron counts (see :mod:`distextract.fidelity`); None unless the target is a
        :class:`~distextract.ReluNetwork`.
    """

    n_points: int
    rel_l2: float
    rel_mse: float
    max_abs_error: float
    target_rms: float
    argmax_agreement: float | None
    model_neurons: int
    target_neurons: int | None = None
    live_neurons: int | None = None
    matched_neurons: int | None = None
    spurious_neurons: int | None = None

    @property
    def missed_neurons(self) -> int | None:
        """Live target neurons the model did not match (None without neuron counts)."""
        if self.live_neurons is None or self.matched_neurons is None:
            return None
        return self.live_neurons - self.matched_neurons

    @property
    def all_matched(self) -> bool | None:
        """Every live target neuron matched and no spurious one (None without counts)."""
        if self.live_neurons is None:
            return None
        return self.matched_neurons == self.live_neurons and self.spurious_neurons == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-serialisable dict (plain floats, ints and None)."""
        out = asdict(self)
        out["missed_neurons"] = self.missed_neurons
        return {key: (float(v) if isinstance(v, float) else v) for key, v in out.items()}


# ---------------------------------------------------------------------------- evaluation
def _evaluator(target: Any) -> tuple[Callable[[np.ndarray], Any], int | None, int | None]:
    """The target's evaluation function with its input and output dimension where known."""
    if isinstance(target, ReluNetwork):
        return target.predict, target.input_dim, target.output_dim
    if isinstance(target, Oracle):
        return target.query, target.input_dim, target.output_dim
    fn = getattr(target, "predict", None)
    if not callable(fn):
        fn = target if callable(target) else None
    if fn is None:
        raise ConfigError(
            f"target must be a ReluNetwork, an Oracle or a callable (n, d) -> (n, m), got "
            f"{type(target).__name__}"
        )
    d = getattr(target, "input_dim", None)
    m = getattr(target, "output_dim", None)
    return fn, (int(d) if d is not None else None), (int(m) if m is not None else None)


def _target_rows(fn: Callable[[np.ndarray], Any], X: np.ndarray, m: int) -> np.ndarray:
    Y = np.asarray(fn(X), dtype=np.float64)
    if Y.ndim == 1 and Y.shape[0] == X.shape[0]:
        Y = Y[:, None]
    if Y.shape != (X.shape[0], m):
        raise ConfigError(
            f"target returned shape {Y.shape} for {X.shape[0]} rows; expected "
            f"({X.shape[0]}, {m}) to match the model's output_dim={m}"
        )
    if not np.all(np.isfinite(Y)):
        raise ConfigError("target returned NaN or Inf values; fidelity is undefined")
    return Y


def evaluate_fidelity(
    model: ReluNetwork,
    target: Any,
    n_points: int = 10_000,
    seed: int = 0,
    batch: int | None = None,
    *,
    cos_tol: float = COS_TOL,
    bias_rtol: float = BIAS_RTOL,
    live_distance: float = LIVE_DISTANCE,
    cancel_rtol: float = CANCEL_RTOL,
    spurious_rtol: float = SPURIOUS_RTOL,
) -> FidelityReport:
    """Compare an extracted model with its target on fresh Gaussian points.

    Parameters
    ----------
    model : ReluNetwork
        The extracted network, d inputs and m outputs.
    target : ReluNetwork, Oracle or callable
        The reference ``F``: a :class:`~distextract.ReluNetwork` (neuron counts are reported),
        an :class:`~distextract.Oracle` (``query`` is called: a paid oracle is charged for
        ``n_points`` rows), an object with ``predict``, or a callable
        ``(n, d) -> (n, m)`` or ``(n,)`` when m = 1.
    n_points : int, default 10_000
        Points drawn from N(0, I_d).
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` for the points; the points do not depend on
        ``batch``.
    batch : int, optional
        Rows evaluated at a time; by default about 32 MB of float64 per block.
    cos_tol, bias_rtol, live_distance, cancel_rtol, spurious_rtol : float
        Neuron-matching tolerances, see :func:`match_neurons` and the module constants.

    Returns
    -------
    FidelityReport

    Raises
    ------
    ConfigError
        ``model`` is not a ReluNetwork; input or output dimensions of model and target
        differ; the target answers with the wrong shape or non-finite values.
    """
    if not isinstance(model, ReluNetwork):
        raise ConfigError(f"model must be a ReluNetwork, got {type(model).__name__}")
    n_points = check_positive_int("n_points", n_points)
    d, m = model.input_dim, model.output_dim
    fn, target_d, target_m = _evaluator(target)
    if target_d is not None and target_d != d:
        raise ConfigError(
            f"model has input_dim={d} but target has input_dim={target_d}; they must agree"
        )
    if target_m is not None and target_m != m:
        raise ConfigError(
            f"model has output_dim={m} but target has output_dim={target_m}; they must agree"
        )
    if batch is None:
        widest = max(d, m, model.hidden_dim,
                     target.hidden_dim if isinstance(target, ReluNetwork) else 0)
        batch = max(1, min(n_points, _BLOCK_ELEMENTS // widest))
    else:
        batch = check_positive_int("batch", batch)

    rng = np.random.default_rng(seed)
    err_sum = ref_sum = 0.0
    max_abs = 0.0
    agree = 0
    for start in range(0, n_points, batch):
        rows = min(batch, n_points - start)
        X = rng.standard_normal((rows, d))
        Y = _target_rows(fn, X, m)
        Yhat = model.predict(X)
        diff = Y - Yhat
        err_sum += float(np.sum(diff * diff))
        ref_sum += float(np.sum(Y * Y))
        max_abs = max(max_abs, float(np.max(np.abs(diff))))
        if m >= 2:
            agree += int(np.sum(np.argmax(Y, axis=1) == np.argmax(Yhat, axis=1)))

    if ref_sum > 0:
        rel_mse = err_sum / ref_sum
    else:
        rel_mse = 0.0 if err_sum == 0 else math.inf
    target_rms = math.sqrt(ref_sum / n_points)
    counts: dict[str, int | None] = {}
    if isinstance(target, ReluNetwork):
        scale = target_rms if target_rms > 0 else 1.0
        match = match_neurons(model, target, cos_tol=cos_tol, bias_rtol=bias_rtol,
                              live_distance=live_distance, cancel_rtol=cancel_rtol,
                              spurious_rtol=spurious_rtol, reference_scale=scale)
        counts = {"target_neurons": target.hidden_dim, "live_neurons": match.live,
                  "matched_neurons": match.matched, "spurious_neurons": match.spurious}
    report = FidelityReport(
        n_points=n_points,
        rel_l2=math.sqrt(rel_mse),
        rel_mse=rel_mse,
        max_abs_error=max_abs,
        target_rms=target_rms,
        argmax_agreement=(agree / n_points) if m >= 2 else None,
        model_neurons=model.hidden_dim,
        **counts,
    )
    logger.info("fidelity: rel_l2=%.3g max_abs=%.3g matched=%s/%s spurious=%s",
                report.rel_l2, report.max_abs_error, report.matched_neurons,
                report.live_neurons, report.spurious_neurons)
    return report


# ------------------------------------------------------------------------ neuron matching
def _hyperplanes(net: ReluNetwork) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals (k, d), normalised biases (k,), norms (k,), and which rows have w != 0."""
    norms = np.linalg.norm(net.W, axis=1)
    valid = norms > 0
    safe = np.where(valid, norms, 1.0)
    return net.W / safe[:, None], net.b / safe, norms, valid


def _pairs(U1: np.ndarray, beta1: np.ndarray, U2: np.ndarray, beta2: np.ndarray,
           cos_tol: float, bias_rtol: float) -> np.ndarray:
    """All ``(i, j)`` with ``|U1_i·U2_j| > 1 − cos_tol`` and
    ``|beta1_i − s·beta2_j| ≤ bias_rtol·max(1, |beta2_j|)``, ``s`` the sign of the cosine.

    Matching implies ``| |beta1_i| − |beta2_j| | ≤ bias_rtol·(1 + |beta2_j|)``, so with both
    sides sorted by ``|beta|`` each block of side 1 only meets a contiguous window of side 2.
    """
    if len(U1) == 0 or len(U2) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    key1, key2 = np.abs(beta1), np.abs(beta2)
    order1, order2 = np.argsort(key1, kind="stable"), np.argsort(key2, kind="stable")
    sorted2 = key2[order2]
    slack = 1e-12
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for start in range(0, len(order1), _MATCH_BLOCK):
        rows = order1[start:start + _MATCH_BLOCK]
        lo = (key1[rows[0]] - bias_rtol) / (1 + bias_rtol) - slack * (1 + key1[rows[0]])
        hi = (key1[rows[-1]] + bias_rtol) / (1 - bias_rtol) + slack * (1 + key1[rows[-1]])
        j_lo = int(np.searchsorted(sorted2, lo, side="left"))
        j_hi = int(np.searchsorted(sorted2, hi, side="right"))
        for j_start in range(j_lo, j_hi, 8 * _MATCH_BLOCK):
            cols = order2[j_start:min(j_hi, j_start + 8 * _MATCH_BLOCK)]
            C = U1[rows] @ U2[cols].T
            ii, jj = np.nonzero(np.abs(C) > 1.0 - cos_tol)
            if ii.size == 0:
                continue
            i_idx, j_idx = rows[ii], cols[jj]
            sign = np.sign(C[ii, jj])
            ok = (np.abs(beta1[i_idx] - sign * beta2[j_idx])
                  <= bias_rtol * np.maximum(1.0, np.abs(beta2[j_idx])))
            found_i.append(i_idx[ok])
            found_j.append(j_idx[ok])
    if not found_i:
        return np.zeros((0, 2), dtype=np.int64)
    return np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1).astype(np.int64)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``pairs`` over ``n`` nodes, labelled 0..g-1 (vectorised)."""
    labels = np.arange(n)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        while True:
            new = labels.copy()
            np.minimum.at(new, i, labels[j])
            np.minimum.at(new, j, labels[i])
            new = new[new]  # pointer jumping
            if np.array_equal(new, labels):
                break
            labels = new
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _groups(net: ReluNetwork, U: np.ndarray, beta: np.ndarray, norms: np.ndarray,
            valid: np.ndarray, cos_tol: float, bias_rtol: float):
    """Hyperplane groups of one network: group per neuron (-1 if w = 0), and per group the
    distance ``|β|``, merged output weight ``Σ a_i||w_i||`` (g, m) and ``Σ ||a_i||·||w_i||``."""
    idx = np.flatnonzero(valid)
    self_pairs = _pairs(U[idx], beta[idx], U[idx], beta[idx], cos_tol, bias_rtol)
    comp = _components(len(idx), self_pairs)
    group = np.full(net.hidden_dim, -1, dtype=np.int64)
    group[idx] = comp
    g = int(comp.max()) + 1 if comp.size else 0
    strength = (net.A[:, idx] * norms[idx]).T  # (n_valid, m)
    merged = np.zeros((g, net.output_dim))
    np.add.at(merged, comp, strength)
    total = np.zeros(g)
    np.add.at(total, comp, np.linalg.norm(strength, axis=1))
    distance = np.full(g, np.inf)
    np.minimum.at(distance, comp, np.abs(beta[idx]))
    return group, distance, merged, total


def match_neurons(
    model: ReluNetwork,
    target: ReluNetwork,
    *,
    cos_tol: float = COS_TOL,
    bias_rtol: float = BIAS_RTOL,
    live_distance: float = LIVE_DISTANCE,
    cancel_rtol: float = CANCEL_RTOL,
    spurious_rtol: float = SPURIOUS_RTOL,
    reference_scale: float | None = None,
) -> NeuronMatch:
    """Match the model's neurons with the target's as hyperplanes (see module docstring).

    Parameters
    ----------
    model, target : ReluNetwork
        Same input dimension d.
    cos_tol : float, default COS_TOL
        Match when ``|cos| > 1 − cos_tol``.
    bias_rtol : float, default BIAS_RTOL
        Match when the normalised biases differ by at most ``bias_rtol·max(1, |β|)``.
    live_distance : float, default LIVE_DISTANCE
        Target hyperplanes with ``|b|/||w|| >= live_distance`` are not live.
    cancel_rtol : float, default CANCEL_RTOL
        A group whose merged output weight is below ``cancel_rtol`` times the sum of its
        members' strengths cancels (not live, never spurious).
    spurious_rtol : float, default SPURIOUS_RTOL
        Unmatched model groups stronger than ``spurious_rtol·reference_scale`` are spurious.
    reference_scale : float, optional
        The target's output scale; :func:`evaluate_fidelity` passes ``sqrt(E||F||²)``. By
        default the root-sum-square of the target's merged neuron strengths (1 if zero).

    Returns
    -------
    NeuronMatch
    """
    for name, net in (("model", model), ("target", target)):
        if not isinstance(net, ReluNetwork):
            raise ConfigError(f"{name} must be a ReluNetwork, got {type(net).__name__}")
    if model.input_dim != target.input_dim:
        raise ConfigError(
            f"model has input_dim={model.input_dim} but target has "
            f"input_dim={target.input_dim}; they must agree"
        )
    Um, bm, rm, vm = _hyperplanes(model)
    Ut, bt, rt, vt = _hyperplanes(target)
    t_group, t_dist, t_merged, t_total = _groups(target, Ut, bt, rt, vt, cos_tol, bias_rtol)
    m_group, _, m_merged, m_total = _groups(model, Um, bm, rm, vm, cos_tol, bias_rtol)

    im, it = np.flatnonzero(vm), np.flatnonzero(vt)
    local = _pairs(Um[im], bm[im], Ut[it], bt[it], cos_tol, bias_rtol)
    pairs = np.stack([im[local[:, 0]], it[local[:, 1]]], axis=1) if len(local) else local

    t_strength = np.linalg.norm(t_merged, axis=1)
    t_live = (t_dist < live_distance) & (t_strength > cancel_rtol * t_total)
    t_matched = np.zeros(len(t_dist), dtype=bool)
    t_matched[t_group[pairs[:, 1]]] = True

    if reference_scale is None:
        reference_scale = float(np.sqrt(np.sum(t_strength ** 2))) or 1.0
    m_strength = np.linalg.norm(m_merged, axis=1)
    m_matched = np.zeros(len(m_strength), dtype=bool)
    m_matched[m_group[pairs[:, 0]]] = True
    m_spurious = (~m_matched & (m_strength > cancel_rtol * m_total)
                  & (m_strength > spurious_rtol * reference_scale))
    return NeuronMatch(pairs=pairs, target_group=t_group, target_live=t_live,
                       target_matched=t_matched, model_group=m_group, model_spurious=m_spurious)


__all__ = [
    "BIAS_RTOL",
    "CANCEL_RTOL",
    "COS_TOL",
    "LIVE_DISTANCE",
    "SPURIOUS_RTOL",
    "FidelityReport",
    "NeuronMatch",
    "evaluate_fidelity",
    "match_neurons",
]
