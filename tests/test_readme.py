"""The README's Python example runs as written (keeps the front door true)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)  # the example saves model.arrow in the working directory
    # running the README's own example is the test (hence exec)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102
    out = capsys.readouterr().out
    assert "True certified" in out
    assert (tmp_path / "model.arrow").exists()


def test_readme_names_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]"' in text
    assert re.search(r'pip install (--quiet )?-e "\.\[test\]"', ci)
    assert "python -m pytest -q" in text and "python -m pytest -q" in ci
