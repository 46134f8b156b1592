"""A registry on object storage (``s3://BUCKET/PREFIX``), shared by the machines that train and
the machines that serve: the same :class:`~mlserve.registry.Registry` interface, with the
object store as the single source of truth and a local cache for reading.

Layout under the prefix::

    registry.db          the registry's SQLite database: one object, replaced whole
    blobs/ab/abcdef...   artifact bytes, content-addressed (sha256), never changed

Writes are optimistic transactions on that one object (:mod:`mlserve._shareddb`, which the
shared feature store's definitions use too). A change (register, alias, tag, ...)
downloads the current ``registry.db`` with its ETag, applies the change to a private copy with
the local registry's own SQL, uploads the blobs the change references that the store lacks, and
then replaces ``registry.db`` with a conditional PUT (``If-Match`` the ETag read; ``If-None-Match:
*`` for the first one). When another writer got there first the PUT fails with 412 and the
whole change runs again on the new state, so concurrent writers on any number of machines never
lose an update and version numbers stay unique. This needs a store with S3's conditional
writes (AWS S3 since 2024, MinIO, SeaweedFS, R2). A change is visible to readers the moment its
PUT succeeds; blobs it uploaded before a lost race are unreferenced and removed by ``gc``.
Each change also writes a unique id into ``remote_commits``: a PUT that fails ambiguously (its
answer lost, botocore's retry answered 412) counts as committed when the id is in the store's
database, so no change is applied twice. Blobs carry their sha256 as metadata; a change renews
the old blobs it references (a copy onto itself) so that a concurrent ``gc`` leaves them.

Reads fetch ``registry.db`` only when its ETag changed (one conditional GET per call) into
``<cache>/snapshots/<etag>-<schema>.db``, an immutable file every process on the machine shares.
``resolve``/``open`` download a version's blobs once into ``<cache>/blobs`` (checking their
sha256) and hardlink them into ``<cache>/models/NAME/VERSION-<manifest digest>``, the read-only
bundle directory loaders open. The directory is named by the manifest's digest, so a version
whose manifest changes (``add_artifact``) gets a new directory and no reader sees a half-changed
one. ``ModelVersion.path`` of a version that was listed but not resolved may not exist yet.

The cache is ``$MLSERVE_REGISTRY_CACHE`` or ``$MLSERVE_HOME/cache/registry``; it is safe to
share between processes (every file is written to a temp name and renamed) and to delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mlserve._objectstore import ObjectInfo, S3Store, cache_dir_for, normalize_uri
from mlserve._shareddb import SNAPSHOT_KEEP_S, Conflict, SharedDatabase
from mlserve._tempfiles import temp_owner_alive, touch
from mlserve._tempfiles import temp_path as _temp_path
from mlserve.bundle import MANIFEST, sha256_file
from mlserve.errors import InvalidInput, Unavailable

from . import _db
from ._files import (
    Layout,
    blob_path,
    link_or_copy,
    make_tree_readonly,
    manifest_bytes,
    remove_tree,
)
from ._settings import CACHE_ENV, default_cache_root, default_location
from .records import ModelVersion
from .registry import Registry

__all__ = ["GC_GRACE_S", "SNAPSHOT_KEEP_S", "RemoteRegistry"]

logger = logging.getLogger(__name__)

DB_OBJECT = "registry.db"
#: Unreferenced remote blobs younger than this are left by ``gc``: they may belong to a change
#: that has uploaded its blobs and not yet committed ``registry.db``.
GC_GRACE_S = 3600.0
#: Another writer's commit won (:class:`mlserve._shareddb.Conflict`); ``copy`` catches it.
_Conflict = Conflict

T = TypeVar("T")


def _blob_object(sha: str) -> str:
    return f"blobs/{sha[:2]}/{sha}"


def _artifact_shas(db: Path | None) -> dict[str, int]:
    """sha256 -> bytes of every artifact a registry database references."""
    if db is None:
        return {}
    with _db.read_transaction(db, read_only=True) as conn:
        return {r[0]: int(r[1]) for r in conn.execute(
            "SELECT sha256, MAX(bytes) FROM artifacts GROUP BY sha256")}


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """What names a version's cache directory: a changed manifest gets a new one."""
    return hashlib.sha256(manifest_bytes(manifest)).hexdigest()[:16]


def _blob_whole(info: ObjectInfo | None, sha: str, size: int) -> bool:
    """Whether a blob's HEAD shows it whole, as the registry wrote it (size, sha256 on it)."""
    return info is not None and info.size == size and info.metadata.get("sha256") == sha


def _age_s(info: ObjectInfo) -> float:
    return float(datetime.now(timezone.utc).timestamp() - info.last_modified.timestamp())


def _check_database(conn: sqlite3.Connection) -> str | None:
    """What makes a downloaded ``registry.db`` not a registry's (None: it is one)."""
    missing = _db.missing_columns(conn)
    return f"it lacks {', '.join(missing[:5])}" if missing else None


def _retrying(method: Callable[..., T]) -> Callable[..., T]:
    """Runs a changing method again, on the new state, whenever its commit lost the race."""

    @functools.wraps(method)
    def wrapper(self: RemoteRegistry, *args: Any, **kwargs: Any) -> T:
        if getattr(self._tls, "stored", None) is not None:
            return method(self, *args, **kwargs)  # nested (set_status -> archive)
        self._tls.stored = set()  # blobs this change stores (register, add_artifact)
        try:
            return self._db.transact(lambda: method(self, *args, **kwargs),
                                     f"{method.__name__} on the registry at {self.location}")
        finally:
            self._tls.stored = None

    return wrapper


class RemoteRegistry(Registry):
    """A :class:`Registry` whose truth lives in object storage; see the module docstring.
    ``Registry("s3://BUCKET/PREFIX")`` makes one. ``cache_dir``: where this machine keeps its
    copies (default ``$MLSERVE_REGISTRY_CACHE`` or ``$MLSERVE_HOME/cache/registry``).
    ``read_only``: refuse every change (reading needs only ``s3:GetObject``/``ListBucket``)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 read_only: bool | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        uri = normalize_uri(root if root is not None else default_location())
        self._store = S3Store(uri)
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        #: The cache folder given (or the default); ``root`` is this registry's folder in it.
        self.cache_base = base
        self.root = cache_dir_for(uri, base)
        self._layout = Layout(self.root)
        self._snapshots = self.root / "snapshots"
        try:
            for d in (self._layout.blobs, self._layout.models, self._layout.tmp,
                      self._snapshots):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"the cache of the registry at {uri} cannot be made at {self.root} ({exc}); "
                f"set {CACHE_ENV} (or MLSERVE_HOME) to a writable directory") from None
        self.read_only = bool(read_only)
        self._uri = uri
        self._db = SharedDatabase(self._store, DB_OBJECT, self._snapshots, self._layout.tmp,
                                  schema=lambda: _db._SCHEMA, check=_check_database,
                                  what="registry")
        self._tls = threading.local()

    @property
    def location(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"Registry({self._uri!r})"

    @property
    def conflicts(self) -> int:
        """Commits that lost the race to another writer and ran again (for logs and tests)."""
        return self._db.conflicts

    # ------------------------------------------------------------------ reading

    def _pull(self) -> tuple[str | None, Path]:
        """The newest registry.db: ``(etag, local snapshot)``; see :meth:`SharedDatabase.pull`."""
        return self._db.pull()

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    def _version_dir(self, name: str, version: int, manifest: dict[str, Any]) -> Path:
        return self._layout.models / name / f"{version}-{_manifest_digest(manifest)}"

    def _version_from_row(self, conn: sqlite3.Connection, row: sqlite3.Row) -> ModelVersion:
        mv = super()._version_from_row(conn, row)
        return dataclasses.replace(mv, path=self._version_dir(mv.name, mv.version,
                                                              mv.manifest))

    def resolve(self, ref: str) -> ModelVersion:
        """As :meth:`Registry.resolve`; the version's files are fetched into the cache (once)
        so that ``path`` is a bundle directory a loader can open."""
        mv = self.get(ref)
        self._fetch(mv)
        return mv

    def _fetch_blob(self, sha: str) -> Path:
        path = blob_path(self._layout.blobs, sha)
        if path.is_file():
            touch(path)
            return path
        tmp = _temp_path(self._layout.tmp, "blob")
        try:
            if self._store.download(
                    _blob_object(sha), tmp, sha256=sha,
                    repair_hint="run `mlserve registry verify` and re-register the version "
                    "from its bundle") is None:
                raise InvalidInput(
                    f"{self._store.url(_blob_object(sha))} is missing: the registry at "
                    f"{self._uri} references it; run `mlserve registry verify --registry "
                    f"{self._uri}`")
            os.chmod(tmp, 0o444)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _fetch(self, mv: ModelVersion) -> None:
        """Builds ``mv.path`` from the blobs (downloading the missing ones), under a temp name
        renamed into place: readers see the whole directory or none."""
        if mv.path.is_dir():
            touch(mv.path)  # in use: the cache's gc goes by this time
            return
        total = sum(int(e.get("bytes", 0)) for e in mv.artifacts.values())
        logger.info("fetching %s (%d files, %.1f MB) from %s", mv.ref, len(mv.artifacts),
                    total / 1e6, self._uri)
        blobs = {file: self._fetch_blob(str(e["sha256"])) for file, e in mv.artifacts.items()}
        staging = _temp_path(self._layout.tmp, "stage")
        try:
            staging.mkdir()
            (staging / MANIFEST).write_bytes(manifest_bytes(mv.manifest))
            for file, blob in blobs.items():
                link_or_copy(blob, staging / file)
            make_tree_readonly(staging)
            mv.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, mv.path)
            except OSError:
                if not mv.path.is_dir():  # not another process that built it first
                    raise
        finally:
            remove_tree(staging)

    # ------------------------------------------------------------------ changing

    def _store_blob(self, src: Path) -> tuple[str, int]:
        sha, size = super()._store_blob(src)
        stored = getattr(self._tls, "stored", None)
        if stored is not None:  # checked in the store by _push even if already referenced
            stored.add(sha)
        return sha, size

    def _materialize(self, final: Path, manifest: dict[str, Any]) -> None:
        """Version directories are built on first read (:meth:`_fetch`), not at commit."""

    def _add_to_version_dir(self, vdir: Path, file: str, sha: str,
                            manifest: dict[str, Any]) -> Any:
        """The new manifest gets a directory of its own on first read; nothing to change."""
        return lambda: None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One optimistic transaction on registry.db (:meth:`SharedDatabase.change`): the
        caller changes a copy, the blobs it references are checked in the store (uploaded
        where missing) and the copy is put back if nobody else did first (else
        :class:`_Conflict`, which :func:`_retrying` answers by running the change again)."""
        self._check_writable()
        checked: dict[str, int] = {}

        def before_put(work: Path, base: Path | None) -> None:
            checked.update(self._push_blobs(work, base))

        def after_put() -> None:
            for sha in checked:  # a gc that ran meanwhile may have taken one
                if self._store.head(_blob_object(sha)) is None:
                    self._upload_blob(sha)

        with self._db.change(before_put=before_put, after_put=after_put) as conn:
            yield conn

    def _push_blobs(self, work: Path, base: Path | None) -> dict[str, int]:
        """Makes the store hold every blob the changed database ``work`` references anew (or
        that this change stored itself: registering again repairs a blob lost from the store);
        returns those it checked."""
        before = _artifact_shas(base)
        stored = getattr(self._tls, "stored", None) or set()
        check = {sha: size for sha, size in _artifact_shas(work).items()
                 if sha not in before or sha in stored}
        for sha in check:
            touch(blob_path(self._layout.blobs, sha))  # in use: the cache's gc leaves it
        stored_as = {sha: self._store.head(_blob_object(sha)) for sha in check}
        for sha, size in check.items():
            if not _blob_whole(stored_as[sha], sha, size):
                self._upload_blob(sha)
                stored_as[sha] = None  # just written: young
        # Last, right before the commit, renew the old blobs it newly references: a gc that
        # listed one as an old orphan then sees it young when it looks again before deleting.
        for sha, info in stored_as.items():
            if info is not None and sha not in before:
                self._renew_blob(sha, info)
        return check

    def _blob_ok(self, sha: str, size: int) -> bool:
        """Whether the store has blob ``sha`` whole, as the registry wrote it."""
        return _blob_whole(self._store.head(_blob_object(sha)), sha, size)

    def _renew_blob(self, sha: str, info: ObjectInfo) -> None:
        """Renews stored blob ``sha`` (``info``: its HEAD) when it is older than half the gc
        grace period (a copy onto itself), so that a gc running now does not take it as an old
        orphan while this change commits a reference to it; uploaded again where that fails
        (gone meanwhile, a store that cannot copy it)."""
        if _age_s(info) <= GC_GRACE_S / 2:
            return
        try:
            self._store.touch(_blob_object(sha), {"sha256": sha})
        except (Unavailable, InvalidInput):
            self._upload_blob(sha)

    def _upload_blob(self, sha: str) -> None:
        """Uploads blob ``sha`` from where this change has its bytes: a source it named
        (``_tls.sources``, a copy from another registry), else this machine's cache."""
        sources = getattr(self._tls, "sources", None) or {}
        if sha in sources:
            local = sources[sha]()
        else:
            local = blob_path(self._layout.blobs, sha)
            if not local.is_file():
                raise InvalidInput(
                    f"blob {sha} must be uploaded (missing from the store, or not renewable "
                    f"there) but this machine does not have its bytes in "
                    f"{self._layout.blobs}: register the bundle again")
        self._store.upload(_blob_object(sha), local, metadata={"sha256": sha})

    register = _retrying(Registry.register)
    add_artifact = _retrying(Registry.add_artifact)
    set_alias = _retrying(Registry.set_alias)
    delete_alias = _retrying(Registry.delete_alias)
    archive = _retrying(Registry.archive)
    set_status = _retrying(Registry.set_status)
    set_tag = _retrying(Registry.set_tag)
    delete_tag = _retrying(Registry.delete_tag)
    set_description = _retrying(Registry.set_description)
    log_run = _retrying(Registry.log_run)

    # ------------------------------------------------------------------ maintenance

    def verify(self, repair: bool = False) -> list[str]:
        """Problems of the store: blobs the registry references that are missing there, of the
        wrong size, or not written by a registry (no sha256 of theirs, or another); and of this
        machine's cache: blobs or version directories whose bytes no longer match their
        sha256. ``repair`` uploads a store blob again where this machine's cache has its
        bytes (checked), and removes damaged cache entries (downloaded again on use); a blob
        that no machine has needs its version registered again from the bundle."""
        _, snapshot = self._pull()
        problems: list[str] = []
        for sha, size in sorted(_artifact_shas(snapshot).items()):
            url = self._store.url(_blob_object(sha))
            info = self._store.head(_blob_object(sha))
            if info is None:
                problem = f"{url} is missing"
            elif info.size != size:
                problem = f"{url} has {info.size} bytes, the registry expects {size}"
            elif info.metadata.get("sha256") != sha:
                problem = f"{url} was not written by the registry (its sha256 is not on it)"
            else:
                continue
            local = blob_path(self._layout.blobs, sha)
            if repair and not self.read_only and local.is_file() and sha256_file(local) == sha:
                self._upload_blob(sha)
                problem += ": uploaded again from this machine's cache (repaired)"
            problems.append(problem)
        for blob in sorted(self._layout.blobs.glob("*/*")):
            if blob.is_file() and sha256_file(blob) != blob.name:
                problems.append(self._drop(blob, "cached blob", repair))
        for vdir in sorted(self._layout.models.glob("*/*")):
            if vdir.is_dir() and not self._cache_entry_intact(vdir):
                problems.append(self._drop(vdir, "cached version directory", repair))
        return problems

    def _cache_entry_intact(self, vdir: Path) -> bool:
        try:
            manifest = json.loads((vdir / MANIFEST).read_text(encoding="utf-8"))
            return vdir.name.endswith(_manifest_digest(manifest)) and all(
                sha256_file(vdir / f) == e["sha256"] for f, e in manifest["artifacts"].items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    @staticmethod
    def _drop(path: Path, what: str, repair: bool) -> str:
        if repair:
            remove_tree(path)
            return f"{what} {path} was damaged and is removed, to be downloaded again (repaired)"
        return f"{what} {path} is damaged"

    def gc(self, grace_s: float = GC_GRACE_S) -> list[str]:
        """Removes blobs of the store that no committed version references and that are older
        than ``grace_s`` (a younger one may belong to a change about to commit; a change renews
        the old blobs it references), and this machine's cache entries unused for ``grace_s``
        that the registry no longer needs (old snapshots, directories of a manifest since
        changed, unreferenced blobs, temp files of dead processes). A read-only registry
        cleans only the cache (read-only serving machines run it too). Returns what went."""
        removed: list[str] = []
        cutoff = time.time() - grace_s
        if not self.read_only:
            listing = list(self._store.list("blobs/"))
            # The references are read after the listing: a blob listed as unreferenced was so
            # when the listing had already started.
            etag, snapshot = self._pull()
            if etag is None and listing:
                raise InvalidInput(
                    f"{self._store.url(DB_OBJECT)} is missing but {len(listing)} blob(s) are "
                    "there: gc would delete them all. Restore registry.db (e.g. from the "
                    "bucket's versioning), or delete the prefix yourself")
            refs: dict[Path, dict[str, int]] = {}

            def refs_of(db: Path) -> dict[str, int]:
                if db not in refs:
                    refs[db] = _artifact_shas(db)
                return refs[db]

            for obj in listing:
                sha = obj.key.rsplit("/", 1)[-1]
                if sha in refs_of(snapshot) or obj.last_modified.timestamp() >= cutoff:
                    continue
                # Just before deleting: renewed by a change since the listing, or referenced
                # by a commit since (a conditional GET, a download only when it changed)?
                info = self._store.head(obj.key)
                now_etag, now = self._pull()
                if now_etag is None:
                    raise InvalidInput(f"{self._store.url(DB_OBJECT)} went missing during gc; "
                                       f"it stopped after removing {len(removed)} blob(s)")
                if info is not None and info.last_modified.timestamp() < cutoff \
                        and sha not in refs_of(now):
                    self._store.delete(obj.key)
                    removed.append(self._store.url(obj.key))
        _, snapshot = self._pull()
        referenced = _artifact_shas(snapshot)
        with _db.read_transaction(snapshot, read_only=True) as conn:
            current = {self._version_from_row(conn, r).path
                       for r in conn.execute("SELECT * FROM versions")}

        def unused(path: Path) -> bool:
            try:
                return path.stat().st_mtime < cutoff
            except OSError:
                return False

        for vdir in self._layout.models.glob("*/*"):
            if vdir not in current and unused(vdir):
                remove_tree(vdir)
                removed.append(str(vdir))
        for blob in self._layout.blobs.glob("*/*"):
            if blob.name not in referenced and unused(blob):
                blob.unlink(missing_ok=True)
                removed.append(str(blob))
        for entry in self._layout.tmp.iterdir():
            if not temp_owner_alive(entry):
                remove_tree(entry)
                removed.append(str(entry))
        self._db.prune(snapshot)
        return removed
