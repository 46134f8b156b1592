"""ServerMonitoring: drift monitoring, alerts and online performance of the served models.

Off the request path by construction. Requests only pass their request id to the engine (the
core logs the outputs under it, per batch); everything else runs in one background task: every
``interval_s`` it attaches an :class:`~mlserve.drift.EngineMonitor` to each newly loaded model
version (configuring its engine's row sample, prediction histogram and prediction log), runs
every monitor's ``tick`` in a dedicated worker thread (reading the core's histogram counters and
row sample, computing the statistics), evaluates the alert rules on the new reports and hands
transitions to the :class:`~mlserve.drift.alerts.AlertSink` (log, webhook). The /monitoring and
/feedback routes and the /metrics collector read what the last tick produced.

Feedback: ``feedback(model, ids, labels)`` looks each id up in the prediction logs of the
model's loaded versions (default version first) and adds the joined rows to that version's
:class:`~mlserve.drift.performance.OnlinePerformance`.

Thread-safety: everything but ``_tick_monitors`` runs on the event loop; ``_tick_monitors``
runs in the monitoring thread and only touches the monitors (replacing ``latest`` reports).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mlserve.drift.alerts import AlertConfig, AlertEvaluator, AlertSink
from mlserve.drift.config import DriftConfig, WindowSpec
from mlserve.drift.monitor import EngineMonitor, MonitorSettings, chunk_sample_rows
from mlserve.drift.performance import OnlinePerformance
from mlserve.drift.profile import ReferenceProfile
from mlserve.errors import InvalidInput, MlserveError, ModelNotFound
from mlserve.server.models import ModelManager, ServedVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitoringConfig:
    """Everything the server's monitoring does (``mlserve serve --monitoring-*``)."""

    interval_s: float = 5.0
    """Seconds between two reads of the engines (and evaluations of sliding windows)."""
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    performance_window_s: float = 3600.0
    """Age (of the prediction) up to which joined labels count in the online metrics."""

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval_s <= 3600:
            raise InvalidInput(f"monitoring interval must be in 0.05..3600 s, got "
                               f"{self.interval_s}")
        if not self.performance_window_s > 0:
            raise InvalidInput("monitoring 'performance_window_s' must be > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> MonitoringConfig:
        """From a config file's table: ``interval_s``, ``window`` ("sliding:5m"...),
        ``sample_rows``, ``log_entries``, ``log_max_age_s``, ``performance_window_s``, and the
        tables ``drift`` (:class:`~mlserve.drift.DriftConfig` fields) and ``alerts``
        (:class:`~mlserve.drift.alerts.AlertConfig` fields)."""
        known = {"interval_s", "window", "sample_rows", "log_entries", "log_max_age_s",
                 "performance_window_s", "drift", "alerts"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"monitoring config: unknown keys {', '.join(unknown)} (known: "
                               f"{', '.join(sorted(known))})")
        values = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        window = WindowSpec.parse(values["window"]) if "window" in values else WindowSpec()
        interval_s = float(values.get("interval_s", cls.interval_s))
        sample_rows = int(values.get("sample_rows", MonitorSettings.sample_rows))
        monitor = MonitorSettings(
            window=window,
            drift=DriftConfig.from_dict(values.get("drift") or {}),
            sample_rows=sample_rows,
            chunk_sample_rows=chunk_sample_rows(sample_rows, window, interval_s),
            log_entries=int(values.get("log_entries", MonitorSettings.log_entries)),
            log_max_age_s=float(values.get("log_max_age_s", MonitorSettings.log_max_age_s)))
        alerts = dict(values.get("alerts") or {})
        if "rules" in alerts:
            alerts["rules"] = tuple(alerts["rules"])
        for key in ("webhook_url", "min_rows"):
            if f"alert_{key}" in values:
                alerts[key] = values[f"alert_{key}"]
        return cls(interval_s=interval_s, monitor=monitor,
                   alerts=AlertConfig(**alerts),
                   performance_window_s=float(values.get("performance_window_s",
                                                         cls.performance_window_s)))


@dataclass
class _Watched:
    """One monitored model version."""

    served: ServedVersion
    monitor: EngineMonitor
    performance: OnlinePerformance


class ServerMonitoring:
    """See the module docstring."""

    def __init__(self, manager: ModelManager, config: MonitoringConfig) -> None:
        self.manager = manager
        self.config = config
        self.evaluator = AlertEvaluator(config.alerts)
        self.sink = AlertSink(config.alerts)
        self.watched: dict[tuple[str, str], _Watched] = {}
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "mlserve-monitoring")
        self._skipped: set[tuple[str, str]] = set()
        #: Ticks run, and the CPU seconds the monitoring thread spent in them.
        self.ticks = 0
        self.tick_cpu_s = 0.0

    # ---- the background task ---------------------------------------------------------------

    async def run(self) -> None:
        """Ticks every ``interval_s`` until cancelled; a failing tick is logged, not fatal."""
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("monitoring tick failed; trying again next interval")

    async def tick(self) -> None:
        """One interval: attach/forget versions, read and judge every monitor, alert."""
        self.sync()
        now = time.time()
        watched = list(self.watched.items())
        loop = asyncio.get_running_loop()
        reports, cpu_s = await loop.run_in_executor(self._thread, _tick_monitors, watched, now)
        self.ticks += 1
        self.tick_cpu_s += cpu_s
        for (model, version), report in reports:
            if report is None:
                continue
            changed = self.evaluator.evaluate(model, version, report,
                                              self.config.monitor.drift, now)
            self.sink.send(changed)

    def sync(self) -> None:
        """Attaches a monitor to every loaded version without one; forgets unloaded ones."""
        live: dict[tuple[str, str], ServedVersion] = {
            (name, version): served
            for name, model in list(self.manager.models.items())
            for version, served in list(model.versions.items())
            if not served.retired and not served.engine.closed
        }
        for key in [k for k in self.watched if k not in live]:
            del self.watched[key]
            self.sink.send(self.evaluator.forget(*key, time.time()))
        for key, served in live.items():
            if key not in self.watched and key not in self._skipped:
                self.attach(served)

    def attach(self, served: ServedVersion) -> None:
        """Starts monitoring ``served`` now (idempotent; a bundle without a reference profile
        is skipped with one log line)."""
        key = (served.name, served.version)
        if key in self.watched:
            return
        bundle = served.engine.bundle
        try:
            if bundle is None:
                raise InvalidInput("the engine serves no bundle")
            profile = ReferenceProfile.from_bundle(bundle)
            monitor = EngineMonitor(served.engine, profile, self.config.monitor)
        except MlserveError as exc:
            self._skipped.add(key)
            logger.warning("model %s/%s is not monitored: %s", served.name, served.version, exc)
            return
        classes = bundle.manifest.get("classes")
        self.watched[key] = _Watched(served, monitor, OnlinePerformance(
            profile.task, classes, self.config.performance_window_s,
            self.config.monitor.log_entries or 100_000))
        logger.info("monitoring %s/%s (%d features, window %s, every %g s)", served.name,
                    served.version, len(profile.features),
                    self.config.monitor.window.describe(), self.config.interval_s)

    async def close(self, timeout_s: float) -> None:
        """Waits (bounded) for alert deliveries in flight and stops the thread."""
        await self.sink.drain(timeout_s)
        self._thread.shutdown(wait=False, cancel_futures=True)

    # ---- routes -----------------------------------------------------------------------------

    def status(self, model: str, version: str | None = None,
               histograms: bool = False) -> dict[str, Any]:
        """The /monitoring body: per monitored version of ``model``, the window, the latest
        report, firing alerts and online performance."""
        served_model = self.manager.model(model)
        self.sync()
        versions = [version] if version is not None else list(served_model.versions)
        if version is not None and version not in served_model.versions:
            raise ModelNotFound(f"model {model!r} has no loaded version {version!r}")
        now = time.time()
        out = []
        for v in versions:
            w = self.watched.get((model, v))
            if w is None:
                out.append({"version": v, "monitored": False})
                continue
            report = w.monitor.latest
            firing = [a.to_webhook() for a in self.evaluator.firing()
                      if a.model == model and a.version == v]
            out.append({
                "version": v,
                "monitored": True,
                "window": self.config.monitor.window.describe(),
                "interval_s": self.config.interval_s,
                "window_rows": w.monitor.window_rows,
                "reference_rows": w.monitor.profile.rows,
                "drift": None if report is None else report.to_dict(histograms),
                "alerts": firing,
                "performance": w.performance.metrics(now),
            })
        return {"model": model, "default_version": served_model.default, "versions": out}

    def feedback(self, model: str, ids: Any, labels: Any) -> dict[str, Any]:
        """Joins ``labels`` (one per id: a value, or a list for a multi-row request) to the
        predictions logged under ``ids``."""
        served_model = self.manager.model(model)
        if not isinstance(ids, list) or not isinstance(labels, list) or len(ids) != len(labels):
            raise InvalidInput("feedback needs 'ids' and 'labels': lists of the same length")
        if not ids:
            return {"matched": 0, "unmatched": 0, "unmatched_ids": []}
        if len(ids) > 100_000:
            raise InvalidInput("feedback takes at most 100000 ids per request")
        self.sync()
        order = [served_model.default, *(v for v in served_model.versions
                                         if v != served_model.default)]
        # An id given twice counts once, with its last labels (as feedback sent again later
        # replaces the earlier labels).
        last = {str(ident): i for i, ident in enumerate(ids)}
        pending = {i: ident for ident, i in sorted(last.items(), key=lambda kv: kv[1])}
        joined: list[tuple[_Watched, str, float, Any, Any]] = []
        for version in order:
            w = self.watched.get((model, version))
            if w is None or not pending:
                continue
            keys = list(pending)
            found = w.served.engine.find_predictions([pending[i] for i in keys])
            for i, hit in zip(keys, found, strict=True):
                if hit is None:
                    continue
                predicted_at, outputs = hit
                label = labels[i] if isinstance(labels[i], list) else [labels[i]]
                if len(label) != len(outputs):
                    raise InvalidInput(f"feedback for id {pending[i]!r}: {len(label)} labels "
                                       f"for a request of {len(outputs)} rows")
                joined.append((w, pending[i], predicted_at, outputs,
                               w.performance.label_codes(label)))
                del pending[i]
        # Validated as a whole first: a bad label refuses the request without adding any.
        for w, ident, predicted_at, outputs, codes in joined:
            w.performance.add(predicted_at, outputs, codes, request_id=ident)
            w.performance.matched += 1
        matched = len(joined)
        if pending and (w := self.watched.get((model, served_model.default))) is not None:
            w.performance.unmatched += len(pending)
        return {"matched": matched, "unmatched": len(pending),
                "unmatched_ids": [pending[i] for i in list(pending)[:20]]}

    # ---- metrics ------------------------------------------------------------------------------

    def metric_source(self) -> tuple[list[tuple[str, str, Any, dict[str, Any], list[Any]]],
                                     dict[str, float]]:
        """(model, version, latest report, performance, firing alerts) per monitored version,
        and webhook deliveries by outcome: :func:`mlserve.metrics.monitoring_families`."""
        now = time.time()
        firing = self.evaluator.firing()
        versions = [(m, v, w.monitor.latest, {**w.performance.metrics(now),
                                              "window_rows": w.monitor.window_rows},
                     [a for a in firing if a.model == m and a.version == v])
                    for (m, v), w in list(self.watched.items())]
        return versions, {"delivered": self.sink.delivered, "failed": self.sink.failed,
                          "ticks": self.ticks, "tick_cpu_s": self.tick_cpu_s}


def _tick_monitors(watched: list[tuple[tuple[str, str], _Watched]], now: float
                   ) -> tuple[list[tuple[tuple[str, str], Any]], float]:
    """Runs in the monitoring thread: every monitor's tick (an engine closed meanwhile is
    skipped; it is forgotten at the next sync); and the thread's CPU seconds spent."""
    started = time.thread_time()
    out = []
    for key, w in watched:
        try:
            out.append((key, w.monitor.tick(now)))
        except MlserveError as exc:
            logger.debug("monitor %s/%s skipped this tick: %s", *key, exc)
        except Exception:
            logger.exception("monitor %s/%s failed this tick", *key)
    return out, time.thread_time() - started
