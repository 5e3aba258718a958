"""``distextract demo``: small sizes, in-process and on Ray workers (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from distextract.cli import main
from distextract.report import PLOTS

SMALL = ["--input-dim", "6", "--hidden", "8", "--outputs", "2", "--rate", "200",
         "--max-batch", "16", "--latency-ms", "2"]


def check_summary(out: str, run_dir) -> dict:
    assert "Summary" in out
    assert "neurons     8 found / 8 true (8 of 8 live matched, 0 spurious)" in out
    assert "certified=True" in out
    assert "limit 3,200 rows/s" in out
    for name in PLOTS + ("model.arrow", "target.arrow", "report.json", "summary.txt"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "demo.json").read_text())["summary"]
    assert summary["fidelity"]["rel_l2"] < 1e-8
    assert summary["fidelity"]["argmax_agreement"] == 1.0
    report = json.loads((run_dir / "report.json").read_text())
    assert summary["queries"]["rows"] == summary["oracle"]["rows_served"] \
        == report["queries"]["paid"]
    return summary


def test_demo_in_process(tmp_path):
    run_dir = tmp_path / "demo"
    out = CliRunner().invoke(main, ["demo", "--no-ray", "--out", str(run_dir), *SMALL])
    assert out.exit_code == 0, out.output
    summary = check_summary(out.output, run_dir)
    assert summary["workers"] == 1
    assert "Extracting with in-process (no Ray)" in out.output

    # A second demo into the same directory replaces the first; other directories are refused.
    again = CliRunner().invoke(main, ["demo", "--no-ray", "--out", str(run_dir), *SMALL])
    assert again.exit_code == 0 and "Replacing the previous demo run" in again.output
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(main, ["demo", "--no-ray", "--out", str(other), *SMALL])
    assert refused.exit_code == 1
    assert "Error: " in refused.output and "was not made by the demo" in refused.output
    assert (other / "notes.txt").read_text() == "keep me"


def test_demo_on_ray_workers(tmp_path):
    run_dir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "distextract", "demo", "--workers", "2",
                           "--out", str(run_dir), *SMALL], check=False, capture_output=True,
                          text=True, timeout=150, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Extracting with 2 Ray workers" in proc.stdout
    # no error-level line from Ray about restartable workers' constructor arguments (the
    # ledger and limiter go to the workers by name, not as actor handles)
    assert "constructor arguments in the object store" not in proc.stderr
    summary = check_summary(proc.stdout, run_dir)
    assert summary["workers"] == 2
    assert summary["timing"]["ray_start_s"] > 0


# matplotlib made unimportable, as on a plain ``pip install .`` (it is the "plots" extra)
NO_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; "
                 "from distextract.cli import main; main()")


def test_demo_and_report_without_matplotlib_say_how_to_get_the_plots(tmp_path):
    run_dir = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", NO_MATPLOTLIB, "demo", "--no-ray", "--out",
                           str(run_dir), *SMALL], check=False, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "certified=True" in proc.stdout
    assert ('no plots (not written: matplotlib is not installed; pip install '
            '"distextract[plots]", then: distextract report') in proc.stdout
    for name in ("model.arrow", "report.json", "summary.txt", "demo.json"):
        assert (run_dir / name).exists(), name
    assert not any((run_dir / name).exists() for name in PLOTS)
    summary = json.loads((run_dir / "demo.json").read_text())["summary"]
    assert summary["plots"] == [] and 'pip install "distextract[plots]"' in \
        summary["plots_skipped"]

    report = subprocess.run([sys.executable, "-c", NO_MATPLOTLIB, "report", str(run_dir)],
                            check=False, capture_output=True, text=True, timeout=60, env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "Stopped: certified" in report.stdout
    assert 'Plots: not written: matplotlib is not installed; pip install "distextract[plots]"' \
        in report.stdout
    assert "Wrote " + str(run_dir / "summary.txt") in report.stdout
    assert "Plots: not written" in (run_dir / "summary.txt").read_text()
    assert not any((run_dir / name).exists() for name in PLOTS)
