"""One SQLite database kept as one object in object storage and shared by many machines: the
metadata of a shared model registry (``registry.db``) and of a shared feature store
(``definitions.db``).

Writes are optimistic transactions on that one object. :meth:`SharedDatabase.change` downloads
the current object with its ETag, lets the caller change a private copy with ordinary SQL, and
puts the copy back with a conditional PUT (``If-Match`` the ETag read; ``If-None-Match: *`` for
the first one). When another writer got there first the PUT fails with 412 and :class:`Conflict`
is raised; :meth:`SharedDatabase.transact` runs the whole change again on the new state, so
concurrent writers on any number of machines never lose an update. This needs a store with S3's
conditional writes (AWS S3 since 2024, MinIO, SeaweedFS, R2). Each change also writes a unique
id into ``remote_commits``: a PUT that fails ambiguously (its answer lost, botocore's retry
answered 412) counts as committed when the id is in the store's database, so no change is
applied twice.

Reads fetch the object only when its ETag changed (one conditional GET per call) into
``<snapshots>/<etag>-<schema tag>.db``, an immutable file every process on the machine shares
(another mlserve version, whose schema differs, keeps its own grown copy). Copies are out of WAL
(one self-contained file) and have every table of the caller's schema, so a database written by
an older mlserve is read and grown. Snapshots other than the current one are pruned once unused
for :data:`SNAPSHOT_KEEP_S`.

Thread-safe; a change's reads (:meth:`SharedDatabase.read` inside :meth:`SharedDatabase.change`
on the same thread) see the change's own copy.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from mlserve import _sqlite
from mlserve._objectstore import NotModified, PreconditionFailed, S3Store
from mlserve._tempfiles import temp_path, touch
from mlserve.errors import InvalidInput, Unavailable

#: Conditional writes lost in a row before a change gives up (Unavailable).
MAX_ATTEMPTS = 50
#: Snapshots other than the current one are removed once unused for this long.
SNAPSHOT_KEEP_S = 600.0
#: How long a commit's id stays in the database, to tell whether a PUT whose answer was lost
#: (a timeout, a reset connection, botocore's retry answered 412) was applied.
COMMIT_IDS_KEEP_S = 86400.0
_COMMITS_TABLE = ("CREATE TABLE IF NOT EXISTS remote_commits (txid TEXT PRIMARY KEY, "
                  "at TEXT NOT NULL)")

T = TypeVar("T")


class Conflict(Exception):
    """Another writer replaced the database since this change read it."""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class SharedDatabase:
    """The SQLite database ``name`` in ``store``, read through snapshots in ``snapshots``.

    ``schema``: returns the ``;``-separated CREATE statements every copy gets (called each
    time, so a schema that grows is seen). ``check``: the problem with a downloaded database
    (e.g. a missing table), or None when it is one of ours. ``what``: what it is, for messages
    (``"registry"`` gives "... is not a registry database"). ``tmp``: where temp files go (same
    file system as ``snapshots``).
    """

    def __init__(self, store: S3Store, name: str, snapshots: Path, tmp: Path, *,
                 schema: Callable[[], str], check: Callable[[sqlite3.Connection], str | None],
                 what: str) -> None:
        self.store = store
        self.name = name
        self.snapshots = snapshots
        self.tmp = tmp
        self._schema = schema
        self._check = check
        self.what = what
        self._snap: tuple[str | None, Path] | None = None
        self._pull_lock = threading.Lock()
        self._tls = threading.local()
        #: Commits that lost the race to another writer and ran again (for logs and tests).
        self.conflicts = 0

    @property
    def url(self) -> str:
        return self.store.url(self.name)

    @property
    def in_change(self) -> bool:
        """Whether this thread is inside :meth:`change`."""
        return getattr(self._tls, "work", None) is not None

    def _tag(self) -> str:
        return hashlib.sha256(self._schema().encode()).hexdigest()[:8]

    def prepare(self, db: Path) -> None:
        """Readies a private copy: out of WAL (one self-contained file to upload, no -wal/-shm
        beside it), with every table of the schema."""
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.executescript(self._schema())
        finally:
            conn.close()

    # ------------------------------------------------------------------ reading

    def _empty_snapshot(self) -> Path:
        path = self.snapshots / f"empty-{self._tag()}.db"
        if not path.is_file():
            tmp = temp_path(self.tmp, "empty.db")
            self.prepare(tmp)
            os.replace(tmp, path)
        return path

    def snapshot_path(self, etag: str) -> Path:
        return self.snapshots / f"{re.sub(r'[^A-Za-z0-9]', '', etag)}-{self._tag()}.db"

    def pull(self) -> tuple[str | None, Path]:
        """The newest database: ``(etag, local snapshot)``, ``(None, empty database)`` when the
        store has none yet. One conditional GET; a download only when it changed."""
        with self._pull_lock:
            current = self._snap
            known = current[0] if current is not None and current[1].is_file() else None
            tmp = temp_path(self.tmp, "pull.db")
            try:
                etag = self.store.download(self.name, tmp, if_none_match=known)
            except NotModified:
                assert current is not None
                touch(current[1])
                return current
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if etag is None:
                tmp.unlink(missing_ok=True)
                self._snap = (None, self._empty_snapshot())
                return self._snap
            self._refuse_foreign(tmp)
            self.prepare(tmp)
            final = self.snapshot_path(etag)
            if final.is_file():
                tmp.unlink()
                touch(final)
            else:
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
            self._snap = (etag, final)
            self.prune(final)
            return self._snap

    def _refuse_foreign(self, path: Path) -> None:
        """Refuses a download that is not our database (another SQLite file at the prefix, a
        damaged object) before any query of it fails obscurely."""
        try:
            with _sqlite.read_transaction(path, read_only=True) as conn:
                problem = self._check(conn)
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
        if problem is not None:
            path.unlink(missing_ok=True)
            raise InvalidInput(
                f"{self.url} is not a {self.what} database ({problem}); the prefix belongs to "
                "something else, or the object was damaged")

    def prune(self, keep: Path) -> None:
        """Removes snapshots other than ``keep`` unused for :data:`SNAPSHOT_KEEP_S`."""
        cutoff = time.time() - SNAPSHOT_KEEP_S
        for entry in self.snapshots.glob("*.db"):
            try:
                if entry != keep and not entry.name.startswith("empty-") \
                        and entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except OSError:
                pass  # another process pruned it first

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on the newest database (inside a change: on the change's copy)."""
        work = getattr(self._tls, "work", None)
        if work is not None:
            with _sqlite.read_transaction(work) as conn:
                yield conn
            return
        _, snapshot = self.pull()
        if not snapshot.is_file():  # pruned by another process since: pull fetches it again
            _, snapshot = self.pull()
        with _sqlite.read_transaction(snapshot, read_only=True) as conn:
            yield conn

    # ------------------------------------------------------------------ changing

    @contextmanager
    def change(self, *, before_put: Callable[[Path, Path | None], None] | None = None,
               after_put: Callable[[], None] | None = None,
               may_create: Callable[[], None] | None = None) -> Iterator[sqlite3.Connection]:
        """One optimistic transaction: the caller changes a copy of the newest database through
        the connection yielded; then ``before_put(copy, base snapshot or None)`` (e.g. upload
        the objects it references) and the conditional PUT, then ``after_put()``. Raises
        :class:`Conflict` when another writer won (run it again: :meth:`transact`). An
        exception from the caller's block rolls back and puts nothing; so does a block that
        changed nothing (no PUT, no new ETag for every reader to fetch). ``may_create``: called
        when the store has no database yet, to refuse creating one (e.g. data written under an
        earlier database that went missing)."""
        base_etag, base = self.pull()
        if base_etag is None and may_create is not None:
            may_create()
        work = temp_path(self.tmp, "work.db")
        txid = uuid.uuid4().hex
        try:
            if base_etag is not None:
                shutil.copyfile(base, work)
                os.chmod(work, 0o644)
            self.prepare(work)
            self._tls.work = work
            changed = True
            try:
                with _sqlite.write_transaction(work) as conn:
                    yield conn
                    changed = conn.total_changes > 0
                    if not changed:
                        return
                    # The commit's id, to tell later whether a PUT whose answer was lost went
                    # through; ids older than a day are dropped.
                    conn.execute(_COMMITS_TABLE)
                    cutoff = datetime.now(timezone.utc) - timedelta(seconds=COMMIT_IDS_KEEP_S)
                    conn.execute("DELETE FROM remote_commits WHERE at < ?",
                                 (cutoff.isoformat(timespec="microseconds"),))
                    conn.execute("INSERT INTO remote_commits (txid, at) VALUES (?, ?)",
                                 (txid, _utc_now()))
            finally:
                self._tls.work = None
            if before_put is not None:
                before_put(work, None if base_etag is None else base)
            self._put(work, base_etag, txid)
            if after_put is not None:
                after_put()
        finally:
            work.unlink(missing_ok=True)
            work.with_name(work.name + "-journal").unlink(missing_ok=True)

    def _put(self, work: Path, base_etag: str | None, txid: str) -> None:
        try:
            etag = self.store.put(self.name, work, if_match=base_etag)
        except PreconditionFailed:
            if not self.landed(txid):
                raise Conflict() from None
        except Unavailable:
            # The PUT may have been applied and only its answer lost.
            if not self.landed(txid):
                raise
        else:
            final = self.snapshot_path(etag)
            os.chmod(work, 0o444)
            os.replace(work, final)
            with self._pull_lock:
                self._snap = (etag, final)

    def landed(self, txid: str) -> bool:
        """Whether the commit ``txid`` is in the store's database (after a lost race, or a PUT
        whose answer never came: botocore retries a timed-out PUT, and the retry of one that
        was applied answers 412)."""
        try:
            _, snapshot = self.pull()
            with _sqlite.read_transaction(snapshot, read_only=True) as conn:
                return conn.execute("SELECT 1 FROM remote_commits WHERE txid = ?",
                                    (txid,)).fetchone() is not None
        except sqlite3.OperationalError:  # no remote_commits table: no commit of ours
            return False

    def transact(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, run again on the new state whenever its commit lost the race (jittered
        backoff, so that a crowd of writers spreads out); Unavailable after
        :data:`MAX_ATTEMPTS` losses in a row."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return fn()
            except Conflict:
                self.conflicts += 1
                time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** attempt)))
        raise Unavailable(
            f"{what} on {self.store.uri}: lost the race for {self.url} {MAX_ATTEMPTS} times in "
            "a row (too many writers at once); try again")
