"""Copying a whole registry into an empty one: a local directory onto shared object storage
(``mlserve registry copy --to s3://...``), a shared registry onto a machine, or between
directories.

Everything moves: every version with its artifacts, statuses, descriptions, tags and manifest,
the aliases, the runs and the audit history (event ids and times kept). The source is read as
one consistent snapshot (SQLite's backup API on a directory, the current registry.db of a
shared one). Each artifact's bytes are checked against their sha256 on the way; then the rows
are written into the destination in one transaction (one conditional PUT on object storage),
so the destination shows the whole copy or nothing. A destination that already holds anything
but an empty registry (or the blobs of a copy that failed part-way, which a new run reuses) is
refused.
"""

from __future__ import annotations

import functools
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

TABLES = _db.TABLES


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


def check_destination(src: Registry, dest: str | os.PathLike[str]) -> None:
    """Refuses, before a Registry is opened at ``dest`` (which would create one), a destination
    holding anything but an empty registry or the blobs of a copy that failed part-way: a
    file, a folder with other things (another program's ``registry.db`` included), a folder
    inside the source, a prefix with other objects. And an empty source."""
    from mlserve._objectstore import S3Store, is_uri, normalize_uri

    from .remote import RemoteRegistry

    with src._read() as conn:
        if not any(conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in TABLES):
            raise InvalidInput(f"the registry at {src.location} is empty: nothing to copy "
                               "(is --registry the one you meant?)")
    if is_uri(dest):
        store = S3Store(normalize_uri(dest))
        foreign = [o.key for o in store.list("")
                   if not o.key.startswith("blobs/") and o.key != "registry.db"][:5]
        if foreign:
            raise InvalidInput(f"{store.uri} already holds {', '.join(foreign)}: copy into a "
                               "new prefix")
        return
    path = Path(dest).expanduser()
    try:
        if path.is_symlink() and not path.exists():
            raise InvalidInput(f"{path} is a dangling symbolic link: copy into a new directory")
        if path.exists() and not path.is_dir():
            raise InvalidInput(f"{path} exists and is not a directory: copy into a new "
                               "directory")
        if not isinstance(src, RemoteRegistry) and path.resolve().is_relative_to(
                Path(src.root).resolve()):
            raise InvalidInput(f"{path} is inside the registry at {src.location}: copy "
                               "somewhere else")
        if path.is_dir():
            names = {p.name for p in path.iterdir()}
            others = sorted(names - {"registry.db", "registry.db-wal", "registry.db-shm",
                                     "blobs", "models", "tmp"})
            if others:
                raise InvalidInput(f"{path} already holds {', '.join(others[:5])}: copy into "
                                   "a new directory")
            if names and "registry.db" not in names:
                raise InvalidInput(f"{path} holds {', '.join(sorted(names))} but no "
                                   "registry.db: copy into a new directory")
            if "registry.db" in names:
                conn = sqlite3.connect(path / "registry.db")
                try:
                    missing = _db.missing_columns(conn)
                finally:
                    conn.close()
                if missing:
                    raise InvalidInput(f"{path / 'registry.db'} is not a registry's database: "
                                       "copy into a new directory")
    except OSError as exc:
        raise InvalidInput(f"copy destination {path}: {exc}") from None


def copy_registry(src: Registry, dst: Registry,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Copies ``src`` into the empty ``dst``; returns counts (models, versions, runs, events,
    blobs, bytes). ``progress(done_bytes, total_bytes)`` follows the artifacts' copy."""
    from .remote import RemoteRegistry, _Conflict

    if src.location == dst.location:
        raise InvalidInput(f"copy of the registry at {src.location} onto itself")
    dst._check_writable()
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

        # Blobs for object storage go up from the checked source bytes, and the commit takes
        # them from there too if it must upload one again: nothing is staged in dst's cache.
        if isinstance(dst, RemoteRegistry):
            dst._tls.sources = {sha: functools.partial(_source_blob, src, sha) for sha in blobs}
        built: list[Path] = []
        try:
            total, done = sum(blobs.values()), 0
            for sha, size in sorted(blobs.items()):
                if isinstance(dst, RemoteRegistry):
                    if not dst._blob_ok(sha, size):  # not there from a copy that failed
                        dst._upload_blob(sha)
                else:
                    stored, _ = store_blob(_source_blob(src, sha), dst._layout.blobs,
                                           dst._layout.tmp)
                    if stored != sha or sha256_file(blob_path(dst._layout.blobs, sha)) != sha:
                        raise InvalidInput(f"blob {sha} changed while it was copied, or the "
                                           f"copy at {dst.location} is damaged; copy again")
                done += size
                if progress is not None:
                    progress(done, total)

            columns = _db.schema_columns()
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
        finally:
            if isinstance(dst, RemoteRegistry):
                dst._tls.sources = None
    counts = {"models": len({r[0] for r in rows["versions"]}), "versions": len(rows["versions"]),
              "runs": len(rows["runs"]), "events": len(rows["events"]), "blobs": len(blobs),
              "bytes": total}
    return counts
