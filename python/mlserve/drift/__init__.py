"""Drift monitoring: serving traffic compared with the training reference (docs/monitoring.md).

- :mod:`~mlserve.drift.stats`: the statistics (PSI, Jensen–Shannon, KS, Wasserstein,
  chi-squared) as plain functions;
- :class:`ReferenceProfile`: the bundle's reference profile as arrays;
- :func:`analyze`: a window of traffic against the reference, per feature, for the prediction
  and for the dataset, with data-quality rates (:class:`DriftReport`);
- :class:`Windows` / :class:`WindowSpec`: tumbling and sliding windows by time or rows;
- :class:`EngineMonitor`: the same online, fed from an engine's histograms and row sample;
- :mod:`~mlserve.drift.alerts` and :mod:`~mlserve.drift.performance`: alert rules with
  hysteresis, and online model quality from delayed ground truth;
- :mod:`~mlserve.drift.report` and ``mlserve drift report``: the offline HTML/JSON report.

The p-values need scipy (``pip install 'mlserve[monitoring]'``).
"""

from __future__ import annotations

from mlserve.drift.analysis import DriftReport, FeatureDrift, analyze
from mlserve.drift.config import DriftConfig, FeatureConfig, WindowSpec
from mlserve.drift.monitor import EngineMonitor, MonitorSettings
from mlserve.drift.profile import ReferenceProfile
from mlserve.drift.window import Chunk, WindowData, Windows

__all__ = [
    "Chunk",
    "DriftConfig",
    "DriftReport",
    "EngineMonitor",
    "FeatureConfig",
    "FeatureDrift",
    "MonitorSettings",
    "ReferenceProfile",
    "WindowData",
    "WindowSpec",
    "Windows",
    "analyze",
]
