"""engine.scan: the search steps a scan derives from the measured precision (closed form),
and the longer stencil steps a first line takes when their rounding would miss the goal."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract._oracle import CountingOracle, as_oracle
from distextract.engine import scan
from distextract.engine._config import EPS64, ExtractConfig
from distextract.engine.loop import Coordinator
from distextract.engine.precision import Precision
from distextract.engine.settings import ScanSettings, Settings
from distextract.engine.tasks import LocalExecutor


def _coordinator(noise: float, settings: Settings | None = None) -> Coordinator:
    net = dx.targets.random_network(4, 8, 1, seed=0)
    eng = Coordinator(LocalExecutor(CountingOracle(as_oracle(net))), 4, ExtractConfig(), 0,
                      settings=settings)
    eng.st.precision = Precision(noise=noise)
    return eng


@pytest.mark.parametrize("noise", [4 * EPS64, 2.0 ** -24, 1e-3])
def test_search_steps_grow_with_the_square_root_of_the_noise(noise):
    cfg, ss = ExtractConfig(), ScanSettings()
    p = scan.search_params(_coordinator(noise), noise)
    grow = ss.noisy_step_factor * np.sqrt(noise)
    assert_allclose(p.slope_step, min(ss.max_step, max(cfg.slope_step, grow)), rtol=1e-15)
    assert_allclose(p.check_step, min(ss.max_step, max(cfg.check_step, grow)), rtol=1e-15)
    assert_allclose(p.min_width, max(cfg.min_width, 1e3 * noise), rtol=1e-15)
    assert (p.anchor_step is None) == (noise < 1e-10)  # imprecise answers anchor their steps


def test_search_steps_take_the_scan_settings():
    noise = 2.0 ** -24
    p = scan.search_params(_coordinator(noise, Settings(scan=ScanSettings(
        noisy_step_factor=1.0, max_step=1e-4, imprecise_anchor_step=0.5))), noise)
    assert_allclose(p.slope_step, 1e-4, rtol=0)  # sqrt(2^-24) = 2.4e-4, capped at 1e-4
    assert p.anchor_step == 0.5


def test_the_first_line_takes_longer_stencil_steps_when_asked_for_more_than_rounding_allows():
    """At target 1e-12 a small network's planned stencils would leave more rounding error
    than the goal allows: the longer steps are taken (st.long_steps, and the wide crossing
    rate in the derived settings); at the default goal they are not."""
    net = dx.targets.random_network(16, 32, 1, seed=1)
    rates = {}
    for target in (None, 1e-12):
        eng = Coordinator(LocalExecutor(CountingOracle(as_oracle(net))), 16,
                          ExtractConfig(target_rel_l2=target), 0)
        eng.run()
        rates[target] = (eng.st.long_steps, eng.derived.crossing_rate)
    assert rates[None][0] is False and rates[1e-12][0] is True
    assert rates[1e-12][1] > rates[None][1]
