"""The Engine's model backends: onnxruntime, TorchScript, and the core's noop/rowsum.

Each backend's results must equal running the same model directly (an onnxruntime session, the
torch module) on ``plan.transform(x)``; model problems are reported as InvalidInput when the
Engine is created, not at the first request. Models come from the session fixtures of
tests/conftest.py (an MLP exported from torch with the dynamo exporter, small onnx.helper graphs,
torch.jit.script/trace files).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlserve import BatcherConfig, Engine, FeaturePlan
from mlserve.errors import InvalidInput

WAIT_S = 30.0
RTOL = 1e-5
ATOL = 1e-6

MakeEngine = Callable[..., Engine]
Rows = Callable[[np.random.Generator, int], np.ndarray]


def ort_direct(path: Path, normalized: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: normalized})[0])


def torch_direct(module: Any, normalized: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.asarray(module(torch.from_numpy(normalized.copy())).float().numpy())


def run_all_ways(engine: Engine, x: np.ndarray) -> list[np.ndarray]:
    """The results of predict, submit and apredict for the same input."""

    async def apredict() -> np.ndarray:
        return await asyncio.wait_for(engine.apredict(x), WAIT_S)

    return [engine.predict(x), engine.submit(x).result(timeout=WAIT_S), asyncio.run(apredict())]


# ---- onnxruntime ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_onnxruntime_matches_a_direct_session(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    onnx_mlp_path: Path,
    n: int,
) -> None:
    engine = make_engine(small_plan, onnx_mlp_path, backend="onnxruntime", max_queue_delay_us=0)
    x = small_rows(rng, n)
    want = ort_direct(onnx_mlp_path, small_plan.transform(x))
    assert want.shape == (n, 3)
    for y in run_all_ways(engine, x):
        assert y.shape == (n, 3)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_onnxruntime_matches_torch_and_batches_many_requests(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    onnx_mlp_path: Path,
    torch_mlp: Any,
) -> None:
    engine = make_engine(
        small_plan,
        onnx_mlp_path,
        backend="onnxruntime",
        max_batch_size=32,
        instance_count=2,
        max_queue_delay_us=0,
    )
    inputs = [small_rows(rng, int(rng.integers(1, 9))) for _ in range(40)]
    engine.hold_batching(len(inputs))
    futures = [engine.submit(x) for x in inputs]
    for x, fut in zip(inputs, futures, strict=True):
        normalized = small_plan.transform(x)
        y = fut.result(timeout=WAIT_S)
        np.testing.assert_allclose(y, ort_direct(onnx_mlp_path, normalized), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(y, torch_direct(torch_mlp, normalized), rtol=1e-4, atol=1e-5)
    assert max(engine.stats()["batch_sizes"]) > 8  # requests really were batched together


def test_onnxruntime_model_given_as_bytes_or_default_backend(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    onnx_mlp_path: Path,
) -> None:
    x = small_rows(rng, 5)
    want = ort_direct(onnx_mlp_path, small_plan.transform(x))
    from_bytes = make_engine(
        small_plan, onnx_mlp_path.read_bytes(), backend="onnxruntime", max_queue_delay_us=0
    )
    np.testing.assert_allclose(from_bytes.predict(x), want, rtol=RTOL, atol=ATOL)
    default = make_engine(small_plan, onnx_mlp_path, max_queue_delay_us=0)  # a path: onnxruntime
    assert default.backend == "onnxruntime"
    np.testing.assert_allclose(default.predict(x), want, rtol=RTOL, atol=ATOL)


def test_onnxruntime_1d_output_keeps_its_rank(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    onnx_rowsum_path: Path,
) -> None:
    engine = make_engine(small_plan, onnx_rowsum_path, backend="onnxruntime", max_queue_delay_us=0)
    for n in (1, 6):
        x = small_rows(rng, n)
        want = ort_direct(onnx_rowsum_path, small_plan.transform(x))
        assert want.shape == (n,)
        for y in run_all_ways(engine, x):
            assert y.shape == (n,)
            np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_onnxruntime_wrong_input_width_is_invalid_at_creation(
    small_plan: FeaturePlan, onnx_wrong_width_path: Path
) -> None:
    with pytest.raises(InvalidInput, match=str(small_plan.f_out)):
        Engine(small_plan, onnx_wrong_width_path, backend="onnxruntime")


def test_onnxruntime_fits_a_plan_of_its_width(
    make_engine: MakeEngine, onnx_wrong_width_path: Path, small_plan: FeaturePlan
) -> None:
    # The "wrong width" model is right for a plan with one more output column.
    width = small_plan.f_out + 1
    spec = {"features": [{"name": f"c{i}", "kind": "numeric", "ops": []} for i in range(width)]}
    engine = make_engine(spec, onnx_wrong_width_path, backend="onnxruntime", max_queue_delay_us=0)
    x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
    np.testing.assert_allclose(engine.predict(x), ort_direct(onnx_wrong_width_path, x), rtol=RTOL)


# ---- torch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 64])
def test_torch_matches_the_module(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    torchscript_mlp_path: Path,
    torch_mlp: Any,
    n: int,
) -> None:
    engine = make_engine(small_plan, torchscript_mlp_path, backend="torch", max_queue_delay_us=0)
    x = small_rows(rng, n)
    want = torch_direct(torch_mlp, small_plan.transform(x))
    for y in run_all_ways(engine, x):
        assert y.shape == (n, 3)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_torch_batches_many_requests(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    torchscript_mlp_path: Path,
    torch_mlp: Any,
) -> None:
    engine = make_engine(
        small_plan,
        torchscript_mlp_path,
        backend="torch",
        max_batch_size=32,
        instance_count=2,
        max_queue_delay_us=0,
    )
    inputs = [small_rows(rng, int(rng.integers(1, 9))) for _ in range(40)]
    engine.hold_batching(len(inputs))
    futures = [engine.submit(x) for x in inputs]
    for x, fut in zip(inputs, futures, strict=True):
        want = torch_direct(torch_mlp, small_plan.transform(x))
        np.testing.assert_allclose(fut.result(timeout=WAIT_S), want, rtol=RTOL, atol=ATOL)


def test_torch_1d_output_keeps_its_rank(
    make_engine: MakeEngine,
    small_plan: FeaturePlan,
    small_rows: Rows,
    rng: np.random.Generator,
    torchscript_rowsum_path: Path,
    torch_rowsum: Any,
) -> None:
    engine = make_engine(small_plan, torchscript_rowsum_path, backend="torch", max_queue_delay_us=0)
    for n in (1, 5):
        x = small_rows(rng, n)
        want = torch_direct(torch_rowsum, small_plan.transform(x))
        for y in run_all_ways(engine, x):
            assert y.shape == (n,)
            np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


# ---- model and backend errors ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_missing_model_file_is_invalid(
    small_plan: FeaturePlan, tmp_path: Path, backend: str
) -> None:
    missing = tmp_path / "nope" / "model.bin"
    with pytest.raises(InvalidInput, match="does not exist"):
        Engine(small_plan, missing, backend=backend)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_model_file_that_is_not_a_model_is_invalid(
    small_plan: FeaturePlan, tmp_path: Path, backend: str
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a model\x00\x01\x02")
    with pytest.raises(InvalidInput, match=backend):
        Engine(small_plan, junk, backend=backend)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_backend_without_a_model_is_invalid(small_plan: FeaturePlan, backend: str) -> None:
    with pytest.raises(InvalidInput, match=backend):
        Engine(small_plan, None, backend=backend)


def test_unknown_backend_is_invalid(small_plan: FeaturePlan, onnx_mlp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="tensorrt-ish"):
        Engine(small_plan, onnx_mlp_path, backend="tensorrt-ish")


def test_python_backend_needs_a_callable(small_plan: FeaturePlan) -> None:
    with pytest.raises(InvalidInput, match="callable"):
        Engine(small_plan, "not callable", backend="python")


@pytest.mark.parametrize("backend", ["noop", "rowsum"])
def test_core_backends_take_no_model(small_plan: FeaturePlan, backend: str) -> None:
    with pytest.raises(InvalidInput, match=backend):
        Engine(small_plan, lambda b: b, backend=backend)


def test_bad_plan_is_invalid_before_the_model_is_loaded(onnx_mlp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        Engine({"features": [{"name": "a", "kind": "bogus"}]}, onnx_mlp_path)


# ---- core backends and plan sources -----------------------------------------------------------


def test_core_rowsum_and_noop(
    make_engine: MakeEngine, small_plan: FeaturePlan, small_rows: Rows, rng: np.random.Generator
) -> None:
    rowsum = make_engine(small_plan, backend="rowsum", max_queue_delay_us=0)
    noop = make_engine(small_plan, backend="noop", max_queue_delay_us=0)
    x = small_rows(rng, 9)
    want = small_plan.transform(x).astype(np.float64).sum(axis=1, keepdims=True)
    for y in run_all_ways(rowsum, x):
        assert y.shape == (9, 1)
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    for y in run_all_ways(noop, x):
        assert y.shape == (9, 1)
        np.testing.assert_array_equal(y, np.zeros((9, 1), dtype=np.float32))


def test_engine_accepts_a_plan_dict_json_or_path(
    make_engine: MakeEngine,
    small_spec: dict[str, Any],
    small_rows: Rows,
    rng: np.random.Generator,
    tmp_path: Path,
) -> None:
    import json

    path = tmp_path / "plan.json"
    path.write_text(json.dumps(small_spec))
    x = small_rows(rng, 4)
    want = FeaturePlan(small_spec).transform(x).astype(np.float64).sum(axis=1, keepdims=True)
    for source in (small_spec, json.dumps(small_spec), path):
        engine = make_engine(source, backend="rowsum", max_queue_delay_us=0)
        assert engine.plan.f_out == FeaturePlan(small_spec).f_out
        np.testing.assert_allclose(engine.predict(x), want, rtol=1e-6, atol=1e-6)


def test_engine_reports_its_backend_and_name(small_plan: FeaturePlan) -> None:
    with Engine(
        small_plan, backend="noop", config=BatcherConfig(), name="fraud", version="7"
    ) as engine:
        stats = engine.stats()
        assert (stats["name"], stats["version"], stats["backend"]) == ("fraud", "7", "noop")
        assert "fraud" in repr(engine)
