"""Unit tests of mlserve.registry: register/resolve/alias/history/tags/archive/runs/verify/
export/import, checksum checks on load, malformed and unknown references, and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.registry import ModelVersion, Ref, Registry, parse_ref
from mlserve.registry import cli as registry_cli
from read_only_mount import SKIP_REASON, can_mount_read_only, read_only_mount_prefix


def make_bundle(path: Path, name: str = "fraud", *, seed: bytes = b"w",
                extra: dict[str, Any] | None = None) -> Path:
    """A small fake bundle: mlserve.json (docs/bundle.md) + model.onnx + model.pt."""
    path.mkdir(parents=True, exist_ok=True)
    files = {"model.onnx": b"onnx-bytes-" + seed * 100, "model.pt": b"torchscript-" + seed * 50}
    artifacts = {}
    for file, data in files.items():
        (path / file).write_bytes(data)
        artifacts[file] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest: dict[str, Any] = {
        "format_version": 1, "name": name, "version": None,
        "created_at": "2026-11-26T05:00:00+00:00", "task": "binary",
        "signature": {"inputs": [{"name": "amount", "dtype": "float32", "kind": "numeric",
                                  "nullable": True}],
                      "outputs": [{"name": "probability", "dtype": "float32", "shape": [-1, 1]}]},
        "artifacts": artifacts,
        "metrics": {"roc_auc": 0.95}, "params": {"lr": 0.001},
        "lineage": {"dataset_fingerprint": "sha256:abc", "seed": 7, "imported": False},
    }
    manifest.update(extra or {})
    (path / "mlserve.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "reg")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"XX")


def test_default_root_uses_mlserve_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSERVE_HOME", str(tmp_path / "home"))
    assert Registry().root == tmp_path / "home" / "registry"


def test_register_and_resolve(reg: Registry, bundle: Path) -> None:
    v1 = reg.register(bundle, description="first", tags={"team": "risk"})
    v2 = reg.register(bundle)
    assert (v1.name, v1.version, v2.version) == ("fraud", 1, 2)
    assert v1.status == "ready" and v1.description == "first" and v1.tags == {"team": "risk"}
    assert v1.metrics == {"roc_auc": 0.95} and v1.params == {"lr": 0.001}
    assert v1.lineage["seed"] == 7 and v1.manifest["version"] == 1
    on_disk = json.loads((v2.path / "mlserve.json").read_text())
    assert on_disk["version"] == 2 and on_disk == v2.manifest
    assert (v2.path / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert not os.access(v2.path / "model.onnx", os.W_OK) or os.geteuid() == 0
    assert reg.resolve("fraud").version == 2
    assert reg.resolve("fraud/1") == v1
    v2.verify()
    assert reg.open("fraud/2").version == 2
    other = reg.register(bundle, name="churn")
    assert other.ref == "churn/1"
    assert [m.name for m in reg.list_models()] == ["churn", "fraud"]
    assert [v.version for v in reg.list_versions("fraud")] == [1, 2]


def test_register_rejects_bad_bundles(reg: Registry, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    (b / "model.pt").write_bytes(b"tampered")
    with pytest.raises(InvalidInput, match=r"model\.pt .*sha256"):
        reg.register(b)
    b2 = make_bundle(tmp_path / "b2")
    (b2 / "model.onnx").unlink()
    with pytest.raises(InvalidInput, match=r"model\.onnx .*missing"):
        reg.register(b2)
    with pytest.raises(InvalidInput, match=r"mlserve\.json is missing"):
        reg.register(tmp_path / "nothing")
    b3 = make_bundle(tmp_path / "b3", extra={"artifacts": {"../etc": {"sha256": "0" * 64}}})
    with pytest.raises(InvalidInput, match="relative path"):
        reg.register(b3)
    with pytest.raises(InvalidInput, match="invalid model name"):
        reg.register(make_bundle(tmp_path / "b4"), name="bad/name")
    assert reg.list_models() == []
    assert all(p.endswith("(repaired)") for p in reg.verify(repair=True))
    assert reg.verify() == []


@pytest.mark.parametrize("ref", ["", " ", "a/b/c", "fraud/x", "fraud/0", "fraud/-1", "fraud@",
                                 "fraud@12", "@prod", "/3", "fraud/3@prod", "fr aud", "a@b@c"])
def test_malformed_refs(ref: str) -> None:
    with pytest.raises(InvalidInput, match=r"model reference|invalid"):
        parse_ref(ref)


def test_parse_ref() -> None:
    assert parse_ref("fraud") == Ref("fraud")
    assert parse_ref("fraud/3") == Ref("fraud", version=3)
    assert parse_ref("fraud@prod") == Ref("fraud", alias="prod")
    assert str(parse_ref("fraud@prod")) == "fraud@prod"


def test_unknown_refs_list_what_exists(reg: Registry, bundle: Path) -> None:
    with pytest.raises(ModelNotFound, match="registered models: none"):
        reg.resolve("fraud")
    reg.register(bundle)
    reg.set_alias("fraud", "prod", 1)
    with pytest.raises(ModelNotFound, match=r"registered models: fraud"):
        reg.resolve("churn")
    with pytest.raises(ModelNotFound, match=r"no version 7 \(versions: 1 \(ready\)\)"):
        reg.resolve("fraud/7")
    with pytest.raises(ModelNotFound, match=r"no alias 'staging' \(aliases: prod -> 1\)"):
        reg.resolve("fraud@staging")
    with pytest.raises(ModelNotFound):
        reg.list_versions("churn")
    with pytest.raises(ModelNotFound):
        reg.history("churn")


def test_aliases_and_history(reg: Registry, bundle: Path) -> None:
    reg.register(bundle)
    reg.register(bundle)
    reg.set_alias("fraud", "prod", 1, reason="initial")
    moved = reg.set_alias("fraud", "prod", 2, reason="better auc")
    assert moved.aliases == ["prod"] and reg.resolve("fraud@prod").version == 2
    assert reg.resolve("fraud/1").aliases == []
    reg.delete_alias("fraud", "prod", reason="rollback")
    with pytest.raises(ModelNotFound):
        reg.resolve("fraud@prod")
    with pytest.raises(ModelNotFound):
        reg.set_alias("fraud", "prod", 9)
    events = reg.history("fraud")
    assert [e.kind for e in events] == ["register", "register", "alias_set", "alias_set",
                                        "alias_delete"]
    move = events[3]
    assert (move.alias, move.old_version, move.new_version, move.reason) == ("prod", 1, 2,
                                                                             "better auc")
    assert move.at.endswith("+00:00")
    assert events[4].old_version == 2 and events[4].reason == "rollback"


def test_archive_tags_description(reg: Registry, bundle: Path) -> None:
    reg.register(bundle)
    reg.register(bundle)
    reg.set_alias("fraud", "prod", 2)
    with pytest.raises(InvalidInput, match="alias"):
        reg.archive("fraud/2")
    reg.set_alias("fraud", "prod", 1)
    assert reg.archive("fraud/2", reason="bad").status == "archived"
    assert reg.resolve("fraud").version == 1
    with pytest.raises(InvalidInput, match="archived"):
        reg.set_alias("fraud", "canary", 2)
    reg.delete_alias("fraud", "prod")
    reg.archive("fraud")
    with pytest.raises(ModelNotFound, match="no ready version"):
        reg.resolve("fraud")
    assert reg.resolve("fraud/2").status == "archived"
    assert reg.history("fraud")[-1].kind == "archive"
    reg.set_status("fraud/1", "ready")
    assert reg.set_tag("fraud/1", "owner", "ana").tags == {"owner": "ana"}
    assert reg.set_tag("fraud/1", "owner", "bo").tags == {"owner": "bo"}
    assert reg.delete_tag("fraud/1", "owner").tags == {}
    with pytest.raises(InvalidInput, match="no tag"):
        reg.delete_tag("fraud/1", "owner")
    assert reg.set_description("fraud/1", "baseline").description == "baseline"


def test_runs(reg: Registry, bundle: Path) -> None:
    parent = reg.log_run({"lr": 0.1}, {"auc": 0.9}, name="fraud")
    child = reg.log_run({"lr": 0.01}, {"auc": 0.93}, name="fraud", parent_run=parent)
    reg.log_run({}, {}, name="churn")
    mv = reg.register(bundle, run_id=child)
    assert mv.run_id == child
    run = reg.get_run(child)
    assert run.params == {"lr": 0.01} and run.metrics == {"auc": 0.93}
    assert run.parent_run == parent and run.versions == ["fraud/1"]
    assert [r.run_id for r in reg.runs("fraud")] == [parent, child]
    assert len(reg.runs()) == 3
    with pytest.raises(ModelNotFound):
        reg.get_run("nope")
    with pytest.raises(InvalidInput, match="parent run"):
        reg.log_run({}, {}, parent_run="nope")
    with pytest.raises(ModelNotFound):
        reg.register(bundle, run_id="nope")
    with pytest.raises(InvalidInput, match="JSON"):
        reg.log_run({"f": object()}, {})


def test_corruption_detected_on_load_and_by_verify(reg: Registry, bundle: Path) -> None:
    mv = reg.register(bundle)
    assert reg.verify() == []
    corrupt(mv.path / "model.onnx")
    with pytest.raises(InvalidInput, match=r"artifact model\.onnx of fraud/1 does not match its "
                                           r"sha256 .*mlserve registry verify"):
        reg.open("fraud/1")
    with pytest.raises(InvalidInput, match=r"model\.onnx"):
        mv.verify()
    problems = reg.verify()
    assert problems and all("model.onnx" in p for p in problems)
    assert any("fraud/1" in p for p in reg.verify(repair=True))


def test_loaders_refuse_a_manifest_that_differs_from_the_registry(reg: Registry,
                                                                  bundle: Path) -> None:
    """Engine.from_registry (and the server, and batch jobs) compare mlserve.json with the
    registered manifest: artifact checksums alone cannot catch a changed mlserve.json."""
    from mlserve.bundle import ModelBundle
    from mlserve.engine import Engine

    mv = reg.register(bundle)
    # Unchanged: the comparison passes (this fake bundle then fails for lack of a plan).
    with pytest.raises(InvalidInput, match="no 'preprocessing' plan"):
        Engine.from_registry("fraud/1", registry=reg)
    manifest = json.loads((mv.path / "mlserve.json").read_text())
    manifest["metrics"]["roc_auc"] = 0.99  # the artifacts still match their sha256s
    os.chmod(mv.path / "mlserve.json", 0o644)
    (mv.path / "mlserve.json").write_text(json.dumps(manifest))
    for load in (lambda: ModelBundle.load(mv.path, registered=mv.manifest),
                 lambda: Engine.from_registry("fraud/1", registry=reg)):
        with pytest.raises(InvalidInput, match=r"differs from the registry's record.*--repair"):
            load()


def test_read_only_registry_reads_and_refuses_changes(reg: Registry, bundle: Path,
                                                      tmp_path: Path) -> None:
    reg.register(bundle)
    reg.set_alias("fraud", "champion", 1)
    ro = Registry(reg.root, read_only=True)
    assert ro.read_only and not reg.read_only
    assert ro.resolve("fraud@champion").version == 1
    assert ro.open("fraud").ref == "fraud/1"  # checksums verified
    assert [m.name for m in ro.list_models()] == ["fraud"] and ro.verify() == []
    for change in (lambda: ro.register(bundle), lambda: ro.set_alias("fraud", "x", 1),
                   lambda: ro.set_tag("fraud/1", "k", "v"), lambda: ro.gc(),
                   lambda: ro.verify(repair=True)):
        with pytest.raises(InvalidInput, match="is read-only"):
            change()
    with pytest.raises(InvalidInput, match="no registry at"):
        Registry(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()


def _on_read_only_mount(source: Path, mount: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` (with ``Registry`` imported and ``ROOT`` the mount) in a process that sees
    ``source`` bind-mounted read-only at ``mount``."""
    script = f"from mlserve.registry import Registry\nROOT = {str(mount)!r}\n{code}"
    done = subprocess.run([*read_only_mount_prefix(source, mount), sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.skipif(not can_mount_read_only(), reason=SKIP_REASON)
def test_registry_on_a_read_only_mount_opens_read_only(reg: Registry, bundle: Path,
                                                        tmp_path: Path) -> None:
    """A registry volume mounted read-only (a serving container's): SQLite may not create the
    WAL's -shm file there; the registry notices and reads it as a snapshot."""
    reg.register(bundle)
    reg.set_alias("fraud", "champion", 1)
    done = _on_read_only_mount(reg.root, tmp_path / "mnt", (
        "r = Registry(ROOT)\n"
        "print(r.read_only, r.open('fraud@champion').ref, r.verify())\n"
        "try:\n    r.set_alias('fraud', 'x', 1)\nexcept Exception as e:\n"
        "    print(type(e).__name__)\n"))
    assert done.stdout.split("\n")[:2] == ["True fraud/1 []", "InvalidInput"]


@pytest.mark.skipif(not can_mount_read_only(), reason=SKIP_REASON)
def test_read_only_copy_with_commits_in_its_wal_is_refused(reg: Registry, bundle: Path,
                                                           tmp_path: Path) -> None:
    """A copy of registry.db and its WAL without the -shm file, mounted read-only: SQLite can
    read only the database file there, which misses the WAL's commits; refused, not stale."""
    import shutil
    import sqlite3

    reg.register(bundle)
    writer = sqlite3.connect(reg.root / "registry.db")  # keeps the WAL from a checkpoint
    writer.execute("SELECT count(*) FROM versions").fetchall()
    reg.set_alias("fraud", "champion", 1)  # committed to the WAL, not the database file
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("registry.db", "registry.db-wal"):
        shutil.copy(reg.root / name, copy / name)
    writer.close()
    assert (copy / "registry.db-wal").stat().st_size > 0
    done = _on_read_only_mount(copy, tmp_path / "mnt", (
        "try:\n    print(Registry(ROOT).resolve('fraud@champion').ref)\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"))
    assert done.stdout.startswith("InvalidInput") and "commits in registry.db-wal" in \
        done.stdout, done.stdout


def test_read_only_refuses_before_writing(reg: Registry, bundle: Path, tmp_path: Path) -> None:
    reg.register(bundle)
    blobs = sorted(p.name for p in (reg.root / "blobs").rglob("*"))
    ro = Registry(reg.root, read_only=True)
    (tmp_path / "engine.plan").write_bytes(b"new bytes")
    with pytest.raises(InvalidInput, match="is read-only"):
        ro.add_artifact("fraud/1", tmp_path / "engine.plan", file="model.plan")
    tar = reg.export("fraud/1", tmp_path / "f.tar")
    with pytest.raises(InvalidInput, match="is read-only"):
        ro.import_bundle(tar)
    assert sorted(p.name for p in (reg.root / "blobs").rglob("*")) == blobs
    assert reg.verify() == []


def test_missing_version_file_detected(reg: Registry, bundle: Path) -> None:
    mv = reg.register(bundle)
    os.chmod(mv.path, 0o755)
    (mv.path / "model.pt").unlink()
    with pytest.raises(InvalidInput, match=r"artifact model\.pt of fraud/1 is missing"):
        reg.open("fraud")
    assert any("model.pt is missing" in p for p in reg.verify())


def test_verify_repair_removes_leftovers(reg: Registry, bundle: Path) -> None:
    reg.register(bundle)
    root = reg.root
    (root / "tmp" / "999999999-dead.stage").mkdir()
    orphan = root / "models" / "fraud" / "2"
    orphan.mkdir()
    (orphan / "mlserve.json").write_text("{}")
    os.chmod(orphan, 0o555)
    stray = root / "blobs" / "ff" / ("f" * 64)
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    live = root / "tmp" / f"{os.getpid()}-live.blob"
    live.write_bytes(b"in progress")
    problems = reg.verify()
    assert len(problems) == 3, problems
    with pytest.raises(ModelNotFound):
        reg.resolve("fraud/2")
    assert len(reg.verify(repair=True)) == 3
    assert reg.verify() == []
    assert live.exists() and not orphan.exists() and not stray.exists()
    # The next registration reuses number 2 over any uncommitted directory.
    assert reg.register(bundle).version == 2
    assert reg.gc() == []


def test_export_import_roundtrip(reg: Registry, bundle: Path, tmp_path: Path) -> None:
    reg.register(bundle)
    tar_path = reg.export("fraud/1", tmp_path / "out" / "fraud.tar")
    with tarfile.open(tar_path) as tar:
        assert sorted(tar.getnames()) == ["mlserve.json", "model.onnx", "model.pt"]
    other = Registry(tmp_path / "other")
    mv = other.import_bundle(tar_path, name="fraud-copy")
    assert mv.ref == "fraud-copy/1" and mv.lineage["imported"] is True
    assert (mv.path / "model.pt").read_bytes() == (bundle / "model.pt").read_bytes()
    other.open("fraud-copy")
    assert other.verify() == []
    assert reg.import_bundle(tar_path).ref == "fraud/2"


def test_export_of_identical_artifacts_imports_back(reg: Registry, tmp_path: Path) -> None:
    """Two artifacts with the same bytes are one blob, hardlinked twice in the version's
    directory: the export still holds two regular files, which import accepts."""
    src = make_bundle(tmp_path / "twins")
    data = (src / "model.onnx").read_bytes()
    (src / "copy.onnx").write_bytes(data)
    manifest = json.loads((src / "mlserve.json").read_text())
    manifest["artifacts"]["copy.onnx"] = dict(manifest["artifacts"]["model.onnx"])
    (src / "mlserve.json").write_text(json.dumps(manifest))
    mv = reg.register(src)
    assert os.path.samefile(mv.path / "copy.onnx", mv.path / "model.onnx")
    tar_path = reg.export(mv.ref, tmp_path / "twins.tar")
    with tarfile.open(tar_path) as tar:
        assert all(m.isfile() for m in tar.getmembers())
    back = Registry(tmp_path / "other").import_bundle(tar_path)
    assert (back.path / "copy.onnx").read_bytes() == data


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "hardlink"])
def test_import_rejects_unsafe_tars(reg: Registry, tmp_path: Path, kind: str) -> None:
    if kind == "absolute":
        info = tarfile.TarInfo("/etc/evil")
        info.size = 1
    elif kind == "dotdot":
        info = tarfile.TarInfo("../evil")
        info.size = 1
    else:
        info = tarfile.TarInfo("model.onnx")
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
    tar_path = _tar_with(tmp_path, info, b"x")
    with pytest.raises(InvalidInput, match="refusing"):
        reg.import_bundle(tar_path)
    assert not (tmp_path / "evil").exists()
    assert reg.verify() == []


def test_import_rejects_non_tar(reg: Registry, tmp_path: Path) -> None:
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"not a tar")
    with pytest.raises(InvalidInput, match="tar"):
        reg.import_bundle(bad)


def test_model_version_is_frozen(reg: Registry, bundle: Path) -> None:
    mv = reg.register(bundle)
    assert isinstance(mv, ModelVersion)
    with pytest.raises(AttributeError):
        mv.version = 3  # type: ignore[misc]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlserve")
    registry_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return registry_cli.run(parser.parse_args(argv))


def test_cli(reg: Registry, bundle: Path, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    reg.register(bundle)
    reg.register(bundle)
    r = str(reg.root)
    assert _cli(["registry", "--registry", r, "list"]) == 0
    assert "fraud" in capsys.readouterr().out
    assert _cli(["registry", "list", "--registry", r, "fraud"]) == 0
    assert _cli(["registry", "--registry", r, "alias", "fraud", "1", "prod",
                 "--reason", "go live"]) == 0
    assert "fraud@prod -> 1" in capsys.readouterr().out
    assert _cli(["registry", "--registry", r, "show", "fraud@prod"]) == 0
    out = capsys.readouterr().out
    assert "fraud/1" in out and "model.onnx" in out and "prod" in out
    assert _cli(["registry", "--registry", r, "history", "fraud"]) == 0
    assert "go live" in capsys.readouterr().out
    assert _cli(["registry", "--registry", r, "tag", "fraud/2", "owner", "ana"]) == 0
    assert reg.resolve("fraud/2").tags == {"owner": "ana"}
    assert _cli(["registry", "--registry", r, "archive", "fraud/2"]) == 0
    assert reg.resolve("fraud").version == 1
    tar_path = str(tmp_path / "f.tar")
    assert _cli(["registry", "--registry", r, "export", "fraud/1", tar_path]) == 0
    assert _cli(["registry", "--registry", r, "import", tar_path, "--name", "copy"]) == 0
    assert reg.resolve("copy").version == 1
    assert _cli(["registry", "--registry", r, "verify"]) == 0
    assert "consistent" in capsys.readouterr().out
    leftover = reg.root / "blobs" / "00" / ("00" * 32)  # a blob no version references
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x")
    assert _cli(["registry", "--registry", r, "gc"]) == 0
    out = capsys.readouterr().out
    assert "1 entry removed" in out and not leftover.exists()
    corrupt(reg.resolve("fraud/1").path / "model.pt")
    assert _cli(["registry", "--registry", r, "verify"]) == 1
    assert "--repair" in capsys.readouterr().err
    assert _cli(["registry", "--registry", r, "show", "nope"]) == 1
    assert "registered models" in capsys.readouterr().err
    assert _cli(["registry", "--registry", r, "show", "a/b/c"]) == 1
    assert "malformed" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["list", "show", "alias", "history", "tag", "archive", "verify",
                                 "gc", "copy", "export", "import"])
def test_cli_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _cli(["registry", sub, "--help"])
    assert exc.value.code == 0
    assert "--registry" in capsys.readouterr().out


def fill(reg: Registry, tmp_path: Path) -> None:
    """A registry with some of everything: two models, runs (one a child), versions with
    tags, a description, an archived one, an added artifact, aliases and their moves."""
    parent = reg.log_run({"lr": 0.1}, {"auc": 0.9}, name="fraud")
    child = reg.log_run({"lr": 0.01}, {"auc": 0.93}, name="fraud", parent_run=parent)
    reg.register(make_bundle(tmp_path / "f1"), run_id=parent, tags={"team": "risk"})
    reg.register(make_bundle(tmp_path / "f2", seed=b"x"), run_id=child, description="better")
    reg.register(make_bundle(tmp_path / "c1", name="churn", seed=b"c"))
    reg.set_alias("fraud", "champion", 1)
    reg.set_alias("fraud", "champion", 2, reason="better auc")
    reg.archive("fraud/1", reason="superseded")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine-bytes")
    reg.add_artifact("fraud/2", plan, file="model.plan", info={"gpu": "H100"})


def contents(reg: Registry) -> dict[str, Any]:
    """Everything a registry records, but where its files are."""
    def record(mv: ModelVersion) -> dict[str, Any]:
        return {k: v for k, v in mv.__dict__.items() if k != "path"}

    return {
        "models": reg.list_models(),
        "versions": {m.name: [record(v) for v in reg.list_versions(m.name)]
                     for m in reg.list_models()},
        "history": {m.name: reg.history(m.name) for m in reg.list_models()},
        "runs": reg.runs(),
    }


def test_copy_to_an_empty_registry_moves_everything(reg: Registry, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fill(reg, tmp_path)
    ticks: list[tuple[int, int]] = []
    copy, counts = reg.copy_to(tmp_path / "copy", progress=lambda d, t: ticks.append((d, t)))
    assert contents(copy) == contents(reg)
    assert counts == {"models": 2, "versions": 3, "runs": 2, "events": 7, "blobs": 7,
                      "bytes": sum(int(e["bytes"]) for e in {
                          e["sha256"]: e for v in reg.list_versions("fraud")
                          + reg.list_versions("churn") for e in v.artifacts.values()}.values())}
    assert ticks[-1][0] == ticks[-1][1] == counts["bytes"]
    assert copy.verify() == []
    for ref in ("fraud/1", "fraud/2", "churn/1"):
        opened = copy.open(ref)
        for file in opened.artifacts:
            assert (opened.path / file).read_bytes() == (reg.resolve(ref).path / file).read_bytes()
    # a new version in the copy continues the numbering and the history
    assert copy.register(make_bundle(tmp_path / "f3", seed=b"y")).version == 3
    assert copy.history("fraud")[-1].kind == "register"

    with pytest.raises(InvalidInput, match="is not empty"):
        reg.copy_to(tmp_path / "copy")
    with pytest.raises(InvalidInput, match="is inside the registry"):
        reg.copy_to(reg.root)
    with pytest.raises(InvalidInput, match="onto itself"):
        reg.copy_to(Registry(reg.root))
    project = tmp_path / "project"  # not a registry: refused, nothing made there
    project.mkdir()
    (project / "train.py").write_text("")
    with pytest.raises(InvalidInput, match=r"already holds train\.py"):
        reg.copy_to(project)
    assert sorted(p.name for p in project.iterdir()) == ["train.py"]
    with pytest.raises(InvalidInput, match="is not a directory"):
        reg.copy_to(project / "train.py")
    with pytest.raises(InvalidInput, match="is empty: nothing to copy"):
        Registry(tmp_path / "typo").copy_to(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # refused before anything was made there
    with pytest.raises(InvalidInput, match="is inside the registry"):
        reg.copy_to(reg.root / "models" / "backup")
    models_only = tmp_path / "models-only"
    (models_only / "models" / "resnet").mkdir(parents=True)
    with pytest.raises(InvalidInput, match=r"but no registry\.db"):
        reg.copy_to(models_only)
    other_app = tmp_path / "other-app"
    other_app.mkdir()
    with sqlite3.connect(other_app / "registry.db") as conn:
        conn.execute("CREATE TABLE images (x)")
    with pytest.raises(InvalidInput, match="is not a registry's database"):
        reg.copy_to(other_app)
    (tmp_path / "dangling").symlink_to(tmp_path / "no-such-dir")
    with pytest.raises(InvalidInput, match="dangling symbolic link"):
        reg.copy_to(tmp_path / "dangling")
    assert _cli(["registry", "--registry", str(reg.root), "copy", "--to",
                 str(tmp_path / "cli-copy"), "--no-progress"]) == 0
    assert "copied 2 model(s), 3 version(s), 2 run(s)" in capsys.readouterr().out
    assert contents(Registry(tmp_path / "cli-copy")) == contents(reg)
