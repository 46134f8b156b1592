"""The registry across real processes: SIGKILL mid-registration leaves the whole version or
nothing, and concurrent registrations get distinct version numbers.

Children are ``python -c`` processes; ``MLSERVE_REGISTRY_TEST_STEP_DELAY_S`` (a test hook in
``mlserve.registry._settings``) slows registration so kills land between its steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlserve.errors import InvalidInput
from mlserve.registry import Registry

REGISTER_LOOP = """
import sys
from mlserve.registry import Registry
reg = Registry(sys.argv[1])
while True:
    reg.register(sys.argv[2])
"""

REGISTER_ONCE = """
import os, sys, time
from mlserve.registry import Registry
reg = Registry(sys.argv[1])
while not os.path.exists(sys.argv[3]):
    time.sleep(0.002)
print(reg.register(sys.argv[2]).version)
"""


def make_bundle(path: Path, artifact_bytes: int) -> Path:
    path.mkdir(parents=True)
    rng = random.Random(0)
    artifacts = {}
    for file in ("model.onnx", "model.pt"):
        data = rng.randbytes(artifact_bytes)
        (path / file).write_bytes(data)
        artifacts[file] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"format_version": 1, "name": "fraud", "version": None, "artifacts": artifacts,
                "metrics": {}, "params": {}, "lineage": {}}
    (path / "mlserve.json").write_text(json.dumps(manifest))
    return path


def child_env(delay_s: float) -> dict[str, str]:
    return dict(os.environ, MLSERVE_REGISTRY_TEST_STEP_DELAY_S=str(delay_s))


def check_visible_versions(reg: Registry) -> list[int]:
    versions = [mv.version for mv in reg.list_versions("fraud")] if reg.list_models() else []
    assert versions == list(range(1, len(versions) + 1))
    for v in versions:
        mv = reg.open(f"fraud/{v}")
        assert mv.manifest["version"] == v
    return versions


def test_sigkill_mid_registration_leaves_whole_versions(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = Registry(root)
    bundle = make_bundle(tmp_path / "bundle", artifact_bytes=256 * 1024)
    rng = random.Random(1234)
    seen: list[int] = []
    interrupted = 0
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", REGISTER_LOOP, str(root), str(bundle)],
            env=child_env(rng.uniform(0.005, 0.03)))
        time.sleep(rng.uniform(0.15, 0.6))
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        seen = check_visible_versions(reg)
        problems = reg.verify()
        leftovers = ("leftover temp entry", "uncommitted version directory", "unreferenced blob")
        assert all(p.startswith(leftovers) for p in problems), problems
        interrupted += bool(problems)
    assert interrupted >= 2, "kills never landed mid-registration; the test proves nothing"
    assert len(seen) >= 2, "children never finished a registration"
    reg.verify(repair=True)
    assert reg.verify() == []
    assert check_visible_versions(reg) == seen
    assert not [p for p in (root / "tmp").iterdir()]
    # Registration still works after all those crashes.
    assert reg.register(bundle).version == len(seen) + 1
    assert reg.verify() == []


def test_sigkill_mid_add_artifact_is_repaired_to_the_committed_version(tmp_path: Path) -> None:
    """An add_artifact killed after its file writes and before its commit leaves the version's
    mlserve.json ahead of the database: open() refuses the version (it differs from the
    registered manifest) until verify(repair=True) puts the committed manifest back and removes
    the uncommitted file; the artifact can then be added again."""
    root = tmp_path / "reg"
    reg = Registry(root)
    reg.register(make_bundle(tmp_path / "bundle", artifact_bytes=1024))
    reg.set_alias("fraud", "champion", 1)
    extra = tmp_path / "engine.plan"
    extra.write_bytes(b"engine bytes")
    code = (f"from mlserve.registry import Registry; Registry({str(root)!r}).add_artifact("
            f"'fraud/1', {str(extra)!r}, file='model.plan')")
    child = subprocess.Popen([sys.executable, "-c", code], env=child_env(30.0))
    vdir = reg.resolve("fraud/1").path
    deadline = time.monotonic() + 30
    while not (vdir / "model.plan").exists():  # the files are written; the commit waits
        assert child.poll() is None and time.monotonic() < deadline, "child never got there"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    reg = Registry(root)
    assert list(reg.resolve("fraud@champion").artifacts) == ["model.onnx", "model.pt"]
    with pytest.raises(InvalidInput, match=r"differs from the registered manifest.*--repair"):
        reg.open("fraud@champion")
    repaired = reg.verify(repair=True)
    assert any("mlserve.json differs" in p and "(repaired" in p for p in repaired), repaired
    assert reg.verify() == []
    assert sorted(os.listdir(vdir)) == ["mlserve.json", "model.onnx", "model.pt"]
    assert reg.open("fraud@champion").version == 1
    reg.add_artifact("fraud/1", extra, file="model.plan")
    assert "model.plan" in reg.open("fraud/1").artifacts and reg.verify() == []


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    Registry(root)
    bundle = make_bundle(tmp_path / "bundle", artifact_bytes=4096)
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", REGISTER_ONCE, str(root), str(bundle), str(go)],
                         env=child_env(0.02), stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [c.communicate(timeout=60)[0] for c in children]
    assert [c.returncode for c in children] == [0, 0, 0, 0]
    assert sorted(int(o.strip()) for o in outputs) == [1, 2, 3, 4]
    reg = Registry(root)
    assert check_visible_versions(reg) == [1, 2, 3, 4]
    assert reg.verify() == []
    # Versions are numbered and committed under one lock: the history is in version order.
    assert [e.new_version for e in reg.history("fraud")] == [1, 2, 3, 4]
