"""CUDA path: device queries, the no-GPU error, and transform_cuda against the CPU transform.

Without a GPU (or in a CPU-only build) only the first group runs: cuda_devices() is a list,
cuda_built() a bool, and transform_cuda raises mlserve.errors.Unavailable saying why. With a GPU
the tests marked ``gpu`` compare plan.transform_cuda with plan.transform on random plans
(tests/strategies.py) and nasty inputs (NaN, +-inf, out-of-vocabulary and fractional codes,
values on histogram edges) at odd batch sizes: every column must be bit-identical (the kernel
runs the same float32 operations, log1p included: csrc/plan/plan_math.h), and histogram
counters must be equal. Plans narrow enough for the staged (shared-memory tile) kernel and wide
ones for the per-element kernel, shared-memory and global counters, are all covered.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mlserve
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import FeaturePlan
from mlserve.errors import InvalidInput, Unavailable

# tests/ holds the shared reference and strategies; it is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import assert_same_histograms, reference_histograms
from strategies import WIDE_EDGES_SPEC, plan_specs, random_input

HAVE_GPU = bool(mlserve.cuda_devices())
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device visible (or a CPU-only build)")

#: Batch sizes: empty, one row, under a warp, a few blocks or tiles (odd, so the last tile is
#: partial and not a multiple of 4 rows), many grid-stride rounds.
SIZES = (0, 1, 31, 1000, 100_001)

SMALL_SPEC: dict[str, Any] = {
    "features": [
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [
                {"op": "impute", "value": 0.0},
                {"op": "clip", "lo": 0.0, "hi": 5000.0},
                {"op": "standardize", "mean": 3.2, "std": 1.1},
            ],
            "histogram": {"edges": [-np.inf, 1.0, 10.0, 100.0, np.inf]},
        },
        {
            "name": "channel",
            "kind": "categorical",
            "ops": [{"op": "onehot", "vocabulary": ["web", "pos", "app"]}],
            "histogram": True,
        },
    ],
}

#: More counters than fit in one block's shared memory: the kernel's global-atomics path.
BIG_SPEC: dict[str, Any] = {
    "features": [
        {
            "name": "item",
            "kind": "categorical",
            "ops": [{"op": "impute", "value": 7}, {"op": "onehot", "size": 5000}],
            "histogram": True,
        },
        {
            "name": "merchant",
            "kind": "categorical",
            "ops": [{"op": "hash_bucket", "n": 1024}],
            "histogram": True,
        },
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [{"op": "log1p"}],
            "histogram": {"edges": [0.0, 1.0, 2.0]},
        },
    ],
    "output_order": ["amount", "item"],
}


# ---- every build, GPU or not ------------------------------------------------------------------


def test_cuda_built_is_bool() -> None:
    assert isinstance(mlserve.cuda_built(), bool)


def test_cuda_devices_is_a_list_of_device_dicts() -> None:
    devices = mlserve.cuda_devices()
    assert isinstance(devices, list)
    if not mlserve.cuda_built():
        assert devices == []
    for index, device in enumerate(devices):
        assert device["index"] == index
        assert isinstance(device["name"], str) and device["name"]
        major, minor = device["compute_capability"]
        assert isinstance(major, int) and isinstance(minor, int) and major >= 1
        assert device["total_memory_bytes"] > 0
        assert device["multiprocessors"] > 0
    assert mlserve.cuda_devices() == devices  # asking again (after errors, too) is stable


def test_transform_cuda_without_gpu_raises_unavailable() -> None:
    if HAVE_GPU:
        pytest.skip("a GPU is visible: transform_cuda works here")
    plan = FeaturePlan(SMALL_SPEC)
    x = np.zeros((3, plan.f_in), dtype=np.float32)
    with pytest.raises(Unavailable) as info:
        plan.transform_cuda(x)
    message = str(info.value)
    if mlserve.cuda_built():
        assert "no usable GPU" in message
    else:
        assert "built without CUDA" in message
    with pytest.raises(InvalidInput, match="'generic', 'jit', 'jit-tma' or 'auto'"):
        plan.transform_cuda(x, kernel="fast")  # a bad argument is the caller's error first
    # The failed attempt leaves the plan (and its counters) usable on the CPU.
    plan.transform(x, histograms=True)
    assert plan.histograms()["rows"] == 3


# ---- GPU: transform_cuda == transform ---------------------------------------------------------


def _assert_same_output(
    spec: dict[str, Any], x: np.ndarray, gpu_out: Any, cpu_out: np.ndarray
) -> None:
    assert isinstance(gpu_out, np.ndarray)
    assert gpu_out.dtype == np.float32
    assert gpu_out.shape == cpu_out.shape
    if np.array_equal(gpu_out, cpu_out, equal_nan=True):
        return
    # Bit-identical is the contract; say where and by how many ulps it is not.
    g = gpu_out.view(np.int32).astype(np.int64)
    c = cpu_out.view(np.int32).astype(np.int64)
    both_nan = np.isnan(gpu_out) & np.isnan(cpu_out)
    ulps = np.where(both_nan, 0, np.abs(g - c))
    row, col = (int(v[0]) for v in np.nonzero(ulps))
    raise AssertionError(
        f"GPU output differs from the CPU plan at {int((ulps > 0).sum())} elements (max "
        f"{int(ulps.max())} ulps); first at row {row}, column {col}: gpu {gpu_out[row, col]!r}, "
        f"cpu {cpu_out[row, col]!r}; input row {x[row].tolist()}; spec {spec}"
    )


def _check_plan(spec: dict[str, Any], sizes: tuple[int, ...], seed: int,
                kernel: str = "generic") -> None:
    cpu_plan, gpu_plan = FeaturePlan(spec), FeaturePlan(spec)
    for n in sizes:
        x = random_input(spec, n, seed=seed + n)
        cpu_out = cpu_plan.transform(x, histograms=True)
        gpu_out = gpu_plan.transform_cuda(x, histograms=True, kernel=kernel)
        _assert_same_output(spec, x, gpu_out, cpu_out)
        assert_same_histograms(gpu_plan.histograms(reset=True), cpu_plan.histograms(reset=True))


@pytest.mark.gpu
@needs_gpu
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan_specs())
def test_transform_cuda_matches_cpu_on_random_plans(spec: dict[str, Any]) -> None:
    _check_plan(spec, SIZES, seed=11)


def _jit_or_skip(spec: dict[str, Any]) -> bool:
    """Whether the plan's JIT kernel builds here (False: rows too wide for it)."""
    if not mlserve.plan.nvrtc_status()["available"]:
        pytest.skip("NVRTC not installed: the JIT kernel cannot be built")
    try:
        FeaturePlan(spec).compile_cuda_jit("compute_90")
    except Unavailable as e:
        assert "too wide" in str(e)
        return False
    return True


@pytest.mark.gpu
@needs_gpu
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan_specs(), st.sampled_from(["jit", "jit-tma"]))
def test_jit_kernel_matches_cpu_on_random_plans(spec: dict[str, Any], kernel: str) -> None:
    # The plan-specialized kernels (NVRTC): the same bits and counts as the CPU plan.
    if _jit_or_skip(spec):
        _check_plan(spec, SIZES, seed=13, kernel=kernel)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kernel", ["generic", "jit", "jit-tma", "auto"])
@pytest.mark.parametrize("spec", [SMALL_SPEC, BIG_SPEC], ids=["shared-counters", "global-counters"])
def test_transform_cuda_matches_cpu_fixed_plans(spec: dict[str, Any], kernel: str) -> None:
    if kernel.startswith("jit") and not _jit_or_skip(spec):
        with pytest.raises(Unavailable, match="too wide"):
            FeaturePlan(spec).transform_cuda(random_input(spec, 4, seed=1), kernel=kernel)
        return
    _check_plan(spec, SIZES, seed=5, kernel=kernel)


@pytest.mark.gpu
@needs_gpu
def test_jit_kernel_on_the_realistic_plan_and_wide_edges() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.plans import realistic_plan_spec

    # Sizes: one row; under, at and over one 32-row tile; more tiles than the grid has blocks
    # (each block walks several, through both halves of the jit-tma double buffers), with a
    # partial last tile and without one.
    sizes = (1, 31, 32, 33, 4097, 100_001, 32 * 20_000)
    for kernel in ("jit", "jit-tma"):
        for spec in (realistic_plan_spec(), WIDE_EDGES_SPEC):
            if _jit_or_skip(spec):
                _check_plan(spec, sizes, seed=17, kernel=kernel)
        t = FeaturePlan(realistic_plan_spec()).benchmark_cuda(
            random_input(realistic_plan_spec(), 4096, seed=1), iterations=3, kernel=kernel)
        assert t["kernel"] == kernel and t["tile_rows"] == 32


@pytest.mark.gpu
@needs_gpu
def test_jit_tuning_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.plans import realistic_plan_spec

    spec = realistic_plan_spec()
    if not _jit_or_skip(spec):
        return
    plan = FeaturePlan(spec)
    x = random_input(spec, 1000, seed=3)
    monkeypatch.setenv("MLSERVE_CUDA_JIT_TILE_ROWS", "64")
    monkeypatch.setenv("MLSERVE_CUDA_JIT_MIN_BLOCKS", "0")
    for kernel in ("jit", "jit-tma"):
        t = plan.benchmark_cuda(x, iterations=2, kernel=kernel)
        assert t["tile_rows"] == 64 and t["registers"] > 0
        _check_plan(spec, (1, 65, 1000), seed=19, kernel=kernel)
    monkeypatch.setenv("MLSERVE_CUDA_JIT_TILE_ROWS", "sixty")
    with pytest.raises(InvalidInput, match="MLSERVE_CUDA_JIT_TILE_ROWS"):
        plan.transform_cuda(x, kernel="jit")
    monkeypatch.setenv("MLSERVE_CUDA_JIT_TILE_ROWS", "48")
    with pytest.raises(InvalidInput, match="multiple of 32"):
        plan.transform_cuda(x, kernel="jit")
    # jit-tma double-buffers: two 256-row tiles of 117 floats (240 KB) exceed Hopper's 227 KB of
    # shared memory per block. It says so at load; "auto" (the plain JIT kernel, 120 KB) runs.
    monkeypatch.setenv("MLSERVE_CUDA_JIT_TILE_ROWS", "256")
    with pytest.raises(Unavailable, match=r"shared memory.*MLSERVE_CUDA_JIT_TILE_ROWS"):
        plan.transform_cuda(x, kernel="jit-tma")
    _check_plan(spec, (1, 1000), seed=23, kernel="auto")


@pytest.mark.gpu
@needs_gpu
def test_transform_cuda_histograms_match_reference_and_accumulate() -> None:
    plan = FeaturePlan(BIG_SPEC)
    x1 = random_input(BIG_SPEC, 4099, seed=1)
    x2 = random_input(BIG_SPEC, 77, seed=2)
    plan.transform_cuda(x1, histograms=True)
    plan.transform(x2, histograms=True)  # CPU and GPU counts land in the same counters
    plan.transform_cuda(x2, histograms=True)
    plan.transform_cuda(x1, histograms=False)  # not counted
    want = reference_histograms(BIG_SPEC, np.concatenate([x1, x2, x2]))
    assert_same_histograms(plan.histograms(reset=True), want)
    assert plan.histograms()["rows"] == 0


@pytest.mark.gpu
@needs_gpu
def test_transform_cuda_input_conversion_and_errors() -> None:
    plan = FeaturePlan(SMALL_SPEC)
    x = random_input(SMALL_SPEC, 100, seed=3)
    want = plan.transform(x)
    np.testing.assert_array_equal(plan.transform_cuda(x.astype(np.float64)), want)
    np.testing.assert_array_equal(plan.transform_cuda(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(plan.transform_cuda(x, device=0), want)
    with pytest.raises(InvalidInput):
        plan.transform_cuda(np.zeros((4, plan.f_in + 1), dtype=np.float32))
    with pytest.raises(Unavailable, match="device"):
        plan.transform_cuda(x, device=len(mlserve.cuda_devices()))
    with pytest.raises(InvalidInput, match="'generic', 'jit', 'jit-tma' or 'auto'"):
        plan.transform_cuda(x, kernel="fast")
    np.testing.assert_array_equal(plan.transform_cuda(x), want)  # still usable after errors


@pytest.mark.gpu
@needs_gpu
def test_benchmark_hook_reports_kernel_and_copy_times() -> None:
    plan = FeaturePlan(SMALL_SPEC)
    x = random_input(SMALL_SPEC, 4096, seed=9)
    before = plan.histograms()["rows"]
    t = plan.benchmark_cuda(x, iterations=5)
    assert t["rows"] == 4096 and t["kernel_ms"] > 0 and t["copy_ms"] > 0
    assert t["bytes"] == 4096 * (plan.f_in + plan.f_out) * 4
    assert t["tile_rows"] > 0 and t["tile_rows"] % 4 == 0  # a narrow plan runs staged
    assert FeaturePlan(BIG_SPEC).benchmark_cuda(random_input(BIG_SPEC, 64, seed=1),
                                                iterations=2)["tile_rows"] == 0
    assert plan.histograms()["rows"] == before  # the benchmark counts nothing
