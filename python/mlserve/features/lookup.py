"""Online lookups of a feature service: what a model consumes, for a batch of entities.

A :class:`ServiceReader` is prepared once per (service version) — views, column positions,
join keys — and then reads batches: per view one native read of all keys (one LMDB read
transaction, the GIL released; an int64-keyed entity's values go to it as one int64 array,
encoded natively), values of all views side by side in the service's feature order
(``<view>__<column>``, the names the training table of ``historical_features`` has). This is
the path the server's entity-keyed requests take; it imports neither pandas nor pyarrow.
Thread-safe (reads only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput

from .definitions import Entity, FeatureService, FeatureView, feature_name
from .keys import encode_keys, int64_key_values
from .online import OnlineStore, RowStatus


@dataclass(frozen=True)
class OnlineFeatures:
    """Feature values of a batch of entities, row-aligned with the keys asked for."""

    names: tuple[str, ...]
    """``<view>__<column>`` per value column."""
    values: np.ndarray
    """float32 [n, len(names)]; NaN where null, missing or expired."""
    views: tuple[str, ...]
    """``NAME/VERSION`` per status column."""
    status: np.ndarray
    """int8 [n, len(views)] of :class:`RowStatus`."""
    event_ts: np.ndarray
    """int64 [n, len(views)]: UTC ns of each view's value (0 when missing)."""

    def status_names(self) -> list[list[str]]:
        return [[RowStatus(int(s)).name.lower() for s in row] for row in self.status]


class ServiceReader:
    """Batched online reads of ``service`` (its views as pinned, resolved)."""

    def __init__(self, online: OnlineStore, service: FeatureService,
                 views: Sequence[FeatureView]) -> None:
        if len(views) != len(service.selections):
            raise InvalidInput(f"{len(views)} views for {len(service.selections)} selections")
        self.online = online
        self.service = service
        self._parts: list[tuple[FeatureView, np.ndarray | None]] = []
        names: list[str] = []
        keys: dict[str, str] = {}
        for sel, view in zip(service.selections, views, strict=True):
            columns = sel.columns if sel.columns is not None else view.column_names
            positions = np.asarray([view.column_names.index(view.column(c).name)
                                    for c in columns], dtype=np.intp)
            whole = positions.tolist() == list(range(len(view.columns)))
            self._parts.append((view, None if whole else positions))
            names += [feature_name(view.name, c) for c in columns]
            entity = view.resolved_entity
            keys.update(zip(entity.join_keys, entity.key_dtypes, strict=True))
        self.names = tuple(names)
        self.views = tuple(v.ref for v, _ in self._parts)
        self.join_keys = tuple(keys)
        """Every join key a request must carry, in first-use order."""
        self.key_dtypes = keys
        """Join key -> its dtype (``int64`` or ``string``)."""

    def read(self, keys: Mapping[str, Any] | Sequence[Any], *, now_ns: int | None = None
             ) -> OnlineFeatures:
        """Features for the entities in ``keys``: join key -> values (one array-like of n per
        key), or, for a service with a single join key, the values themselves. ``now_ns``
        enforces TTLs (values older than ``now - ttl`` are EXPIRED)."""
        by_key = self._key_columns(keys)
        if len(self._parts) == 1:  # the common case: the arrays as read, no copies
            view, positions = self._parts[0]
            values, status, event_ts = self.online.read_arrays(
                view, self._encode(view.resolved_entity, by_key), now_ns=now_ns)
            n = status.shape[0]
            return OnlineFeatures(self.names, values if positions is None else values[:, positions],
                                  self.views, status.reshape(n, 1), event_ts.reshape(n, 1))
        n = len(next(iter(by_key.values())))
        encoded: dict[str, list[bytes] | np.ndarray] = {}
        blocks: list[np.ndarray] = []
        status = np.empty((n, len(self._parts)), dtype=np.int8)
        event_ts = np.empty((n, len(self._parts)), dtype=np.int64)
        for j, (view, positions) in enumerate(self._parts):
            entity = view.resolved_entity
            enc = encoded.get(entity.name)
            if enc is None:
                enc = encoded[entity.name] = self._encode(entity, by_key)
            got_values, status[:, j], event_ts[:, j] = self.online.read_arrays(view, enc,
                                                                               now_ns=now_ns)
            blocks.append(got_values if positions is None else got_values[:, positions])
        values = np.concatenate(blocks, axis=1)
        return OnlineFeatures(self.names, values, self.views, status, event_ts)

    def _key_columns(self, keys: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
        if not isinstance(keys, Mapping):
            if len(self.join_keys) != 1:
                raise InvalidInput(f"feature service {self.service.ref!r} needs join keys "
                                   f"{', '.join(self.join_keys)}: pass a mapping key -> values")
            return {self.join_keys[0]: keys}
        missing = [k for k in self.join_keys if k not in keys]
        if missing:
            raise InvalidInput(f"feature service {self.service.ref!r}: missing join key(s) "
                               f"{', '.join(missing)}")
        columns = {k: keys[k] for k in self.join_keys}
        sizes = {k: len(v) for k, v in columns.items()}
        if len(set(sizes.values())) > 1:
            raise InvalidInput(f"join keys have different lengths: {sizes}")
        return columns

    @staticmethod
    def _encode(entity: Entity, by_key: Mapping[str, Any]) -> list[bytes] | np.ndarray:
        columns = [by_key[k] for k in entity.join_keys]
        if entity.key_dtypes == ("int64",):
            values = columns[0]
            if type(values) is list and values and type(values[0]) is int:
                return values  # converted, and checked, by the core (OnlineStore.read_arrays)
            return int64_key_values(entity, columns)
        return encode_keys(entity, columns)
