"""The prediction log end to end: a real `mlserve serve --workers 2 --prediction-log DIR`
(monitoring is off with several workers: each process sees part of the traffic), requests over
JSON and msgpack on separate connections, feedback sent on other connections (so it mostly
reaches the other process than the one that predicted), a graceful stop; then the log holds
exactly the rows sent and the outputs answered, once each, and `mlserve drift report
--prediction-log` computes the model's metrics on the labelled rows as scikit-learn does from
the answers and the labels (the last label of a request winning)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlserve.client import Client
from mlserve.predlog import read_labels, read_predictions
from mlserve.registry import Registry
from mlserve.trainer import encode_rows, train
from mlserve.trainer.datasets import card_transactions
from server_fixtures import ServerProcess


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("prediction_log")
    registry = Registry(root / "registry")
    result = train(card_transactions(3000, seed=61), "is_fraud", name="fraud",
                   timestamp="event_ts",
                   config={"exclude": ["user_id", "merchant_id"], "epochs": 1,
                           "hidden": [8]},
                   registry=registry, out_dir=root / "bundle", progress=False)
    inputs = result.model_version.manifest["signature"]["inputs"]
    frame = card_transactions(900, seed=62).sample(frac=1.0, random_state=1)
    return {"root": root, "registry": root / "registry", "inputs": inputs,
            "x": encode_rows(frame, inputs), "y": frame["is_fraud"].to_numpy()}


def _metric_sum(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in a /metrics body (all its label sets)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name)


def _send(url: str, x: np.ndarray, connections: int) -> tuple[list[tuple[str, int, int]],
                                                               dict[str, np.ndarray]]:
    """Requests of 1..5 rows, each connection its own client (SO_REUSEPORT spreads them over
    the workers), alternating JSON and msgpack. Returns (id, first row, rows) and outputs."""
    rng = np.random.default_rng(5)
    sent: list[tuple[str, int, int]] = []
    answers: dict[str, np.ndarray] = {}
    start = 0
    clients = [Client(url, codec="json" if i % 2 else "msgpack") for i in range(connections)]
    try:
        i = 0
        while start < len(x):
            n = min(int(rng.integers(1, 6)), len(x) - start)
            rid = f"req-{i}"
            result = clients[i % connections].infer("fraud", x[start:start + n], request_id=rid)
            assert result.request_id == rid
            answers[rid] = result.output
            sent.append((rid, start, n))
            start += n
            i += 1
    finally:
        for c in clients:
            c.close()
    return sent, answers


def test_every_worker_logs_and_feedback_anywhere_joins(trained: dict[str, Any],
                                                      tmp_path: Path) -> None:
    log = tmp_path / "log"
    proc = ServerProcess(trained["registry"], ["fraud"], tmp_path / "server.log",
                         "--workers", "2", "--prediction-log", str(log),
                         "--prediction-log-flush", "0.2")
    x, y = trained["x"], trained["y"]
    try:
        proc.wait_ready()
        # Ready answers once one worker is ready; each warms its engine up with one (untagged)
        # request before it serves, which the summed /metrics show: wait for both.
        deadline = time.monotonic() + 60
        while _metric_sum(httpx.get(proc.url + "/metrics").text,
                          "mlserve_engine_requests_total") < 2:
            assert time.monotonic() < deadline, "the second worker never loaded its model"
            time.sleep(0.2)
        sent, answers = _send(proc.url, x, connections=6)
        labels = {rid: [int(v) for v in y[s:s + n]] for rid, s, n in sent}
        ids = list(labels)
        first, second = ids[: len(ids) // 2], ids[len(ids) // 2:]
        logged = 0
        for chunk in (first, second):  # each on a new connection
            with Client(proc.url) as client:
                answer = client.feedback("fraud", chunk, [labels[i] for i in chunk])
            assert "matched" not in answer  # monitoring is off with two workers
            logged += answer["logged"]
        assert logged == len(x)
        # a corrected label later wins; a label that fits no class is refused, nothing logged
        flipped = [1 - v for v in labels[ids[0]]]
        with Client(proc.url) as client:
            assert client.feedback("fraud", [ids[0]], [flipped])["logged"] == len(flipped)
        labels[ids[0]] = flipped
        bad = httpx.post(proc.url + "/v2/models/fraud/feedback",
                         json={"ids": ["req-1", "bad-x"], "labels": [[0], [7]]})
        assert bad.status_code == 400 and "not a class" in bad.text
        empty = httpx.post(proc.url + "/v2/models/fraud/feedback",
                           json={"ids": [], "labels": []})
        assert empty.status_code == 200 and empty.json() == {"logged": 0}
        odd = httpx.post(proc.url + "/v2/models/fraud/feedback",
                         json={"ids": [None, True], "labels": [1, 0]})
        assert odd.status_code == 400 and "ids must be strings" in odd.text
        unknown = httpx.post(proc.url + "/v2/models/nope/feedback",
                             json={"ids": ["a"], "labels": [1]})
        assert unknown.status_code == 404
        # /metrics sums the workers' writers (their snapshots, by pid) once both flushed
        deadline = time.monotonic() + 20
        while True:
            rows = _metric_sum(httpx.get(proc.url + "/metrics").text,
                               "mlserve_prediction_log_rows_total")
            if rows == len(x) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows == len(x)
    finally:
        assert proc.stop() == 0, proc.log()

    # The log: every row once, exactly as sent and answered.
    got = read_predictions(log, "fraud").sort_values(["request_id", "row"])
    names = [s["name"] for s in trained["inputs"]]
    outputs = [c for c in got.columns if c not in {*names, "version", "request_id", "row", "ts"}]
    assert len(outputs) == 1 and set(got["version"]) == {"1"}
    want_rows = []
    for rid, s, n in sent:
        for r in range(n):
            want_rows.append((rid, r, *x[s + r], answers[rid][r, 0]))
    want = pd.DataFrame(want_rows, columns=["request_id", "row", *names, outputs[0]])
    want = want.astype({c: np.float32 for c in [*names, outputs[0]]} | {"row": np.int32})
    want = want.sort_values(["request_id", "row"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[list(want.columns)].reset_index(drop=True), want)
    parts = list((log / "predictions" / "fraud" / "1").rglob("part-*.parquet"))
    writers = {p.name.split("-")[3] for p in parts}  # the pid in part-<ns>-<host>-<pid>-...
    assert 1 <= len(writers) <= 2, writers
    assert "bad-x" not in set(read_labels(log, "fraud")["request_id"])

    # The report: metrics on the labelled rows, as scikit-learn computes them.
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "mlserve.cli", "drift", "report", "--model", "fraud",
         "--registry", str(trained["registry"]), "--prediction-log", str(log),
         "--since", "1h", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    body = json.loads((out / "report.json").read_text())
    assert body["drift"]["rows"] == len(x) and "labelled" in body["source"]
    p = np.concatenate([answers[rid][:, 0] for rid, _, _ in sent])
    truth = np.concatenate([labels[rid] for rid, _, _ in sent])
    from sklearn.metrics import log_loss, roc_auc_score

    metrics = body["current_metrics"]
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, p), abs=1e-9)
    assert metrics["log_loss"] == pytest.approx(log_loss(truth, p), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(float(np.mean((p >= 0.5) == truth)))


def test_one_worker_with_monitoring_answers_both(trained: dict[str, Any],
                                                tmp_path: Path) -> None:
    log = tmp_path / "log"
    proc = ServerProcess(trained["registry"], ["fraud"], tmp_path / "server.log",
                         "--prediction-log", str(log), "--prediction-log-flush", "60")
    try:
        proc.wait_ready()
        with Client(proc.url) as client:
            result = client.infer("fraud", trained["x"][:3], request_id="one")
            answer = client.feedback("fraud", ["one"], [[0, 1, 0]])
        assert answer["matched"] == 1 and answer["logged"] == 3
        metrics = httpx.get(proc.url + "/metrics").text
        assert _metric_sum(metrics, "mlserve_prediction_log_rows_total") == 0  # not flushed yet
        assert "# TYPE mlserve_prediction_log_dropped_rows_total counter" in metrics
    finally:
        assert proc.stop() == 0, proc.log()  # the last flush at shutdown, not the interval
    got = read_predictions(log, "fraud")
    np.testing.assert_array_equal(got[[c for c in got.columns if c not in {
        "version", "request_id", "row", "ts", *[s["name"] for s in trained["inputs"]]}]]
        .to_numpy()[:, 0], result.output[:, 0])
    assert list(read_labels(log, "fraud")["label"]) == ["0", "1", "0"]


def test_prediction_log_settings_are_checked(trained: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = subprocess.run(
        [sys.executable, "-m", "mlserve.server.cli", "--registry", str(trained["registry"]),
         "--model", "fraud", "--prediction-log", str(blocker / "log")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "prediction log" in done.stderr, done.stderr


def test_replicas_share_a_log_in_object_storage(trained: dict[str, Any], s3_uri: str,
                                                tmp_path: Path) -> None:
    """Two servers (two replicas) writing to one s3:// prefix; each label reaches the replica
    that did not serve its request; the log joins them all."""
    procs = [ServerProcess(trained["registry"], ["fraud"], tmp_path / f"r{i}.log",
                           "--no-monitoring", "--prediction-log", s3_uri,
                           "--prediction-log-flush", "0.3") for i in range(2)]
    x, y = trained["x"][:60], trained["y"][:60]
    try:
        for p in procs:
            p.wait_ready()
        answers = {}
        for i in range(30):
            with Client(procs[i % 2].url) as client:
                answers[f"s3-{i}"] = client.infer("fraud", x[2 * i:2 * i + 2],
                                                  request_id=f"s3-{i}").output
        for i in range(30):  # each label to the other replica
            with Client(procs[(i + 1) % 2].url) as client:
                assert client.feedback("fraud", [f"s3-{i}"],
                                       [[int(v) for v in y[2 * i:2 * i + 2]]])["logged"] == 2
    finally:
        for p in procs:
            assert p.stop() == 0, p.log()
    from mlserve.predlog import joined

    table = joined(read_predictions(s3_uri, "fraud"), read_labels(s3_uri, "fraud"))
    table = table.sort_values(["request_id", "row"])
    assert len(table) == 60 and table["label"].notna().all()
    for rid, got in table.groupby("request_id"):
        i = int(str(rid).split("-")[1])
        assert list(got["label"]) == [str(int(v)) for v in y[2 * i:2 * i + 2]]
        outputs = [c for c in got.columns if c not in {
            "version", "request_id", "row", "ts", "label",
            *[s["name"] for s in trained["inputs"]]}]
        np.testing.assert_array_equal(got[outputs[0]].to_numpy(), answers[str(rid)][:, 0])
