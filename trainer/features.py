"""Training tables from the feature store: an entity file joined with a feature service's
point-in-time correct values (``FeatureStore.historical_features``).

The entity file holds one row per training example: the service's join keys, an event
timestamp, the label and optionally request-time columns (what the caller knows when it asks
for a prediction, e.g. the transaction's amount). :func:`feature_table` adds the service's
features (``<view>__<column>``, as ``online_features`` names them at serving time), types them
for training by their store dtype (``float`` and ``int`` numeric as float64 with NaN,
``categorical`` codes as categories) and says what the bundle's lineage records: the service
and the views with their versions, the entity keys and the request-time features. The server
reads that lineage to fetch the same features online for entity-keyed requests.
Pure function of its arguments and the store's contents; thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlserve.errors import InvalidInput
from mlserve.features import FeatureService, FeatureStore, feature_name
from mlserve.trainer.config import TrainConfig
from mlserve.trainer.load import DataSource, infer_kinds, read_table

#: What names the feature store: a FeatureStore, its root, or None for the default root
#: (``$MLSERVE_FEATURE_STORE``, else ``$MLSERVE_HOME/features``).
StoreLike = FeatureStore | str | os.PathLike[str] | None


@dataclass
class FeatureTable:
    """An entity file with its point-in-time features, ready for ``load_table``."""

    frame: pd.DataFrame
    numeric: list[str]
    """Numeric features: the service's ``float``/``int`` columns, then request-time ones."""
    categorical: list[str]
    """Categorical features: the service's ``categorical`` columns, then request-time ones."""
    timestamp: str
    source: str
    lineage: dict[str, Any]
    """``feature_service``, ``feature_views``, ``entity_keys``, ``request_features``,
    ``timestamp_column``, ``feature_store``: merged into the bundle's ``lineage``."""


def _store(store: StoreLike) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else FeatureStore(store)


def _service(store: FeatureStore, features: str | FeatureService) -> FeatureService:
    if isinstance(features, FeatureService):
        features = features.ref
    if not isinstance(features, str):
        raise InvalidInput("features: expected a feature service name (NAME or NAME/VERSION)")
    return store.service(features)


def training_column(series: pd.Series, dtype: str) -> pd.Series:
    """A joined feature column as training wants it: ``float``/``int`` as float64 (NaN for
    null), ``categorical`` codes as strings (None for null), the keys of the vocabulary the
    trainer fits; serving maps the online float32 codes through that vocabulary."""
    if dtype != "categorical":
        return pd.Series(series.to_numpy(dtype=np.float64, na_value=np.nan), index=series.index,
                         name=series.name)
    codes = series.astype("Int64")
    out = np.full(len(codes), None, dtype=object)
    present = codes.notna().to_numpy()
    out[present] = codes[present].astype(np.int64).astype(str).to_numpy()
    return pd.Series(out, index=series.index, name=series.name, dtype=object)


def feature_table(entities: DataSource, label: str, features: str | FeatureService, *,
                  store: StoreLike = None, timestamp: str | None = None,
                  numeric: Sequence[str] | None = None,
                  categorical: Sequence[str] | None = None,
                  as_of_created: Any = None,
                  config: TrainConfig | None = None) -> FeatureTable:
    """The training table of ``features`` (a feature service, ``NAME`` or ``NAME/VERSION``)
    for the rows of ``entities`` (a DataFrame or a .csv/.parquet path).

    ``timestamp``: the entity file's event-time column (default ``event_ts``); features are
    joined as of that time (latest ``event_ts <=`` it within each view's TTL). ``numeric`` /
    ``categorical``: the request-time feature columns of the entity file; when neither is given,
    every column besides the join keys, the timestamp, the label and ``config.exclude`` is one,
    typed by dtype. ``as_of_created``: the bitemporal cut-off of ``historical_features``.
    """
    config = config or TrainConfig()
    timestamp = timestamp or "event_ts"
    frame, source = read_table(entities)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    fs = _store(store)
    try:
        return _feature_table(fs, frame, source, label, features, timestamp, numeric,
                              categorical, as_of_created, config)
    finally:
        if fs is not store:
            fs.close()


def _feature_table(fs: FeatureStore, frame: pd.DataFrame, source: str, label: str,
                   features: str | FeatureService, timestamp: str,
                   numeric: Sequence[str] | None, categorical: Sequence[str] | None,
                   as_of_created: Any, config: TrainConfig) -> FeatureTable:
    service = _service(fs, features)
    resolved = fs.resolve(service)
    join_keys: dict[str, str] = {}
    for view, _ in resolved:
        entity = view.resolved_entity
        join_keys.update(zip(entity.join_keys, entity.key_dtypes, strict=True))
    for column, what in ((label, "label"), (timestamp, "timestamp")):
        if column not in frame.columns:
            raise InvalidInput(f"entity file {source}: no {what} column {column!r} (columns: "
                               f"{', '.join(frame.columns)})")
    missing_keys = [k for k in join_keys if k not in frame.columns]
    if missing_keys:
        raise InvalidInput(f"entity file {source}: feature service {service.ref!r} needs join "
                           f"key column(s) {', '.join(missing_keys)}")
    if not pd.api.types.is_datetime64_any_dtype(frame[timestamp]):
        try:
            frame[timestamp] = pd.to_datetime(frame[timestamp], utc=True, format="ISO8601")
        except (TypeError, ValueError):
            raise InvalidInput(f"entity file {source}: column {timestamp!r} must hold ISO 8601 "
                               "times (e.g. 2026-01-31T12:00:00Z)") from None
    joined = fs.historical_features(frame, service, timestamp_column=timestamp,
                                    as_of_created=as_of_created)

    store_numeric: list[str] = []
    store_categorical: list[str] = []
    views: list[dict[str, Any]] = []
    for view, columns in resolved:
        for c in columns:
            name = feature_name(view.name, c)
            dtype = view.column(c).dtype
            joined[name] = training_column(joined[name], dtype)
            (store_categorical if dtype == "categorical" else store_numeric).append(name)
        entity = view.resolved_entity
        views.append({"name": view.name, "version": view.version, "columns": list(columns),
                      "entity": entity.name, "join_keys": list(entity.join_keys),
                      "key_dtypes": list(entity.key_dtypes), "ttl_seconds": view.ttl_seconds})
    store_features = {*store_numeric, *store_categorical}

    if numeric is None and categorical is None:
        skip = {label, timestamp, *join_keys, *config.exclude, *store_features}
        req_numeric, req_categorical = infer_kinds(
            joined, [c for c in frame.columns if c not in skip], config)
    else:
        req_numeric, req_categorical = list(numeric or []), list(categorical or [])
        clash = sorted((set(req_numeric) | set(req_categorical)) & (store_features
                                                                    | set(join_keys)))
        if clash:
            raise InvalidInput(f"request-time feature(s) {', '.join(clash)} are join keys or "
                               f"features of service {service.ref!r}; list only the entity "
                               "file's own columns")
    lineage = {
        "feature_service": {"name": service.name, "version": service.version},
        "feature_views": views,
        "entity_keys": [{"name": k, "dtype": d} for k, d in join_keys.items()],
        "request_features": [*req_numeric, *req_categorical],
        "timestamp_column": timestamp,
        "feature_store": fs.location,
        "entities": source,
    }
    return FeatureTable(frame=joined, numeric=[*store_numeric, *req_numeric],
                        categorical=[*store_categorical, *req_categorical],
                        timestamp=timestamp, source=source, lineage=lineage)
