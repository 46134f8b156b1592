"""Monitoring end to end: a real `mlserve serve` process with a short sliding window, traffic
from the card-transaction generator sent with mlserve.client, and a real local HTTP webhook
receiver. Without drift no alert is raised; with drift on two features exactly those features
cross their thresholds within one window, each alert fires once (the webhook receives it) and
resolves once traffic is normal again. Also: /monitoring, /metrics gauges, /feedback joined to
logged predictions (online accuracy / ROC-AUC / log-loss), and --no-monitoring."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlserve.client import Client
from mlserve.registry import Registry
from mlserve.trainer import encode_rows, train
from mlserve.trainer.datasets import card_transactions
from server_fixtures import ServerProcess

INTERVAL_S = 0.5
WINDOW_S = 3.0
MIN_ROWS = 1000
DRIFTED = {"amount", "channel"}


class Webhook:
    """A local HTTP server that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [a for body in list(self.received) for a in body["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Trained:
    def __init__(self, root: Path) -> None:
        self.registry_root = root / "registry"
        registry = Registry(self.registry_root)
        result = train(card_transactions(6000, seed=21), "is_fraud", name="fraud",
                       timestamp="event_ts",
                       config={"exclude": ["user_id", "merchant_id"], "epochs": 2,
                               "hidden": [16]},
                       registry=registry, out_dir=root / "bundle", progress=False)
        self.inputs = result.model_version.manifest["signature"]["inputs"]
        self.features = [s["name"] for s in self.inputs]

    def rows(self, n: int, seed: int, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Shuffled: the generator's rows are in time order, and a few hundred consecutive ones
        cover only part of a day (their `hour` would drift from the reference, as real traffic
        of one hour does)."""
        frame = card_transactions(n, seed=seed, drift=drift, drift_features=sorted(DRIFTED))
        frame = frame.sample(frac=1.0, random_state=seed)
        return encode_rows(frame, self.inputs), frame["is_fraud"].to_numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("monitoring"))


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def server(trained: Trained, webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("monitoring-log") / "server.log"
    proc = ServerProcess(trained.registry_root, ["fraud"], log,
                         "--monitoring-interval", str(INTERVAL_S),
                         "--monitoring-window", f"sliding:{WINDOW_S:g}s",
                         "--alert-min-rows", str(MIN_ROWS), "--alert-webhook", webhook.url)
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


class Traffic:
    """Sends rows of the current phase in 25-row requests from a thread until stopped."""

    def __init__(self, url: str, trained: Trained) -> None:
        self.url = url
        self.phases = {"normal": trained.rows(20_000, seed=31)[0],
                       "drift": trained.rows(20_000, seed=32, drift=1.0)[0]}
        self.phase = "normal"
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Client(self.url) as client:
            i = 0
            while not self.stop.is_set():
                x = self.phases[self.phase]
                start = (i * 25) % (len(x) - 25)
                client.infer("fraud", x[start:start + 25])
                self.sent += 25
                i += 1
                time.sleep(0.01)  # ~1000-2000 rows/s: a window holds thousands of rows


def _status(url: str) -> dict[str, Any]:
    body = httpx.get(url + "/v2/models/fraud/monitoring", timeout=10).json()
    return body["versions"][0]


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _feature_alerts(webhook: Webhook, status: str) -> list[str]:
    return sorted(a["labels"]["feature"] for a in webhook.alerts()
                  if a["labels"]["rule"] == "feature_drift" and a["status"] == status)


def test_drift_alerts_fire_once_and_resolve(server: ServerProcess, trained: Trained,
                                            webhook: Webhook) -> None:
    traffic = Traffic(server.url, trained)
    traffic.thread.start()
    try:
        # 1. Normal traffic: full windows are judged, nothing drifts, nothing is sent.
        first = _wait(lambda: (s := _status(server.url))["drift"] is not None
                      and s["window_rows"] >= 2 * MIN_ROWS and s, 30, "a full window")
        assert first["monitored"] and first["window"] == f"sliding:{WINDOW_S:g}s"
        time.sleep(WINDOW_S + 4 * INTERVAL_S)
        calm = _status(server.url)
        assert calm["drift"]["drifted_features"] == [], calm["drift"]
        assert calm["alerts"] == [] and webhook.received == []
        assert set(calm["drift"]["features"]) == set(trained.features)

        # 2. Drift on two features: exactly those fire, within one window.
        traffic.phase = "drift"
        switched = time.monotonic()
        _wait(lambda: set(_feature_alerts(webhook, "firing")) >= DRIFTED, 30,
              "feature drift alerts")
        assert time.monotonic() - switched <= WINDOW_S + 4 * INTERVAL_S + 3.0
        drifted = _status(server.url)
        assert set(drifted["drift"]["drifted_features"]) == DRIFTED, drifted["drift"]
        assert {a["labels"]["feature"] for a in drifted["alerts"]
                if a["labels"]["rule"] == "feature_drift"} == DRIFTED
        metrics = httpx.get(server.url + "/metrics").text
        assert 'mlserve_feature_drift_detected{feature="amount",model="fraud",version="1"} 1.0' \
            in metrics
        assert 'mlserve_alerts_firing{alertname="MlserveFeatureDrift"' in metrics
        time.sleep(WINDOW_S)  # stays drifted: no second notification
        assert _feature_alerts(webhook, "firing") == sorted(DRIFTED)

        # 3. Back to normal: both resolve, once.
        traffic.phase = "normal"
        _wait(lambda: set(_feature_alerts(webhook, "resolved")) >= DRIFTED, 30,
              "resolved alerts")
        time.sleep(2 * INTERVAL_S)
        assert _feature_alerts(webhook, "resolved") == sorted(DRIFTED)
        assert _feature_alerts(webhook, "firing") == sorted(DRIFTED)
        final = _status(server.url)
        assert not any(a["labels"]["rule"] == "feature_drift" for a in final["alerts"])
    finally:
        traffic.stop.set()
        traffic.thread.join(10)
    body = webhook.received[0]
    assert body["receiver"] == "mlserve" and body["status"] in ("firing", "resolved")
    alert = body["alerts"][0]
    assert alert["labels"]["model"] == "fraud" and alert["labels"]["version"] == "1"
    assert alert["startsAt"].endswith("Z") and "summary" in alert["annotations"]


def test_feedback_joins_labels_to_logged_predictions(server: ServerProcess,
                                                     trained: Trained) -> None:
    x, y = trained.rows(400, seed=41)
    ids, labels, probabilities = [], [], []
    with Client(server.url) as client:
        for i in range(0, 400, 4):
            result = client.infer("fraud", x[i:i + 4], request_id=f"fb-{i}")
            assert result.request_id == f"fb-{i}"
            ids.append(result.request_id)
            labels.append([int(v) for v in y[i:i + 4]])
            probabilities.append(result.output[:, 0])
        single = client.infer("fraud", x[:1])  # a server-generated id works as well
        answer = client.feedback("fraud", [*ids, single.request_id, "never-sent"],
                                 [*labels, int(y[0]), 1])
        assert answer["matched"] == len(ids) + 1
        assert answer["unmatched"] == 1 and answer["unmatched_ids"] == ["never-sent"]
        performance = client.monitoring("fraud")["versions"][0]["performance"]
    p = np.concatenate([*probabilities, single.output[:, 0]])
    truth = np.concatenate([*[np.array(v) for v in labels], [y[0]]])
    assert performance["labels"] == 401
    assert performance["accuracy"] == pytest.approx(float(np.mean((p >= 0.5) == truth)))
    from sklearn.metrics import log_loss, roc_auc_score

    assert performance["roc_auc"] == pytest.approx(roc_auc_score(truth, p), abs=1e-9)
    assert performance["log_loss"] == pytest.approx(log_loss(truth, p), abs=1e-6)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'mlserve_online_roc_auc{model="fraud",version="1"}' in metrics
    assert 'mlserve_feedback_labels_total{model="fraud",outcome="unmatched",version="1"} 1.0' \
        in metrics
    bad = httpx.post(server.url + "/v2/models/fraud/feedback",
                     json={"ids": ["fb-0"], "labels": [[1]]})
    assert bad.status_code == 400 and "1 labels for a request of 4 rows" in bad.text
    wrong = httpx.post(server.url + "/v2/models/fraud/feedback",
                       json={"ids": ["fb-4"], "labels": [[0, 1, 2, 0]]})
    assert wrong.status_code == 400 and "not a class" in wrong.text
    assert httpx.post(server.url + "/v2/models/nope/feedback",
                      json={"ids": [], "labels": []}).status_code == 404
    # Feedback again for a labelled request, or twice in one call, replaces its labels: the
    # label count stays, and the metrics use the newest labels.
    with Client(server.url) as client:
        flipped = [1 - v for v in labels[0]]
        again = client.feedback("fraud", [ids[0], ids[0]], [labels[0], flipped])
        assert again["matched"] == 1 and again["unmatched"] == 0
        performance = client.monitoring("fraud")["versions"][0]["performance"]
    truth[:4] = flipped
    assert performance["labels"] == 401
    assert performance["accuracy"] == pytest.approx(float(np.mean((p >= 0.5) == truth)))


def test_monitoring_off(trained: Trained, tmp_path: Path) -> None:
    proc = ServerProcess(trained.registry_root, ["fraud"], tmp_path / "off.log",
                         "--no-monitoring")
    try:
        proc.wait_ready()
        r = httpx.get(proc.url + "/v2/models/fraud/monitoring")
        assert r.status_code == 503 and "monitoring is off" in r.text
        metrics = httpx.get(proc.url + "/metrics").text
        assert "# TYPE mlserve_feature_drift_psi gauge" in metrics  # declared, no samples
        assert "mlserve_feature_drift_psi{" not in metrics
    finally:
        assert proc.stop() == 0, proc.log()


def test_drift_report_cli(trained: Trained, tmp_path: Path) -> None:
    """`mlserve drift report` on CSV and Parquet: exit status, JSON summary, HTML with plots."""
    import subprocess
    import sys

    calm = card_transactions(3000, seed=51)
    drifted = card_transactions(3000, seed=52, drift=1.0, drift_features=sorted(DRIFTED))
    calm.to_csv(tmp_path / "calm.csv", index=False)
    drifted.to_parquet(tmp_path / "drifted.parquet")

    def report(data: str, out: str) -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            [sys.executable, "-m", "mlserve.cli", "drift", "report", "--model", "fraud",
             "--registry", str(trained.registry_root), "--data", str(tmp_path / data),
             "--out", str(tmp_path / out), "--quiet"],
            capture_output=True, text=True, timeout=300)
        assert done.returncode in (0, 1), done.stderr
        assert f"wrote {tmp_path / out / 'report.html'}" in done.stdout
        body = json.loads((tmp_path / out / "report.json").read_text())
        return done.returncode, body, (tmp_path / out / "report.html").read_text()

    code, body, page = report("calm.csv", "calm")
    assert code == 0 and body["drift"]["drifted_features"] == []
    assert body["drift"]["rows"] == 3000 and body["model"] == "fraud"
    assert set(body["drift"]["features"]) == set(trained.features)
    # the label column was there: the model scores this table as it scored its test split
    assert body["current_metrics"]["log_loss"] == pytest.approx(
        body["reference_metrics"]["log_loss"], abs=0.1)
    code, body, page = report("drifted.parquet", "drifted")
    assert set(body["drift"]["drifted_features"]) == DRIFTED
    assert code == (1 if body["drift"]["dataset_drift"] else 0)
    amount = body["drift"]["features"]["amount"]
    assert amount["test"] == "wasserstein" and amount["wasserstein"] >= 0.1
    assert len(amount["bins"]) == len(amount["current_shares"]) == len(amount["reference_shares"])
    assert page.count("data:image/png;base64,") == len(trained.features) + 1  # + prediction
    assert "<th>PSI</th>" in page and "amount" in page
    bad = subprocess.run([sys.executable, "-m", "mlserve.cli", "drift", "report", "--model",
                          "fraud", "--registry", str(trained.registry_root), "--data",
                          str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


# ---- shipped deploy files ------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_METRIC = r"\b((?:mlserve|process)_[a-z0-9_]+)\b"


def _exported(url: str) -> dict[str, set[str]]:
    """Every sample name /metrics can carry (counter families as name_total, histogram families
    as _bucket/_count/_sum), each with the label names seen on its samples."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        names = {"counter": [family.name + "_total"],
                 "histogram": [family.name + s for s in ("_bucket", "_count", "_sum")]}.get(
            family.type, [family.name])
        for name in names:
            out.setdefault(name, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _check_promql(expr: str, exported: dict[str, set[str]], where: str) -> None:
    import re

    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where
    names = set(re.findall(_METRIC, expr))
    assert names, f"{where}: no mlserve metric in {expr!r}"
    unknown = names - set(exported)
    assert not unknown, f"{where}: {sorted(unknown)} are not exported by /metrics"
    known_labels = set().union(*(exported[n] for n in names)) | {"le"}
    for name, matchers in re.findall(_METRIC + r"\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert not exported[name] or label in exported[name], \
                f"{where}: {name} has no label {label!r}"
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        for label in (g.strip() for g in group.split(",")):
            assert label in known_labels or not any(exported[n] for n in names), \
                f"{where}: no metric of {expr!r} has the label {label!r}"


def test_prometheus_rules_are_valid(server: ServerProcess) -> None:
    import re
    import shutil
    import subprocess

    import yaml

    path = DEPLOY / "prometheus" / "alerts.yml"
    doc = yaml.safe_load(path.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    exported = _exported(server.url)
    alerts = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert rule["alert"] not in alerts
            alerts.add(rule["alert"])
            assert re.fullmatch(r"(\d+[smhd])+", str(rule.get("for", "0s")))
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description"} <= set(rule["annotations"])
            _check_promql(rule["expr"], exported, rule["alert"])
    # the rules named like the server's own alerts watch the same things
    assert {"MlserveFeatureDrift", "MlservePredictionDrift", "MlserveDatasetDrift",
            "MlserveDataQuality"} <= alerts
    promtool = shutil.which("promtool")
    if promtool is not None:  # the full parser where it is installed
        done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_dashboard_is_valid(server: ServerProcess) -> None:
    import re

    dash = json.loads((DEPLOY / "grafana" / "mlserve.json").read_text())
    assert {"title", "uid", "panels", "templating", "schemaVersion", "time"} <= set(dash)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "model", "version"} <= variables
    exported = _exported(server.url)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    covered = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "table", "stat", "gauge") and panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            used = set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"
            _check_promql(expr.replace("$__rate_interval", "5m"), exported, panel["title"])
            covered |= set(re.findall(_METRIC, expr))
    # every drift statistic the server exports per feature has a panel
    for name in ("mlserve_feature_drift_psi", "mlserve_feature_drift_js",
                 "mlserve_feature_drift_ks_pvalue", "mlserve_feature_drift_wasserstein",
                 "mlserve_feature_missing_rate", "mlserve_prediction_drift_psi",
                 "mlserve_online_accuracy", "mlserve_alerts_firing"):
        assert name in covered, name
