"""DriftConfig: which test decides drift for each feature, its threshold, the data-quality
limits, the minimum sample and the dataset-drift share; and WindowSpec, the window the online
statistics cover.

Defaults follow Evidently's: a numeric feature is judged by the two-sample Kolmogorov–Smirnov
test (drift when p < 0.05) while the reference has at most ``small_reference_rows`` (1000) rows,
else by the normalized Wasserstein distance (drift when >= 0.1); a categorical feature by the
chi-squared test (p < 0.05) or the Jensen–Shannon distance (>= 0.1). Without a reference sample
(bundles trained before the profile kept one) the sample tests fall back to Jensen–Shannon on the
bins. PSI is always computed and graded on its own scale: >= 0.1 warn, >= 0.25 alert. Everything
is configurable per feature (``features={"amount": FeatureConfig(test="psi", threshold=0.2)}``).

Plain immutable data, validated at construction (InvalidInput naming the field).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from mlserve.errors import InvalidInput

#: Test name -> (direction, default threshold): "below" tests are p-values (drift when
#: p < threshold), "above" tests distances (drift when value >= threshold).
TESTS: dict[str, tuple[str, float]] = {
    "ks": ("below", 0.05),
    "chi2": ("below", 0.05),
    "wasserstein": ("above", 0.1),
    "js": ("above", 0.1),
    "psi": ("above", 0.1),
}
NUMERIC_TESTS = ("ks", "wasserstein", "js", "psi")
CATEGORICAL_TESTS = ("chi2", "js", "psi")
WINDOW_KINDS = ("sliding", "tumbling")
WINDOW_UNITS = ("time", "rows")


@dataclass(frozen=True)
class FeatureConfig:
    """Overrides for one feature (or ``"prediction"``); None keeps the default."""

    test: str | None = None
    """One of ks, wasserstein, js, psi (numeric) or chi2, js, psi (categorical)."""
    threshold: float | None = None
    """The test's threshold (p-value for ks/chi2, distance for the others)."""

    def __post_init__(self) -> None:
        if self.test is not None and self.test not in TESTS:
            raise InvalidInput(f"drift config: test {self.test!r}; choose one of "
                               f"{', '.join(TESTS)}")
        if self.threshold is not None and not self.threshold > 0:
            raise InvalidInput(f"drift config: threshold must be > 0, got {self.threshold!r}")


@dataclass(frozen=True)
class DriftConfig:
    """How drift and data quality are judged (see the module docstring for the defaults)."""

    small_reference_rows: int = 1000
    """References with at most this many rows use the p-value tests (KS, chi-squared)."""
    min_rows: int = 200
    """Windows with fewer current rows get statistics but no verdict (and raise no alert)."""
    dataset_drift_share: float = 0.5
    """Dataset drift when at least this share of the judged features drifted."""
    psi_warn: float = 0.1
    """PSI at or above this grades "warn"."""
    psi_alert: float = 0.25
    """PSI at or above this grades "alert"."""
    missing_rate_increase: float = 0.1
    """Data quality: a missing rate this much above the reference's is flagged."""
    out_of_range_rate: float = 0.05
    """Data quality: this share of values outside the reference's [min, max] is flagged."""
    unseen_rate_increase: float = 0.05
    """Data quality: an out-of-vocabulary share this much above the reference's is flagged."""
    features: Mapping[str, FeatureConfig] = field(default_factory=dict)
    """Per-feature overrides, by feature name; ``"prediction"`` for the prediction."""

    def __post_init__(self) -> None:
        if self.min_rows < 1:
            raise InvalidInput(f"drift config 'min_rows' must be >= 1, got {self.min_rows}")
        if self.small_reference_rows < 0:
            raise InvalidInput("drift config 'small_reference_rows' must be >= 0")
        if not 0.0 < self.dataset_drift_share <= 1.0:
            raise InvalidInput("drift config 'dataset_drift_share' must be in (0, 1], got "
                               f"{self.dataset_drift_share}")
        if not 0.0 < self.psi_warn <= self.psi_alert:
            raise InvalidInput(f"drift config: need 0 < 'psi_warn' ({self.psi_warn}) <= "
                               f"'psi_alert' ({self.psi_alert})")
        for name in ("missing_rate_increase", "out_of_range_rate", "unseen_rate_increase"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InvalidInput(f"drift config '{name}' must be in (0, 1], got "
                                   f"{getattr(self, name)}")

    def test_for(self, name: str, kind: str, reference_rows: int, has_sample: bool
                 ) -> tuple[str, float]:
        """(test, threshold) deciding drift for a feature of ``kind``."""
        override = self.features.get(name, FeatureConfig())
        test = override.test
        allowed = NUMERIC_TESTS if kind == "numeric" else CATEGORICAL_TESTS
        if test is None:
            small = reference_rows <= self.small_reference_rows
            if kind == "numeric":
                test = ("ks" if small else "wasserstein") if has_sample else "js"
            else:
                test = "chi2" if small else "js"
        elif test not in allowed:
            raise InvalidInput(f"drift config: test {test!r} does not apply to {kind} feature "
                               f"'{name}'; choose one of {', '.join(allowed)}")
        elif test in ("ks", "wasserstein") and not has_sample:
            test = "js"  # the reference kept no sample: judge on the bins
        threshold = override.threshold if override.threshold is not None else TESTS[test][1]
        return test, threshold

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftConfig:
        """From JSON/TOML data: the field names above, ``features`` a table of tables."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"drift config: unknown keys {', '.join(unknown)} (known: "
                               f"{', '.join(sorted(known))})")
        kwargs = dict(data)
        kwargs["features"] = {str(k): FeatureConfig(**v)
                              for k, v in (data.get("features") or {}).items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class WindowSpec:
    """The stretch of traffic the online statistics cover."""

    kind: str = "sliding"
    """"sliding" (the latest ``size``, re-evaluated every interval) or "tumbling" (consecutive,
    non-overlapping windows, each evaluated once when it closes)."""
    by: str = "time"
    """"time" (``size`` seconds) or "rows" (``size`` rows)."""
    size: float = 300.0
    """Seconds or rows. Windows are made of whole monitoring intervals: by rows, a window holds
    the newest intervals that together reach ``size`` rows."""

    def __post_init__(self) -> None:
        if self.kind not in WINDOW_KINDS:
            raise InvalidInput(f"window kind {self.kind!r}; choose one of "
                               f"{', '.join(WINDOW_KINDS)}")
        if self.by not in WINDOW_UNITS:
            raise InvalidInput(f"window unit {self.by!r}; choose one of {', '.join(WINDOW_UNITS)}")
        if not self.size > 0:
            raise InvalidInput(f"window size must be > 0, got {self.size}")

    @classmethod
    def parse(cls, text: str) -> WindowSpec:
        """``"sliding:300s"``, ``"tumbling:10000rows"``, ``"sliding:5m"``, ``"tumbling:1h"``."""
        kind, _, size = text.partition(":")
        units = {"s": 1.0, "m": 60.0, "h": 3600.0}
        size = size.strip().lower()
        try:
            if size.endswith("rows"):
                return cls(kind.strip(), "rows", float(size[:-4]))
            if size and size[-1] in units:
                return cls(kind.strip(), "time", float(size[:-1]) * units[size[-1]])
        except ValueError:
            pass
        raise InvalidInput(f"window {text!r}: expected KIND:SIZE with KIND sliding|tumbling and "
                           "SIZE like 300s, 5m, 1h or 10000rows")

    def describe(self) -> str:
        unit = "rows" if self.by == "rows" else "s"
        return f"{self.kind}:{self.size:g}{unit}"


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A monitoring/drift settings file as a dict: TOML when it ends in .toml, else JSON;
    InvalidInput naming the file when it cannot be read or is not a table."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"config file {str(file)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"config file {str(file)!r}: expected a table/object")
    return data
