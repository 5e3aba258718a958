"""Argument checks used at the public boundary; messages name the argument."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import ConfigError


def as_matrix(name: str, X: Any, n_cols: int | None = None) -> np.ndarray:
    """Return ``X`` as a float64 array of shape (n, n_cols); a 1-D input is one row."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D array of shape (n, d), got shape {arr.shape}")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise ConfigError(f"{name} must have {n_cols} columns, got shape {arr.shape}")
    return arr


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int >= minimum, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
