"""The GPU batch pipeline through the Engine (skipped without a GPU).

``normalize-cuda`` returns the batch as the pipeline normalized it on the device, so its results
must equal ``plan.transform`` bit for bit, for every request of a batch, with and without CUDA
graphs, on one or several instances, and its histograms must equal the CPU's. ``python-cuda``
hands the device batch to a callable: with torch, ``torch.from_dlpack(batch)`` must view the
pipeline's buffer (no copy) on the instance's stream, results may come back as torch tensors or
in ``batch.output(...)``, and a failing or malformed result fails only its batch with a typed
error.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import mlserve
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import BatcherConfig, Engine, FeaturePlan
from mlserve.errors import InternalError, InvalidInput, Unavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import SMALL_SPEC
from strategies import plan_specs, random_input

HAVE_GPU = bool(mlserve.cuda_devices())
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device visible (or a CPU-only build)"),
]


def torch_cuda() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch cannot use CUDA here (a CPU-only build of torch?)")
    return torch


def chunks(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, start = [], 0
    for size in sizes:
        out.append(x[start : start + size])
        start += size
    return out


def check_normalized_engine(spec: dict[str, Any], sizes: list[int], kernel: str = "generic",
                            **engine_kw: Any) -> None:
    """The GPU engine's outputs and histograms equal the CPU plan's, and its stats say which
    normalize kernel ran (`kernel`) and how many batches were CUDA graph launches."""
    cpu_plan, gpu_plan = FeaturePlan(copy.deepcopy(spec)), FeaturePlan(copy.deepcopy(spec))
    x = random_input(spec, sum(sizes), seed=len(sizes))
    instances = engine_kw.pop("instances", 1)
    config = BatcherConfig(max_batch_size=max(64, max(sizes)), max_queue_delay_us=2000,
                           instance_count=instances)
    with Engine(gpu_plan, backend="normalize-cuda", config=config, **engine_kw) as engine:
        got = engine.predict_many(chunks(x, sizes))  # requests share batches
    # Read after close: the batcher updates its counters just after publishing results, and
    # close() joins the workers first.
    stats = engine.stats()
    want = cpu_plan.transform(x, histograms=True)
    for part, expected in zip(got, chunks(want, sizes), strict=True):
        np.testing.assert_array_equal(part, expected)
    assert stats["completed"] == len(sizes) and stats["device"] == 0
    gpu = stats["gpu"]
    assert gpu["instances"] == instances and gpu["normalize_kernel"] == kernel, gpu
    assert gpu["batches"] == stats["batches"] and gpu["graphs_disabled"] == 0, gpu
    if engine_kw.get("cuda_graphs", True):
        assert gpu["graph_launches"] == gpu["batches"] and 1 <= gpu["graphs"] <= gpu["batches"], gpu
    else:
        assert gpu["graph_launches"] == gpu["graphs"] == 0, gpu
    got_h, want_h = gpu_plan.histograms(), cpu_plan.histograms()
    assert got_h["rows"] == want_h["rows"] == (len(x) if cpu_plan.has_histograms else 0)
    for name, w in want_h["features"].items():
        np.testing.assert_array_equal(got_h["features"][name]["counts"], w["counts"], err_msg=name)
        for key in ("underflow", "overflow", "nan", "missing"):
            if key in w:
                assert got_h["features"][name][key] == w[key], (name, key)


@pytest.mark.parametrize("kernel", ["generic", "jit", "jit-tma"])
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
@pytest.mark.parametrize("instances", [1, 2])
def test_pipeline_output_equals_the_cpu_plan(graphs: bool, instances: int, kernel: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel != "generic" and not mlserve.plan.nvrtc_status()["available"]:
        pytest.skip("NVRTC not installed: the JIT kernels cannot be built")
    # "jit" runs the plan's NVRTC-compiled kernel (inside the captured graphs too) and fails if
    # it cannot be built. Given to the Engine, or read from MLSERVE_CUDA_KERNEL when the pipeline
    # is built (both ways, one each).
    if instances == 1:
        check_normalized_engine(SMALL_SPEC, [1, 7, 3, 64, 1, 33, 2], kernel, cuda_graphs=graphs,
                                instances=instances, normalize_kernel=kernel)
    else:
        monkeypatch.setenv("MLSERVE_CUDA_KERNEL", kernel)
        check_normalized_engine(SMALL_SPEC, [1, 7, 3, 64, 1, 33, 2], kernel, cuda_graphs=graphs,
                                instances=instances)


def auto_kernel(spec: dict[str, Any]) -> str:
    """The kernel "auto" (the default) runs for a plan on device 0: jit-tma on Hopper or newer,
    jit before it, generic without NVRTC or when the plan's rows are too wide for a JIT tile."""
    if not mlserve.plan.nvrtc_status()["available"]:
        return "generic"
    major, _ = mlserve.cuda_devices()[0]["compute_capability"]
    arch = f"sm_{major}0"
    try:
        FeaturePlan(copy.deepcopy(spec)).compile_cuda_jit(arch)
    except Unavailable as e:
        assert "too wide" in str(e)
        return "generic"
    return "jit-tma" if major >= 9 else "jit"


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan_specs(), st.sampled_from(["generic", "auto"]))
def test_pipeline_on_random_plans(spec: dict[str, Any], kernel: str) -> None:
    expected = "generic" if kernel == "generic" else auto_kernel(spec)
    check_normalized_engine(spec, [5, 1, 40, 13, 2], expected, normalize_kernel=kernel)


def test_default_kernel_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing named, no MLSERVE_CUDA_KERNEL: the JIT kernel (jit-tma on Hopper), measured faster
    # than the generic one on an H100 (docs/gpu.md); the same bits either way.
    monkeypatch.delenv("MLSERVE_CUDA_KERNEL", raising=False)
    check_normalized_engine(SMALL_SPEC, [1, 7, 64, 33], auto_kernel(SMALL_SPEC))


def test_same_batch_size_replays_its_graph() -> None:
    plan = FeaturePlan(SMALL_SPEC)
    x = random_input(SMALL_SPEC, 8, seed=3)
    with Engine(plan, backend="normalize-cuda", config=BatcherConfig(max_batch_size=8)) as engine:
        first = engine.predict(x)
        for _ in range(5):
            np.testing.assert_array_equal(engine.predict(x), first)
        x2 = random_input(SMALL_SPEC, 8, seed=4)  # same size, new data: the graph copies it anew
        np.testing.assert_array_equal(engine.predict(x2), FeaturePlan(SMALL_SPEC).transform(x2))
    gpu = engine.stats()["gpu"]
    assert gpu["batches"] == gpu["graph_launches"] == 7 and gpu["graphs"] == 1, gpu


def test_torch_sees_the_device_batch_without_a_copy_on_the_instance_stream() -> None:
    torch = torch_cuda()
    seen: list[tuple[int, int, int, int]] = []

    def fn(batch: Any) -> Any:
        t = torch.from_dlpack(batch)
        seen.append((t.data_ptr(), batch.data_ptr, torch.cuda.current_stream().cuda_stream,
                     batch.stream))
        return t.sum(dim=1)

    plan = FeaturePlan(SMALL_SPEC)
    x = random_input(SMALL_SPEC, 50, seed=5)
    want = plan.transform(x).astype(np.float64).sum(axis=1)
    with Engine(plan, fn, backend="python-cuda", config=BatcherConfig(max_batch_size=64)) as e:
        got = e.predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    t_ptr, b_ptr, _, _ = seen[0]
    assert t_ptr == b_ptr  # a view of the pipeline's buffer


def test_results_in_the_output_buffer_and_under_torch_streams() -> None:
    torch = torch_cuda()

    def fn(batch: Any) -> Any:
        stream = torch.cuda.ExternalStream(batch.stream)
        with torch.cuda.stream(stream):
            x = torch.from_dlpack(batch)
            out = batch.output(batch.shape[0], 2)
            view = torch.from_dlpack(out)
            view[:, 0] = x[:, 0] * 2
            view[:, 1] = x.sum(dim=1)
        return out

    plan = FeaturePlan(SMALL_SPEC)
    x = random_input(SMALL_SPEC, 200, seed=6)
    norm = plan.transform(x)
    with Engine(plan, fn, backend="python-cuda",
                config=BatcherConfig(max_batch_size=256, instance_count=2)) as engine:
        got = np.concatenate(engine.predict_many(chunks(x, [100, 1, 99])))
    np.testing.assert_allclose(got[:, 0], norm[:, 0] * 2, rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], norm.astype(np.float64).sum(axis=1), rtol=1e-5,
                               atol=1e-5)


def test_bad_device_results_fail_only_their_batch() -> None:
    torch = torch_cuda()
    mode = {"value": "ok"}
    kept: list[Any] = []

    def fn(batch: Any) -> Any:
        kept.append(batch)
        x = torch.from_dlpack(batch)
        m = mode["value"]
        if m == "raise":
            raise ValueError("model exploded")
        if m == "cpu":
            return x.cpu()
        if m == "double":
            return x.double()
        if m == "rows":
            return x[:-1] if x.shape[0] > 1 else torch.cat([x, x])
        if m == "strided":
            return x.t()
        return x.sum(dim=1)

    plan = FeaturePlan(SMALL_SPEC)
    x = random_input(SMALL_SPEC, 4, seed=7)
    with Engine(plan, fn, backend="python-cuda", config=BatcherConfig(max_batch_size=8)) as e:
        expectations = {"raise": "model exploded", "cpu": "on cpu", "double": "float32",
                        "rows": "one row per input row", "strided": "contiguous"}
        for m, needle in expectations.items():
            mode["value"] = m
            with pytest.raises(InternalError, match=needle):
                e.predict(x)
            mode["value"] = "ok"
            assert e.predict(x).shape == (4,)  # the next batch is fine
        with pytest.raises(InternalError, match="after the backend call"):
            kept[0].output(1, 1)  # a batch object is dead once its call returned


def test_gpu_engine_errors_are_typed() -> None:
    plan = FeaturePlan(SMALL_SPEC)
    with pytest.raises(mlserve.errors.Unavailable, match="does not exist"):
        Engine(plan, backend="normalize-cuda", device=len(mlserve.cuda_devices()))
    with pytest.raises(InvalidInput, match="callable"):
        Engine(plan, None, backend="python-cuda")
