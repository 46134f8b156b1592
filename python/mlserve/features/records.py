"""Online values: the fixed-width binary record of one entity in one feature-view version.

Layout (little-endian, ``f`` = the view's column count, ``b = ceil(f / 8)``):

    offset 0        int64       event_ts    UTC ns of the event the values describe
    offset 8        int64       created_ts  UTC ns the row was written offline (breaks ties)
    offset 16       float32[f]  values      in the view's column order; NaN where null
    offset 16+4f    uint8[b]    nulls       bit j (LSB first) set = column j is null
    padding to a multiple of 8 bytes

Every record of a view version has the same size, so a batch of records read from LMDB joins
into one buffer that numpy views as a structured array without copying or parsing. Null values
are stored as NaN as well, so a reader that only wants "NaN for missing" ignores the bitmap.
Pure functions; thread-safe.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bump when the layout changes; stored with each view version's online database.
RECORD_FORMAT = 1


@functools.lru_cache(maxsize=256)
def _record_dtype(f: int) -> np.dtype[Any]:
    null_bytes = (f + 7) // 8
    end = 16 + 4 * f + null_bytes
    return np.dtype({
        "names": ["event_ts", "created_ts", "values", "nulls"],
        "formats": ["<i8", "<i8", ("<f4", (f,)), ("u1", (null_bytes,))],
        "offsets": [0, 8, 16, 16 + 4 * f],
        "itemsize": (end + 7) // 8 * 8,
    })


@dataclass(frozen=True)
class RecordLayout:
    """The record dtype of a view with ``n_columns`` columns."""

    n_columns: int

    @property
    def null_bytes(self) -> int:
        return (self.n_columns + 7) // 8

    @property
    def dtype(self) -> np.dtype[Any]:
        return _record_dtype(self.n_columns)

    @property
    def record_bytes(self) -> int:
        return int(self.dtype.itemsize)

    def encode(self, event_ts: np.ndarray, created_ts: np.ndarray, values: np.ndarray,
               nulls: np.ndarray) -> np.ndarray:
        """Records for ``n`` rows: ``event_ts``/``created_ts`` int64 [n], ``values`` [n, f]
        (cast to float32), ``nulls`` bool [n, f]. Null values are written as NaN."""
        n = int(event_ts.shape[0])
        out = np.zeros(n, dtype=self.dtype)
        out["event_ts"] = event_ts
        out["created_ts"] = created_ts
        vals = np.asarray(values, dtype=np.float32).reshape(n, self.n_columns).copy()
        mask = np.asarray(nulls, dtype=bool).reshape(n, self.n_columns)
        vals[mask] = np.nan
        out["values"] = vals
        out["nulls"] = np.packbits(mask, axis=1, bitorder="little").reshape(n, self.null_bytes)
        return out

    def decode(self, buffer: bytes | memoryview) -> np.ndarray:
        """The records in ``buffer`` (a whole number of records) as a structured array view."""
        return np.frombuffer(buffer, dtype=self.dtype)

    def null_mask(self, records: np.ndarray) -> np.ndarray:
        """bool [n, f]: True where a column is null."""
        bits = np.unpackbits(records["nulls"].reshape(-1, self.null_bytes), axis=1,
                             bitorder="little")
        return bits[:, : self.n_columns].astype(bool)

    def describe(self) -> dict[str, Any]:
        """What the online store keeps beside a view's database to check its records."""
        return {"format": RECORD_FORMAT, "n_columns": self.n_columns,
                "record_bytes": self.record_bytes}
