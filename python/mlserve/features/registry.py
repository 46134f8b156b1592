"""The registry of feature definitions: versioned entities, views and services in SQLite.

One table holds every definition version (``<store root>/definitions.db``; WAL, so readers never
wait for ``apply``). Versioning rule: a definition whose *schema* changes gets a new version
(entity: join keys and dtypes; view: entity schema and columns with dtypes and vocabularies;
service: its pinned selection); a change that leaves the data layout alone (description, TTL,
source) updates the latest version in place. Old versions stay readable, and so does their data:
offline and online storage are per view version.

``apply`` is all-or-nothing (one ``BEGIN IMMEDIATE`` transaction) and checks references: a view's
entity and a service's views and columns must exist in the same batch or the registry. A
service's selections are pinned when applied (explicit version and column list), so what a
trained model consumed stays fixed until the service is applied again. Safe from several threads
and processes (one connection per call).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mlserve import _sqlite
from mlserve.errors import DefinitionNotFound, InvalidInput

from .definitions import (
    Definition,
    Entity,
    FeatureService,
    FeatureView,
    ViewSelection,
    parse_view_ref,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS definitions (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, name, version)
)
"""

KINDS = ("entity", "view", "service")
_COLUMNS = ("kind", "name", "version", "fingerprint", "spec", "created_at", "updated_at")
T = TypeVar("T")


def schema() -> str:
    """The definitions database's schema (its CREATE statements)."""
    return _SCHEMA


def missing_table(conn: sqlite3.Connection) -> str | None:
    """Why the database ``conn`` is on is not a definitions database (None: it is one)."""
    found = {r[1] for r in conn.execute("PRAGMA table_info(definitions)")}
    missing = [c for c in _COLUMNS if c not in found]
    return f"it lacks definitions.{', definitions.'.join(missing)}" if missing else None


@dataclass(frozen=True)
class ApplyChange:
    """What ``apply`` did to one definition."""

    kind: str
    name: str
    version: int
    action: str
    """``created`` (version 1), ``new version``, ``updated`` (in place) or ``unchanged``."""


@dataclass(frozen=True)
class DefinitionInfo:
    """One registered definition version, for listings."""

    kind: str
    name: str
    version: int
    created_at: str
    updated_at: str
    definition: Definition


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class _DryRun(Exception):
    """Rolls back the apply transaction of a dry run."""


class FeatureRegistry:
    """Definitions stored in the SQLite file ``path``."""

    read_only = False

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """``read_only``: an existing database on a read-only mount (see
        :func:`mlserve._sqlite.connect`); every change raises InvalidInput."""
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise InvalidInput(f"no feature store definitions at {self.path} to open "
                                   "read-only")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _sqlite.initialize(self.path, _SCHEMA)

    def __repr__(self) -> str:
        return f"FeatureRegistry({self.location!r})"

    @property
    def location(self) -> str:
        """Where the definitions live (a file here; ``s3://...`` for a shared store)."""
        return str(self.path)

    # Storage hooks: a shared store (:class:`.remote.RemoteFeatureRegistry`) runs the same SQL
    # on a copy of a database kept in object storage.

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return _sqlite.read_transaction(self.path, read_only=self.read_only)

    def _write(self, *, copy: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction; ``copy``: the rows of a copy, whose offline parts landed first."""
        if self.read_only:
            raise InvalidInput(f"the feature store definitions at {self.path} are read-only "
                               "(opened read-only, or not writable): make changes where they "
                               "are writable")
        return _sqlite.write_transaction(self.path)

    def _transact(self, fn: Callable[[], T], what: str) -> T:
        """Runs ``fn`` (which calls :meth:`_write` once); a shared store runs it again on the
        new state when another machine's change got there first."""
        return fn()

    def rows(self) -> list[tuple[Any, ...]]:
        """Every row of the definitions table, in key order: what a copy moves."""
        with self._read() as conn:
            return [tuple(r) for r in conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM definitions ORDER BY kind, name, version")]

    def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Writes ``rows`` (from :meth:`rows` of another store) into this empty registry in one
        transaction; InvalidInput when it holds definitions already."""
        def insert() -> None:
            with self._write(copy=True) as conn:
                if conn.execute("SELECT COUNT(*) FROM definitions").fetchone()[0]:
                    raise InvalidInput(f"the feature store at {self.location} has definitions "
                                       "already: copy into an empty store")
                conn.executemany(f"INSERT INTO definitions ({', '.join(_COLUMNS)}) VALUES "
                                 f"({', '.join('?' * len(_COLUMNS))})", rows)

        self._transact(insert, f"copy into the feature store at {self.location}")

    # ------------------------------------------------------------------ apply

    def apply(self, definitions: Sequence[Definition], *, dry_run: bool = False
              ) -> list[ApplyChange]:
        """Validates and records ``definitions`` (entities first, then views, then services)
        in one transaction; ``dry_run`` validates and reports without recording."""
        batch: dict[str, dict[str, Definition]] = {k: {} for k in KINDS}
        for d in definitions:
            kind = _kind(d)
            if d.name in batch[kind]:
                raise InvalidInput(f"{kind} {d.name!r} is declared more than once")
            batch[kind][d.name] = d
        return self._transact(lambda: self._apply(batch, dry_run),
                              f"apply to the feature store at {self.location}")

    def _apply(self, batch: dict[str, dict[str, Definition]], dry_run: bool
               ) -> list[ApplyChange]:
        changes: list[ApplyChange] = []
        try:
            with self._write() as conn:
                applied: dict[str, dict[str, Definition]] = {k: {} for k in KINDS}
                for entity in batch["entity"].values():
                    assert isinstance(entity, Entity)
                    change, stored = self._apply_one(conn, "entity", entity, entity.to_dict())
                    changes.append(change)
                    applied["entity"][entity.name] = stored
                for view in batch["view"].values():
                    assert isinstance(view, FeatureView)
                    resolved = self._resolve_view_entity(conn, view, applied)
                    assert isinstance(resolved.entity, Entity)
                    spec = {**resolved.to_dict(), "entity_version": resolved.entity.version}
                    change, stored = self._apply_one(conn, "view", resolved, spec)
                    changes.append(change)
                    applied["view"][view.name] = stored
                for service in batch["service"].values():
                    assert isinstance(service, FeatureService)
                    pinned = self._pin_service(conn, service, applied)
                    change, _ = self._apply_one(conn, "service", pinned, pinned.to_dict())
                    changes.append(change)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return changes

    def _apply_one(self, conn: sqlite3.Connection, kind: str, d: Definition,
                   spec: dict[str, Any]) -> tuple[ApplyChange, Definition]:
        fingerprint = d.fingerprint()
        row = conn.execute(
            "SELECT version, fingerprint, spec FROM definitions WHERE kind = ? AND name = ? "
            "ORDER BY version DESC LIMIT 1", (kind, d.name)).fetchone()
        now = _utc_now()
        text = json.dumps(spec, sort_keys=True)
        if row is not None and row["fingerprint"] == fingerprint:
            version = int(row["version"])
            if row["spec"] == text:
                action = "unchanged"
            else:
                conn.execute("UPDATE definitions SET spec = ?, updated_at = ? WHERE kind = ? AND "
                             "name = ? AND version = ?", (text, now, kind, d.name, version))
                action = "updated"
        else:
            version = 1 if row is None else int(row["version"]) + 1
            conn.execute("INSERT INTO definitions VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (kind, d.name, version, fingerprint, text, now, now))
            action = "created" if version == 1 else "new version"
        return ApplyChange(kind, d.name, version, action), self._decode(conn, kind, d.name,
                                                                         version, spec)

    def _resolve_view_entity(self, conn: sqlite3.Connection, view: FeatureView,
                             applied: dict[str, dict[str, Definition]]) -> FeatureView:
        name = view.entity_name
        entity = applied["entity"].get(name)
        if entity is None:
            try:
                entity = self._load(conn, "entity", name, None)
            except DefinitionNotFound:
                raise InvalidInput(f"feature view {view.name!r}: unknown entity {name!r}; "
                                   "declare it ([[entity]]) or apply it first") from None
        assert isinstance(entity, Entity)
        if isinstance(view.entity, Entity) and view.entity.schema() != entity.schema():
            raise InvalidInput(f"feature view {view.name!r}: its entity {name!r} differs from "
                               "the one applied with it; apply the entity itself")
        return FeatureView.from_dict(view.to_dict(), entity=entity)

    def _pin_service(self, conn: sqlite3.Connection, service: FeatureService,
                     applied: dict[str, dict[str, Definition]]) -> FeatureService:
        pinned: list[ViewSelection] = []
        key_dtypes: dict[str, tuple[str, str]] = {}
        for sel in service.selections:
            view = applied["view"].get(sel.view)
            if view is None or (sel.version is not None and sel.version != view.version):
                try:
                    view = self._load(conn, "view", sel.view, sel.version)
                except DefinitionNotFound as exc:
                    raise InvalidInput(f"feature service {service.name!r}: {exc}") from None
            assert isinstance(view, FeatureView) and isinstance(view.entity, Entity)
            columns = sel.columns if sel.columns is not None else view.column_names
            missing = [c for c in columns if c not in view.column_names]
            if missing:
                raise InvalidInput(
                    f"feature service {service.name!r}: view {view.ref!r} has no column(s) "
                    f"{', '.join(missing)}; columns: {', '.join(view.column_names)}")
            for key, dtype in zip(view.entity.join_keys, view.entity.key_dtypes, strict=True):
                seen = key_dtypes.setdefault(key, (dtype, view.entity.name))
                if seen[0] != dtype:
                    raise InvalidInput(
                        f"feature service {service.name!r}: join key {key!r} is {seen[0]} in "
                        f"entity {seen[1]!r} but {dtype} in entity {view.entity.name!r}")
            pinned.append(ViewSelection(view.name, tuple(columns), view.version))
        return FeatureService(service.name, pinned, description=service.description)

    # ------------------------------------------------------------------ reading

    def entity(self, name: str, version: int | None = None) -> Entity:
        """The entity (latest version unless ``version``); DefinitionNotFound if unknown."""
        with self._read() as conn:
            d = self._load(conn, "entity", name, version)
        assert isinstance(d, Entity)
        return d

    def view(self, ref: str, version: int | None = None) -> FeatureView:
        """The view ``NAME`` or ``NAME/VERSION`` (latest unless a version is given), with its
        entity resolved; DefinitionNotFound if unknown."""
        name, ref_version = parse_view_ref(ref)
        with self._read() as conn:
            d = self._load(conn, "view", name, version if version is not None else ref_version)
        assert isinstance(d, FeatureView)
        return d

    def service(self, name: str, version: int | None = None) -> FeatureService:
        """The service with pinned selections; DefinitionNotFound if unknown."""
        base, _, v = name.partition("/")
        if v and version is None:
            if not v.isdigit():
                raise InvalidInput(f"feature service reference {name!r}: expected NAME or "
                                   "NAME/VERSION")
            version = int(v)
        with self._read() as conn:
            d = self._load(conn, "service", base, version)
        assert isinstance(d, FeatureService)
        return d

    def list(self, kind: str, *, all_versions: bool = False) -> list[DefinitionInfo]:
        """Registered definitions of ``kind`` (``entity``, ``view``, ``service``) by name; the
        latest version of each unless ``all_versions``."""
        if kind not in KINDS:
            raise InvalidInput(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, version, created_at, updated_at, spec FROM definitions d "
                "WHERE kind = ? AND (? OR version = (SELECT MAX(version) FROM definitions "
                "WHERE kind = d.kind AND name = d.name)) ORDER BY name, version",
                (kind, all_versions)).fetchall()
            return [DefinitionInfo(kind, r["name"], int(r["version"]), r["created_at"],
                                   r["updated_at"],
                                   self._decode(conn, kind, r["name"], int(r["version"]),
                                                json.loads(r["spec"])))
                    for r in rows]

    def _load(self, conn: sqlite3.Connection, kind: str, name: str, version: int | None
              ) -> Definition:
        if version is None:
            row = conn.execute("SELECT version, spec FROM definitions WHERE kind = ? AND "
                               "name = ? ORDER BY version DESC LIMIT 1", (kind, name)).fetchone()
        else:
            row = conn.execute("SELECT version, spec FROM definitions WHERE kind = ? AND "
                               "name = ? AND version = ?", (kind, name, version)).fetchone()
        if row is None:
            label = {"entity": "entity", "view": "feature view", "service": "feature service"}
            known = [r[0] for r in conn.execute(
                "SELECT DISTINCT name FROM definitions WHERE kind = ? ORDER BY name", (kind,))]
            what = name if version is None else f"{name}/{version}"
            hint = f"known: {', '.join(known)}" if known else "none is registered"
            raise DefinitionNotFound(f"unknown {label[kind]} {what!r} ({hint}); declare it and "
                                     "run `mlserve features apply FILE`")
        return self._decode(conn, kind, name, int(row["version"]), json.loads(row["spec"]))

    def _decode(self, conn: sqlite3.Connection, kind: str, name: str, version: int,
                spec: dict[str, Any]) -> Definition:
        if kind == "entity":
            return Entity.from_dict(spec, version=version)
        if kind == "view":
            spec = dict(spec)
            entity = self._load(conn, "entity", spec["entity"], spec.pop("entity_version"))
            assert isinstance(entity, Entity)
            return FeatureView.from_dict(spec, entity=entity, version=version)
        return FeatureService.from_dict(spec, version=version)


def _kind(d: object) -> str:
    if isinstance(d, Entity):
        return "entity"
    if isinstance(d, FeatureView):
        return "view"
    if isinstance(d, FeatureService):
        return "service"
    raise InvalidInput(f"not a feature definition: {d!r} (expected Entity, FeatureView or "
                       "FeatureService)")
