"""The precision probe: how precise the oracle's answers are, whether it is deterministic,
and whether its kinks are sharp, measured on a few short lines before anything else.

Everything downstream derives from the frozen :class:`Precision` it returns: search steps,
tolerances, the fidelity target, and whether a run takes the imprecise path (float32 or
rounded answers, :mod:`.imprecise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import NonDeterministicOracle, TargetMismatch
from ._config import EPS64
from .settings import ProbeSettings
from .tasks import output_scale

_DEFAULT = ProbeSettings()
# The default probe's shape, for callers that size a budget before a run (_extract.py)
PROBE_LINES = _DEFAULT.lines
PROBE_POINTS = _DEFAULT.points


@dataclass(frozen=True)
class Precision:
    """The measured precision of the oracle's answers.

    Attributes
    ----------
    noise : float
        Relative rounding error of an answer (relative to :func:`.tasks.output_scale`).
    fref : float
        Output scale: the median largest output of the probe (answers rounded to decimals:
        the median output scale, and errors are absolute).
    absolute : bool
        Whether the rounding error is absolute (answers rounded to a number of decimals)
        rather than relative to each answer's size.
    imprecise_noise : float
        Answers noisier than this take the imprecise path
        (:attr:`.settings.ProbeSettings.imprecise_noise`).
    """

    noise: float = 4 * EPS64
    fref: float = 1.0
    absolute: bool = False
    imprecise_noise: float = _DEFAULT.imprecise_noise

    @property
    def imprecise(self) -> bool:
        """Answers far coarser than float64 rounding (float32, rounded decimals)."""
        return self.noise > self.imprecise_noise


def probe_points(rng: np.random.Generator, d: int, s: float,
                 settings: ProbeSettings = _DEFAULT) -> np.ndarray:
    """The probe's rows: ``settings.lines`` lines of ``settings.points`` points at spacing
    ``settings.fine·s``, the same lines at ``settings.coarse·s`` (their first point shared),
    and the first point again one ulp away. Shape ((2·points − 1)·lines + 1, d)."""
    base = rng.standard_normal((settings.lines, d)) * s
    dirs = rng.standard_normal((settings.lines, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    blocks = []
    for eta in (settings.fine * s, settings.coarse * s):
        steps = np.arange(settings.points) * eta
        blocks.append(base[:, None, :] + steps[None, :, None] * dirs[:, None, :])
    return np.concatenate([blocks[0].reshape(-1, d), blocks[1][:, 1:].reshape(-1, d),
                           np.nextafter(base[:1], np.inf)], axis=0)


def measure_precision(Y: np.ndarray, queries: int,
                      settings: ProbeSettings = _DEFAULT) -> Precision:
    """Measure output precision, determinism and smoothness from the answers ``Y`` at
    :func:`probe_points` (taken with the same ``settings``).

    On each of ``settings.lines`` short lines, ``settings.points`` points spaced
    ``settings.fine·s`` (their second differences are pure rounding noise: the output
    precision) and as many spaced ``settings.coarse·s`` (a smooth activation's second
    differences grow like the step squared; a ReLU network's stay at the noise unless a
    kink falls inside). One more row repeats the first point one ulp away (a journal would
    serve an exact repeat from disk), so a non-deterministic oracle shows a difference far
    above rounding.

    Parameters
    ----------
    Y : ndarray of shape (n_probe, m)
    queries : int
        Rows paid so far (named in the errors).
    settings : ProbeSettings

    Raises
    ------
    NonDeterministicOracle
        The repeated point was answered differently.
    TargetMismatch
        Second differences grow like the step squared on most probe lines.
    """
    fref = float(np.median(np.max(np.abs(Y), axis=1)))
    fref = fref if fref > 0 else 1.0
    absolute = False
    sc = output_scale(Y, fref)
    lines, points = settings.lines, settings.points
    n1 = lines * points
    fine = Y[:n1].reshape(lines, points, -1)
    coarse = np.concatenate([fine[:, :1], Y[n1:-1].reshape(lines, points - 1, -1)], axis=1)
    scl = sc[:n1].reshape(lines, points)[:, 1:-1]

    def second(G):
        return np.max(np.abs(G[:, :-2] - 2 * G[:, 1:-1] + G[:, 2:]), axis=2) / scl

    d_fine, d_coarse = second(fine), second(coarse)
    # Rounding noise: the largest fine second difference on all lines but one (a kink
    # inside one fine window must not set the precision).
    per_line = np.sort(np.max(d_fine, axis=1))
    noise = max(4 * EPS64, float(per_line[-2] if per_line.size > 1 else per_line[-1]))
    # Quantised answers repeat exactly between nearby points. Answers rounded to N
    # decimals have an absolute error (half a unit of the last decimal) whatever their
    # size; float32 answers round relative to their size (the fine differences above).
    steps_all = np.abs(np.diff(np.concatenate([fine, coarse], axis=1), axis=1))
    quantum = decimal_quantum(Y)
    if quantum is not None and quantum / float(np.median(sc)) < settings.decimal_min_share * noise:
        # every answer has few enough digits to be a multiple of 10**-N, but that
        # quantum is far below the measured noise: not what limits the answers (float32
        # values printed with their shortest decimal repr have ~9 significant digits;
        # an absolute noise model built on them fails every check on the larger answers,
        # and the search splits intervals until the budget runs out)
        quantum = None
    ulp = binary_rounding(Y)
    if quantum is not None:
        absolute = True
        fref = float(np.median(sc))
        noise = max(noise, quantum / fref)
    elif ulp is not None:
        # float32 (float16, bfloat16) answers round to half a unit in the last place:
        # with one output the fine second differences are often all exactly 0, and a
        # float64-sized noise would make the search split on rounding without end
        noise = max(noise, ulp)
    elif np.any(steps_all == 0.0):
        nz = steps_all[steps_all > 0]
        if nz.size:
            noise = max(noise, float(np.min(nz)) / float(np.median(sc)))
    rep = float(np.max(np.abs(Y[-1] - Y[0]))) / float(sc[0])
    # Rounded or float32 answers repeat exactly; a random oracle does not.
    if rep > settings.nondeterminism_limit:
        raise NonDeterministicOracle(
            f"the oracle answered the same input twice with different outputs (relative "
            f"difference {rep:.3g}, rounding noise {noise:.3g}); extraction needs a "
            f"deterministic oracle", queries)
    noise = max(noise, rep)
    curved = np.sum(np.median(d_coarse, axis=1) > settings.smooth_ratio * noise)
    if curved >= lines - 1:
        ratio = float(np.median(d_coarse) / max(np.median(d_fine), noise))
        hint = "a smooth activation (GELU, softplus, sigmoid?)"
        if (Y.shape[1] >= 2 and np.all(Y >= 0.0) and np.all(Y <= 1.0)
                and np.all(np.abs(Y.sum(axis=1) - 1.0) <= 1e-6)):
            hint = ("the answers are probabilities (every row in [0, 1], summing to 1): "
                    "extract with output='softmax' (CLI: --output softmax)")
        raise TargetMismatch(
            f"no sharp kinks: second differences grow like the step squared on "
            f"{curved} of {lines} probe lines (x{ratio:.3g} for a "
            f"{settings.coarse / settings.fine:.3g}x longer step) — "
            f"{hint}", queries)
    return Precision(noise=noise, fref=fref, absolute=absolute,
                     imprecise_noise=settings.imprecise_noise)


def is_float32(Y: np.ndarray) -> bool:
    """Whether every answer is a float32 value (rounded relative to its size)."""
    return bool(np.all(Y.astype(np.float32).astype(np.float64) == Y))


def binary_rounding(Y: np.ndarray) -> float | None:
    """Half a unit in the last place, relative (``2^-p``), of the coarsest binary format
    that holds every answer: bfloat16 (p = 8), float16 (11) or float32 (24); None for
    answers that need more bits (float64)."""
    mant, _ = np.frexp(np.asarray(Y, dtype=np.float64)[np.isfinite(Y)])
    if mant.size == 0 or not np.any(mant):
        return None
    for p in (8, 11, 24):
        scaled = np.ldexp(mant, p)
        if np.all(scaled == np.round(scaled)):
            return 2.0 ** -p
    return None


def decimal_quantum(Y: np.ndarray) -> float | None:
    """``10**-N`` when every answer is a multiple of it (answers rounded to ``N`` decimals,
    the smallest such ``N``), else None. Float32 answers are not decimal-rounded, and
    neither are answers whose decimal step is finer than their binary rounding: bfloat16
    and float16 values of size about 1 are short decimals (``1.0078125`` is a multiple of
    ``1e-7``), but what limits them is their 8 or 11 significand bits, a step about 10^5
    times coarser (taken for ``decimals:7``, every check is 10^5 times too strict and the
    search splits intervals until the budget runs out)."""
    big = float(np.max(np.abs(Y))) if Y.size else 0.0
    if big == 0.0 or is_float32(Y) and not np.all(Y == np.round(Y, 7)):
        return None
    for n in range(16):
        if big * 10.0 ** n >= 2.0 ** 50:
            return None
        Z = Y * 10.0 ** n
        # a multiple of 10**-n is 0 or at least 10**-n in size: answers of 1e-8 are not
        # "rounded to 0 decimals" (that would set a relative noise of 3e7)
        if (np.all(np.abs(Z - np.round(Z)) <= 1e-6)
                and not np.any((Z != 0.0) & (np.abs(Z) < 0.5))):
            quantum = 10.0 ** -n
            ulp = binary_rounding(Y)
            if ulp is not None:
                # the binary step (twice the half-ulp) at the median answer
                size = float(np.median(np.abs(Y[Y != 0.0])))
                if quantum < 2.0 * ulp * size:
                    return None
            return quantum
    return None
