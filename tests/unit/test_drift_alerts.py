"""Alert rules (thresholds, hysteresis, consecutive evaluations, minimum rows, unload), the
webhook sink (payload, retries with a timeout, giving up), online performance from feedback,
and the server's monitoring settings (config file + flags, environment round trip)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlserve.drift import DriftConfig, FeatureDrift
from mlserve.drift.alerts import AlertConfig, AlertEvaluator, AlertSink
from mlserve.drift.analysis import DriftReport
from mlserve.drift.performance import OnlinePerformance
from mlserve.errors import InvalidInput
from mlserve.server.settings import ServerSettings


def _report(value: float, rows: int = 1000, test: str = "wasserstein",
            missing: float = 0.0) -> DriftReport:
    threshold = 0.05 if test == "ks" else 0.1
    drifted = value < threshold if test == "ks" else value >= threshold
    f = FeatureDrift(name="amount", kind="numeric", rows=rows, test=test, threshold=threshold,
                     value=value, drifted=drifted, missing_rate=missing,
                     reference_missing_rate=0.0)
    return DriftReport(rows=rows, start=0.0, end=1.0, features={"amount": f}, prediction=None,
                       drifted_features=["amount"] if drifted else [], judged_features=1,
                       drift_share=1.0 if drifted else 0.0, dataset_drift=drifted, min_rows=1)


def _run(evaluator: AlertEvaluator, values: list[float], **kw: Any) -> list[list[str]]:
    out = []
    for t, value in enumerate(values):
        changed = evaluator.evaluate("m", "1", _report(value, **kw), DriftConfig(), float(t))
        out.append([f"{a.rule}:{a.status}" for a in changed if a.rule == "feature_drift"])
    return out


def test_fires_once_and_resolves_with_hysteresis() -> None:
    evaluator = AlertEvaluator(AlertConfig(rules=("feature_drift",), hysteresis=0.2))
    steps = _run(evaluator, [0.05, 0.12, 0.3, 0.09, 0.085, 0.079, 0.05, 0.11])
    # 0.09 and 0.085 are below the threshold but inside the band: still firing
    assert steps == [[], ["feature_drift:firing"], [], [], [], ["feature_drift:resolved"], [],
                     ["feature_drift:firing"]]
    (alert,) = evaluator.firing()
    assert alert.labels == {"alertname": "MlserveFeatureDrift", "model": "m", "version": "1",
                            "rule": "feature_drift", "check": "wasserstein",
                            "severity": "critical", "feature": "amount"}


def test_p_value_rules_resolve_above_the_band() -> None:
    evaluator = AlertEvaluator(AlertConfig(rules=("feature_drift",), hysteresis=0.2))
    steps = _run(evaluator, [0.5, 0.01, 0.055, 0.07], test="ks")
    assert steps == [[], ["feature_drift:firing"], [], ["feature_drift:resolved"]]


def test_consecutive_evaluations_and_minimum_rows() -> None:
    evaluator = AlertEvaluator(AlertConfig(rules=("feature_drift",), for_evaluations=3))
    assert _run(evaluator, [0.2, 0.2, 0.05, 0.2, 0.2, 0.2]) == [[], [], [], [], [],
                                                              ["feature_drift:firing"]]
    few = AlertEvaluator(AlertConfig(min_rows=500))
    assert _run(few, [0.9, 0.9], rows=499) == [[], []] and few.states == {}


def test_data_quality_and_dataset_rules_and_forget() -> None:
    evaluator = AlertEvaluator(AlertConfig())
    changed = evaluator.evaluate("m", "1", _report(0.5, missing=0.3), DriftConfig(), 0.0)
    assert sorted((a.rule, a.check) for a in changed) == [
        ("data_quality", "missing_rate"), ("dataset_drift", "drift_share"),
        ("feature_drift", "wasserstein")]
    resolved = evaluator.forget("m", "1", 5.0)
    assert len(resolved) == 3 and all(a.status == "resolved" and a.ends_at == 5.0
                                      for a in resolved)
    assert evaluator.states == {}


def _alerts() -> list[Any]:
    evaluator = AlertEvaluator(AlertConfig(rules=("feature_drift",)))
    return evaluator.evaluate("m", "1", _report(0.5), DriftConfig(), 1700000000.0)


def _deliver(handler: Any, retries: int) -> AlertSink:
    """Sends one firing alert through a sink whose webhook is ``handler`` (MockTransport)."""

    async def main() -> AlertSink:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        sink = AlertSink(AlertConfig(webhook_url="http://hook/alerts", webhook_retries=retries,
                                     webhook_backoff_s=0.01), client=client)
        sink.send(_alerts())
        await sink.drain(30)
        await client.aclose()
        return sink

    return asyncio.run(main())


def test_webhook_payload_and_retries() -> None:
    calls: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(503 if len(calls) < 3 else 200)

    sink = _deliver(handler, retries=3)
    assert (sink.delivered, sink.failed, len(calls)) == (1, 0, 3)
    body = calls[-1]
    assert body["status"] == "firing" and body["receiver"] == "mlserve"
    (alert,) = body["alerts"]
    assert alert["labels"]["feature"] == "amount" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"] == "2023-11-14T22:13:20Z"
    assert body["groupLabels"] == {"model": "m", "version": "1"}


def test_webhook_gives_up_after_retries_and_times_out() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no answer", request=request)

    sink = _deliver(handler, retries=1)
    assert (sink.delivered, sink.failed) == (0, 1)


def test_alert_config_is_validated() -> None:
    for bad in ({"rules": ("nope",)}, {"hysteresis": 1.0}, {"for_evaluations": 0},
                {"min_rows": 0}, {"webhook_timeout_s": 0}):
        with pytest.raises(InvalidInput):
            AlertConfig(**bad)


def test_online_performance_metrics_and_retention() -> None:
    perf = OnlinePerformance("binary", [0, 1], window_s=100.0, max_rows=5)
    perf.add(0.0, np.array([[0.9], [0.2]]), perf.label_codes([1, 0]))
    perf.add(50.0, np.array([[0.6], [0.4], [0.7]]), perf.label_codes([True, 1.0, "0"]))
    got = perf.metrics(now=60.0)
    assert got["labels"] == 5 and got["accuracy"] == pytest.approx(3 / 5)
    perf.add(60.0, np.array([[0.1]]), perf.label_codes([0]))
    assert perf.metrics(now=60.0)["labels"] == 4  # max_rows drops the oldest request (2 rows)
    assert perf.metrics(now=155.0)["labels"] == 1  # window: predictions older than 100 s
    assert perf.metrics(now=155.0)["roc_auc"] is None  # one class only: undefined
    with pytest.raises(InvalidInput, match="not a class"):
        perf.label_codes([2])
    reg = OnlinePerformance("regression")
    reg.add(0.0, np.array([[1.0], [3.0]]), reg.label_codes([2.0, 3.0]))
    assert reg.metrics(0.0)["rmse"] == pytest.approx(np.sqrt(0.5))
    for bad in ([None], [[1.0]], [float("nan")], [True], ["2"]):
        with pytest.raises(InvalidInput, match="finite numbers"):
            reg.label_codes(bad)


def test_online_performance_counts_a_request_once() -> None:
    """Labels sent again for a request id replace the earlier ones (a correction), so neither
    a retry nor a duplicate inflates the metrics."""
    perf = OnlinePerformance("binary", [0, 1])
    perf.add(0.0, np.array([[0.9], [0.8]]), perf.label_codes([0, 0]), request_id="a")
    perf.add(0.0, np.array([[0.2]]), perf.label_codes([0]), request_id="b")
    got = perf.metrics(1.0)
    assert got["labels"] == 3 and got["accuracy"] == pytest.approx(1 / 3)
    perf.add(0.0, np.array([[0.9], [0.8]]), perf.label_codes([1, 1]), request_id="a")
    got = perf.metrics(1.0)
    assert got["labels"] == 3 and got["accuracy"] == pytest.approx(1.0)
    perf.add(0.0, np.array([[0.3]]), perf.label_codes([0]))  # no id: always its own entry
    perf.add(0.0, np.array([[0.3]]), perf.label_codes([0]))
    assert perf.metrics(1.0)["labels"] == 5


def test_server_monitoring_settings(tmp_path: Path) -> None:
    file = tmp_path / "monitoring.toml"
    file.write_text('interval_s = 2.0\nwindow = "tumbling:10000rows"\nsample_rows = 1000\n'
                    '[drift]\nmin_rows = 50\n[drift.features.amount]\ntest = "psi"\n'
                    'threshold = 0.2\n[alerts]\nrules = ["feature_drift"]\nmin_rows = 10\n')
    settings = ServerSettings(monitoring_config_file=str(file), monitoring_interval_s=1.0,
                              alert_webhook_url="http://x/hook")
    config = settings.monitoring_config()
    assert config.interval_s == 1.0  # the flag wins over the file
    assert config.monitor.window.describe() == "tumbling:10000rows"
    assert config.monitor.sample_rows == 1000 and config.monitor.drift.min_rows == 50
    assert config.monitor.drift.features["amount"].threshold == 0.2
    assert config.alerts.rules == ("feature_drift",) and config.alerts.min_rows == 10
    assert config.alerts.webhook_url == "http://x/hook"
    again = ServerSettings.from_env(settings.to_env())
    assert again.monitoring_config() == config
    assert ServerSettings.from_env({**ServerSettings(monitoring=False).to_env()}).monitoring \
        is False
    file.write_text('nope = 1\n')
    with pytest.raises(InvalidInput, match="unknown keys nope"):
        ServerSettings(monitoring_config_file=str(file))
    with pytest.raises(InvalidInput, match="window"):
        ServerSettings(monitoring_window="sliding")
