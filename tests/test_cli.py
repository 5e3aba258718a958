"""The command line: make-target, evaluate, report, export, help texts and error paths.

(``extract`` against a server process is in test_cli_extract.py; the demo in test_demo.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose

import distextract as dx
from distextract.cli import main
from distextract.export import VERIFY_RTOL, predict_exported
from distextract.report import PLOTS, SUMMARY
from distextract.serve import start_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
D, K, M = 6, 8, 3


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_error(out, pattern: str) -> None:
    """An intended error: ``Error: ...`` with exit status 1 and no traceback."""
    assert out.exit_code == 1, out.output
    assert "Error: " in out.output and pattern in out.output, out.output
    assert "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


@pytest.fixture(scope="module")
def target_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("target") / "target.arrow"
    dx.targets.random_network(D, K, M, seed=4, skip=True).save(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, target_path):
    """A run directory written by ``distextract extract`` (in-process, rate-limited server)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    with start_server(target_path, latency_ms=1, rate=200, max_batch=16) as server:
        res = run("extract", "--url", server.url, "--input-dim", str(D), "--out", str(out),
                  "--rate", "200", "--batch-size", "16", "--seed", "1")
    assert res.exit_code == 0, res.output
    return out


# ----------------------------------------------------------------------- help texts
@pytest.mark.parametrize("command", ["demo", "make-target", "serve", "extract", "evaluate",
                                     "report", "export"])
def test_every_command_has_help_with_examples(command):
    out = run(command, "--help")
    assert out.exit_code == 0, out.output
    assert "Examples:" in out.output and f"distextract {command}" in out.output


def test_top_level_help_lists_the_commands():
    out = run("--help")
    assert out.exit_code == 0
    for command in ("demo", "make-target", "serve", "extract", "evaluate", "report", "export"):
        assert command in out.output


# ---------------------------------------------------------------------- make-target
@pytest.mark.parametrize("kind", ["random", *dx.targets.HARD_CASES])
def test_make_target_writes_each_kind(kind, tmp_path):
    path = tmp_path / f"{kind}.arrow"
    out = run("make-target", str(path), "--kind", kind, "-d", "5", "-k", "12", "-m", "2",
              "--seed", "3")
    assert out.exit_code == 0, out.output
    assert f"Wrote {path}: {kind} network, d=5, k=12, m=2, seed 3" in out.output
    net = dx.ReluNetwork.load(path)
    assert (net.input_dim, net.hidden_dim, net.output_dim) == (5, 12, 2)
    if kind == "random":
        expect = dx.targets.random_network(5, 12, 2, seed=3)
    else:
        expect = dx.targets.hard_case(kind, 5, 12, 2, seed=3)
    assert_allclose(net.W, expect.W, rtol=0, atol=0)
    assert_allclose(net.L, expect.L, rtol=0, atol=0)


def test_make_target_rejects_an_unknown_kind(tmp_path):
    assert_error(run("make-target", str(tmp_path / "x.arrow"), "--kind", "nope"),
                 "Invalid value for '--kind'")


# ------------------------------------------------------------------------- evaluate
def test_evaluate_against_a_target_file(run_dir, target_path):
    out = run("evaluate", str(run_dir / "model.arrow"), "--target", str(target_path),
              "--points", "2000")
    assert out.exit_code == 0, out.output
    assert "on 2,000 fresh N(0, I) points" in out.output
    rel = float(out.output.split("relative L2 error")[1].split()[0])
    assert rel < 1e-6
    assert f"{K} of {K} live target neurons matched, 0 spurious" in out.output
    assert "argmax agreement    100.00%" in out.output


def test_evaluate_match_tolerances(tmp_path, target_path):
    """A model whose normals are off by ~1e-3 (as from float32 answers) matches no neuron at
    the float64 standard, and every neuron with --cos-tol loosened to 1e-4."""
    net = dx.ReluNetwork.load(target_path)
    rng = np.random.default_rng(0)
    W = net.W + 1e-3 * rng.standard_normal(net.W.shape)
    near = dx.ReluNetwork(W, net.b, net.A, net.c, net.L)
    path = tmp_path / "near.arrow"
    near.save(path)
    strict = run("evaluate", str(path), "--target", str(target_path), "--points", "500")
    assert strict.exit_code == 0, strict.output
    assert f"0 of {K} live target neurons matched" in strict.output
    loose = run("evaluate", str(path), "--target", str(target_path), "--points", "500",
                "--cos-tol", "1e-4", "--bias-rtol", "1e-2")
    assert loose.exit_code == 0, loose.output
    assert f"{K} of {K} live target neurons matched, 0 spurious" in loose.output
    assert "1-|cos| < 0.0001, bias within 0.01" in loose.output
    assert_error(run("evaluate", str(path), "--target", str(target_path), "--cos-tol", "0"),
                 "--cos-tol")


def test_evaluate_against_a_live_oracle(target_path):
    with start_server(target_path) as server:
        out = run("evaluate", str(target_path), "--url", server.url, "--points", "300")
        served = server.stats()["rows_served"]
    assert out.exit_code == 0, out.output
    assert "relative L2 error   0" in out.output
    assert "neurons" not in out.output  # no weights behind a URL
    assert served == 300


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --target FILE or --url URL"),
    (["--target", "x.arrow", "--url", "http://127.0.0.1:1/"],
     "give exactly one of --target FILE or --url URL"),
    (["--target", "missing.arrow"], "model file not found: missing.arrow"),
])
def test_evaluate_errors(args, message, target_path):
    assert_error(run("evaluate", str(target_path), *args), message)


def test_evaluate_dimension_mismatch(tmp_path, target_path):
    other = tmp_path / "other.arrow"
    dx.targets.random_network(D + 1, K, M, seed=0).save(other)
    assert_error(run("evaluate", str(other), "--target", str(target_path)),
                 f"model has input_dim={D + 1} but target has input_dim={D}")


# --------------------------------------------------------------------------- report
def test_extract_writes_the_run_outputs_report_reads(run_dir):
    for name in ("model.arrow", "neurons.arrow", "kinks.arrow", "lines.arrow", "report.json",
                 "run.json"):
        assert (run_dir / name).exists(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["limits"]["effective_rows_per_s"] == 200 * 16
    q = report["queries"]
    assert q["paid"] + q["from_journal"] == q["rows"]  # a row asked twice is served once
    assert report["timeline"][0]["queries"] == 0
    assert report["timeline"][-1]["queries"] == report["queries"]["rows"]
    assert report["extraction"]["rounds"]


def readme_report_keys() -> list[str]:
    """The keys README's report.json table documents (its first column)."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    section = re.search(r"\n### report\.json\n(.*?)\n#{2,3} ", text, re.DOTALL)
    assert section, "README.md has no '### report.json' section"
    return re.findall(r"^\| `([A-Za-z_.]+)` \|", section.group(1), re.MULTILINE)


def test_every_report_key_readme_documents_is_in_a_real_report(run_dir):
    keys = readme_report_keys()
    assert {"queries.paid", "queries.answered", "queries.refused",
            "queries.from_journal"} <= set(keys)
    report = json.loads((run_dir / "report.json").read_text())
    for key in keys:
        node = report
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"report.json lacks {key}"
            node = node[part]
    # and every top-level key of the file is documented
    assert set(report) <= {k.split(".")[0] for k in keys}
    assert set(report["queries"]) <= {k.split(".")[1] for k in keys if k.startswith("queries.")}


def test_report_writes_summary_and_plots(run_dir):
    out = run("report", str(run_dir))
    assert out.exit_code == 0, out.output
    assert f"Model: d={D} inputs, k={K} hidden neurons, m={M} outputs" in out.output
    assert "Throughput:" in out.output and "limit 3,200 rows/s" in out.output
    assert "Stopped: certified" in out.output
    assert "Probe lines:" in out.output
    assert "Answers: logits (real values), float64 (detected from the" in out.output
    for name in PLOTS:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert (run_dir / SUMMARY).read_text().startswith(f"Run directory: {run_dir}")


def test_report_says_what_is_missing_instead_of_failing(run_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "model.arrow", partial / "model.arrow")
    out = run("report", str(partial))
    assert out.exit_code == 0, out.output
    assert "Model: d=6" in out.output
    for name in PLOTS:
        assert (partial / name).read_bytes().startswith(PNG_MAGIC), name


def test_report_errors(tmp_path):
    assert_error(run("report", str(tmp_path / "nowhere")), "run directory not found")
    assert_error(run("report", str(tmp_path)), "holds no run outputs")


# --------------------------------------------------------------------------- export
def _check_export(fmt, run_dir, tmp_path):
    model_path = run_dir / "model.arrow"
    dest = tmp_path / f"exported.{fmt}"
    out = run("export", str(model_path), "--to", fmt, "--out", str(dest))
    assert out.exit_code == 0, out.output
    assert f"Wrote {dest} ({fmt}, float64" in out.output
    assert "Verified on 1,000 random inputs" in out.output and "max |diff| =" in out.output
    model = dx.ReluNetwork.load(model_path)
    X = np.random.default_rng(7).standard_normal((500, D))
    ref = model.predict(X)
    got = predict_exported(dest, fmt, X)
    assert got.dtype == np.float64
    assert np.max(np.abs(got - ref)) <= VERIFY_RTOL * np.max(np.abs(ref))
    return dest


def test_export_npz(run_dir, tmp_path):
    dest = _check_export("npz", run_dir, tmp_path)
    model = dx.ReluNetwork.load(run_dir / "model.arrow")
    with np.load(dest) as z:
        assert sorted(z.files) == ["A", "L", "W", "b", "c"]
        assert_allclose(z["L"], model.L, rtol=0, atol=0)


def test_export_onnx(run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    dest = _check_export("onnx", run_dir, tmp_path)
    proto = onnx.load(str(dest))
    assert proto.opset_import[0].version >= 17
    assert {n.op_type for n in proto.graph.node} == {"MatMul", "Add", "Relu"}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


def test_export_torch(run_dir, tmp_path):
    torch = pytest.importorskip("torch")
    dest = _check_export("torch", run_dir, tmp_path)
    sd = torch.load(dest, weights_only=True)
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert sd["0.weight"].dtype == torch.float64
    # The skip term is folded into 2d extra hidden units; a plain nn.Sequential loads it.
    h = K + 2 * D
    net = torch.nn.Sequential(torch.nn.Linear(D, h), torch.nn.ReLU(),
                              torch.nn.Linear(h, M)).double()
    net.load_state_dict(sd)
    X = np.random.default_rng(8).standard_normal((50, D))
    model = dx.ReluNetwork.load(run_dir / "model.arrow")
    with torch.no_grad():
        assert_allclose(net(torch.from_numpy(X)).numpy(), model.predict(X), rtol=1e-12,
                        atol=1e-12)


def test_export_without_the_optional_package_says_what_to_install(run_dir, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    out = run("export", str(run_dir / "model.arrow"), "--to", "onnx", "--out",
              str(tmp_path / "m.onnx"))
    assert_error(out, 'pip install "distextract[export]"')
    assert not (tmp_path / "m.onnx").exists()


def test_export_errors(run_dir, tmp_path):
    assert_error(run("export", str(tmp_path / "none.arrow"), "--to", "npz"),
                 "model file not found")
    assert_error(run("export", str(run_dir / "model.arrow"), "--to", "npz", "--out",
                     str(tmp_path / "no" / "dir" / "m.npz")), "does not exist")
    assert_error(run("export", str(run_dir / "model.arrow"), "--to", "keras"),
                 "Invalid value for '--to'")


# -------------------------------------------------------------- a real process
def test_errors_in_a_real_process_exit_1_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "distextract", "evaluate",
                           str(tmp_path / "missing.arrow"), "--target", "t.arrow"],
                          check=False, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"Error: model file not found: {tmp_path / 'missing.arrow'}"
    assert "Traceback" not in proc.stderr
    usage = subprocess.run([sys.executable, "-m", "distextract", "no-such-command"],
                           check=False, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 1
    assert "Error: No such command 'no-such-command'" in usage.stderr
