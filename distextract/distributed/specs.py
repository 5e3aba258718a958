"""How an oracle travels to Ray workers: specs built again in each worker, and what a
:class:`~.executor.RayExecutor` over an oracle will have (:func:`executor_plan`), Ray-free."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._errors import ConfigError
from .._oracle import CountingOracle, Oracle
from .._validation import check_positive_int

INLINE_SPEC_BYTES = 64 * 1024  # a larger oracle spec goes to the object store (RayExecutor)


@dataclass(frozen=True)
class HTTPOracleSpec:
    """The settings of an :class:`~distextract.HTTPOracle`, without its key or connections.

    ``build`` makes a fresh client in the process that calls it (a worker actor). The API key is
    read there from the environment variable named ``api_key_env``.
    """

    url: str
    input_dim: int
    settings: dict = field(default_factory=dict)
    rate: float | None = None
    rows_rate: float | None = None
    budget: int | None = None
    discover: bool = False

    @classmethod
    def from_oracle(cls, http: Any) -> HTTPOracleSpec:
        """Read the settings of a live :class:`~distextract.HTTPOracle`."""
        settings = {"api_key_env": http.api_key_env, "max_batch": http.max_batch,
                    "max_in_flight": http.max_in_flight, "timeout": http.timeout,
                    "retries": http.retries_allowed,
                    "rate_limit_retries": http.rate_limit_retries, "backoff": http.backoff,
                    "backoff_max": http.backoff_max, "max_retry_after": http.max_retry_after,
                    "input_field": http.input_field, "output_field": http.output_field}
        rate, rows_rate = http.rate, http.rows_rate
        if rate is None and rows_rate is None:
            limiter = http.limiter
            rate, rows_rate = getattr(limiter, "rate", None), getattr(limiter, "rows_rate", None)
        discover = getattr(http, "discover_rate", False) or bool(
            getattr(http.limiter, "discover", False))
        return cls(http.url, http.input_dim, settings, rate, rows_rate, http.budget, discover)

    def build(self, limiter: Any, seed: np.random.SeedSequence) -> Oracle:
        """A new client using the shared ``limiter`` (None: no client-side limit)."""
        from .._http import HTTPOracle

        kwargs = dict(self.settings)
        if limiter is not None:
            kwargs["limiter"] = limiter
        return HTTPOracle(self.url, self.input_dim, seed=np.random.default_rng(seed), **kwargs)


@dataclass(frozen=True)
class PickledOracleSpec:
    """A picklable oracle shipped as itself (``NetworkOracle``, ``CallableOracle``, ...)."""

    oracle: Any

    def build(self, limiter: Any, seed: np.random.SeedSequence) -> Oracle:
        return self.oracle


@dataclass(frozen=True)
class SoftmaxSpec:
    """An oracle answering probabilities: workers build ``inner``, journal its raw answers,
    and turn them into centred log-probabilities (:class:`~distextract.SoftmaxLogitOracle`)."""

    inner: Any


def oracle_spec(oracle: Oracle) -> tuple[Any, str | None]:
    """How ``oracle`` travels to the workers.

    Parameters
    ----------
    oracle : Oracle
        Possibly a :class:`~distextract._journal.JournaledOracle` around the paid oracle.

    Returns
    -------
    spec : HTTPOracleSpec or PickledOracleSpec
    journal_dir : str or None
        The journal directory of a journaled oracle (workers write their own segments there).

    Raises
    ------
    ConfigError
        When the oracle cannot be shipped to another process.
    """
    from .._http import HTTPOracle
    from .._journal import JournaledOracle
    from .._oracle import SoftmaxLogitOracle

    if isinstance(oracle, SoftmaxLogitOracle):
        inner, journal = oracle_spec(oracle.inner)
        return SoftmaxSpec(inner), journal
    journal = None
    if isinstance(oracle, JournaledOracle):
        journal, oracle = oracle.journal_dir, oracle.inner
    if isinstance(oracle, CountingOracle):
        oracle = oracle.inner
    if isinstance(oracle, HTTPOracle):
        return HTTPOracleSpec.from_oracle(oracle), journal
    try:
        import cloudpickle

        cloudpickle.dumps(oracle)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means "cannot ship"
        raise ConfigError(
            f"the oracle {type(oracle).__name__} cannot be sent to Ray workers (pickling failed: "
            f"{exc}); pass a picklable oracle (NetworkOracle, CallableOracle of a module-level "
            f"function) or run in-process with workers=1") from None
    return PickledOracleSpec(oracle), journal


#: Most tasks one worker actor runs at once by default (threads of its default concurrency
#: group); an HTTP oracle's default is its ``max_in_flight`` up to this number.
MAX_TASKS_PER_WORKER = 8


def executor_plan(oracle: Oracle, *, rate: float | None = None, rows_rate: float | None = None,
                  discover: bool | None = None, tasks_per_worker: int | None = None,
                  budget: int | None = None) -> dict:
    """What a :class:`RayExecutor` over ``oracle`` will have, decided without Ray.

    Returns
    -------
    dict
        ``spec`` (what travels to the workers), ``journal_dir``, ``rate``, ``rows_rate``,
        ``discover``, ``tasks_per_worker``, ``budget`` (an HTTP oracle's own when none is
        given), ``request_limited``.
    """
    spec, journal = oracle_spec(oracle)
    outer = spec
    if isinstance(spec, SoftmaxSpec):
        spec = spec.inner
    if isinstance(spec, HTTPOracleSpec):
        budget = budget if budget is not None else spec.budget
        spec = replace(spec, budget=None)
        if rate is None and rows_rate is None:
            rate, rows_rate = spec.rate, spec.rows_rate
            discover = spec.discover if discover is None else discover
    discover = bool(discover) and rate is None and rows_rate is None
    if tasks_per_worker is None:
        tasks_per_worker = 1
        if isinstance(spec, HTTPOracleSpec):  # spec: the unwrapped one
            in_flight = int(spec.settings.get("max_in_flight") or 1)
            tasks_per_worker = max(1, min(MAX_TASKS_PER_WORKER, in_flight))
    return {"spec": SoftmaxSpec(spec) if isinstance(outer, SoftmaxSpec) else spec,
            "journal_dir": journal, "rate": rate, "rows_rate": rows_rate,
            "discover": discover,
            "tasks_per_worker": check_positive_int("tasks_per_worker", tasks_per_worker),
            "budget": budget, "request_limited": rate is not None or discover}
