"""Every tolerance and knob of the extraction engine, each named for what it means."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

from .._errors import ConfigError

EPS64 = 2.220446049250313e-16


def _parse_value(key: str, kind: str, text: str):
    """``text`` as a value of the knob ``key`` whose annotation is ``kind``."""
    low = text.lower()
    if "None" in kind and low in ("none", "null"):
        return None
    base = kind.replace("| None", "").strip()
    if base == "bool":
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"config.{key} must be true or false, got {text!r}")
    if base == "str":
        return text
    try:
        if base == "int":
            return int(text)
        return float(text)
    except ValueError:
        extra = " or none" if "None" in kind else ""
        raise ConfigError(f"config.{key} must be {'an integer' if base == 'int' else 'a number'}"
                          f"{extra}, got {text!r}") from None


def config_options(items: Iterable[str]) -> dict:
    """``KEY=VALUE`` items (the CLI's ``--config``) as :class:`ExtractConfig` overrides, each
    value read as its knob's type: ``1e-9`` for a float, ``4`` for an int, ``true``/``false``
    for a flag, ``none`` for an optional knob's derived default. Checked against the knobs'
    own rules before anything runs.

    Raises
    ------
    ConfigError
        An item without ``=``, an unknown knob, a value of the wrong type, or one the knob
        does not accept.
    """
    types = {f.name: str(f.type) for f in fields(ExtractConfig)}
    changes: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"config item {item!r} is not KEY=VALUE (e.g. target_rel_l2=1e-9)")
        if key not in types:
            raise ConfigError(f"unknown config option {key!r}; known: {sorted(types)}")
        changes[key] = _parse_value(key, types[key], text)
    ExtractConfig().updated(**changes)
    return changes


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction settings. Defaults suit a float64 oracle; precision-dependent values are
    derived at run time from the measured output precision (steps grow with the noise).

    Attributes
    ----------
    on_mismatch : {"raise", "flag"}
        When the oracle is not a one-hidden-layer ReLU network: raise ``TargetMismatch``, or
        return the best model with ``stop_reason="target_mismatch"`` and the observation in
        ``report["verdict"]``.
    input_scale : float
        Standard deviation of the input distribution the model must match (N(0, s² I)).
    line_reach : float
        Probe lines run over ``t ∈ [-R, R]`` with ``R = line_reach · sqrt(d) · input_scale``.
        A line of reach C meets about ``(2/π)·arctan(C)`` of the neurons (64 → 99%).
    line_segments : int or None
        The first line is cut into this many segments (independent search tasks). Fixed, so
        the queries do not depend on the number of workers. None: 16 for float64 answers
        (each segment end costs three queries, a large share of a small network's total
        at 64 segments), 64 for imprecise answers (their search is measured to need the
        shorter segments: float32 rel L2 6e-4 with 64, 8.5e-3 with 16 at d=64 k=128).
    slope_step : float
        One-sided slope at a split point uses a step of ``slope_step × interval width``:
        small enough that a kink rarely hides inside it, large enough for a precise slope.
    check_step : float
        A candidate kink ``t*`` is confirmed by the values at ``t* ∓ check_step × width``
        lying on the left and right lines (two kinks closer than that look like one; later
        lines separate them).
    check_factor : float
        A value "lies on a line" when it is within ``check_factor × noise`` of it.
    min_width : float
        Intervals narrower than ``min_width × (1 + |t|)`` are not split further.
    stencil_crossing_rate : float or None
        Target probability that a region's finite-difference stencil crosses a hyperplane;
        sets the stencil step from the local kink density (larger steps: more precision,
        more repairs). None: 0.1 for float64 answers when the first line has at most 2048
        kinks (a crossing often breaks several columns at once, and the re-measured stencil
        costs d more queries; the shorter step still leaves the Jacobians ~1e-10 precise);
        0.3 for wider networks (with thousands of kinks per line the shorter step's
        Jacobians are too imprecise for the fidelity target) and for imprecise answers
        (float32, rounded decimals), whose Jacobian precision grows with the step.
    stencil_checks : int
        Extra points per region that verify the Jacobian and locate a bad stencil row
        (with two or three inputs at most two are used).
    regions_per_task : int
        Regions whose Jacobians one worker task computes (one batch of queries).
    validation_points : int
        Fresh Gaussian points queried once to estimate the model's error.
    target_rel_l2 : float or None
        Stop when the validation relative L2 error is at or below this (None: derived from the
        measured precision).
    clean_lines : int
        Later lines that must find nothing new before the model is certified.
    extra_clean_lines : int
        Further lines searched while the validation error stays above target although lines
        come back clean; after that the error is reported as a precision floor.
    max_rounds : int
        Upper bound on probe lines.
    solve_max_unknowns : int
        Refit the output weights by least squares when ``k + d + 1`` is at most this; larger
        networks keep the output weights measured from the jumps.
    residual_scan : bool
        Float64 answers: later lines look for kinks of the residual ``F − model`` (about a
        quarter of a query per known kink, :func:`.kinks.residual_search`) instead of
        re-locating every known kink (two per kink, :func:`.kinks.guided_search`).
    residual_stride : int
        A later line's residual is sampled in every ``residual_stride``-th gap between the
        kinks the model predicts first, then in every gap where those samples bend
        (:func:`.kinks.residual_samples`): the same kinks found for fewer rows (4: 10%
        fewer at d=2, 2.6% at d=64, k=512), at the price of one more round trip on a line
        that flags something. 1: every gap in one request (for an API whose latency costs
        more than its rows).
    refine_factor : float
        A neuron whose direction error estimate exceeds ``refine_factor ×`` the median is
        measured again where a later line crosses it (off by default: ``inf``).
    dedup_factor : float
        Two neurons merge when their hyperplanes agree within ``dedup_factor ×`` their
        estimated errors.
    polish_query_factor : float
        With imprecise answers (float32, rounded decimals) every parameter is refined by
        Gauss-Newton over bought Gaussian rows (about 2.5 answers per unknown). Where the
        refinement's size gate rules that out (about 1e10 flops per conjugate-gradient
        iteration), hyperplanes are polished from kink positions on further lines (about
        ``2·n`` queries a line for ``n`` neurons) until the run has spent
        ``polish_query_factor × n·(d+1)`` queries in all, or the validation error stops
        improving.
    """

    on_mismatch: str = "raise"
    input_scale: float = 1.0
    line_reach: float = 64.0
    line_segments: int | None = None
    slope_step: float = 1e-4
    check_step: float = 1e-3
    check_factor: float = 64.0
    min_width: float = 1e-12
    stencil_crossing_rate: float | None = None
    stencil_checks: int = 3
    regions_per_task: int = 32
    validation_points: int = 128
    target_rel_l2: float | None = None
    clean_lines: int = 1
    extra_clean_lines: int = 4
    max_rounds: int = 40
    solve_max_unknowns: int = 3000
    residual_scan: bool = True
    residual_stride: int = 4
    refine_factor: float = float("inf")
    dedup_factor: float = 30.0
    polish_query_factor: float = 2.9

    def __post_init__(self) -> None:
        positive = ("input_scale", "line_reach", "slope_step", "check_step", "check_factor",
                    "min_width", "dedup_factor", "refine_factor", "polish_query_factor")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"config.{name} must be > 0, got {getattr(self, name)!r}")
        if self.line_segments is not None and int(self.line_segments) < 1:
            raise ConfigError(f"config.line_segments must be >= 1 or None, got "
                              f"{self.line_segments!r}")
        ints = ("stencil_checks", "regions_per_task", "clean_lines",
                "max_rounds", "solve_max_unknowns", "residual_stride")
        for name in ints:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"config.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.extra_clean_lines < 0:
            raise ConfigError(
                f"config.extra_clean_lines must be >= 0, got {self.extra_clean_lines}")
        if self.on_mismatch not in ("raise", "flag"):
            raise ConfigError(
                f"config.on_mismatch must be 'raise' or 'flag', got {self.on_mismatch!r}")
        if self.stencil_checks < 3:
            raise ConfigError("config.stencil_checks must be >= 3 (one detects any bad column, "
                              f"two locate it), got {self.stencil_checks}")
        if self.validation_points < 0:
            raise ConfigError(
                f"config.validation_points must be >= 0, got {self.validation_points}")
        if self.stencil_crossing_rate is not None and not self.stencil_crossing_rate > 0:
            raise ConfigError(f"config.stencil_crossing_rate must be > 0 or None, got "
                              f"{self.stencil_crossing_rate!r}")
        if self.target_rel_l2 is not None and not self.target_rel_l2 > 0:
            raise ConfigError(f"config.target_rel_l2 must be > 0, got {self.target_rel_l2!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def updated(self, **changes) -> ExtractConfig:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown config option(s): {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)
