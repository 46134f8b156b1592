"""Registry.add_artifact: a file added to an existing version (e.g. a TensorRT engine made by
`mlserve build-engine`) is stored content-addressed, checksummed, immutable, in the version's
manifest and directory at once, and recorded in the history."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from mlserve.errors import InvalidInput
from mlserve.registry import Registry
from test_registry import make_bundle


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "reg")
    registry.register(make_bundle(tmp_path / "bundle"))
    return registry


def test_added_artifact_is_part_of_the_version(reg: Registry, tmp_path: Path) -> None:
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"serialized engine")
    version = reg.add_artifact("fraud", engine, file="model.plan",
                               info={"kind": "tensorrt", "gpu": "NVIDIA H100", "sha256": "x"},
                               reason="built here")
    entry = version.artifacts["model.plan"]
    assert entry["sha256"] == hashlib.sha256(b"serialized engine").hexdigest()  # not info's
    assert entry["bytes"] == 17 and entry["gpu"] == "NVIDIA H100"
    assert (version.path / "model.plan").read_bytes() == b"serialized engine"
    assert not os.access(version.path / "model.plan", os.W_OK) or os.geteuid() == 0
    assert oct(os.stat(version.path).st_mode & 0o777) == "0o555"  # read-only again
    reg.open("fraud/1")  # the manifest on disk is the registered one, checksums match
    assert reg.verify() == []
    assert reg.history("fraud")[-1].kind == "artifact_add"
    assert "built here" in reg.history("fraud")[-1].reason
    # The original artifacts are untouched, the version number too.
    assert version.version == 1 and {"model.onnx", "model.pt"} <= set(version.artifacts)


def test_artifacts_are_immutable_and_names_checked(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"1")
    reg.add_artifact("fraud/1", src, file="engines/a100/model.plan")
    assert (reg.resolve("fraud").path / "engines" / "a100" / "model.plan").is_file()
    with pytest.raises(InvalidInput, match="immutable"):
        reg.add_artifact("fraud/1", src, file="model.onnx")
    with pytest.raises(InvalidInput, match="relative path"):
        reg.add_artifact("fraud/1", src, file="../escape.plan")
    with pytest.raises(InvalidInput, match="not a file"):
        reg.add_artifact("fraud/1", tmp_path / "missing", file="x.plan")
    reg.register(make_bundle(tmp_path / "b2", seed=b"v"))
    reg.archive("fraud/1")
    with pytest.raises(InvalidInput, match="archived"):
        reg.add_artifact("fraud/1", src, file="late.plan")
    assert reg.verify() == []
