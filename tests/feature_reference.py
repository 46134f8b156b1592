"""Plain-Python references of the feature store's semantics, for tests (no numpy tricks, no
mlserve): a scan over every history row per query, straight from the definitions of issue 5.

History rows are dicts ``{"key": k, "event": e, "created": c, **features}`` in ingestion order
(their position is the ingestion sequence); times are integers (seconds in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pit_row(history: Sequence[dict[str, Any]], key: object, ts: int, *, ttl: int | None,
            created_cutoff: int | None) -> dict[str, Any] | None:
    """The row a point-in-time join gives the query (key, ts), or None.

    Candidates: same key, ``event <= ts``, ``event >= ts - ttl`` when a TTL is set (inclusive),
    ``created <= created_cutoff`` when a cut-off is set. The answer is the candidate with the
    latest event, then the latest created, then the latest ingested.
    """
    best: tuple[int, int, int] | None = None
    answer: dict[str, Any] | None = None
    for seq, row in enumerate(history):
        if row["key"] != key or row["event"] > ts:
            continue
        if ttl is not None and row["event"] < ts - ttl:
            continue
        if created_cutoff is not None and row["created"] > created_cutoff:
            continue
        rank = (row["event"], row["created"], seq)
        if best is None or rank > best:
            best, answer = rank, row
    return answer


def latest_row(history: Sequence[dict[str, Any]], key: object, *, start: int | None = None,
               end: int) -> dict[str, Any] | None:
    """The row materialization keeps for ``key``: the greatest (event, created, ingestion
    order) with ``start <= event <= end``."""
    best: tuple[int, int, int] | None = None
    answer: dict[str, Any] | None = None
    for seq, row in enumerate(history):
        if row["key"] != key or row["event"] > end or (start is not None and row["event"] < start):
            continue
        rank = (row["event"], row["created"], seq)
        if best is None or rank > best:
            best, answer = rank, row
    return answer
