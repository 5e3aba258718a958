"""The progress display and in-process runs need no Ray (issue 18)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

from distextract.distributed.progress import ProgressDisplay


def test_in_process_extract_with_progress_display_does_not_import_ray(tmp_path):
    # A fresh interpreter: this test process may have imported Ray for other tests.
    script = textwrap.dedent("""
        import io, sys
        import distextract as dx
        from distextract.distributed.progress import ProgressDisplay
        net = dx.targets.random_network(6, 4, 1, seed=3)
        display = ProgressDisplay(io.StringIO(), input_dim=6, min_interval=0.0)
        result = dx.extract(net, seed=0, progress=display)
        display.close()
        assert result.certified, result.stop_reason
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        print("RAY_MODULES", len(loaded), loaded[:3])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAY_MODULES 0 []" in out.stdout, out.stdout


def test_progress_display_draws_paid_rows_and_share_of_limit():
    stream = io.StringIO()
    display = ProgressDisplay(stream, input_dim=8, limit_rows_per_s=200.0, min_interval=0.0)
    display({"phase": "search", "kinks": 5})
    display.update(paid=300, rows_per_s=100.0, elapsed=3.0)
    display.close()
    text = stream.getvalue()
    assert "300 rows paid" in text
    assert "(50% of limit)" in text
    assert "kinks 5" in text
