"""Where the whole wall of one ``distextract extract`` run goes, against the foreign server
(issue 20, item 3): one :mod:`bench_foreign` behaviour, phase-stamped.

The CLI runs as :mod:`bench_foreign` runs it, but through this module in the child process
(``--child``), which wraps the engine's phases (:data:`PHASES`: the first request, the first
line's search and measurement, ``jumps_to_neurons``, every ``assemble``, the residual lines,
the pin, Ray's start) to stamp their start and end, and records every paced body the driver
writes (its slot, the time it left, the wire's gap) and every slot its own limiter books
(with the pace then). The server logs every answer. Printed:

- per phase: start and end (seconds from the process start), rows the server answered
  within it, and the seconds it lost against the server's limit (its duration minus those
  rows at the limit; nested phases overlap);
- per second: rows answered (% of the limit), requests the driver wrote, their mean gap,
  the wire's gap, the driver's pace (requests/s; until the workers take over the slots);
- the 429s the driver met: time and the pause asked.

Every earlier session wrote this diagnostic again in ``/tmp`` (BENCHMARKS.md, ``rate4``,
``rate5``); its findings are in ``rate6``.

Usage::

    python benchmarks/foreign_phases.py --only burst5-int [--seed 0] [--quick] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import functools
import importlib
import json
import re
import sys
import threading
import time

#: (module, attribute, label) of each stamped phase: functions looked up in the module that
#: calls them (so the stamp sees the calls the engine makes).
PHASES = (
    ("distextract.engine.opening", "first_request", "first_request"),
    ("distextract.engine.opening", "first_line", "first_line"),
    ("distextract.engine.scan", "search", "search"),
    ("distextract.engine.scan", "measure", "measure"),
    ("distextract.engine.opening", "jumps_to_neurons", "jumps_to_neurons (first line)"),
    ("distextract.engine.update", "jumps_to_neurons", "jumps_to_neurons (residual line)"),
    ("distextract.engine.update", "residual", "residual search"),
    ("distextract.engine.update", "measure", "measure (residual line)"),
    ("distextract.engine.update", "residual_line", "residual_line"),
    ("distextract.engine.loop", "assemble", "assemble"),
    ("distextract.engine.finish", "pin", "pin"),
    ("distextract.distributed.run", "_start_ray", "ray start"),
)

#: A stamped phase shorter than this is left out of the table (seconds).
MIN_PHASE_S = 0.02


# ------------------------------------------------------------------------ analysis
def phase_losses(stamps: list, answers: list, limit: float) -> list[dict]:
    """Seconds each phase lost against the server's limit.

    Parameters
    ----------
    stamps : list of (label, start, end)
        Phases, times in seconds on the answers' clock.
    answers : list of (time, rows)
        Every answered request.
    limit : float
        The server's limit in rows/s.

    Returns
    -------
    list of dict
        Per phase, in order of start: ``phase``, ``start``, ``end``, ``rows`` (answered in
        ``[start, end)``) and ``lost_s`` (``end - start - rows / limit``).
    """
    out = []
    for label, start, end in sorted(stamps, key=lambda s: (s[1], -s[2])):
        rows = sum(n for t, n in answers if start <= t < end)
        out.append({"phase": label, "start": start, "end": end, "rows": int(rows),
                    "lost_s": (end - start) - rows / limit})
    return out


def per_second(answers: list, writes: list, pace: list, limit: float,
               wall: float) -> list[dict]:
    """The run in one-second bins.

    Parameters
    ----------
    answers : list of (time, rows)
        Every answered request (the server's log).
    writes : list of (time, gap)
        Every paced body the driver wrote: when it left, the wire's gap then (seconds).
    pace : list of (time, rate)
        Every slot the driver's own limiter booked, with its pace (requests/s).
    limit : float
        The server's limit in rows/s.
    wall : float
        Seconds covered (from 0).

    Returns
    -------
    list of dict
        Per second ``t``: ``pct`` (rows answered, % of the limit), ``written`` (driver's
        bodies), ``gap_ms`` (their mean spacing), ``wire_gap_ms``, ``pace`` (mean; None
        when the driver booked no slot of its own).
    """
    bins = []
    for t in range(int(wall) + 1):
        rows = sum(n for a, n in answers if t <= a < t + 1)
        w = sorted(x for x in writes if t <= x[0] < t + 1)
        gaps = [b[0] - a[0] for a, b in zip(w, w[1:], strict=False)]
        p = [r for a, r in pace if t <= a < t + 1]
        bins.append({"t": t, "pct": 100.0 * rows / limit, "written": len(w),
                     "gap_ms": 1e3 * sum(gaps) / len(gaps) if gaps else None,
                     "wire_gap_ms": 1e3 * sum(g for _, g in w) / len(w) if w else None,
                     "pace": sum(p) / len(p) if p else None})
    return bins


def refusals(log: str, t0: float) -> list[tuple[float, float]]:
    """(seconds from ``t0``, pause asked) of each 429 in the CLI's ``-v`` log."""
    out = []
    pattern = (r"(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) INFO distextract\._http: HTTP 429"
               r".* for ([\d.e+-]+) s")
    for m in re.finditer(pattern, log):
        when = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        out.append((when + int(m.group(2)) / 1000 - t0, float(m.group(3))))
    return out


# --------------------------------------------------------------------- child side
class _Recorder:
    """What the child records: phase stamps (wall clock), the driver's paced bodies and
    booked slots (monotonic clock; their offset to the wall clock is kept)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamps: list = []
        self.writes: list = []
        self.slots: list = []
        self.offset = time.time() - time.monotonic()
        self._lock = threading.Lock()
        self._dumped = False

    def wrap(self, module: str, attr: str, label: str) -> None:
        mod = importlib.import_module(module)
        fn = getattr(mod, attr)

        @functools.wraps(fn)
        def stamped(*args, **kwargs):
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.stamps.append((label, t0, time.time()))

        setattr(mod, attr, stamped)

    def install(self) -> None:
        from distextract import _http, _ratelimit

        for module, attr, label in PHASES:
            self.wrap(module, attr, label)
        write = _http._WirePacer.write
        recorder = self

        def paced_write(pacer, stream, buffer, timeout):
            turn = getattr(pacer._local, "turn", None)
            write(pacer, stream, buffer, timeout)
            if turn is not None and len(buffer) == turn[2]:
                with recorder._lock:
                    recorder.writes.append((time.monotonic() + recorder.offset, turn[1]))

        _http._WirePacer.write = paced_write
        reserve = _ratelimit.Schedule.reserve

        def booked(schedule, rows, now):
            at = reserve(schedule, rows, now)
            if schedule.pace is not None:
                with recorder._lock:
                    recorder.slots.append((now + recorder.offset, schedule.pace.rate))
            return at

        _ratelimit.Schedule.reserve = booked

    def dump(self) -> None:
        with self._lock:
            if self._dumped:
                return
            self._dumped = True
            data = {"stamps": self.stamps, "writes": self.writes, "slots": self.slots}
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)


def child(path: str, argv: list[str]) -> None:
    """Run the CLI with ``argv`` in this process, stamped; write what was recorded to
    ``path`` as the CLI ends (it ends with ``os._exit``: the dump goes before it)."""
    from distextract import cli

    recorder = _Recorder(path)
    recorder.install()
    exit_now = cli._exit_now

    def dump_then_exit(code: int) -> None:
        recorder.dump()
        exit_now(code)

    cli._exit_now = dump_then_exit
    sys.argv = ["distextract", *argv]
    try:
        cli.main()
    finally:
        recorder.dump()


# -------------------------------------------------------------------- parent side
def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", required=True, help="one bench_foreign behaviour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="d=32, k=128")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--json", default=None, help="also write the tables here")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tempfile

    import bench_foreign

    import distextract as dx

    d, k, m = (32, 128, 10) if args.quick else (128, 1024, 10)
    net = dx.targets.random_network(d, k, m, seed=args.seed)
    record = os.path.join(tempfile.mkdtemp(prefix="dx-phases-"), "record.json")
    me = os.path.abspath(__file__)
    args.timeline = None
    capture: dict = {}
    row = bench_foreign.run_one(args.only, net, args, args.seed,
                                launcher=[sys.executable, me, "--child", record, "-v"],
                                capture=capture)
    w0, limit, wall = capture["w0"], capture["limit"], row["wall_s"]
    with open(record, encoding="utf-8") as fh:
        rec = json.load(fh)
    answers = [(t - w0, n) for t, n, status in capture["log"] if status == 200]
    stamps = [(label, a - w0, b - w0) for label, a, b in rec["stamps"]]
    phases = phase_losses(stamps, answers, limit)
    seconds = per_second(answers, [(t - w0, g) for t, g in rec["writes"]],
                         [(t - w0, r) for t, r in rec["slots"]], limit, wall)
    refused = refusals(capture["stderr"], w0)
    print(f"{args.only} seed {args.seed}: {row['rows']:,} rows, wall {wall:.2f} s, "
          f"{row['pct_wall']:.1f}% of the limit, {row['429']} 429s; lost "
          f"{wall - row['rows'] / limit:.2f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'phase':34s} {'start':>7s} {'end':>7s} {'rows':>8s} {'lost s':>7s}")
    for p in phases:
        if p["end"] - p["start"] >= MIN_PHASE_S or p["phase"] == "assemble":
            print(f"{p['phase']:34s} {p['start']:7.2f} {p['end']:7.2f} {p['rows']:8,d} "
                  f"{p['lost_s']:7.2f}")
    print("second  % limit  written  gap ms  wire gap ms  pace")
    for b in seconds:
        print(f"{b['t']:6d} {b['pct']:7.0f}% {b['written']:8d} "
              f"{'-' if b['gap_ms'] is None else format(b['gap_ms'], '7.1f'):>7s} "
              f"{'-' if b['wire_gap_ms'] is None else format(b['wire_gap_ms'], '11.1f'):>11s} "
              f"{'-' if b['pace'] is None else format(b['pace'], '5.1f'):>5s}")
    print("429s (s, pause asked):", ", ".join(f"{t:.2f} ({s:g})" for t, s in refused) or "none")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"row": row, "phases": phases, "seconds": seconds, "refused": refused},
                      fh, indent=1)


if __name__ == "__main__":
    main()
