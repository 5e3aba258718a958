"""engine.neurons: the predicted-crossing filter."""

from __future__ import annotations

import numpy as np

from distextract.engine.neurons import crossings_inside


def test_predicted_crossings_inside_a_line_are_filtered_and_sorted():
    t = np.array([3.0, -1.0, np.inf, 10.0, -10.0 * (1 - 1e-12), np.nan, 0.5])
    assert crossings_inside(t, 10.0, 1e-9).tolist() == [1, 6, 0]
    assert crossings_inside(t, 10.0, 1e-9, tol=np.array([1, np.inf, 1, 1, 1, 1, 1.0])
                            ).tolist() == [6, 0]
