"""The registry on object storage (`Registry("s3://BUCKET/PREFIX")`, registry/remote.py) against
a real S3-compatible server (SeaweedFS on loopback: the `s3_server` fixture, tests/conftest.py).

The unit tests of the registry's behaviour run again on it; then what is its own: two machines
(two caches) sharing one registry, concurrent writers in separate processes losing races and
retrying without losing an update, damaged or missing objects, a damaged local cache, bad
credentials, buckets and endpoints, garbage collection, the CLI, and a trained model registered
by the trainer and served by `mlserve serve --registry s3://...` with an alias hot swap.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlserve.errors import InvalidInput, Unavailable
from mlserve.registry import Registry, remote
from mlserve.registry.remote import RemoteRegistry
from server_fixtures import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))
# The registry's unit tests, run again below on object storage.
sys.path.insert(0, str(ROOT / "tests" / "unit"))
import test_registry as unit  # noqa: E402
from test_registry import contents, fill, make_bundle  # noqa: E402

from bench.s3server import SeaweedFS as S3Server  # noqa: E402


@pytest.fixture
def reg(s3_uri: str) -> Registry:
    return Registry(s3_uri)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def objects(server: S3Server, uri: str) -> dict[str, bytes]:
    prefix = uri.split("/", 3)[3] + "/"
    client = server.client()
    keys = [c["Key"] for c in client.list_objects_v2(Bucket=server.bucket,
                                                     Prefix=prefix).get("Contents", [])]
    return {k[len(prefix):]: client.get_object(Bucket=server.bucket, Key=k)["Body"].read()
            for k in keys}


class LossyProxy:
    """An HTTP proxy in front of the store, one request per connection. For the next ``drops``
    PUTs of registry.db it forwards the request, lets the store apply it, and closes the
    client's connection instead of passing the answer on: a commit whose answer was lost."""

    def __init__(self, upstream: str, drops: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drops, self.dropped = drops, 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._srv.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._srv.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    @staticmethod
    def _read_request(client: socket.socket) -> tuple[str, list[str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                raise EOFError
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        line, *headers = head.decode("latin1").split("\r\n")
        fields = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in headers}
        if fields.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(body) < int(fields.get("content-length", "0")):
            chunk = client.recv(65536)
            if not chunk:
                raise EOFError
            body += chunk
        keep = [h for h in headers if h.split(":", 1)[0].lower() not in ("expect", "connection")]
        return line, keep, body

    def _handle(self, client: socket.socket) -> None:
        try:
            line, headers, body = self._read_request(client)
            with socket.create_connection(self.upstream) as up:
                up.sendall("\r\n".join([line, *headers, "Connection: close", "", ""]).encode(
                    "latin1") + body)
                answer = b""
                while chunk := up.recv(65536):
                    answer += chunk
            method, path = line.split()[:2]
            if method == "PUT" and path.split("?")[0].endswith("/registry.db") and self.drops:
                self.drops -= 1
                self.dropped += 1
                return  # applied by the store; the answer never arrives
            client.sendall(answer)
        except EOFError:
            pass
        finally:
            client.close()


# ---------------------------------------------------------------- the registry's behaviour


def test_is_a_registry(reg: Registry, s3_uri: str) -> None:
    assert isinstance(reg, RemoteRegistry) and reg.location == s3_uri
    assert repr(reg) == f"Registry({s3_uri!r})"
    assert reg.list_models() == []  # nothing in the store yet: an empty registry


@pytest.mark.parametrize("case", [
    "test_register_and_resolve", "test_register_rejects_bad_bundles",
    "test_unknown_refs_list_what_exists", "test_aliases_and_history",
    "test_archive_tags_description", "test_runs", "test_export_import_roundtrip",
])
def test_unit_behaviour_on_object_storage(case: str, reg: Registry, bundle: Path,
                                          tmp_path: Path) -> None:
    test = getattr(unit, case)
    params = test.__code__.co_varnames[:test.__code__.co_argcount]
    given = {"reg": reg, "bundle": bundle, "tmp_path": tmp_path}
    test(*[given[p] for p in params])


def test_the_store_holds_the_database_and_content_addressed_blobs(
        reg: Registry, bundle: Path, s3_server: S3Server, s3_uri: str) -> None:
    reg.register(bundle)
    reg.register(bundle)  # the same bytes: no second copy
    stored = objects(s3_server, s3_uri)
    files = {f: (bundle / f).read_bytes() for f in ("model.onnx", "model.pt")}
    want = {f"blobs/{hashlib.sha256(b).hexdigest()[:2]}/{hashlib.sha256(b).hexdigest()}": b
            for b in files.values()}
    assert set(stored) == {"registry.db", *want}
    assert all(stored[k] == v for k, v in want.items())
    assert stored["registry.db"].startswith(b"SQLite format 3\x00")


# ---------------------------------------------------------------- machines sharing it


def test_two_machines_share_one_registry(s3_uri: str, bundle: Path, tmp_path: Path) -> None:
    trainer = Registry(s3_uri, cache_dir=tmp_path / "trainer-cache")
    server = Registry(s3_uri, cache_dir=tmp_path / "server-cache")
    v1 = trainer.register(bundle, description="first")
    trainer.set_alias("fraud", "champion", 1)
    seen = server.open("fraud@champion")
    assert (seen.ref, seen.description) == ("fraud/1", "first")
    assert str(seen.path).startswith(str(tmp_path / "server-cache"))
    for f in ("mlserve.json", "model.onnx", "model.pt"):
        assert (seen.path / f).read_bytes() == (v1.path / f).read_bytes()
    assert json.loads((seen.path / "mlserve.json").read_text()) == seen.manifest

    v2 = trainer.register(make_bundle(tmp_path / "b2", seed=b"v"))
    trainer.set_alias("fraud", "champion", v2.version)
    # The same server object sees the move on its next read: no restart, no TTL.
    moved = server.open("fraud@champion")
    assert moved.version == 2
    assert (moved.path / "model.pt").read_bytes() == (tmp_path / "b2" / "model.pt").read_bytes()
    assert [e.kind for e in server.history("fraud")][-1] == "alias_set"

    # add_artifact on one machine: the other gets a new directory with the file in it and
    # keeps the old one intact for whoever opened it.
    engine_file = tmp_path / "model.plan"
    engine_file.write_bytes(b"engine-bytes")
    trainer.add_artifact("fraud/2", engine_file, file="model.plan", info={"gpu": "H100"})
    grown = server.open("fraud/2")
    assert grown.path != moved.path and (grown.path / "model.plan").read_bytes() == b"engine-bytes"
    assert grown.artifacts["model.plan"]["gpu"] == "H100" and moved.path.is_dir()


def test_default_location_from_the_environment(s3_uri: str, bundle: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSERVE_REGISTRY", s3_uri)
    reg = Registry()
    assert isinstance(reg, RemoteRegistry) and reg.location == s3_uri
    reg.register(bundle)
    assert Registry(s3_uri).resolve("fraud").version == 1


REGISTER_LOOP = r"""
import sys, time
from pathlib import Path
from mlserve.registry import Registry
uri, bundle, go, cache, n, who = sys.argv[1:]
reg = Registry(uri, cache_dir=cache)
while not Path(go).exists():
    time.sleep(0.005)
done = []
for i in range(int(n)):
    mv = reg.register(bundle, description=f"{who}-{i}", tags={"who": who})
    reg.set_alias(mv.name, f"latest-{who}", mv.version)
    done.append(mv.version)
print(" ".join(map(str, done)), reg.conflicts)
"""


def test_concurrent_writers_on_several_machines_lose_no_update(
        s3_uri: str, bundle: Path, tmp_path: Path) -> None:
    """Six processes, each with its own cache (six machines), register three versions each
    and move an alias after each, all at once. Steps are slowed so that commits overlap: the
    conditional PUT turns the lost races into retries, and every change survives."""
    go = tmp_path / "go"
    writers, each = 6, 3
    env = {**os.environ, "MLSERVE_REGISTRY_TEST_STEP_DELAY_S": "0.02"}
    procs = [subprocess.Popen(
        [sys.executable, "-c", REGISTER_LOOP, s3_uri, str(bundle), str(go),
         str(tmp_path / f"cache-{w}"), str(each), f"w{w}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(writers)]
    time.sleep(1.0)
    go.touch()
    got: dict[str, list[int]] = {}
    conflicts = 0
    for w, p in enumerate(procs):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        *versions, lost = out.split()
        got[f"w{w}"] = [int(v) for v in versions]
        conflicts += int(lost)
    reg = Registry(s3_uri, cache_dir=tmp_path / "reader")
    everything = sorted(v for vs in got.values() for v in vs)
    assert everything == list(range(1, writers * each + 1))  # unique, none lost
    listed = {v.version: v for v in reg.list_versions("fraud")}
    assert sorted(listed) == everything
    for who, versions in got.items():
        assert [listed[v].description for v in versions] == [f"{who}-{i}" for i in range(each)]
        assert all(listed[v].tags == {"who": who} for v in versions)
        assert reg.resolve(f"fraud@latest-{who}").version == versions[-1]
    kinds = [e.kind for e in reg.history("fraud")]
    assert kinds.count("register") == kinds.count("alias_set") == writers * each
    assert conflicts > 0, "the writers never overlapped: the test did not exercise a race"


def test_a_commit_whose_answer_is_lost_is_applied_once(
        s3_uri: str, bundle: Path, s3_server: S3Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore retries a PUT whose answer never came; when the first one was applied, the
    retry answers 412. The change's id in registry.db tells that it landed: no second run
    (a second version, a second run id, 'already has an artifact')."""
    proxy = LossyProxy(s3_server.endpoint, drops=4)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        reg = Registry(s3_uri, cache_dir=tmp_path / "lossy")
        run_id = reg.log_run({"lr": 0.1}, {"auc": 0.9}, name="fraud")  # the first PUT
        mv = reg.register(bundle, run_id=run_id)
        reg.set_alias("fraud", "prod", mv.version)
        plan = tmp_path / "model.plan"
        plan.write_bytes(b"engine")
        reg.add_artifact("fraud/1", plan, file="model.plan")
    finally:
        proxy.close()
    assert proxy.dropped == 4
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    seen = Registry(s3_uri, cache_dir=tmp_path / "direct")
    assert [r.run_id for r in seen.runs()] == [run_id]
    assert [v.version for v in seen.list_versions("fraud")] == [1]
    assert [e.kind for e in seen.history("fraud")] == ["register", "alias_set", "artifact_add"]
    assert (seen.open("fraud@prod").path / "model.plan").read_bytes() == b"engine"


def test_a_change_renews_the_old_blobs_it_references(
        reg: Registry, bundle: Path, s3_server: S3Server, s3_uri: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gc takes unreferenced blobs older than its grace period. A change that references
    such an orphan (bytes a failed change left) renews it right before its commit, so that a
    gc running meanwhile sees it young; blobs already referenced are left as they are."""
    data = (bundle / "model.pt").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = f"{s3_uri.split('/', 3)[3]}/blobs/{sha[:2]}/{sha}"
    client = s3_server.client()
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=data, Metadata={"sha256": sha})
    first = client.head_object(Bucket=s3_server.bucket, Key=key)
    time.sleep(1.1)  # S3 times have a resolution of a second
    monkeypatch.setattr(remote, "GC_GRACE_S", 1.0)  # the orphan is now "old"
    reg.register(bundle)
    renewed = client.head_object(Bucket=s3_server.bucket, Key=key)
    assert renewed["LastModified"] > first["LastModified"]
    assert renewed["Metadata"] == first["Metadata"] and renewed["ETag"] == first["ETag"]
    time.sleep(1.1)
    reg.register(bundle)  # referenced already: no gc takes it, nothing to renew
    assert client.head_object(Bucket=s3_server.bucket, Key=key)["LastModified"] == \
        renewed["LastModified"]


def test_a_pruned_snapshot_is_fetched_again(s3_uri: str, bundle: Path, tmp_path: Path) -> None:
    """Processes of one machine share the cache; one that pulls a new registry.db prunes the
    snapshots unused for SNAPSHOT_KEEP_S, and another that still pointed at one reads on."""
    worker_a = Registry(s3_uri, cache_dir=tmp_path / "shared")
    worker_b = Registry(s3_uri, cache_dir=tmp_path / "shared")
    writer = Registry(s3_uri, cache_dir=tmp_path / "writer")
    writer.register(bundle)
    assert [m.name for m in worker_a.list_models()] == ["fraud"]
    (old,) = [p for p in (tmp_path / "shared").rglob("snapshots/*.db")
              if not p.name.startswith("empty-")]
    stale = time.time() - remote.SNAPSHOT_KEEP_S - 60
    os.utime(old, (stale, stale))
    writer.register(bundle)
    assert worker_b.resolve("fraud").version == 2
    assert not old.exists()
    assert worker_a.resolve("fraud").version == 2


def test_copy_a_local_registry_onto_object_storage_and_back(
        s3_uri: str, tmp_path: Path, s3_server: S3Server) -> None:
    """The way onto shared storage: `mlserve registry copy --to s3://...` moves every version,
    alias, tag, run and the history; another machine sees all of it, and the copy back onto a
    directory is the same registry again."""
    local = Registry(tmp_path / "local")
    fill(local, tmp_path)
    shared, counts = local.copy_to(s3_uri)
    assert counts["versions"] == 3 and isinstance(shared, RemoteRegistry)
    elsewhere = Registry(s3_uri, cache_dir=tmp_path / "elsewhere")
    assert contents(elsewhere) == contents(local)
    assert elsewhere.verify() == []
    opened = elsewhere.open("fraud@champion")
    assert (opened.path / "model.plan").read_bytes() == b"engine-bytes"
    stored = objects(s3_server, s3_uri)
    assert sum(k.startswith("blobs/") for k in stored) == counts["blobs"]

    # A damaged copy in the source machine's cache is fetched again, not copied on.
    (blob,) = [b for b in (tmp_path / "elsewhere").rglob("blobs/*/*")
               if b.stat().st_size == len(b"engine-bytes")]
    os.chmod(blob, 0o644)
    blob.write_bytes(b"ENGINE-BYTES")
    onward, _ = elsewhere.copy_to(s3_uri + "-onward")
    assert onward.verify() == []
    assert (Registry(s3_uri + "-onward", cache_dir=tmp_path / "reader").open(
        "fraud@champion").path / "model.plan").read_bytes() == b"engine-bytes"

    back, _ = elsewhere.copy_to(tmp_path / "back")
    assert contents(back) == contents(local) and back.verify() == []
    assert "remote_commits" not in json.dumps(contents(back), default=str)

    with pytest.raises(InvalidInput, match="is not empty"):
        local.copy_to(s3_uri)
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="datasets-x/cards.parquet",
                                  Body=b"data")
    with pytest.raises(InvalidInput, match=r"already holds cards\.parquet"):
        local.copy_to(f"s3://{s3_server.bucket}/datasets-x")

    # A copy that fails part-way leaves blobs and no registry.db; running it again finishes it.
    def fail_after_first(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        local.copy_to(s3_uri + "-partial", progress=fail_after_first)
    partial = objects(s3_server, s3_uri + "-partial")
    assert partial and all(k.startswith("blobs/") for k in partial)
    again, _ = local.copy_to(s3_uri + "-partial")
    assert contents(again) == contents(local) and again.verify() == []
    cli = subprocess.run([sys.executable, "-m", "mlserve.cli", "registry", "--registry",
                          str(tmp_path / "local"), "copy", "--to", s3_uri + "-cli"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert contents(Registry(s3_uri + "-cli")) == contents(local)


def test_the_cache_keeps_what_was_used_within_the_grace_period(
        s3_uri: str, bundle: Path, tmp_path: Path) -> None:
    """A machine's gc removes a version directory whose manifest changed only once it has
    been unused for the grace period: opening it counts as use."""
    writer = Registry(s3_uri, cache_dir=tmp_path / "writer")
    writer.register(bundle)
    server = Registry(s3_uri, cache_dir=tmp_path / "server")
    old = server.open("fraud/1").path
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert server.open("fraud/1").path == old  # used again now
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    writer.add_artifact("fraud/1", plan, file="model.plan")  # a new manifest: old is stale
    assert str(old) not in server.gc()
    assert old.is_dir()
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert str(old) in server.gc()
    assert not old.exists() and server.open("fraud/1").path.is_dir()


def test_add_artifact_checks_its_blob_and_downloads_nothing(
        s3_uri: str, bundle: Path, s3_server: S3Server, tmp_path: Path) -> None:
    writer = Registry(s3_uri, cache_dir=tmp_path / "writer")
    writer.register(bundle)
    writer.register(bundle)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    builder = Registry(s3_uri, cache_dir=tmp_path / "builder")  # a GPU machine, say
    mv = builder.add_artifact("fraud/1", plan, file="model.plan")
    sha = mv.artifacts["model.plan"]["sha256"]
    cached = sorted(p.name for p in (tmp_path / "builder").rglob("blobs/*/*"))
    assert cached == [sha]  # the model's own blobs were not downloaded
    s3_server.client().delete_object(Bucket=s3_server.bucket,
                                     Key=f"{s3_uri.split('/', 3)[3]}/blobs/{sha[:2]}/{sha}")
    builder.add_artifact("fraud/2", plan, file="model.plan")  # the same bytes: uploaded again
    assert builder.verify() == []


def test_gc_refuses_to_run_without_the_database(
        reg: Registry, bundle: Path, s3_server: S3Server, s3_uri: str) -> None:
    reg.register(bundle)
    s3_server.client().delete_object(Bucket=s3_server.bucket,
                                     Key=f"{s3_uri.split('/', 3)[3]}/registry.db")
    with pytest.raises(InvalidInput, match=r"registry\.db is missing but 2 blob"):
        reg.gc(grace_s=0)
    assert len(objects(s3_server, s3_uri)) == 2


def test_a_database_from_an_older_schema_is_read_and_grown(
        reg: Registry, bundle: Path, s3_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A later mlserve adds a table to the schema: the registries written before it still open
    (the table is added to the local copy) and the next change stores it."""
    from mlserve.registry import _db

    reg.register(bundle)
    monkeypatch.setattr(_db, "_SCHEMA", _db._SCHEMA + "CREATE TABLE IF NOT EXISTS owners "
                        "(name TEXT NOT NULL, owner TEXT NOT NULL);")
    _db.schema_columns.cache_clear()
    try:
        newer = Registry(s3_uri, cache_dir=tmp_path / "newer")
        assert newer.resolve("fraud").version == 1
        with newer._read() as conn:
            assert conn.execute("SELECT COUNT(*) FROM owners").fetchone()[0] == 0
        newer.set_tag("fraud/1", "owner", "ana")
        assert Registry(s3_uri, cache_dir=tmp_path / "third").get("fraud/1").tags == {
            "owner": "ana"}
    finally:
        monkeypatch.undo()
        _db.schema_columns.cache_clear()


# ---------------------------------------------------------------- damage and errors


def test_a_damaged_or_missing_blob_is_refused_and_reported(
        reg: Registry, bundle: Path, s3_server: S3Server, s3_uri: str, tmp_path: Path) -> None:
    mv = reg.register(bundle)
    client, prefix = s3_server.client(), s3_uri.split("/", 3)[3]
    onnx, pt = mv.artifacts["model.onnx"]["sha256"], mv.artifacts["model.pt"]["sha256"]
    same_size = (bundle / "model.onnx").read_bytes().replace(b"onnx", b"ONNX")
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/blobs/{onnx[:2]}/{onnx}",
                      Body=same_size)
    fresh = Registry(s3_uri, cache_dir=tmp_path / "fresh")
    with pytest.raises(InvalidInput, match=f"blobs/{onnx[:2]}/{onnx} is damaged"):
        fresh.open("fraud/1")
    assert not list((tmp_path / "fresh").rglob(onnx))  # nothing damaged was kept
    client.delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/blobs/{pt[:2]}/{pt}")
    problems = sorted(fresh.verify())
    assert len(problems) == 2, problems
    assert any(p.endswith(f"{pt} is missing") for p in problems)
    assert any(f"{onnx} was not written by the registry" in p for p in problems)
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/blobs/{onnx[:2]}/{onnx}",
                      Body=b"short")
    assert any("has 5 bytes" in p for p in fresh.verify())
    # The machine that registered has the bytes: its repair uploads them again.
    assert fresh.verify(repair=True) == fresh.verify()  # nothing to repair from there
    repaired = reg.verify(repair=True)
    assert len(repaired) == 2 and all(p.endswith("(repaired)") for p in repaired), repaired
    assert fresh.verify() == []
    assert (fresh.open("fraud/1").path / "model.onnx").read_bytes() == (
        bundle / "model.onnx").read_bytes()


def test_registering_again_repairs_a_blob_lost_from_the_store(
        reg: Registry, bundle: Path, s3_server: S3Server, s3_uri: str, tmp_path: Path) -> None:
    """The documented remedy when no machine has a blob's bytes: register the bundle again.
    The new version references the same blob, and the change uploads it whatever the store
    says it has."""
    mv = reg.register(bundle)
    pt = mv.artifacts["model.pt"]["sha256"]
    s3_server.client().delete_object(Bucket=s3_server.bucket,
                                     Key=f"{s3_uri.split('/', 3)[3]}/blobs/{pt[:2]}/{pt}")
    other = Registry(s3_uri, cache_dir=tmp_path / "other")
    with pytest.raises(InvalidInput, match=f"{pt} is missing"):
        other.open("fraud/1")
    Registry(s3_uri, cache_dir=tmp_path / "third").register(bundle)
    assert other.verify() == []
    assert other.open("fraud/1").version == 1


def test_a_damaged_cache_is_detected_and_repaired(reg: Registry, bundle: Path) -> None:
    mv = reg.register(bundle)
    target = mv.path / "model.pt"
    os.chmod(target, 0o644)
    target.write_bytes(b"tampered")
    with pytest.raises(InvalidInput, match=r"model\.pt"):
        reg.open("fraud/1")
    problems = reg.verify(repair=True)
    assert problems and all(p.endswith("(repaired)") for p in problems)
    assert reg.verify() == []
    again = reg.open("fraud/1")  # downloaded again
    assert (again.path / "model.pt").read_bytes() == (bundle / "model.pt").read_bytes()


def test_read_only_refuses_changes_before_uploading(s3_uri: str, bundle: Path,
                                                    s3_server: S3Server) -> None:
    ro = Registry(s3_uri, read_only=True)
    assert ro.list_models() == []
    with pytest.raises(InvalidInput, match="read-only"):
        ro.register(bundle)
    assert ro.gc() == []  # a read-only registry's gc cleans this machine's cache only
    assert objects(s3_server, s3_uri) == {}
    Registry(s3_uri).register(bundle)
    assert ro.resolve("fraud").version == 1


def test_not_a_registry_database(s3_uri: str, s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.client().put_object(Bucket=s3_server.bucket,
                                  Key=f"{s3_uri.split('/', 3)[3]}/registry.db",
                                  Body=b"this is not sqlite" * 100)
    with pytest.raises(InvalidInput, match="not a registry database"):
        Registry(s3_uri).list_models()
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE versions (x)")
    s3_server.client().upload_file(str(foreign), s3_server.bucket,
                                   f"{s3_uri.split('/', 3)[3]}/registry.db")
    with pytest.raises(InvalidInput, match=r"not a registry database \(it lacks "):
        Registry(s3_uri).resolve("fraud")


def test_configuration_errors_are_typed_and_say_what_to_do(
        s3_uri: str, bundle: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput, match="bucket 'no-such-bucket' does not exist"):
        Registry("s3://no-such-bucket/x").list_models()
    with pytest.raises(InvalidInput, match="bucket 'no-such-bucket' does not exist"):
        Registry("s3://no-such-bucket/x").register(bundle)
    for bad in ("s3://", "s3:///x", "s3://b/../x", "s3://b//x"):
        with pytest.raises(InvalidInput, match="expected s3://BUCKET"):
            Registry(bad)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{web.server_port}")
        with pytest.raises(InvalidInput, match=r"is AWS_ENDPOINT_URL .* an S3 endpoint"):
            Registry(s3_uri).list_models()  # a web server's 404, not an empty registry
    finally:
        web.shutdown()
        web.server_close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(InvalidInput, match=r"access denied.*AWS_ACCESS_KEY_ID"):
        Registry(s3_uri).list_models()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Unavailable, match=r"unreachable.*AWS_ENDPOINT_URL"):
        Registry(s3_uri).resolve("fraud")


def test_gc_removes_only_old_unreferenced_blobs(reg: Registry, bundle: Path,
                                                s3_server: S3Server, s3_uri: str) -> None:
    reg.register(bundle)
    prefix = s3_uri.split("/", 3)[3]
    orphan = "ab" + "0" * 62  # what a writer that lost its race for good leaves
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=f"{prefix}/blobs/ab/{orphan}",
                                  Body=b"orphan")
    assert reg.gc() == []  # younger than the grace period: maybe a commit in flight
    assert f"blobs/ab/{orphan}" in objects(s3_server, s3_uri)
    removed = reg.gc(grace_s=0)
    assert removed == [f"s3://{s3_server.bucket}/{prefix}/blobs/ab/{orphan}"]
    assert len(objects(s3_server, s3_uri)) == 3  # registry.db and the two artifacts
    assert reg.open("fraud/1").version == 1


def test_cli_on_object_storage(s3_uri: str, bundle: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlserve.cli", "registry", *args,
                               "--registry", s3_uri], capture_output=True, text=True,
                              timeout=120, env={**os.environ,  # another machine's cache
                                                "MLSERVE_REGISTRY_CACHE": str(tmp_path / "cli")})

    Registry(s3_uri).register(bundle)
    assert cli("alias", "fraud", "1", "prod").returncode == 0
    shown = cli("show", "fraud@prod")  # the record only: nothing of the model downloaded
    assert shown.returncode == 0 and "not fetched on this machine" in shown.stdout, shown.stderr
    listed = cli("list")
    assert listed.returncode == 0 and "fraud" in listed.stdout and "prod" in listed.stdout
    assert cli("verify").returncode == 0
    gc = cli("gc")
    assert gc.returncode == 0 and "0 entries removed" in gc.stdout, gc.stderr
    out = tmp_path / "fraud.tar"
    assert cli("export", "fraud@prod", str(out)).returncode == 0 and out.is_file()
    missing = cli("show", "churn")
    assert missing.returncode != 0 and "no model named 'churn'" in missing.stderr


# ---------------------------------------------------------------- trained, served


def test_trained_model_registered_to_s3_is_served_and_hot_swapped(
        s3_uri: str, tmp_path: Path) -> None:
    from mlserve.trainer import encode_rows, train
    from mlserve.trainer.datasets import card_transactions

    registry = Registry(s3_uri, cache_dir=tmp_path / "trainer-cache")
    config: dict[str, Any] = {"exclude": ["user_id", "merchant_id"], "epochs": 1,
                              "hidden": [8]}
    result = train(card_transactions(1500, seed=3), "is_fraud", name="fraud",
                   timestamp="event_ts", config=config, registry=registry,
                   out_dir=tmp_path / "bundle", progress=False)
    registry.set_alias("fraud", "champion", 1)

    # A batch job scores with the registry object it is given (its cache, read-only), in this
    # process and in worker processes.
    import pandas as pd
    from mlserve.batch import run_batch

    src = tmp_path / "rows.parquet"
    result.test_frame.drop(columns=["is_fraud"]).head(300).to_parquet(src)
    want_batch = np.asarray(result.test_outputs, dtype=np.float32).reshape(-1)[:300]
    for workers in (1, 2):
        out = tmp_path / f"scores-{workers}"
        run_batch("fraud@champion", src, out, registry=registry, workers=workers)
        got_batch = pd.read_parquet(out)["probability"].to_numpy()
        np.testing.assert_allclose(got_batch, want_batch, rtol=0, atol=1e-5)
    assert not (tmp_path / "cache").exists()  # the default cache ($MLSERVE_REGISTRY_CACHE)

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc = ServerProcess(s3_uri, ["fraud@champion"], tmp_path / "server.log",  # type: ignore[arg-type]
                         "--admin-token-file", str(token))
    try:
        proc.wait_ready()
        inputs = result.model_version.manifest["signature"]["inputs"]
        frame = result.test_frame.drop(columns=["is_fraud"])
        complete = frame.notna().all(axis=1).to_numpy()  # JSON has no NaN
        x = encode_rows(frame[complete].head(50), inputs)
        body = {"inputs": [{"name": "rows", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}
        with httpx.Client(base_url=proc.url, timeout=30.0) as client:
            r = client.post("/v2/models/fraud/infer", json=body)
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
            want = np.asarray(result.test_outputs, dtype=np.float32).reshape(-1)[complete][:50]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
            assert r.json()["model_version"] == "1"

            # A second machine registers version 2 and moves the alias; the server swaps on load.
            other = Registry(s3_uri, cache_dir=tmp_path / "other-cache")
            other.register(result.bundle_path)
            other.set_alias("fraud", "champion", 2)
            swap = client.post("/v2/repository/models/fraud/load",
                               headers={"Authorization": "Bearer s3cret"})
            assert swap.status_code == 200 and swap.json()["version"] == "2", swap.text
            r = client.post("/v2/models/fraud/infer", json=body)
            assert r.status_code == 200 and r.json()["model_version"] == "2"
    finally:
        assert proc.stop() == 0, proc.log()
