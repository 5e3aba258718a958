"""JSON on the wire: float matrices encoded and decoded with **orjson** when it is installed.

The HTTP protocol (DESIGN.md section 4) carries every float as a JSON number with full
round-trip precision. The standard library does that through ``X.tolist()`` and one Python
float object per number: for a 64×64 request about 1.9 ms to encode and 1.3 ms to decode on the
project's 2-core machine, which made JSON the largest CPU cost per request on both ends (client
and ``distextract serve``). orjson writes a float64 array straight from its buffer with the
shortest round-trip representation (the same digits as ``repr(float)``) and parses numbers with
correct rounding: 0.11 ms and 0.19 ms for the same request, bit-identical values (tested over
float64's whole exponent range). It is a dependency of the package; this module falls back to
the standard library if it cannot be imported, with the same bytes meaning the same numbers.

Differences kept invisible to callers: orjson refuses ``NaN``/``Infinity`` tokens (the standard
library accepts them), so :func:`loads` retries with the standard library before reporting a
body as not JSON, and callers check finiteness themselves.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:  # pragma: no cover - exercised through whichever branch is installed
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

#: Name of the JSON library in use (reported by benchmarks).
BACKEND = "orjson" if orjson is not None else "json"


def dumps_rows(field: str, X: np.ndarray) -> bytes:
    """``{field: X}`` as JSON bytes; ``X`` is a finite float matrix (checked by the caller).

    Parameters
    ----------
    field : str
    X : ndarray of shape (n, d)
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    if orjson is not None:
        return orjson.dumps({field: X}, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps({field: X.tolist()}, allow_nan=False).encode()


def dumps(payload: Any) -> bytes:
    """Any JSON-serialisable payload (small messages: errors, counters) as bytes."""
    if orjson is not None:
        try:
            return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY
                                | orjson.OPT_NON_STR_KEYS)
        except TypeError:
            pass
    return json.dumps(payload).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ``ValueError`` when ``data`` is not JSON (``NaN`` tokens are read)."""
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # maybe NaN/Infinity tokens, which only the standard library reads
    return json.loads(data)


__all__ = ["BACKEND", "dumps", "dumps_rows", "loads"]
