"""Stage 3: fit the feature plan (docs/feature_plan.md) on the training split, and encode raw
rows into the plan's float32 input.

Fitting is numpy on training rows only: numeric features get median imputation, quantile
clipping, log1p for heavy right tails and standardization; categorical features a vocabulary
(frequency cut-off, rare -> out-of-vocabulary slot) and one-hot encoding, and the configured
unknown-category policy in their signature input. The fitted plan is compiled by the C++
:class:`mlserve.FeaturePlan`, the same code serving runs; nothing here re-implements it.
:func:`encode_rows` (raw DataFrame -> float32 codes) is shared with serving and maps categories
with the server's :class:`mlserve.categories.CategoryEncoder`. All functions are pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlserve.categories import CategoryEncoder, check_policy_features
from mlserve.errors import InvalidInput
from mlserve.plan import FeaturePlan
from mlserve.trainer.config import TrainConfig


@dataclass
class Preprocessing:
    """The fitted plan, its compiled form and the raw-input signature."""

    spec: dict[str, Any]
    """The plan JSON (``preprocessing`` of mlserve.json)."""
    inputs: list[dict[str, Any]]
    """``signature.inputs``: one per plan feature, in plan input order."""
    plan: FeaturePlan

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> normalized float32 [n, f_out] through the compiled plan (unseen
        categories to the OOV slot, as in training; see :func:`encode_rows`)."""
        return self.plan.transform(encode_rows(frame, self.inputs, unknown="oov"))


def category_key(value: object) -> str:
    """The vocabulary string of a raw category value (``3.0`` and ``3`` are both ``"3"``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value)


def _category_keys(series: pd.Series) -> pd.Series:
    """Vocabulary strings of the non-missing values of a column (index kept)."""
    present = series[series.notna()]
    if pd.api.types.is_string_dtype(present) and not pd.api.types.is_bool_dtype(present):
        return present.astype(str)
    return present.map(category_key)


def _is_text(column: pd.Series) -> bool:
    """A column of strings only (a string dtype, or objects that are all ``str``), where
    equality of values is equality of their vocabulary keys (unlike ``True == 1``)."""
    if isinstance(column.dtype, pd.StringDtype):
        return True
    return bool(column.dtype == object
                and pd.api.types.infer_dtype(column, skipna=True) == "string")


def encode_rows(frame: pd.DataFrame, inputs: list[dict[str, Any]], *,
                unknown: str | None = None) -> np.ndarray:
    """Raw rows -> the plan's float32 input [n, f_in], row-major (NaN = missing).

    Numeric inputs are converted to float (a non-number raises InvalidInput naming the column).
    Categorical inputs with a ``vocabulary`` become the index of their string in it; missing
    values NaN. A value outside the vocabulary follows the input's ``unknown`` policy, as
    serving does (docs/bundle.md: "oov" -> -1, the plan's out-of-vocabulary slot; "missing" ->
    NaN; "error" -> InvalidInput), or the ``unknown`` given here for every input. Training and
    evaluation pass ``unknown="oov"``: the categories too rare to earn a vocabulary slot are
    exactly what trains the OOV slot, and held-out rows are scored, never refused. Categorical
    inputs without vocabulary (``dtype`` int64) pass their integer codes through.
    """
    n = len(frame)
    out = np.empty((n, len(inputs)), dtype=np.float32)
    for j, spec in enumerate(inputs):
        name = spec["name"]
        if name not in frame.columns:
            raise InvalidInput(f"input column '{name}' is missing; the model needs "
                               f"{', '.join(s['name'] for s in inputs)}")
        column = frame[name]
        if spec["kind"] == "categorical" and "vocabulary" in spec:
            encoder = CategoryEncoder.for_input(spec if unknown is None
                                                else {**spec, "unknown": unknown})
            assert encoder is not None
            if _is_text(column):
                # Each distinct string once (pandas' hash factorize), then gathered: equal
                # strings are the same category, so this is the per-value encoding. A refusal
                # (the "error" policy) is left to the per-value path, whose message counts rows.
                index, uniques = pd.factorize(column, use_na_sentinel=True)
                try:
                    table = np.append(encoder.encode_strings(np.asarray(uniques, dtype=object)),
                                      np.float32(np.nan))
                except InvalidInput:
                    table = None
                if table is not None:
                    out[:, j] = table[index]  # the sentinel -1 picks the NaN appended last
                    continue
            codes = np.full(n, np.nan, dtype=np.float32)
            keys = _category_keys(column).to_numpy(dtype=object)
            codes[np.flatnonzero(column.notna().to_numpy())] = encoder.encode_strings(keys)
            out[:, j] = codes
            continue
        try:
            values = pd.to_numeric(column, errors="raise")
        except (TypeError, ValueError):
            bad = column[pd.to_numeric(column, errors="coerce").isna() & column.notna()]
            raise InvalidInput(f"feature '{name}': expected float32, got "
                               f"{type(bad.iloc[0]).__name__} {bad.iloc[0]!r}") from None
        out[:, j] = values.to_numpy(np.float64, na_value=np.nan)
    return out


def _skewness(values: np.ndarray) -> float:
    std = values.std()
    if std == 0:
        return 0.0
    return float(np.mean(((values - values.mean()) / std) ** 3))


def histogram_edges(values: np.ndarray, bins: int) -> list[float]:
    """Quantile edges of raw values: -inf, the inner quantiles (deduplicated after float32
    rounding, so strictly increasing as the plan requires), +inf."""
    finite = values[np.isfinite(values)]
    inner: list[float] = []
    if finite.size and bins > 1:
        q = np.quantile(finite.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
        inner = np.unique(q.astype(np.float32)).astype(np.float64).tolist()
    return [-np.inf, *inner, np.inf]


def _fit_numeric(name: str, raw: np.ndarray, config: TrainConfig) -> dict[str, Any]:
    values = raw[~np.isnan(raw)].astype(np.float64)
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    ops: list[dict[str, Any]] = [{"op": "impute", "value": median}]
    imputed = np.where(np.isnan(raw), median, raw).astype(np.float64)
    imputed = imputed[np.isfinite(imputed)]
    if config.clip_quantile > 0:
        lo, hi = np.quantile(values, [config.clip_quantile, 1 - config.clip_quantile])
        if float(np.float32(lo)) < float(np.float32(hi)):
            ops.append({"op": "clip", "lo": float(lo), "hi": float(hi)})
            imputed = np.clip(imputed, lo, hi)
    if imputed.min() >= 0 and _skewness(imputed) > config.skew_threshold:
        ops.append({"op": "log1p"})
        imputed = np.log1p(imputed)
    mean, std = float(imputed.mean()), float(imputed.std())
    ops.append({"op": "standardize", "mean": mean, "std": std if std > 1e-12 else 1.0})
    return {"name": name, "kind": "numeric", "ops": ops,
            "histogram": {"edges": histogram_edges(raw, config.histogram_bins)}}


def fit_vocabulary(series: pd.Series, config: TrainConfig) -> list[str]:
    """Categories seen at least ``min_category_count`` times, most frequent first (ties by
    name), at most ``max_vocabulary``; never empty (the most frequent one is kept)."""
    counts = _category_keys(series).value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocabulary = [k for k, c in ordered if c >= config.min_category_count]
    return vocabulary[: config.max_vocabulary] or [ordered[0][0]]


def fit_preprocessing(train: pd.DataFrame, numeric: list[str], categorical: list[str],
                      config: TrainConfig) -> Preprocessing:
    """Fit the plan on training rows and compile it."""
    check_policy_features(dict(config.unknown_category_features), categorical,
                          "config 'unknown_category_features'")
    features: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    for name in numeric:
        raw = pd.to_numeric(train[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if np.isnan(raw).all():
            raise InvalidInput(f"feature column '{name}' is missing in every training row; "
                               "drop it or provide more data")
        features.append(_fit_numeric(name, raw, config))
        inputs.append({"name": name, "dtype": "float32", "kind": "numeric", "nullable": True})
    for name in categorical:
        vocabulary = fit_vocabulary(train[name], config)
        features.append({"name": name, "kind": "categorical", "histogram": True,
                         "ops": [{"op": "onehot", "vocabulary": vocabulary}]})
        inputs.append({"name": name, "dtype": "string", "kind": "categorical", "nullable": True,
                       "unknown": config.unknown_category_for(name), "vocabulary": vocabulary})
    spec = {"features": features, "output_order": [f["name"] for f in features]}
    return Preprocessing(spec=spec, inputs=inputs, plan=FeaturePlan(spec))
