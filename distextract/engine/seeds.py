"""Named random streams of a run: every random choice of the engine draws from one of these,
each a child of the run's seed (``SeedSequence(seed)`` spawned by a fixed key), so a run is
reproducible from its seed and independent of scheduling.

The keys are part of the golden traces (tests/golden): changing one changes the queries.
Streams drawn elsewhere from a line's own seed: :func:`.lines.make_line` (key ``(7, index)``
of the run's seed), :meth:`.lines.Line.basis` (``[line.seed, 1]``) and the worker-side row
sample of :func:`.tasks._sample_rows` (``[line.seed, 3, region]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBE = (1,)
VALIDATION = (2,)
ASSEMBLE = 3  # (3, lines recorded so far)
SOLVE_ROWS = 4  # (4, lines recorded so far)
JACOBIAN_SAMPLE = 5  # (5, line index)
POLISH_SOLVE = (6,)
REFINE_ROWS = (7,)  # (7, index) of the same root are the lines (make_line)
REMEASURE_LINE = 8  # (8, neuron)
ORIENT = 9  # (9, neuron)
PIN_SHIFT = (10,)
COVER_ROWS = 11  # (11, lines recorded so far)
CHECK_ROWS = (12, 0)  # the certificate's held-out rows (no other stream draws from key 12)
CHECK_WEDGES = (12, 1)  # ... and its rows in the wedges of close hyperplane pairs
REFIT_ROWS = 13  # (13, lines recorded so far)
FUSE_ROWS = 14  # (14, lines recorded so far)
REPAIR_ROWS = 15  # (15, repair round): rows near the hyperplanes a certificate contradicted
REPAIR_LINES = 16  # (16, repair round): the seeds of its lines through the contradicted rows
PAIR_ROWS = 17  # (17, lines recorded so far, rows held): rows in the wedges of pairs kept apart
QUIET_ROWS = 18  # (18, quiet round): rows where the model's answers are near zero (.coverage)


@dataclass(frozen=True)
class Streams:
    """The run's random streams, by name.

    Parameters
    ----------
    seed_seq : numpy.random.SeedSequence
        The run's root (``SeedSequence(seed)``); lines are drawn from it too.
    """

    seed_seq: np.random.SeedSequence

    @classmethod
    def from_seed(cls, seed: int) -> Streams:
        return cls(np.random.SeedSequence(seed))

    def _rng(self, *key: int) -> np.random.Generator:
        ss = self.seed_seq
        return np.random.default_rng(np.random.SeedSequence(
            entropy=ss.entropy, spawn_key=(*ss.spawn_key, *key)))

    def probe(self) -> np.random.Generator:
        """The precision probe's lines."""
        return self._rng(*PROBE)

    def validation(self) -> np.random.Generator:
        """The validation points."""
        return self._rng(*VALIDATION)

    def assemble(self, lines: int) -> np.random.Generator:
        """The rows sampled for an output fit after ``lines`` recorded lines."""
        return self._rng(ASSEMBLE, lines)

    def solve_rows(self, lines: int) -> np.random.Generator:
        """The rows a line's regions keep for the output fit (``lines`` recorded before)."""
        return self._rng(SOLVE_ROWS, lines)

    def jacobian_sample(self, line_index: int) -> np.random.Generator:
        """The regions whose Jacobians line ``line_index`` keeps for ``L`` and ``c``."""
        return self._rng(JACOBIAN_SAMPLE, line_index)

    def polish_solve(self) -> np.random.Generator:
        """Gaussian rows bought for the imprecise path's output solve."""
        return self._rng(*POLISH_SOLVE)

    def refine_rows(self) -> np.random.Generator:
        """Gaussian rows bought for the refinement."""
        return self._rng(*REFINE_ROWS)

    def cover_rows(self, lines: int) -> np.random.Generator:
        """Rows bought near hyperplanes the rows held rarely cross (.coverage), at a
        refinement after ``lines`` recorded lines."""
        return self._rng(COVER_ROWS, lines)

    def fuse_rows(self, lines: int) -> np.random.Generator:
        """Rows bought inside the wedges of close hyperplane pairs (.fuse), at a refinement
        after ``lines`` recorded lines."""
        return self._rng(FUSE_ROWS, lines)

    def pair_rows(self, lines: int, held: int) -> np.random.Generator:
        """Rows bought inside the wedges of close pairs the fuse kept apart and the refit
        misses there (.imprecise.pin_pairs), at a refinement after ``lines`` recorded lines
        over ``held`` rows (two such refinements after one line draw apart)."""
        return self._rng(PAIR_ROWS, lines, held)

    def refit_rows(self, lines: int) -> np.random.Generator:
        """The line rows held that a refinement retried over every row held samples
        (:func:`.imprecise.refine`), after ``lines`` recorded lines."""
        return self._rng(REFIT_ROWS, lines)

    def check_rows(self, round: int = 0) -> np.random.Generator:
        """The certificate's held-out check rows near every hyperplane (.certificate); each
        repair round (.repair) checks the repaired model with rows of its own."""
        return self._rng(CHECK_ROWS[0], CHECK_ROWS[1] + 2 * round)

    def check_wedges(self, round: int = 0) -> np.random.Generator:
        """The certificate's held-out rows inside the wedges of close pairs (.fuse)."""
        return self._rng(CHECK_WEDGES[0], CHECK_WEDGES[1] + 2 * round)

    def repair_rows(self, round: int) -> np.random.Generator:
        """Rows near the hyperplanes of the neurons a certificate contradicted (.repair)."""
        return self._rng(REPAIR_ROWS, round)

    def repair_lines(self, round: int) -> np.random.Generator:
        """The seeds of the lines a repair round searches (.repair)."""
        return self._rng(REPAIR_LINES, round)

    def quiet_rows(self, round: int) -> np.random.Generator:
        """The Gaussian starts of the rows a quiet round moves to the model's zero set
        (:func:`.coverage.quiet_points`, :func:`.imprecise.quiet_rounds`)."""
        return self._rng(QUIET_ROWS, round)

    def remeasure_line(self, neuron: int) -> np.random.Generator:
        """The seed of the line along ``neuron``'s normal that measures it again."""
        return self._rng(REMEASURE_LINE, neuron)

    def orient(self, neuron: int) -> np.random.Generator:
        """Points of ``neuron``'s hyperplane where its kinks are located."""
        return self._rng(ORIENT, neuron)

    def pin_shift(self) -> np.random.Generator:
        """Shifts of the lines that pin neurons whose foot is crowded."""
        return self._rng(*PIN_SHIFT)
