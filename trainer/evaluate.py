"""Stage 5: held-out metrics in plain numpy (no scikit-learn at runtime).

Binary: ROC-AUC, PR-AUC (average precision), log-loss, accuracy at 0.5, expected calibration
error (10 equal-width bins). Multiclass: accuracy, macro-F1, log-loss. Regression: RMSE, MAE,
R². Pure functions.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-15


def _ranks(score: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    return average[inverse]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); NaN when one class is absent."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    y = np.asarray(y).astype(np.float64)
    score = np.asarray(score, dtype=np.float64)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, ys = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(ys)[last]
    fps = last + 1 - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Sum over equal-width probability bins of |mean(p) - mean(y)| weighted by bin share."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """``y`` 0/1, ``p`` P(label = 1)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    return {"roc_auc": roc_auc(y, p), "pr_auc": pr_auc(y, p), "log_loss": binary_log_loss(y, p),
            "accuracy": float(np.mean((p >= 0.5) == (np.asarray(y) == 1))),
            "ece": expected_calibration_error(y, p)}


def multiclass_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``y`` class ids 0..k-1, ``proba`` [n, k]."""
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    f1s = []
    for c in range(k):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    normalized = proba / proba.sum(axis=1, keepdims=True)
    picked = np.clip(normalized[np.arange(len(y)), y], _EPS, 1.0)
    return {"accuracy": float(np.mean(pred == y)), "macro_f1": float(np.mean(f1s)),
            "log_loss": float(-np.mean(np.log(picked)))}


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    err = pred - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
            "r2": float(1 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan")}


def evaluate(task: str, y: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Metrics of serving outputs (binary [n, 1], multiclass [n, k], regression [n, 1])."""
    if task == "binary":
        return binary_metrics(y, outputs[:, 0])
    if task == "multiclass":
        return multiclass_metrics(y, outputs)
    return regression_metrics(y, outputs[:, 0])


#: The metric used to pick the best trial, and whether higher is better.
SELECTION_METRIC = {"binary": ("roc_auc", True), "multiclass": ("accuracy", True),
                    "regression": ("rmse", False)}
