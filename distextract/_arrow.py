"""Arrow arrays to and from numpy without pandas.

``pyarrow.array(...)``, ``Array.to_numpy()`` and ``numpy.asarray(array)`` import pandas the
first time they run (pyarrow asks whether the value is a pandas object): 0.3 s of CPU in the
driver and again in every Ray worker that journals a row (pyarrow 26, pandas 3 installed;
BENCHMARKS.md). The journal and the run directory build their arrays here from numpy buffers
(``Array.from_buffers``, zero copy where the layout allows), read them back the same way and
write Arrow files without ``feather.write_feather`` (which asks whether the table is a pandas
DataFrame), so an extraction never imports pandas.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: numpy dtype of each Arrow type handled here (fixed-width, little-endian).
_NUMPY = {pa.float64(): np.dtype("<f8"), pa.int64(): np.dtype("<i8")}


def _validity(mask: np.ndarray | None, n: int) -> tuple[pa.Buffer | None, int]:
    """Arrow validity bitmap of ``mask`` (True: null) and the null count."""
    if mask is None:
        return None, 0
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    if mask.shape[0] != n:
        raise ValueError(f"mask must have {n} entries, got {mask.shape[0]}")
    nulls = int(mask.sum())
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(~mask, bitorder="little")), nulls


def numeric_array(values: object, arrow_type: pa.DataType = pa.float64(),
                  mask: np.ndarray | None = None) -> pa.Array:
    """A float64 or int64 Arrow array over the values of a 1-D array (``mask``: True = null).

    Parameters
    ----------
    values : array-like of shape (n,)
    arrow_type : pyarrow.float64() or pyarrow.int64()
    mask : array-like of bool, shape (n,), optional
    """
    dtype = _NUMPY.get(arrow_type)
    if dtype is None:
        raise ValueError(f"arrow_type must be float64 or int64, got {arrow_type}")
    data = np.ascontiguousarray(np.asarray(values).reshape(-1), dtype=dtype)
    validity, nulls = _validity(mask, data.shape[0])
    return pa.Array.from_buffers(arrow_type, data.shape[0], [validity, pa.py_buffer(data)],
                                 null_count=nulls)


def bool_array(values: object) -> pa.Array:
    """A boolean Arrow array over a 1-D array of truth values."""
    data = np.asarray(values, dtype=bool).reshape(-1)
    return pa.Array.from_buffers(pa.bool_(), data.shape[0],
                                 [None, pa.py_buffer(np.packbits(data, bitorder="little"))])


def string_array(values: list[str]) -> pa.Array:
    """A UTF-8 string Arrow array."""
    encoded = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype="<i4")
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def vectors(M: object, width: int) -> pa.FixedSizeListArray:
    """Rows of ``M`` (shape (n, width)) as a fixed-size list<double>[width] array."""
    flat = np.ascontiguousarray(M, dtype=np.float64).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(numeric_array(flat), width)


def to_numpy(array: pa.Array | pa.ChunkedArray, dtype: object = np.float64) -> np.ndarray:
    """The values of a numeric array without nulls, as a numpy array of ``dtype`` (a copy).

    A fixed-size list array gives its flattened values (reshape them by the list size).
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if isinstance(array, pa.FixedSizeListArray):
        array = array.flatten()
    if array.null_count:
        raise ValueError(f"{array.null_count} null values where numbers were expected")
    if array.type not in _NUMPY:  # float32, int32, ...: through float64
        try:
            array = array.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"expected a numeric array, got {array.type}") from exc
    np_type = _NUMPY[array.type]
    buf = array.buffers()[1]
    n = len(array)
    if buf is None or n == 0:
        return np.zeros(0, dtype=dtype)
    out = np.frombuffer(buf, dtype=np_type, count=n, offset=array.offset * np_type.itemsize)
    return out.astype(dtype, copy=True)


def write_table(table: pa.Table, path: str) -> None:
    """Write ``table`` to ``path`` as an uncompressed Arrow IPC file (Feather v2: what
    ``feather.write_feather(table, path, compression="uncompressed")`` writes, without its
    pandas check), atomically (a temporary file, then a rename)."""
    import os

    tmp = f"{path}.tmp-{os.getpid()}"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=_FEATHER_CHUNK)
    os.replace(tmp, path)


#: Rows per record batch, as ``feather.write_feather`` cuts them.
_FEATHER_CHUNK = 64 * 1024

__all__ = ["bool_array", "numeric_array", "string_array", "to_numpy", "vectors", "write_table"]
