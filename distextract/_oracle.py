"""The oracle interface and its in-process adapters.

An oracle answers ``query(X)`` with ``X`` of shape (n, d) float64 and returns (n, m) float64.
Extraction code only ever sees an :class:`Oracle`; query counting, budgets and answer checks
live in :class:`CountingOracle`, never in globals.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import (
    BudgetExhausted,
    ConfigError,
    OracleError,
    OracleShapeError,
    OracleValueError,
)
from ._model import ReluNetwork
from ._validation import as_matrix, check_positive_int

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only (3.10 supported)


class Oracle(abc.ABC):
    """Black-box access to ``F: R^d -> R^m``.

    Subclasses implement :meth:`_query`; :meth:`query` validates the input.

    Attributes
    ----------
    input_dim : int
        d.
    output_dim : int or None
        m, or None when it is only known after the first answer.
    max_batch : int or None
        Largest number of rows one request may carry (None: no limit). Callers may pass more
        rows to :meth:`query`; adapters split as needed.
    """

    input_dim: int
    output_dim: int | None = None
    max_batch: int | None = None

    def query(self, X: np.ndarray) -> np.ndarray:
        """Evaluate the oracle.

        Parameters
        ----------
        X : array-like of shape (n, d)

        Returns
        -------
        Y : ndarray of shape (n, m), float64
        """
        X = as_matrix("X", X, self.input_dim)
        if X.shape[0] == 0:
            return np.zeros((0, self.output_dim or 0))
        return self._query(X)

    @abc.abstractmethod
    def _query(self, X: np.ndarray) -> np.ndarray:
        """Evaluate validated rows (n >= 1)."""

    def close(self) -> None:
        """Release resources (connections, files)."""

    def describe(self) -> dict:
        """A JSON-serialisable description without secrets."""
        return {"type": type(self).__name__, "input_dim": self.input_dim,
                "output_dim": self.output_dim}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CallableOracle(Oracle):
    """Adapter for any Python callable ``f(X: (n, d)) -> (n, m) or (n,)``.

    Parameters
    ----------
    fn : callable
    input_dim : int
    max_batch : int, optional
        Split larger requests into chunks of at most this many rows.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], input_dim: int,
                 max_batch: int | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"oracle must be callable or an Oracle, got {type(fn).__name__}")
        self.fn = fn
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.max_batch = None if max_batch is None else check_positive_int("max_batch", max_batch)
        self.output_dim = None

    def _query(self, X: np.ndarray) -> np.ndarray:
        step = self.max_batch or X.shape[0]
        parts = [np.asarray(self.fn(X[i:i + step].copy())) for i in range(0, X.shape[0], step)]
        parts = [p[:, None] if p.ndim == 1 else p for p in parts]
        try:
            return np.concatenate(parts, axis=0)
        except ValueError as exc:
            raise OracleShapeError(
                f"the oracle's answers have inconsistent shapes: {[p.shape for p in parts]}"
            ) from exc

    def describe(self) -> dict:
        out = super().describe()
        out["callable"] = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return out


class NetworkOracle(Oracle):
    """A local network (a :class:`ReluNetwork` or a model file) served in-process.

    ``output`` selects what is returned: ``"float64"`` (exact), ``"float32"``, ``"float16"`` or
    ``"bfloat16"`` (rounded to that format), ``"round:N"`` (rounded to N decimals) or
    ``"softmax"`` (class probabilities).
    """

    def __init__(self, network: ReluNetwork | str | os.PathLike, output: str = "float64",
                 max_batch: int | None = None) -> None:
        if not isinstance(network, ReluNetwork):
            network = ReluNetwork.load(network)
        self.network = network
        self.input_dim = network.input_dim
        self.output_dim = network.output_dim
        self.max_batch = max_batch
        self.output = output
        self._transform = output_transform(output)

    def _query(self, X: np.ndarray) -> np.ndarray:
        return self._transform(self.network.predict(X))

    def describe(self) -> dict:
        out = super().describe()
        out.update(hidden_dim=self.network.hidden_dim, output=self.output)
        return out


def _bfloat16(Y: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (8 significand bits, float32's range), nearest even, as float64."""
    bits = np.ascontiguousarray(Y, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
    return np.where(np.isfinite(Y), out, Y)


def output_transform(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """The post-processing named by ``kind`` (see :class:`NetworkOracle`)."""
    if kind == "float64":
        return lambda Y: Y
    if kind == "float32":
        return lambda Y: Y.astype(np.float32).astype(np.float64)
    if kind == "float16":
        return lambda Y: Y.astype(np.float16).astype(np.float64)
    if kind == "bfloat16":
        return _bfloat16
    if kind == "softmax":
        def softmax(Y: np.ndarray) -> np.ndarray:
            Z = Y - Y.max(axis=1, keepdims=True)
            E = np.exp(Z)
            return E / E.sum(axis=1, keepdims=True)
        return softmax
    if kind.startswith("round:"):
        try:
            decimals = int(kind.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"output 'round:N' needs an integer N, got {kind!r}") from None
        return lambda Y: np.round(Y, decimals)
    raise ConfigError(
        f"unknown output kind {kind!r}; expected float64, float32, float16, bfloat16, "
        f"softmax or round:N"
    )


def as_oracle(oracle: Any, input_dim: int | None = None) -> Oracle:
    """Wrap a callable, a :class:`ReluNetwork` or a model path as an :class:`Oracle`."""
    if isinstance(oracle, Oracle):
        if input_dim is not None and oracle.input_dim != input_dim:
            raise ConfigError(
                f"input_dim={input_dim} does not match the oracle's input_dim={oracle.input_dim}"
            )
        return oracle
    if isinstance(oracle, (ReluNetwork, str, os.PathLike)):
        net = NetworkOracle(oracle)
        if input_dim is not None and net.input_dim != input_dim:
            raise ConfigError(
                f"input_dim={input_dim} does not match the network's input dimension "
                f"{net.input_dim}"
            )
        return net
    if input_dim is None:
        raise ConfigError("input_dim is required when the oracle is a plain callable")
    return CallableOracle(oracle, input_dim)


class SoftmaxLogitOracle(Oracle):
    """Turns an oracle answering class probabilities into centred log-probabilities.

    ``z = log p - mean(log p)`` equals the network's logits minus their mean, which is
    piecewise linear in ``x`` again (the softmax normaliser cancels). Probabilities must be
    positive: a class that underflowed to 0 has no log-ratio.
    """

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner
        self.input_dim = inner.input_dim
        self.output_dim = inner.output_dim
        self.max_batch = inner.max_batch

    def _query(self, X: np.ndarray) -> np.ndarray:
        P = np.asarray(self.inner.query(X), dtype=np.float64)
        if P.ndim != 2 or P.shape[1] < 2:
            raise OracleShapeError(
                f"softmax output needs m >= 2 probabilities per row, got shape {P.shape}")
        if np.any(~np.isfinite(P)) or np.any(P < 0):
            raise OracleValueError("softmax output holds negative, NaN or Inf probabilities")
        zero = np.sum(np.any(P == 0.0, axis=1))
        if zero:
            raise OracleValueError(
                f"a class probability underflowed to 0 in {zero} of {P.shape[0]} rows, so its "
                f"log-ratio is undefined; use a shorter line_reach or logit outputs")
        L = np.log(P)
        return L - L.mean(axis=1, keepdims=True)

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        out = self.inner.describe()
        out["transform"] = "softmax->centred log-probabilities"
        return out


class CountingOracle(Oracle):
    """Counts rows, enforces a budget, and checks every answer.

    Thread-safe: rows are reserved against the budget before the request is sent, so
    concurrent callers never exceed it.

    Parameters
    ----------
    inner : Oracle
    budget : int, optional
        Hard cap on rows sent to ``inner``.
    """

    def __init__(self, inner: Oracle, budget: int | None = None) -> None:
        self.inner = inner
        self.input_dim = inner.input_dim
        self.output_dim = inner.output_dim
        self.max_batch = inner.max_batch
        self.budget = None if budget is None else check_positive_int("budget", budget)
        self.queries = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int | None:
        """Rows left in the budget (None: unlimited)."""
        return None if self.budget is None else self.budget - self.queries

    def _query(self, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        with self._lock:
            if self.budget is not None and self.queries + n > self.budget:
                raise BudgetExhausted(self.budget, self.queries, n)
            self.queries += n
        Y = self.inner.query(X)
        return self.check_answer(X, Y)

    def check_answer(self, X: np.ndarray, Y: Any) -> np.ndarray:
        """Validate an answer for rows ``X``: shape (n, m), finite floats, consistent m."""
        try:
            Y = np.asarray(Y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise OracleValueError(f"the oracle returned non-numeric values: {exc}") from exc
        if Y.ndim == 1 and Y.shape[0] == X.shape[0]:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
            raise OracleShapeError(
                f"the oracle returned shape {Y.shape} for {X.shape[0]} input rows; "
                f"expected ({X.shape[0]}, m) or ({X.shape[0]},)"
            )
        if self.output_dim is None:
            self.output_dim = int(Y.shape[1])
        elif Y.shape[1] != self.output_dim:
            raise OracleShapeError(
                f"the oracle returned {Y.shape[1]} outputs per row, earlier answers had "
                f"{self.output_dim}"
            )
        if not np.all(np.isfinite(Y)):
            bad = int(np.sum(~np.all(np.isfinite(Y), axis=1)))
            raise OracleValueError(f"the oracle returned NaN or Inf in {bad} of {Y.shape[0]} rows")
        return Y

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        return self.inner.describe()


__all__ = [
    "CallableOracle",
    "CountingOracle",
    "NetworkOracle",
    "Oracle",
    "OracleError",
    "SoftmaxLogitOracle",
    "as_oracle",
    "output_transform",
]
