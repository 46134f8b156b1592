"""The registry's SQLite metadata database: its schema; connections and transactions come
from :mod:`mlserve._sqlite` (WAL, busy timeout, ``BEGIN IMMEDIATE`` writes, one connection per
operation).
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from mlserve._sqlite import BUSY_TIMEOUT_MS, connect, read_transaction, write_transaction
from mlserve._sqlite import initialize as _initialize

__all__ = ["BUSY_TIMEOUT_MS", "TABLES", "columns", "connect", "initialize", "missing_columns",
           "read_transaction", "schema_columns", "write_transaction"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    description TEXT NOT NULL,
    run_id TEXT,
    manifest TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (name, version, file),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
CREATE INDEX IF NOT EXISTS artifacts_sha256 ON artifacts (sha256);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, version, key)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    alias TEXT,
    old_version INTEGER,
    new_version INTEGER,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT,
    created_at TEXT NOT NULL,
    params TEXT NOT NULL,
    metrics TEXT NOT NULL,
    parent_run TEXT
);
"""


#: The tables whose rows are the registry, in an order that satisfies the foreign keys. Their
#: columns mark a database as a registry's; later tables are added to an older one on open.
TABLES = ("versions", "artifacts", "aliases", "tags", "events", "runs")


def missing_columns(conn: sqlite3.Connection) -> list[str]:
    """``table.column`` of the registry's tables that the database ``conn`` is on lacks
    (empty: it is a registry's database)."""
    found = columns(conn)
    return [f"{t}.{c}" for t, cols in schema_columns().items() if t in TABLES
            for c in cols if c not in found.get(t, [])]


def columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Table -> column names (in order) of the database ``conn`` is on."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                         "AND name NOT LIKE 'sqlite_%'")]
    return {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}


@functools.cache
def schema_columns() -> dict[str, list[str]]:
    """Table -> column names of the registry schema (what a registry database must have)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        return columns(conn)
    finally:
        conn.close()


def initialize(path: Path) -> None:
    """Creates the registry schema and switches to WAL; safe from several processes at once."""
    _initialize(path, _SCHEMA)
