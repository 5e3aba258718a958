"""The one-line live progress display (Ray-free: an in-process run uses it too)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np


class ProgressDisplay:
    """A single refreshing line on a stream: rows paid, rows/s vs the limit, kinks, neurons,
    validation error, ETA.

    Call it with the engine's progress dicts and the poller's counters (``update``).
    The ETA assumes about ``1.1·(d+1)`` rows per neuron still to find (DESIGN.md §2, step 4)
    with the neurons found so far as the estimate of k, or the budget when one is set; it is a
    rough guide, shown as ``~``.

    Parameters
    ----------
    stream : file, optional
        Default ``sys.stderr``.
    input_dim : int, optional
        d (for the ETA).
    limit_rows_per_s : float, optional
        The global rate limit in rows/s.
    budget : int, optional
    min_interval : float
        Seconds between two redraws.
    """

    def __init__(self, stream: Any = None, input_dim: int | None = None,
                 limit_rows_per_s: float | None = None, budget: int | None = None,
                 min_interval: float = 0.2) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.d = input_dim
        self.limit = limit_rows_per_s
        self.budget = budget
        self.min_interval = min_interval
        self.state: dict = {"paid": 0, "kinks": 0, "neurons": 0, "val_rel_l2": float("inf"),
                            "phase": "start", "rows_per_s": 0.0, "elapsed": 0.0, "restarts": 0}
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self._width = 0

    def __call__(self, info: dict) -> None:
        """Engine progress callback."""
        with self._lock:
            if info.get("phase") == "search":
                self.state["kinks"] += int(info.get("kinks", 0))
            for key in ("neurons", "val_rel_l2", "phase"):
                if key in info:
                    self.state[key] = info[key]
        self.draw()

    def update(self, **counters: Any) -> None:
        """Counters polled from the actors (``paid``, ``rows_per_s``, ``elapsed``, ...)."""
        with self._lock:
            self.state.update(counters)
        self.draw()

    def line(self) -> str:
        s = self.state
        rate = f"{s['rows_per_s']:,.0f} rows/s"
        if self.limit:
            rate += f" ({100 * s['rows_per_s'] / self.limit:.0f}% of limit)"
        eta = "?"
        if s["rows_per_s"] > 0:
            target = None
            if self.budget is not None:
                target = self.budget
            elif self.d and s["neurons"]:
                target = 1.1 * s["neurons"] * (self.d + 1)
            if target is not None:
                eta = f"~{max(0.0, target - s['paid']) / s['rows_per_s']:.0f}s"
        val = s["val_rel_l2"]
        val_s = "-" if not np.isfinite(val) else f"{val:.2g}"
        out = (f"[{s['elapsed']:6.1f}s] {s['phase']:<8} {s['paid']:,} rows paid | {rate} | "
               f"kinks {s['kinks']:,} | neurons {s['neurons']:,} | val rel L2 {val_s} | "
               f"ETA {eta}")
        if s["restarts"]:
            out += f" | restarts {s['restarts']}"
        return out

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        self.draw(force=True)
        self.stream.write("\n")
        self.stream.flush()



__all__ = ["ProgressDisplay"]
