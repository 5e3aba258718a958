"""Distributed extraction on Ray: worker actors, one global budget, one global rate limit.

This is the only package of distextract that imports Ray, and only when one of its Ray parts
is used: the names below are loaded on first access, so
``from distextract.distributed.progress import ProgressDisplay`` (which an in-process run uses)
imports no Ray. Modules, by role:

- :mod:`.specs` -- how an oracle travels to the workers (Ray-free);
- :mod:`.limiter` -- the limiter actor and its worker-side proxy;
- :mod:`.actors` -- the ledger and worker actors;
- :mod:`.executor` -- :class:`RayExecutor`;
- :mod:`.overlap` -- the driver pays the first queries while Ray starts;
- :mod:`.run` -- :func:`run_distributed` and the progress poller;
- :mod:`.progress` -- :class:`ProgressDisplay` (Ray-free).

 The engine's coordinator
(:class:`distextract.engine.loop.Coordinator`) runs in the driver and only calls
``executor.map(tasks)`` and reads ``executor.queries``; :class:`RayExecutor` runs those tasks on
worker actors, so a distributed run asks exactly the rows an in-process run asks (same seed).

Actors::

    driver ── Coordinator ── RayExecutor.map ──► _Worker × N   (each owns its oracle client)
                  │                                 │   reserve rows before sending
                  │                                 ├──► _Ledger    (global budget, exact paid rows)
                  │                                 └──► _Limiter   (global rate limit, leased slots)
                  └── progress poller (stats of ledger, limiter and workers) ──► ProgressDisplay

- **Workers** are plain classes made remote at construction
  (``ray.remote(_Worker).options(max_restarts=..., max_task_retries=..., max_concurrency=...)``).
  Each is a threaded actor running ``tasks_per_worker`` tasks at once (a task is a sequence of
  dependent round trips, so one task per worker leaves the oracle's latency idle); the
  coordinator cuts its work into about ``workers × tasks_per_worker`` tasks. An HTTP client
  coalesces the small queries of a worker's concurrent tasks into shared requests (permit
  first, then fill: :mod:`distextract._http`), so more tasks also mean fuller requests under a
  requests/s limit. The rows asked do
  not depend on either number. A worker killed
  mid-task is restarted by Ray and its task retried by Ray; with a journal directory (one
  :class:`~distextract._journal.JournaledOracle` segment per worker and attempt) the rows the
  dead attempt was answered are served from the journal, not paid again.
- **Budget and counting**: every row a worker sends is reserved at the ledger actor *before* it
  is sent, so the global budget is never exceeded and ``queries`` counts every row that reached
  the oracle, rows of retried tasks included (rows served from the journal are free).
- **Rate limit**: one limiter actor per API key leases send *slots* (GCRA virtual scheduling:
  evenly spaced send times, requests/s and rows/s) in chunks of about ``lease_horizon`` seconds
  of the rate, so a worker does not pay a round trip per request (DESIGN.md section 6: ≈1,500
  round trips/s but ≈115,000 permits/s when leased in chunks). A 429 seen by any worker pauses
  the limiter, so every worker slows down.
- **Progress**: the driver polls the ledger, the limiter and each worker's ``stats()`` (its own
  concurrency group, so it answers while a task runs) and feeds a one-line display on stderr.

Oracles travel to the workers as *specs*: a picklable oracle (``NetworkOracle``,
``CallableOracle``, any picklable :class:`~distextract.Oracle`) travels as itself; an
:class:`~distextract.HTTPOracle` (deliberately unpicklable: it holds connections, threads and the
API key) travels as :class:`HTTPOracleSpec`, its settings without the key; each worker builds
its own client and reads the key from the environment variable named by ``api_key_env``
(on a cluster it is forwarded to the workers through the actors' ``runtime_env``). A spec
over ``INLINE_SPEC_BYTES`` (an in-process network) is held by the ledger and fetched from it
when a worker starts or restarts; the workers find the ledger and the limiter by their
per-run names.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executor import RayExecutor
    from .limiter import LeasedLimiter
    from .progress import ProgressDisplay
    from .run import run_distributed
    from .specs import HTTPOracleSpec, PickledOracleSpec, oracle_spec

#: Where each name of this package lives (loaded on first access: PEP 562).
_HOME = {
    "HTTPOracleSpec": "specs", "PickledOracleSpec": "specs", "SoftmaxSpec": "specs",
    "oracle_spec": "specs", "INLINE_SPEC_BYTES": "specs",
    "LeasedLimiter": "limiter", "_Limiter": "limiter", "LEASE_HORIZON_S": "limiter",
    "STALE_SLOT_S": "limiter", "CLOCK_RTT_S": "limiter",
    "_Ledger": "actors", "_Worker": "actors", "_MeteredOracle": "actors",
    "_RemoteError": "actors", "STATS_GROUP": "actors",
    "RayExecutor": "executor", "MAX_TASKS_PER_WORKER": "specs", "executor_plan": "specs",
    "OverlappedExecutor": "overlap",
    "QUEUED_PER_WORKER": "executor",
    "run_distributed": "run", "POLL_INTERVAL_S": "run",
    "ProgressDisplay": "progress",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


__all__ = ["HTTPOracleSpec", "LeasedLimiter", "PickledOracleSpec", "ProgressDisplay",
           "RayExecutor", "oracle_spec", "run_distributed"]
