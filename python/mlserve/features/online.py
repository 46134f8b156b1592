"""The online store: the latest value of every entity of every feature-view version, in LMDB.

One LMDB environment (``<store root>/online/``) with a named database per view version
(``view/NAME/vVERSION``; key: :mod:`.keys`, value: a fixed-width :mod:`.records` record) and a
``__meta__`` database holding, per view version, the record layout it was written with and the
materialization state (watermark). LMDB readers work on MVCC snapshots: a read is never blocked
by the writer and never sees half a write. Writes take an exclusive ``flock`` on
``<store root>/online.writer.lock`` (one writer across processes and threads; released by the
kernel when a writer dies) and commit a batch of keys per LMDB transaction; a writer killed
mid-batch leaves the last committed transaction, which is consistent by construction.

A write never replaces a record with an older one: a key keeps its stored record when that
one's ``(event_ts, created_ts)`` is greater than the new record's (ties are replaced, so the
later ingested row wins, as offline).

Thread-safety: an :class:`OnlineStore` may be shared by threads (every read opens its own read
transaction; the LMDB environment is opened once per process and path and reference-counted,
since py-lmdb refuses to open one twice). Not fork-safe: open stores after forking.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, cast

import lmdb
import numpy as np

from mlserve.errors import InternalError, InvalidInput, Unavailable

from ._settings import map_size_bytes, test_batch_pause
from .definitions import FeatureView
from .records import RecordLayout

_META_DB = b"__meta__"
_MAX_DBS = 4096
_TS_PAIR = struct.Struct("<qq")
#: "Exists, but no handle yet": see OnlineStore._db.
_NOT_YET: Any = object()


class RowStatus(IntEnum):
    """Per-row outcome of an online read."""

    PRESENT = 0
    """The entity has a value within the view's TTL."""
    MISSING = 1
    """The entity has no value in the online store (values are NaN)."""
    EXPIRED = 2
    """The stored value is older than the TTL at ``now`` (values are NaN, event_ts is kept)."""


@dataclass(frozen=True)
class OnlineRead:
    """What a batched read of one view returns, row-aligned with the keys asked for."""

    values: np.ndarray
    """float32 [n, f] in the view's column order; NaN for null, missing and expired."""
    status: np.ndarray
    """int8 [n] of :class:`RowStatus`."""
    event_ts: np.ndarray
    """int64 [n]: UTC ns of the stored event (0 when missing)."""
    columns: tuple[str, ...]


_PRESENT, _MISSING, _EXPIRED = (int(s) for s in RowStatus)


@dataclass(frozen=True)
class _ReadPlan:
    """What a read of one view version needs, computed once."""

    db: bytes
    dtype: np.dtype[Any]
    n_columns: int
    columns: tuple[str, ...]


def _fetch(get: Callable[[bytes], memoryview | None], keys: Sequence[bytes]
           ) -> tuple[Sequence[int], bytes]:
    """(rows found, their values joined). The values are views into the memory map, valid
    until the read transaction ends: the join (one copy) happens before it does."""
    bufs = [get(key) for key in keys]
    if None not in bufs:
        return range(len(bufs)), b"".join(cast(list[memoryview], bufs))
    return ([i for i, b in enumerate(bufs) if b is not None],
            b"".join([b for b in bufs if b is not None]))


def db_name(view: FeatureView) -> bytes:
    if view.version is None:
        raise InvalidInput(f"feature view {view.name!r} is not applied: it has no version")
    return f"view/{view.name}/v{view.version}".encode()


class _Env:
    """A process-wide, reference-counted LMDB environment (py-lmdb opens a path once)."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _open: ClassVar[dict[tuple[int, str], _Env]] = {}

    def __init__(self, path: str, map_size: int) -> None:
        self.env = lmdb.open(path, map_size=map_size, max_dbs=_MAX_DBS, subdir=True,
                             readahead=False, max_readers=1024)
        self.refs = 0
        self.dbs: dict[bytes, Any] = {}
        # mdb_dbi_open calls must not overlap within a process.
        self.dbi_lock = threading.Lock()

    @classmethod
    def acquire(cls, path: Path, map_size: int) -> _Env:
        path.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), str(path.resolve()))
        with cls._lock:
            env = cls._open.get(key)
            if env is None:
                env = cls._open[key] = _Env(key[1], map_size)
            env.refs += 1
            return env

    def release(self, path: Path) -> None:
        key = (os.getpid(), str(path.resolve()))
        with self._lock:
            self.refs -= 1
            if self.refs == 0:
                self._open.pop(key, None)
                self.env.close()


class OnlineStore:
    """The LMDB online store at ``path`` (a directory); ``lock_path`` is the writer lock."""

    def __init__(self, path: str | os.PathLike[str], *, lock_path: str | os.PathLike[str],
                 map_size: int | None = None) -> None:
        self.path = Path(path)
        self.lock_path = Path(lock_path)
        self._env = _Env.acquire(self.path, map_size or map_size_bytes())
        self._closed = False
        self._plans: dict[tuple[str, int | None, int], _ReadPlan] = {}

    def close(self) -> None:
        """Releases this store's hold on the environment (closed with its last holder)."""
        if not self._closed:
            self._closed = True
            self._env.release(self.path)

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OnlineStore({str(self.path)!r})"

    # ------------------------------------------------------------------ databases

    def _db(self, name: bytes, *, create: bool) -> Any | None:
        """A handle that outlives transactions. py-lmdb keeps a handle only when the
        transaction that opened it is a *write* transaction, which waits for a writer's batch:
        writers (``create``) open one that way; readers do only while no writer holds the
        writer lock (checked with a shared ``flock``), and otherwise get ``_NOT_YET`` and open
        the database inside their read transaction (:meth:`_get_all`). ``None``: no such
        database."""
        env = self._env
        db = env.dbs.get(name)
        if db is not None:
            return db
        with env.dbi_lock:
            db = env.dbs.get(name)
            if db is not None:
                return db
            if create:
                with env.env.begin(write=True) as txn:
                    db = env.env.open_db(name, txn=txn, create=True)
            else:
                fd = self._shared_lock()
                if fd is None:
                    return _NOT_YET
                try:
                    txn = env.env.begin(write=True)
                    try:
                        db = env.env.open_db(name, txn=txn, create=False)
                    except lmdb.NotFoundError:
                        txn.abort()
                        return None
                    txn.commit()
                finally:
                    os.close(fd)
            env.dbs[name] = db
            return db

    def _shared_lock(self) -> int | None:
        """An fd holding a shared flock on the writer lock, or None while a writer holds it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    @contextmanager
    def _snapshot(self, name: bytes) -> Iterator[tuple[Any, Any] | None]:
        """A read transaction (``buffers=True``) and the handle of database ``name`` in it, or
        None when there is no such database. Never waits for a writer."""
        db = self._db(name, create=False)
        if db is None:
            yield None
        elif db is not _NOT_YET:
            with self._env.env.begin(db=db, buffers=True) as txn:
                yield txn, db
        else:
            # A writer is active and this process has no lasting handle yet: open the database
            # inside the read transaction. The handle dies with it (abort), and py-lmdb's handle
            # cache must see no other open meanwhile, hence the lock.
            with self._env.dbi_lock:
                txn = self._env.env.begin(buffers=True)
                try:
                    try:
                        db = self._env.env.open_db(name, txn=txn, create=False)
                    except lmdb.NotFoundError:
                        db = None
                    yield None if db is None else (txn, db)
                finally:
                    txn.abort()

    def _get_all(self, name: bytes, keys: Sequence[bytes]
                 ) -> tuple[Sequence[int], bytes] | None:
        """(rows found, their values joined) for ``keys`` in database ``name``, from one
        snapshot; None when the database does not exist."""
        db = self._env.dbs.get(name)
        if db is not None:  # the hot path: a lasting handle, no context manager
            with self._env.env.begin(db=db, buffers=True) as txn:
                return _fetch(txn.get, keys)
        with self._snapshot(name) as snap:
            if snap is None:
                return None
            txn, db = snap
            return _fetch(lambda key: txn.get(key, db=db), keys)

    def _meta(self) -> Any:
        db = self._db(_META_DB, create=True)
        assert db is not None
        return db

    def _check_layout(self, view: FeatureView, txn: Any, *, write: bool) -> RecordLayout:
        layout = RecordLayout(len(view.columns))
        expected = {**layout.describe(), "columns": list(view.column_names),
                    "join_keys": list(view.resolved_entity.join_keys),
                    "key_dtypes": list(view.resolved_entity.key_dtypes)}
        key = b"layout/" + db_name(view)
        raw = txn.get(key, db=self._meta())
        if raw is None:
            if write:
                txn.put(key, json.dumps(expected, sort_keys=True).encode(), db=self._meta())
            return layout
        stored = json.loads(bytes(raw))
        if stored != expected:
            raise InternalError(f"online database of {view.ref!r} was written with layout "
                                f"{stored}, the definition says {expected}; the definitions "
                                "registry and the online store do not belong together")
        return layout

    # ------------------------------------------------------------------ reads

    def read(self, view: FeatureView, keys: Sequence[bytes], *, now_ns: int | None = None
             ) -> OnlineRead:
        """Values of ``view`` for encoded ``keys`` (:func:`.keys.encode_keys`), row-aligned.
        With ``now_ns`` and a TTL, a value with ``event_ts < now_ns - ttl`` is EXPIRED."""
        n = len(keys)
        plan = self._plans.get((view.name, view.version, len(view.columns)))
        if plan is None:
            plan = self._plan(view)
        got = self._get_all(plan.db, keys) if n else None
        if got is None or not got[0]:
            return OnlineRead(np.full((n, plan.n_columns), np.nan, dtype=np.float32),
                              np.full(n, _MISSING, dtype=np.int8), np.zeros(n, dtype=np.int64),
                              plan.columns)
        rows, joined = got
        if len(joined) != len(rows) * plan.dtype.itemsize:
            raise InternalError(f"online database of {view.ref!r} holds records of the wrong "
                                f"size; expected {plan.dtype.itemsize} bytes each")
        records = np.frombuffer(joined, dtype=plan.dtype)
        if len(rows) == n:  # every key found: no scatter
            values = records["values"].copy()
            event_ts = records["event_ts"].copy()
            status = np.zeros(n, dtype=np.int8)
            idx: Any = slice(None)
        else:
            values = np.full((n, plan.n_columns), np.nan, dtype=np.float32)
            event_ts = np.zeros(n, dtype=np.int64)
            status = np.full(n, _MISSING, dtype=np.int8)
            idx = np.asarray(rows, dtype=np.intp)
            values[idx] = records["values"]
            event_ts[idx] = records["event_ts"]
            status[idx] = _PRESENT
        ttl_ns = view.ttl_ns
        if now_ns is not None and ttl_ns is not None:
            stale = records["event_ts"] < now_ns - ttl_ns
            if stale.any():
                expired = np.arange(n)[idx][stale]
                status[expired] = _EXPIRED
                values[expired] = np.nan
        return OnlineRead(values, status, event_ts, plan.columns)

    def _plan(self, view: FeatureView) -> _ReadPlan:
        layout = RecordLayout(len(view.columns))
        plan = _ReadPlan(db_name(view), layout.dtype, len(view.columns), view.column_names)
        self._plans[(view.name, view.version, len(view.columns))] = plan
        return plan

    def scan(self, view: FeatureView) -> list[tuple[bytes, np.ndarray]]:
        """Every (key, record) of ``view`` in key order, from one snapshot (tests, listings)."""
        layout = RecordLayout(len(view.columns))
        with self._snapshot(db_name(view)) as snap:
            if snap is None:
                return []
            txn, db = snap
            return [(bytes(k), layout.decode(bytes(v))[0]) for k, v in txn.cursor(db=db)]

    def state(self, view: FeatureView) -> dict[str, Any] | None:
        """The materialization state of ``view`` (written by the last incremental run)."""
        with self._snapshot(_META_DB) as snap:
            raw = None if snap is None else snap[0].get(b"state/" + db_name(view), db=snap[1])
            return None if raw is None else dict(json.loads(bytes(raw)))

    # ------------------------------------------------------------------ writes

    @contextmanager
    def writer(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Holds the writer lock (``flock``), waiting at most ``timeout_s`` for it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        holder = self.lock_path.read_text().strip() or "unknown"
                        raise Unavailable(
                            f"another writer holds {self.lock_path} (pid {holder}) for more "
                            f"than {timeout_s:g} s; wait for its materialization to end"
                        ) from None
                    time.sleep(0.01)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            # Reader slots of killed processes pin old pages (the file would only grow); free them.
            self._env.env.reader_check()
            yield
        finally:
            os.close(fd)  # releases the flock

    def write(self, view: FeatureView, keys: Sequence[bytes], records: np.ndarray, *,
              batch_keys: int = 65_536, state: dict[str, Any] | None = None) -> tuple[int, int]:
        """Writes ``records`` (structured, :class:`RecordLayout` of the view) under ``keys``,
        ``batch_keys`` keys per LMDB transaction, never replacing a newer record; ``state``
        (if given) is committed with the last batch. Call it while holding :meth:`writer`.
        Returns (keys written, keys kept because the stored record was newer)."""
        if len(keys) != len(records):
            raise InvalidInput(f"{len(keys)} keys for {len(records)} records")
        if batch_keys < 1:
            raise InvalidInput(f"batch_keys must be >= 1, got {batch_keys}")
        db = self._db(db_name(view), create=True)
        meta = self._meta()
        blob = records.tobytes()
        width = records.dtype.itemsize
        ts = records[["event_ts", "created_ts"]].tolist() if len(records) else []
        written = kept = 0
        starts = range(0, len(keys), batch_keys) if len(keys) else range(0, 1)
        for lo in starts:
            hi = min(lo + batch_keys, len(keys))
            try:
                with self._env.env.begin(write=True) as txn:
                    layout = self._check_layout(view, txn, write=True)
                    if layout.record_bytes != width:
                        raise InvalidInput(f"records of {width} bytes for {view.ref!r}, whose "
                                           f"layout has {layout.record_bytes}")
                    for i in range(lo, hi):
                        old = txn.get(keys[i], db=db)
                        if old is not None and _TS_PAIR.unpack_from(old) > tuple(ts[i]):
                            kept += 1
                            continue
                        txn.put(keys[i], blob[i * width:(i + 1) * width], db=db)
                        written += 1
                    if state is not None and hi >= len(keys):
                        txn.put(b"state/" + db_name(view),
                                json.dumps(state, sort_keys=True).encode(), db=meta)
                    test_batch_pause()
            except lmdb.MapFullError:
                raise Unavailable(f"the online store at {self.path} is full; set "
                                  "MLSERVE_FEATURE_STORE_MAP_SIZE to more bytes") from None
        return written, kept
