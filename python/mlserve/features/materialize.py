"""Materialization: the latest offline row of every entity into the online store.

``materialize(start, end)`` takes the rows with ``start <= event_ts <= end`` and writes, per
entity, the greatest by (event_ts, created_ts, ingestion order). ``materialize_incremental(end)``
writes what is new since the previous incremental run of the view: rows of parts ingested since
(with ``event_ts <= end``) and rows of earlier parts with ``previous end < event_ts <= end``, so
late-arriving rows are never skipped. Its state (``end_ns`` and the part files covered) is
committed in the same LMDB transaction as the last batch of values: a writer killed earlier
leaves the previous state, and the next run redoes the work, which is idempotent since the
online store never replaces a newer record with an older one.

Both hold the online store's writer lock for the whole run, after listing (and, for a shared
store, downloading) the view's parts. Values in a batch are committed in one transaction;
readers see each key either before or after, never torn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from mlserve.errors import InvalidInput

from ._time import ns_to_iso
from .definitions import FeatureView
from .keys import encode_keys
from .offline import OfflineStore, ViewData, part_rows
from .online import OnlineStore
from .pit import joint_codes, latest_rows
from .records import RecordLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeResult:
    """What one materialization did."""

    view: str
    """``NAME/VERSION``."""
    start_ns: int | None
    """Earliest event_ts taken (None: from the beginning)."""
    end_ns: int
    rows: int
    """Offline rows in the window."""
    written: int
    """Keys written to the online store."""
    kept_newer: int
    """Keys whose stored value was newer and stayed."""


def _records(view: FeatureView, data: ViewData) -> tuple[list[bytes], np.ndarray]:
    """(keys, records) of the latest row per entity of ``data``."""
    empty = np.zeros(0, dtype=bool)
    codes, _ = joint_codes(data.keys, tuple(k[:0] for k in data.keys), empty)
    latest = data.take(latest_rows(codes, data.event_ts, data.created_ts))
    n = latest.n_rows
    values = np.empty((n, len(view.columns)), dtype=np.float32)
    nulls = np.empty((n, len(view.columns)), dtype=bool)
    for j, c in enumerate(view.column_names):
        values[:, j] = latest.values[c]
        nulls[:, j] = latest.nulls[c]
    records = RecordLayout(len(view.columns)).encode(latest.event_ts, latest.created_ts,
                                                     values, nulls)
    return encode_keys(view.resolved_entity, list(latest.keys)), records


def materialize(offline: OfflineStore, online: OnlineStore, view: FeatureView, start_ns: int,
                end_ns: int, *, batch_keys: int = 65_536, lock_timeout_s: float = 60.0
                ) -> MaterializeResult:
    """Writes the latest row per entity with ``start_ns <= event_ts <= end_ns``."""
    if end_ns < start_ns:
        raise InvalidInput(f"materialize {view.ref}: end {ns_to_iso(end_ns)} is before start "
                           f"{ns_to_iso(start_ns)}")
    parts = offline.parts(view)  # fetched before the lock (a shared store downloads them)
    with online.writer(lock_timeout_s):
        data = offline.load(view, parts=parts)
        window = data.take(np.flatnonzero((data.event_ts >= start_ns)
                                          & (data.event_ts <= end_ns)))
        keys, records = _records(view, window)
        written, kept = online.write(view, keys, records, batch_keys=batch_keys)
    logger.info("materialized %s: %d rows, %d keys written, %d newer kept", view.ref,
                window.n_rows, written, kept)
    return MaterializeResult(view.ref, start_ns, end_ns, window.n_rows, written, kept)


def materialize_incremental(offline: OfflineStore, online: OnlineStore, view: FeatureView,
                            end_ns: int, *, batch_keys: int = 65_536,
                            lock_timeout_s: float = 60.0) -> MaterializeResult:
    """Writes what was ingested or became due (``event_ts <= end_ns``) since the last run."""
    parts = offline.parts(view)  # fetched before the lock (a shared store downloads them)
    with online.writer(lock_timeout_s):
        state = online.state(view) or {}
        prev_end = state.get("end_ns")
        if prev_end is not None and end_ns < prev_end:
            raise InvalidInput(f"materialize {view.ref}: end {ns_to_iso(end_ns)} is before the "
                               f"previous incremental end {ns_to_iso(prev_end)}")
        covered = set(state.get("parts", []))
        new_part = np.zeros(0, dtype=bool)
        chunks: list[np.ndarray] = []
        for p in parts:
            rows = part_rows(p)
            chunks.append(np.full(rows, p.name not in covered, dtype=bool))
        if chunks:
            new_part = np.concatenate(chunks)
        data = offline.load(view, parts=parts)
        due = data.event_ts <= end_ns
        if prev_end is not None:
            due &= new_part | (data.event_ts > prev_end)
        window = data.take(np.flatnonzero(due))
        keys, records = _records(view, window)
        new_state = {"end_ns": end_ns, "parts": sorted(covered | {p.name for p in parts})}
        written, kept = online.write(view, keys, records, batch_keys=batch_keys, state=new_state)
    logger.info("materialized %s incrementally to %s: %d rows, %d keys written, %d newer kept",
                view.ref, ns_to_iso(end_ns), window.n_rows, written, kept)
    return MaterializeResult(view.ref, prev_end, end_ns, window.n_rows, written, kept)
