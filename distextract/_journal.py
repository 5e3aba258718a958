"""A query journal that never pays for a row twice, and the run directory around it.

Every answered row is appended to an Arrow IPC *stream* (one ``pa.OSFile`` per writer and
attempt, flushed per batch) before the answer is returned, so a ``kill -9`` loses at most the
batch being written. On construction :class:`JournaledOracle` reads every segment of the journal
into a lookup keyed by the exact bytes of the input row; rows found there are served without
asking the inner oracle. Because the extractor is deterministic given its seed, a resumed run
asks the same rows and pays only for the ones the crashed attempt never received.

Segment files are named ``<writer_id>.<attempt>.arrows``. A new attempt never appends to an old
file (a stream appended after a torn tail is unreadable) and nothing is ever deleted: a torn
tail is skipped when reading, with a warning, and stays on disk.

A segment is *live* while its writer holds it open (an exclusive advisory ``flock`` on the file,
taken when it is created) and *sealed* once the writer closed it (:meth:`JournaledOracle.seal`,
:meth:`~JournaledOracle.close`: the stream's end marker written) or died (the kernel drops the
lock). A reader built with ``sealed_only=True`` -- every Ray worker of a distributed run --
skips live segments: it never parses a file another process is still appending to (the
driver's segment held ~115 MB and ended in a half-written batch when each of 8 workers read it
at start). The driver seals its segment before the distributed coordinator starts, so the rows
it paid until then (the output probe's, a resumed run's) reach the workers; what it pays later
goes to its next segment.

A run directory holds ``run.json`` (what the run is: oracle description without secrets,
input_dim, seed, config) and ``journal/``. :func:`prepare_run_dir` writes it for a new run and,
on resume, refuses a directory made for another oracle, dimension, seed or config.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no lock, every segment reads as sealed
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pyarrow as pa

from ._arrow import to_numpy, vectors
from ._errors import ConfigError, JournalError
from ._oracle import Oracle

logger = logging.getLogger(__name__)

JOURNAL_FORMAT = "distextract.journal"
JOURNAL_VERSION = 1
RUN_FORMAT = "distextract.run"
RUN_FILE = "run.json"
JOURNAL_DIR = "journal"
SEGMENT_SUFFIX = ".arrows"
#: Keys of an oracle description that may differ between attempts of one run: the learned
#: output dimension, throughput settings, and the *name* of the key's variable.
VOLATILE_ORACLE_KEYS = frozenset({"output_dim", "settings", "api_key_env"})
_WRITER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEGMENT = re.compile(r"^(?P<writer>[A-Za-z0-9_-]+)\.(?P<attempt>\d+)" + re.escape(SEGMENT_SUFFIX)
                      + "$")


def journal_schema(input_dim: int, output_dim: int, writer_id: str = "", attempt: int = 0
                   ) -> pa.Schema:
    """Schema of a segment: ``x`` fixed-size list<double>[d], ``y`` fixed-size list<double>[m]."""
    meta = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "input_dim": input_dim,
            "output_dim": output_dim, "writer_id": writer_id, "attempt": attempt}
    return pa.schema([("x", pa.list_(pa.float64(), input_dim)),
                      ("y", pa.list_(pa.float64(), output_dim))],
                     metadata={JOURNAL_FORMAT: json.dumps(meta)})


def _segments(journal_dir: str) -> list[tuple[str, str, int]]:
    """(path, writer_id, attempt) of every segment, in a stable order."""
    out = []
    for name in sorted(os.listdir(journal_dir)):
        match = _SEGMENT.match(name)
        if match:
            out.append((os.path.join(journal_dir, name), match["writer"], int(match["attempt"])))
    return out


def segment_is_live(path: str) -> bool:
    """Whether a writer still holds ``path`` open (its lock; see the module docstring).

    False for a closed segment, for one whose writer died, and where ``fcntl`` is missing."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock: no way to tell, read it
        return False
    finally:
        os.close(fd)  # also drops the shared lock taken above
    return False


#: An Arrow IPC message starts with this continuation marker, then its metadata length
#: (int32, little-endian).
_CONTINUATION = b"\xff\xff\xff\xff"


def _torn_header(path: str, size: int) -> bool:
    """Whether the segment ends inside its first message (the schema): a writer killed while
    opening the segment (seen under load: SIGKILL between the length prefix and the schema
    it announces). Such a file holds no batch. Only the file's own announced length decides:
    a file of other bytes (not starting with the continuation marker) is not torn but
    corrupt."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8:  # (the caller skipped empty files)
        return _CONTINUATION.startswith(head[:4])
    if head[:4] != _CONTINUATION:
        return False
    length = int.from_bytes(head[4:], "little", signed=True)
    return length > 0 and size < 8 + length


def read_segment(path: str, input_dim: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Read the complete batches of one segment.

    Parameters
    ----------
    path : str
    input_dim : int
        d expected by the run.

    Returns
    -------
    batches : list of (X of shape (n, d), Y of shape (n, m))
    info : dict
        ``output_dim``, ``batches``, ``rows``, ``torn`` (True when a torn tail was dropped).

    Raises
    ------
    JournalError
        When the stream header is unreadable or the segment holds rows of another dimension.
    """
    info = {"output_dim": None, "batches": 0, "rows": 0, "torn": False}
    size = os.path.getsize(path)
    if size == 0:
        logger.warning("journal segment %s is empty (its writer stopped before writing); "
                       "skipped", path)
        return [], info
    if _torn_header(path, size):
        info["torn"] = True
        logger.warning("journal segment %s ends inside its stream header (its writer was "
                       "killed while opening it: no batch was written); skipped, the file is "
                       "left as it is", path)
        return [], info
    source = pa.OSFile(path, "r")
    try:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise JournalError(
                f"journal segment {path} is corrupt: its stream header is unreadable ({exc}); "
                f"move it out of the journal directory to resume without it (nothing was "
                f"deleted)") from exc
        raw = (reader.schema.metadata or {}).get(JOURNAL_FORMAT.encode())
        try:
            meta = json.loads(raw) if raw is not None else None
            d, m = int(meta["input_dim"]), int(meta["output_dim"])
        except (TypeError, ValueError, KeyError):
            raise JournalError(f"{path} is an Arrow stream but not a distextract journal segment "
                               f"(no {JOURNAL_FORMAT!r} schema metadata); move it out of the "
                               f"journal directory") from None
        if d != input_dim:
            raise JournalError(
                f"journal segment {path} holds rows of input_dim={d}, but this run has "
                f"input_dim={input_dim}; the run directory belongs to another oracle: use a new "
                f"run directory")
        info["output_dim"] = m
        batches = []
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
                info["torn"] = True
                logger.warning(
                    "journal segment %s: dropped a torn last batch after %d complete batches "
                    "(%d rows) (%s); the file is left as it is", path, info["batches"],
                    info["rows"], exc)
                break
            X = to_numpy(batch.column("x")).reshape(-1, d)
            Y = to_numpy(batch.column("y")).reshape(-1, m)
            batches.append((X, Y))
            info["batches"] += 1
            info["rows"] += X.shape[0]
        return batches, info
    finally:
        source.close()


class JournaledOracle(Oracle):
    """Serve rows from the journal when possible; journal every new answer before returning it.

    Parameters
    ----------
    inner : Oracle
        The oracle that is paid (e.g. an :class:`~distextract.HTTPOracle`). When it offers
        ``query_stream(X)`` (yielding ``(rows, Y)`` as batches arrive) each answered batch is
        journaled as soon as it arrives, even if a later batch of the same query fails.
    journal_dir : path
        Directory of segment files (created if missing).
    writer_id : str
        Name of this writer (letters, digits, ``_``, ``-``); each attempt writes a new
        ``<writer_id>.<attempt>.arrows`` file. Concurrent writers need distinct ids.
    sealed_only : bool
        Load only sealed segments (module docstring): skip those another writer is still
        appending to. For a writer that starts while others run (a Ray worker).

    Attributes
    ----------
    rows_from_journal : int
        Rows answered from the journal (loaded or written earlier in this attempt).
    rows_sent : int
        Rows passed to ``inner``.
    rows_journaled : int
        Rows appended by this attempt.
    rows_loaded : int
        Distinct rows found in the journal at construction.
    torn_segments : list of str
        Segments whose torn tail was dropped.
    live_segments : list of str
        Segments skipped at construction because their writer still held them
        (``sealed_only``).
    """

    def __init__(self, inner: Oracle, journal_dir: str | os.PathLike, writer_id: str = "main",
                 *, sealed_only: bool = False) -> None:
        if not isinstance(inner, Oracle):
            raise ConfigError(f"inner must be an Oracle, got {type(inner).__name__}")
        if not isinstance(writer_id, str) or not _WRITER_ID.match(writer_id):
            raise ConfigError(f"writer_id must be 1-64 letters, digits, '_' or '-', got "
                              f"{writer_id!r}")
        self.inner = inner
        self.input_dim = inner.input_dim
        self.output_dim = inner.output_dim
        self.journal_dir = os.fspath(journal_dir)
        self.writer_id = writer_id
        os.makedirs(self.journal_dir, exist_ok=True)
        self._lock = threading.RLock()
        self._lookup: dict[bytes, np.ndarray] = {}
        self._order: list[bytes] = []
        self._sink: Any = None
        self._writer: Any = None
        self._lock_fd: int | None = None
        self.sealed_only = bool(sealed_only)
        self.segment_path: str | None = None
        self.rows_from_journal = 0
        self.rows_sent = 0
        self.rows_journaled = 0
        self.rows_loaded = 0
        self.conflicts = 0
        self.torn_segments: list[str] = []
        self.live_segments: list[str] = []
        self._load()

    @property
    def max_batch(self) -> int | None:  # type: ignore[override]
        return self.inner.max_batch

    # ---------------------------------------------------------------- loading
    def _load(self) -> None:
        for path, _, _ in _segments(self.journal_dir):
            # (an empty file: a writer between creating the segment and locking it, or one
            # that died before its first batch: nothing to read either way)
            if self.sealed_only and (os.path.getsize(path) == 0 or segment_is_live(path)):
                self.live_segments.append(path)
                logger.debug("journal segment %s is still being written; not read", path)
                continue
            batches, info = read_segment(path, self.input_dim)
            if info["torn"]:
                self.torn_segments.append(path)
            if info["output_dim"] is not None and batches:
                self._check_output_dim(info["output_dim"], path)
            for X, Y in batches:
                self._remember(X, Y)
        self.rows_loaded = len(self._lookup)
        if self.rows_loaded:
            logger.info("journal %s: %d rows loaded", self.journal_dir, self.rows_loaded)

    def _check_output_dim(self, m: int, where: str) -> None:
        if self.output_dim is None:
            self.output_dim = m
        elif m != self.output_dim:
            raise JournalError(
                f"{where} has {m} outputs per row, but {self.output_dim} were seen before (the "
                f"journal and the oracle disagree); the run directory belongs to another "
                f"oracle: use a new run directory")

    def _remember(self, X: np.ndarray, Y: np.ndarray) -> None:
        for x, y in zip(X, Y):
            key = x.tobytes()
            old = self._lookup.get(key)
            if old is None:
                self._lookup[key] = y
                self._order.append(key)
            elif not np.array_equal(old, y):
                self.conflicts += 1
                logger.warning("the journal holds two different answers for one input row; "
                               "keeping the first (is the oracle deterministic?)")

    # ---------------------------------------------------------------- writing
    def _open_segment(self, m: int) -> None:
        attempt = 1 + max((a for _, w, a in _segments(self.journal_dir) if w == self.writer_id),
                          default=0)
        while True:
            path = os.path.join(self.journal_dir,
                                f"{self.writer_id}.{attempt:04d}{SEGMENT_SUFFIX}")
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                attempt += 1
        if fcntl is not None:  # live until closed (segment_is_live)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                logger.debug("journal segment %s: no lock (%s); readers see it sealed", path,
                             exc)
        self._lock_fd = fd
        self._sink = pa.OSFile(path, "w")
        self._schema = journal_schema(self.input_dim, m, self.writer_id, attempt)
        self._writer = pa.ipc.new_stream(self._sink, self._schema)
        self.segment_path = path
        logger.info("journal: writing %s", path)

    def _append(self, X: np.ndarray, Y: np.ndarray) -> None:
        with self._lock:
            self._check_output_dim(Y.shape[1], "the oracle's new answer")
            if self._writer is None:
                self._open_segment(Y.shape[1])
            batch = pa.record_batch([vectors(X, X.shape[1]), vectors(Y, Y.shape[1])],
                                    schema=self._schema)
            self._writer.write_batch(batch)
            self._sink.flush()
            self.rows_journaled += X.shape[0]
            self._remember(X, Y)

    # --------------------------------------------------------------- querying
    def _query(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        keys = [row.tobytes() for row in X]
        with self._lock:
            hits = [self._lookup.get(k) for k in keys]
        first: dict[bytes, int] = {}
        for i, (k, hit) in enumerate(zip(keys, hits)):
            if hit is None and k not in first:
                first[k] = i
        missing = np.fromiter(first.values(), dtype=np.intp, count=len(first))
        if missing.size:
            Xm = X[missing]
            stream = getattr(self.inner, "query_stream", None)
            if stream is not None:
                for rows, Yp in stream(Xm):
                    self._append(Xm[rows], np.asarray(Yp, dtype=np.float64))
            else:
                Ym = self.inner.query(Xm)
                self._append(Xm, np.asarray(Ym, dtype=np.float64))
        with self._lock:
            self.rows_sent += int(missing.size)
            self.rows_from_journal += X.shape[0] - int(missing.size)
            rows = [self._lookup[k] for k in keys]
        return np.vstack(rows)

    def verify(self, n_rows: int = 1, rtol: float = 1e-9) -> int:
        """Re-ask ``n_rows`` journaled rows of the inner oracle and compare the answers.

        Catches a run directory resumed against another network at the same URL. Costs
        ``n_rows`` paid rows (not journaled again).

        Returns
        -------
        int
            Rows compared (0 when the journal is empty).

        Raises
        ------
        JournalError
            When an answer differs from the journal by more than ``rtol`` relative to its scale.
        """
        with self._lock:
            keys = self._order[:n_rows]
            if not keys:
                return 0
            X = np.vstack([np.frombuffer(k, dtype=np.float64) for k in keys])
            Y_old = np.vstack([self._lookup[k] for k in keys])
        Y_new = np.asarray(self.inner.query(X), dtype=np.float64)
        if Y_new.shape != Y_old.shape:
            raise JournalError(
                f"the oracle answers {Y_new.shape[1] if Y_new.ndim == 2 else Y_new.shape} "
                f"outputs per row but the journal in {self.journal_dir} holds {Y_old.shape[1]}; "
                f"the run directory belongs to another oracle: use a new run directory")
        scale = max(1.0, float(np.max(np.abs(Y_old))))
        diff = float(np.max(np.abs(Y_new - Y_old)))
        if diff > rtol * scale:
            raise JournalError(
                f"the oracle now answers differently from the journal in {self.journal_dir} "
                f"(max abs difference {diff:.3g} on {len(keys)} journaled rows): the run "
                f"directory was made with another network, or the oracle changed; use a new run "
                f"directory (nothing was deleted)")
        return len(keys)

    def stats(self) -> dict:
        """Counters as a JSON-serialisable dict."""
        with self._lock:
            return {"rows_from_journal": self.rows_from_journal, "rows_sent": self.rows_sent,
                    "rows_journaled": self.rows_journaled, "rows_loaded": self.rows_loaded,
                    "torn_segments": list(self.torn_segments),
                    "live_segments": list(self.live_segments), "conflicts": self.conflicts,
                    "segment": self.segment_path}

    def seal(self) -> str | None:
        """Close the segment being written (its end marker written, its lock released), so
        that readers with ``sealed_only`` read it; the next answer opens a new segment.

        Returns
        -------
        str or None
            The segment sealed (None when none was open).
        """
        with self._lock:
            path = self.segment_path if self._writer is not None else None
            if self._writer is not None:
                self._writer.close()
                self._sink.close()
                self._writer = self._sink = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        return path

    def close(self) -> None:
        """Seal this attempt's segment (complete batches are already on disk), close ``inner``."""
        self.seal()
        self.inner.close()

    def describe(self) -> dict:
        return self.inner.describe()

    def __repr__(self) -> str:
        return (f"JournaledOracle({self.inner!r}, journal_dir={self.journal_dir!r}, "
                f"writer_id={self.writer_id!r})")


def load_journal(journal_dir: str | os.PathLike, input_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct journaled row, in journal order.

    Returns
    -------
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, m)
    """
    xs, ys = [], []
    for path, _, _ in _segments(os.fspath(journal_dir)):
        for X, Y in read_segment(path, input_dim)[0]:
            xs.append(X)
            ys.append(Y)
    if not xs:
        return np.zeros((0, input_dim)), np.zeros((0, 0))
    X, Y = np.vstack(xs), np.vstack(ys)
    _, idx = np.unique(X, axis=0, return_index=True)
    idx.sort()
    return X[idx], Y[idx]


# --------------------------------------------------------------- run directory
def _jsonable(value: Any, what: str = "run description") -> Any:
    """``value`` as it reads back from JSON: numpy scalars and arrays as Python values,
    tuples as lists, non-finite floats as None (the one conversion of the package, used for
    ``run.json`` and ``report.json``).

    Raises
    ------
    ConfigError
        When ``value`` holds something JSON cannot carry (``what`` names it).
    """
    try:
        return json.loads(json.dumps(_plain(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON-serialisable: {exc}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _identity(oracle: dict) -> dict:
    return {k: v for k, v in oracle.items() if k not in VOLATILE_ORACLE_KEYS}


def prepare_run_dir(path: str | os.PathLike, *, oracle: dict, input_dim: int,
                    seed: int | None, config: dict | None = None, resume: bool = False) -> dict:
    """Create a run directory, or check that it may be resumed.

    Parameters
    ----------
    path : path
        The run directory (``run.json`` and ``journal/`` inside).
    oracle : dict
        The oracle's ``describe()`` (no secrets). Keys in :data:`VOLATILE_ORACLE_KEYS`
        (learned dimensions, throughput settings) may change between attempts.
    input_dim : int
    seed : int or None
    config : dict, optional
        Settings that change what the extractor asks (they must match on resume).
    resume : bool
        Continue an existing run instead of starting one.

    Returns
    -------
    dict
        The run description (content of ``run.json``).

    Raises
    ------
    JournalError
        Starting in a directory that holds a run; resuming a directory without one, with an
        unreadable ``run.json``, or made for another oracle / input_dim / seed / config.
    """
    path = os.fspath(path)
    run_file = os.path.join(path, RUN_FILE)
    journal = os.path.join(path, JOURNAL_DIR)
    wanted = _jsonable({"oracle": oracle, "input_dim": int(input_dim), "seed": seed,
                        "config": config or {}})
    if os.path.exists(run_file):
        if not resume:
            raise JournalError(
                f"run directory {path} already holds a run ({RUN_FILE}); pass --resume "
                f"(resume=True) to continue it, or choose a new directory (nothing was deleted)")
        try:
            with open(run_file, encoding="utf-8") as fh:
                saved = json.load(fh)
            if saved.get("format") != RUN_FORMAT:
                raise ValueError(f"format is {saved.get('format')!r}, not {RUN_FORMAT!r}")
        except (OSError, ValueError, AttributeError) as exc:
            raise JournalError(f"cannot read {run_file}: {exc}; the run directory cannot be "
                               f"resumed (nothing was deleted)") from None
        checks = [("oracle", _identity(saved.get("oracle", {})), _identity(wanted["oracle"])),
                  ("input_dim", saved.get("input_dim"), wanted["input_dim"]),
                  ("seed", saved.get("seed"), wanted["seed"]),
                  ("config", saved.get("config", {}), wanted["config"])]
        for name, old, new in checks:
            if old != new:
                if isinstance(old, dict) and isinstance(new, dict):
                    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                    detail = "; ".join(f"{k}: run.json has {old.get(k)!r}, now {new.get(k)!r}"
                                       for k in diff)
                else:
                    detail = f"run.json has {old!r}, now {new!r}"
                raise JournalError(
                    f"run directory {path} was made for a different {name} ({detail}); resume "
                    f"with the original settings or use a new directory")
        os.makedirs(journal, exist_ok=True)
        return saved
    if resume:
        raise JournalError(f"nothing to resume in {path}: no {RUN_FILE}; run without --resume "
                           f"(resume=False) to start")
    if os.path.isdir(journal) and _segments(journal):
        raise JournalError(f"{journal} holds journal segments but {path} has no {RUN_FILE}; "
                           f"choose a new directory (nothing was deleted)")
    os.makedirs(journal, exist_ok=True)
    info = {"format": RUN_FORMAT, "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **wanted}
    tmp = f"{run_file}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, run_file)
    return info


def journal_dir(run_dir: str | os.PathLike) -> str:
    """The journal directory of a run directory."""
    return os.path.join(os.fspath(run_dir), JOURNAL_DIR)


__all__ = ["JournaledOracle", "journal_dir", "journal_schema", "load_journal",
           "prepare_run_dir", "read_segment", "segment_is_live"]

