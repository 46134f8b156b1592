"""Entity-keyed serving (issue 5): a model trained from ``historical_features`` of a feature
service, served by a real `mlserve serve --feature-store` process on 127.0.0.1 that reads a real
LMDB online store. Requests carrying ``user_id`` (INT64) and ``merchant_id`` (BYTES, a string
key) give the prediction of the same features sent explicitly, over JSON and msgpack; missing
and expired entities follow the bundle's missing-value policy (imputed when nullable, 400 when
not); keys of the wrong datatype are refused with a clear message; /metrics has the fetch
histogram and the per-status key counters; the trainer records the service and view versions.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlserve.client import Client
from mlserve.errors import InvalidInput, Unavailable
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView
from mlserve.registry import Registry
from mlserve.server.models import ModelManager
from mlserve.trainer import train
from read_only_mount import SKIP_REASON, can_mount_read_only, read_only_mount_prefix
from server_fixtures import ServerProcess

NOW = pd.Timestamp.now(tz="UTC").floor("s")
DAY = pd.Timedelta(days=1)
PRESENT_USERS = [1, 2, 3, 4]
EXPIRED_USER = 150  # its only value is older than user_stats' 2-day TTL
MISSING_USER = 999  # never ingested
MERCHANTS = [f"m{i}" for i in range(20)]


def _history(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = np.arange(1, 121)
    rows = []
    for u in users:
        for _ in range(4):
            rows.append({"user_id": int(u),
                         "event_ts": NOW - pd.Timedelta(seconds=float(rng.uniform(3600,
                                                                                  15 * 86400))),
                         "tx_count_7d": int(rng.integers(0, 30)),
                         "avg_amount": float(rng.lognormal(3, 1)) if rng.random() > 0.1
                         else None,
                         "segment": int(rng.integers(0, 4))})
        # the newest value of every present user is recent (within the TTL)
        rows.append({"user_id": int(u), "event_ts": NOW - pd.Timedelta(hours=1),
                     "tx_count_7d": int(rng.integers(0, 30)),
                     "avg_amount": float(rng.lognormal(3, 1)), "segment": int(rng.integers(0, 4))})
    rows.append({"user_id": EXPIRED_USER, "event_ts": NOW - 10 * DAY, "tx_count_7d": 3,
                 "avg_amount": 12.5, "segment": 1})
    user_rows = pd.DataFrame(rows)
    merchant_rows = pd.DataFrame({
        "merchant_id": MERCHANTS * 3,
        "event_ts": [NOW - pd.Timedelta(days=float(d)) for d in rng.uniform(0.1, 20, 60)],
        "fraud_rate": rng.uniform(0, 0.2, 60),
    })
    return user_rows, merchant_rows


def _entities(rng: np.random.Generator, n: int = 1500) -> pd.DataFrame:
    amount = rng.lognormal(3, 1, n)
    channel = rng.choice(["pos", "web", "app"], n)
    logit = 0.8 * (np.log(amount) - 3) + 1.0 * (channel == "web") - 2.0
    return pd.DataFrame({
        "user_id": rng.integers(1, 121, n),
        "merchant_id": rng.choice(MERCHANTS, n),
        "event_ts": [NOW - pd.Timedelta(seconds=float(s)) for s in rng.uniform(60, 20 * 86400, n)],
        "amount": amount.round(2),
        "channel": channel,
        "is_fraud": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64),
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("feature_serving")
    rng = np.random.default_rng(5)
    store_root = root / "store"
    with FeatureStore(store_root) as store:
        user = Entity("user", "user_id")
        merchant = Entity("merchant", "merchant_id", "string")
        store.apply([
            user, merchant,
            FeatureView("user_stats", user, [Column("tx_count_7d", "int"),
                                             Column("avg_amount", "float"),
                                             Column("segment", "categorical")],
                        ttl_seconds=2 * 86400),
            FeatureView("merchant_risk", merchant, {"fraud_rate": "float"},
                        ttl_seconds=30 * 86400),
            FeatureService("scoring", ["user_stats", "merchant_risk"]),
        ])
        users, merchants = _history(rng)
        store.ingest("user_stats", users)
        store.ingest("merchant_risk", merchants)
        for view in ("user_stats", "merchant_risk"):
            store.materialize(view, NOW - 400 * DAY, NOW)
    registry = Registry(root / "registry")
    entities = root / "entities.csv"
    _entities(rng).to_csv(entities, index=False)
    result = train(label="is_fraud", features="scoring", entities=str(entities),
                   feature_store=str(store_root), name="scorer", registry=registry,
                   config={"epochs": 2, "hidden": [8], "min_category_count": 1},
                   out_dir=root / "bundle", progress=False)
    # The same model with one stored feature declared not nullable: missing -> 400.
    strict = root / "strict"
    shutil.copytree(root / "bundle", strict)
    manifest = json.loads((strict / "mlserve.json").read_text())
    for spec in manifest["signature"]["inputs"]:
        if spec["name"] == "user_stats__avg_amount":
            spec["nullable"] = False
    (strict / "mlserve.json").write_text(json.dumps(manifest))
    registry.register(strict, name="strict")
    return {"root": root, "store": store_root, "registry": registry, "result": result}


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[ServerProcess]:
    root = trained["root"]
    proc = ServerProcess(root / "registry", ["scorer", "strict"], root / "server.log",
                         "--feature-store", str(trained["store"]))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _inputs(result: Any) -> list[dict[str, Any]]:
    manifest = json.loads((result.bundle_path / "mlserve.json").read_text())
    return list(manifest["signature"]["inputs"])


def _explicit(store_root: Path, inputs: list[dict[str, Any]], users: list[int],
              merchants: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """The request with the stored features written out: what the online store holds now."""
    with FeatureStore(store_root) as store:
        got = store.online_features("scoring", {"user_id": users, "merchant_id": merchants})
    out: dict[str, Any] = {}
    for spec in inputs:
        name = spec["name"]
        if name in request:
            out[name] = request[name]
            continue
        values = got.values[:, got.names.index(name)]
        if spec["kind"] == "categorical":  # codes as the strings of the trained vocabulary
            out[name] = ["" if np.isnan(v) else str(int(v)) for v in values.tolist()]
        else:
            out[name] = values.astype(np.float32)
    return out


def test_trainer_records_the_service_and_view_versions(trained: dict[str, Any]) -> None:
    result = trained["result"]
    manifest = json.loads((result.bundle_path / "mlserve.json").read_text())
    lineage = manifest["lineage"]
    assert lineage["feature_service"] == {"name": "scoring", "version": 1}
    assert [(v["name"], v["version"]) for v in lineage["feature_views"]] == [
        ("user_stats", 1), ("merchant_risk", 1)]
    assert lineage["feature_views"][0]["columns"] == ["tx_count_7d", "avg_amount", "segment"]
    assert lineage["feature_views"][0]["ttl_seconds"] == 2 * 86400
    assert lineage["entity_keys"] == [{"name": "user_id", "dtype": "int64"},
                                      {"name": "merchant_id", "dtype": "string"}]
    assert lineage["request_features"] == ["amount", "channel"]
    kinds = {s["name"]: s["kind"] for s in manifest["signature"]["inputs"]}
    assert kinds == {"user_stats__tx_count_7d": "numeric", "user_stats__avg_amount": "numeric",
                     "merchant_risk__fraud_rate": "numeric", "amount": "numeric",
                     "user_stats__segment": "categorical", "channel": "categorical"}
    registered = trained["registry"].resolve("scorer/1")
    assert registered.lineage["feature_service"]["name"] == "scoring"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_keyed_request_equals_explicit_features(trained: dict[str, Any], server: ServerProcess,
                                                codec: str) -> None:
    users = PRESENT_USERS
    merchants = MERCHANTS[:4]
    request = {"amount": np.array([5.0, 80.0, 300.0, 20.0], np.float32),
               "channel": ["web", "pos", "app", "web"]}
    keyed = {"user_id": np.array(users, np.int64), "merchant_id": merchants, **request}
    explicit = _explicit(trained["store"], _inputs(trained["result"]), users, merchants, request)
    with Client(server.url, codec=codec) as client:
        a = client.infer("scorer", keyed).output
        b = client.infer("scorer", explicit).output
    assert a.shape == (4, 1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not can_mount_read_only(), reason=SKIP_REASON)
def test_server_reads_a_feature_store_on_a_read_only_mount(trained: dict[str, Any],
                                                          tmp_path: Path) -> None:
    # A store on a read-only volume (a ReadOnlyMany claim, or baked into an image run with a
    # read-only root filesystem): opened read-only, it serves keyed requests as the writable one.
    mount = tmp_path / "features"
    proc = ServerProcess(trained["root"] / "registry", ["scorer"], tmp_path / "server.log",
                         "--feature-store", str(mount),
                         prefix=read_only_mount_prefix(trained["store"], mount))
    try:
        proc.wait_ready()
        users, merchants = [*PRESENT_USERS, MISSING_USER], [*MERCHANTS[:4], "nowhere"]
        request = {"amount": np.array([5.0, 80.0, 300.0, 20.0, 7.0], np.float32),
                   "channel": ["web", "pos", "app", "web", "app"]}
        keyed = {"user_id": np.array(users, np.int64), "merchant_id": merchants, **request}
        explicit = _explicit(trained["store"], _inputs(trained["result"]), users, merchants,
                             request)
        with Client(proc.url) as client:
            got = client.infer("scorer", keyed).output
            want = client.infer("scorer", explicit).output
        np.testing.assert_array_equal(got, want)
    finally:
        assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log(), proc.log()


def test_missing_and_expired_entities_are_imputed_when_nullable(
        trained: dict[str, Any], server: ServerProcess) -> None:
    users = [MISSING_USER, EXPIRED_USER, PRESENT_USERS[0]]
    merchants = ["nowhere", MERCHANTS[0], MERCHANTS[1]]
    request = {"amount": np.array([10.0, 10.0, 10.0], np.float32),
               "channel": ["pos", "pos", "pos"]}
    explicit = _explicit(trained["store"], _inputs(trained["result"]), users, merchants, request)
    assert np.isnan(explicit["user_stats__avg_amount"][:2]).all()  # missing, expired
    assert explicit["user_stats__segment"][:2] == ["", ""]
    with Client(server.url, codec="msgpack") as client:
        keyed = client.infer("scorer", {"user_id": np.array(users, np.int64),
                                        "merchant_id": merchants, **request}).output
        want = client.infer("scorer", explicit).output
    np.testing.assert_array_equal(keyed, want)
    assert np.isfinite(keyed).all()


def test_non_nullable_feature_without_value_is_refused(server: ServerProcess) -> None:
    request = {"amount": np.array([10.0, 10.0], np.float32), "channel": ["pos", "web"],
               "merchant_id": MERCHANTS[:2]}
    with Client(server.url, codec="json") as client:
        ok = client.infer("strict", {"user_id": np.array(PRESENT_USERS[:2]), **request})
        assert np.isfinite(ok.output).all()
        for user, why in ((MISSING_USER, "missing"), (EXPIRED_USER, "expired")):
            with pytest.raises(InvalidInput) as err:
                client.infer("strict", {"user_id": np.array([PRESENT_USERS[0], user]),
                                        **request})
            message = str(err.value)
            assert "user_stats__avg_amount" in message and f"1 {why}" in message, message
            assert f"user_id={user}" in message, message


@pytest.mark.parametrize(("value", "datatype"), [
    (np.array([1.0, 2.0], np.float32), "FP32"),
    (["1", "2"], "BYTES"),
])
def test_key_of_the_wrong_datatype_is_a_clear_400(server: ServerProcess, value: Any,
                                                  datatype: str) -> None:
    request = {"user_id": value, "merchant_id": MERCHANTS[:2],
               "amount": np.array([1.0, 2.0], np.float32), "channel": ["pos", "web"]}
    for codec in ("json", "msgpack"):
        with Client(server.url, codec=codec) as client, pytest.raises(InvalidInput) as err:
            client.infer("scorer", request)
        assert "entity key 'user_id': expected an INT64 tensor" in str(err.value)
        assert datatype in str(err.value)
    wrong_merchant = {**request, "user_id": np.array([1, 2]), "merchant_id": np.array([3, 4])}
    with Client(server.url, codec="json") as client, pytest.raises(InvalidInput) as err:
        client.infer("scorer", wrong_merchant)
    assert "entity key 'merchant_id': expected a BYTES tensor" in str(err.value)


def test_too_many_keys_are_refused_before_the_store_read(server: ServerProcess) -> None:
    def keys_read() -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(server.url + "/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text)
                   if f.name == "mlserve_feature_keys" for s in f.samples
                   if s.name == "mlserve_feature_keys_total")

    n = 100_000  # far past the server's max_batch_size (256)
    request = {"user_id": np.arange(n), "merchant_id": [MERCHANTS[0]] * n,
               "amount": np.ones(n, np.float32), "channel": ["pos"] * n}
    before = keys_read()
    with Client(server.url, codec="msgpack") as client:
        with pytest.raises(InvalidInput, match=f"request has {n} rows.*max_batch_size"):
            client.infer("scorer", request)
    assert keys_read() == before  # refused before any store read


def test_missing_key_or_request_input_is_named(server: ServerProcess) -> None:
    with Client(server.url, codec="json") as client:
        with pytest.raises(InvalidInput, match="missing entity keys: merchant_id"):
            client.infer("scorer", {"user_id": np.array([1]), "amount": np.array([1.0]),
                                    "channel": ["pos"]})
        with pytest.raises(InvalidInput, match="missing request-time inputs: channel"):
            client.infer("scorer", {"user_id": np.array([1]), "merchant_id": ["m1"],
                                    "amount": np.array([1.0])})


def test_metadata_lists_entity_keys(server: ServerProcess) -> None:
    meta = httpx.get(f"{server.url}/v2/models/scorer", timeout=10).json()
    keys = [i for i in meta["inputs"] if i["parameters"].get("entity_key")]
    assert [(k["name"], k["datatype"]) for k in keys] == [("user_id", "INT64"),
                                                          ("merchant_id", "BYTES")]
    assert meta["parameters"]["feature_service"] == "scoring/1"
    sources = {i["name"]: i["parameters"].get("source") for i in meta["inputs"]}
    assert sources["amount"] == "request"
    assert sources["user_stats__avg_amount"] == "feature_store"


def test_metrics_show_fetch_latency_and_key_status(server: ServerProcess) -> None:
    with Client(server.url, codec="msgpack") as client:
        client.infer("scorer", {"user_id": np.array([1, MISSING_USER, EXPIRED_USER]),
                                "merchant_id": ["m1", "m2", "m3"],
                                "amount": np.array([1.0, 2.0, 3.0], np.float32),
                                "channel": ["pos", "web", "app"]})
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'mlserve_feature_fetch_seconds_bucket{le="5e-05",model="scorer",version="1"}' in text
    count = [ln for ln in text.splitlines()
             if ln.startswith('mlserve_feature_fetch_seconds_count{model="scorer"')]
    assert count and float(count[0].split()[-1]) >= 1
    for status in ("present", "missing", "expired"):
        assert (f'mlserve_feature_keys_total{{model="scorer",status="{status}",version="1",'
                f'view="user_stats/1"}}') in text, status


def test_model_needing_a_store_fails_to_load_without_one(
        trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLSERVE_FEATURE_STORE", raising=False)

    async def load(store: str | None) -> None:
        manager = ModelManager(str(trained["root"] / "registry"), feature_store=store)
        try:
            await manager.load("scorer")
        finally:
            await manager.close()

    with pytest.raises(Unavailable, match=r"no feature store: start it with `mlserve serve "
                       r"--feature-store PATH\|s3://BUCKET/PREFIX` or set \$MLSERVE_FEATURE_STORE"):
        asyncio.run(load(None))
    with pytest.raises(Unavailable, match="is not a feature store"):
        asyncio.run(load(str(trained["root"] / "nowhere")))
    started = time.monotonic()
    asyncio.run(load(str(trained["store"])))  # configured: loads
    assert time.monotonic() - started < 60


def test_cli_train_from_a_feature_service(trained: dict[str, Any], tmp_path: Path) -> None:
    entities = trained["root"] / "entities.csv"
    out = tmp_path / "bundle"
    done = subprocess.run(
        [sys.executable, "-m", "mlserve.cli", "train", "--features", "scoring/1",
         "--entities", str(entities), "--feature-store", str(trained["store"]),
         "--label", "is_fraud", "--numeric", "amount", "--set", "epochs=1", "--set",
         "hidden=[4]", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lineage = json.loads((out / "mlserve.json").read_text())["lineage"]
    assert lineage["feature_service"] == {"name": "scoring", "version": 1}
    assert lineage["request_features"] == ["amount"]  # only what --numeric names
    assert lineage["entities"] == str(entities)
    both = subprocess.run(
        [sys.executable, "-m", "mlserve.cli", "train", "--features", "scoring", "--data",
         str(entities), "--label", "is_fraud"], capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "--features SERVICE with --entities FILE" in both.stdout
