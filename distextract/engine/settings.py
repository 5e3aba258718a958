"""Settings derived at run time from the configuration and the measured precision, computed
in one place (:func:`derive`) and written to the report (``report["derived"]``).

Where a knob of :class:`.ExtractConfig` is None its value is derived here; where the answers
are imprecise (float32, rounded decimals: :attr:`.precision.Precision.imprecise`) some values
differ from the float64 ones. Each rule is stated once, beside its constant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ._config import EPS64, ExtractConfig
from .neurons import EXPLAIN_FACTOR, MATCH_CEILING, RANK_FACTOR

if TYPE_CHECKING:  # precision.py takes its ProbeSettings from here
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
IMPRECISE_TARGET_NOISE = 16.0  # ... imprecise: the Gauss-Newton refinement reaches about 16 × the noise (float32: 9.5e-7)
COARSE_NOISE = 1e-4  # answers rounded coarser than this (relative half-ulp: float16 4.9e-4,
# bfloat16 3.9e-3; float32 6e-8) are *coarse*: their region Jacobians place hyperplanes too
# roughly for searched lines to tell a known neuron from a new one (.imprecise.coarse)
COARSE_TARGET_NOISE = 2.0  # ... and their target is this many × the noise, not 16 × (bfloat16:
# 7.8e-3, not 6.25e-2: issue 19 asks 1e-2 of float16 and bfloat16 answers; the refinement over
# 5 Gaussian answers per unknown reaches 5e-5 to 1e-2 there)
QUERY_BOUND_FACTOR = 16.0  # imprecise answers: after the first line a run sends at most this
# many × (kinks on it) × (d + 1) rows (the QuerySession's cap; a float32 run needs about 3;
# the probe, validation points and first line, paid before, come on top: on small networks
# they are most of the cost, d=8, k=9: 13 × k(d+1) in all): answers
# coarser than the checks assume split search intervals without end (bfloat16 answers taken
# for decimals:7 once bought 581,500 rows for a 32-neuron network)



def is_coarse(imprecise: bool, noise: float) -> bool:
    """Whether answers of this relative rounding are *coarse* (:data:`COARSE_NOISE`): the one
    test :func:`derive` (their target) and :func:`.imprecise.coarse` (their refinement) share."""
    return bool(imprecise and noise >= COARSE_NOISE)

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
    query_bound : int or None
        Imprecise answers, once the first line is searched: the most rows the run sends
        (the rows sent until then + QUERY_BOUND_FACTOR × first-line kinks × (d + 1)); None
        for float64 answers.
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
    query_bound: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def derive(cfg: ExtractConfig, precision: Precision, first_kinks: int = 0,
           long_steps: bool = False, d: int = 0,
           bound_factor: float = QUERY_BOUND_FACTOR, opening: int = 0) -> Derived:
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
    d : int
        Input dimension (0: unknown, no query bound).
    bound_factor : float
        The query bound's factor (:attr:`LoopSettings.query_bound_factor`).
    opening : int
        Rows sent up to the end of the first line (added to the query bound).
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
        if is_coarse(imprecise, precision.noise):
            factor = COARSE_TARGET_NOISE
        target = max(floor, factor * precision.noise)
    return Derived(
        imprecise=imprecise, check_factor=check, line_segments=segments, crossing_rate=rate,
        rank_factor=IMPRECISE_RANK_FACTOR if imprecise else RANK_FACTOR,
        explain_factor=IMPRECISE_EXPLAIN_FACTOR if imprecise else EXPLAIN_FACTOR,
        match_ceiling=float(max(MATCH_CEILING, min(MATCH_CEILING_MAX,
                                                   MATCH_CEILING_NOISE * precision.noise))),
        target_rel_l2=target, target_floor=floor,
        query_bound=(int(opening + bound_factor * first_kinks * (d + 1))
                     if imprecise and first_kinks > 0 and d > 0 else None))



@dataclass(frozen=True)
class ProbeSettings:
    """The precision probe (:mod:`.precision`)."""

    # short lines of the probe ...
    lines: int = 4
    # ... with this many points at each of two spacings:
    points: int = 4
    # (input scales) second differences are rounding noise only
    fine: float = 1e-6
    # (input scales) a smooth activation's grow like the step squared
    coarse: float = 1e-4
    # coarse over fine second differences that call a line curved
    smooth_ratio: float = 100.0
    # a repeat one ulp away may differ by this (relative) from the first answer
    nondeterminism_limit: float = 1e3 * EPS64
    # decimal rounding counts when its quantum is at least this share of the noise
    decimal_min_share: float = 0.1
    # answers noisier than this (relative) take the imprecise path
    imprecise_noise: float = 1e-10


@dataclass(frozen=True)
class SessionSettings:
    """Task cutting of the query session (:mod:`.session`)."""

    # the first line's segments are searched by this many tasks (fewer, fuller requests), or
    # without a requests/s limit by one per worker if there are more
    search_tasks: int = 4
    # most rows of one evaluation task ...
    eval_task_rows: int = 512
    # ... and, spread over the slots, the fewest (the oracle's batch if known)
    eval_min_rows: int = 64


@dataclass(frozen=True)
class PaidSettings:
    """What the paid-row store keeps (:mod:`.paid`)."""

    # a line's stencil rows are kept whole up to this many ...
    solve_row_budget: int = 60_000
    # ... above it, a sample of at least this many per region
    solve_rows_per_region: int = 8
    # region Jacobians kept for the L, c fit
    jacobian_samples: int = 2048


@dataclass(frozen=True)
class AssembleSettings:
    """Output assembly (:mod:`.assemble`)."""

    # rows of the L, c least-squares fit per unknown ...
    affine_rows_per_unknown: int = 4
    # ... and at least this many
    affine_min_rows: int = 2048
    # float64: rows per unknown of the full output refit over the paid rows ...
    full_solve_rows: int = 8
    # ... imprecise answers (more rows average the rounding out)
    imprecise_solve_rows: int = 40
    # float64: the output refit is always tried below this many unknowns, ...
    full_solve_unknowns: int = 512
    # ... above it only for a model at most this factor off its target
    full_solve_reach: float = 1e3


@dataclass(frozen=True)
class ScanSettings:
    """Line scans (:mod:`.scan`)."""

    # slope and check steps grow to this times sqrt(noise) for noisy answers ...
    noisy_step_factor: float = 30.0
    # ... and never beyond this (relative to the interval)
    max_step: float = 0.05
    # cut points of a residual gap-search interval whose ends' lines miss it (SearchParams):
    # fewer rounds for a few more rows (the first line keeps one: there the extra points
    # cost a few per cent more queries on small networks)
    residual_split_points: int = 3
    # slope steps of the one sensitive line (run loop)
    sensitive_step_factor: float = 100.0
    # imprecise answers: anchor points of a search step (relative to the interval)
    imprecise_anchor_step: float = 0.25
    # float64: a gap whose slope change is off its predicted kink's by more
    # than this (relative) holds a second kink the guided search looks for (k=8192: a missing
    # neuron hides next to a known one)
    jump_rtol: float = 1e-3
    # points per block when the coordinator evaluates the model
    model_block: int = 512
    # residual search: the model's error at a predicted kink, in error
    # estimates (measured kinks sit within 0.2 of one at d=128, k=8192)
    residual_spreads: float = 4.0
    # the first line's stencils take the wide crossing rate's longer steps when their
    # rounding would miss the fidelity goal by this factor (the estimate is an upper bound:
    # a larger factor lets rounding-limited runs end just above the goal)
    long_steps_factor: float = 3.0


@dataclass(frozen=True)
class LineRules:
    """The per-line update and clean-up rules (:mod:`.update`, :mod:`.cleanup`)."""

    # predicted crossings this close (relative) to the line's ends or to
    # each other are left out (a guided search needs distinct points inside the line)
    crossing_margin: float = 1e-9
    # a line where more than this share of the kinks (and more than mismatch_min_kinks)
    # match no known hyperplane, twice in a row, is a verdict: kinks that bend ...
    mismatch_fraction: float = 0.2
    mismatch_min_kinks: int = 4
    # ... unless the answers are noisier than this (then it is a precision limit)
    bend_verdict_noise: float = 1e-10
    # with noisier answers the stop (a precision limit) comes on this many such lines in a
    # row: a wide target's first residual line legitimately leaves ~20% of its kinks new
    # (d=64 k=128), and two such lines stopped a run that a third line completes
    imprecise_mismatch_lines: int = 3
    # an old neuron this close (of the local kink spacing) to a new one's crossing may be a merge
    merge_spacing: float = 0.1
    # new neurons of one line tested for removal when it made validation worse
    new_reject_max: int = 16
    # a neuron crossing at least this many lines ...
    unseen_min_lines: int = 3
    # ... and seen on at most this share of them is tested for removal
    unseen_share: float = 0.5
    # ... after a clean line, as soon as this many lines cross it
    unseen_early_lines: int = 2
    # ... (the least seen first, at most this many)
    unseen_max: int = 32


@dataclass(frozen=True)
class FinishSettings:
    """Finishing, float64 answers (:mod:`.finish`)."""

    # float64: a neuron whose direction error exceeds this (relative to
    # max(1, |β|)) gets its offset pinned along its normal (:mod:`.pin`): its β error is at most
    # about 1.6 × err (measured at d=128, k=512), DESIGN.md matches biases within 1e-6
    pin_err: float = 4e-7
    # neurons pinned per batch of queries
    pin_chunk: int = 64
    # second pass: own window this fraction of the error estimate's
    pin_tight: float = 0.1
    # ... and, above remeasure_goal, one whose |a|·err is this many medians
    pin_score: float = 3.0
    # the pinned model is kept unless validation gets worse than this factor
    pin_keep: float = 1.1
    # lines tried near a crowded foot, ...
    pin_retries: int = 8
    # ... this many input scales from it
    pin_shift: float = 0.1
    # float64: a pinned neuron whose direction error exceeds this (a weak
    # neuron: its jump is small) gets its hyperplane from d + 4 kinks located on it ...
    orient_err: float = 1e-4
    # (d + this many)
    orient_points: int = 4
    # its kinks are looked for within this many direction errors
    orient_margin: float = 1.0
    # ... spending at most this share of k·(d+1) queries
    orient_share: float = 0.02
    # ... but at least this many (a small network's 2% is less than one)
    orient_min: int = 1
    # float64: while validation is above this (DESIGN.md's fidelity for
    # random networks), the neurons with the largest |a|·err are measured again at their foot
    remeasure_goal: float = 1e-8
    # ... those above this many times the median |a|·err ...
    remeasure_factor: float = 5.0
    # ... spending at most this share of k·(d+1) queries
    remeasure_share: float = 0.02
    # ... if they hold at least this share of the error estimate (then measuring them again
    # lowers the model's error by about a quarter for under 2% more queries)
    remeasure_min_share: float = 0.3


@dataclass(frozen=True)
class LoopSettings:
    """The stop rules (:mod:`.loop`)."""

    # a model missing validation by more than this gets a verdict line
    mismatch_error: float = 1e-2
    # opening in one request when the budget holds 4x its rows
    opening_budget_factor: int = 4
    # imprecise answers: a searched line changing at most this many
    imprecise_few_changes: int = 2
    # (or this share of the) neurons ends the searched lines
    imprecise_few_share: float = 0.03
    # imprecise answers: this many searched lines in a row that leave the validation error
    # above imprecise_stall_gain × its best so far end the searched lines too. On a wide
    # target every line re-measures a few of its neurons from Jacobians known to ~1e-3, so
    # it keeps "changing" more than the few-changes rule allows while the error stays at the
    # Jacobians' level, and the lines ran to the query bound: d128-k256-m10 float32 seed 30
    # bought 157,614 rows (4.77·k(d+1)); ending them here, 80,380 (2.43), the refinement
    # (its births included) doing the rest, 1.46e-8 -> 1.69e-8, 256/256 matched, certified.
    # Only with this many outputs or more: with one, each Gaussian row of the refinement
    # answers one equation, not m, and a line's neurons are cheaper than the refinement's
    # births (d64-k128-m1 float32 seed 30 with the rule: 31,412 -> 38,697 rows, CPU 111 ->
    # 369 s; m = 3: 30,447 -> 25,077 rows, 2.8e-8 -> 1.7e-8)
    imprecise_stall_lines: int = 2
    imprecise_stall_gain: float = 0.9
    imprecise_stall_min_outputs: int = 3
    # imprecise answers: rows sent after the first line at most this many × its kinks ×
    # (d + 1) (QUERY_BOUND_FACTOR)
    query_bound_factor: float = QUERY_BOUND_FACTOR


@dataclass(frozen=True)
class Settings:
    """The engine's fixed settings, by stage (each documented once, beside its field).
    A run takes the defaults; tests pass other values (``Coordinator(..., settings=)``)."""

    probe: ProbeSettings = field(default_factory=ProbeSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    paid: PaidSettings = field(default_factory=PaidSettings)
    assemble: AssembleSettings = field(default_factory=AssembleSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    rules: LineRules = field(default_factory=LineRules)
    finish: FinishSettings = field(default_factory=FinishSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
