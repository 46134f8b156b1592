"""The feature store on object storage (`FeatureStore("s3://BUCKET/PREFIX")`,
python/mlserve/features/remote.py) against a real S3-compatible server (SeaweedFS on loopback).

Machines are played by stores with their own cache folders (and processes). Checked: definitions
applied on one machine are seen by another, with unique versions under concurrent writers; the
offline data one machine ingests gives another machine the same point-in-time joins as a local
store holding the same parts; incremental materialization on a serving machine takes parts
ingested later elsewhere, including one that lands with an earlier number; damaged parts and
foreign objects are refused by name; the CLI, the trainer, batch jobs and `mlserve serve` work
with an s3 store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlserve.errors import InvalidInput
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView
from mlserve.features.offline import OfflineStore

BASE = pd.Timestamp("2026-03-01T00:00:00Z")
USER = Entity("user", "user_id")
STATS = FeatureView("stats", USER, [Column("x", "float"), Column("n", "int"),
                                    Column("seg", "categorical")], ttl_seconds=3 * 86400)
MERCHANT = Entity("merchant", "merchant_id", "string")
RISK = FeatureView("risk", MERCHANT, {"rate": "float"}, ttl_seconds=30 * 86400)
DEFINITIONS = [USER, STATS, MERCHANT, RISK, FeatureService("svc", ["stats", "risk"])]


def stats_rows(rng: np.random.Generator, n: int, day0: float = 0.0,
               base: pd.Timestamp = BASE) -> pd.DataFrame:
    event = base + pd.to_timedelta(rng.uniform(day0, day0 + 10, n), unit="D")
    return pd.DataFrame({
        "user_id": rng.integers(0, 40, n),
        "event_ts": event.floor("s"),
        "x": pd.array(np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
                      dtype="Float64"),
        "n": rng.integers(0, 100, n),
        "seg": rng.integers(0, 4, n),
    })


def risk_rows(rng: np.random.Generator, n: int, base: pd.Timestamp = BASE) -> pd.DataFrame:
    return pd.DataFrame({
        "merchant_id": rng.choice([f"m{i}" for i in range(12)], n),
        "event_ts": (base + pd.to_timedelta(rng.uniform(0, 10, n), unit="D")).floor("s"),
        "rate": rng.uniform(0, 1, n),
    })


def entity_rows(rng: np.random.Generator, n: int, base: pd.Timestamp = BASE) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": rng.integers(0, 45, n),  # some never ingested
        "merchant_id": rng.choice([f"m{i}" for i in range(14)], n),
        "event_ts": (base + pd.to_timedelta(rng.uniform(-1, 12, n), unit="D")).floor("s"),
    })


def machine(uri: str, tmp_path: Path, name: str) -> FeatureStore:
    return FeatureStore(uri, cache_dir=tmp_path / f"machine-{name}")


def objects(s3_server: Any, uri: str) -> dict[str, int]:
    prefix = uri.split("/", 3)[3] + "/"
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket=s3_server.bucket, Prefix=prefix)
    return {c["Key"][len(prefix):]: c["Size"] for p in pages for c in p.get("Contents", [])}


# ---------------------------------------------------------------- definitions


def test_definitions_are_shared_between_machines(s3_uri: str, s3_server: Any,
                                                 tmp_path: Path) -> None:
    a, b = machine(s3_uri, tmp_path, "a"), machine(s3_uri, tmp_path, "b")
    assert a.location == s3_uri and repr(a) == f"FeatureStore({s3_uri!r})"
    assert b.registry.list("view") == []
    changes = a.apply(DEFINITIONS)
    assert [(c.kind, c.name, c.version, c.action) for c in changes] == [
        ("entity", "user", 1, "created"), ("entity", "merchant", 1, "created"),
        ("view", "stats", 1, "created"), ("view", "risk", 1, "created"),
        ("service", "svc", 1, "created")]
    assert sorted(objects(s3_server, s3_uri)) == ["definitions.db"]
    assert b.view("stats") == a.view("stats")
    assert b.service("svc").selections == a.service("svc").selections

    # b adds a column: a new version, seen by a with no restart; a dry run records nothing.
    grown = FeatureView("stats", USER, [*STATS.columns, Column("y", "float")],
                        ttl_seconds=STATS.ttl_seconds)
    before = objects(s3_server, s3_uri)
    dry = b.apply([grown], dry_run=True)
    assert [(c.version, c.action) for c in dry] == [(2, "new version")]
    assert objects(s3_server, s3_uri) == before and a.view("stats").version == 1
    assert [(c.version, c.action) for c in b.apply([grown])] == [(2, "new version")]
    assert a.view("stats").version == 2 and a.view("stats/1").column_names == ("x", "n", "seg")
    assert a.apply([grown])[0].action == "unchanged"
    assert [i.version for i in a.registry.list("view", all_versions=True)
            if i.name == "stats"] == [1, 2]


APPLY_LOOP = r"""
import sys, time
from pathlib import Path
from mlserve._objectstore import S3Store
from mlserve.features import Column, Entity, FeatureStore, FeatureView

uri, go, cache, n, who = sys.argv[1:]
put = S3Store.put
def slow_put(self, *args, **kwargs):  # commits slowed so that the writers overlap
    time.sleep(0.02)
    return put(self, *args, **kwargs)
S3Store.put = slow_put
store = FeatureStore(uri, cache_dir=cache)
user = Entity("user", "user_id")
while not Path(go).exists():
    time.sleep(0.005)
got = []
for i in range(int(n)):
    view = FeatureView("shared", user, {f"{who}_{i}": "float"})
    got.append(store.apply([user, view])[1].version)
print(" ".join(map(str, got)), store.registry._db.conflicts)
"""


def test_concurrent_apply_on_several_machines_keeps_versions_unique(
        s3_uri: str, tmp_path: Path) -> None:
    """Five processes, each its own machine, apply three schema changes of one view each, all
    at once: every change gets its own version, none is lost, and races did happen."""
    go = tmp_path / "go"
    writers, each = 5, 3
    procs = [subprocess.Popen(
        [sys.executable, "-c", APPLY_LOOP, s3_uri, str(go), str(tmp_path / f"cache-{w}"),
         str(each), f"w{w}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(writers)]
    time.sleep(1.0)
    go.touch()
    versions: dict[str, list[int]] = {}
    conflicts = 0
    for w, p in enumerate(procs):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        *got, lost = out.split()
        versions[f"w{w}"] = [int(v) for v in got]
        conflicts += int(lost)
    assert sorted(v for vs in versions.values() for v in vs) == list(
        range(1, writers * each + 1))
    store = machine(s3_uri, tmp_path, "reader")
    for who, vs in versions.items():
        for i, v in enumerate(vs):
            assert store.view(f"shared/{v}").column_names == (f"{who}_{i}",)
    assert conflicts > 0, "the writers never overlapped: the test did not exercise a race"


# ---------------------------------------------------------------- offline data


@pytest.mark.parametrize("seed", [0, 1])
def test_historical_features_equal_a_local_store_with_the_same_parts(
        seed: int, s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    """The reference is the local store: the same definitions and the same parts, ingested
    in the same order; the join on another machine reads the parts it downloads."""
    rng = np.random.default_rng(seed)
    local = FeatureStore(tmp_path / "local")
    writer, reader = machine(s3_uri, tmp_path, "writer"), machine(s3_uri, tmp_path, "reader")
    for store in (local, writer):
        store.apply(DEFINITIONS)
    batches = [("stats", stats_rows(rng, 300)), ("risk", risk_rows(rng, 80)),
               ("stats", stats_rows(rng, 200, day0=2)), ("stats", stats_rows(rng, 0))]
    for view, frame in batches:
        got, want = writer.ingest(view, frame), local.ingest(view, frame)
        assert got.rows == want.rows == len(frame)
    parts = [k for k in objects(s3_server, s3_uri) if k.startswith("offline/")]
    assert len(parts) == 3 and all(k.startswith(("offline/stats/v1/part-",
                                                 "offline/risk/v1/part-")) for k in parts)
    entities = entity_rows(rng, 400)
    want = local.historical_features(entities, "svc")
    got = reader.historical_features(entities, "svc")
    pd.testing.assert_frame_equal(got, want)
    assert not want["stats__x"].isna().all() and want["stats__x"].isna().any()
    # A second join downloads nothing: the parts are this machine's files now.
    cached = sorted((reader.root / "offline").rglob("part-*.parquet"))
    assert len(cached) == 3
    stamps = [p.stat().st_ino for p in cached]
    pd.testing.assert_frame_equal(reader.historical_features(entities, "svc"), want)
    assert [p.stat().st_ino for p in sorted((reader.root / "offline").rglob(
        "part-*.parquet"))] == stamps


def test_materialize_incremental_takes_parts_ingested_later_elsewhere(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    """A serving machine materializes; a writer ingests more; the next incremental run takes
    it, and also takes a part that lands late with an earlier number (a slow writer), which a
    run by part number alone would skip."""
    rng = np.random.default_rng(3)
    writer, server = machine(s3_uri, tmp_path, "writer"), machine(s3_uri, tmp_path, "server")
    writer.apply(DEFINITIONS)
    first = stats_rows(rng, 200)
    writer.ingest("stats", first)
    end = BASE + pd.Timedelta(days=30)
    assert server.materialize_incremental("stats", end).rows == 200

    # A slow writer's part: its number is older than the one ingested next, but it lands last.
    slow_dir = tmp_path / "slow"
    slow = OfflineStore(slow_dir)
    late = stats_rows(rng, 1).assign(user_id=[7], event_ts=[BASE + pd.Timedelta(days=15)],
                                     n=[4242])
    from mlserve.features.ingest import validate_rows

    view = writer.view("stats")
    slow_part = slow.append(view, validate_rows(view, late, ingested_at_ns=1).table)
    newer = stats_rows(rng, 50, day0=12).assign(user_id=lambda d: d["user_id"] + 100)
    writer.ingest("stats", newer)
    key = f"{s3_uri.split('/', 3)[3]}/offline/stats/v1/{slow_part.name}"
    s3_server.client().upload_file(str(slow_part), s3_server.bucket, key)
    assert slow_part.name < sorted(k for k in objects(s3_server, s3_uri)
                                   if k.startswith("offline/stats/v1/"))[-1].rsplit("/", 1)[1]

    result = server.materialize_incremental("stats", end)
    assert result.rows == 51  # the new part and the late one, nothing again
    at = BASE + pd.Timedelta(days=15, hours=1)
    online = server.online_features(["stats"], {"user_id": [7]}, now=at)
    assert online.values[0, online.names.index("stats__n")] == 4242 and online.status[0, 0] == 0
    last = newer.sort_values("event_ts").iloc[-1]
    online = server.online_features(["stats"], {"user_id": [int(last["user_id"])]},
                                    now=last["event_ts"])
    newest_n = newer[(newer["user_id"] == last["user_id"])
                     & (newer["event_ts"] == last["event_ts"])]["n"]
    assert online.values[0, online.names.index("stats__n")] in set(newest_n.tolist())
    assert server.materialize_incremental("stats", end).rows == 0


INGEST_LOOP = r"""
import sys
import numpy as np, pandas as pd
from mlserve.features import FeatureStore
uri, cache, n, who = sys.argv[1:]
store = FeatureStore(uri, cache_dir=cache)
for i in range(int(n)):
    store.ingest("stats", pd.DataFrame({"user_id": [int(who) * 100 + i], "event_ts": [
        pd.Timestamp("2026-03-02", tz="UTC")], "x": [float(i)], "n": [int(who)], "seg": [1]}))
"""


def test_concurrent_ingestion_from_several_machines_keeps_every_part(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    machine(s3_uri, tmp_path, "setup").apply(DEFINITIONS)
    writers, each = 4, 5
    procs = [subprocess.Popen([sys.executable, "-c", INGEST_LOOP, s3_uri,
                               str(tmp_path / f"cache-{w}"), str(each), str(w)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    parts = [k for k in objects(s3_server, s3_uri) if k.startswith("offline/stats/v1/")]
    assert len(parts) == len(set(parts)) == writers * each
    reader = machine(s3_uri, tmp_path, "reader")
    data = reader.offline.load(reader.view("stats"))
    assert sorted(data.keys[0].tolist()) == sorted(w * 100 + i for w in range(writers)
                                                   for i in range(each))
    # Each writer's parts are in its own ingestion order.
    for w in range(writers):
        mine = [int(k) for k in data.keys[0].tolist() if k // 100 == w]
        assert mine == sorted(mine)


# ---------------------------------------------------------------- damage and errors


def test_a_damaged_part_is_refused_and_nothing_of_it_kept(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    writer = machine(s3_uri, tmp_path, "writer")
    writer.apply(DEFINITIONS)
    part = writer.ingest("stats", stats_rows(np.random.default_rng(4), 50)).part
    assert part is not None
    client, prefix = s3_server.client(), s3_uri.split("/", 3)[3]
    key = f"{prefix}/offline/stats/v1/{part.name}"
    meta = client.head_object(Bucket=s3_server.bucket, Key=key)["Metadata"]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed, its sha256 kept
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=bytes(data), Metadata=meta)
    reader = machine(s3_uri, tmp_path, "reader")
    with pytest.raises(InvalidInput, match=f"{part.name} is damaged.*ingest its data again"):
        reader.offline.parts(reader.view("stats"))
    assert not list((reader.root / "offline").rglob("part-*"))

    # A part put there by hand (no sha256 of ours) that is not Parquet: refused when read.
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"not parquet at all")
    with pytest.raises(InvalidInput, match="cannot be read with the view's schema"):
        machine(s3_uri, tmp_path, "third").historical_features(
            entity_rows(np.random.default_rng(0), 5), ["stats"])


def test_foreign_objects_and_bad_locations_are_refused_by_name(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    client, prefix = s3_server.client(), s3_uri.split("/", 3)[3]
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/definitions.db",
                      Body=b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(InvalidInput, match="is not a feature definitions database"):
        machine(s3_uri, tmp_path, "a").registry.list("view")
    # A registry's database is not a feature store's either.
    from mlserve.registry import _db

    reg_db = tmp_path / "registry.db"
    _db.initialize(reg_db)
    client.upload_file(str(reg_db), s3_server.bucket, f"{prefix}/definitions.db")
    with pytest.raises(InvalidInput, match=r"lacks definitions\.kind"):
        machine(s3_uri, tmp_path, "b").view("stats")
    with pytest.raises(InvalidInput, match="does not exist"):
        FeatureStore("s3://no-such-bucket/x", cache_dir=tmp_path / "c").apply(DEFINITIONS)
    with pytest.raises(InvalidInput, match="expected s3://BUCKET"):
        FeatureStore("s3://bucket/../x", cache_dir=tmp_path / "d")


# ---------------------------------------------------------------- the product around it


def test_cli_on_object_storage(s3_uri: str, tmp_path: Path) -> None:
    decl = tmp_path / "features.toml"
    decl.write_text(
        '[[entity]]\nname = "user"\njoin_keys = ["user_id"]\n\n'
        '[[feature_view]]\nname = "stats"\nentity = "user"\nttl_seconds = 864000\n'
        '[feature_view.columns]\nx = "float"\n\n'
        '[[feature_service]]\nname = "svc"\nviews = ["stats"]\n')
    data = tmp_path / "stats.csv"
    pd.DataFrame({"user_id": [1, 2], "event_ts": ["2026-03-01T00:00:00Z"] * 2,
                  "x": [0.5, 1.5]}).to_csv(data, index=False)

    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "mlserve.cli", "features", *args, "--store",
                            s3_uri], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "created" in cli("apply", str(decl))
    assert "2 rows appended to stats/1" in cli("ingest", "stats", str(data))
    cli("materialize", "--incremental", "--end", "2026-03-02T00:00:00Z")
    got = cli("get", "svc", "1", "2", "--now", "2026-03-02T00:00:00Z")
    assert "0.5" in got and "1.5" in got
    assert "stats" in cli("list", "views")
    r = subprocess.run([sys.executable, "-m", "mlserve.cli", "features", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert "s3://BUCKET/PREFIX" in r.stdout


def test_trained_batch_scored_and_served_from_a_shared_store(
        s3_uri: str, tmp_path: Path) -> None:
    """Features defined and ingested on one machine; the trainer on another records the s3
    store in the lineage; a batch job (one and two workers) joins from it exactly what a local
    store with the same parts joins; `mlserve serve --feature-store s3://...` answers
    entity-keyed requests from its machine's online store as if the features were sent."""
    from mlserve.batch import run_batch
    from mlserve.client import Client
    from mlserve.registry import Registry
    from mlserve.trainer import train
    from server_fixtures import ServerProcess

    rng = np.random.default_rng(11)
    base = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(days=10)
    writer, local = machine(s3_uri, tmp_path, "writer"), FeatureStore(tmp_path / "local")
    batches = [("stats", stats_rows(rng, 600, base=base)), ("risk", risk_rows(rng, 100, base))]
    for store in (writer, local):
        store.apply(DEFINITIONS)
        for view, frame in batches:
            store.ingest(view, frame)
    entities = entity_rows(rng, 800, base).assign(amount=rng.lognormal(3, 1, 800).round(2))
    entities["is_fraud"] = (rng.random(len(entities)) < 0.3).astype(np.int64)
    entities_csv = tmp_path / "entities.csv"
    entities.to_csv(entities_csv, index=False)
    registry = Registry(tmp_path / "registry")
    result = train(label="is_fraud", features="svc", entities=str(entities_csv),
                   feature_store=s3_uri, name="scorer", registry=registry,
                   config={"epochs": 1, "hidden": [8], "min_category_count": 1},
                   out_dir=tmp_path / "bundle", progress=False)
    manifest = json.loads((result.bundle_path / "mlserve.json").read_text())
    assert manifest["lineage"]["feature_store"] == s3_uri

    scored_in = tmp_path / "score.parquet"
    entities.drop(columns=["is_fraud"]).to_parquet(scored_in)
    want = tmp_path / "scored-local.parquet"
    run_batch("scorer/1", scored_in, want, registry=registry, feature_store=local.location)
    reference = pd.read_parquet(want)["probability"].to_numpy()
    for workers in (1, 2):
        out = tmp_path / f"scored-{workers}.parquet"
        run_batch("scorer/1", scored_in, out, registry=registry, workers=workers)
        np.testing.assert_array_equal(pd.read_parquet(out)["probability"].to_numpy(),
                                      reference)

    # The serving machine: its online store is filled from the bucket by its own materialize
    # (the cache folder from the environment), then the server reads it.
    subprocess.run([sys.executable, "-m", "mlserve.cli", "features", "materialize",
                    "--incremental", "--store", s3_uri],
                   check=True, capture_output=True, timeout=120)
    proc = ServerProcess(tmp_path / "registry", ["scorer"], tmp_path / "server.log",
                         "--feature-store", s3_uri)
    try:
        proc.wait_ready()
        users, merchants = [1, 2, 3, 44], ["m1", "m2", "m3", "m13"]
        amount = np.array([5.0, 80.0, 300.0, 20.0], np.float32)
        with FeatureStore(s3_uri) as here:  # this machine's cache: the server's online store
            online = here.online_features("svc", {"user_id": users, "merchant_id": merchants})
        assert (online.status[:3] == 0).all(), "the present entities must be fresh"
        explicit: dict[str, Any] = {"amount": amount}
        for spec in manifest["signature"]["inputs"]:
            if spec["name"] in online.names:
                values = online.values[:, online.names.index(spec["name"])]
                explicit[spec["name"]] = (
                    ["" if np.isnan(v) else str(int(v)) for v in values.tolist()]
                    if spec["kind"] == "categorical" else values.astype(np.float32))
        with Client(proc.url) as client:
            keyed = client.infer("scorer", {"user_id": np.array(users, np.int64),
                                            "merchant_id": merchants, "amount": amount}).output
            sent = client.infer("scorer", explicit).output
        assert keyed.shape == (4, 1)
        np.testing.assert_array_equal(keyed, sent)
    finally:
        proc.stop()


def test_copy_a_local_store_onto_object_storage_and_back(
        s3_uri: str, s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every definition version and every part moves under its own name: the joins of the
    copies equal the source's, for an old view version too; a copy that failed before its
    definitions landed is run again and finishes; refusals come before anything is written."""
    rng = np.random.default_rng(8)
    src = FeatureStore(tmp_path / "src")
    src.apply(DEFINITIONS)
    src.ingest("stats", stats_rows(rng, 300))
    src.ingest("risk", risk_rows(rng, 60))
    grown = FeatureView("stats", USER, [*STATS.columns, Column("y", "float")],
                        ttl_seconds=STATS.ttl_seconds)
    src.apply([grown, FeatureService("svc2", ["stats", "risk"])])
    src.ingest("stats", stats_rows(rng, 100).assign(y=1.5))
    entities = entity_rows(rng, 300)
    want = {ref: src.historical_features(entities, ref) for ref in ("svc", "svc2")}

    from mlserve.features.registry import FeatureRegistry

    insert, calls = FeatureRegistry.insert_rows, []

    def fail_once(self: FeatureRegistry, rows: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("connection reset (simulated)")
        insert(self, rows)

    monkeypatch.setattr(FeatureRegistry, "insert_rows", fail_once)
    with pytest.raises(OSError, match="simulated"):
        src.copy_to(s3_uri)
    assert machine(s3_uri, tmp_path, "early").registry.list("view") == []  # no definitions yet
    progress: list[tuple[int, int | None]] = []
    result = src.copy_to(s3_uri, progress=lambda done, total: progress.append((done, total)))
    assert (result.definitions, result.parts, result.parts_copied) == (7, 3, 0)
    assert progress[-1] == (result.bytes, result.bytes)
    on_s3 = machine(s3_uri, tmp_path, "reader")
    assert on_s3.registry.rows() == src.registry.rows()  # versions, fingerprints and times
    for ref, frame in want.items():
        pd.testing.assert_frame_equal(on_s3.historical_features(entities, ref), frame)
    again = src.copy_to(s3_uri)
    assert (again.definitions, again.parts_copied) == (0, 0)

    back = on_s3.copy_to(tmp_path / "back")
    assert back.location == str((tmp_path / "back").resolve())
    local = FeatureStore(tmp_path / "back")
    for ref, frame in want.items():
        pd.testing.assert_frame_equal(local.historical_features(entities, ref), frame)
    assert sorted(p.name for p in (tmp_path / "back").rglob("part-*")) == sorted(
        p.name for p in (tmp_path / "src").rglob("part-*"))

    # Refusals, before anything is written there.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="holds other things"):
        src.copy_to(other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    with pytest.raises(InvalidInput, match="is the source itself"):
        src.copy_to(tmp_path / "src")
    different = machine(f"{s3_uri}-other", tmp_path, "different")
    different.apply([USER])
    with pytest.raises(InvalidInput, match="has other definitions"):
        src.copy_to(f"{s3_uri}-other")
    with pytest.raises(InvalidInput, match="no definitions: nothing to copy"):
        FeatureStore(tmp_path / "empty").copy_to(f"{s3_uri}-empty")
    assert not objects(s3_server, f"{s3_uri}-empty")

    # The command line, with its summary.
    r = subprocess.run([sys.executable, "-m", "mlserve.cli", "features", "copy", "--to",
                        str(tmp_path / "cli-copy"), "--no-progress", "--store", s3_uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "7 definition versions, 3 of 3 offline parts" in r.stdout


# ---------------------------------------------------------------- review fixes


SERVE_WITHOUT_PYARROW = r"""
import sys
sys.modules["pyarrow"] = None  # the serving install: no pandas, no pyarrow
sys.modules["pandas"] = None
from mlserve.features import FeatureStore
store = FeatureStore(sys.argv[1], cache_dir=sys.argv[2])
reader = store.service_reader("svc")  # what the server prepares
got = reader.read({"user_id": [1, 999], "merchant_id": ["m1", "m1"]}, now_ns=int(sys.argv[3]))
print(got.status.tolist())
"""


def test_serving_from_a_shared_store_needs_no_pandas_or_pyarrow(
        s3_uri: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    writer = machine(s3_uri, tmp_path, "writer")
    writer.apply(DEFINITIONS)
    writer.ingest("stats", stats_rows(rng, 200).assign(user_id=1))
    writer.ingest("risk", risk_rows(rng, 50))
    server = machine(s3_uri, tmp_path, "server")
    end = BASE + pd.Timedelta(days=10)
    for view in ("stats", "risk"):
        server.materialize_incremental(view, end)
    r = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_PYARROW, s3_uri,
                        str(tmp_path / "machine-server"), str(end.value)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "[[0, 0], [1, 0]]"  # present; a missing user (1)


def test_an_ingest_whose_put_answer_is_lost_stores_one_part(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    """The store applies the part's PUT and its answer is lost: botocore sends it again and
    gets 412. That part is ours (name, size, sha256): it is not uploaded a second time."""
    store = machine(s3_uri, tmp_path, "writer")
    store.apply(DEFINITIONS)
    client = store.offline.store._client()  # type: ignore[attr-defined]
    dropped = []

    def lose_first_answer(response: Any = None, attempts: int | None = None,
                          **_: Any) -> int | None:
        if not dropped and attempts == 1 and response is not None \
                and response[0].status_code == 200:
            dropped.append(1)
            return 0  # retry now, as after a read timeout
        return None

    client.meta.events.register_first("needs-retry.s3.PutObject", lose_first_answer)
    try:
        result = store.ingest("stats", stats_rows(np.random.default_rng(0), 20))
    finally:
        client.meta.events.unregister("needs-retry.s3.PutObject", lose_first_answer)
    assert dropped and result.rows == 20
    parts = [k for k in objects(s3_server, s3_uri) if k.startswith("offline/")]
    assert len(parts) == 1 and parts[0].endswith(result.part.name)  # type: ignore[union-attr]
    other = machine(s3_uri, tmp_path, "reader")
    assert other.offline.load(other.view("stats")).n_rows == 20


def test_a_lost_definitions_database_is_not_recreated_over_old_data(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    store = machine(s3_uri, tmp_path, "a")
    store.apply(DEFINITIONS)
    store.ingest("stats", stats_rows(np.random.default_rng(0), 20))
    prefix = s3_uri.split("/", 3)[3]
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/definitions.db")
    with pytest.raises(InvalidInput, match=r"definitions\.db is missing but offline data is there"):
        machine(s3_uri, tmp_path, "b").apply(DEFINITIONS)
    assert "definitions.db" not in objects(s3_server, s3_uri)


def test_an_apply_that_changes_nothing_writes_nothing(s3_uri: str, s3_server: Any,
                                                     tmp_path: Path) -> None:
    """Deploy hooks re-apply the same definitions: no PUT, no new ETag for every reader."""
    store = machine(s3_uri, tmp_path, "a")
    store.apply(DEFINITIONS)
    client, key = s3_server.client(), f"{s3_uri.split('/', 3)[3]}/definitions.db"
    etag = client.head_object(Bucket=s3_server.bucket, Key=key)["ETag"]
    changes = machine(s3_uri, tmp_path, "b").apply(DEFINITIONS)
    assert {c.action for c in changes} == {"unchanged"}
    assert client.head_object(Bucket=s3_server.bucket, Key=key)["ETag"] == etag
    assert machine(s3_uri, tmp_path, "c").apply([USER, STATS, FeatureView(
        "risk", MERCHANT, {"rate": "float"}, ttl_seconds=60)])[2].action == "updated"
    assert client.head_object(Bucket=s3_server.bucket, Key=key)["ETag"] != etag


def test_gc_frees_the_cache_and_leaves_the_online_store(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    store = machine(s3_uri, tmp_path, "a")
    store.apply(DEFINITIONS)
    kept = store.ingest("stats", stats_rows(rng, 30)).part
    gone = store.ingest("stats", stats_rows(rng, 30)).part
    store.ingest("risk", risk_rows(rng, 10))
    store.apply([FeatureView("risk", MERCHANT, {"rate": "float", "rate2": "float"})])  # risk/2
    end = BASE + pd.Timedelta(days=11)
    store.materialize_incremental("stats", end)
    assert kept is not None and gone is not None
    prefix = s3_uri.split("/", 3)[3]
    s3_server.client().delete_object(Bucket=s3_server.bucket,
                                     Key=f"{prefix}/offline/stats/v1/{gone.name}")
    dead = store.root / "tmp" / "999999999-abc.part.parquet"  # a killed process's download
    dead.write_bytes(b"partial")
    assert store.gc(grace_s=3600) == [str(dead)]  # everything else was used just now
    old_version = list((store.root / "offline" / "risk" / "v1").iterdir())
    assert len(old_version) == 1
    # Unused now: the part deleted from the store and the part of risk/1 (risk/2 is latest).
    assert sorted(store.gc(grace_s=0)) == sorted([str(gone), str(old_version[0])])
    assert kept.is_file() and not gone.exists()
    assert not list((store.root / "offline" / "risk" / "v1").iterdir())
    online = store.online_features(["stats"], {"user_id": list(range(40))}, now=end)
    assert (online.status == 0).any()  # the online store is untouched
    assert store.offline.load(store.view("risk/1")).n_rows == 10  # fetched again when used
    assert FeatureStore(tmp_path / "local").gc() == []


def test_sources_and_files_on_object_storage_are_ingested(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    frame = stats_rows(np.random.default_rng(1), 25)
    local = tmp_path / "stats.parquet"
    frame.to_parquet(local)
    raw = f"{s3_uri}-raw/stats.parquet"
    s3_server.client().upload_file(str(local), s3_server.bucket,
                                   raw.split("/", 3)[3])
    store = machine(s3_uri, tmp_path, "a")
    sourced = FeatureView("stats", USER, STATS.columns, ttl_seconds=STATS.ttl_seconds,
                          source=raw)
    store.apply([USER, sourced])
    assert store.ingest("stats").rows == 25  # the view's source
    assert store.ingest("stats", raw).rows == 25  # a FILE argument
    with pytest.raises(InvalidInput, match="no such object"):
        store.ingest("stats", f"{s3_uri}-raw/nope.csv")


def test_a_part_too_big_for_one_upload_is_refused_before_uploading(
        s3_uri: str, s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlserve.features import remote_offline

    store = machine(s3_uri, tmp_path, "a")
    store.apply(DEFINITIONS)
    monkeypatch.setattr(remote_offline, "MAX_PART_BYTES", 100)
    with pytest.raises(InvalidInput, match="ingest the data in several smaller files"):
        store.ingest("stats", stats_rows(np.random.default_rng(0), 20))
    assert not [k for k in objects(s3_server, s3_uri) if k.startswith("offline/")]


def test_copy_refuses_a_destination_holding_other_data(
        s3_uri: str, s3_server: Any, tmp_path: Path) -> None:
    """A prefix whose definitions.db went missing still holds another store's parts: a copy
    onto it would join them to the copied views. So would a folder with foreign parts."""
    rng = np.random.default_rng(5)
    other = machine(s3_uri, tmp_path, "other")
    other.apply(DEFINITIONS)
    other.ingest("stats", stats_rows(rng, 10))
    prefix = s3_uri.split("/", 3)[3]
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/definitions.db")
    src = FeatureStore(tmp_path / "src")
    src.apply(DEFINITIONS)
    src.ingest("stats", stats_rows(rng, 10))
    with pytest.raises(InvalidInput, match="holds data that is not this copy's"):
        src.copy_to(s3_uri)
    assert len([k for k in objects(s3_server, s3_uri) if k.startswith("offline/")]) == 1
    assert "definitions.db" not in objects(s3_server, s3_uri)
    registry_prefix = f"{s3_uri}-registry"
    s3_server.client().put_object(Bucket=s3_server.bucket,
                                  Key=f"{registry_prefix.split('/', 3)[3]}/registry.db",
                                  Body=b"x")
    with pytest.raises(InvalidInput, match=r"holds data .*registry\.db"):
        src.copy_to(registry_prefix)
    local = tmp_path / "local-dst"
    (local / "offline" / "stats" / "v1").mkdir(parents=True)
    (local / "offline" / "stats" / "v1" / "part-1-foreign.parquet").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="holds data that is not this copy's"):
        src.copy_to(local)
    with pytest.raises(InvalidInput, match="or inside it"):
        src.copy_to(tmp_path / "src" / "nested")
    r = subprocess.run([sys.executable, "-m", "mlserve.cli", "features", "gc", "--grace", "0",
                        "--store", s3_uri], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "at least 60 seconds" in r.stderr
