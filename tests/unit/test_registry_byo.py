"""Bring your own model: `mlserve registry add` wraps an ONNX/TorchScript file in a bundle that
serves exactly like a trained one."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mlserve import Engine, FeaturePlan
from mlserve.errors import InvalidInput
from mlserve.registry import Registry
from mlserve.registry.byo import bundle_from_model, parse_inputs
from onnx import TensorProto, helper, numpy_helper

W = np.array([[1.0], [-2.0], [0.5]], np.float32)


def onnx_model(path: Path, width: int = 3) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "byo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(np.resize(W, (width, 1)).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_cli_add_onnx_identity_plan_serves_the_model(tmp_path: Path) -> None:
    model = onnx_model(tmp_path / "m.onnx")
    root = tmp_path / "registry"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlserve.cli",
            "registry",
            "--registry",
            str(root),
            "add",
            "byo",
            "--onnx",
            str(model),
            "--inputs",
            "a:float32,b:float32,c:float32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    version = Registry(root).resolve("byo")
    assert version.lineage["imported"] is True
    assert [i["name"] for i in version.manifest["signature"]["inputs"]] == ["a", "b", "c"]
    x = np.array([[1, 2, 3], [0.5, 0, -1]], np.float32)
    with Engine.from_registry("byo", registry=root) as engine:
        np.testing.assert_allclose(engine.predict(x), x @ W, rtol=1e-6)


def test_torchscript_with_a_plan(tmp_path: Path) -> None:
    plan = {
        "features": [
            {"name": "amount", "kind": "numeric", "ops": [{"op": "impute", "value": 0.0}]},
            {"name": "channel", "kind": "categorical", "ops": [{"op": "onehot", "size": 1}]},
        ]
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    module = torch.nn.Linear(3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(tmp_path / "m.pt"))
    bundle = bundle_from_model(
        tmp_path / "b",
        name="lin",
        torchscript=tmp_path / "m.pt",
        preprocessing=tmp_path / "plan.json",
    )
    registry = Registry(tmp_path / "registry")
    registry.register(bundle)
    x = np.array([[np.nan, 0], [2.0, 5]], np.float32)
    with Engine.from_registry("lin", registry=registry, backend="torch") as engine:
        got = engine.predict(x)
    with torch.no_grad():
        want = module(torch.from_numpy(FeaturePlan(plan).transform(x))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bad_byo_inputs_are_clear(tmp_path: Path) -> None:
    model = onnx_model(tmp_path / "m.onnx")
    with pytest.raises(InvalidInput, match="takes 3 input columns but the plan produces 2"):
        bundle_from_model(tmp_path / "b", name="x", onnx=model, input_width=2)
    with pytest.raises(InvalidInput, match="exactly one model"):
        bundle_from_model(tmp_path / "c", name="x")
    with pytest.raises(InvalidInput, match="NAME:DTYPE"):
        parse_inputs("a:complex64")
    with pytest.raises(InvalidInput, match="cannot tell how many inputs"):
        bundle_from_model(tmp_path / "d", name="x", torchscript=model)
    # The model's own input width is enough for an identity plan.
    assert bundle_from_model(tmp_path / "e", name="x", onnx=model).is_dir()


def test_cli_add_records_unknown_category_policies(tmp_path: Path) -> None:
    plan = {
        "features": [
            {"name": "amount", "kind": "numeric", "ops": []},
            {"name": "channel", "kind": "categorical", "ops": [{"op": "onehot", "size": 1}]},
        ]
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    model = onnx_model(tmp_path / "m.onnx")
    root = tmp_path / "registry"
    args = [sys.executable, "-m", "mlserve.cli", "registry", "--registry", str(root), "add",
            "byo", "--onnx", str(model), "--preprocessing", str(tmp_path / "plan.json"),
            "--unknown-category", "missing", "--unknown-category-feature", "channel:error"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    inputs = Registry(root).resolve("byo").manifest["signature"]["inputs"]
    assert [i.get("unknown") for i in inputs] == [None, "error"]

    hashed = {"features": [{"name": "m", "kind": "categorical",
                            "ops": [{"op": "hash_bucket", "n": 3}]}]}
    with pytest.raises(InvalidInput, match="hash_bucket"):
        bundle_from_model(tmp_path / "h", name="h", onnx=model, preprocessing=hashed,
                          unknown_category="error")
    with pytest.raises(InvalidInput, match="names amount, not categorical"):
        bundle_from_model(tmp_path / "a", name="a", onnx=model, preprocessing=plan,
                          unknown_category_features={"amount": "error"})
    assert not (tmp_path / "h").exists() and not (tmp_path / "a").exists()
