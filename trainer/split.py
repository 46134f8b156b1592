"""Stage 2: split a validated table into train / valid / test.

Time-ordered when a timestamp column is named (the newest rows are the test split, as in
production), otherwise a seeded shuffle stratified by class for classification. Pure function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlserve.errors import InvalidInput
from mlserve.trainer.config import TrainConfig
from mlserve.trainer.load import LoadedTable


@dataclass
class Splits:
    """Three disjoint row sets of the table (fresh 0..n-1 indexes)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    time_ordered: bool


def split_table(table: LoadedTable, config: TrainConfig) -> Splits:
    """Train/valid/test with ``config.valid_fraction`` and ``config.test_fraction``."""
    frame = table.frame
    n = len(frame)
    n_test = max(1, round(n * config.test_fraction))
    n_valid = max(1, round(n * config.valid_fraction))
    if n - n_test - n_valid < 2:
        raise InvalidInput(f"only {n} rows: too few to split into train/valid/test")
    if table.timestamp is not None:
        ts = frame[table.timestamp]
        if ts.isna().any():
            raise InvalidInput(f"timestamp column '{table.timestamp}' has missing values; fill "
                               "or drop those rows")
        order = np.argsort(ts.to_numpy(), kind="stable")
        train_idx = order[: n - n_test - n_valid]
        valid_idx = order[n - n_test - n_valid : n - n_test]
        test_idx = order[n - n_test :]
    else:
        rng = np.random.default_rng(config.seed)
        if table.task == "regression":
            groups = [np.arange(n)]
        else:
            y = frame[table.label].to_numpy()
            groups = [np.flatnonzero(y == c) for c in table.classes or []]
        train_parts, valid_parts, test_parts = [], [], []
        for members in groups:
            members = rng.permutation(members)
            k_test = round(len(members) * config.test_fraction)
            k_valid = round(len(members) * config.valid_fraction)
            test_parts.append(members[:k_test])
            valid_parts.append(members[k_test : k_test + k_valid])
            train_parts.append(members[k_test + k_valid :])
        train_idx, valid_idx, test_idx = (np.sort(np.concatenate(p))
                                          for p in (train_parts, valid_parts, test_parts))
        if len(valid_idx) == 0 or len(test_idx) == 0:
            raise InvalidInput(f"only {n} rows: too few to split into train/valid/test")

    def take(idx: np.ndarray) -> pd.DataFrame:
        return frame.iloc[idx].reset_index(drop=True)

    splits = Splits(take(train_idx), take(valid_idx), take(test_idx),
                    table.timestamp is not None)
    if table.task == "binary" and splits.train[table.label].nunique() < 2:
        raise InvalidInput(f"label column '{table.label}': the training split has one class only; "
                           "provide more rows of the rare class")
    return splits
