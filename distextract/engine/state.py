"""The run's state between stages: the model in progress, what each line found, and what
the engine returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._model import ReluNetwork
from .neurons import NeuronSet
from .precision import Precision


COUNTERS = (
    "unconfirmed_removed",  # neurons seen on one line only that a later line did not see
    "remeasured",  # neurons measured again on a later line (the new measurement replaced it)
    "disputed",  # re-measurements that did not explain the old kink, left to validation ...
    "settled",  # ... and kept by it (cleanup.settle)
    "merges_dropped",  # old neurons where a line's new ones cross: merged kinks (cleanup)
    "unseen_dropped",  # neurons most lines crossing them did not see (cleanup)
    "new_rejected",  # new neurons of a line that made validation worse (cleanup)
    "pins_mirrored",  # pins averaged with a mirrored line through the foot (finish)
    "neurons_fused",  # close pairs of hyperplanes fused into one neuron (imprecise: .fuse)
)


class PrecisionLimited(Exception):
    """Internal: stop the rounds, the answers are too imprecise to go further."""


@dataclass
class LineRecord:
    """What one line found (for run directories and reports)."""

    index: int
    kind: str  # "first", "residual", "sensitive" or "polish"
    u: np.ndarray
    v: np.ndarray
    reach: float
    kinks: np.ndarray
    resolved: np.ndarray
    regions_measured: int
    regions_failed: int
    regions_repaired: int
    queries: int


@dataclass
class EngineState:
    """The model in progress (owned by the coordinator; changed by the stages).

    ``neurons`` and ``model`` are None until the first line is assembled; ``refinement``
    and ``finishing`` until those stages run.
    """

    d: int
    m: int = 0
    precision: Precision = field(default_factory=Precision)
    neurons: NeuronSet | None = None
    model: ReluNetwork | None = None
    val_rel_l2: float = float("inf")
    val_max_abs: float = float("inf")
    lines: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    first_kinks: int = 0  # kinks the first line found (about the number of neurons)
    opening_queries: int = 0  # rows sent up to the end of the first line
    long_steps: bool = False  # stencils take the wide crossing rate (scan.longer_steps)
    # how far a kink located by a full search lay off its neuron's hyperplane (normalised
    # offset), by the neuron's (first line, kink position) (cleanup.note_offsets)
    offsets: dict = field(default_factory=dict)
    # what the per-line rules did (update, cleanup, finish), by mechanism
    counters: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    refinement: dict | None = None  # what the Gauss-Newton refinement did (imprecise answers)
    finishing: dict | None = None  # what the float64 finishing pass did (pins, re-measures)

    def snapshot(self) -> tuple:
        """The model and what describes it (neurons, validation errors, refinement record),
        for :meth:`restore` when a later step that refits it is refused (a repair round, the
        quiet rounds)."""
        return (self.model, self.neurons, self.val_rel_l2, self.val_max_abs, self.refinement)

    def restore(self, snapshot: tuple) -> None:
        """Put back a :meth:`snapshot`."""
        (self.model, self.neurons, self.val_rel_l2, self.val_max_abs,
         self.refinement) = snapshot

    @property
    def noise(self) -> float:
        """Relative rounding error of the answers (:class:`.precision.Precision`)."""
        return self.precision.noise

    @property
    def fref(self) -> float:
        """Output scale (:class:`.precision.Precision`)."""
        return self.precision.fref

    @property
    def absolute(self) -> bool:
        """Whether rounding errors are absolute (:class:`.precision.Precision`)."""
        return self.precision.absolute


@dataclass(frozen=True)
class EngineResult:
    """What :meth:`.loop.Coordinator.run` returns."""

    model: ReluNetwork
    neurons: NeuronSet
    certified: bool
    stop_reason: str
    val_rel_l2: float
    val_max_abs: float
    noise: float
    target_rel_l2: float
    lines: list
    rounds: list
    verdict: str | None = None
    refinement: dict | None = None
    finishing: dict | None = None
    crossing_rate: float | None = None  # the stencils' (ExtractConfig.stencil_crossing_rate)
    derived: dict | None = None  # the settings in force at the end (settings.derive)
    counters: dict | None = None  # what each mechanism did (state.COUNTERS)
    # imprecise answers: the check rows' verdict (certificate.certify); None for float64
    certificate: dict | None = None
    # imprecise answers: whether an affine map replaced the model (Coordinator.affine_fallback)
    affine_fallback: dict | None = None
