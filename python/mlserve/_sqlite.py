"""SQLite helpers shared by the model registry and the feature definitions registry.

WAL mode (readers never block the writer), ``busy_timeout`` so concurrent processes wait for
the write lock instead of failing, and ``BEGIN IMMEDIATE`` for every write so that read-then-
write sequences (next version number) are race-free across processes. One connection per
operation: nothing is shared between threads or across ``fork``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from mlserve.errors import InvalidInput

BUSY_TIMEOUT_MS = 60_000


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the shared pragmas.

    ``read_only``: for a database on a read-only mount. ``mode=ro`` first (it sees a writer's
    changes when the WAL's ``-shm`` file is there); where SQLite cannot open it so (a WAL
    database whose ``-shm`` it may not create), ``immutable=1``: the file as a snapshot.
    """
    if read_only:
        conn = _connect_read_only(path)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _connect_read_only(path: Path) -> sqlite3.Connection:
    base = f"file:{quote(str(path.resolve()))}?mode=ro"
    for uri in (base, base + "&immutable=1"):
        if uri.endswith("immutable=1"):
            wal = path.with_name(path.name + "-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                # immutable=1 reads the database file alone: commits still in the WAL (a copy
                # taken while a writer had it open) would be silently missing.
                raise InvalidInput(
                    f"{path} has commits in {wal.name} that cannot be read where it is (no "
                    f"{path.name}-shm, read-only): checkpoint it where it is writable (close "
                    "every writer, or run sqlite3 on it with PRAGMA wal_checkpoint(TRUNCATE)) "
                    "and copy it again")
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None)
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return conn
        except sqlite3.OperationalError:
            conn.close()
            if uri.endswith("immutable=1"):
                raise
    raise AssertionError("unreachable")


def initialize(path: Path, schema: str) -> None:
    """Creates ``schema`` (``;``-separated statements) and switches to WAL; safe when several
    processes do it at once."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn = connect(path)
            try:
                # Switching the journal mode needs an exclusive lock and may report BUSY without
                # waiting on the busy handler, hence the retry loop.
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                for statement in schema.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("COMMIT")
            finally:
                conn.close()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def write_transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on any exception); holds the write lock."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


@contextmanager
def read_transaction(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot for multi-statement reads (``read_only``: see :func:`connect`)."""
    conn = connect(path, read_only=read_only)
    try:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
