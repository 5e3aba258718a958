"""``output="auto"``: the output mode and number format read from the answers
(:mod:`distextract._detect`), in-process, and through the CLI against real servers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose

import distextract as dx
from distextract._detect import PrepaidOracle, detect_output
from distextract._journal import load_journal
from distextract._oracle import NetworkOracle, output_transform
from distextract.cli import main
from distextract.serve import launch_server_process, start_server

D, K, M = 8, 16, 3


@pytest.fixture(scope="module")
def net():
    return dx.targets.random_network(D, K, M, seed=1)


class Recorder:
    """A callable oracle that keeps every row it was asked, in order, and its calls."""

    def __init__(self, net, kind: str = "float64") -> None:
        self.net, self.transform = net, output_transform(kind)
        self.X: list[np.ndarray] = []

    def __call__(self, X):
        self.X.append(np.array(X))
        return self.transform(self.net.predict(X))


# ------------------------------------------------------------------- the detection
def _answers(net, kind: str, n: int = 40, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, net.input_dim))
    return output_transform(kind)(net.predict(X))


@pytest.mark.parametrize("kind, mode, answers", [
    ("float64", "logits", "float64"), ("float32", "logits", "float32"),
    ("round:6", "logits", "decimals:6"), ("round:3", "logits", "decimals:3"),
    ("softmax", "softmax", "float64"),
])
def test_detect_output_reads_mode_and_format(net, kind, mode, answers):
    det = detect_output(_answers(net, kind))
    assert (det.mode, det.answers, det.confidence) == (mode, answers, "high")
    assert det.detected and det.rows == 40 and det.extra_rows == 0


def test_detect_output_rounded_probabilities_are_softmax(net):
    P = _answers(net, "softmax")
    for Y, fmt in ((P.astype(np.float32).astype(np.float64), "float32"),
                   (np.round(P, 4), "decimals:4")):
        det = detect_output(Y)
        assert (det.mode, det.answers) == ("softmax", fmt), det


def test_detect_output_sigmoid_like_answers_are_logits_with_low_confidence(net):
    p = 1.0 / (1.0 + np.exp(-_answers(net, "float64")))
    one = detect_output(p[:, :1])
    assert (one.mode, one.confidence) == ("logits", "low")
    assert "one column of values in [0, 1]" in one.evidence
    saturated = detect_output(np.vstack([p[:, :1], [[1.0]], [[0.0]]]))
    assert (saturated.mode, saturated.confidence) == ("logits", "low")
    several = detect_output(p)  # independent sigmoids: rows do not sum to 1
    assert (several.mode, several.confidence) == ("logits", "low")
    assert "do not sum to 1" in several.evidence


def test_prepaid_oracle_serves_each_row_once_and_counts_nothing_twice(net):
    X = np.random.default_rng(0).standard_normal((5, D))
    Y = net.predict(X)
    asked = Recorder(net)
    counting = dx.CountingOracle(dx.CallableOracle(asked, D), budget=100)
    top = PrepaidOracle(counting, X[:3], Y[:3])
    out = top.query(X)  # three served, two asked
    assert_allclose(out, Y, rtol=0, atol=0)
    assert top.served == 3 and top.queries == 2 and top.remaining == 98
    assert np.array_equal(asked.X[0], X[3:])
    top.query(X[:1])  # served once only: asked now
    assert top.served == 3 and top.queries == 3


# ---------------------------------------------------------------------- the Python API
def test_auto_on_float64_logits_asks_exactly_what_logits_asks(net):
    runs = {}
    for output in ("logits", "auto"):
        rec = Recorder(net)
        runs[output] = (rec, dx.extract(rec, input_dim=D, seed=0, output=output))
    (rl, res_l), (ra, res_a) = runs["logits"], runs["auto"]
    assert len(rl.X) == len(ra.X)  # the same requests, row for row, in the same order
    for a, b in zip(rl.X, ra.X):
        assert np.array_equal(a, b)
    assert res_a.queries == res_l.queries
    for name in ("W", "b", "A", "c", "L"):
        assert np.array_equal(getattr(res_a.model, name), getattr(res_l.model, name)), name
    out = res_a.report["output"]
    assert out["mode"] == "logits" and out["detected"] and out["answers"] == "float64"
    assert out["confidence"] == "high" and out["extra_rows"] == 0
    assert out["rows"] == rl.X[0].shape[0]  # read from the first request
    assert res_l.report["output"] == {"mode": "logits", "detected": False, "answers": None,
                                      "confidence": None, "evidence": "output='logits' given",
                                      "rows": 0, "extra_rows": 0}
    assert res_a.model.metadata["output"] == "logits"


def test_auto_on_probabilities_runs_as_softmax_and_counts_what_it_cost(net):
    rec = Recorder(net, "softmax")
    res = dx.extract(rec, input_dim=D, seed=0)
    forced = dx.extract(NetworkOracle(net, output="softmax"), seed=0, output="softmax")
    out = res.report["output"]
    assert out["mode"] == "softmax" and out["detected"] and out["confidence"] == "high"
    assert "summing to 1" in out["evidence"]
    # every row sent is counted; the long first line's ends are the only rows paid for nothing
    assert res.queries == sum(x.shape[0] for x in rec.X)
    assert res.queries == forced.queries + out["extra_rows"]
    assert 0 < out["extra_rows"] < out["rows"]
    assert res.report["config"]["line_reach"] == forced.report["config"]["line_reach"] == 8.0
    assert res.model.metadata["output"] == "softmax"
    X = np.random.default_rng(5).standard_normal((500, D))
    assert_allclose(res.model.predict_proba(X), output_transform("softmax")(net.predict(X)),
                    rtol=0, atol=1e-9)


def test_auto_softmax_respects_the_budget(net):
    forced = dx.extract(NetworkOracle(net, output="softmax"), seed=0, output="softmax")
    budget = forced.queries // 2
    rec = Recorder(net, "softmax")
    res = dx.extract(rec, input_dim=D, seed=0, budget=budget)
    assert res.stop_reason == "budget" and not res.certified
    assert sum(x.shape[0] for x in rec.X) == res.queries <= budget


def test_sigmoid_answers_get_a_verdict_that_says_what_they_look_like():
    one = dx.targets.random_network(D, K, 1, seed=2)
    with pytest.raises(dx.TargetMismatch, match=r"look like probabilities .*log\(p / \(1 - p\)\)"):
        dx.extract(lambda X: 1.0 / (1.0 + np.exp(-one.predict(X))), input_dim=D, seed=0)


# ---------------------------------------------------------------- the CLI, real servers
def _extract(url: str, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distextract", "extract", "--url", url,
                           "--input-dim", str(D), "--out", str(out), "--batch-size", "32"],
                          check=False, capture_output=True, text=True, timeout=180)


def test_cli_without_output_extracts_a_real_softmax_server(net, tmp_path):
    path = tmp_path / "net.arrow"
    net.save(path)
    with launch_server_process(path, output="softmax", latency_ms=1) as server:
        # forced logits on these answers still stop with the verdict naming --output softmax
        refused = subprocess.run(
            [sys.executable, "-m", "distextract", "extract", "--url", server.url, "--input-dim",
             str(D), "--out", str(tmp_path / "forced"), "--output", "logits"],
            check=False, capture_output=True, text=True, timeout=120)
        proc = _extract(server.url, tmp_path / "run")
    assert refused.returncode == 1
    assert "are probabilities" in refused.stderr and "--output softmax" in refused.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "certified=True" in proc.stdout
    assert "Answers: softmax probabilities, float64 (detected from the" in proc.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    out = report["extraction"]["output"]
    assert out["mode"] == "softmax" and out["detected"] and out["extra_rows"] > 0
    # rows the first request asked and the restart did not reuse are counted and journaled
    q = report["queries"]
    assert q["paid"] == q["rows"] and q["from_journal"] == 0
    X, _ = load_journal(tmp_path / "run" / "journal", D)
    assert X.shape[0] == q["paid"]
    model = dx.ReluNetwork.load(tmp_path / "run" / "model.arrow")
    Xt = np.random.default_rng(1).standard_normal((500, D))
    assert_allclose(model.predict_proba(Xt), output_transform("softmax")(net.predict(Xt)),
                    rtol=0, atol=1e-8)
    summary = CliRunner().invoke(main, ["report", str(tmp_path / "run")])
    assert summary.exit_code == 0, summary.output
    assert "Answers: softmax probabilities" in summary.output


@pytest.mark.parametrize("kind, answers", [("float32", "float32"), ("round:6", "decimals:6")])
def test_cli_detects_the_number_format_of_a_real_server(net, tmp_path, kind, answers):
    with start_server(net, output=kind, latency_ms=1) as server:
        res = CliRunner().invoke(main, ["extract", "--url", server.url, "--input-dim", str(D),
                                        "--out", str(tmp_path / "run"), "--batch-size", "32"])
    assert res.exit_code == 0, res.output
    assert f"Answers: logits (real values), {answers} (detected from" in res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    out = report["extraction"]["output"]
    assert (out["mode"], out["answers"], out["extra_rows"]) == ("logits", answers, 0)
    assert report["extraction"]["precision"]["relative_noise"] > 1e-9  # what the engine used
