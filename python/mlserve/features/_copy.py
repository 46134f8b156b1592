"""Copying a whole feature store into an empty one: a local directory onto shared object storage
(``mlserve features copy --to s3://...``), a shared store into a directory, or between either.

What moves: every definition version exactly (entities, views, services, with their version
numbers, fingerprints and times) and every offline part of every view version under its own
name, so the destination's point-in-time joins equal the source's. Parts go first, each
created only if its name is free and checked against the source's bytes when it is there
already (a copy that failed part-way is simply run again); the definitions go last, in one
transaction (one conditional PUT on object storage), so a reader of the destination sees the
views only once all their data is there. The online store is not copied: it belongs to each
serving machine, which fills its own with ``materialize``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlserve._objectstore import is_uri, normalize_uri
from mlserve.errors import InvalidInput

from .definitions import FeatureView

if TYPE_CHECKING:
    from .store import FeatureStore

#: What a local destination may hold already: an empty store's files, or a failed copy's parts.
_LOCAL_ENTRIES = {"definitions.db", "definitions.db-wal", "definitions.db-shm", "offline"}


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_store` did."""

    location: str
    """The destination."""
    definitions: int
    """Definition versions (rows) written; 0 when the destination had them already."""
    parts: int
    """Offline parts of the source."""
    parts_copied: int
    """Parts written (the others were there from an earlier run)."""
    bytes: int
    """Bytes of the source's parts."""


def _check_local_destination(location: str | os.PathLike[str]) -> None:
    path = Path(location).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"copy destination {path} is a file; name a new or empty directory")
    if path.is_dir():
        other = sorted(e.name for e in path.iterdir() if e.name not in _LOCAL_ENTRIES)
        if other:
            raise InvalidInput(f"copy destination {path} holds other things "
                               f"({', '.join(other[:5])}); name a new or empty directory")


def _refuse_other_data(dst: FeatureStore, expected: set[str]) -> None:
    """Refuses a destination holding data that is not this copy's: parts of another store
    (whose definitions went missing) would join the copied views."""
    if dst._shared is not None:
        found = [o.key for o in dst._shared.store.list("")]
        allowed = {"definitions.db"}
    else:
        offline = dst.root / "offline"
        found = [p.relative_to(dst.root).as_posix() for p in offline.rglob("*")
                 if p.is_file() and not p.name.startswith(".tmp-")] if offline.is_dir() else []
        allowed = set()
    other = sorted(k for k in found if k not in expected and k not in allowed)
    if other:
        raise InvalidInput(f"copy destination {dst.location} holds data that is not this "
                           f"copy's ({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}); "
                           "copy into an empty store")


def copy_store(src: FeatureStore, location: str | os.PathLike[str], *,
               cache_dir: str | os.PathLike[str] | None = None,
               progress: Callable[[int, int | None], None] | None = None) -> CopyResult:
    """Copies ``src`` into the empty store at ``location`` (a directory or ``s3://...``;
    ``cache_dir``: the destination's cache when it is shared). ``progress(done, total)`` gets
    bytes of parts. Refuses a destination with other definitions, other files, or the source
    itself."""
    from .store import FeatureStore

    if is_uri(location):
        target = normalize_uri(location, "copy destination")
    else:
        _check_local_destination(location)
        target = str(Path(location).expanduser().resolve())
    if target == src.location or (not is_uri(target) and src.cache_base is None
                                  and Path(target).is_relative_to(src.location)):
        raise InvalidInput(f"copy destination {target} is the source itself, or inside it")
    rows = src.registry.rows()
    if not rows:
        raise InvalidInput(f"the feature store at {src.location} has no definitions: nothing "
                           "to copy")
    dst = FeatureStore(location, cache_dir=cache_dir)
    try:
        dst._check_writable("copy into it")
        there = dst.registry.rows()
        if there and there != rows:
            raise InvalidInput(f"the feature store at {dst.location} has other definitions: "
                               "copy into an empty store")
        views = [d for i in src.registry.list("view", all_versions=True)
                 if isinstance(d := i.definition, FeatureView)]
        _refuse_other_data(dst, {f"offline/{v.name}/v{v.version}/{name}" for v in views
                                 for name in src.offline.part_names(v)})
        parts = [(view, p) for view in views for p in src.offline.parts(view)]
        total = sum(p.stat().st_size for _, p in parts)
        done = copied = 0
        if progress is not None:
            progress(0, total)
        for view, part in parts:
            copied += dst.offline.import_part(view, part)
            done += part.stat().st_size
            if progress is not None:
                progress(done, total)
        if not there:
            try:
                dst.registry.insert_rows(rows)
            except InvalidInput as exc:  # another machine applied there meanwhile
                raise InvalidInput(
                    f"{exc}. The copy's offline parts are there now, mixed into its views: "
                    f"delete offline/ at {dst.location} (or the whole store) and copy again"
                    ) from None
        return CopyResult(dst.location, 0 if there else len(rows), len(parts), copied, total)
    finally:
        dst.close()
