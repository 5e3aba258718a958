"""engine.seeds: the named random streams."""

from __future__ import annotations

import numpy as np

from distextract.engine.seeds import Streams


def test_named_streams_are_independent_and_reproducible():
    a, b = Streams.from_seed(7), Streams.from_seed(7)
    assert np.array_equal(a.validation().standard_normal(4), b.validation().standard_normal(4))
    draws = [s.standard_normal(4) for s in (a.probe(), a.validation(), a.assemble(0),
                                            a.assemble(1), a.solve_rows(0), a.pin_shift(),
                                            a.orient(0), a.remeasure_line(0), a.refine_rows(),
                                            a.check_rows(), a.cover_rows(0))]
    assert len({d.tobytes() for d in draws}) == len(draws)
