"""The offline store of a feature store on object storage (:mod:`.remote`): parts as immutable
objects under ``offline/VIEW/vN/``, read through local copies. Separate from :mod:`.remote` so
that opening a shared store to serve (definitions, online reads) needs no pyarrow.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from mlserve._objectstore import ObjectInfo, PreconditionFailed, S3Store
from mlserve._tempfiles import temp_path, touch
from mlserve.bundle import sha256_file
from mlserve.errors import InvalidInput, Unavailable

from .definitions import FeatureView
from .offline import OfflineStore, is_part, next_part_number, part_name, write_part

OFFLINE_PREFIX = "offline"
#: Ingestions whose part name was taken meanwhile (a token collision) before one gives up.
_NAME_ATTEMPTS = 5
#: The most one PUT may carry (S3's limit for a single-request upload).
MAX_PART_BYTES = 5 * 10**9


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

    def part_names(self, view: FeatureView) -> list[str]:
        return [o.key.rsplit("/", 1)[-1] for o in self._listing(view)]

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
        if src.stat().st_size > MAX_PART_BYTES:
            raise InvalidInput(f"{src} is more than one upload may carry "
                               f"({MAX_PART_BYTES / 1e9:.0f} GB); it cannot be copied as it is")
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
            size = tmp.stat().st_size
            if size > MAX_PART_BYTES:
                raise InvalidInput(
                    f"ingest into {self.store.url(prefix)}: the part would be {size / 1e9:.1f} "
                    f"GB, more than one upload may carry ({MAX_PART_BYTES / 1e9:.0f} GB); "
                    "ingest the data in several smaller files")
            sha = sha256_file(tmp)
            for _ in range(_NAME_ATTEMPTS):
                listed = [o.key[len(prefix):] for o in self._listing(view)]
                name = part_name(next_part_number(listed), os.urandom(6).hex())
                try:
                    self.store.put(prefix + name, tmp, metadata={"sha256": sha})
                    break
                except (PreconditionFailed, Unavailable) as exc:
                    # A PUT applied whose answer was lost (botocore's retry then gets 412, or
                    # gives up): the object with our name, size and sha256 is ours.
                    info = self.store.head(prefix + name)
                    if info is not None and info.size == size \
                            and info.metadata.get("sha256") == sha:
                        break
                    if isinstance(exc, Unavailable) and info is None:
                        raise  # nothing landed: the store is unreachable
                    # the name was taken meanwhile: another one
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
