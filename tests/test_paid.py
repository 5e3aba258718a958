"""engine.paid: the store of paid rows and its seeded samples."""

from __future__ import annotations

import numpy as np

from distextract.engine.paid import PaidRows
from distextract.engine.settings import PaidSettings


def test_paid_rows_sample_is_seeded_and_draws_from_every_block():
    paid = PaidRows(2, PaidSettings(solve_row_budget=10))
    for i in range(4):
        paid.add(np.full((50, 2), float(i)), np.full((50, 1), float(i)))
    X1, Y1 = paid.sample(40, 1, np.random.default_rng(5))
    X2, _ = paid.sample(40, 1, np.random.default_rng(5))
    assert X1.shape == (40, 2) and np.array_equal(X1, X2)
    assert set(np.unique(Y1)) == {0.0, 1.0, 2.0, 3.0}
    assert paid.total == 200 and paid.sample(500, 1, np.random.default_rng(0))[0].shape == (200, 2)
    assert paid.per_region(100) == 8  # the floor: PaidSettings.solve_rows_per_region
