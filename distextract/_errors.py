"""Exceptions raised by distextract.

The hierarchy::

    DistextractError
    ├── ConfigError              bad argument or configuration (names the argument)
    ├── OracleError              the oracle misbehaved
    │   ├── OracleShapeError     wrong number of rows or columns
    │   ├── OracleValueError     NaN / Inf / non-numeric answer
    │   └── OracleHTTPError      permanent HTTP failure (status and server message)
    ├── BudgetExhausted          the query budget would be exceeded
    ├── JournalError             a run directory / journal cannot be used
    └── TargetMismatch           the oracle is not a one-hidden-layer ReLU network
        └── NonDeterministicOracle  same point, different answer (also an OracleError)
"""

from __future__ import annotations


class DistextractError(Exception):
    """Base class of every error raised on purpose by distextract."""


class ConfigError(DistextractError, ValueError):
    """An argument or configuration value is invalid."""


class OracleError(DistextractError):
    """The oracle answered something that cannot be used."""


class OracleShapeError(OracleError):
    """The oracle's answer has the wrong shape."""


class OracleValueError(OracleError):
    """The oracle's answer holds NaN, Inf or non-numeric values."""



class OracleHTTPError(OracleError):
    """The HTTP oracle failed permanently (status code and server message attached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BudgetExhausted(DistextractError):
    """Sending the next batch would exceed the query budget.

    Attributes
    ----------
    budget : int
        The budget in rows.
    used : int
        Rows already sent when the request was refused.
    requested : int
        Rows the refused request asked for.
    """

    def __init__(self, budget: int, used: int, requested: int) -> None:
        super().__init__(
            f"query budget exhausted: budget={budget} rows, already sent {used}, "
            f"next request needs {requested}"
        )
        self.budget = budget
        self.used = used
        self.requested = requested


class JournalError(DistextractError):
    """A query journal or run directory cannot be used (nothing is deleted)."""


class TargetMismatch(DistextractError):
    """The oracle does not behave like a one-hidden-layer ReLU network.

    Attributes
    ----------
    observation : str
        What was observed (e.g. "no sharp kinks along 3 lines").
    queries : int
        Rows spent before the verdict.
    """

    def __init__(self, observation: str, queries: int = 0) -> None:
        super().__init__(
            f"the oracle is not a one-hidden-layer ReLU network: {observation} "
            f"(verdict after {queries} queries)"
        )
        self.observation = observation
        self.queries = queries


class NonDeterministicOracle(TargetMismatch, OracleError):
    """The oracle gave different answers for the same input (a random function is no
    one-hidden-layer ReLU network either)."""
