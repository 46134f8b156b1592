"""Stage 7: the drift reference profile of docs/bundle.md (``reference``), from the raw
training values and the model's predictions on them.

Numeric features: the plan's quantile bin edges (-inf/+inf outer), the share of non-missing
values per bin (bins as the C++ histogram counts them: ``searchsorted(edges, x, "right") - 1``
on float32 values), missing rate, min/max, and a uniform random ``sample`` of the non-missing
values (sorted, at most ``sample_size``; the reference side of the KS and Wasserstein drift
tests, see docs/monitoring.md). Categorical features: the share per plan slot (vocabulary order,
OOV last) of non-missing values, and the missing rate. The prediction: its binned distribution
and, for binary and regression models, a sample too. Pure functions (seeded generators).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserve.trainer.preprocess import histogram_edges


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def value_sample(present: np.ndarray, size: int, seed: int = 0) -> list[float]:
    """At most ``size`` of the float32 values ``present``, drawn uniformly without replacement,
    sorted, each written as the shortest decimal that reads back as the same float32."""
    values = np.asarray(present, dtype=np.float32)
    values = values[np.isfinite(values)]
    if size <= 0 or values.size == 0:
        return []
    if values.size > size:
        values = np.random.default_rng(seed).choice(values, size=size, replace=False)
    return [float(str(v)) for v in np.sort(values)]


def numeric_profile(raw: np.ndarray, edges: list[float], sample_size: int = 0,
                    seed: int = 0) -> dict[str, Any]:
    """Profile of one numeric column of raw float32 values (NaN = missing)."""
    values = np.asarray(raw, dtype=np.float32)
    present = values[~np.isnan(values)]
    e = np.asarray(edges, dtype=np.float32)
    bins = np.searchsorted(e, present, side="right") - 1
    inside = (bins >= 0) & (bins < len(e) - 1)
    counts = np.bincount(bins[inside], minlength=len(e) - 1).astype(np.float64)
    profile = {"kind": "numeric", "edges": [float(v) for v in edges],
               "frequencies": _shares(counts),
               "missing_rate": float(np.isnan(values).mean()) if len(values) else 0.0,
               "min": float(present.min()) if present.size else None,
               "max": float(present.max()) if present.size else None}
    if sample_size > 0:
        profile["sample"] = value_sample(present, sample_size, seed)
    return profile


def categorical_profile(codes: np.ndarray, size: int) -> dict[str, Any]:
    """Profile of one categorical column of plan codes (NaN = missing; anything that is not an
    integer in [0, size) counts in the OOV slot ``size``)."""
    codes = np.asarray(codes, dtype=np.float64)
    missing = np.isnan(codes)
    present = codes[~missing]
    valid = (present == np.floor(present)) & (present >= 0) & (present < size)
    slots = np.where(valid, present, size).astype(np.int64)
    counts = np.bincount(slots, minlength=size + 1).astype(np.float64)
    return {"kind": "categorical", "frequencies": _shares(counts),
            "missing_rate": float(missing.mean()) if len(codes) else 0.0}


def prediction_profile(task: str, outputs: np.ndarray, bins: int = 10, sample_size: int = 0,
                       seed: int = 0) -> dict[str, Any]:
    """Binary: P(label = 1) in ``bins`` equal-width bins on [0, 1]; regression: quantile bins
    with -inf/+inf outer edges; multiclass: share of each predicted class. Binary and
    regression also keep a ``sample`` of at most ``sample_size`` predictions."""
    if task == "multiclass":
        pred = outputs.argmax(axis=1)
        counts = np.bincount(pred, minlength=outputs.shape[1]).astype(np.float64)
        return {"classes": list(range(outputs.shape[1])), "frequencies": _shares(counts)}
    values = outputs[:, 0].astype(np.float64)
    sample = value_sample(values, sample_size, seed)
    if task == "binary":
        edges = np.linspace(0.0, 1.0, bins + 1)
        counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=edges)
        out = {"edges": edges.tolist(), "frequencies": _shares(counts.astype(np.float64))}
    else:
        edge_list = histogram_edges(values, bins)
        profile = numeric_profile(values, edge_list)
        out = {"edges": profile["edges"], "frequencies": profile["frequencies"]}
    if sample:
        out["sample"] = sample
    return out


def reference_profile(spec: dict[str, Any], encoded: np.ndarray, task: str,
                      outputs: np.ndarray, sample_size: int = 0,
                      seed: int = 0) -> dict[str, Any]:
    """The ``reference`` block for the plan ``spec``, its raw encoded training input
    ``encoded`` [n, f_in] and the model's outputs on those rows; ``sample_size`` values per
    numeric feature and of the prediction are kept for the sample-based tests (0: none)."""
    features: dict[str, Any] = {}
    for j, feature in enumerate(spec["features"]):
        column = encoded[:, j]
        if feature["kind"] == "numeric":
            edges = feature.get("histogram", {}).get("edges") or histogram_edges(column, 10)
            features[feature["name"]] = numeric_profile(column, edges, sample_size, seed + j)
        else:
            encoding = feature["ops"][-1]
            size = len(encoding.get("vocabulary", [])) or int(encoding.get("size", 0))
            features[feature["name"]] = categorical_profile(column, size)
    return {"rows": len(encoded), "features": features,
            "prediction": prediction_profile(task, outputs, sample_size=sample_size, seed=seed)}
