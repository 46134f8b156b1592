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

Offline data (:mod:`.remote_offline`): an ingestion writes its part locally, then creates the
object with ``If-None-Match: *`` (an existing name is never replaced) and the part's sha256 as
metadata. Its number is the ingest time in ns, past the newest listed part's, so name order is
ingestion order as on a local store; two machines ingesting at the same moment get distinct
names whose order is theirs. Readers list the view's parts and download each new one once into
``<store cache>/offline/VIEW/vN/`` (sha256 checked; ``<store cache>`` is
``<cache>/<bucket>/<prefix>-<hash>``), where the local :class:`.offline.OfflineStore`
reads them: point-in-time joins and materialization run unchanged on exactly the listed parts.
Incremental materialization records the part names it covered, so a part that appears later with
an earlier number is still taken.

The online store stays per machine: an LMDB environment in ``<store cache>/online``, filled by
``materialize`` on that machine (the serving machines run it, e.g. on a schedule), since LMDB is
a memory-mapped file and its reads are the serving hot path.

The cache is ``$MLSERVE_FEATURE_STORE_CACHE`` or ``$MLSERVE_HOME/cache/features``; it is safe to
share between processes (files are written to temp names and renamed). It holds this machine's
online store too: free space with ``gc`` (``mlserve features gc``), which leaves the online
store alone; deleting the folder under a running server leaves that server reading the deleted
online store until it restarts.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mlserve._objectstore import S3Store, cache_dir_for
from mlserve._shareddb import SharedDatabase
from mlserve._tempfiles import temp_owner_alive
from mlserve.errors import InvalidInput

from .registry import FeatureRegistry, missing_table, schema

if TYPE_CHECKING:
    from .remote_offline import RemoteOfflineStore

DB_OBJECT = "definitions.db"
#: What ``gc`` leaves: cache files used within this many seconds.
GC_GRACE_S = 3600.0
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
        self._remove_dead_temps()

    def _remove_dead_temps(self) -> list[str]:
        """Temp files of processes that died mid-download, mid-ingest or mid-change."""
        removed = []
        for entry in self.tmp.iterdir():
            if not temp_owner_alive(entry):
                entry.unlink(missing_ok=True)
                removed.append(str(entry))
        return removed

    def gc(self, grace_s: float = GC_GRACE_S) -> list[str]:
        """Frees this machine's cache (never its online store): temp files of dead processes,
        old snapshots, and copies of parts unused for ``grace_s`` that are gone from the store
        or belong to a view version that is no longer its view's latest (downloaded again if
        used). Returns what went."""
        removed = self._remove_dead_temps()
        _, snapshot = self.db.pull()
        self.db.prune(snapshot)
        latest = {(i.name, i.version) for i in self.registry().list("view")}
        cutoff = time.time() - grace_s
        offline = self.root / "offline"
        for vdir in sorted(offline.glob("*/v*")):
            name, version = vdir.parent.name, vdir.name[1:]
            if not version.isdigit():
                continue
            cached = [p for p in vdir.iterdir() if p.is_file()]
            old = [p for p in cached if p.stat().st_mtime < cutoff]
            if not old:
                continue
            if (name, int(version)) in latest:
                prefix = f"offline/{name}/{vdir.name}/"
                listed = {o.key[len(prefix):] for o in self.store.list(prefix)}
                old = [p for p in old if p.name not in listed]
            for p in old:
                try:  # looked at again just before: a reader may have touched it since
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed.append(str(p))
                except FileNotFoundError:
                    pass
        return removed

    def registry(self) -> RemoteFeatureRegistry:
        return RemoteFeatureRegistry(self.db)

    def offline(self) -> RemoteOfflineStore:
        from .remote_offline import RemoteOfflineStore  # pyarrow: not needed to serve

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

    def _write(self, *, copy: bool = False
               ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.change(may_create=None if copy else self._refuse_orphaned_data)

    def _refuse_orphaned_data(self) -> None:
        """No definitions.db but offline data: it went missing (deleted by hand, a lifecycle
        rule). A new one would number views from 1 again over the old parts: refused."""
        for obj in self._db.store.list("offline/"):
            raise InvalidInput(
                f"{self._db.url} is missing but offline data is there ({obj.key} ...): a new "
                "definitions database would give old parts to new views. Restore "
                "definitions.db (e.g. from the bucket's versioning), or delete the prefix's "
                "offline/ data yourself")

    def _transact(self, fn: Callable[[], T], what: str) -> T:
        return self._db.transact(fn, what)
