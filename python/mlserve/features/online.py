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

LMDB is reached through mlserve's own binding (``mlserve._core.LmdbEnv``, the vendored liblmdb
0.9.36 that py-lmdb bundles too, so either reads the other's stores). A batched read is one
native call: the keys encoded, every get done in one read transaction with the GIL released, and
the values, statuses and event times written straight into the output arrays. A batch of writes
is one native call too (the newer-wins put loop).

Thread-safety: an :class:`OnlineStore` may be shared by threads (every read has its own read
transaction; the LMDB environment is opened once per process and path and reference-counted,
since LMDB forbids opening one environment twice in a process). Not fork-safe: open stores after
forking.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlserve import _core
from mlserve.errors import InternalError, InvalidInput, Unavailable

from ._settings import map_size_bytes, test_batch_pause
from .definitions import FeatureView
from .keys import int64_key_values
from .records import RecordLayout

_META_DB = "__meta__"
_MAX_DBS = 4096
_MAX_READERS = 1024
_INT64_MAX = (1 << 63) - 1


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


_MISSING = int(RowStatus.MISSING)


@dataclass(frozen=True)
class _ReadPlan:
    """What a read of one view version needs, computed once."""

    db: str
    n_columns: int
    int64_keys: bool
    """Whether the entity has one int64 join key (reads may pass its values as an array)."""
    what: str
    """How errors name the view's database."""


def db_name(view: FeatureView) -> str:
    if view.version is None:
        raise InvalidInput(f"feature view {view.name!r} is not applied: it has no version")
    return f"view/{view.name}/v{view.version}"


class _Env:
    """A process-wide, reference-counted LMDB environment (LMDB forbids opening one
    environment twice in a process) and the handles of its named databases."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _open: ClassVar[dict[tuple[int, str], _Env]] = {}

    def __init__(self, path: str, map_size: int, read_only: bool) -> None:
        self.env = _core.LmdbEnv(path, map_size, max_dbs=_MAX_DBS, max_readers=_MAX_READERS,
                                 readahead=False, read_only=read_only)
        self.read_only = read_only
        self.refs = 0
        # name -> handle; handles live as long as the environment (the core caches them too:
        # this dict only saves the native call on the read path).
        self.dbs: dict[str, int] = {}

    @classmethod
    def acquire(cls, path: Path, map_size: int, read_only: bool = False) -> _Env:
        if not read_only:
            path.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), str(path.resolve()))
        with cls._lock:
            env = cls._open.get(key)
            if env is None:
                env = cls._open[key] = _Env(key[1], map_size, read_only)
            elif env.read_only and not read_only:
                raise InvalidInput(f"the online store at {path} is open read-only in this "
                                   "process; close its readers before writing")
            env.refs += 1
            return env

    def release(self, path: Path) -> None:
        key = (os.getpid(), str(path.resolve()))
        with self._lock:
            self.refs -= 1
            if self.refs == 0:
                self._open.pop(key, None)
                self.env.close()

    def db(self, name: str, *, create: bool) -> int | None:
        """The handle of database ``name``; None when it does not exist and not ``create``.
        Opening one that exists never waits for a writer (a read transaction); creating one
        takes a write transaction, so never call it with ``create`` inside a write
        transaction of this thread."""
        dbi = self.dbs.get(name)
        if dbi is None:
            dbi = self.env.open_db(name, create=False)
            if dbi is None and create:
                dbi = self.env.open_db(name, create=True)
            if dbi is not None:
                self.dbs[name] = dbi
        return dbi


class OnlineStore:
    """The LMDB online store at ``path`` (a directory); ``lock_path`` is the writer lock.

    ``read_only``: an existing store on a read-only mount: reads only, :meth:`writer` refuses.
    LMDB keeps no reader table on a read-only file system, so nothing may write the files
    meanwhile (a snapshot: materialize elsewhere and mount the result)."""

    def __init__(self, path: str | os.PathLike[str], *, lock_path: str | os.PathLike[str],
                 map_size: int | None = None, read_only: bool = False) -> None:
        self.path = Path(path)
        self.lock_path = Path(lock_path)
        self.read_only = read_only
        if read_only and not (self.path / "data.mdb").is_file():
            raise InvalidInput(f"the feature store is read-only and has no online store at "
                               f"{self.path}: nothing was materialized before it was made "
                               "read-only; run `mlserve features materialize` where it is "
                               "writable")
        self._env = _Env.acquire(self.path, map_size or map_size_bytes(), read_only)
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

    def _meta(self) -> int:
        db = self._env.db(_META_DB, create=True)
        assert db is not None
        return db

    def _check_layout(self, view: FeatureView, txn: Any, meta: int, *, write: bool
                      ) -> RecordLayout:
        layout = RecordLayout(len(view.columns))
        expected = {**layout.describe(), "columns": list(view.column_names),
                    "join_keys": list(view.resolved_entity.join_keys),
                    "key_dtypes": list(view.resolved_entity.key_dtypes)}
        key = f"layout/{db_name(view)}".encode()
        raw = txn.get(meta, key)
        if raw is None:
            if write:
                txn.put(meta, key, json.dumps(expected, sort_keys=True).encode())
            return layout
        stored = json.loads(raw)
        if stored != expected:
            raise InternalError(f"online database of {view.ref!r} was written with layout "
                                f"{stored}, the definition says {expected}; the definitions "
                                "registry and the online store do not belong together")
        return layout

    # ------------------------------------------------------------------ reads

    def read(self, view: FeatureView, keys: Sequence[bytes] | np.ndarray, *,
             now_ns: int | None = None) -> OnlineRead:
        """Values of ``view`` for ``keys``, row-aligned: encoded keys
        (:func:`.keys.encode_keys`) or, for an entity with one int64 join key, an int64 array of
        its values (:func:`.keys.int64_key_values`). With ``now_ns`` and a TTL, a value with
        ``event_ts < now_ns - ttl`` is EXPIRED (so ``now - ttl`` itself is still PRESENT)."""
        values, status, event_ts = self.read_arrays(view, keys, now_ns=now_ns)
        return OnlineRead(values, status, event_ts, view.column_names)

    def read_arrays(self, view: FeatureView, keys: Sequence[bytes] | np.ndarray, *,
                    now_ns: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`read` as its three fresh arrays (values, status, event_ts): the lookup hot
        path, one native call (every get in one read transaction, the GIL released). ``keys``
        may also be a list of Python ints (entity values): the core converts it, and anything
        it cannot take goes through :func:`.keys.int64_key_values` (its checks and errors)."""
        plan = self._plans.get((view.name, view.version, len(view.columns)))
        if plan is None:
            plan = self._plan(view)
        values_given = isinstance(keys, np.ndarray) or (
            type(keys) is list and len(keys) > 0 and type(keys[0]) is int)
        if values_given and not plan.int64_keys:
            raise InvalidInput(f"feature view {view.ref!r}: its entity's keys are not one int64 "
                               "join key; pass encoded keys (keys.encode_keys)")
        dbi = self._env.dbs.get(plan.db)
        if dbi is None:
            dbi = self._env.db(plan.db, create=False)
            if dbi is None:
                if type(keys) is list and values_given:
                    int64_key_values(view.resolved_entity, [keys])  # its checks still apply
                n = len(keys)
                return (np.full((n, plan.n_columns), np.nan, dtype=np.float32),
                        np.full(n, _MISSING, dtype=np.int8), np.zeros(n, dtype=np.int64))
        ttl_ns = None if now_ns is None or view.ttl_ns is None else min(view.ttl_ns, _INT64_MAX)
        try:
            return self._env.env.read_records(dbi, keys, plan.n_columns, now_ns, ttl_ns,
                                              plan.what)
        except TypeError:
            if not values_given:
                raise
        # a list of ints holding a bool, float, numpy int or out-of-range value
        ints = int64_key_values(view.resolved_entity, [keys])
        return self._env.env.read_records(dbi, ints, plan.n_columns, now_ns, ttl_ns, plan.what)

    def _plan(self, view: FeatureView) -> _ReadPlan:
        entity = view.resolved_entity
        plan = _ReadPlan(db_name(view), len(view.columns), entity.key_dtypes == ("int64",),
                         f"online database of {view.ref!r}")
        self._plans[(view.name, view.version, len(view.columns))] = plan
        return plan

    def scan(self, view: FeatureView) -> list[tuple[bytes, np.ndarray]]:
        """Every (key, record) of ``view`` in key order, from one snapshot (tests, listings)."""
        layout = RecordLayout(len(view.columns))
        dbi = self._env.db(db_name(view), create=False)
        if dbi is None:
            return []
        with self._env.env.begin() as txn:
            return [(k, layout.decode(v)[0]) for k, v in txn.items(dbi)]

    def has_data(self, view: FeatureView) -> bool:
        """Whether anything of ``view`` was ever materialized into this online store."""
        return self._env.db(db_name(view), create=False) is not None

    def state(self, view: FeatureView) -> dict[str, Any] | None:
        """The materialization state of ``view`` (written by the last incremental run)."""
        meta = self._env.db(_META_DB, create=False)
        if meta is None:
            return None
        with self._env.env.begin() as txn:
            raw = txn.get(meta, f"state/{db_name(view)}".encode())
        return None if raw is None else dict(json.loads(raw))

    # ------------------------------------------------------------------ writes

    @contextmanager
    def writer(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Holds the writer lock (``flock``), waiting at most ``timeout_s`` for it."""
        if self.read_only:
            raise InvalidInput(f"the online store at {self.path} is read-only: materialize "
                               "where it is writable")
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
        # Handles first: opening one inside this thread's write transaction would deadlock.
        db = self._env.db(db_name(view), create=True)
        meta = self._meta()
        assert db is not None
        width = records.dtype.itemsize
        blob = np.ascontiguousarray(records).view(np.uint8).reshape(-1)
        written = kept = 0
        starts = range(0, len(keys), batch_keys) if len(keys) else range(0, 1)
        for lo in starts:
            hi = min(lo + batch_keys, len(keys))
            try:
                with self._env.env.begin(write=True) as txn:
                    layout = self._check_layout(view, txn, meta, write=True)
                    if layout.record_bytes != width:
                        raise InvalidInput(f"records of {width} bytes for {view.ref!r}, whose "
                                           f"layout has {layout.record_bytes}")
                    if hi > lo:
                        w, k = txn.put_newer_records(db, keys[lo:hi],
                                                     blob[lo * width:hi * width], width)
                        written += w
                        kept += k
                    if state is not None and hi >= len(keys):
                        txn.put(meta, f"state/{db_name(view)}".encode(),
                                json.dumps(state, sort_keys=True).encode())
                    test_batch_pause()
            except Unavailable as exc:
                if "MDB_MAP_FULL" not in str(exc):
                    raise
                raise Unavailable(f"the online store at {self.path} is full; set "
                                  "MLSERVE_FEATURE_STORE_MAP_SIZE to more bytes") from None
        return written, kept
