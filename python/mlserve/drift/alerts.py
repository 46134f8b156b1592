"""Alert rules evaluated in the server on every drift report, with firing/resolved state.

Each report yields *signals*, one per rule and subject: ``feature_drift`` (per feature: the
deciding test's statistic against its threshold), ``prediction_drift``, ``dataset_drift`` (the
share of drifted features) and ``data_quality`` (per feature and check: missing-rate increase,
out-of-range rate, unseen-category increase). :class:`AlertEvaluator` keeps one state per
(model, version, rule, feature, check) and turns signals into transitions:

- a signal past its threshold for ``for_evaluations`` consecutive reports **fires** (once);
- a firing alert **resolves** only when the value is back past the threshold by the
  ``hysteresis`` share of it (distances: below ``threshold · (1 − h)``; p-values: at or above
  ``threshold · (1 + h)``), so a statistic hovering at the threshold does not flap;
- reports with fewer than ``min_rows`` rows are not evaluated (no state changes).

Transitions are delivered by :class:`AlertSink`: always to the log, and optionally as one JSON
POST per evaluation to a webhook (Alertmanager's webhook payload: ``status``, ``alerts`` with
``labels``, ``annotations``, ``startsAt``, ``endsAt``), with a timeout and retries with
exponential backoff, never on the request path.

Thread-safety: an evaluator and a sink belong to one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlserve.drift.analysis import DriftReport, FeatureDrift
from mlserve.drift.config import TESTS, DriftConfig
from mlserve.errors import InvalidInput

logger = logging.getLogger(__name__)

#: Rule name -> the alert name shipped rules and webhooks use.
ALERT_NAMES = {
    "feature_drift": "MlserveFeatureDrift",
    "prediction_drift": "MlservePredictionDrift",
    "dataset_drift": "MlserveDatasetDrift",
    "data_quality": "MlserveDataQuality",
}
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"


@dataclass(frozen=True)
class AlertConfig:
    """Which rules run and how they fire and resolve."""

    rules: tuple[str, ...] = tuple(ALERT_NAMES)
    """Rules evaluated (any of feature_drift, prediction_drift, dataset_drift, data_quality)."""
    min_rows: int = 500
    """Reports over fewer rows are not evaluated."""
    hysteresis: float = 0.2
    """Share of the threshold a value must move back past it before a firing alert resolves."""
    for_evaluations: int = 1
    """Consecutive reports past the threshold before an alert fires."""
    webhook_url: str | None = None
    """Where transitions are POSTed (JSON); None: the log only."""
    webhook_timeout_s: float = 5.0
    """Timeout of one webhook POST."""
    webhook_retries: int = 3
    """Further attempts after a failed POST."""
    webhook_backoff_s: float = 1.0
    """Wait before the first retry; doubled before each further one."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(ALERT_NAMES))
        if unknown:
            raise InvalidInput(f"alert config: unknown rules {', '.join(unknown)}; choose from "
                               f"{', '.join(ALERT_NAMES)}")
        if self.min_rows < 1:
            raise InvalidInput("alert config 'min_rows' must be >= 1")
        if not 0.0 <= self.hysteresis < 1.0:
            raise InvalidInput("alert config 'hysteresis' must be in [0, 1)")
        if self.for_evaluations < 1:
            raise InvalidInput("alert config 'for_evaluations' must be >= 1")
        if not self.webhook_timeout_s > 0 or self.webhook_retries < 0 or \
                self.webhook_backoff_s < 0:
            raise InvalidInput("alert config: 'webhook_timeout_s' must be > 0, "
                               "'webhook_retries' and 'webhook_backoff_s' >= 0")


@dataclass(frozen=True)
class Signal:
    """One rule's reading on one report."""

    rule: str
    feature: str
    check: str
    """The statistic or data-quality check (ks, wasserstein, missing_rate, drift_share...)."""
    value: float
    threshold: float
    direction: str
    """"above": past the threshold when value >= threshold; "below": when value < threshold."""

    def breached(self) -> bool:
        return self.value < self.threshold if self.direction == "below" \
            else self.value >= self.threshold

    def cleared(self, hysteresis: float) -> bool:
        if self.direction == "below":
            return self.value >= self.threshold * (1.0 + hysteresis)
        return self.value < self.threshold * (1.0 - hysteresis)


@dataclass
class Alert:
    """One alert's state; also what a transition reports."""

    rule: str
    model: str
    version: str
    feature: str
    check: str
    status: str = "inactive"
    """"inactive", "firing" or "resolved" (after firing)."""
    value: float = 0.0
    threshold: float = 0.0
    starts_at: float = 0.0
    ends_at: float | None = None
    breaches: int = 0

    @property
    def labels(self) -> dict[str, str]:
        labels = {"alertname": ALERT_NAMES[self.rule], "model": self.model,
                  "version": self.version, "rule": self.rule, "check": self.check,
                  "severity": "warning" if self.rule == "data_quality" else "critical"}
        if self.feature:
            labels["feature"] = self.feature
        return labels

    def to_webhook(self) -> dict[str, Any]:
        subject = f"feature '{self.feature}'" if self.feature else "the model"
        return {
            "status": self.status,
            "labels": self.labels,
            "annotations": {
                "summary": f"{ALERT_NAMES[self.rule]} on {self.model}/{self.version}: "
                           f"{subject}, {self.check} = {self.value:.4g} (threshold "
                           f"{self.threshold:.4g})",
                "value": f"{self.value:.6g}",
                "threshold": f"{self.threshold:.6g}",
            },
            "startsAt": _iso(self.starts_at),
            "endsAt": _iso(self.ends_at) if self.ends_at is not None else _ZERO_TIME,
        }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _drift_signal(rule: str, f: FeatureDrift, feature: str) -> Signal | None:
    if f.drifted is None or f.value is None:
        return None
    return Signal(rule, feature, f.test, float(f.value), f.threshold, TESTS[f.test][0])


def signals(report: DriftReport, config: DriftConfig, rules: Iterable[str]) -> list[Signal]:
    """The signals of one report under the enabled ``rules``."""
    enabled = set(rules)
    out: list[Signal] = []
    for name, f in report.features.items():
        if "feature_drift" in enabled and (s := _drift_signal("feature_drift", f, name)):
            out.append(s)
        if "data_quality" in enabled and f.drifted is not None:
            if f.missing_rate is not None:
                out.append(Signal("data_quality", name, "missing_rate",
                                  f.missing_rate - f.reference_missing_rate,
                                  config.missing_rate_increase, "above"))
            if f.out_of_range_rate is not None:
                out.append(Signal("data_quality", name, "out_of_range", f.out_of_range_rate,
                                  config.out_of_range_rate, "above"))
            if f.unseen_rate is not None and f.reference_unseen_rate is not None:
                out.append(Signal("data_quality", name, "unseen_categories",
                                  f.unseen_rate - f.reference_unseen_rate,
                                  config.unseen_rate_increase, "above"))
    if "prediction_drift" in enabled and report.prediction is not None \
            and (s := _drift_signal("prediction_drift", report.prediction, "")):
        out.append(s)
    if "dataset_drift" in enabled and report.drift_share is not None:
        out.append(Signal("dataset_drift", "", "drift_share", report.drift_share,
                          config.dataset_drift_share, "above"))
    return out


@dataclass
class AlertEvaluator:
    """Alert states of every monitored model version (see the module docstring)."""

    config: AlertConfig = field(default_factory=AlertConfig)
    states: dict[tuple[str, str, str, str, str], Alert] = field(default_factory=dict)

    def evaluate(self, model: str, version: str, report: DriftReport, drift: DriftConfig,
                 now: float) -> list[Alert]:
        """Updates the states from one report; returns the alerts that fired or resolved."""
        if report.rows < self.config.min_rows:
            return []
        changed: list[Alert] = []
        for s in signals(report, drift, self.config.rules):
            key = (model, version, s.rule, s.feature, s.check)
            alert = self.states.get(key)
            if alert is None:
                alert = self.states[key] = Alert(s.rule, model, version, s.feature, s.check)
            alert.value, alert.threshold = s.value, s.threshold
            if alert.status == "firing":
                if s.cleared(self.config.hysteresis):
                    alert.status, alert.ends_at, alert.breaches = "resolved", now, 0
                    changed.append(_copy(alert))
                continue
            alert.breaches = alert.breaches + 1 if s.breached() else 0
            if alert.breaches >= self.config.for_evaluations:
                alert.status, alert.starts_at, alert.ends_at = "firing", now, None
                changed.append(_copy(alert))
        return changed

    def firing(self) -> list[Alert]:
        return [a for a in self.states.values() if a.status == "firing"]

    def forget(self, model: str, version: str, now: float) -> list[Alert]:
        """Drops a version's states (it was unloaded); its firing alerts resolve."""
        resolved = []
        for key in [k for k in self.states if k[0] == model and k[1] == version]:
            alert = self.states.pop(key)
            if alert.status == "firing":
                alert.status, alert.ends_at = "resolved", now
                resolved.append(alert)
        return resolved


def _copy(alert: Alert) -> Alert:
    return Alert(**{f: getattr(alert, f) for f in alert.__dataclass_fields__})


class AlertSink:
    """Delivers transitions: the log, and the webhook when configured (async, with retries).

    ``delivered`` / ``failed`` count webhook POSTs that succeeded / gave up.
    """

    def __init__(self, config: AlertConfig, client: Any = None) -> None:
        self.config = config
        self._client = client
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def send(self, alerts: list[Alert]) -> None:
        """Logs now; schedules the webhook POST on the running loop (returns at once)."""
        if not alerts:
            return
        for a in alerts:
            log = logger.warning if a.status == "firing" else logger.info
            log("alert %s %s: %s", a.status, ALERT_NAMES[a.rule],
                a.to_webhook()["annotations"]["summary"])
        if self.config.webhook_url:
            task = asyncio.get_running_loop().create_task(self._post(alerts))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def payload(self, alerts: list[Alert]) -> dict[str, Any]:
        firing = any(a.status == "firing" for a in alerts)
        items = [a.to_webhook() for a in alerts]
        common = {k: v for k, v in items[0]["labels"].items()
                  if all(i["labels"].get(k) == v for i in items)}
        return {"version": "4", "receiver": "mlserve", "status": "firing" if firing
                else "resolved", "alerts": items, "commonLabels": common,
                "groupLabels": {k: common[k] for k in ("model", "version") if k in common}}

    async def _post(self, alerts: list[Alert]) -> None:
        import httpx

        body = self.payload(alerts)
        url = str(self.config.webhook_url)
        client = self._client or httpx.AsyncClient(timeout=self.config.webhook_timeout_s)
        try:
            for attempt in range(self.config.webhook_retries + 1):
                try:
                    response = await client.post(url, json=body)
                    if response.status_code < 300:
                        self.delivered += 1
                        return
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                if attempt < self.config.webhook_retries:
                    logger.warning("alert webhook %s failed (%s); retrying", url, reason)
                    await asyncio.sleep(self.config.webhook_backoff_s * 2.0 ** attempt)
            self.failed += 1
            logger.error("alert webhook %s failed %d times (%s); %d alerts not delivered", url,
                         self.config.webhook_retries + 1, reason, len(alerts))
        finally:
            if self._client is None:
                await client.aclose()

    async def drain(self, timeout_s: float) -> None:
        """Waits (bounded) for deliveries in flight, e.g. at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
