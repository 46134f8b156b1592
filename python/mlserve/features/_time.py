"""Timestamps of the feature store: UTC nanoseconds since the epoch (int64) everywhere inside.

Public APIs accept ``datetime`` (naive means UTC), ``numpy.datetime64``, ISO 8601 strings and
``"now"``; this module turns them into int64 ns. No pandas here: the online store and the server
import it. Stateless and thread-safe.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np

from mlserve.errors import InvalidInput

#: What a caller may pass where a timestamp is expected.
TimeLike = datetime | np.datetime64 | str

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_ns() -> int:
    """The current UTC time in ns since the epoch."""
    return time.time_ns()


def to_ns(value: TimeLike, what: str = "timestamp") -> int:
    """``value`` as UTC ns since the epoch; InvalidInput naming ``what`` when it is not a time.

    Plain numbers are refused on purpose: seconds, milliseconds and nanoseconds look alike.
    """
    if isinstance(value, str):
        if value.strip().lower() == "now":
            return now_ns()
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                f"{what}: {value!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z) or 'now'"
            ) from None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        delta = aware - _EPOCH
        # Exact integer arithmetic: datetime has microsecond resolution, pandas.Timestamp
        # (a datetime subclass) may carry nanoseconds.
        nanos = int(getattr(value, "nanosecond", 0))
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000 \
            + nanos
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise InvalidInput(f"{what}: NaT is not a time")
        return int(value.astype("datetime64[ns]").astype(np.int64))
    raise InvalidInput(
        f"{what}: expected a datetime, numpy.datetime64, ISO 8601 string or 'now', "
        f"got {type(value).__name__}"
    )


def ns_to_iso(ns: int) -> str:
    """``2026-01-31T12:00:00.000000Z`` (microseconds) for messages and tables."""
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).replace(
        microsecond=(ns % 1_000_000_000) // 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
