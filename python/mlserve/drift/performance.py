"""Online model quality from delayed ground truth: labels joined to logged predictions.

The server logs each request's outputs in the core's prediction log under its request id
(``Engine.find_predictions``). Feedback (ids + labels, possibly hours later) is joined there;
:class:`OnlinePerformance` keeps the joined (prediction time, outputs, label) rows of one model
version, bounded by count and by the age of the prediction, and computes the training metrics
on them (:func:`mlserve.trainer.evaluate.evaluate`: binary accuracy / ROC-AUC / log-loss...,
multiclass accuracy / log-loss, regression RMSE / MAE), so online numbers compare with the
bundle's held-out ``metrics``.

Not thread-safe: one event loop owns each instance.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput

#: Metrics exported per task (the rest of evaluate()'s output stays in the JSON).
EXPORTED = {"binary": ("accuracy", "roc_auc", "log_loss"),
            "multiclass": ("accuracy", "log_loss"),
            "regression": ("rmse", "mae")}


class OnlinePerformance:
    """Joined labels of one model version and their metrics over a window."""

    def __init__(self, task: str, classes: Sequence[Any] | None = None,
                 window_s: float = 3600.0, max_rows: int = 100_000) -> None:
        self.task = task
        self.classes = list(classes or [])
        self.window_s = window_s
        self.max_rows = max_rows
        self._rows: deque[tuple[float, np.ndarray, float]] = deque()
        self.matched = 0
        self.unmatched = 0

    def label_codes(self, labels: Sequence[Any]) -> np.ndarray:
        """Labels as the metrics want them: class indices (binary, multiclass) or floats."""
        if self.task == "regression":
            try:
                return np.asarray(labels, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInput("feedback labels must be numbers for a regression "
                                   "model") from None
        index = {str(c): i for i, c in enumerate(self.classes or [0, 1])}
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

    def add(self, predicted_at: float, outputs: np.ndarray, labels: np.ndarray) -> None:
        """One request's outputs [rows, width] and its labels [rows]."""
        for row, label in zip(np.asarray(outputs), labels, strict=True):
            self._rows.append((predicted_at, np.array(row, dtype=np.float64), float(label)))
        while len(self._rows) > self.max_rows:
            self._rows.popleft()

    def metrics(self, now: float) -> dict[str, Any]:
        """{"labels": n, metric: value...} over the window (NaN-free: undefined -> None)."""
        while self._rows and self._rows[0][0] < now - self.window_s:
            self._rows.popleft()
        out: dict[str, Any] = {"labels": len(self._rows), "matched_total": self.matched,
                               "unmatched_total": self.unmatched}
        if not self._rows:
            return out
        from mlserve.trainer.evaluate import evaluate

        outputs = np.stack([r[1] for r in self._rows])
        labels = np.array([r[2] for r in self._rows])
        y = labels if self.task == "regression" else labels.astype(np.int64)
        if self.task == "multiclass" and outputs.shape[1] < int(y.max()) + 1:
            return out
        for key, value in evaluate(self.task, y, outputs).items():
            out[key] = value if math.isfinite(value) else None
        return out
