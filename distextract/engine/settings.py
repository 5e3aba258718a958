"""Settings derived at run time from the configuration and the measured precision, computed
in one place (:func:`derive`) and written to the report (``report["derived"]``).

Where a knob of :class:`.ExtractConfig` is None its value is derived here; where the answers
are imprecise (float32, rounded decimals: :attr:`.precision.Precision.imprecise`) some values
differ from the float64 ones. Each rule is stated once, beside its constant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._config import ExtractConfig
from .neurons import EXPLAIN_FACTOR, MATCH_CEILING, RANK_FACTOR
from .precision import Precision

LINE_SEGMENTS = 16  # first-line segments for float64 answers (ExtractConfig.line_segments)
IMPRECISE_LINE_SEGMENTS = 64  # ... for imprecise answers
CROSSING_RATE = 0.1  # stencil crossing rate for float64 answers (ExtractConfig docs) ...
CROSSING_RATE_MAX_KINKS = 2048  # ... up to this many kinks on the first line
WIDE_CROSSING_RATE = 0.3  # wider networks (their Jacobians need the longer step), networks
# whose stencil rounding would miss the fidelity goal (scan.longer_steps), imprecise answers
IMPRECISE_CHECK_FACTOR = 4.0  # check_factor at most this for imprecise answers: their
# rounding is bounded by half a unit of the last place, which the probe measures directly
# (float64 rounding grows with intermediate sums the probe does not see)
IMPRECISE_RANK_FACTOR = 1.0  # rank test of a jump (neurons.jumps_to_neurons), imprecise
IMPRECISE_EXPLAIN_FACTOR = 3.0  # a kink is explained within this many errors, imprecise
MATCH_CEILING_NOISE = 1e5  # imprecise measurements of one hyperplane differ up to this ...
MATCH_CEILING_MAX = 0.05  # ... times the noise, at most this
TARGET_FLOOR = 1e-7  # the derived fidelity target is never below this
JACOBIAN_TARGET_NOISE = 1e5  # float64: the target is this many times the noise (rounding of
# intermediate sums limits what the Jacobians reach) ...
IMPRECISE_TARGET_NOISE = 1e3  # ... imprecise: kink positions reach about 1e3 × the noise


@dataclass(frozen=True)
class Derived:
    """The settings a run uses at a given point (they change once: when the first line's
    kinks or stencil rounding ask for longer stencil steps).

    Attributes
    ----------
    imprecise : bool
        Answers coarser than float64 rounding.
    check_factor : float
        A value lies on a line within this many noise units.
    line_segments : int
        Segments of the first line.
    crossing_rate : float
        Stencil crossing rate.
    rank_factor, explain_factor : float
        Tolerances of the rank test of jumps and of the kink-to-hyperplane match.
    match_ceiling : float
        Two measurements of one hyperplane never differ by more than this.
    target_rel_l2 : float
        Validation error that certifies.
    target_floor : float
        The lowest target a run derives (or the configured one).
    """

    imprecise: bool
    check_factor: float
    line_segments: int
    crossing_rate: float
    rank_factor: float
    explain_factor: float
    match_ceiling: float
    target_rel_l2: float
    target_floor: float

    def to_dict(self) -> dict:
        return asdict(self)


def derive(cfg: ExtractConfig, precision: Precision, first_kinks: int = 0,
           long_steps: bool = False) -> Derived:
    """The settings of a run with configuration ``cfg`` and measured ``precision``.

    Parameters
    ----------
    cfg : ExtractConfig
    precision : Precision
    first_kinks : int
        Kinks the first line found (0 before it is searched).
    long_steps : bool
        Whether the first line's stencil rounding asked for longer steps
        (:func:`.scan.longer_steps`).
    """
    imprecise = precision.imprecise
    check = min(cfg.check_factor, IMPRECISE_CHECK_FACTOR) if imprecise else cfg.check_factor
    if cfg.line_segments is not None:
        segments = int(cfg.line_segments)
    else:
        segments = IMPRECISE_LINE_SEGMENTS if imprecise else LINE_SEGMENTS
    if cfg.stencil_crossing_rate is not None:
        rate = cfg.stencil_crossing_rate
    elif imprecise or first_kinks > CROSSING_RATE_MAX_KINKS or long_steps:
        rate = WIDE_CROSSING_RATE
    else:
        rate = CROSSING_RATE
    floor = TARGET_FLOOR if cfg.target_rel_l2 is None else cfg.target_rel_l2
    if cfg.target_rel_l2 is not None:
        target = cfg.target_rel_l2
    else:
        factor = IMPRECISE_TARGET_NOISE if imprecise else JACOBIAN_TARGET_NOISE
        target = max(floor, factor * precision.noise)
    return Derived(
        imprecise=imprecise, check_factor=check, line_segments=segments, crossing_rate=rate,
        rank_factor=IMPRECISE_RANK_FACTOR if imprecise else RANK_FACTOR,
        explain_factor=IMPRECISE_EXPLAIN_FACTOR if imprecise else EXPLAIN_FACTOR,
        match_ceiling=float(max(MATCH_CEILING, min(MATCH_CEILING_MAX,
                                                   MATCH_CEILING_NOISE * precision.noise))),
        target_rel_l2=target, target_floor=floor)
