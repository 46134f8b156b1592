"""The HTTP server end to end: a real `mlserve serve` process on 127.0.0.1 serving a freshly
trained and registered bundle, driven with httpx (v2 JSON, per-feature tensors with BYTES
categoricals, msgpack, the binary tensor extension built by tritonclient), its error mapping,
the repository API, a hot swap under traffic and a SIGTERM under traffic."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import orjson
import pandas as pd
import pytest
from mlserve import BatcherConfig, Engine
from mlserve.registry import Registry
from mlserve.trainer import encode_rows, train
from mlserve.trainer.datasets import card_transactions
from server_fixtures import ServerProcess

TOKEN = "s3cret-token"
MAX_BODY = 200_000
INFER = "/v2/models/fraud/infer"
BIG = BatcherConfig(max_batch_size=256)


class Trained:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry_root = root / "registry"
        self.registry = Registry(self.registry_root)
        result = train(
            card_transactions(3000, seed=5),
            "is_fraud",
            name="fraud",
            timestamp="event_ts",
            config={"exclude": ["user_id", "merchant_id"], "epochs": 2, "hidden": [16]},
            registry=self.registry,
            out_dir=root / "bundle",
            progress=False,
        )
        self.bundle_path = result.bundle_path
        self.registry.set_alias("fraud", "champion", 1)
        assert result.test_frame is not None
        self.frame: pd.DataFrame = result.test_frame.drop(columns=["is_fraud"]).head(200)
        self.inputs: list[dict[str, Any]] = result.model_version.manifest["signature"]["inputs"]
        self.names = [s["name"] for s in self.inputs]
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        with Engine.from_registry("fraud/1", registry=self.registry, config=BIG) as engine:
            self.x = encode_rows(self.frame, self.inputs)
            self.want = engine.predict(self.x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def server(trained: Trained) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        trained.registry_root,
        ["fraud@champion"],
        trained.root / "server.log",
        "--admin-token-file",
        str(trained.token_file),
        "--max-body-bytes",
        str(MAX_BODY),
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def matrix_request(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "rows",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ]
    }


def complete_rows(trained: Trained) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    keep = trained.frame.notna().all(axis=1).to_numpy()
    return trained.frame[keep], trained.x[keep], trained.want[keep]


def output(body: dict[str, Any], name: str = "probability") -> np.ndarray:
    (out,) = [o for o in body["outputs"] if o["name"] == name]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def assert_good(client: httpx.Client, trained: Trained) -> None:
    _, x, want = complete_rows(trained)
    r = client.post(INFER, json=matrix_request(x[:3]))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(output(r.json()), want[:3].reshape(3, 1), atol=1e-6)


# ---- endpoints ---------------------------------------------------------------------------------


def test_health_server_and_model_metadata(client: httpx.Client, trained: Trained) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "mlserve" and meta["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])

    model = client.get("/v2/models/fraud").json()
    assert model["name"] == "fraud" and model["platform"] == "mlserve"
    assert model["versions"] == ["1"]
    assert [i["name"] for i in model["inputs"]] == trained.names
    types = {i["name"]: i["datatype"] for i in model["inputs"]}
    assert types["amount"] == "FP32" and types["channel"] == "BYTES"
    assert all(i["shape"][0] == -1 for i in model["inputs"])
    assert model["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]
    assert client.get("/v2/models/fraud/versions/1").json()["name"] == "fraud"
    assert client.get("/v2/models/fraud/ready").status_code == 200
    assert client.get("/v2/models/fraud/versions/1/ready").status_code == 200
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/fraud/versions/9/ready").status_code == 404


def test_request_id_is_echoed_or_generated(client: httpx.Client, trained: Trained) -> None:
    _, x, _ = complete_rows(trained)
    r = client.post(INFER, json=matrix_request(x[:1]), headers={"X-Request-Id": "abc-1"})
    assert r.headers["x-request-id"] == "abc-1"
    assert (
        client.get("/v2/health/live", headers={"X-Request-Id": "q"}).headers["x-request-id"] == "q"
    )
    assert len(client.post(INFER, json=matrix_request(x[:1])).headers["x-request-id"]) >= 8
    assert client.get("/v2/models/zzz/ready").headers["x-request-id"]


# ---- inference ---------------------------------------------------------------------------------


def test_json_matrix_infer_equals_engine_predict(client: httpx.Client, trained: Trained) -> None:
    _, x, want = complete_rows(trained)
    r = client.post(INFER, json={**matrix_request(x), "id": "r1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "fraud" and body["model_version"] == "1" and body["id"] == "r1"
    np.testing.assert_allclose(output(body), want.reshape(-1, 1), rtol=0, atol=1e-6)
    r = client.post("/v2/models/fraud/versions/1/infer", json=matrix_request(x[:5]))
    np.testing.assert_allclose(output(r.json()), want[:5].reshape(-1, 1), atol=1e-6)


def test_metrics_count_requests_and_export_engine_stats(
    client: httpx.Client, trained: Trained
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _, x, _ = complete_rows(trained)
    assert client.post(INFER, json=matrix_request(x[:3])).status_code == 200
    assert client.post(INFER, content=b"{not json").status_code == 400
    assert client.post("/v2/models/nope-123/infer", json=matrix_request(x[:1])).status_code == 404
    deadline = time.monotonic() + 20
    while True:
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                got[(sample.name, frozenset(sample.labels.items()))] = sample.value
        engine = frozenset({("model", "fraud"), ("version", "1")})
        # A batch's counters follow its results by a moment (the core counts after publishing).
        if (got[("mlserve_engine_queue_seconds_count", engine)]
                == got[("mlserve_engine_requests_total", engine)] or time.monotonic() > deadline):
            break
        time.sleep(0.1)
    ok = frozenset({("model", "fraud"), ("version", "1"), ("outcome", "ok")})
    bad = frozenset({("model", "fraud"), ("version", "?"), ("outcome", "InvalidInput")})
    unknown = frozenset({("model", "_unknown"), ("version", "?"), ("outcome", "ModelNotFound")})
    assert got[("mlserve_requests_total", ok)] >= 1
    assert got[("mlserve_requests_total", bad)] >= 1
    assert got[("mlserve_requests_total", unknown)] >= 1  # no label per made-up model name
    engine = frozenset({("model", "fraud"), ("version", "1")})
    assert got[("mlserve_engine_rows_total", engine)] >= 3
    assert got[("mlserve_engine_batch_size_count", engine)] >= 1
    assert got[("mlserve_request_latency_seconds_count", engine)] >= 1
    requests = got[("mlserve_engine_requests_total", engine)]
    for name in ("queue", "request"):
        assert got[(f"mlserve_engine_{name}_seconds_count", engine)] == requests
        assert got[(f"mlserve_engine_{name}_seconds_bucket", engine | {("le", "+Inf")})] == requests
    batches = got[("mlserve_engine_batches_total", engine)]
    assert got[("mlserve_engine_compute_seconds_count", engine)] == batches
    assert got[("process_resident_memory_bytes", frozenset())] > 0  # no pid label: one process


def test_per_feature_tensors_with_bytes_categoricals(
    client: httpx.Client, trained: Trained
) -> None:
    frame, _, _ = complete_rows(trained)
    frame = frame.head(40).copy()
    frame.iloc[0, frame.columns.get_loc("country")] = "ATLANTIS"  # unseen -> OOV slot
    inputs = []
    for spec in trained.inputs:
        col = frame[spec["name"]]
        if spec["kind"] == "categorical":
            inputs.append(
                {
                    "name": spec["name"],
                    "datatype": "BYTES",
                    "shape": [len(col)],
                    "data": [str(v) for v in col],
                }
            )
        else:
            inputs.append(
                {
                    "name": spec["name"],
                    "datatype": "FP64",
                    "shape": [len(col), 1],
                    "data": col.astype(float).tolist(),
                }
            )
    r = client.post(INFER, json={"inputs": inputs[::-1]})  # any order
    assert r.status_code == 200, r.text
    with Engine.from_registry("fraud/1", registry=trained.registry, config=BIG) as engine:
        want = engine.predict(encode_rows(frame, trained.inputs))
    np.testing.assert_allclose(output(r.json()), want.reshape(-1, 1), atol=1e-6)


def test_msgpack_infer_with_missing_values(client: httpx.Client, trained: Trained) -> None:
    x, want = trained.x, trained.want
    assert np.isnan(x).any()  # NaN travels as raw float32 bytes
    req = {
        "id": "m1",
        "inputs": [
            {
                "name": "rows",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.astype("<f4").tobytes(),
            }
        ],
    }
    r = client.post(
        INFER, content=msgpack.packb(req), headers={"Content-Type": "application/msgpack"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/msgpack")
    body = msgpack.unpackb(r.content)
    assert body["model_version"] == "1" and body["id"] == "m1"
    (out,) = body["outputs"]
    got = np.frombuffer(out["data"], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, want.reshape(-1, 1), atol=1e-6)

    # per-feature, categoricals as bytes: an empty string is a missing value
    frame = trained.frame
    inputs = []
    for spec in trained.inputs:
        col = frame[spec["name"]]
        if spec["kind"] == "categorical":
            data: Any = [b"" if pd.isna(v) else str(v).encode() for v in col]
            inputs.append(
                {"name": spec["name"], "datatype": "BYTES", "shape": [len(col)], "data": data}
            )
        else:
            inputs.append(
                {
                    "name": spec["name"],
                    "datatype": "FP32",
                    "shape": [len(col)],
                    "data": col.to_numpy(np.float32).tobytes(),
                }
            )
    r = client.post(
        INFER,
        content=msgpack.packb({"inputs": inputs}),
        headers={"Content-Type": "application/msgpack"},
    )
    assert r.status_code == 200, r.text
    (out,) = msgpack.unpackb(r.content)["outputs"]
    got = np.frombuffer(out["data"], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, want.reshape(-1, 1), atol=1e-6)


def test_binary_tensor_extension_with_tritonclient(client: httpx.Client, trained: Trained) -> None:
    http = pytest.importorskip("tritonclient.http")
    _, x, want = complete_rows(trained)
    inp = http.InferInput("rows", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [http.InferRequestedOutput("probability", binary_data=True)]
    body, header_length = http.InferenceServerClient.generate_request_body([inp], outputs)
    r = client.post(
        INFER,
        content=body,
        headers={
            "Inference-Header-Content-Length": str(header_length),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    assert length is not None
    result = http.InferenceServerClient.parse_response_body(r.content, header_length=int(length))
    np.testing.assert_allclose(result.as_numpy("probability"), want.reshape(-1, 1), atol=1e-6)


# ---- errors ------------------------------------------------------------------------------------


def test_bad_requests_map_to_clear_errors(client: httpx.Client, trained: Trained) -> None:
    _, x, _ = complete_rows(trained)
    f_in = x.shape[1]
    one = {
        s["name"]: {"name": s["name"], "datatype": "FP32", "shape": [1], "data": [1.0]}
        for s in trained.inputs
    }
    one["channel"] = {"name": "channel", "datatype": "BYTES", "shape": [1], "data": ["web"]}
    one["country"] = {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["US"]}
    one["merchant_category"] = {
        "name": "merchant_category",
        "datatype": "BYTES",
        "shape": [1],
        "data": ["fuel"],
    }
    good = client.post(INFER, json={"inputs": list(one.values())})
    assert good.status_code == 200, good.text

    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("malformed JSON", {"content": b"{not json"}, 400, ""),
        ("not an object", {"json": [1, 2]}, 400, ""),
        (
            "unknown input",
            {
                "json": {
                    "inputs": [
                        *one.values(),
                        {"name": "bogus", "datatype": "FP32", "shape": [1], "data": [1.0]},
                    ]
                }
            },
            400,
            "bogus",
        ),
        (
            "missing input",
            {"json": {"inputs": [v for k, v in one.items() if k != "amount"]}},
            400,
            "amount",
        ),
        (
            "BYTES for a number",
            {
                "json": {
                    "inputs": [
                        *(v for k, v in one.items() if k != "hour"),
                        {"name": "hour", "datatype": "BYTES", "shape": [1], "data": ["noon"]},
                    ]
                }
            },
            400,
            "hour",
        ),
        (
            "float for a categorical",
            {
                "json": {
                    "inputs": [
                        *(v for k, v in one.items() if k != "channel"),
                        {"name": "channel", "datatype": "FP32", "shape": [1], "data": [0.5]},
                    ]
                }
            },
            400,
            "channel",
        ),
        (
            "wrong width",
            {
                "json": {
                    "inputs": [
                        {
                            "name": "rows",
                            "datatype": "FP32",
                            "shape": [1, f_in + 1],
                            "data": [0.0] * (f_in + 1),
                        }
                    ]
                }
            },
            400,
            "",
        ),
        (
            "wrong shape",
            {
                "json": {
                    "inputs": [
                        *(v for k, v in one.items() if k != "amount"),
                        {"name": "amount", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
                    ]
                }
            },
            400,
            "amount",
        ),
        (
            "shape/data mismatch",
            {
                "json": {
                    "inputs": [
                        {"name": "rows", "datatype": "FP32", "shape": [2, f_in], "data": [0.0]}
                    ]
                }
            },
            400,
            "",
        ),
        (
            "bad priority",
            {"json": {**matrix_request(x[:1]), "parameters": {"priority": "hi"}}},
            400,
            "priority",
        ),
        (
            "unknown output",
            {"json": {**matrix_request(x[:1]), "outputs": [{"name": "nope"}]}},
            400,
            "nope",
        ),
        ("too many rows", {"json": matrix_request(np.zeros((300, f_in), np.float32))}, 400, ""),
        (
            "bad msgpack",
            {"content": b"\xc1\xc1", "headers": {"Content-Type": "application/msgpack"}},
            400,
            "",
        ),
        ("too large", {"content": b"x" * (MAX_BODY + 1)}, 413, ""),
        (
            "datatype not a string",
            {"json": {"inputs": [{**matrix_request(x[:1])["inputs"][0], "datatype": []}]}},
            400,
            "unknown datatype",
        ),
        (
            "ragged data of the right length (JSON fast lane)",
            {"json": {"inputs": [{**matrix_request(x[:1])["inputs"][0],
                                  "data": [[1.0, 2.0], [3.0], *([1.0] * (f_in - 2))]}]}},
            400,
            "regularly nested",
        ),
        (
            "FP64 beyond float32 (matrix)",
            {"json": {"inputs": [{**matrix_request(x[:1])["inputs"][0], "datatype": "FP64",
                                  "data": [1e300, *x[0, 1:].tolist()]}]}},
            400,
            "out of FP32 range",
        ),
        (
            "FP64 beyond float32 (one column)",
            {"json": {"inputs": [*(v for k, v in one.items() if k != "amount"),
                                 {"name": "amount", "datatype": "FP64", "shape": [1],
                                  "data": [-1e300]}]}},
            400,
            "out of FP32 range",
        ),
        *[
            (
                f"{key} {value!r} (JSON)",
                {"content": b'{"inputs":' + orjson.dumps(matrix_request(x[:1])["inputs"])
                 + b',"parameters":{"' + key.encode() + b'":' + value + b"}}"},
                400,
                key,
            )
            for key, value in (("priority", b"2147483648"), ("priority", b"1e300"),
                               ("timeout", b"9223372036854775808"), ("timeout", b"-5"))
        ],
        *[
            (
                f"{key} {value!r} (msgpack)",
                {"content": msgpack.packb({
                    "inputs": [{"name": "rows", "datatype": "FP32", "shape": [1, f_in],
                                "data": x[:1].astype("<f4").tobytes()}],
                    "parameters": {key: value}}),
                 "headers": {"Content-Type": "application/msgpack"}},
                400,
                key,
            )
            for key, value in (("priority", float("inf")), ("priority", float("nan")),
                               ("priority", 2**40), ("priority", 2**64 - 1),
                               ("timeout", 2**63), ("timeout", float("inf")), ("timeout", -5))
        ],
        (
            "header length not decimal",
            {"content": orjson.dumps(matrix_request(x[:1])),
             "headers": {"Inference-Header-Content-Length": "5_0"}},
            400,
            "decimal integer",
        ),
        (
            "JSON sent as msgpack",
            {"json": matrix_request(x[:1]), "headers": {"Content-Type": "application/msgpack"}},
            400,
            "looks like JSON",
        ),
    ]
    for label, kwargs, status, needle in cases:
        r = client.post(INFER, **kwargs)
        assert r.status_code == status, (label, r.status_code, r.text)
        message = r.json()["error"]
        assert isinstance(message, str) and message, label
        assert needle in message, (label, message)
        assert_good(client, trained)

    r = client.post("/v2/models/nope/infer", json=matrix_request(x[:1]))
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = client.post("/v2/models/nope/infer", content=b"\xc1",  # the model is looked up first
                    headers={"Content-Type": "application/msgpack"})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert (
        client.post("/v2/models/fraud/versions/7/infer", json=matrix_request(x[:1])).status_code
        == 404
    )
    assert_good(client, trained)


def test_admin_routes_need_the_token(client: httpx.Client, trained: Trained) -> None:
    for path in (
        "/v2/repository/index",
        "/v2/repository/models/fraud/unload",
        "/v2/repository/models/fraud/load",
    ):
        assert client.post(path).status_code == 401
        r = client.post(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]
        assert_good(client, trained)


# ---- model management --------------------------------------------------------------------------


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_repository_index_unload_and_load(client: httpx.Client, trained: Trained) -> None:
    index = client.post("/v2/repository/index", headers=auth()).json()
    assert {"name": "fraud", "version": "1", "state": "READY"}.items() <= index[0].items()

    assert client.post("/v2/repository/models/fraud/unload", headers=auth()).status_code == 200
    assert client.post(INFER, json=matrix_request(trained.x[:1])).status_code == 404
    assert client.get("/v2/health/ready").status_code == 503
    assert client.post("/v2/repository/models/fraud/unload", headers=auth()).status_code == 404

    r = client.post(
        "/v2/repository/models/fraud/load",
        headers=auth(),
        json={"parameters": {"ref": "other@champion"}},
    )
    assert r.status_code == 400
    r = client.post(
        "/v2/repository/models/fraud/load",
        headers=auth(),
        json={"parameters": {"ref": "fraud@nosuchalias"}},
    )
    assert r.status_code == 404, r.text
    r = client.post(
        "/v2/repository/models/fraud/load",
        headers=auth(),
        json={"parameters": {"ref": "fraud@champion"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "1"
    assert client.get("/v2/health/ready").status_code == 200
    assert_good(client, trained)


def test_serves_a_bundle_directory_without_a_registry(trained: Trained, tmp_path: Path) -> None:
    """`--model /path/to/bundle` (KServe's /mnt/models layout): no registry involved, the model
    named by its manifest; a load by name reads the directory again."""
    bundle = tmp_path / "models"
    shutil.copytree(trained.bundle_path, bundle)
    proc = ServerProcess(tmp_path / "no-registry", [str(bundle)], tmp_path / "server.log",
                         "--admin-token-file", str(trained.token_file))
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, timeout=10.0) as c:
            meta = c.get("/v2/models/fraud").json()
            assert meta["name"] == "fraud" and meta["versions"] == ["1"]
            _, x, want = complete_rows(trained)
            r = c.post(INFER, json=matrix_request(x))
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(output(r.json()), want.reshape(-1, 1), rtol=0, atol=1e-6)
            # The directory replaced by another model (here: another fitted mean), then a load
            # by name: the new model answers (the old one is not kept because its name and
            # version are the same).
            manifest = json.loads((bundle / "mlserve.json").read_text())  # has -Infinity
            ops = manifest["preprocessing"]["features"][0]["ops"]
            next(op for op in ops if op["op"] == "standardize")["mean"] += 1.0
            (bundle / "mlserve.json").write_text(json.dumps(manifest))
            with Engine.from_bundle(bundle, config=BIG) as engine:
                changed = engine.predict(x)
            assert np.abs(changed - want).max() > 1e-3
            r = c.post("/v2/repository/models/fraud/load", headers=auth())
            assert r.status_code == 200, r.text
            assert r.json()["ref"] == str(bundle)
            r = c.post(INFER, json=matrix_request(x))
            np.testing.assert_allclose(output(r.json()), changed.reshape(-1, 1), rtol=0,
                                       atol=1e-6)
            r = c.post("/v2/repository/models/fraud/load", headers=auth(),
                       json={"parameters": {"ref": str(tmp_path / "nothing")}})
            assert r.status_code == 404 and "is not a model bundle" in r.text
    finally:
        assert proc.stop() == 0, proc.log()
    # One name, one source: a second bundle of the same model name is refused at start.
    twin = tmp_path / "twin:copy"  # a ':' in a bundle path is not a backend suffix
    shutil.copytree(trained.bundle_path, twin)
    clash = subprocess.run([sys.executable, "-m", "mlserve.cli", "serve", "--model", str(bundle),
                            "--model", str(twin)], capture_output=True, text=True, timeout=60)
    assert clash.returncode == 2 and "one name, one source" in clash.stderr, clash.stderr
    assert not (tmp_path / "no-registry").exists()  # nothing created a registry
    bad = subprocess.run([sys.executable, "-m", "mlserve.cli", "serve", "--model",
                          str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a model bundle" in bad.stderr


def test_a_load_during_an_artifact_commit_waits_for_it(trained: Trained, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlserve build-engine` adds an artifact: its mlserve.json is renamed into place just
    before its commit. A load in that window (the registered-manifest check) waits for the
    commit instead of calling the registry corrupted."""
    registry = Registry(tmp_path / "registry")
    registry.register(trained.bundle_path)
    (tmp_path / "extra.bin").write_bytes(b"an engine")
    monkeypatch.setenv("MLSERVE_REGISTRY_TEST_STEP_DELAY_S", "0.3")  # between rename and commit
    adder = threading.Thread(target=registry.add_artifact,
                             args=("fraud/1", tmp_path / "extra.bin"), kwargs={"file": "x.bin"})
    adder.start()
    deadline = time.monotonic() + 5
    manifest = tmp_path / "registry" / "models" / "fraud" / "1" / "mlserve.json"
    while b"x.bin" not in manifest.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert adder.is_alive()  # inside the window: the file is ahead of the database
    with Engine.from_registry("fraud/1", registry=registry, config=BIG) as engine:
        np.testing.assert_allclose(engine.predict(trained.x), trained.want, rtol=0, atol=1e-6)
        assert "x.bin" in engine.bundle.artifacts
    adder.join()


def test_hot_swap_under_traffic_has_zero_failures(
    client: httpx.Client, server: ServerProcess, trained: Trained
) -> None:
    v2 = trained.registry.register(trained.bundle_path)
    assert v2.version == 2
    trained.registry.set_alias("fraud", "champion", 2)
    _, x, _ = complete_rows(trained)
    body = matrix_request(x[:4])
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def stream(out: list[tuple[int, str]]) -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as c:
            while not stop.is_set():
                r = c.post(INFER, json=body)
                out.append((r.status_code, r.json().get("model_version", r.text)))

    threads = [threading.Thread(target=stream, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    time.sleep(0.3)
    r = client.post("/v2/repository/models/fraud/load", headers=auth())
    assert r.status_code == 200 and r.json()["version"] == "2", r.text
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    for s in seen:
        assert s and all(status == 200 for status, _ in s), s
        versions = [v for _, v in s]
        assert versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert set(versions[switch:]) == {"2"}  # never back to the old version
    meta = client.get("/v2/models/fraud").json()
    assert meta["versions"] == ["2"]
    assert client.post("/v2/models/fraud/versions/1/infer", json=body).status_code == 404
    assert client.get("/v2/health/ready").status_code == 200


# ---- shutdown ----------------------------------------------------------------------------------


def test_sigterm_under_traffic_drains_and_exits_zero(trained: Trained) -> None:
    proc = ServerProcess(trained.registry_root, ["fraud@champion"], trained.root / "term.log")
    proc.wait_ready()
    _, x, _ = complete_rows(trained)
    body = matrix_request(x[:8])
    statuses: list[int] = []
    lock = threading.Lock()

    def stream() -> None:
        with httpx.Client(base_url=proc.url, timeout=10.0) as c:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    r = c.post(INFER, json=body)
                except httpx.TransportError:
                    return  # not accepted: the server stopped listening
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    started = time.monotonic()
    proc.terminate()
    code = proc.stop(timeout_s=10)
    elapsed = time.monotonic() - started
    for t in threads:
        t.join()
    assert code == 0, proc.log()
    assert elapsed < 8, elapsed
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


def test_cli_flags_round_trip_through_worker_environment(tmp_path: Path) -> None:
    import argparse

    from mlserve.server.cli import add_parser, settings_from_args
    from mlserve.server.settings import ServerSettings

    token = tmp_path / "tok"
    token.write_text("t0k\n")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "serve",
            "--registry",
            str(tmp_path),
            "--model",
            "fraud@champion",
            "--model",
            "other/2",
            "--port",
            "9001",
            "--workers",
            "3",
            "--admin-token-file",
            str(token),
            "--max-body-bytes",
            "1234",
            "--feature-store",
            "/srv/features",
        ]
    )
    settings = settings_from_args(args)
    assert settings.models == ("fraud@champion", "other/2") and settings.admin_token == "t0k"
    assert settings.feature_store == "/srv/features"
    env = settings.to_env()
    assert "t0k" not in "".join(env.values())  # only the token file's path travels
    assert ServerSettings.from_env(env) == settings


def test_access_log_lines_and_in_flight_and_load_metrics(trained: Trained, tmp_path: Path) -> None:
    """One JSON access-log line per request; load events and in-flight in /metrics."""
    import json as _json

    srv = ServerProcess(
        trained.registry_root, ["fraud"], tmp_path / "server.log", "--access-log-sample", "1"
    )
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            _, x, _ = complete_rows(trained)
            r = http.post(INFER, json=matrix_request(x[:2]), headers={"X-Request-Id": "abc-1"})
            assert r.status_code == 200
            body = http.get("/metrics").text
    finally:
        assert srv.stop() == 0
    import re

    assert re.search(
        r'mlserve_model_loads_total\{event="load",model="fraud",version="\d+"\} 1\.0', body
    )
    assert "mlserve_requests_in_flight" in body
    lines = [_json.loads(ln) for ln in srv.log().splitlines() if ln.startswith("{")]
    mine = [ln for ln in lines if ln.get("request_id") == "abc-1"]
    assert len(mine) == 1
    assert mine[0]["model"] == "fraud" and mine[0]["status"] == 200 and mine[0]["latency_ms"] > 0


def metric_families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def total(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    """Sum of the samples called sample_name whose labels include `labels`."""
    family = families[sample_name.removesuffix("_total").removesuffix("_bucket")
                      .removesuffix("_count").removesuffix("_sum")]
    return sum(s.value for s in family.samples if s.name == sample_name
               and labels.items() <= s.labels.items())


def names_and_types(families: dict[str, Any]) -> set[tuple[str, str]]:
    # Without `*_created` series: prometheus_client writes none in multiprocess mode.
    return {(n, f.type) for n, f in families.items()
            if n.startswith(("mlserve_", "process_")) and not n.endswith("_created")}


def test_metrics_aggregate_over_worker_processes(
    trained: Trained, server: ServerProcess, tmp_path: Path
) -> None:
    """--workers 2: every scrape, whichever worker answers, sums request counters, engine
    counters and histograms over both processes, has each worker's process metrics, and uses
    the same metric names and types as one process."""
    workers, sent = 2, 20
    srv = ServerProcess(trained.registry_root, ["fraud"], tmp_path / "server.log",
                        "--workers", str(workers))
    try:
        srv.wait_ready()
        _, x, _ = complete_rows(trained)
        lv = {"model": "fraud"}  # whichever version the module's tests left latest
        with httpx.Client(base_url=srv.url, timeout=30) as http:

            def settled(requests: int) -> None:
                """Waits until every worker's snapshot (written each second) shows `requests`
                engine requests run; batch counters follow a result by a moment (the core
                counts after publishing)."""
                deadline = time.monotonic() + 30
                while True:
                    fams = metric_families(http.get("/metrics").text)
                    if all(total(fams, name, **lv) == requests for name in (
                            "mlserve_engine_requests_total", "mlserve_engine_queue_seconds_count")):
                        return
                    assert time.monotonic() < deadline, f"engine requests != {requests}"
                    time.sleep(0.2)

            # Ready answers once one worker is ready; each one warms its engine up with one
            # request before it serves, so this waits for both.
            settled(workers)
            for _ in range(sent):  # new connections: the kernel spreads them over the workers
                with httpx.Client(base_url=srv.url, timeout=30) as one:
                    assert one.post(INFER, json=matrix_request(x[:1])).status_code == 200
            settled(sent + workers)
            pids = set()
            for _ in range(4):
                with httpx.Client(base_url=srv.url, timeout=30) as one:  # either worker answers
                    fams = metric_families(one.get("/metrics").text)
                assert total(fams, "mlserve_requests_total", outcome="ok", **lv) == sent
                # Each worker's engine also ran one warm-up request before going ready.
                engine_requests = total(fams, "mlserve_engine_requests_total", **lv)
                assert engine_requests == sent + workers
                batches = total(fams, "mlserve_engine_batches_total", **lv)
                assert total(fams, "mlserve_engine_batch_size_count", **lv) == batches >= workers
                assert total(fams, "mlserve_engine_batch_size_sum", **lv) == engine_requests
                for name in ("queue", "request"):
                    assert total(fams, f"mlserve_engine_{name}_seconds_count", **lv) == (
                        engine_requests)
                    assert total(fams, f"mlserve_engine_{name}_seconds_bucket", le="+Inf",
                                 **lv) == engine_requests
                for name in ("normalize", "compute"):
                    assert total(fams, f"mlserve_engine_{name}_seconds_count", **lv) == batches
                assert total(fams, "mlserve_engine_compute_seconds_sum", **lv) > 0
                assert total(fams, "mlserve_engine_queue_depth", **lv) == 0
                cpu = fams["process_cpu_seconds"]
                assert cpu.type == "counter"
                assert len({s.labels["pid"] for s in cpu.samples}) == workers
                assert all(s.value > 0 for s in fams["process_resident_memory_bytes"].samples)
                pids |= {s.labels["pid"] for s in cpu.samples}
            assert len(pids) == workers  # the same two workers every time
        one_process = metric_families(httpx.get(server.url + "/metrics", timeout=30).text)
        assert names_and_types(fams) == names_and_types(one_process)
    finally:
        assert srv.stop() == 0


def test_msgpack_fast_lane_equals_the_general_path(trained: Trained) -> None:
    """ServedVersion.fast_rows + msgpack_response (the server's fast lane) give the rows and
    the response bytes that rows() + response() + encode_msgpack_response give."""
    from mlserve.server import codecs
    from mlserve.server.models import ServedVersion

    with Engine.from_registry("fraud/1", registry=trained.registry, config=BIG) as engine:
        served = ServedVersion(engine, "fraud", "1", "fraud/1")
        assert served.fast_matrix
        _, rows, want = complete_rows(trained)  # JSON carries no NaN
        for n, request_id in [(1, None), (3, "r-1"), (17, "ü" * 40), (len(rows), "x" * 300)]:
            x = np.ascontiguousarray(rows[:n], dtype=np.float32)
            body = msgpack.packb({
                **({"id": request_id} if request_id is not None else {}),
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [n, x.shape[1]],
                            "data": x.tobytes()}],
            })
            obj = codecs.unpack_msgpack(body)
            fast = served.fast_rows(obj)
            assert fast is not None
            request = codecs.msgpack_request_from_object(obj)
            np.testing.assert_array_equal(fast[0], served.rows(request.inputs))
            y = engine.predict(fast[0])
            np.testing.assert_allclose(y, want[:n], rtol=1e-6)
            general = codecs.encode_msgpack_response(served.response(y, request))
            assert served.msgpack_response(y, fast[1]) == general
            # The core's lane: the same rows and bytes, served end to end by the engine; it
            # declines the non-ASCII id (the Python lane above serves that one).
            lane = served.msgpack_lane
            got = lane.parse(body)
            ran = asyncio.run(engine.apredict_msgpack(body, lane, tag=b"t"))
            if request_id is not None and not request_id.isascii():
                assert got is None and ran is None
            else:
                assert got is not None
                np.testing.assert_array_equal(got[0], fast[0])
                assert got[1] == fast[1]
                assert lane.encode(y, fast[1]) == general
                assert ran == general
            as_json = orjson.dumps({**({"id": request_id} if request_id is not None else {}),
                                    "inputs": [{"name": "input", "datatype": "FP32",
                                                "shape": [n, x.shape[1]],
                                                "data": x.ravel().tolist()}]})
            fast_json = served.fast_rows(as_json, json_body=True)
            assert fast_json is not None
            np.testing.assert_array_equal(fast_json[0], fast[0])
            json_request = codecs.decode_json_request(as_json, None)
            general_json, headers = codecs.encode_json_response(served.response(y, json_request))
            assert headers == {"Content-Type": "application/json"}
            assert served.json_response(y, fast_json[1]) == general_json
        inf = np.array([[np.inf], [0.5]], dtype=np.float32)  # not JSON: the general path's binary
        assert served.json_response(inf, None) is None
        big = np.random.default_rng(1).random((20_000, 1), dtype=np.float32)  # bin32 header
        request = codecs.InferRequest(id="big", inputs=[])
        general = codecs.encode_msgpack_response(served.response(big, request))
        assert served.msgpack_response(big, "big") == general
        assert served.msgpack_lane.encode(big, "big") == general
