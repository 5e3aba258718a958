"""bench_imprecise: a row's columns (observability floor, uncertain neurons, certificate) on
real extractions, and the summary's false-certificate count."""

from __future__ import annotations

import numpy as np

import distextract as dx
from distextract import targets
from distextract.bench_imprecise import HEADER, Row, format_row, run_row, summarize


def test_a_neuron_below_the_observability_floor_is_reported_not_missed():
    """A live neuron (hyperplane through the bulk) whose output weight is 1e-9: float32
    answers cannot show it; the row counts it in ``<flr``, not in ``missed``."""
    base = targets.random_network(8, 8, 1, seed=0)
    w = np.eye(8)[0]
    net = dx.ReluNetwork(np.vstack([base.W, w]), np.append(base.b, 0.1),
                         np.hstack([base.A, [[1e-9]]]), base.c, base.L)
    r = run_row(net, "float32", 0)
    assert r["below_floor"] == 1 and r["missed"] == 0
    assert r["live"] == 9 and r["matched"] == 8
    # fidelity met (a network this small misses the query target: fixed costs)
    assert r["uncertain"] == 0 and r["certified"] and not r["false_certificate"]
    assert r["rel_l2"] <= 1e-6
    line = format_row("planted", r)
    assert len(line) == len(HEADER) and " yes " in line


def test_summary_counts_false_certificates():
    def row(**kw):
        r = {"output": "float16", "seed": 0, "rel_l2": 1e-3, "missed": 0, "spurious": 0,
             "below_floor": 0, "ratio": 2.0, "cpu_s": 1.0, "met": True, "certified": True,
             "false_certificate": False}
        r.update(kw)
        return r
    r0 = Row("low", "net", lambda s: None, 2)
    lines = summarize([(r0, row()), (r0, row(seed=1, rel_l2=0.2, met=False,
                                             false_certificate=True, below_floor=3))])
    assert "false cert" in lines[0] and "<flr" in lines[0]
    fields = lines[1].split()
    assert fields[-1] == "1" and fields[-2] == "2"  # 1 false certificate of 2 certified
    assert "2.00e-01 (net s1)" in lines[1] and fields[-5] == "3"  # <flr
