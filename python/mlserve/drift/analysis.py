"""analyze(): a window of current traffic against a ReferenceProfile — per feature and for the
prediction every statistic of :mod:`mlserve.drift.stats`, the verdict of the configured test,
the PSI grade and the data-quality rates; then dataset drift.

Binned statistics (PSI, Jensen–Shannon) use the histogram counts, i.e. every row of the window;
KS and Wasserstein use the window's row sample against the reference sample (non-finite values
left out of both); out-of-range rates are estimated on the sample too (the core's bins do not
have the reference's min and max as edges). Pure functions; results are plain data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlserve.drift import stats
from mlserve.drift.config import TESTS, DriftConfig
from mlserve.drift.profile import (
    CategoricalReference,
    FeatureReference,
    NumericReference,
    ReferenceProfile,
)
from mlserve.drift.window import WindowData


@dataclass
class FeatureDrift:
    """One feature's (or the prediction's) comparison with the reference."""

    name: str
    kind: str
    rows: int
    """Current rows counted (missing values included)."""
    test: str
    """The test that decides ``drifted``."""
    threshold: float
    value: float | None
    """The deciding test's statistic (a p-value for ks/chi2, else a distance); None when it
    could not be computed (no current values)."""
    drifted: bool | None
    """None: fewer than ``min_rows`` current rows (no verdict)."""
    psi: float | None = None
    psi_level: str = "ok"
    """"ok", "warn" (>= psi_warn) or "alert" (>= psi_alert)."""
    js: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    wasserstein: float | None = None
    """Normalized Wasserstein distance."""
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    sample_rows: int = 0
    """Current sample values the KS/Wasserstein statistics used."""
    missing_rate: float | None = None
    reference_missing_rate: float = 0.0
    out_of_range_rate: float | None = None
    """Numeric: share of the sample's present values outside the reference's [min, max]."""
    unseen_rate: float | None = None
    """Categorical: share of present values in the out-of-vocabulary slot."""
    reference_unseen_rate: float | None = None
    quality_issues: list[str] = field(default_factory=list)
    """Flagged data-quality checks: missing_rate, out_of_range, unseen_categories."""
    bins: list[str] = field(default_factory=list)
    reference_shares: list[float] = field(default_factory=list)
    current_shares: list[float] = field(default_factory=list)

    def to_dict(self, histograms: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not histograms:
            for key in ("bins", "reference_shares", "current_shares"):
                out.pop(key)
        return {k: _json_number(v) for k, v in out.items()}


@dataclass
class DriftReport:
    """A window against the reference: every feature, the prediction, dataset drift."""

    rows: int
    start: float
    end: float
    features: dict[str, FeatureDrift]
    prediction: FeatureDrift | None
    drifted_features: list[str]
    judged_features: int
    """Features with a verdict (enough rows)."""
    drift_share: float | None
    dataset_drift: bool | None
    min_rows: int

    def to_dict(self, histograms: bool = False) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "start": self.start,
            "end": self.end,
            "min_rows": self.min_rows,
            "dataset_drift": self.dataset_drift,
            "drift_share": _json_number(self.drift_share),
            "drifted_features": self.drifted_features,
            "judged_features": self.judged_features,
            "features": {n: f.to_dict(histograms) for n, f in self.features.items()},
            "prediction": None if self.prediction is None
            else self.prediction.to_dict(histograms),
        }


def _json_number(v: Any) -> Any:
    """NaN/inf are not JSON: inf as a large string-free sentinel is wrong too, so None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _present(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    return v[np.isfinite(v)]


def _verdict(test: str, threshold: float, value: float | None, enough: bool) -> bool | None:
    if not enough or value is None:
        return None
    if TESTS[test][0] == "below":
        return bool(value < threshold)
    return bool(value >= threshold)


def compare(reference: FeatureReference, counts: np.ndarray, sample: np.ndarray | None,
            config: DriftConfig, reference_rows: int) -> FeatureDrift:
    """One feature: ``counts`` over the reference's bins (missing last), ``sample`` its current
    sampled raw values (numeric) or None."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (reference.bins,):
        raise ValueError(f"'{reference.name}': {counts.shape[0]} current bins for "
                         f"{reference.bins} reference bins")
    ref_shares = reference.bin_shares()
    total = float(counts.sum())
    missing = float(counts[-1])
    present = total - missing
    has_sample = (isinstance(reference, NumericReference) and reference.sample is not None
                  and len(reference.sample) > 0)
    test, threshold = config.test_for(reference.name, reference.kind, reference_rows, has_sample)
    result = FeatureDrift(
        name=reference.name, kind=reference.kind, rows=int(total), test=test,
        threshold=threshold, value=None, drifted=None,
        reference_missing_rate=reference.missing_rate,
        bins=reference.bin_labels(), reference_shares=ref_shares.tolist(),
        current_shares=stats.shares(counts).tolist())
    if total > 0:
        result.psi = stats.psi(ref_shares, counts)
        result.js = stats.js_distance(ref_shares, counts)
        result.missing_rate = missing / total
        result.psi_level = ("alert" if result.psi >= config.psi_alert
                            else "warn" if result.psi >= config.psi_warn else "ok")
        if result.missing_rate - reference.missing_rate >= config.missing_rate_increase:
            result.quality_issues.append("missing_rate")
    if isinstance(reference, CategoricalReference) and present > 0:
        result.chi2_statistic, result.chi2_pvalue = stats.chi_squared(reference.frequencies,
                                                                      counts[:-1])
        if reference.has_oov:
            result.unseen_rate = float(counts[-2]) / present
            result.reference_unseen_rate = reference.oov_share
            if result.unseen_rate - reference.oov_share >= config.unseen_rate_increase:
                result.quality_issues.append("unseen_categories")
    if isinstance(reference, NumericReference) and sample is not None:
        current = _present(sample)
        result.sample_rows = int(current.size)
        observed = np.asarray(sample, dtype=np.float32)
        observed = observed[~np.isnan(observed)]
        if observed.size and reference.minimum is not None and reference.maximum is not None:
            outside = (observed < np.float32(reference.minimum)) | (
                observed > np.float32(reference.maximum))
            result.out_of_range_rate = float(outside.mean())
            if result.out_of_range_rate >= config.out_of_range_rate:
                result.quality_issues.append("out_of_range")
        if has_sample and current.size:
            assert reference.sample is not None
            result.ks_statistic, result.ks_pvalue, result.wasserstein = \
                stats.ks_and_wasserstein(reference.sample, current)
    result.value = {"ks": result.ks_pvalue, "wasserstein": result.wasserstein, "js": result.js,
                    "psi": result.psi, "chi2": result.chi2_pvalue}[test]
    result.drifted = _verdict(test, threshold, result.value, total >= config.min_rows)
    return result


def analyze(profile: ReferenceProfile, window: WindowData,
            config: DriftConfig | None = None) -> DriftReport:
    """Every feature of ``profile`` that ``window`` has counts for, and the prediction."""
    config = config or DriftConfig()
    features: dict[str, FeatureDrift] = {}
    for name, reference in profile.features.items():
        counts = window.counts.get(name)
        if counts is None:
            continue
        sample = (window.inputs[:, reference.index]
                  if isinstance(reference, NumericReference) and len(window.inputs) else
                  np.empty(0, np.float32) if isinstance(reference, NumericReference) else None)
        features[name] = compare(reference, counts, sample, config, profile.rows)
    prediction = None
    if profile.prediction is not None and window.prediction_counts is not None \
            and window.prediction_counts.shape == (profile.prediction.bins,):
        sample = None
        if isinstance(profile.prediction, NumericReference):
            sample = (window.outputs[:, 0] if len(window.outputs) and window.outputs.shape[1]
                      else np.empty(0, np.float32))
        prediction = compare(profile.prediction, window.prediction_counts, sample, config,
                             profile.rows)
    judged = [f for f in features.values() if f.drifted is not None]
    drifted = [f.name for f in judged if f.drifted]
    share = len(drifted) / len(judged) if judged else None
    return DriftReport(
        rows=window.rows, start=window.start, end=window.end, features=features,
        prediction=prediction, drifted_features=drifted, judged_features=len(judged),
        drift_share=share,
        dataset_drift=None if share is None else share >= config.dataset_drift_share,
        min_rows=config.min_rows)
