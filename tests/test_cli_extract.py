"""``distextract extract`` against a real server process: report, resume after kill -9, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from numpy.testing import assert_allclose

import distextract as dx
from distextract._journal import load_journal
from distextract.serve import launch_server_process

KEY = "sk-live-9c2e41d7b3a05f86"
D = 8


def _saved_network(tmp_path_factory, k: int, seed: int, name: str):
    """A random d=D, k-neuron, 2-output network saved as an Arrow file; its path."""
    rng = np.random.default_rng(seed)
    net = dx.ReluNetwork(rng.normal(size=(k, D)), rng.normal(size=k),
                         rng.normal(size=(2, k)), rng.normal(size=2))
    path = tmp_path_factory.mktemp("model") / name
    net.save(path)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _saved_network(tmp_path_factory, 16, 0, "net.arrow")


@pytest.fixture(scope="module")
def wider_model_path(tmp_path_factory):
    """32 neurons: a ~860-row run, so 2% leaves room for the rows a kill can lose."""
    return _saved_network(tmp_path_factory, 32, 1, "wider.arrow")


def served(server) -> int:
    return server.stats()["rows_served"]


def test_kill_9_and_resume_pays_at_most_2_percent_more(wider_model_path, tmp_path):
    # A kill loses at most two batches (the one in flight and one answered but not yet
    # journaled) plus the one row re-asked to verify the oracle on resume: 2 x 4 + 1 = 9 rows
    # (with 8-row batches the worst case, 17 rows, was over 2% and the test failed under
    # load). A fresh-clone CI run with both cores busy lost 13 rows of a 535-row run on a
    # 16-neuron network (2.4%), so this test uses 32 neurons: ~860 rows, 2% = 17.
    env = {**os.environ, "DX_CLI_KEY": KEY}
    with launch_server_process(wider_model_path, latency_ms=3, api_key_env="DX_CLI_KEY",
                               env=env) as server:
        def args(out):
            return [sys.executable, "-m", "distextract", "extract", "--url", server.url,
                    "--input-dim", str(D), "--out", str(out), "--api-key-env", "DX_CLI_KEY",
                    "--seed", "5", "--batch-size", "4", "--max-in-flight", "1"]

        # Uninterrupted reference run.
        ref = subprocess.run(args(tmp_path / "ref"), env=env, check=False, capture_output=True,
                             text=True, timeout=120)
        assert ref.returncode == 0, ref.stderr
        full = served(server)
        report = json.loads((tmp_path / "ref" / "report.json").read_text())
        assert report["queries"]["paid"] == full
        assert report["queries"]["answered"] == full
        assert set(report["queries"]["retries"]) >= {"429", "5xx", "timeout", "reset", "413"}
        assert report["fidelity_estimate"]["rel_l2"] < 1e-6
        assert report["wall_seconds"] > 0

        # Same run, killed half-way, then resumed.
        before = served(server)
        out = tmp_path / "crash"
        proc = subprocess.Popen(args(out), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        rows = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "journal").is_dir():
                rows = load_journal(out / "journal", D)[0].shape[0]
                if rows >= full // 2:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert full // 2 <= rows < full
        assert not (out / "report.json").exists()
        resumed = subprocess.run(args(out) + ["--resume"], env=env, check=False,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert "Resuming:" in resumed.stdout
        total = served(server) - before
        print(f"uninterrupted {full} rows; killed at {rows} journaled rows; crash + resume "
              f"{total} rows ({total / full:.4f}x)")
        assert total <= 1.02 * full
        rep2 = json.loads((out / "report.json").read_text())
        assert rep2["queries"]["from_journal"] >= rows
        assert rep2["queries"]["rows"] == report["queries"]["rows"]
        a = dx.ReluNetwork.load(tmp_path / "ref" / "model.arrow")
        b = dx.ReluNetwork.load(out / "model.arrow")
        X = np.random.default_rng(1).normal(size=(200, D))
        assert_allclose(b.predict(X), a.predict(X), rtol=1e-9, atol=1e-9)

        # The key appears in no file of the run directories and in no output.
        for path in list(tmp_path.rglob("*")):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path
        for text in (ref.stdout, ref.stderr, resumed.stdout, resumed.stderr):
            assert KEY not in text


def test_cli_extract_errors_are_one_line(model_path, tmp_path):
    with launch_server_process(model_path) as server:
        base = [sys.executable, "-m", "distextract", "extract", "--url", server.url,
                "--input-dim", str(D)]
        bad = subprocess.run(base + ["--out", str(tmp_path / "x"), "--resume"],
                             check=False, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1
        assert bad.stderr.strip().startswith("Error: nothing to resume in")
        assert "Traceback" not in bad.stderr
        wrong_d = subprocess.run(
            [sys.executable, "-m", "distextract", "extract", "--url", server.url,
             "--input-dim", "5", "--out", str(tmp_path / "y")],
            check=False, capture_output=True, text=True, timeout=60)
        assert wrong_d.returncode == 1
        assert "Error: HTTP 400" in wrong_d.stderr and "inputs must have shape (n, 8)" in \
            wrong_d.stderr
        assert "rerun with --resume" in wrong_d.stderr
        env = {k: v for k, v in os.environ.items() if k != "DX_UNSET_KEY"}
        nokey = subprocess.run(base + ["--out", str(tmp_path / "z"), "--api-key-env",
                                       "DX_UNSET_KEY"], check=False, capture_output=True, text=True,
                               env=env, timeout=60)
        assert nokey.returncode == 1
        assert "Error: environment variable DX_UNSET_KEY (api_key_env) is not set" in nokey.stderr


def test_failures_and_drops_keep_fidelity_and_paid_equals_served(model_path, tmp_path):
    with launch_server_process(model_path, fail_rate=0.05, drop_rate=0.02, seed=2) as server:
        run = subprocess.run(
            [sys.executable, "-m", "distextract", "extract", "--url", server.url,
             "--input-dim", str(D), "--out", str(tmp_path / "run"), "--batch-size", "8",
             "--retries", "30"], check=False, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        stats = server.stats()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    q = report["queries"]
    assert stats["statuses"]["503"] >= 1 and stats["dropped"] >= 1
    assert q["retries"]["5xx"] == stats["statuses"]["503"]
    assert q["retries"]["reset"] == stats["dropped"]
    assert q["paid"] == stats["rows_served"] > q["answered"]
    assert report["fidelity_estimate"]["certified"]
    assert report["fidelity_estimate"]["rel_l2"] < 1e-6


def test_config_knobs_reach_the_engine_and_bind_a_resume(model_path, tmp_path):
    """``--config KEY=VALUE`` sets ExtractConfig knobs: they reach the engine (its report),
    are recorded in run.json, and a resume with other knobs is refused; bad items are one
    line errors before anything is paid."""
    with launch_server_process(model_path) as server:
        base = [sys.executable, "-m", "distextract", "extract", "--url", server.url,
                "--input-dim", str(D)]
        out = tmp_path / "run"
        knobs = ["--config", "residual_stride=1", "--config", "target_rel_l2=1e-9"]
        ok = subprocess.run(base + ["--out", str(out)] + knobs, check=False,
                            capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        used = json.loads((out / "report.json").read_text())["extraction"]["config"]
        assert used["residual_stride"] == 1 and used["target_rel_l2"] == 1e-9
        saved = json.loads((out / "run.json").read_text())["config"]["extract"]
        assert saved["residual_stride"] == 1 and saved["target_rel_l2"] == 1e-9

        other = subprocess.run(base + ["--out", str(out), "--resume", "--config",
                                       "target_rel_l2=1e-9"], check=False, capture_output=True,
                               text=True, timeout=120)
        assert other.returncode == 1
        assert "made for a different config" in other.stderr
        assert "residual_stride" in other.stderr

        served_before = served(server)
        for item, message in [("residual_stride=0", "config.residual_stride must be >= 1, got 0"),
                              ("residual_stride", "is not KEY=VALUE"),
                              ("target=1e-9", "unknown config option 'target'"),
                              ("residual_scan=maybe", "must be true or false"),
                              ("on_mismatch=flag", "--on-mismatch")]:
            bad = subprocess.run(base + ["--out", str(tmp_path / "bad"), "--config", item],
                                 check=False, capture_output=True, text=True, timeout=60)
            assert bad.returncode == 1, item
            assert bad.stderr.strip().startswith("Error:") and message in bad.stderr, bad.stderr
            assert "Traceback" not in bad.stderr
        assert served(server) == served_before
        assert not (tmp_path / "bad").exists()


def test_a_run_never_imports_pandas(model_path, tmp_path):
    """pyarrow's ``array()`` and ``to_numpy()`` import pandas on first use (0.3 s of CPU, in
    the driver and in every Ray worker that journals): the journal and the run directory build
    and read their Arrow arrays from numpy buffers instead. ``-X importtime`` lists every
    module the whole CLI run imported (journal written, run directory written, model read)."""
    pytest.importorskip("pandas")  # without pandas installed the test proves nothing
    with launch_server_process(model_path) as server:
        run = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "distextract", "extract", "--url",
             server.url, "--input-dim", str(D), "--out", str(tmp_path / "run"), "--seed", "1"],
            check=False, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pyarrow" in imported and "distextract._journal" in imported
    assert not {m for m in imported if m.split(".")[0] == "pandas"}
    # the model written reads back without pandas too (ReluNetwork.load in a fresh process)
    load = subprocess.run(
        [sys.executable, "-c", "import sys, distextract as dx; "
         f"m = dx.ReluNetwork.load({str(tmp_path / 'run' / 'model.arrow')!r}); "
         "print(m.hidden_dim, 'pandas' in sys.modules)"],
        check=False, capture_output=True, text=True, timeout=60)
    assert load.returncode == 0, load.stderr
    assert load.stdout.split()[1] == "False" and int(load.stdout.split()[0]) >= 1
