"""The model registry: versioned, checksummed, aliased model bundles on local disk.

Metadata lives in SQLite (``<root>/registry.db``), artifact bytes in a content-addressed store
(``<root>/blobs/ab/abcdef…``), and each version is materialized as a read-only bundle directory
(``<root>/models/NAME/VERSION``) hardlinked from the blobs, which loaders open directly.

Crash safety: ``register`` stores blobs (temp file + rename), then under the SQLite write lock
builds the version directory under a temp name, renames it into place and commits its rows in
one transaction. A version is visible only through its committed row, so a process killed at any
point leaves the whole version or nothing visible; leftovers are ignored and removed by
``verify(repair=True)`` or ``gc()``. Safe to use from several threads and processes at once
(each call opens its own connection; writes take ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from mlserve._objectstore import is_uri
from mlserve._tempfiles import temp_path as _temp_path
from mlserve.bundle import MANIFEST
from mlserve.errors import InvalidInput, ModelNotFound

from . import _db, _maintenance, _tar
from ._files import (
    Layout,
    blob_path,
    link_or_copy,
    make_tree_readonly,
    manifest_bytes,
    remove_tree,
    replace_manifest,
    store_blob,
)
from ._settings import default_location, test_step_pause
from .records import HistoryEvent, ModelSummary, ModelVersion, Run
from .refs import Ref, check_alias, check_name, parse_ref

logger = logging.getLogger(__name__)

STATUSES = ("ready", "pending", "archived")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _artifact_name(file: object) -> str:
    if not isinstance(file, str) or not file:
        raise InvalidInput(f"mlserve.json: artifact name {file!r} is not a file name")
    p = PurePosixPath(file)
    if p.is_absolute() or "\\" in file or any(part in ("", ".", "..") for part in p.parts):
        raise InvalidInput(
            f"mlserve.json: artifact {file!r} must be a relative path inside the bundle"
        )
    if file == MANIFEST:
        raise InvalidInput("mlserve.json: the manifest cannot list itself as an artifact")
    return file


def _read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise InvalidInput(f"{bundle_dir} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise InvalidInput(f"{path}: expected a JSON object")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict):
        raise InvalidInput(f"{path}: 'artifacts' must be an object of file -> {{sha256, bytes}}")
    for file, entry in artifacts.items():
        _artifact_name(file)
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(sha, str) or len(sha) != 64:
            raise InvalidInput(f"{path}: artifact {file} needs a 64-hex 'sha256'")
    return manifest


def _json_dumps(value: object, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serializable: {exc}") from None


class Registry:
    """A model registry rooted at ``root`` (default ``$MLSERVE_HOME/registry``).

    ``read_only``: open an existing registry for reading only (resolve, list, open, verify
    without repair, export); every change raises InvalidInput. None (the default): read-only
    when the registry exists and its root is not writable, e.g. a read-only volume mount in a
    serving container. Where the WAL's index (``registry.db-shm``) is there, a writer's
    commits elsewhere are seen at once; where it is not, the database file is read as an
    immutable snapshot, and one with commits still in its WAL is refused (they would be
    missing).
    """

    def __new__(cls, root: str | os.PathLike[str] | None = None, **kwargs: Any) -> Registry:
        if cls is Registry and is_uri(root if root is not None else default_location()):
            from .remote import RemoteRegistry

            return super().__new__(RemoteRegistry)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 read_only: bool | None = None) -> None:
        self.root = Path(root if root is not None else default_location()).expanduser()
        self._layout = Layout(self.root)
        if read_only is None:
            read_only = self._layout.db.is_file() and not os.access(self.root, os.W_OK)
        self.read_only = read_only
        if read_only:
            if not self._layout.db.is_file():
                raise InvalidInput(f"no registry at {self.root} (it has no registry.db) to open "
                                   "read-only")
            return
        for d in (self.root, self._layout.blobs, self._layout.models, self._layout.tmp):
            d.mkdir(parents=True, exist_ok=True)
        _db.initialize(self._layout.db)

    def _read(self) -> Any:
        return _db.read_transaction(self._layout.db, read_only=self.read_only)

    def _write(self) -> Any:
        self._check_writable()
        return _db.write_transaction(self._layout.db)

    def _check_writable(self) -> None:
        """Refuses a change of a read-only registry before it writes anything (a blob, a
        staging directory)."""
        if self.read_only:
            raise InvalidInput(f"the registry at {self.location} is read-only (opened read-only, "
                               "or its root is not writable): make changes where it is writable")

    @property
    def location(self) -> str:
        """Where the registry is, for people: its root directory, or ``s3://BUCKET/PREFIX``."""
        return str(self.root)

    def __repr__(self) -> str:
        return f"Registry({self.location!r})"

    # ---------------------------------------------------------------- registering

    def register(
        self,
        bundle_dir: str | os.PathLike[str],
        *,
        name: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        status: str = "ready",
    ) -> ModelVersion:
        """Stores the bundle at ``bundle_dir`` as the next version of ``name`` (default: the
        manifest's name). Verifies every artifact's sha256 (mismatch or missing file →
        InvalidInput naming the file). Atomic and race-free across processes."""
        self._check_writable()
        src = Path(bundle_dir)
        manifest = _read_manifest(src)
        model = check_name(name if name is not None else str(manifest.get("name", "")))
        if status not in STATUSES:
            raise InvalidInput(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        tag_items = dict(tags or {})
        for k, v in tag_items.items():
            if not isinstance(k, str) or not k or not isinstance(v, str):
                raise InvalidInput(f"tag {k!r}={v!r}: keys and values must be strings")
        if run_id is not None:
            self.get_run(run_id)  # raises if unknown

        artifacts: dict[str, dict[str, Any]] = {}
        for file, entry in manifest["artifacts"].items():
            sha, size = self._store_artifact(src, file, entry)
            artifacts[file] = {**entry, "sha256": sha, "bytes": size}
            test_step_pause()
        stored_manifest = dict(manifest, name=model, artifacts=artifacts)
        created_at = utc_now()

        with self._write() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (model,)
            ).fetchone()
            version = int(row[0]) + 1
            stored_manifest["version"] = version
            for file, entry in manifest["artifacts"].items():
                # gc() may have removed a blob that was stored before we held the lock.
                if not blob_path(self._layout.blobs, entry["sha256"]).exists():
                    self._store_artifact(src, file, entry)
            final = self._layout.version_dir(model, version)
            self._materialize(final, stored_manifest)
            try:
                test_step_pause()
                conn.execute(
                    "INSERT INTO versions (name, version, status, created_at, description, run_id,"
                    " manifest) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (model, version, status, created_at, description, run_id,
                     json.dumps(stored_manifest, sort_keys=True)),
                )
                conn.executemany(
                    "INSERT INTO artifacts (name, version, file, sha256, bytes) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(model, version, f, e["sha256"], e["bytes"]) for f, e in artifacts.items()],
                )
                conn.executemany(
                    "INSERT INTO tags (name, version, key, value) VALUES (?, ?, ?, ?)",
                    [(model, version, k, v) for k, v in tag_items.items()],
                )
                self._event(conn, model, "register", new_version=version,
                            reason=f"registered from {src}")
                test_step_pause()
            except BaseException:
                remove_tree(final)
                raise
        logger.info("registered %s/%d from %s", model, version, src)
        return self.resolve(f"{model}/{version}")

    def _store_artifact(
        self, src: Path, file: str, entry: Mapping[str, Any]
    ) -> tuple[str, int]:
        path = src / file
        if not path.is_file():
            raise InvalidInput(
                f"artifact {file} listed in {MANIFEST} is missing from the bundle {src}"
            )
        expected = str(entry["sha256"]).lower()
        sha, size = self._store_blob(path)
        if sha != expected:
            raise InvalidInput(
                f"artifact {file} in {src} does not match its sha256 in {MANIFEST} (expected "
                f"{expected}, got {sha}); rebuild the bundle or fix the manifest"
            )
        if "bytes" in entry and entry["bytes"] != size:
            raise InvalidInput(
                f"artifact {file} in {src} has {size} bytes, {MANIFEST} says {entry['bytes']}"
            )
        return sha, size

    def _store_blob(self, src: Path) -> tuple[str, int]:
        """Stores the file ``src`` as a blob; ``(sha256, bytes)``."""
        return store_blob(src, self._layout.blobs, self._layout.tmp)

    def _materialize(self, final: Path, manifest: dict[str, Any]) -> None:
        """Builds the version directory under a temp name and renames it to ``final``.
        The caller holds the write lock, so an existing ``final`` has no committed row: it is
        the leftover of a crashed registration and is replaced."""
        staging = _temp_path(self._layout.tmp, "stage")
        try:
            staging.mkdir()
            (staging / MANIFEST).write_text(
                json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
            for file, entry in manifest["artifacts"].items():
                link_or_copy(blob_path(self._layout.blobs, entry["sha256"]), staging / file)
            make_tree_readonly(staging)
            test_step_pause()
            if final.exists():
                logger.warning("removing %s left by an interrupted registration", final)
                remove_tree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
        except BaseException:
            remove_tree(staging)
            raise

    def add_artifact(
        self,
        ref: str,
        source: str | os.PathLike[str],
        *,
        file: str,
        info: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> ModelVersion:
        """Adds the file ``source`` to the version ``ref`` resolves to, as artifact ``file``,
        with ``info`` (JSON) stored beside its sha256 and size in the manifest (e.g. a TensorRT
        engine with the GPU and versions it was built for).

        Artifacts are immutable: a name the version already has is refused (InvalidInput); so
        is a non-ready (archived) version. The blob is stored first; then, under the write
        lock, the file is linked into the version directory, the manifest replaced (rename, so
        readers see the old or the new one whole) and the rows committed; on any failure the
        directory is put back as it was. Safe across threads and processes."""
        self._check_writable()
        file = _artifact_name(file)
        src = Path(source)
        if not src.is_file():
            raise InvalidInput(f"artifact source {str(src)!r} is not a file")
        extra = json.loads(_json_dumps(dict(info or {}), "artifact info"))
        for key in ("sha256", "bytes"):
            extra.pop(key, None)
        mv = self.get(ref)
        sha, size = self._store_blob(src)
        with self._write() as conn:
            mv = self._resolve(conn, Ref(mv.name, version=mv.version))
            if mv.status == "archived":
                raise InvalidInput(f"{mv.ref} is archived; artifacts are added to ready versions")
            if file in mv.manifest.get("artifacts", {}):
                raise InvalidInput(
                    f"{mv.ref} already has an artifact {file!r}; artifacts are immutable: add it "
                    "under another name (e.g. model-<gpu>.plan) or register a new version"
                )
            if not blob_path(self._layout.blobs, sha).exists():  # gc() ran meanwhile
                sha, size = self._store_blob(src)
            manifest = dict(mv.manifest)
            manifest["artifacts"] = {**manifest.get("artifacts", {}),
                                     file: {**extra, "sha256": sha, "bytes": size}}
            undo = self._add_to_version_dir(mv.path, file, sha, manifest)
            try:
                conn.execute("UPDATE versions SET manifest = ? WHERE name = ? AND version = ?",
                             (json.dumps(manifest, sort_keys=True), mv.name, mv.version))
                conn.execute(
                    "INSERT INTO artifacts (name, version, file, sha256, bytes) "
                    "VALUES (?, ?, ?, ?, ?)", (mv.name, mv.version, file, sha, size))
                self._event(conn, mv.name, "artifact_add", old_version=mv.version,
                            new_version=mv.version,
                            reason=f"{file} ({sha[:12]}){': ' + reason if reason else ''}")
                test_step_pause()
            except BaseException:
                undo()
                raise
        logger.info("added artifact %s to %s/%d", file, mv.name, mv.version)
        return self.get(f"{mv.name}/{mv.version}")

    def _add_to_version_dir(self, vdir: Path, file: str, sha: str,
                            manifest: dict[str, Any]) -> Any:
        """Links blob ``sha`` into ``vdir`` as ``file`` and replaces its manifest; returns a
        function that undoes both. The caller holds the write lock."""
        target = vdir / file
        old_manifest = (vdir / MANIFEST).read_bytes()
        dirs = [vdir]
        for part in PurePosixPath(file).parent.parts:
            dirs.append(dirs[-1] / part)
        created: list[Path] = [d for d in dirs if not d.exists()]

        def writable(on: bool) -> None:
            for d in dirs:
                if d.exists():
                    os.chmod(d, 0o755 if on else 0o555)

        def undo() -> None:
            writable(True)
            try:
                target.unlink(missing_ok=True)
                replace_manifest(vdir, old_manifest)
                for d in reversed(created):
                    if d.exists():
                        d.rmdir()
            finally:
                writable(False)

        writable(True)
        try:
            if target.exists():  # a leftover of an interrupted add: no committed row names it
                target.unlink()
            link_or_copy(blob_path(self._layout.blobs, sha), target)
            writable(True)  # link_or_copy may have created folders
            replace_manifest(vdir, manifest_bytes(manifest))
        except BaseException:
            undo()
            raise
        finally:
            writable(False)
        return undo

    # ---------------------------------------------------------------- reading

    def _version_from_row(self, conn: sqlite3.Connection, row: sqlite3.Row) -> ModelVersion:
        name, version = row["name"], int(row["version"])
        manifest = json.loads(row["manifest"])
        tags = {r["key"]: r["value"] for r in conn.execute(
            "SELECT key, value FROM tags WHERE name = ? AND version = ? ORDER BY key",
            (name, version))}
        aliases = [r["alias"] for r in conn.execute(
            "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
            (name, version))]
        return ModelVersion(
            name=name, version=version, path=self._layout.version_dir(name, version),
            status=row["status"], created_at=row["created_at"], description=row["description"],
            tags=tags, aliases=aliases, metrics=dict(manifest.get("metrics") or {}),
            params=dict(manifest.get("params") or {}),
            lineage=dict(manifest.get("lineage") or {}), run_id=row["run_id"],
            manifest=manifest,
        )

    def _resolve(self, conn: sqlite3.Connection, ref: Ref) -> ModelVersion:
        versions = [(int(r["version"]), r["status"]) for r in conn.execute(
            "SELECT version, status FROM versions WHERE name = ? ORDER BY version", (ref.name,))]
        if not versions:
            names = [r[0] for r in conn.execute(
                "SELECT DISTINCT name FROM versions ORDER BY name")]
            known = ", ".join(names) if names else "none"
            raise ModelNotFound(
                f"no model named {ref.name!r} in the registry at {self.location} (registered "
                f"models: {known}); see `mlserve registry list`"
            )
        listing = ", ".join(f"{v} ({s})" for v, s in versions)
        if ref.version is not None:
            version = ref.version
            if version not in {v for v, _ in versions}:
                raise ModelNotFound(
                    f"model {ref.name!r} has no version {version} (versions: {listing})")
        elif ref.alias is not None:
            row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?",
                               (ref.name, ref.alias)).fetchone()
            if row is None:
                aliases = ", ".join(f"{r[0]} -> {r[1]}" for r in conn.execute(
                    "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias",
                    (ref.name,))) or "none"
                raise ModelNotFound(
                    f"model {ref.name!r} has no alias {ref.alias!r} (aliases: {aliases}); set "
                    f"one with `mlserve registry alias {ref.name} VERSION {ref.alias}`"
                )
            version = int(row[0])
        else:
            ready = [v for v, s in versions if s == "ready"]
            if not ready:
                raise ModelNotFound(
                    f"model {ref.name!r} has no ready version (versions: {listing}); "
                    f"name one explicitly, e.g. {ref.name}/{versions[-1][0]}"
                )
            version = ready[-1]
        row = conn.execute("SELECT * FROM versions WHERE name = ? AND version = ?",
                           (ref.name, version)).fetchone()
        return self._version_from_row(conn, row)

    def get(self, ref: str) -> ModelVersion:
        """The version ``ref`` names, as a record. The same as :meth:`resolve` here; on a
        registry in object storage its files are not fetched (``path`` may not exist yet)."""
        parsed = parse_ref(ref)
        with self._read() as conn:
            return self._resolve(conn, parsed)

    def resolve(self, ref: str) -> ModelVersion:
        """``NAME`` (latest ready), ``NAME/3`` or ``NAME@alias``; unknown → ModelNotFound.
        ``path`` is the version's bundle directory, ready for a loader."""
        return self.get(ref)

    def open(self, ref: str) -> ModelVersion:
        """Resolves ``ref`` and verifies its files' checksums before a loader uses them."""
        mv = self.resolve(ref)
        mv.verify()
        return mv

    def list_models(self) -> list[ModelSummary]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, COUNT(*) AS n, MAX(CASE WHEN status = 'ready' THEN version END) "
                "AS latest, MAX(created_at) AS updated FROM versions GROUP BY name ORDER BY name"
            ).fetchall()
            out = []
            for r in rows:
                aliases = {a["alias"]: int(a["version"]) for a in conn.execute(
                    "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias",
                    (r["name"],))}
                out.append(ModelSummary(
                    name=r["name"], versions=int(r["n"]),
                    latest_ready=None if r["latest"] is None else int(r["latest"]),
                    aliases=aliases, updated_at=r["updated"]))
            return out

    def list_versions(self, name: str) -> list[ModelVersion]:
        with self._read() as conn:
            self._resolve_model(conn, name)
            rows = conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version",
                                (name,)).fetchall()
            return [self._version_from_row(conn, r) for r in rows]

    def _resolve_model(self, conn: sqlite3.Connection, name: str) -> None:
        check_name(name)
        if conn.execute("SELECT 1 FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone():
            return
        self._resolve(conn, Ref(name))  # raises ModelNotFound listing the models

    # ---------------------------------------------------------------- changing

    @staticmethod
    def _event(conn: sqlite3.Connection, name: str, kind: str, *, alias: str | None = None,
               old_version: int | None = None, new_version: int | None = None,
               reason: str = "") -> None:
        conn.execute(
            "INSERT INTO events (name, at, kind, alias, old_version, new_version, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, utc_now(), kind, alias, old_version, new_version, reason),
        )

    def set_alias(self, name: str, alias: str, version: int, reason: str = "") -> ModelVersion:
        """Points ``name@alias`` at ``version`` (recorded in the history with ``reason``)."""
        check_alias(alias)
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput(f"version must be an integer, got {version!r}")
        with self._write() as conn:
            target = self._resolve(conn, Ref(check_name(name), version=version))
            if target.status == "archived":
                raise InvalidInput(
                    f"{target.ref} is archived; an alias must point at a ready version")
            row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?",
                               (name, alias)).fetchone()
            old = None if row is None else int(row[0])
            conn.execute(
                "INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
                "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
                (name, alias, version))
            self._event(conn, name, "alias_set", alias=alias, old_version=old,
                        new_version=version, reason=reason)
            return self._resolve(conn, Ref(name, version=version))

    def delete_alias(self, name: str, alias: str, reason: str = "") -> None:
        check_alias(alias)
        with self._write() as conn:
            self._resolve(conn, Ref(check_name(name), alias=alias))  # raises if unknown
            row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?",
                               (name, alias)).fetchone()
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            self._event(conn, name, "alias_delete", alias=alias, old_version=int(row[0]),
                        reason=reason)

    def archive(self, ref: str, reason: str = "") -> ModelVersion:
        """Marks a version archived: ``NAME`` no longer resolves to it. Refused while an alias
        points at it (move the alias first)."""
        parsed = parse_ref(ref)
        with self._write() as conn:
            mv = self._resolve(conn, parsed)
            if mv.aliases:
                raise InvalidInput(
                    f"{mv.ref} is the target of alias(es) {', '.join(mv.aliases)}; move or "
                    "delete them first (`mlserve registry alias ...`)")
            conn.execute("UPDATE versions SET status = 'archived' WHERE name = ? AND version = ?",
                         (mv.name, mv.version))
            self._event(conn, mv.name, "archive", old_version=mv.version,
                        new_version=mv.version, reason=reason or f"was {mv.status}")
            return self._resolve(conn, Ref(mv.name, version=mv.version))

    def set_status(self, ref: str, status: str, reason: str = "") -> ModelVersion:
        """Sets a version's status (``ready``, ``pending`` or ``archived``)."""
        if status == "archived":
            return self.archive(ref, reason)
        if status not in STATUSES:
            raise InvalidInput(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        parsed = parse_ref(ref)
        with self._write() as conn:
            mv = self._resolve(conn, parsed)
            conn.execute("UPDATE versions SET status = ? WHERE name = ? AND version = ?",
                         (status, mv.name, mv.version))
            self._event(conn, mv.name, "status", old_version=mv.version,
                        new_version=mv.version, reason=reason or f"{mv.status} -> {status}")
            return self._resolve(conn, Ref(mv.name, version=mv.version))

    def set_tag(self, ref: str, key: str, value: str) -> ModelVersion:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidInput(f"tag {key!r}={value!r}: keys and values must be strings")
        parsed = parse_ref(ref)
        with self._write() as conn:
            mv = self._resolve(conn, parsed)
            conn.execute(
                "INSERT INTO tags (name, version, key, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
                (mv.name, mv.version, key, value))
            self._event(conn, mv.name, "tag_set", old_version=mv.version,
                        new_version=mv.version, reason=f"{key}={value}")
            return self._resolve(conn, Ref(mv.name, version=mv.version))

    def delete_tag(self, ref: str, key: str) -> ModelVersion:
        parsed = parse_ref(ref)
        with self._write() as conn:
            mv = self._resolve(conn, parsed)
            if key not in mv.tags:
                raise InvalidInput(f"{mv.ref} has no tag {key!r} (tags: "
                                   f"{', '.join(mv.tags) or 'none'})")
            conn.execute("DELETE FROM tags WHERE name = ? AND version = ? AND key = ?",
                         (mv.name, mv.version, key))
            self._event(conn, mv.name, "tag_delete", old_version=mv.version,
                        new_version=mv.version, reason=key)
            return self._resolve(conn, Ref(mv.name, version=mv.version))

    def set_description(self, ref: str, description: str) -> ModelVersion:
        parsed = parse_ref(ref)
        with self._write() as conn:
            mv = self._resolve(conn, parsed)
            conn.execute("UPDATE versions SET description = ? WHERE name = ? AND version = ?",
                         (description, mv.name, mv.version))
            self._event(conn, mv.name, "description", old_version=mv.version,
                        new_version=mv.version, reason=description)
            return self._resolve(conn, Ref(mv.name, version=mv.version))

    def history(self, name: str) -> list[HistoryEvent]:
        """Every registration, alias move, archive, tag and description change, oldest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM events WHERE name = ? ORDER BY id",
                                (name,)).fetchall()
            if not rows:
                self._resolve_model(conn, name)
            return [HistoryEvent(name=r["name"], at=r["at"], kind=r["kind"], alias=r["alias"],
                                 old_version=r["old_version"], new_version=r["new_version"],
                                 reason=r["reason"]) for r in rows]

    # ---------------------------------------------------------------- runs

    def log_run(self, params: Mapping[str, Any], metrics: Mapping[str, Any], *,
                name: str | None = None, parent_run: str | None = None) -> str:
        """Records a training run; returns its id (pass it to ``register(run_id=...)``)."""
        if name is not None:
            check_name(name)
        params_json = _json_dumps(dict(params), "params")
        metrics_json = _json_dumps(dict(metrics), "metrics")
        run_id = uuid.uuid4().hex
        with self._write() as conn:
            if parent_run is not None and conn.execute(
                    "SELECT 1 FROM runs WHERE run_id = ?", (parent_run,)).fetchone() is None:
                raise InvalidInput(f"parent run {parent_run!r} is not in the registry")
            conn.execute("INSERT INTO runs (run_id, name, created_at, params, metrics, "
                         "parent_run) VALUES (?, ?, ?, ?, ?, ?)",
                         (run_id, name, utc_now(), params_json, metrics_json, parent_run))
        return run_id

    def _run_from_row(self, conn: sqlite3.Connection, row: sqlite3.Row) -> Run:
        versions = [f"{r[0]}/{r[1]}" for r in conn.execute(
            "SELECT name, version FROM versions WHERE run_id = ? ORDER BY name, version",
            (row["run_id"],))]
        return Run(run_id=row["run_id"], name=row["name"], created_at=row["created_at"],
                   params=json.loads(row["params"]), metrics=json.loads(row["metrics"]),
                   parent_run=row["parent_run"], versions=versions)

    def get_run(self, run_id: str) -> Run:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ModelNotFound(f"no run {run_id!r} in the registry at {self.location}; "
                                    "list runs with Registry.runs()")
            return self._run_from_row(conn, row)

    def runs(self, name: str | None = None) -> list[Run]:
        with self._read() as conn:
            if name is None:
                rows = conn.execute("SELECT * FROM runs ORDER BY created_at, rowid").fetchall()
            else:
                rows = conn.execute("SELECT * FROM runs WHERE name = ? ORDER BY created_at, "
                                    "rowid", (name,)).fetchall()
            return [self._run_from_row(conn, r) for r in rows]

    # ---------------------------------------------------------------- maintenance, transfer

    def verify(self, repair: bool = False) -> list[str]:
        """Problems found: missing/corrupt blobs or version files, dangling aliases, leftovers of
        interrupted writes. With ``repair``, leftovers and dangling aliases are removed, and a
        version whose mlserve.json differs from its registered manifest (an ``add_artifact``
        killed before its commit) gets the registered one back, without the uncommitted file
        (those messages end in "(repaired...)")."""
        # Under the write lock: checked from a read snapshot, a registration committing
        # meanwhile looks like a leftover directory. A read-only registry can only be read.
        with (self._read() if self.read_only and not repair else self._write()) as conn:
            return _maintenance.check(conn, self._layout, repair=repair)

    def gc(self) -> list[str]:
        """Removes leftovers of interrupted writes and unreferenced blobs; returns what went."""
        with self._write() as conn:
            return _maintenance.remove_leftovers(conn, self._layout)

    def copy_to(self, dest: str | os.PathLike[str] | Registry,
                progress: Any = None) -> tuple[Registry, dict[str, int]]:
        """Copies this whole registry (every version and artifact, aliases, tags, runs, the
        history) into the empty registry at ``dest``: a directory or ``s3://BUCKET/PREFIX``
        (moving a registry onto shared storage, or a shared one onto a machine). Returns the
        destination and counts (models, versions, runs, events, blobs, bytes). ``progress``:
        ``progress(done_bytes, total_bytes)``. A destination holding anything is refused."""
        from ._copy import check_destination, copy_registry

        if not isinstance(dest, Registry):
            check_destination(self, dest)
        target = dest if isinstance(dest, Registry) else Registry(dest)
        return target, copy_registry(self, target, progress)

    def export(self, ref: str, tar_path: str | os.PathLike[str]) -> Path:
        """Writes a verified version as a tar of mlserve.json + artifacts."""
        mv = self.open(ref)
        return _tar.write_bundle_tar(mv.path, [MANIFEST, *mv.artifacts], Path(tar_path))

    def import_bundle(self, tar_path: str | os.PathLike[str], *,
                      name: str | None = None) -> ModelVersion:
        """Registers the bundle in a tar written by ``export`` (extracted safely: regular files
        with relative paths only)."""
        self._check_writable()
        staging = _temp_path(self._layout.tmp, "import")
        try:
            _tar.extract_bundle_tar(Path(tar_path), staging)
            manifest_path = staging / MANIFEST
            manifest = _read_manifest(staging)
            lineage = manifest.get("lineage")
            manifest["lineage"] = dict(lineage if isinstance(lineage, dict) else {},
                                       imported=True)
            manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            return self.register(staging, name=name,
                                 description=f"imported from {Path(tar_path).name}")
        finally:
            remove_tree(staging)
