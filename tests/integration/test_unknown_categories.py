"""Unknown-category policies end to end: a model trained with per-feature policies (country:
"error", channel: "missing", merchant_category: the default "oov") and the same bundle rewritten
as format_version 1 without the field, served by a real `mlserve serve` on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pandas as pd
import pytest
from mlserve.bundle import MANIFEST
from mlserve.registry import Registry
from mlserve.trainer import encode_rows, train
from mlserve.trainer.datasets import card_transactions
from server_fixtures import ServerProcess


class Trained:
    def __init__(self, root: Path) -> None:
        self.registry = Registry(root / "registry")
        result = train(
            card_transactions(3000, seed=5),
            "is_fraud",
            name="policy",
            timestamp="event_ts",
            config={
                "exclude": ["user_id", "merchant_id"],
                "epochs": 2,
                "hidden": [16],
                "unknown_category_features": {"country": "error", "channel": "missing"},
            },
            registry=self.registry,
            out_dir=root / "bundle",
            progress=False,
        )
        self.manifest: dict[str, Any] = result.model_version.manifest
        self.inputs: list[dict[str, Any]] = self.manifest["signature"]["inputs"]
        self.names = [s["name"] for s in self.inputs]
        assert result.test_frame is not None
        frame = result.test_frame.drop(columns=["is_fraud"])
        keep = frame.notna().all(axis=1)
        for spec in self.inputs:  # rows every policy accepts as they are
            if spec["kind"] == "categorical":
                keep &= frame[spec["name"]].astype(str).isin(spec["vocabulary"])
        self.frame = frame[keep].head(20).reset_index(drop=True)
        assert len(self.frame) == 20
        # The same bundle as an older mlserve wrote it: format 1, no "unknown" anywhere.
        legacy = root / "legacy"
        shutil.copytree(result.bundle_path, legacy)
        manifest = json.loads((legacy / MANIFEST).read_text())
        manifest["format_version"] = 1
        for spec in manifest["signature"]["inputs"]:
            spec.pop("unknown", None)
        (legacy / MANIFEST).write_text(json.dumps(manifest))
        self.registry.register(legacy, name="legacy")
        self.root = root

    def column(self, name: str) -> int:
        return self.names.index(name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("unknown-categories"))


@pytest.fixture(scope="module")
def client(trained: Trained) -> Iterator[httpx.Client]:
    proc = ServerProcess(
        trained.root / "registry", ["policy", "legacy"], trained.root / "server.log"
    )
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, timeout=10.0) as c:
            yield c
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


def per_input(trained: Trained, frame: pd.DataFrame, *, wire: str = "json") -> list[dict[str, Any]]:
    """One tensor per input, categoricals as BYTES (missing -> "", a missing value); numbers
    as JSON lists or, for msgpack, raw float32 bytes."""
    out = []
    for spec in trained.inputs:
        col = frame[spec["name"]]
        if spec["kind"] == "categorical":
            data: Any = ["" if pd.isna(v) else str(v) for v in col]
            datatype = "BYTES"
        elif wire == "msgpack":
            data, datatype = col.to_numpy(np.float32).tobytes(), "FP32"
        else:
            data, datatype = col.astype(float).tolist(), "FP64"
        out.append({"name": spec["name"], "datatype": datatype, "shape": [len(col)],
                    "data": data})
    return out


def post_matrix(client: httpx.Client, model: str, x: np.ndarray) -> httpx.Response:
    """The [n, f_in] matrix form over msgpack (raw float32: NaN travels, unlike in JSON)."""
    body = {"inputs": [{"name": "rows", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.astype("<f4").tobytes()}]}
    return client.post(f"/v2/models/{model}/infer", content=msgpack.packb(body),
                       headers={"Content-Type": "application/msgpack"})


def infer_matrix(client: httpx.Client, model: str, x: np.ndarray) -> np.ndarray:
    r = post_matrix(client, model, x)
    assert r.status_code == 200, r.text
    (out,) = msgpack.unpackb(r.content)["outputs"]
    return np.frombuffer(out["data"], dtype="<f4").reshape(out["shape"])


def infer(client: httpx.Client, model: str, body: dict[str, Any]) -> np.ndarray:
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_the_signature_and_metadata_carry_each_policy(
    client: httpx.Client, trained: Trained
) -> None:
    policies = {s["name"]: s.get("unknown") for s in trained.inputs if s["kind"] == "categorical"}
    assert policies == {"merchant_category": "oov", "country": "error", "channel": "missing"}
    assert trained.manifest["format_version"] == 2
    meta = client.get("/v2/models/policy").json()
    assert {i["name"]: i["parameters"].get("unknown") for i in meta["inputs"]
            if i["parameters"]["kind"] == "categorical"} == policies


def test_error_policy_refuses_with_a_clear_body_then_a_good_request_succeeds(
    client: httpx.Client, trained: Trained
) -> None:
    frame = trained.frame.copy()
    frame.loc[[0, 3], "country"] = "ATLANTIS"
    r = client.post("/v2/models/policy/infer", json={"inputs": per_input(trained, frame)})
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    vocabulary = trained.inputs[trained.column("country")]["vocabulary"]
    assert "input 'country'" in message and "'ATLANTIS'" in message and "2 of 20 rows" in message
    assert f"known categories: {vocabulary[0]!r}" in message and "unknown='error'" in message

    # The same over msgpack, and as an out-of-range code in the matrix form.
    packed = msgpack.packb({"inputs": per_input(trained, frame, wire="msgpack")})
    r = client.post("/v2/models/policy/infer", content=packed,
                    headers={"Content-Type": "application/msgpack"})
    assert r.status_code == 400 and "'ATLANTIS'" in r.json()["error"]  # errors are JSON
    x = encode_rows(trained.frame, trained.inputs)
    bad = x.copy()
    bad[1, trained.column("country")] = len(vocabulary)
    r = post_matrix(client, "policy", bad)
    assert r.status_code == 400 and "input 'country': category code" in r.json()["error"]

    got = infer(client, "policy", {"inputs": per_input(trained, trained.frame)})
    np.testing.assert_allclose(got, infer_matrix(client, "policy", x), atol=1e-6)


def test_missing_policy_predicts_like_sending_nan(client: httpx.Client, trained: Trained) -> None:
    frame = trained.frame.copy()
    frame.loc[[1, 2], "channel"] = "carrier-pigeon"
    got = infer(client, "policy", {"inputs": per_input(trained, frame)})
    as_missing = trained.frame.copy()
    as_missing.loc[[1, 2], "channel"] = None  # sent as "", a missing value
    np.testing.assert_allclose(
        got, infer(client, "policy", {"inputs": per_input(trained, as_missing)}), atol=1e-6
    )
    x = encode_rows(trained.frame, trained.inputs)
    x[[1, 2], trained.column("channel")] = np.nan
    np.testing.assert_allclose(got, infer_matrix(client, "policy", x), atol=1e-6)
    # An out-of-range code in the matrix form is a missing value too.
    coded = x.copy()
    coded[[1, 2], trained.column("channel")] = 99.0
    np.testing.assert_allclose(got, infer_matrix(client, "policy", coded), atol=1e-6)


def test_oov_policy_is_unchanged(client: httpx.Client, trained: Trained) -> None:
    frame = trained.frame.copy()
    frame.loc[[0, 5], "merchant_category"] = "space-travel"
    got = infer(client, "policy", {"inputs": per_input(trained, frame)})
    x = encode_rows(trained.frame, trained.inputs)
    x[[0, 5], trained.column("merchant_category")] = -1.0  # the OOV slot
    np.testing.assert_allclose(got, infer_matrix(client, "policy", x), atol=1e-6)
    np.testing.assert_allclose(
        got, infer_matrix(client, "policy", encode_rows(frame, trained.inputs)), atol=1e-6
    )


def test_a_bundle_without_the_field_loads_and_behaves_as_oov(
    client: httpx.Client, trained: Trained
) -> None:
    meta = client.get("/v2/models/legacy").json()
    assert {i["parameters"].get("unknown") for i in meta["inputs"]
            if i["parameters"]["kind"] == "categorical"} == {"oov"}
    frame = trained.frame.copy()
    frame.loc[0, ["country", "channel", "merchant_category"]] = ["ATLANTIS", "fax", "alchemy"]
    got = infer(client, "legacy", {"inputs": per_input(trained, frame)})
    x = encode_rows(trained.frame, trained.inputs)
    x[0, [trained.column(n) for n in ("country", "channel", "merchant_category")]] = -1.0
    np.testing.assert_allclose(got, infer_matrix(client, "legacy", x), atol=1e-6)
