"""Copying a whole registry into an empty one: a local directory onto shared object storage
(``mlserve registry copy --to s3://...``), a shared registry onto a machine, or between
directories.

Everything moves: every version with its artifacts, statuses, descriptions, tags and manifest,
the aliases, the runs and the audit history (event ids and times kept). The source is read as
one consistent snapshot (SQLite's backup API on a directory, the current registry.db of a
shared one). Each artifact's bytes are checked against their sha256 on the way; then the rows
are written into the destination in one transaction (one conditional PUT on object storage),
so the destination shows the whole copy or nothing. A destination that already holds anything
is refused.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlserve.bundle import sha256_file
from mlserve.errors import InvalidInput

from . import _db
from ._files import blob_path, remove_tree, store_blob

if TYPE_CHECKING:
    from .registry import Registry

#: The tables whose rows are the registry (in an order that satisfies the foreign keys).
TABLES = ("versions", "artifacts", "aliases", "tags", "events", "runs")


def _snapshot(src: Registry, into: Path) -> Path:
    """A consistent copy of ``src``'s database at ``into``."""
    from .remote import RemoteRegistry

    if isinstance(src, RemoteRegistry):
        _, current = src._pull()
        shutil.copyfile(current, into)
        return into
    source = _db.connect(src._layout.db, read_only=src.read_only)
    target = sqlite3.connect(into)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return into


def _source_blob(src: Registry, sha: str) -> Path:
    """A local file with blob ``sha``'s bytes, checked against it."""
    from .remote import RemoteRegistry

    if isinstance(src, RemoteRegistry):
        path = src._fetch_blob(sha)  # a download is checked while it arrives; a cached copy:
        if sha256_file(path) != sha:
            path.unlink()  # damaged in this machine's cache: fetch it again
            path = src._fetch_blob(sha)
        return path
    path = blob_path(src._layout.blobs, sha)
    if not path.is_file() or sha256_file(path) != sha:
        raise InvalidInput(f"blob {sha} of the registry at {src.location} is missing or damaged; "
                           "run `mlserve registry verify` there first")
    return path


def check_destination(dest: str | os.PathLike[str]) -> None:
    """Refuses a destination that holds anything but an empty registry, before a Registry is
    opened there (which would create one): a file, a folder with other things, a prefix with
    other objects."""
    from ._objectstore import S3Store, is_uri, normalize_uri

    if is_uri(dest):
        store = S3Store(normalize_uri(dest))
        found = [o.key for _, o in zip(range(5), store.list(""), strict=False)]
        if found and store.head("registry.db") is None:
            raise InvalidInput(f"{store.uri} already holds objects ({', '.join(found)}, ...) "
                               "and no registry: copy into a new prefix")
        return
    path = Path(dest).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"{path} exists and is not a directory: copy into a new directory")
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir()
                        if p.name not in ("registry.db", "registry.db-wal", "registry.db-shm",
                                          "blobs", "models", "tmp"))
        if others:
            raise InvalidInput(f"{path} already holds {', '.join(others[:5])}: copy into a new "
                               "directory")


def copy_registry(src: Registry, dst: Registry,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Copies ``src`` into the empty ``dst``; returns counts (models, versions, runs, events,
    blobs, bytes). ``progress(done_bytes, total_bytes)`` follows the artifacts' copy."""
    from .remote import RemoteRegistry, _Conflict

    if src.location == dst.location:
        raise InvalidInput(f"copy of the registry at {src.location} onto itself")
    dst._check_writable()
    with src._read() as conn:
        if not any(conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in TABLES):
            raise InvalidInput(f"the registry at {src.location} is empty: nothing to copy "
                               "(is --registry the one you meant?)")
    with dst._read() as conn:
        held = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    if any(held.values()):
        raise InvalidInput(
            f"the registry at {dst.location} is not empty ("
            + ", ".join(f"{n} {t}" for t, n in held.items() if n)
            + "): copy into a new directory or prefix")
    with tempfile.TemporaryDirectory(prefix="mlserve-registry-copy-") as tmp:
        snapshot = _snapshot(src, Path(tmp) / "registry.db")
        conn = _db.connect(snapshot)
        try:
            rows = {t: conn.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()
                    for t, cols in _db.schema_columns().items()}
            blobs = {str(r[0]): int(r[1]) for r in conn.execute(
                "SELECT sha256, MAX(bytes) FROM artifacts GROUP BY sha256")}
        finally:
            conn.close()

        total, done = sum(blobs.values()), 0
        for sha, size in sorted(blobs.items()):
            if isinstance(dst, RemoteRegistry) and dst._blob_ok(sha, size):
                pass  # there already (a copy run again after a failure)
            else:
                # Into the destination's own blobs (its cache, for object storage, from where
                # its commit can upload a blob again if it must).
                stored, _ = store_blob(_source_blob(src, sha), dst._layout.blobs,
                                       dst._layout.tmp)
                if stored != sha:
                    raise InvalidInput(f"blob {sha} changed while it was copied; copy again")
                if isinstance(dst, RemoteRegistry):
                    dst._upload_blob(sha)
            done += size
            if progress is not None:
                progress(done, total)

        columns = _db.schema_columns()
        built: list[Path] = []
        try:
            with dst._write() as out:
                if any(out.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in TABLES):
                    raise InvalidInput(f"the registry at {dst.location} was written to during "
                                       "the copy: copy into a new directory or prefix")
                for table in TABLES:
                    cols = columns[table]
                    out.executemany(
                        f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                        f"({', '.join('?' * len(cols))})", [tuple(r) for r in rows[table]])
                for row in out.execute("SELECT * FROM versions").fetchall():
                    mv = dst._version_from_row(out, row)
                    dst._materialize(mv.path, mv.manifest)
                    built.append(mv.path)
        except _Conflict:
            raise InvalidInput(f"the registry at {dst.location} was written to during the "
                               "copy: copy into a new prefix") from None
        except BaseException:
            for path in built:
                remove_tree(path)
            raise
    counts = {"models": len({r[0] for r in rows["versions"]}), "versions": len(rows["versions"]),
              "runs": len(rows["runs"]), "events": len(rows["events"]), "blobs": len(blobs),
              "bytes": total}
    return counts
