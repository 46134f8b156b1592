"""A feature store on object storage (``s3://BUCKET/PREFIX``), shared by the machines that
define and ingest features, the machines that train on them and the machines that serve them:
the same :class:`~mlserve.features.FeatureStore` interface, with the object store as the single
source of truth for definitions and offline data, and a local cache for reading.

Layout under the prefix::

    definitions.db                          the definitions' SQLite database: one object,
                                            replaced whole by optimistic transactions
    offline/VIEW/vN/part-<number>-<token>.parquet   offline parts, immutable

Definitions: ``apply`` runs the local registry's own SQL on a copy of ``definitions.db`` and puts
it back with a conditional PUT, again on the new state when another writer won
(:mod:`mlserve._shareddb`, as the shared model registry's ``registry.db``). Version numbers stay
unique with any number of writers, and reads cost one conditional GET.

Offline data: an ingestion writes its part locally, then creates the object with
``If-None-Match: *`` (an existing name is never replaced) and the part's sha256 as metadata. Its
number is the ingest time in ns, past the newest listed part's, so name order is ingestion order
as on a local store; two machines ingesting at the same moment get distinct names whose order
is theirs. Readers list the view's parts and download each new one once into
``<cache>/offline/VIEW/vN/`` (sha256 checked), where the local :class:`.offline.OfflineStore`
reads them: point-in-time joins and materialization run unchanged on exactly the listed parts.
Incremental materialization records the part names it covered, so a part that appears later
with an earlier number is still taken.

The online store stays per machine: an LMDB environment in ``<cache>/online``, filled by
``materialize`` on that machine (the serving machines run it, e.g. on a schedule), since LMDB is
a memory-mapped file and its reads are the serving hot path.

The cache is ``$MLSERVE_FEATURE_STORE_CACHE`` or ``$MLSERVE_HOME/cache/features``; it is safe to
share between processes (files are written to temp names and renamed). Deleting it loses only
the online store of that machine, which ``materialize`` rebuilds.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from mlserve._objectstore import ObjectInfo, PreconditionFailed, S3Store, cache_dir_for
from mlserve._shareddb import SharedDatabase
from mlserve._tempfiles import temp_path, touch
from mlserve.bundle import sha256_file
from mlserve.errors import InvalidInput

from .definitions import FeatureView
from .offline import OfflineStore, is_part, next_part_number, part_name, write_part
from .registry import FeatureRegistry, missing_table, schema

DB_OBJECT = "definitions.db"
OFFLINE_PREFIX = "offline"
#: Ingestions whose part name was taken meanwhile (a token collision) before one gives up.
_NAME_ATTEMPTS = 5
T = TypeVar("T")


class SharedFeatureStorage:
    """The object-storage side of one shared feature store and this machine's cache of it
    (``root``: ``<cache base>/<bucket>/<prefix>-<hash>``)."""

    def __init__(self, uri: str, cache_base: Path) -> None:
        self.store = S3Store(uri, what="a feature store")
        self.uri = self.store.uri
        self.root = cache_dir_for(self.uri, cache_base)
        self.tmp = self.root / "tmp"
        snapshots = self.root / "snapshots"
        try:
            for d in (self.tmp, snapshots, self.root / "offline"):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"the cache of the feature store at {self.uri} cannot be made at {self.root} "
                f"({exc}); set MLSERVE_FEATURE_STORE_CACHE (or MLSERVE_HOME) to a writable "
                "directory") from None
        self.db = SharedDatabase(self.store, DB_OBJECT, snapshots, self.tmp, schema=schema,
                                 check=missing_table, what="feature definitions")

    def registry(self) -> RemoteFeatureRegistry:
        return RemoteFeatureRegistry(self.db)

    def offline(self) -> RemoteOfflineStore:
        return RemoteOfflineStore(self.store, self.root / "offline", self.tmp)


class RemoteFeatureRegistry(FeatureRegistry):
    """The definitions registry on ``definitions.db`` in object storage (same SQL, same
    rules: see :class:`.registry.FeatureRegistry`)."""

    def __init__(self, db: SharedDatabase) -> None:  # no local file to initialize
        self._db = db
        self.path = db.snapshots

    @property
    def location(self) -> str:
        return self._db.url

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.change()

    def _transact(self, fn: Callable[[], T], what: str) -> T:
        return self._db.transact(fn, what)


class RemoteOfflineStore(OfflineStore):
    """Offline parts as immutable objects, read through local copies under ``root``."""

    def __init__(self, store: S3Store, root: Path, tmp: Path) -> None:
        super().__init__(root)
        self.store = store
        self.tmp = tmp

    def _prefix(self, view: FeatureView) -> str:
        return f"{OFFLINE_PREFIX}/{self.view_dir(view).relative_to(self.root).as_posix()}/"

    def _listing(self, view: FeatureView) -> list[ObjectInfo]:
        prefix = self._prefix(view)
        return sorted((o for o in self.store.list(prefix)
                       if "/" not in o.key[len(prefix):] and is_part(o.key[len(prefix):])),
                      key=lambda o: o.key)

    def parts(self, view: FeatureView) -> list[Path]:
        """The view version's parts in the store, in ingestion order, as local copies (each
        new one downloaded once, its sha256 checked)."""
        d = self.view_dir(view)
        out = []
        for obj in self._listing(view):
            local = d / obj.key.rsplit("/", 1)[-1]
            try:
                cached = local.stat().st_size == obj.size
            except OSError:
                cached = False
            if cached:
                touch(local)
            else:
                self._download(obj, local)
            out.append(local)
        return out

    def _download(self, obj: ObjectInfo, local: Path) -> None:
        info = self.store.head(obj.key)
        tmp = temp_path(self.tmp, "part.parquet")
        url = self.store.url(obj.key)
        try:
            # A part written by mlserve carries its sha256; one put there by hand is taken as
            # it is (its schema is checked when read).
            sha = info.metadata.get("sha256") if info is not None else None
            if info is None or self.store.download(
                    obj.key, tmp, sha256=sha,
                    repair_hint="delete that object and ingest its data again "
                    "(`mlserve features ingest`)") is None:
                raise InvalidInput(f"{url} was listed but is gone: someone deleted it while it "
                                   "was read; run the command again")
            os.chmod(tmp, 0o444)
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def import_part(self, view: FeatureView, src: Path) -> bool:
        """As :meth:`.offline.OfflineStore.import_part`: the object is created only if its
        name is free (a part there already with the same sha256 is kept: False)."""
        key = self._prefix(view) + src.name
        sha = sha256_file(src)
        for _ in range(2):
            info = self.store.head(key)
            if info is not None:
                if info.metadata.get("sha256") == sha and info.size == src.stat().st_size:
                    return False
                raise InvalidInput(f"{self.store.url(key)} exists with other bytes than {src}: "
                                   "not a copy of the same store")
            try:
                self.store.put(key, src, metadata={"sha256": sha})
                return True
            except PreconditionFailed:
                continue  # written meanwhile (another copy): compare with it
        raise InvalidInput(f"{self.store.url(key)} keeps changing; run the copy again")

    def append(self, view: FeatureView, table: pa.Table) -> Path:
        """Uploads ``table`` (already validated) as a new part, created only if its name is
        free; returns the local copy."""
        prefix = self._prefix(view)
        tmp = temp_path(self.tmp, "part.parquet")
        try:
            write_part(view, table, tmp)
            sha = sha256_file(tmp)
            for _ in range(_NAME_ATTEMPTS):
                listed = [o.key[len(prefix):] for o in self._listing(view)]
                name = part_name(next_part_number(listed), os.urandom(6).hex())
                try:
                    self.store.put(prefix + name, tmp, metadata={"sha256": sha})
                    break
                except PreconditionFailed:
                    continue  # the name was taken meanwhile: another number and token
            else:
                raise InvalidInput(f"ingest into {self.store.url(prefix)}: no free part name "
                                   f"after {_NAME_ATTEMPTS} tries; try again")
            local = self.view_dir(view) / name
            local.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, local)
            return local
        finally:
            tmp.unlink(missing_ok=True)
