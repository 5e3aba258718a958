"""The extracted (or target) network: one frozen dataclass, one matrix layout.

``F(x) = A @ relu(W @ x + b) + c + L @ x`` with ``W`` of shape (k, d).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import ConfigError
from ._validation import as_matrix

FORMAT_NAME = "distextract.ReluNetwork"
FORMAT_VERSION = 1


def _f64(name: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} holds NaN or Inf values")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ReluNetwork:
    """A one-hidden-layer ReLU network with an optional linear skip term.

    Parameters
    ----------
    W : ndarray of shape (k, d)
        Hidden-layer weights, one row per neuron.
    b : ndarray of shape (k,)
        Hidden-layer biases.
    A : ndarray of shape (m, k)
        Output weights.
    c : ndarray of shape (m,)
        Output bias.
    L : ndarray of shape (m, d), optional
        Linear skip term; zeros when omitted.
    metadata : dict, optional
        JSON-serialisable facts stored with the model (never secrets).
    """

    W: np.ndarray
    b: np.ndarray
    A: np.ndarray
    c: np.ndarray
    L: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        W = _f64("W", self.W, 2)
        k, d = W.shape
        b = _f64("b", self.b, 1)
        A = _f64("A", self.A, 2)
        c = _f64("c", self.c, 1)
        m = c.shape[0]
        L = np.zeros((m, d)) if self.L is None else self.L
        L = _f64("L", L, 2)
        if b.shape != (k,):
            raise ConfigError(f"b must have shape ({k},) to match W {W.shape}, got {b.shape}")
        if A.shape != (m, k):
            raise ConfigError(f"A must have shape ({m}, {k}) (m outputs, k neurons), got {A.shape}")
        if L.shape != (m, d):
            raise ConfigError(f"L must have shape ({m}, {d}), got {L.shape}")
        if m < 1 or d < 1:
            raise ConfigError(f"a network needs d >= 1 inputs and m >= 1 outputs, got d={d}, m={m}")
        for name, arr in (("W", W), ("b", b), ("A", A), ("c", c), ("L", L)):
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "metadata", dict(self.metadata))

    # ------------------------------------------------------------------ shape
    @property
    def input_dim(self) -> int:
        """Number of inputs d."""
        return int(self.W.shape[1])

    @property
    def hidden_dim(self) -> int:
        """Number of hidden neurons k."""
        return int(self.W.shape[0])

    @property
    def output_dim(self) -> int:
        """Number of outputs m."""
        return int(self.A.shape[0])

    # --------------------------------------------------------------- evaluate
    def hidden(self, X: np.ndarray) -> np.ndarray:
        """Pre-activations ``X @ W.T + b`` of shape (n, k)."""
        X = as_matrix("X", X, self.input_dim)
        return X @ self.W.T + self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Evaluate the network.

        Parameters
        ----------
        X : array-like of shape (n, d)

        Returns
        -------
        Y : ndarray of shape (n, m)
        """
        X = as_matrix("X", X, self.input_dim)
        out = np.maximum(X @ self.W.T + self.b, 0.0) @ self.A.T
        out += X @ self.L.T
        out += self.c
        return out

    __call__ = predict

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``softmax(predict(X))`` of shape (n, m) (for a model extracted
        from softmax answers, these are the oracle's answers)."""
        Z = self.predict(X)
        Z = Z - Z.max(axis=1, keepdims=True)
        E = np.exp(Z)
        return E / E.sum(axis=1, keepdims=True)

    def with_metadata(self, **items: Any) -> ReluNetwork:
        """A copy with extra metadata entries."""
        meta = dict(self.metadata)
        meta.update(items)
        return ReluNetwork(self.W, self.b, self.A, self.c, self.L, meta)

    # ---------------------------------------------------------------- storage
    def to_arrow(self):
        """The network as a ``pyarrow.Table``: one row per neuron, L and c in the schema metadata.

        Columns: ``w`` fixed-size list<double>[d], ``b`` double, ``a`` fixed-size list<double>[m].
        Schema metadata ``distextract`` holds format, version, d, k, m, c, L (JSON; floats are
        written with 17 significant digits, so float64 round-trips exactly) and user metadata.
        """
        import pyarrow as pa

        from ._arrow import numeric_array, vectors

        k, d, m = self.hidden_dim, self.input_dim, self.output_dim
        w_col = vectors(self.W, d)
        a_col = vectors(self.A.T, m)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "input_dim": d,
            "hidden_dim": k,
            "output_dim": m,
            "c": [float(v) for v in self.c],
            "L": [[float(v) for v in row] for row in self.L],
            "metadata": self.metadata,
        }
        schema = pa.schema(
            [("w", pa.list_(pa.float64(), d)), ("b", pa.float64()), ("a", pa.list_(pa.float64(), m))],
            metadata={"distextract": json.dumps(meta)},
        )
        return pa.Table.from_arrays([w_col, numeric_array(self.b), a_col], schema=schema)

    @classmethod
    def from_arrow(cls, table) -> ReluNetwork:
        """Inverse of :meth:`to_arrow`."""
        from ._arrow import to_numpy

        raw = (table.schema.metadata or {}).get(b"distextract")
        if raw is None:
            raise ConfigError("not a distextract model: the Arrow schema has no 'distextract' metadata")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT_NAME:
            raise ConfigError(f"not a distextract model: format is {meta.get('format')!r}")
        d, k, m = int(meta["input_dim"]), int(meta["hidden_dim"]), int(meta["output_dim"])
        if k:
            W = to_numpy(table.column("w")).reshape(k, d)
            a = to_numpy(table.column("a")).reshape(k, m)
            b = to_numpy(table.column("b"))
        else:
            W, a, b = np.zeros((0, d)), np.zeros((0, m)), np.zeros(0)
        return cls(W, b, a.T, np.array(meta["c"], dtype=np.float64),
                   np.array(meta["L"], dtype=np.float64).reshape(m, d), meta.get("metadata", {}))

    def save(self, path: str | os.PathLike) -> None:
        """Write an Arrow IPC file (Feather v2, uncompressed) to ``path`` atomically."""
        from ._arrow import write_table

        write_table(self.to_arrow(), os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReluNetwork:
        """Read a network written by :meth:`save`."""
        from pyarrow import feather

        path = os.fspath(path)
        if not os.path.exists(path):
            raise ConfigError(f"model file not found: {path}")
        try:
            table = feather.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise ConfigError(f"cannot read model file {path}: {exc}") from exc
        return cls.from_arrow(table)

    def __repr__(self) -> str:
        return f"ReluNetwork(d={self.input_dim}, k={self.hidden_dim}, m={self.output_dim})"
