"""Point-in-time selection, vectorized: which feature row each query (entity key, time) gets.

For a query at time ``t`` the answer is, among the rows of the same entity with
``event_ts <= t`` (and ``created_ts <= cutoff`` in bitemporal mode), the greatest by
``(event_ts, created_ts, ingestion sequence)``, provided that its ``event_ts >= t - ttl``
(inclusive) when the view has a TTL; otherwise none (-1).

How, without a loop per row: rank the feature rows by (key code, event_ts, created_ts, sequence)
(a stable lexsort). In that order, a query (key, t) wants the last row of its key with
``event_ts <= t``: one ``searchsorted`` of the query's (key, t) among the rows' (key, event_ts),
both packed into one int64 (key code, then the time's position among the row times). With the
per-row bitemporal cut-off (``created_ts <= t``) a row becomes visible at
``max(event_ts, created_ts)`` instead: rows are ordered by (key, visible time) and carry the
running maximum of their rank (``np.maximum.accumulate``; ranks of a key are all above those of
smaller keys, so within a key it is the best visible row so far, and a query that lands on a
smaller key's rows is detected). Cost: a few sorts of the m rows and of the n queries' times
and keys, O(m log m + n log n + n log m).

Pure functions of numpy arrays; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: "No matching row".
NO_ROW = -1


def joint_codes(feature_keys: Sequence[np.ndarray], query_keys: Sequence[np.ndarray],
                query_null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense int64 codes of entity keys (one array per join key), equal for equal keys across
    feature rows and queries; -1 for queries with a null key."""
    m = len(feature_keys[0])
    combined: np.ndarray | None = None
    for f, q in zip(feature_keys, query_keys, strict=True):
        both = np.concatenate([np.asarray(f), np.asarray(q)]) if f.dtype == q.dtype else \
            np.concatenate([np.asarray(f, dtype=object), np.asarray(q, dtype=object)])
        codes, uniques = pd.factorize(both, use_na_sentinel=True)
        codes = codes.astype(np.int64)
        if combined is None:
            combined = codes
        else:
            # Re-densify after each key so that the mixed-radix code never overflows.
            pair, _ = pd.factorize(combined * (len(uniques) + 1) + codes)
            combined = pair.astype(np.int64)
    assert combined is not None
    feature_codes = combined[:m]
    query_codes = combined[m:].copy()
    query_codes[query_null] = -1
    return feature_codes, query_codes


def as_of_rows(feature_codes: np.ndarray, event_ts: np.ndarray, created_ts: np.ndarray,
               query_codes: np.ndarray, query_ts: np.ndarray, query_valid: np.ndarray, *,
               ttl_ns: int | None, created_cutoff_ns: int | None = None,
               cutoff_at_query: bool = False) -> np.ndarray:
    """For each query, the index of its feature row (see the module doc) or NO_ROW.

    Feature rows (``feature_codes``, ``event_ts``, ``created_ts``: [m], in ingestion order) and
    queries (``query_codes``, ``query_ts``, ``query_valid``: [n]; invalid queries get NO_ROW).
    ``created_cutoff_ns``: only rows with ``created_ts <= created_cutoff_ns``;
    ``cutoff_at_query``: only rows with ``created_ts <= `` the query's time.
    """
    n = int(query_codes.shape[0])
    result = np.full(n, NO_ROW, dtype=np.int64)
    rows = np.arange(feature_codes.shape[0], dtype=np.int64)
    if created_cutoff_ns is not None:
        rows = rows[created_ts <= created_cutoff_ns]
    fc, fe, fcr = feature_codes[rows], event_ts[rows], created_ts[rows]
    m = int(rows.shape[0])
    queries = np.flatnonzero(query_valid & (query_codes >= 0))
    if m == 0 or queries.shape[0] == 0:
        return result
    qc, qt = query_codes[queries], query_ts[queries]

    by_rank = rank_order(fc, fe, fcr)
    if cutoff_at_query:
        # Rows in the order they become visible; the best rank seen so far along that order.
        visible = np.maximum(fe, fcr)
        order = np.lexsort((visible, fc))
        rank = np.empty(m, dtype=np.int64)
        rank[by_rank] = np.arange(m, dtype=np.int64)
        best_so_far = np.maximum.accumulate(rank[order])
        visible = visible[order]
        codes = fc[order]
    else:
        # Rank order is already (key, event_ts) order, and rank only grows along it.
        best_so_far = np.arange(m, dtype=np.int64)
        visible = fe[by_rank]
        codes = fc[by_rank]
    # One int64 search key per row and per query: key code, then the time's position among the
    # row times (rows at even positions, distinct and in row order among equal times; a query
    # just after the rows at or before its time), so that row keys are sorted by construction.
    # Needles are searched in sorted order: random ones cost ten times more in cache misses.
    by_time = np.argsort(visible, kind="stable")
    row_pos = np.empty(m, dtype=np.int64)
    row_pos[by_time] = np.arange(m, dtype=np.int64)
    span = 2 * m + 2
    row_keys = codes * span + 2 * row_pos
    q_by_time = np.argsort(qt)
    at_or_before = np.searchsorted(visible[by_time], qt[q_by_time], side="right")
    query_keys = qc[q_by_time] * span + 2 * at_or_before - 1
    q_by_key = np.argsort(query_keys)
    pos = np.empty(len(qc), dtype=np.int64)
    pos[q_by_time[q_by_key]] = np.searchsorted(row_keys, query_keys[q_by_key], side="right") - 1
    found = pos >= 0
    row = by_rank[best_so_far[np.where(found, pos, 0)]]
    found &= fc[row] == qc
    if ttl_ns is not None:
        # event_ts >= t - ttl as an age (>= 0 where found), so a TTL past int64's range (a
        # view that "never expires") is clamped rather than overflowing, as the online read does.
        found &= (qt - fe[row]) <= np.int64(min(ttl_ns, (1 << 63) - 1))
    result[queries[found]] = rows[row[found]]
    return result


def rank_order(codes: np.ndarray, event_ts: np.ndarray, created_ts: np.ndarray) -> np.ndarray:
    """Row indices sorted by (key code, event_ts, created_ts, ingestion sequence)."""
    m = int(codes.shape[0])
    # Fast path, two sorts instead of lexsort's three passes: rank event times (stable, so
    # equal times keep ingestion order), sort by (code, that rank) packed into one int64.
    by_time = np.argsort(event_ts, kind="stable")
    time_pos = np.empty(m, dtype=np.int64)
    time_pos[by_time] = np.arange(m, dtype=np.int64)
    order = np.argsort(codes * max(m, 1) + time_pos)  # keys are distinct: any sort is stable
    same = (codes[order[1:]] == codes[order[:-1]]) & (event_ts[order[1:]] == event_ts[order[:-1]])
    if same.any():  # equal (key, event_ts): created_ts decides before ingestion order
        return np.lexsort((created_ts, event_ts, codes))  # stable
    return order


def latest_rows(feature_codes: np.ndarray, event_ts: np.ndarray, created_ts: np.ndarray
                ) -> np.ndarray:
    """Index of the greatest row by (event_ts, created_ts, ingestion sequence) of each key
    code, in code order (materialization's "latest value per entity")."""
    if feature_codes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    order = rank_order(feature_codes, event_ts, created_ts)
    codes = feature_codes[order]
    last = np.ones(codes.shape[0], dtype=bool)
    last[:-1] = codes[1:] != codes[:-1]
    return order[last].astype(np.int64)
