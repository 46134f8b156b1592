"""The feature store: definitions, offline Parquet data and the online LMDB store under one root.

    <root>/definitions.db           versioned definitions (SQLite, :mod:`.registry`)
    <root>/offline/VIEW/vN/*.parquet  offline rows per view version (:mod:`.offline`)
    <root>/online/                  LMDB environment (:mod:`.online`)
    <root>/online.writer.lock       the single writer's lock

The root is ``$MLSERVE_FEATURE_STORE``, else ``$MLSERVE_HOME/features`` (beside the model
registry's ``$MLSERVE_HOME/registry``). ``s3://BUCKET/PREFIX`` instead shares definitions and
offline data through object storage (:mod:`.remote`); ``root`` is then this machine's cache of
it, which holds the machine's own online store. The offline side (ingest, historical features,
materialization) needs the ``features`` extra (pandas, pyarrow) and imports it on first use;
definitions and online reads need neither, so the server stays light.

A directory store whose root is not writable (a read-only volume in a serving container, a store
baked into an image with a read-only root filesystem) opens read-only: definitions, historical
features and online reads work; apply, ingest and materialize refuse with InvalidInput before
writing anything.

Thread-safe: every method may be called from several threads; the online environment is
opened on first use and shared.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlserve._objectstore import is_uri, normalize_uri
from mlserve.errors import DefinitionNotFound, InvalidInput

from ._settings import default_cache_root, default_root
from ._time import TimeLike, now_ns, to_ns
from .declarations import load_definitions
from .definitions import Definition, FeatureService, FeatureView, to_selection
from .lookup import OnlineFeatures, ServiceReader
from .online import OnlineStore
from .registry import ApplyChange, FeatureRegistry

if TYPE_CHECKING:
    import pandas as pd

    from ._copy import CopyResult
    from .materialize import MaterializeResult
    from .offline import OfflineStore
    from .remote import SharedFeatureStorage

#: What selects features: a service (object, ``NAME`` or ``NAME/VERSION``), or a list of view
#: references (``NAME``, ``NAME/2``, FeatureView, ``(view, [columns])``, ViewSelection).
FeaturesLike = FeatureService | str | Sequence[Any]


@dataclass(frozen=True)
class IngestResult:
    """What one ingestion appended."""

    view: str
    rows: int
    part: Path | None
    """The Parquet part written (None for zero rows)."""
    ignored_columns: tuple[str, ...]


class FeatureStore:
    """A feature store rooted at ``root`` (see the module doc for the default)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 map_size: int | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 read_only: bool | None = None) -> None:
        """``root``: a directory or ``s3://BUCKET/PREFIX``. ``cache_dir``: for a store on
        object storage, where this machine keeps its copies and its online store (default
        ``$MLSERVE_FEATURE_STORE_CACHE`` or ``$MLSERVE_HOME/cache/features``).

        ``read_only`` (a directory store): open an existing store for reading only; every
        change raises InvalidInput. None (the default): read-only when the store exists and
        its root is not writable (a read-only mount), as the model registry does."""
        location = root if root is not None else default_root()
        self._shared: SharedFeatureStorage | None = None
        self.registry: FeatureRegistry
        self.read_only = False
        if is_uri(location):
            if read_only:
                raise InvalidInput("read_only opens a feature store in a directory; a shared "
                                   "store is read through its credentials")
            from .remote import SharedFeatureStorage

            base = Path(cache_dir).expanduser() if cache_dir is not None \
                else default_cache_root()
            self._shared = SharedFeatureStorage(normalize_uri(location, "feature store"), base)
            #: The cache folder given (or the default); ``root`` is this store's folder in it.
            self.cache_base: Path | None = base
            self.root = self._shared.root
            self.registry = self._shared.registry()
        else:
            self.cache_base = None
            self.root = Path(location).expanduser()
            db = self.root / "definitions.db"
            if read_only is None:
                read_only = db.is_file() and not os.access(self.root, os.W_OK)
            self.read_only = read_only
            if not read_only:
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise InvalidInput(f"no feature store at {self.root}, and none can be "
                                       f"created there: {exc.strerror}") from None
            self.registry = FeatureRegistry(db, read_only=read_only)
        self._map_size = map_size
        self._online: OnlineStore | None = None
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        """What opens this store again: its directory (absolute), or ``s3://BUCKET/PREFIX``."""
        return self._shared.uri if self._shared is not None else str(self.root.resolve())

    def __repr__(self) -> str:
        return f"FeatureStore({self.location!r})"

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the online environment (reopened if used again)."""
        with self._lock:
            if self._online is not None:
                self._online.close()
                self._online = None

    @property
    def online(self) -> OnlineStore:
        with self._lock:
            if self._online is None:
                self._online = OnlineStore(self.root / "online",
                                           lock_path=self.root / "online.writer.lock",
                                           map_size=self._map_size, read_only=self.read_only)
            return self._online

    @property
    def offline(self) -> OfflineStore:
        if self._shared is not None:
            return self._shared.offline()
        from .offline import OfflineStore

        return OfflineStore(self.root / "offline")

    def copy_to(self, location: str | os.PathLike[str], *,
                cache_dir: str | os.PathLike[str] | None = None,
                progress: Callable[[int, int | None], None] | None = None) -> CopyResult:
        """Copies this store's definitions and offline data into the empty store at
        ``location`` (a directory or ``s3://...``); see :mod:`._copy`. Run it again after a
        failure: what was copied is kept."""
        from ._copy import copy_store

        return copy_store(self, location, cache_dir=cache_dir, progress=progress)

    def gc(self, grace_s: float | None = None) -> list[str]:
        """Frees this machine's cache of a shared store (see
        :meth:`.remote.SharedFeatureStorage.gc`; ``grace_s`` default one hour); nothing to do
        for a store in a directory. Returns what went."""
        if self._shared is None:
            return []
        return self._shared.gc() if grace_s is None else self._shared.gc(grace_s)

    # ------------------------------------------------------------------ definitions

    def apply(self, definitions: Sequence[Definition] | str | os.PathLike[str], *,
              dry_run: bool = False) -> list[ApplyChange]:
        """Validates and records definitions (objects, or a TOML file's path)."""
        if isinstance(definitions, (str, os.PathLike)):
            definitions = load_definitions(definitions)
        return self.registry.apply(definitions, dry_run=dry_run)

    def view(self, ref: str) -> FeatureView:
        """The applied view ``NAME`` (latest) or ``NAME/VERSION``."""
        return self.registry.view(ref)

    def service(self, ref: str) -> FeatureService:
        """The applied service ``NAME`` (latest) or ``NAME/VERSION``."""
        return self.registry.service(ref)

    def resolve(self, features: FeaturesLike) -> list[tuple[FeatureView, tuple[str, ...]]]:
        """(applied view, selected columns) for each view ``features`` selects."""
        not_a_service: DefinitionNotFound | None = None
        if isinstance(features, FeatureService):
            service = features if features.version is not None else \
                self.registry.service(features.name)
            items: Sequence[Any] = service.selections
        elif isinstance(features, str):
            try:
                items = self.registry.service(features).selections
            except DefinitionNotFound as e:
                not_a_service = e  # then a view's name
                items = [features]
        elif isinstance(features, Sequence) and features:
            items = features
        else:
            raise InvalidInput("features: expected a feature service (or its name) or a "
                               "non-empty list of feature views")
        out: list[tuple[FeatureView, tuple[str, ...]]] = []
        for item in items:
            sel = to_selection(item)
            try:
                view = self.registry.view(sel.view, sel.version)
            except DefinitionNotFound:
                if not_a_service is not None and self._is_service(sel.view):
                    raise not_a_service from None  # a service, at a version it does not have
                raise
            columns = sel.columns if sel.columns is not None else view.column_names
            for c in columns:
                view.column(c)
            out.append((view, tuple(columns)))
        names = [v.name for v, _ in out]
        if len(set(names)) != len(names):
            raise InvalidInput(f"features select view(s) more than once: {names}")
        return out

    def _check_writable(self, what: str) -> None:
        """Refuses a change of a read-only store before anything is written."""
        if self.read_only:
            raise InvalidInput(f"cannot {what}: the feature store at {self.location} is "
                               "read-only (opened read-only, or its root is not writable); "
                               "make changes where it is writable")

    def _is_service(self, name: str) -> bool:
        """Whether a feature service of this name (any version) is registered."""
        try:
            self.registry.service(name)
        except DefinitionNotFound:
            return False
        return True

    # ------------------------------------------------------------------ offline

    def ingest(self, view: str, data: pd.DataFrame | str | os.PathLike[str] | None = None
               ) -> IngestResult:
        """Appends rows (a DataFrame, or a CSV/Parquet path; default: the view's ``source``)
        to the view's offline dataset after validating them (InvalidInput names the column)."""
        from ._time import now_ns as ingest_time
        from .ingest import read_table_file, validate_rows

        self._check_writable("ingest")
        fv = self.registry.view(view)
        if data is None:
            if fv.source is None:
                raise InvalidInput(f"feature view {fv.ref!r} has no source; give a file")
            data = fv.source
        frame = data if not isinstance(data, (str, os.PathLike)) else read_table_file(data, fv)
        rows = validate_rows(fv, frame, ingested_at_ns=ingest_time())
        n = rows.table.num_rows
        part = self.offline.append(fv, rows.table) if n else None
        return IngestResult(fv.ref, n, part, rows.ignored_columns)

    def historical_features(self, entity_df: pd.DataFrame, features: FeaturesLike, *,
                            timestamp_column: str = "event_ts",
                            as_of_created: TimeLike | None = None) -> pd.DataFrame:
        """Point-in-time correct features for each row of ``entity_df`` (join keys and
        ``timestamp_column``); see :func:`.historical.historical_features`."""
        from .historical import historical_features

        return historical_features(self.offline, entity_df, self.resolve(features),
                                   timestamp_column=timestamp_column,
                                   as_of_created=as_of_created)

    # ------------------------------------------------------------------ online

    def materialize(self, view: str, start: TimeLike, end: TimeLike, *,
                    batch_keys: int = 65_536) -> MaterializeResult:
        """Latest row per entity with ``start <= event_ts <= end`` into the online store."""
        from .materialize import materialize

        self._check_writable("materialize")
        return materialize(self.offline, self.online, self.registry.view(view),
                           to_ns(start, "start"), to_ns(end, "end"), batch_keys=batch_keys)

    def materialize_incremental(self, view: str, end: TimeLike = "now", *,
                                batch_keys: int = 65_536) -> MaterializeResult:
        """What is new since the view's last incremental run, up to ``end``."""
        from .materialize import materialize_incremental

        self._check_writable("materialize")
        return materialize_incremental(self.offline, self.online, self.registry.view(view),
                                       to_ns(end, "end"), batch_keys=batch_keys)

    def service_reader(self, features: FeaturesLike) -> ServiceReader:
        """A prepared reader for repeated online lookups (the server keeps one per service)."""
        resolved = self.resolve(features)
        if isinstance(features, FeatureService):
            service = features
        elif isinstance(features, str):
            try:
                service = self.registry.service(features)
            except DefinitionNotFound:
                service = FeatureService("adhoc", [(v.ref, cols) for v, cols in resolved])
        else:
            service = FeatureService("adhoc", [(v.ref, cols) for v, cols in resolved])
        return ServiceReader(self.online, service, [v for v, _ in resolved])

    def online_features(self, features: FeaturesLike,
                        keys: Mapping[str, Any] | Sequence[Any], *,
                        now: TimeLike | None = None) -> OnlineFeatures:
        """Online values for a batch of entities; TTLs are enforced at ``now`` (default: the
        current time)."""
        at = now_ns() if now is None else to_ns(now, "now")
        return self.service_reader(features).read(keys, now_ns=at)
