"""Stage 1: load a table (CSV/Parquet path or DataFrame) and validate it for training.

Checks the label (present, not all missing, enough rows, two or more classes), the feature
columns (present, not all missing, not constant), infers the task and the numeric/categorical
split when not given, and fingerprints the data. Every refusal is an
:class:`mlserve.errors.InvalidInput` that names the column and says what to do.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
from mlserve.errors import InvalidInput
from mlserve.trainer.config import TASKS, TrainConfig

logger = logging.getLogger(__name__)

DataSource: TypeAlias = pd.DataFrame | str | Path


@dataclass
class LoadedTable:
    """A validated training table and what it is made of."""

    frame: pd.DataFrame
    """Rows with a label; feature columns untouched (NaN/None = missing)."""
    label: str
    task: str
    """``binary``, ``multiclass`` or ``regression``."""
    numeric: list[str]
    categorical: list[str]
    timestamp: str | None
    classes: list[object] | None
    """Sorted label values for classification (index = class id); None for regression."""
    source: str
    """File path, or ``<DataFrame>``."""
    fingerprint: str
    """``sha256:`` of the row contents (index ignored)."""
    missing_rates: dict[str, float] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def read_table(data: DataSource) -> tuple[pd.DataFrame, str]:
    """The DataFrame and a source description; CSV and Parquet files by suffix."""
    if isinstance(data, pd.DataFrame):
        return data, "<DataFrame>"
    path = Path(data)
    if not path.is_file():
        raise InvalidInput(f"data file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path), str(path)
    if suffix in (".csv", ".txt", ".gz"):
        return pd.read_csv(path), str(path)
    raise InvalidInput(f"data file '{path}': unsupported format '{suffix}'; use .csv or .parquet")


def _is_categorical_dtype(series: pd.Series, max_cardinality: int) -> bool:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return True
    if pd.api.types.is_integer_dtype(series):
        return int(series.nunique(dropna=True)) <= max_cardinality
    return False


def infer_kinds(frame: pd.DataFrame, columns: Sequence[str], config: TrainConfig
                ) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns among ``columns``, typed by dtype: object,
    string, bool and integers with at most ``max_categorical_cardinality`` distinct values are
    categorical; datetimes are no features."""
    categorical = [c for c in columns
                   if _is_categorical_dtype(frame[c], config.max_categorical_cardinality)]
    numeric = [c for c in columns if c not in categorical
               and not pd.api.types.is_datetime64_any_dtype(frame[c])]
    return numeric, categorical


def _infer_task(y: pd.Series, max_cardinality: int) -> str:
    distinct = int(y.nunique(dropna=True))
    if distinct == 2:
        return "binary"
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if numeric and pd.api.types.is_float_dtype(y):
        values = y.dropna().to_numpy(np.float64)
        if not np.all(values == np.round(values)) or distinct > max_cardinality:
            return "regression"
    if numeric and distinct > max_cardinality:
        return "regression"
    return "multiclass"


def fingerprint(frame: pd.DataFrame) -> str:
    """``sha256:`` of the row contents and column names (index ignored)."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def load_table(data: DataSource, label: str, *, task: str | None = None,
               numeric: Sequence[str] | None = None, categorical: Sequence[str] | None = None,
               timestamp: str | None = None, config: TrainConfig | None = None) -> LoadedTable:
    """Read and validate a training table.

    Features: when neither ``numeric`` nor ``categorical`` is given, every column except the
    label, the timestamp and ``config.exclude`` is used, typed by dtype (object, string, bool
    and integers with few distinct values are categorical). When either is given, exactly the
    listed columns are used.
    """
    config = config or TrainConfig()
    frame, source = read_table(data)
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    if label not in columns:
        raise InvalidInput(f"label column '{label}' is not in the table; columns are: "
                           f"{', '.join(columns)}")
    if timestamp is not None and timestamp not in columns:
        raise InvalidInput(f"timestamp column '{timestamp}' is not in the table; pass one of: "
                           f"{', '.join(columns)} or leave it out")
    if task is not None and task not in TASKS:
        raise InvalidInput(f"task '{task}' is unknown; use one of {', '.join(TASKS)}")

    labelled = frame[frame[label].notna()].reset_index(drop=True)
    if labelled.empty:
        raise InvalidInput(f"label column '{label}' is missing in every row")
    dropped = len(frame) - len(labelled)
    if dropped:
        logger.warning("dropping %d rows whose label '%s' is missing", dropped, label)
    if len(labelled) < config.min_rows:
        raise InvalidInput(f"only {len(labelled)} labelled rows; training needs at least "
                           f"{config.min_rows} (config 'min_rows') - provide more data")

    y = labelled[label]
    distinct = int(y.nunique())
    if distinct < 2:
        raise InvalidInput(f"label column '{label}' has a single value ({y.iloc[0]!r}); a model "
                           "needs examples of at least two classes / values")
    task = task or _infer_task(y, config.max_categorical_cardinality)
    if task == "binary" and distinct != 2:
        raise InvalidInput(f"label column '{label}' has {distinct} distinct values; task "
                           "'binary' needs exactly 2 (use task='multiclass' or 'regression')")
    if task == "regression" and not pd.api.types.is_numeric_dtype(y):
        raise InvalidInput(f"label column '{label}' is not numeric; task 'regression' needs "
                           "numbers (use task='multiclass')")
    classes: list[object] | None = None
    if task != "regression":
        classes = sorted(y.unique().tolist(), key=lambda v: (str(type(v)), v))
        counts = y.value_counts()
        rare = [c for c in classes if counts[c] < 2]
        if rare:
            raise InvalidInput(f"label column '{label}': class {rare[0]!r} has a single row; "
                               "every class needs at least 2 examples")

    if numeric is None and categorical is None:
        skip = {label, timestamp, *config.exclude}
        numeric, categorical = infer_kinds(labelled, [c for c in columns if c not in skip],
                                           config)
    numeric, categorical = list(numeric or []), list(categorical or [])
    _check_features(labelled, label, numeric, categorical)

    missing = {c: float(labelled[c].isna().mean()) for c in [*numeric, *categorical]}
    keep = [*numeric, *categorical, label] + ([timestamp] if timestamp else [])
    table = labelled[list(dict.fromkeys(keep))]
    return LoadedTable(frame=table, label=label, task=task, numeric=numeric,
                       categorical=categorical, timestamp=timestamp, classes=classes,
                       source=source, fingerprint=fingerprint(table), missing_rates=missing)


def _check_features(frame: pd.DataFrame, label: str, numeric: list[str],
                    categorical: list[str]) -> None:
    both = set(numeric) & set(categorical)
    if both:
        raise InvalidInput(f"column '{sorted(both)[0]}' is listed as both numeric and categorical")
    features = [*numeric, *categorical]
    if not features:
        raise InvalidInput("no feature columns: pass numeric=/categorical= or a table with "
                           "columns besides the label")
    if label in features:
        raise InvalidInput(f"label column '{label}' is also listed as a feature; remove it")
    for column in features:
        if column not in frame.columns:
            raise InvalidInput(f"feature column '{column}' is not in the table")
        values = frame[column]
        if values.isna().all():
            raise InvalidInput(f"feature column '{column}' is missing in every row; drop it "
                               "(or fill it) before training")
        if values.nunique(dropna=True) < 2 and not values.isna().any():
            raise InvalidInput(f"feature column '{column}' is constant ({values.iloc[0]!r}); it "
                               "carries no signal - drop it")
    for column in numeric:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            coerced = pd.to_numeric(values, errors="coerce")
            bad = values.notna() & coerced.isna()
            if bad.any():
                example = values[bad].iloc[0]
                raise InvalidInput(f"numeric feature '{column}': value {example!r} is not a "
                                   "number; clean it or list the column as categorical")
