"""Online model quality from delayed ground truth: labels joined to logged predictions.

The server logs each request's outputs in the core's prediction log under its request id
(``Engine.find_predictions``). Feedback (ids + labels, possibly hours later) is joined there;
:class:`OnlinePerformance` keeps the joined (prediction time, outputs, label) rows of one model
version, bounded by count and by the age of the prediction, and computes the training metrics
on them (:func:`mlserve.trainer.evaluate.evaluate`: binary accuracy / ROC-AUC / log-loss...,
multiclass accuracy / log-loss, regression RMSE / MAE), so online numbers compare with the
bundle's held-out ``metrics``.

Labels are kept per request id: feedback sent again for an id (or twice in one call) replaces
the earlier labels instead of counting the request twice.

Not thread-safe: one event loop owns each instance.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput

#: Metrics exported per task (the rest of evaluate()'s output stays in the JSON).
EXPORTED = {"binary": ("accuracy", "roc_auc", "log_loss"),
            "multiclass": ("accuracy", "log_loss"),
            "regression": ("rmse", "mae")}


def label_codes(task: str, classes: Sequence[Any] | None, labels: Sequence[Any]) -> np.ndarray:
    """Feedback labels as the metrics want them: class indices (binary, multiclass; ``classes``
    default [0, 1]) or floats (regression). InvalidInput names a label that does not fit."""
    if task == "regression":
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) for v in labels):
            raise InvalidInput("feedback labels must be finite numbers for a regression "
                               "model")
        return np.asarray(labels, dtype=np.float64)
    index = {str(c): i for i, c in enumerate(classes or [0, 1])}
    codes = []
    for label in labels:
        whole = isinstance(label, (bool, int)) or (isinstance(label, float)
                                                   and label.is_integer())
        key = str(int(label)) if whole else str(label)
        if key not in index:
            raise InvalidInput(f"feedback label {label!r} is not a class of this model "
                               f"(classes: {', '.join(index)})")
        codes.append(index[key])
    return np.asarray(codes, dtype=np.float64)


class OnlinePerformance:
    """Joined labels of one model version and their metrics over a window."""

    def __init__(self, task: str, classes: Sequence[Any] | None = None,
                 window_s: float = 3600.0, max_rows: int = 100_000) -> None:
        self.task = task
        self.classes = list(classes or [])
        self.window_s = window_s
        self.max_rows = max_rows
        # request id -> (prediction time, outputs [rows, width] float64, labels [rows] float64),
        # oldest feedback first; _n_rows: their rows in all.
        self._entries: OrderedDict[str, tuple[float, np.ndarray, np.ndarray]] = OrderedDict()
        self._n_rows = 0
        self._anonymous = itertools.count()
        self.matched = 0
        self.unmatched = 0

    def label_codes(self, labels: Sequence[Any]) -> np.ndarray:
        """Labels as the metrics want them: class indices (binary, multiclass) or floats."""
        return label_codes(self.task, self.classes, labels)

    def add(self, predicted_at: float, outputs: np.ndarray, labels: np.ndarray,
            request_id: str | None = None) -> None:
        """One request's outputs [rows, width] and its labels [rows]; a ``request_id`` already
        labelled gets these labels instead (None: always a new entry)."""
        out = np.array(outputs, dtype=np.float64)  # [rows] or [rows, width], as logged
        codes = np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(codes) != len(out):
            raise InvalidInput(f"{len(codes)} labels for {len(out)} predicted rows")
        key = f"\0{next(self._anonymous)}" if request_id is None else request_id
        old = self._entries.pop(key, None)
        if old is not None:
            self._n_rows -= len(old[2])
        self._entries[key] = (predicted_at, out, codes)
        self._n_rows += len(codes)
        while self._n_rows > self.max_rows and self._entries:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (_, _, codes) = self._entries.popitem(last=False)
        self._n_rows -= len(codes)

    def metrics(self, now: float) -> dict[str, Any]:
        """{"labels": n, metric: value...} over the window (NaN-free: undefined -> None)."""
        while self._entries and next(iter(self._entries.values()))[0] < now - self.window_s:
            self._drop_oldest()
        out: dict[str, Any] = {"labels": self._n_rows, "matched_total": self.matched,
                               "unmatched_total": self.unmatched}
        if not self._entries:
            return out
        from mlserve.trainer.evaluate import evaluate

        outputs = np.concatenate([e[1] for e in self._entries.values()])
        labels = np.concatenate([e[2] for e in self._entries.values()])
        y = labels if self.task == "regression" else labels.astype(np.int64)
        if self.task == "multiclass" and outputs.shape[1] < int(y.max()) + 1:
            return out
        for key, value in evaluate(self.task, y, outputs).items():
            out[key] = value if math.isfinite(value) else None
        return out
