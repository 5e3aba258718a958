"""examples/01 and 02 run as written (subprocesses, as a user runs them)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXAMPLE_")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], check=False, capture_output=True,
                          text=True, timeout=120, env={**environ, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_01_callable():
    out = run_example("01_callable.py")
    assert "certified=True" in out
    assert "neurons matched 40/40" in out
    rel = float(re.search(r"relative L2 error (\S+),", out).group(1))
    assert rel < 1e-8


def test_02_http_api_with_key_and_rate_limit():
    out = run_example("02_http_api.py")
    assert "local API at http://127.0.0.1:" in out
    assert "certified=True" in out
    assert "'429'" not in out  # the client kept under the API's limit
    run_dir = pathlib.Path(re.search(r"run directory: (\S+)", out).group(1))
    assert (run_dir / "model.arrow").exists() and any((run_dir / "journal").iterdir())
    key_free = out + (run_dir / "run.json").read_text()
    assert "EXAMPLE_API_KEY" in key_free  # the variable's name is recorded, not its value


def test_examples_use_only_the_public_api():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"distextract\._|from \._|import _", text), path.name
