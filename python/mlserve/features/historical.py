"""``historical_features``: point-in-time correct training tables from the offline store.

Given an entity DataFrame (join keys + a timestamp column) and views with selected columns,
adds one column per selected feature, named ``<view>__<column>``, holding for each row the value
:mod:`.pit` selects (latest ``event_ts <= ts`` within the TTL, ties by ``created_ts`` then
ingestion order; optionally only rows created by ``as_of_created`` or by the row's own ``ts``).
A row without a match gets null: NaN for ``float`` columns, ``<NA>`` for ``int`` and
``categorical`` columns (pandas ``Int64``). The result keeps the entity DataFrame's rows, order,
index and columns. Thread-safe (reads only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from mlserve.errors import InvalidInput

from ._time import TimeLike, to_ns
from .definitions import FeatureView, feature_name
from .ingest import utc_ns
from .offline import ViewData
from .pit import NO_ROW, as_of_rows, joint_codes


class ViewSource(Protocol):
    """Where the join reads a view's rows: an :class:`.offline.OfflineStore`, or a wrapper
    that pins its part files and keeps them in memory (batch jobs, :mod:`mlserve.batch`)."""

    def load(self, view: FeatureView, columns: Sequence[str] | None = None, *,
             parts: Sequence[Path] | None = None) -> ViewData: ...


#: ``as_of_created`` value meaning "only rows created by the entity row's own timestamp".
AS_OF_ROW = "row"


def _query_times(entity_df: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    if column not in entity_df.columns:
        raise InvalidInput(f"entity_df has no timestamp column {column!r} (columns: "
                           f"{', '.join(map(str, entity_df.columns))}); pass timestamp_column=")
    series = entity_df[column]
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = pd.to_datetime(series, utc=True)
    else:
        if pd.api.types.is_numeric_dtype(series.dtype) and not series.isna().all():
            raise InvalidInput(f"entity_df column {column!r}: expected timestamps or ISO 8601 "
                               f"strings, got {series.dtype} numbers")
        parsed = pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
        bad = (series.notna() & parsed.isna()).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInput(f"entity_df column {column!r}: row {i} is {series.iloc[i]!r}, "
                               "not an ISO 8601 time")
    valid = parsed.notna().to_numpy()
    ns = utc_ns(parsed, f"entity_df column {column!r}")
    ns[~valid] = 0
    return ns, valid


def _query_keys(entity_df: pd.DataFrame, key: str, dtype: str, view: FeatureView
                ) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask) of join key ``key``; nulls get a placeholder value."""
    series = entity_df[key]
    null = series.isna().to_numpy()
    where = f"entity_df column {key!r} (join key of {view.resolved_entity.name!r})"
    if dtype == "int64":
        if pd.api.types.is_integer_dtype(series.dtype):
            if not null.any():
                return series.to_numpy(dtype=np.int64), null
            # A nullable integer column (Int64): exact, not through float64 (keys past 2^53).
            return series.to_numpy(dtype=np.int64, na_value=0), null
        if not (pd.api.types.is_numeric_dtype(series.dtype)
                and not pd.api.types.is_bool_dtype(series.dtype)):
            raise InvalidInput(f"{where}: expected int64 keys, got {series.dtype}")
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        present = ~null
        if np.any(values[present] != np.round(values[present])):
            i = int(np.flatnonzero(present & (values != np.round(values)))[0])
            raise InvalidInput(f"{where}: row {i} is {values[i].item()!r}, not an integer key")
        return np.where(present, values, 0).astype(np.int64), null
    if not (pd.api.types.is_string_dtype(series.dtype) or series.dtype == object):
        raise InvalidInput(f"{where}: expected string keys, got {series.dtype}")
    values = np.array(series.to_numpy(dtype=object, na_value=None), dtype=object)
    for row in np.flatnonzero(~null).tolist():
        if not isinstance(values[row], str):
            raise InvalidInput(f"{where}: row {row} is {values[row]!r}, expected a string key")
    values[null] = ""
    return values, null


def _output(view: FeatureView, column: str, values: np.ndarray, nulls: np.ndarray,
            rows: np.ndarray, index: pd.Index) -> pd.Series:
    hit = rows != NO_ROW
    take = np.where(hit, rows, 0)
    missing = ~hit
    if values.shape[0]:
        missing |= nulls[take]
    if view.column(column).dtype == "float":
        data = values[take].astype(np.float64) if values.shape[0] else \
            np.zeros(len(rows), dtype=np.float64)
        data[missing] = np.nan
        return pd.Series(data, index=index, copy=False)
    ints = values[take].astype(np.int64) if values.shape[0] else np.zeros(len(rows), np.int64)
    return pd.Series(pd.arrays.IntegerArray(ints, missing), index=index)


def historical_features(offline: ViewSource, entity_df: pd.DataFrame,
                        selections: Sequence[tuple[FeatureView, Sequence[str]]], *,
                        timestamp_column: str = "event_ts",
                        as_of_created: TimeLike | None = None) -> pd.DataFrame:
    """``entity_df`` with the selected features of each view joined point-in-time correctly.

    ``selections``: (applied view, its columns to add). ``as_of_created``: None (every row),
    a time (only rows with ``created_ts <=`` it) or ``"row"`` (only rows created by each
    entity row's own timestamp: what was known then, so late corrections do not leak).
    """
    if not isinstance(entity_df, pd.DataFrame):
        raise InvalidInput(f"entity_df must be a pandas DataFrame, got {type(entity_df).__name__}")
    cutoff_ns: int | None = None
    at_row = isinstance(as_of_created, str) and as_of_created == AS_OF_ROW
    if as_of_created is not None and not at_row:
        cutoff_ns = to_ns(as_of_created, "as_of_created")
    query_ts, ts_valid = _query_times(entity_df, timestamp_column)
    out = entity_df.copy()
    added: dict[str, pd.Series] = {}
    for view, columns in selections:
        entity = view.resolved_entity
        missing = [k for k in entity.join_keys if k not in entity_df.columns]
        if missing:
            raise InvalidInput(f"entity_df lacks join key(s) {', '.join(missing)} of entity "
                               f"{entity.name!r} (needed by feature view {view.ref!r})")
        keys, nulls = zip(*(_query_keys(entity_df, k, d, view)
                            for k, d in zip(entity.join_keys, entity.key_dtypes, strict=True)),
                          strict=True)
        query_null = np.logical_or.reduce(nulls) if nulls else np.zeros(len(entity_df), bool)
        data = offline.load(view, columns)
        feature_codes, query_codes = joint_codes(data.keys, keys, query_null)
        rows = as_of_rows(feature_codes, data.event_ts, data.created_ts, query_codes, query_ts,
                          ts_valid, ttl_ns=view.ttl_ns, created_cutoff_ns=cutoff_ns,
                          cutoff_at_query=at_row)
        for c in columns:
            name = feature_name(view.name, c)
            if name in added or name in out.columns:
                raise InvalidInput(f"feature column {name!r} would replace a column of "
                                   "entity_df or another selection; rename it")
            added[name] = _output(view, c, data.values[c], data.nulls[c], rows, out.index)
    if added:
        out = pd.concat([out, pd.DataFrame(added, index=out.index)], axis=1)
    return out
