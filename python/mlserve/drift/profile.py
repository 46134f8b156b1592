"""ReferenceProfile: the bundle's ``reference`` block (docs/bundle.md) as arrays, per feature and
for the prediction, with the bins the drift statistics compare over.

Bins (docs/monitoring.md): a numeric feature's reference quantile bins plus a last bin for
missing values; a categorical feature's plan slots (vocabulary order, out-of-vocabulary last)
plus a last bin for missing values. The prediction: its reference bins (binary: equal-width on
[0, 1]; regression: quantile bins) plus a missing bin, or one slot per class (multiclass).

Immutable after construction; safe to share between threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput

#: Label of the out-of-vocabulary slot in reports.
OOV_LABEL = "<oov>"
#: Label of the missing-value bin in reports.
MISSING_LABEL = "<missing>"


class _Binned:
    """What both kinds share: shares of the non-missing values per bin, and the missing rate."""

    frequencies: np.ndarray
    missing_rate: float

    @property
    def bins(self) -> int:
        """Bins (or slots) compared, the missing bin included."""
        return len(self.frequencies) + 1

    def bin_shares(self) -> np.ndarray:
        """Reference shares over the bins and the missing bin (sum 1)."""
        return np.append((1.0 - self.missing_rate) * self.frequencies, self.missing_rate)


@dataclass(frozen=True)
class NumericReference(_Binned):
    """One numeric feature (or a binary/regression prediction) of the reference."""

    name: str
    index: int
    """Its column in the plan's raw input (-1 for the prediction)."""
    edges: np.ndarray
    """k + 1 bin edges (float32 values; -inf/+inf outer for quantile bins)."""
    frequencies: np.ndarray
    """k shares of the non-missing values."""
    missing_rate: float
    minimum: float | None
    maximum: float | None
    sample: np.ndarray | None
    """Sorted non-missing reference values for KS/Wasserstein (float64 of float32), or None."""
    kind: str = "numeric"

    def bin_labels(self) -> list[str]:
        e = self.edges
        return [f"[{_num(e[j])}, {_num(e[j + 1])})" for j in range(len(e) - 1)] + [MISSING_LABEL]


@dataclass(frozen=True)
class CategoricalReference(_Binned):
    """One categorical feature (or a multiclass prediction) of the reference."""

    name: str
    index: int
    categories: tuple[str, ...]
    """One per slot: the vocabulary (or codes), then ``<oov>``; a multiclass prediction has one
    per class and no OOV slot."""
    frequencies: np.ndarray
    """Shares of the non-missing values per slot."""
    missing_rate: float
    has_oov: bool = True
    kind: str = "categorical"

    def bin_labels(self) -> list[str]:
        return [*self.categories, MISSING_LABEL]

    @property
    def oov_share(self) -> float:
        """Share of the reference's non-missing values in the OOV slot (0 without one)."""
        return float(self.frequencies[-1]) if self.has_oov else 0.0


FeatureReference = NumericReference | CategoricalReference


def _num(v: float) -> str:
    if np.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{float(v):.4g}"


def _array(values: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"reference profile: {what} is not a list of numbers") from None


def _sample(values: Any) -> np.ndarray | None:
    if not values:
        return None
    sample = np.sort(_array(values, "sample").astype(np.float32).astype(np.float64))
    return sample[np.isfinite(sample)]


class ReferenceProfile:
    """The reference of one model version: ``features`` (plan input order, only features that
    the plan histograms), ``prediction``, ``rows`` (training rows profiled), ``task``."""

    def __init__(self, features: Mapping[str, FeatureReference],
                 prediction: FeatureReference | None, rows: int, task: str) -> None:
        self.features = dict(features)
        self.prediction = prediction
        self.rows = rows
        self.task = task

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ReferenceProfile:
        """From a bundle's ``mlserve.json``; InvalidInput when it has no usable reference."""
        reference = manifest.get("reference") or {}
        if not reference.get("features"):
            raise InvalidInput(
                f"model {manifest.get('name', '?')}: the bundle has no drift reference profile "
                "('reference' in mlserve.json); re-train it with mlserve train"
            )
        plan_features = list((manifest.get("preprocessing") or {}).get("features") or [])
        inputs = {str(s.get("name")): s for s in (manifest.get("signature") or {}).get("inputs")
                  or []}
        features: dict[str, FeatureReference] = {}
        for index, spec in enumerate(plan_features):
            name = str(spec.get("name"))
            profile = reference["features"].get(name)
            if profile is None or not spec.get("histogram"):
                continue  # the core counts no histogram for it: nothing to compare online
            if profile.get("kind") == "numeric":
                features[name] = _numeric(name, index, profile)
            elif (spec.get("ops") or [{}])[-1].get("op") == "onehot":
                features[name] = _categorical(name, index, profile, spec, inputs.get(name, {}))
            # hash_bucket categoricals have no per-category reference: not compared
        task = str(manifest.get("task", "binary"))
        return cls(features, _prediction(reference.get("prediction"), task),
                   int(reference.get("rows", 0)), task)

    @classmethod
    def from_bundle(cls, bundle: Any) -> ReferenceProfile:
        """From a :class:`mlserve.bundle.ModelBundle`."""
        return cls.from_manifest(bundle.manifest)

    def __repr__(self) -> str:
        return (f"ReferenceProfile(rows={self.rows}, task={self.task}, "
                f"features={list(self.features)!r})")


def _numeric(name: str, index: int, profile: Mapping[str, Any]) -> NumericReference:
    edges = _array(profile.get("edges"), f"'{name}' edges").astype(np.float32).astype(np.float64)
    freqs = _array(profile.get("frequencies"), f"'{name}' frequencies")
    if len(edges) != len(freqs) + 1 or len(freqs) < 1:
        raise InvalidInput(f"reference profile of '{name}': {len(edges)} edges for "
                           f"{len(freqs)} frequencies; expected one edge more than bins")
    lo, hi = profile.get("min"), profile.get("max")
    return NumericReference(
        name=name, index=index, edges=edges, frequencies=freqs,
        missing_rate=float(profile.get("missing_rate", 0.0)),
        minimum=None if lo is None else float(lo), maximum=None if hi is None else float(hi),
        sample=_sample(profile.get("sample")))


def _categorical(name: str, index: int, profile: Mapping[str, Any], spec: Mapping[str, Any],
                 signature: Mapping[str, Any]) -> CategoricalReference:
    freqs = _array(profile.get("frequencies"), f"'{name}' frequencies")
    encoding = (spec.get("ops") or [{}])[-1]
    vocabulary = list(signature.get("vocabulary") or encoding.get("vocabulary") or [])
    size = len(vocabulary) or int(encoding.get("size", 0))
    if len(freqs) != size + 1:
        raise InvalidInput(f"reference profile of '{name}': {len(freqs)} frequencies for "
                           f"{size} categories + the OOV slot")
    labels = [str(v) for v in vocabulary] if vocabulary else [str(c) for c in range(size)]
    return CategoricalReference(name=name, index=index, categories=(*labels, OOV_LABEL),
                                frequencies=freqs,
                                missing_rate=float(profile.get("missing_rate", 0.0)))


def _prediction(profile: Mapping[str, Any] | None, task: str) -> FeatureReference | None:
    if not profile:
        return None
    if "classes" in profile:
        classes = tuple(str(c) for c in profile["classes"])
        return CategoricalReference(name="prediction", index=-1, categories=classes,
                                    frequencies=_array(profile["frequencies"], "prediction"),
                                    missing_rate=0.0, has_oov=False)
    reference = _numeric("prediction", -1, {**profile, "missing_rate": 0.0})
    return reference
