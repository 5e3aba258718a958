"""Output assembly: from a set of neurons and the paid rows to a frozen model state, and the
one rule by which a changed model is accepted (no worse on the validation points).

The output layer (``A``, ``L``, ``c``) is fitted several ways and the candidate with the lowest
validation error wins: ``L``, ``c`` by least squares over a sample of the paid rows, ``L``, ``c``
from the region Jacobians, and, where it may help, ``A``, ``L``, ``c`` together over the paid rows
and over the Gaussian rows bought by the imprecise path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._model import ReluNetwork
from .neurons import NeuronSet
from .paid import PaidRows
from .settings import AssembleSettings
from .solve import relative_error, solve_affine, solve_affine_from_jacobians, solve_full

_DEFAULT = AssembleSettings()


@dataclass(frozen=True, eq=False)
class ModelState:
    """An assembled model and its error on the validation points."""

    model: ReluNetwork
    val_rel_l2: float
    val_max_abs: float


def no_worse(new: float, old: float, allowed: float = 0.0, slack: float = 1.01) -> bool:
    """The accept rule: a changed model with validation error ``new`` replaces one with
    ``old`` when ``new`` is within ``slack`` times ``old`` or at most ``allowed``."""
    return new <= max(slack * old, allowed)


def full_solve_may_help(best: float, unknowns: int, imprecise: bool, target: float,
                        settings: AssembleSettings = _DEFAULT) -> bool:
    """Whether refitting ``A``, ``L``, ``c`` by least squares over the paid rows is worth
    its ``O(rows·unknowns²)`` time. With float64 answers the output vectors from the
    Jacobian jumps are as precise as the hyperplanes (the refit wins on none of the
    benchmark targets); it is kept for small networks, and for a model just short of its
    target (a model far off misses neurons, which no refit supplies). A d=128, k=1024
    refit takes about a second, during which a distributed run's workers wait."""
    if imprecise or unknowns <= settings.full_solve_unknowns:
        return True
    return target < best <= settings.full_solve_reach * target


def assemble(ns: NeuronSet, paid: PaidRows, m: int, rng: np.random.Generator,
             imprecise: bool, target: float, solve_max_unknowns: int,
             settings: AssembleSettings = _DEFAULT) -> ModelState:
    """The best output fit for the neurons ``ns`` over the rows in ``paid``.

    Parameters
    ----------
    ns : NeuronSet
        The hidden layer (k neurons).
    paid : PaidRows
        Rows to fit over and the validation points to judge by.
    m : int
        Outputs.
    rng : numpy.random.Generator
        Draws the row samples.
    imprecise : bool
        Answers coarser than float64 (more rows per unknown, refit always tried).
    target : float
        The run's fidelity target (whether a refit of a wide network may help).
    solve_max_unknowns : int
        Largest ``k + d + 1`` of a full output refit.
    settings : AssembleSettings
        Rows per unknown of each fit, and when the full refit is tried.

    Returns
    -------
    ModelState
    """
    d = paid.d
    total = paid.total
    unknowns = ns.size + d + 1
    best: ModelState | None = None

    def consider(cand: ReluNetwork) -> None:
        nonlocal best
        err, mx = relative_error(cand, paid.Xv, paid.Yv)
        if best is None or not (err >= best.val_rel_l2):
            best = ModelState(cand, err, mx)

    # L and c only: d + 1 unknowns per output need few rows (and the hidden activations
    # of a wide network are large: rows × k floats). With the model right, the
    # Jacobian-based L and c below are 1e3-1e5x more precise; these win only while neurons
    # are missing, when any L, c is far off.
    consider(solve_affine(ns, *paid.sample(
        max(settings.affine_rows_per_unknown * (d + 1), settings.affine_min_rows), m, rng)))
    if paid.jac_J:
        consider(solve_affine_from_jacobians(
            ns, np.asarray(paid.jac_X), np.asarray(paid.jac_F), np.asarray(paid.jac_J)))
    if (unknowns <= solve_max_unknowns and total >= 2 * unknowns
            and full_solve_may_help(best.val_rel_l2, unknowns, imprecise, target, settings)):
        rows = settings.imprecise_solve_rows if imprecise else settings.full_solve_rows
        consider(solve_full(ns, *paid.sample(rows * unknowns, m, rng)))
    if paid.Xs.shape[0] >= 2 * unknowns and unknowns <= solve_max_unknowns:
        # stencil rows cluster around a few hundred line points; Gaussian points spread
        # the rounding over the measure the model is judged on
        consider(solve_full(ns, paid.Xs, paid.Ys))
    return best
