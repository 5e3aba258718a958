"""engine.lines: random lines through the input space and their reach."""

from __future__ import annotations

import numpy as np

from distextract.engine.lines import line_reach, make_line


def test_line_reach_is_one_definition():
    line = make_line(0, 9, np.random.SeedSequence(0), 2.0, line_reach(9, 64.0, 2.0))
    assert line.reach == 64.0 * 3.0 * 2.0
