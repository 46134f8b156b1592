"""Validation of rows ingested into a feature view: a CSV/Parquet file or a DataFrame in, a
typed Arrow table out, or InvalidInput naming the view, the column, the row and the value.

The table has the view's join keys (int64 or string), ``event_ts`` and ``created_ts``
(``timestamp[ns, UTC]``) and one column per feature (``float`` -> float64, ``int`` and
``categorical`` -> int64; nullable). Rules:

- join keys and ``event_ts`` are required and never null; ``event_ts`` is an ISO 8601 string or
  a timestamp (naive means UTC); plain numbers are refused (seconds or nanoseconds?);
- ``created_ts`` is optional: absent or null means the ingestion time;
- feature columns are required, nulls allowed; ``int`` values must be integral; categorical
  values are integer codes, or strings mapped through the column's vocabulary (unseen -> -1);
- other columns of the input are ignored (and reported).

Pure functions; thread-safe.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlserve._objectstore import is_uri
from mlserve.errors import InvalidInput

from .definitions import Column, FeatureView

TIMESTAMP_TYPE = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True)
class ValidatedRows:
    """Rows ready to append to a view's offline dataset."""

    table: pa.Table
    ignored_columns: tuple[str, ...]


def read_table_file(path: str | os.PathLike[str], view: FeatureView | None = None
                    ) -> pd.DataFrame:
    """A CSV or Parquet file (a path, or an ``s3://BUCKET/KEY`` object, downloaded first) as a
    DataFrame. CSV cells are read as text (converted and checked per column by
    :func:`validate_rows`), so a string key ``"007"`` stays ``"007"``."""
    if is_uri(path):
        return _read_object(os.fspath(path), view)
    file = Path(path)
    if not file.exists():
        raise InvalidInput(f"{file}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix in (".parquet", ".pq") or file.is_dir():
            return pd.read_parquet(file)
        if suffix in (".csv", ".txt", ".gz"):
            # Text as written: only an empty cell is null ("NA" is a country code, "None" a
            # category; pandas' default would read both as null).
            return pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InvalidInput(f"{file}: cannot be read: {exc}") from None
    raise InvalidInput(f"{file}: expected a .csv or .parquet file")


def _read_object(uri: str, view: FeatureView | None) -> pd.DataFrame:
    """An ``s3://BUCKET/KEY`` CSV or Parquet object, through a temp file."""
    import tempfile

    from mlserve._objectstore import S3Store, normalize_uri

    text = normalize_uri(uri, "source")
    folder, _, name = text.rpartition("/")
    if folder == "s3:/" or not name:
        raise InvalidInput(f"source {uri}: expected s3://BUCKET/KEY (an object, not a bucket)")
    with tempfile.TemporaryDirectory(prefix="mlserve-source-") as tmp:
        local = Path(tmp) / name
        if S3Store(folder, what="reading a source").download(name, local) is None:
            raise InvalidInput(f"{text}: no such object")
        return read_table_file(local, view)


def _where(view: FeatureView, column: str) -> str:
    return f"feature view {view.ref!r}, column {column!r}"


def _first_bad(series: pd.Series, bad: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    value = series.iloc[i]
    return f"row {i}: {value.item() if isinstance(value, np.generic) else value!r}"


def _numbers(view: FeatureView, name: str, series: pd.Series, expected: str) -> pd.Series:
    """``series`` as float64 (NaN for null), InvalidInput on a non-numeric value."""
    if pd.api.types.is_bool_dtype(series.dtype):
        raise InvalidInput(f"{_where(view, name)}: expected {expected}, got booleans")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        raise InvalidInput(f"{_where(view, name)}: expected {expected}, got timestamps")
    out = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = (series.notna() & out.isna()).to_numpy()
    if bad.any():
        raise InvalidInput(f"{_where(view, name)}: expected {expected}, got "
                           f"{_first_bad(series, bad)}")
    return out


#: Text that means "no value" in a number, time or category column (pandas' default NA
#: strings). CSV cells are read as text with only an empty cell null, so that a join key or a
#: vocabulary value spelled like one ("NA" for Namibia, a category "None") stays text.
_NA_TOKENS = frozenset({"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                        "nan", "null"})


def _na_to_null(series: pd.Series, keep: frozenset[str] = frozenset()) -> pd.Series:
    """``series`` with the NA spellings (except those in ``keep``) as nulls, for text."""
    if not (series.dtype == object or pd.api.types.is_string_dtype(series.dtype)):
        return series
    tokens = _NA_TOKENS - keep
    na = series.isin(tokens).to_numpy(dtype=bool)  # hashed in C; only str values match
    return series.mask(na) if na.any() else series


#: Integers above this magnitude do not survive float64: read such values exactly.
_FLOAT_EXACT = 2**53
_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*\Z")


def _exact_integers(view: FeatureView, name: str, series: pd.Series, expected: str
                    ) -> pa.Array:
    """Integers from Python objects or text (a CSV cell) one by one, exactly: the float64
    path rounds values past 2^53, which for entity keys would join another entity's rows."""
    values = series.to_numpy(dtype=object, na_value=None)
    present = series.notna().to_numpy()
    out = np.zeros(len(values), dtype=np.int64)
    for i in np.flatnonzero(present).tolist():
        v = values[i]
        exact: int | None = None
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            exact = int(v)
        elif isinstance(v, str) and _INT_TEXT.match(v):
            exact = int(v)
        elif isinstance(v, (str, float, np.floating)) and not isinstance(v, bool):
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer() and abs(f) < _FLOAT_EXACT:
                exact = int(f)
        if exact is None or not -(2**63) <= exact < 2**63:
            bad = np.zeros(len(values), dtype=bool)
            bad[i] = True
            raise InvalidInput(f"{_where(view, name)}: expected {expected}, got "
                               f"{_first_bad(series, bad)}")
        out[i] = exact
    return pa.array(out, type=pa.int64(), mask=~present)


def _integers(view: FeatureView, name: str, series: pd.Series, expected: str) -> pa.Array:
    if pd.api.types.is_integer_dtype(series.dtype):
        return pa.array(series, type=pa.int64(), from_pandas=True)
    as_float = _numbers(view, name, series, expected)
    values = as_float.to_numpy()
    present = ~np.isnan(values)
    if not pd.api.types.is_float_dtype(series.dtype) and present.any() and \
            float(np.abs(values[present]).max()) >= _FLOAT_EXACT:
        return _exact_integers(view, name, series, expected)
    bad = present & ((values != np.round(values)) | (np.abs(values) > 2**63 - 1024))
    if bad.any():
        raise InvalidInput(f"{_where(view, name)}: expected {expected}, got "
                           f"{_first_bad(series, bad)}")
    ints = np.where(present, values, 0).astype(np.int64)
    return pa.array(ints, type=pa.int64(), mask=~present)


def _category_codes(view: FeatureView, column: Column, series: pd.Series) -> pa.Array:
    assert column.vocabulary is not None
    index = {v: i for i, v in enumerate(column.vocabulary)}
    present = series.notna().to_numpy()

    def key(v: object) -> str:
        # 3.0 and 3 are the same category "3", as in the trainer's vocabularies.
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    codes = np.array([index.get(key(v), -1) if p else 0
                      for v, p in zip(series.tolist(), present, strict=True)], dtype=np.int64)
    return pa.array(codes, type=pa.int64(), mask=~present)


def utc_ns(parsed: pd.Series, where: str) -> np.ndarray:
    """Parsed UTC times -> int64 ns since the epoch (NaT -> the int64 minimum). A time outside
    what int64 nanoseconds hold (about 1677-09-21 to 2262-04-11) is an InvalidInput naming it,
    not pandas' OutOfBoundsDatetime."""
    try:
        return np.asarray(parsed.astype("datetime64[ns, UTC]").array.asi8).copy()
    except pd.errors.OutOfBoundsDatetime:
        low, high = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        mask = (parsed.notna() & ((parsed < low) | (parsed > high))).to_numpy()
        rows = np.flatnonzero(mask)
        first = f"{parsed.iloc[rows[0]]} (row {rows[0]})" if len(rows) else "a time"
        raise InvalidInput(f"{where}: {first} is outside the times the feature store holds "
                           "(UTC nanoseconds: 1677-09-21 to 2262-04-11)") from None


def _timestamps(view: FeatureView, name: str, series: pd.Series, *, required: bool,
                default_ns: int) -> pa.Array:
    if pd.api.types.is_numeric_dtype(series.dtype) and not series.isna().all():
        raise InvalidInput(f"{_where(view, name)}: expected ISO 8601 times or timestamps, got "
                           f"{series.dtype} numbers (seconds or nanoseconds? write times)")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = pd.to_datetime(series, utc=True)
    else:
        parsed = pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
        bad = (series.notna() & parsed.isna()).to_numpy()
        if bad.any():
            raise InvalidInput(f"{_where(view, name)}: expected an ISO 8601 time, got "
                               f"{_first_bad(series, bad)}")
    missing = parsed.isna().to_numpy()
    if required and missing.any():
        raise InvalidInput(f"{_where(view, name)}: {int(missing.sum())} null time(s), first at "
                           f"row {int(np.flatnonzero(missing)[0])}; every row needs one")
    ns = utc_ns(parsed, _where(view, name))
    ns[missing] = default_ns
    return pa.array(ns, type=pa.int64()).cast(TIMESTAMP_TYPE)


def _join_key(view: FeatureView, name: str, dtype: str, series: pd.Series) -> pa.Array:
    nulls = series.isna().to_numpy()
    if nulls.any():
        raise InvalidInput(f"{_where(view, name)}: join keys must not be null; "
                           f"{int(nulls.sum())} null(s), first at row "
                           f"{int(np.flatnonzero(nulls)[0])}")
    if dtype == "int64":
        return _integers(view, name, series, "int64 keys")
    if not (pd.api.types.is_string_dtype(series.dtype) or series.dtype == object):
        raise InvalidInput(f"{_where(view, name)}: expected string keys, got {series.dtype}")
    values = series.tolist()
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise InvalidInput(f"{_where(view, name)}: expected string keys, got row {i}: {v!r}")
    return pa.array(values, type=pa.string())


def validate_rows(view: FeatureView, frame: pd.DataFrame, *, ingested_at_ns: int
                  ) -> ValidatedRows:
    """``frame`` checked against ``view`` and converted to its offline schema."""
    entity = view.resolved_entity
    required = [*entity.join_keys, "event_ts", *view.column_names]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InvalidInput(
            f"feature view {view.ref!r}: missing column(s) {', '.join(missing)}; it needs "
            f"{', '.join(required)} (and optionally created_ts)")
    frame = frame.reset_index(drop=True)
    arrays: dict[str, pa.Array] = {}
    for key, dtype in zip(entity.join_keys, entity.key_dtypes, strict=True):
        arrays[key] = _join_key(view, key, dtype, frame[key])
    arrays["event_ts"] = _timestamps(view, "event_ts", frame["event_ts"], required=True,
                                     default_ns=0)
    created = _na_to_null(frame["created_ts"]) if "created_ts" in frame.columns else \
        pd.Series([None] * len(frame), dtype=object)
    arrays["created_ts"] = _timestamps(view, "created_ts", created, required=False,
                                       default_ns=ingested_at_ns)
    for column in view.columns:
        keep = frozenset(str(v) for v in column.vocabulary or ())  # categories stay categories
        series = _na_to_null(frame[column.name], keep)
        if column.dtype == "float":
            arrays[column.name] = pa.array(_numbers(view, column.name, series, "float numbers"),
                                           type=pa.float64(), from_pandas=True)
        elif column.dtype == "categorical" and column.vocabulary is not None:
            arrays[column.name] = _category_codes(view, column, series)
        else:
            expected = "integers" if column.dtype == "int" else \
                "integer category codes (or declare a vocabulary)"
            arrays[column.name] = _integers(view, column.name, series, expected)
    known = set(required) | {"created_ts"}
    ignored = tuple(str(c) for c in frame.columns if c not in known)
    return ValidatedRows(pa.table(arrays), ignored)


def offline_schema(view: FeatureView) -> pa.Schema:
    """The Arrow schema of ``view``'s offline part files."""
    entity = view.resolved_entity
    fields: list[Any] = [pa.field(k, pa.int64() if d == "int64" else pa.string(), False)
                         for k, d in zip(entity.join_keys, entity.key_dtypes, strict=True)]
    fields += [pa.field("event_ts", TIMESTAMP_TYPE, False),
               pa.field("created_ts", TIMESTAMP_TYPE, False)]
    fields += [pa.field(c.name, pa.float64() if c.dtype == "float" else pa.int64())
               for c in view.columns]
    return pa.schema(fields)
