"""The offline store: an append-only Parquet dataset per feature-view version.

Layout: ``<store root>/offline/<view>/v<version>/part-<number, 20 digits>-<random>.parquet``
(the number: the ingest time in ns, or one past the newest part's when the clock stepped back),
each file with the view version's schema (:func:`.ingest.offline_schema`). A part is written
under a temporary name, fsynced and renamed into place, so a reader sees whole parts or none
and a killed ingestion leaves at most a ``.tmp-*`` file that nothing reads. Parts are read in
name order, which is ingestion order; the position of a row in that order is its *ingestion
sequence*, the last tie-breaker of point-in-time joins and materialization (after event_ts and
created_ts). Safe for concurrent readers and appenders (threads or processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlserve.bundle import sha256_file
from mlserve.errors import InvalidInput

from .definitions import FeatureView
from .ingest import offline_schema


@dataclass(frozen=True)
class ViewData:
    """Rows of one view version, in ingestion order, as numpy arrays."""

    keys: tuple[np.ndarray, ...]
    """One array per join key: int64, or object (str)."""
    event_ts: np.ndarray
    """int64 UTC ns."""
    created_ts: np.ndarray
    """int64 UTC ns."""
    values: dict[str, np.ndarray]
    """Per column: float64 (``float``) or int64 (``int``, ``categorical``; 0 where null)."""
    nulls: dict[str, np.ndarray]
    """Per column: bool, True where null."""

    @property
    def n_rows(self) -> int:
        return int(self.event_ts.shape[0])

    def take(self, index: np.ndarray) -> ViewData:
        return ViewData(tuple(k[index] for k in self.keys), self.event_ts[index],
                        self.created_ts[index], {c: v[index] for c, v in self.values.items()},
                        {c: m[index] for c, m in self.nulls.items()})


class OfflineStore:
    """Parquet datasets under ``root`` (``<store root>/offline``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def view_dir(self, view: FeatureView) -> Path:
        if view.version is None:
            raise InvalidInput(f"feature view {view.name!r} is not applied: it has no version")
        return self.root / view.name / f"v{view.version}"

    def parts(self, view: FeatureView) -> list[Path]:
        """The view version's part files, in ingestion order."""
        d = self.view_dir(view)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if is_part(p.name))

    def part_names(self, view: FeatureView) -> list[str]:
        """The names of :meth:`parts`, in the same order (for a shared store: without
        downloading anything)."""
        return [p.name for p in self.parts(view)]

    def append(self, view: FeatureView, table: pa.Table) -> Path:
        """Writes ``table`` (already validated) as a new part; returns its path."""
        d = self.view_dir(view)
        d.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        tmp = d / f".tmp-{token}.parquet"
        try:
            write_part(view, table, tmp)
            with _view_lock(d):
                final = d / part_name(next_part_number(p.name for p in d.iterdir()), token)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def import_part(self, view: FeatureView, src: Path) -> bool:
        """Adds ``src``, a part of another store's same view version, under its own name (its
        number keeps its place in ingestion order): a copy of a store. False when this store
        has that part already (same bytes: a copy run again); InvalidInput when another file
        has its name."""
        d = self.view_dir(view)
        d.mkdir(parents=True, exist_ok=True)
        final = d / src.name
        if final.exists():
            if sha256_file(final) == sha256_file(src):
                return False
            raise InvalidInput(f"{final} exists with other bytes than {src}: not a copy of "
                               "the same store")
        tmp = d / f".tmp-{uuid.uuid4().hex[:12]}.parquet"
        try:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def load(self, view: FeatureView, columns: Sequence[str] | None = None, *,
             parts: Sequence[Path] | None = None) -> ViewData:
        """The rows of ``parts`` (default: all, in ingestion order) with the join keys,
        timestamps and ``columns`` (default: all of the view's)."""
        entity = view.resolved_entity
        wanted = list(view.column_names if columns is None else columns)
        for c in wanted:
            view.column(c)  # InvalidInput for an unknown column
        schema = offline_schema(view)
        names = [*entity.join_keys, "event_ts", "created_ts", *wanted]
        files = self.parts(view) if parts is None else list(parts)
        tables = [_read_part(p, names, schema) for p in files]
        table = pa.concat_tables(tables) if tables else schema.empty_table().select(names)
        keys = tuple(_numpy(table.column(k)) for k in entity.join_keys)
        values: dict[str, np.ndarray] = {}
        nulls: dict[str, np.ndarray] = {}
        for c in wanted:
            col = table.column(c)
            mask = _null_mask(col)
            if view.column(c).dtype == "float":
                arr = col.to_numpy().astype(np.float64, copy=False)
                mask = mask | np.isnan(arr)
            else:
                arr = col.fill_null(0).to_numpy().astype(np.int64, copy=False)
            values[c] = arr
            nulls[c] = mask
        return ViewData(keys, _ns(table.column("event_ts")), _ns(table.column("created_ts")),
                        values, nulls)


@contextlib.contextmanager
def _view_lock(d: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the view directory itself (across processes; no lock file,
    which another user of a shared store might not be allowed to open)."""
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read_part(path: Path, names: list[str], schema: pa.Schema) -> pa.Table:
    try:
        return pq.read_table(path, columns=names, schema=schema)
    except (pa.ArrowException, OSError) as exc:
        raise unreadable_part(path, exc) from None


def part_rows(path: Path) -> int:
    """Rows of a part file (from its footer)."""
    try:
        return int(pq.read_metadata(path).num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise unreadable_part(path, exc) from None


def unreadable_part(path: Path, exc: BaseException) -> InvalidInput:
    if isinstance(exc, FileNotFoundError):
        return InvalidInput(f"offline part {path} is gone (removed while it was read: deleted "
                            "from the store, or a cache copy freed by `mlserve features gc`); "
                            "run the command again")
    return InvalidInput(
        f"offline part {path} cannot be read with the view's schema ({exc}); it was not "
        "written by `mlserve features ingest`, or is damaged: remove it and ingest its data "
        "again")


def is_part(name: str) -> bool:
    """Whether a file name is an offline part's (not a temp file, not something else)."""
    return name.startswith("part-") and name.endswith(".parquet")


def part_name(number: int, token: str) -> str:
    return f"part-{number:020d}-{token}.parquet"


def next_part_number(names: Iterable[str]) -> int:
    """The next part's number given the names in the view's directory: the ingest time in ns,
    but always past the newest part's, so that name order is ingestion order even when the
    wall clock steps back. A local caller holds the view's lock."""
    newest = 0
    for name in names:
        fields = name.split("-")
        if is_part(name) and len(fields) >= 3 and fields[1].isdigit():
            newest = max(newest, int(fields[1]))
    return max(newest + 1, time.time_ns())


def write_part(view: FeatureView, table: pa.Table, path: Path) -> None:
    """Writes validated rows as a part file of ``view`` (its offline schema, zstd), fsynced."""
    schema = offline_schema(view)
    table = pa.Table.from_arrays([table.column(f.name) for f in schema], schema=schema)
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _numpy(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return np.asarray(col.to_numpy())


def _null_mask(col: pa.ChunkedArray) -> np.ndarray:
    if col.null_count == 0:
        return np.zeros(len(col), dtype=bool)
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _ns(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.cast(pa.int64()).to_numpy(), dtype=np.int64)
