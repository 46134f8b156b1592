"""Feature definitions: entities, feature views and feature services, as immutable values.

An :class:`Entity` names the thing features describe and its join keys (``user_id`` int64). A
:class:`FeatureView` is a typed set of columns about one entity, with a TTL and an optional
source; a :class:`FeatureService` is the named selection of views and columns a model consumes.
Constructors validate everything that can be checked alone and raise InvalidInput saying what
is wrong; references between definitions are checked when they are applied to the registry
(:mod:`mlserve.features.registry`), which also assigns versions. Values are frozen and safe to
share between threads.

``to_dict``/``from_dict`` are the one serialized form, used by the registry's SQLite rows and by
the TOML declarations (:mod:`mlserve.features.declarations`); ``from_dict`` refuses unknown keys
so that a typo in a file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlserve.errors import InvalidInput

#: Key dtypes an entity's join keys may have.
KEY_DTYPES = ("int64", "string")
#: Column dtypes of a feature view. Online every column is a float32 (``int`` exactly up to
#: 2**24, ``categorical`` as its integer code); offline ``float`` is float64, ``int`` and
#: ``categorical`` are int64.
COLUMN_DTYPES = ("float", "int", "categorical")
#: Column names every offline dataset has; no join key or feature column may use them.
RESERVED_COLUMNS = ("event_ts", "created_ts")
#: Separator of a view and a column in the feature names of joins and online reads.
FEATURE_NAME_SEP = "__"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_name(name: object, what: str) -> str:
    """``name`` when it is an identifier (letters, digits, ``_``; 1-128 chars, no leading digit)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(
            f"{what} name {name!r}: use letters, digits and '_' (not starting with a digit), "
            "at most 128 characters"
        )
    return name


def _fingerprint(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _with_description(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description} if description else schema


def _unknown_keys(data: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )


def _version(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what}: version must be an integer >= 1, got {value!r}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {value!r}")
    return value


def _str_tuple(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{what} must be a string or a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, init=False)
class Entity:
    """What features describe, identified by its join keys (e.g. ``user`` by ``user_id``)."""

    name: str
    join_keys: tuple[str, ...]
    """Columns that identify one entity, in key order."""
    key_dtypes: tuple[str, ...]
    """One of :data:`KEY_DTYPES` per join key."""
    description: str
    version: int | None
    """Assigned by the registry; ``None`` for a definition not applied yet."""

    def __init__(self, name: str, join_keys: str | Sequence[str],
                 dtype: str | Sequence[str] = "int64", *, description: str = "",
                 version: int | None = None) -> None:
        what = f"entity {name!r}"
        check_name(name, "entity")
        keys = _str_tuple(join_keys, f"{what}: join_keys")
        if not keys:
            raise InvalidInput(f"{what}: needs at least one join key")
        for key in keys:
            check_name(key, f"{what}: join key")
            if key in RESERVED_COLUMNS:
                raise InvalidInput(f"{what}: join key {key!r} is a reserved column name")
        if len(set(keys)) != len(keys):
            raise InvalidInput(f"{what}: join keys repeat: {list(keys)}")
        dtypes = _str_tuple(dtype, f"{what}: dtype")
        if len(dtypes) == 1:
            dtypes = dtypes * len(keys)
        if len(dtypes) != len(keys):
            raise InvalidInput(
                f"{what}: {len(dtypes)} dtypes for {len(keys)} join keys; give one dtype for "
                "all keys or one per key")
        for d in dtypes:
            if d not in KEY_DTYPES:
                raise InvalidInput(f"{what}: key dtype {d!r}: expected one of "
                                   f"{', '.join(KEY_DTYPES)}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "join_keys", keys)
        object.__setattr__(self, "key_dtypes", dtypes)
        object.__setattr__(self, "description", _text(description, f"{what}: description"))
        object.__setattr__(self, "version", _version(version, what))

    def schema(self) -> dict[str, Any]:
        """What makes a new version when it changes (the description does not)."""
        return {"name": self.name, "join_keys": list(self.join_keys),
                "key_dtypes": list(self.key_dtypes)}

    def fingerprint(self) -> str:
        return _fingerprint(self.schema())

    def to_dict(self) -> dict[str, Any]:
        return {**self.schema(), "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, version: int | None = None) -> Entity:
        what = f"entity {data.get('name')!r}"
        _unknown_keys(data, ("name", "join_keys", "dtype", "key_dtypes", "description"), what)
        if "join_keys" not in data:
            raise InvalidInput(f"{what}: 'join_keys' is required")
        return cls(data.get("name", ""), data["join_keys"],
                   data.get("key_dtypes", data.get("dtype", "int64")),
                   description=data.get("description", ""), version=version)


@dataclass(frozen=True)
class Column:
    """One typed feature column of a view."""

    name: str
    dtype: str
    """One of :data:`COLUMN_DTYPES`."""
    vocabulary: tuple[str, ...] | None = None
    """For ``categorical`` columns fed strings: code i is ``vocabulary[i]``, an unseen string is
    code -1 (the trainer's out-of-vocabulary slot). Without it, categorical values must be
    integer codes already."""
    description: str = ""

    def __post_init__(self) -> None:
        what = f"column {self.name!r}"
        check_name(self.name, "column")
        if self.name in RESERVED_COLUMNS:
            raise InvalidInput(f"{what} is a reserved column name ({', '.join(RESERVED_COLUMNS)})")
        if self.dtype not in COLUMN_DTYPES:
            raise InvalidInput(f"{what}: dtype {self.dtype!r}: expected one of "
                               f"{', '.join(COLUMN_DTYPES)}")
        if self.vocabulary is not None:
            if self.dtype != "categorical":
                raise InvalidInput(f"{what}: only categorical columns take a vocabulary")
            vocab = _str_tuple(self.vocabulary, f"{what}: vocabulary")
            if not vocab or len(set(vocab)) != len(vocab):
                raise InvalidInput(f"{what}: the vocabulary must be non-empty, without repeats")
            object.__setattr__(self, "vocabulary", vocab)
        _text(self.description, f"{what}: description")

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype}
        if self.vocabulary is not None:
            out["vocabulary"] = list(self.vocabulary)
        return out

    def to_dict(self) -> dict[str, Any]:
        return _with_description(self.schema(), self.description)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Column:
        _unknown_keys(data, ("name", "dtype", "vocabulary", "description"),
                      f"column {data.get('name')!r}")
        vocab = data.get("vocabulary")
        return cls(data.get("name", ""), data.get("dtype", ""),
                   None if vocab is None else _str_tuple(vocab, "vocabulary"),
                   data.get("description", ""))


#: A view's columns: ``{name: dtype}`` or a list of Column / (name, dtype) / {name, dtype, ...}.
ColumnsLike = Mapping[str, Any] | Sequence[Any]


def _columns(value: object, what: str) -> tuple[Column, ...]:
    if isinstance(value, Mapping):
        cols = tuple(Column(str(k), v) if isinstance(v, str) else
                     Column.from_dict({"name": k, **v}) for k, v in value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        out: list[Column] = []
        for item in value:
            if isinstance(item, Column):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(Column.from_dict(item))
            elif isinstance(item, tuple) and len(item) == 2:
                out.append(Column(item[0], item[1]))
            else:
                raise InvalidInput(f"{what}: a column is a Column, a (name, dtype) pair or a "
                                   f"table with name and dtype, got {item!r}")
        cols = tuple(out)
    else:
        raise InvalidInput(f"{what}: columns must be a table name -> dtype or a list of columns")
    if not cols:
        raise InvalidInput(f"{what}: needs at least one column")
    names = [c.name for c in cols]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise InvalidInput(f"{what}: column(s) {', '.join(dups)} declared more than once")
    return cols


@dataclass(frozen=True, init=False)
class FeatureView:
    """Typed columns about one entity, with a TTL: what is ingested, joined and served."""

    name: str
    entity: Entity | str
    """The entity, or its name before the view is applied (registered views hold the Entity)."""
    columns: tuple[Column, ...]
    ttl_seconds: float | None
    """A value older than this (event_ts < ts - ttl) does not count; ``None``: never expires."""
    source: str | None
    """Where the data comes from (a CSV/Parquet path): ``mlserve features ingest VIEW`` reads it
    when no file is given."""
    description: str
    version: int | None

    def __init__(self, name: str, entity: Entity | str, columns: ColumnsLike, *,
                 ttl_seconds: float | None = None, source: str | None = None,
                 description: str = "", version: int | None = None) -> None:
        what = f"feature view {name!r}"
        check_name(name, "feature view")
        if FEATURE_NAME_SEP in name:
            raise InvalidInput(f"{what}: a view name must not contain {FEATURE_NAME_SEP!r}, "
                               "which separates view and column in feature names")
        if not isinstance(entity, (Entity, str)):
            raise InvalidInput(f"{what}: entity must be an Entity or an entity name")
        if isinstance(entity, str):
            check_name(entity, f"{what}: entity")
        cols = _columns(columns, what)
        if isinstance(entity, Entity):
            clash = sorted(set(entity.join_keys) & {c.name for c in cols})
            if clash:
                raise InvalidInput(f"{what}: column(s) {', '.join(clash)} are join keys of "
                                   f"entity {entity.name!r}")
        if ttl_seconds is not None:
            if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)) \
                    or not ttl_seconds > 0 or ttl_seconds == float("inf"):
                raise InvalidInput(f"{what}: ttl_seconds must be a positive number (or absent "
                                   f"for no TTL), got {ttl_seconds!r}")
        if source is not None:
            _text(source, f"{what}: source")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "entity", entity)
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "ttl_seconds", None if ttl_seconds is None
                           else float(ttl_seconds))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "description", _text(description, f"{what}: description"))
        object.__setattr__(self, "version", _version(version, what))

    @property
    def entity_name(self) -> str:
        return self.entity.name if isinstance(self.entity, Entity) else self.entity

    @property
    def resolved_entity(self) -> Entity:
        """The Entity; InvalidInput for a view not applied (only the entity's name known)."""
        if not isinstance(self.entity, Entity):
            raise InvalidInput(f"feature view {self.name!r}: entity {self.entity!r} is not "
                               "resolved; apply the definitions or pass the Entity")
        return self.entity

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def ttl_ns(self) -> int | None:
        return None if self.ttl_seconds is None else round(self.ttl_seconds * 1e9)

    @property
    def ref(self) -> str:
        """``NAME/VERSION`` (``NAME`` when not applied)."""
        return self.name if self.version is None else f"{self.name}/{self.version}"

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise InvalidInput(f"feature view {self.ref!r} has no column {name!r}; columns: "
                           f"{', '.join(self.column_names)}")

    def schema(self) -> dict[str, Any]:
        """The data layout: a change makes a new version (TTL, source, description do not)."""
        return {"name": self.name, "entity": self.resolved_entity.schema(),
                "columns": [c.schema() for c in self.columns]}

    def fingerprint(self) -> str:
        return _fingerprint(self.schema())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "entity": self.entity_name,
                               "columns": [c.to_dict() for c in self.columns]}
        if self.ttl_seconds is not None:
            out["ttl_seconds"] = self.ttl_seconds
        if self.source is not None:
            out["source"] = self.source
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, entity: Entity | None = None,
                  version: int | None = None) -> FeatureView:
        what = f"feature view {data.get('name')!r}"
        _unknown_keys(data, ("name", "entity", "columns", "ttl_seconds", "source",
                             "description"), what)
        for key in ("entity", "columns"):
            if key not in data:
                raise InvalidInput(f"{what}: {key!r} is required")
        return cls(data.get("name", ""), entity if entity is not None else data["entity"],
                   data["columns"], ttl_seconds=data.get("ttl_seconds"),
                   source=data.get("source"), description=data.get("description", ""),
                   version=version)


@dataclass(frozen=True)
class ViewSelection:
    """Some (or all) columns of one view, optionally of a pinned version."""

    view: str
    columns: tuple[str, ...] | None = None
    """``None``: every column of the view, in its order."""
    version: int | None = None
    """``None``: the latest version when the service is applied (the registry pins it)."""

    def __post_init__(self) -> None:
        check_name(self.view, "feature view")
        if self.columns is not None:
            cols = _str_tuple(self.columns, f"selection of {self.view!r}: columns")
            if not cols or len(set(cols)) != len(cols):
                raise InvalidInput(f"selection of {self.view!r}: columns must be non-empty "
                                   "and without repeats")
            object.__setattr__(self, "columns", cols)
        _version(self.version, f"selection of {self.view!r}")

    @property
    def ref(self) -> str:
        return self.view if self.version is None else f"{self.view}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"view": self.view}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        if self.version is not None:
            out["version"] = self.version
        return out


def parse_view_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME/VERSION`` -> (name, version or None)."""
    name, sep, version = ref.partition("/")
    check_name(name, "feature view")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(f"feature view reference {ref!r}: expected NAME or NAME/VERSION")
    return name, int(version)


def to_selection(item: object) -> ViewSelection:
    """A :class:`ViewSelection` from a view reference (``NAME``, ``NAME/2``), a FeatureView, a
    ``(view, columns)`` pair or a table ``{view, columns, version}``."""
    if isinstance(item, ViewSelection):
        return item
    if isinstance(item, FeatureView):
        return ViewSelection(item.name, None, item.version)
    if isinstance(item, str):
        name, version = parse_view_ref(item)
        return ViewSelection(name, None, version)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, FeatureView)):
        base = to_selection(item[0])
        return ViewSelection(base.view, _str_tuple(item[1], "columns"), base.version)
    if isinstance(item, Mapping):
        _unknown_keys(item, ("view", "columns", "version"), f"selection {dict(item)!r}")
        if "view" not in item:
            raise InvalidInput(f"selection {dict(item)!r}: 'view' is required")
        cols = item.get("columns")
        return ViewSelection(item["view"], None if cols is None else _str_tuple(cols, "columns"),
                             item.get("version"))
    raise InvalidInput(f"a feature selection is a view name, NAME/VERSION, a FeatureView, a "
                       f"(view, columns) pair or a table, got {item!r}")


@dataclass(frozen=True, init=False)
class FeatureService:
    """The named, ordered selection of features a model consumes."""

    name: str
    selections: tuple[ViewSelection, ...]
    description: str
    version: int | None

    def __init__(self, name: str, views: Sequence[object], *, description: str = "",
                 version: int | None = None) -> None:
        what = f"feature service {name!r}"
        check_name(name, "feature service")
        if isinstance(views, (str, bytes)) or not isinstance(views, Sequence) or not views:
            raise InvalidInput(f"{what}: needs a non-empty list of views")
        selections = tuple(to_selection(v) for v in views)
        seen = [s.view for s in selections]
        dups = sorted({v for v in seen if seen.count(v) > 1})
        if dups:
            raise InvalidInput(f"{what}: view(s) {', '.join(dups)} selected more than once; "
                               "list their columns in one selection")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "selections", selections)
        object.__setattr__(self, "description", _text(description, f"{what}: description"))
        object.__setattr__(self, "version", _version(version, what))

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}/{self.version}"

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "views": [s.to_dict() for s in self.selections]}

    def fingerprint(self) -> str:
        return _fingerprint(self.schema())

    def to_dict(self) -> dict[str, Any]:
        return _with_description(self.schema(), self.description)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, version: int | None = None) -> FeatureService:
        what = f"feature service {data.get('name')!r}"
        _unknown_keys(data, ("name", "views", "description"), what)
        if "views" not in data:
            raise InvalidInput(f"{what}: 'views' is required")
        return cls(data.get("name", ""), data["views"], description=data.get("description", ""),
                   version=version)


Definition = Entity | FeatureView | FeatureService


def feature_name(view: str, column: str) -> str:
    """The name of a view's column in joins and online reads: ``view__column``."""
    return f"{view}{FEATURE_NAME_SEP}{column}"
