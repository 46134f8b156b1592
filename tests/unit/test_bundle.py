"""ModelBundle loading/verification and Engine.from_bundle on a real bundle directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlserve import Engine, FeaturePlan
from mlserve.bundle import MANIFEST, ModelBundle, sha256_file
from mlserve.errors import InvalidInput
from onnx import TensorProto, helper, numpy_helper

PLAN: dict[str, Any] = {
    "features": [
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [{"op": "impute", "value": 1.0}, {"op": "log1p"}],
        },
        {
            "name": "channel",
            "kind": "categorical",
            "ops": [{"op": "onehot", "vocabulary": ["a", "b"]}],
        },
    ]
}


def write_bundle(root: Path, weights: np.ndarray) -> Path:
    """A bundle with a linear ONNX scorer over the plan's 4 outputs."""
    root.mkdir(parents=True, exist_ok=True)
    d = FeaturePlan(PLAN).f_out
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["probability"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(weights.reshape(d, 1).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "model.onnx"))
    manifest = {
        "format_version": 1,
        "name": "linear",
        "version": None,
        "task": "regression",
        "preprocessing": PLAN,
        "artifacts": {
            "model.onnx": {
                "sha256": sha256_file(root / "model.onnx"),
                "bytes": (root / "model.onnx").stat().st_size,
            }
        },
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def test_from_bundle_predicts_like_the_model_on_the_plan_output(tmp_path: Path) -> None:
    w = np.arange(1, 5, dtype=np.float32)
    path = write_bundle(tmp_path / "b", w)
    x = np.array([[np.nan, 0], [3.0, 1], [0.5, 7]], np.float32)
    with Engine.from_bundle(path) as engine:
        got = engine.predict(x)
        assert engine.bundle.name == "linear"
    z = FeaturePlan(PLAN).transform(x)
    sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": z})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_changed_artifact_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", np.ones(4, np.float32))
    with open(path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InvalidInput, match=r"model\.onnx.*sha256"):
        ModelBundle.load(path)
    with pytest.raises(InvalidInput, match="sha256"):
        Engine.from_bundle(path)


def test_missing_manifest_artifact_and_backend_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no mlserve\.json"):
        ModelBundle.load(tmp_path)
    path = write_bundle(tmp_path / "b", np.ones(4, np.float32))
    bundle = ModelBundle.load(path)
    with pytest.raises(InvalidInput, match=r"no artifact .model\.pt."):
        bundle.model_for("torch")
    with pytest.raises(InvalidInput, match="cannot run a bundle"):
        bundle.model_for("noop")
    (path / "model.onnx").unlink()
    with pytest.raises(InvalidInput, match="missing"):
        ModelBundle.load(path)


def test_from_registry_serves_a_registered_version_by_alias(tmp_path: Path) -> None:
    from mlserve.registry import Registry

    registry = Registry(tmp_path / "registry")
    first = registry.register(write_bundle(tmp_path / "b1", np.ones(4, np.float32)))
    second = registry.register(write_bundle(tmp_path / "b2", np.full(4, 2.0, np.float32)))
    assert (first.version, second.version) == (1, 2)
    registry.set_alias("linear", "champion", 1, reason="test")
    x = np.array([[2.0, 1]], np.float32)
    z = FeaturePlan(PLAN).transform(x)
    with Engine.from_registry("linear@champion", registry=registry) as engine:
        np.testing.assert_allclose(engine.predict(x)[:, 0], z.sum(1), rtol=1e-6)
        assert engine.version == "1"
    with Engine.from_registry("linear", registry=registry.root) as engine:  # latest: version 2
        np.testing.assert_allclose(engine.predict(x)[:, 0], 2 * z.sum(1), rtol=1e-6)
