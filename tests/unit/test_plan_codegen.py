"""The plan-specialized ("JIT") normalizer source (csrc/plan/plan_codegen.h) without a GPU.

The generated source is compiled twice here:
- with the host C++ compiler (its ``mls_jit_row`` entry point, through ctypes), and run against
  ``FeaturePlan.transform`` (the CPU plan) on random plans and nasty inputs: every output must be
  bit-identical and the histogram counters equal to an independent numpy reference. This checks
  what the generator writes: each op's constants and order, the onehot/hash slots, the counter of
  every edge (linear and binary-search forms), output columns and counter offsets;
- with NVRTC for sm_90 (the CUDA kernels around the same code), where NVRTC is installed (the
  nvidia-cuda-nvrtc wheel): the code the GPU machine will load must compile.
- with the host compiler again, kernels included, under tests/emu/cuda_host_emu.h: each CUDA
  thread of a block a host thread, __syncthreads and the warp collectives (ballot, match_any)
  barriers, Hopper's bulk copies synchronous copies on an emulated mbarrier. The kernels' own
  code (warp tasks, partial tiles, the ballot histograms, the jit-tma double buffers and barrier
  phases, the counter merge) then runs against the CPU plan without a GPU. What this cannot
  show: timing, and ordering bugs the GPU's asynchrony would expose.
The GPU tests (tests/unit/test_cuda.py) run the compiled kernels themselves against the CPU plan.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import FeaturePlan
from mlserve.errors import InvalidInput, Unavailable
from mlserve.plan import nvrtc_library_candidates, nvrtc_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import assert_same_histograms, reference_histograms
from strategies import WIDE_EDGES_SPEC, plan_specs, random_input

ROOT = Path(__file__).resolve().parents[2]
CXX = shutil.which("c++") or shutil.which("g++")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
HAVE_NVRTC = bool(nvrtc_status()["available"])
needs_nvrtc = pytest.mark.skipif(not HAVE_NVRTC, reason="NVRTC not installed (nvidia-cuda-nvrtc)")

def _build_host_library(plan: FeaturePlan, tmp: Path) -> ctypes.CDLL:
    source = plan.cuda_jit_source(kernel=False)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    src = tmp / f"jit_{digest}.cc"
    lib = tmp / f"jit_{digest}.so"
    if not lib.exists():
        src.write_text(source)
        # -ffp-contract=off: no FMA, as the CPU normalizer (and --fmad=false on the GPU).
        cmd = [CXX, "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
               f"-I{ROOT / 'csrc'}", "-o", str(lib), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"generated source does not compile:\n{done.stderr}\n{source}"
    so = ctypes.CDLL(str(lib))
    so.mls_jit_row.restype = None
    so.mls_jit_row.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return so


def _run_host(plan: FeaturePlan, so: ctypes.CDLL, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((x.shape[0], plan.f_out), dtype=np.float32)
    counters = np.zeros(plan.n_counters, dtype=np.int64)
    for i in range(x.shape[0]):
        row = np.ascontiguousarray(x[i])
        so.mls_jit_row(row.ctypes.data, out[i].ctypes.data, counters.ctypes.data)
    return out, counters


def _check(spec: dict[str, Any], tmp: Path, sizes: tuple[int, ...], seed: int) -> None:
    plan = FeaturePlan(spec)
    so = _build_host_library(plan, tmp)
    for n in sizes:
        x = random_input(spec, n, seed=seed + n)
        got, counters = _run_host(plan, so, x)
        want = plan.transform(x)
        # Bit-identical, NaNs included (same quiet NaN on both sides).
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                      err_msg=f"spec {spec}")
        counted = FeaturePlan(spec)
        counted.merge_counters(counters, n)
        assert_same_histograms(counted.histograms(), reference_histograms(spec, x))


@needs_cxx
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(spec=plan_specs())
def test_generated_code_equals_cpu_plan_on_random_plans(spec: dict[str, Any],
                                                        tmp_path: Path) -> None:
    _check(spec, tmp_path, (0, 1, 300), seed=3)


@needs_cxx
def test_generated_code_equals_cpu_plan_realistic_and_wide_edges(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.plans import realistic_plan_spec

    _check(realistic_plan_spec(), tmp_path, (2000,), seed=1)
    _check(WIDE_EDGES_SPEC, tmp_path, (2000,), seed=2)
    assert "mls_jit_edges_0" in FeaturePlan(WIDE_EDGES_SPEC).cuda_jit_source()


# ---- the kernels, emulated on the host -------------------------------------------------------

EMU = ROOT / "tests" / "emu"


def _build_emulated_kernel(plan: FeaturePlan, tma: bool, tmp: Path, tile_rows: int = 0) -> Path:
    source = plan.cuda_jit_source(tma=tma, tile_rows=tile_rows)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    exe = tmp / f"emu_{digest}"
    if not exe.exists():
        src = tmp / f"emu_{digest}.cc"
        src.write_text(source)
        cmd = [CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas",
               "-include", str(EMU / "cuda_host_emu.h"), "-D__CUDACC__", "-D__CUDA_ARCH__=900",
               f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}", str(src),
               str(EMU / "jit_kernel_driver.cc"), "-o", str(exe)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"emulated kernel does not compile:\n{done.stderr}"
    return exe


def _run_emulated(plan: FeaturePlan, exe: Path, x: np.ndarray, grid: int, counted: bool,
                  tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    paths = [tmp / "in.bin", tmp / "out.bin", tmp / "counters.bin"]
    np.ascontiguousarray(x, dtype=np.float32).tofile(paths[0])
    # A kernel that waits for a barrier phase that never comes, or a lane that skips a warp
    # collective, hangs: the time limit turns that into a failure.
    done = subprocess.run([str(exe), *map(str, paths), str(n), str(plan.f_in), str(plan.f_out),
                           str(plan.n_counters), str(grid), str(int(counted))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = np.fromfile(paths[1], dtype=np.float32).reshape(n, plan.f_out)
    return out, np.fromfile(paths[2], dtype=np.int64)


def _check_emulated(spec: dict[str, Any], tma: bool, tmp: Path,
                    runs: tuple[tuple[int, int], ...], seed: int, tile_rows: int = 0) -> None:
    plan = FeaturePlan(spec)
    if plan.f_in + plan.f_out > 128:
        return  # rows too wide for a 32-row tile: the generic kernel runs such plans
    exe = _build_emulated_kernel(plan, tma, tmp, tile_rows)
    for n, grid in runs:
        x = random_input(spec, n, seed=seed + n)
        want = plan.transform(x)
        for counted in (True, False):
            got, counters = _run_emulated(plan, exe, x, grid, counted, tmp)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                          err_msg=f"n={n} grid={grid} tma={tma} spec {spec}")
            if not counted:
                assert not counters.any()
                continue
            counted_plan = FeaturePlan(spec)
            counted_plan.merge_counters(counters, n)
            assert_same_histograms(counted_plan.histograms(), reference_histograms(spec, x))


#: (rows, blocks): one row; a partial tile; whole tiles with blocks walking several (both halves
#: of jit-tma's double buffers, twice); many tiles with a partial last one.
EMULATED_RUNS = ((1, 1), (33, 2), (32 * 9, 2), (1000, 3))


@needs_cxx
@pytest.mark.parametrize("tma", [False, True], ids=["jit", "jit-tma"])
def test_emulated_kernels_equal_cpu_plan_realistic_and_wide_edges(tma: bool,
                                                                  tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.plans import realistic_plan_spec

    _check_emulated(realistic_plan_spec(), tma, tmp_path, EMULATED_RUNS, seed=4)
    _check_emulated(WIDE_EDGES_SPEC, tma, tmp_path, EMULATED_RUNS, seed=5)
    # A 96-row tile (MLSERVE_CUDA_JIT_TILE_ROWS, swept by gpu_check): three 32-row warp tasks per
    # feature and tile.
    _check_emulated(realistic_plan_spec(), tma, tmp_path, ((95, 1), (96 * 5 + 7, 2)), seed=7,
                    tile_rows=96)


@needs_cxx
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(spec=plan_specs(), tma=st.booleans())
def test_emulated_kernels_equal_cpu_plan_on_random_plans(spec: dict[str, Any], tma: bool,
                                                         tmp_path: Path) -> None:
    _check_emulated(spec, tma, tmp_path, ((45, 1), (300, 2)), seed=6)


def test_source_is_deterministic_and_names_the_kernels() -> None:
    plan = FeaturePlan(WIDE_EDGES_SPEC)
    src = plan.cuda_jit_source(tile_rows=64)
    assert src == FeaturePlan(WIDE_EDGES_SPEC).cuda_jit_source(tile_rows=64)
    assert "#define MLS_JIT_TILE_ROWS 64" in src and '#include "normalize_jit.cuh"' in src
    host_only = plan.cuda_jit_source(kernel=False)
    assert "mls_jit_row" in host_only and "normalize_jit.cuh" not in host_only
    with pytest.raises(InvalidInput, match="multiple of 32"):
        plan.cuda_jit_source(tile_rows=48)
    assert "#define MLS_JIT_MIN_BLOCKS 6" in src  # the default launch bounds
    assert "#define MLS_JIT_MIN_BLOCKS 8" in plan.cuda_jit_source(min_blocks=8)
    with pytest.raises(InvalidInput, match="min_blocks"):
        plan.cuda_jit_source(min_blocks=-1)


def test_nvrtc_candidates_come_from_nvidia_wheel_folders(tmp_path: Path) -> None:
    for sub, name in (("cu13", "libnvrtc.so.13"), ("cuda_nvrtc", "libnvrtc.so.12")):
        lib = tmp_path / "nvidia" / sub / "lib" / name
        lib.parent.mkdir(parents=True)
        lib.write_bytes(b"")
    found = nvrtc_library_candidates([str(tmp_path), str(tmp_path / "nothing")])
    assert found == [str(tmp_path / "nvidia/cu13/lib/libnvrtc.so.13"),
                     str(tmp_path / "nvidia/cuda_nvrtc/lib/libnvrtc.so.12")]
    status = nvrtc_status()
    assert set(status) == {"available", "detail", "version"}
    if not status["available"]:
        assert "nvidia-cuda-nvrtc" in status["detail"]  # says how to get it


@needs_nvrtc
def test_nvrtc_compiles_the_realistic_plan_and_caches_it() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.plans import realistic_plan_spec

    plan = FeaturePlan(realistic_plan_spec())
    first = plan.compile_cuda_jit("sm_90")
    assert first["tile_rows"] == 32 and first["bytes"] > 1000
    assert first["binary"][:4] == b"\x7fELF"  # a CUBIN
    again = FeaturePlan(realistic_plan_spec()).compile_cuda_jit("sm_90")
    assert again["cached"] and again["binary"] == first["binary"]
    ptx = plan.compile_cuda_jit("compute_90")["binary"]
    assert b".entry mls_jit_normalize_counted" in ptx and b".entry mls_jit_normalize(" in ptx
    assert b"cp.async.bulk" not in ptx
    # The Hopper variant: tiles moved by bulk copies (ptxas accepted them for sm_90 above).
    tma = plan.compile_cuda_jit("sm_90", tma=True)
    assert tma["binary"][:4] == b"\x7fELF" and tma["binary"] != first["binary"]
    tma_ptx = plan.compile_cuda_jit("compute_90", tma=True)["binary"]
    assert b"cp.async.bulk.shared::cluster.global.mbarrier" in tma_ptx
    assert b"cp.async.bulk.global.shared::cta.bulk_group" in tma_ptx
    with pytest.raises(Unavailable, match="sm_90 or newer"):
        plan.compile_cuda_jit("sm_80", tma=True)
    # The tuning shapes gpu_check sweeps compile too (bigger tiles, launch bounds).
    for tile_rows, min_blocks in ((64, 0), (32, 8), (64, 6)):
        for tma in (False, True):
            shaped = plan.compile_cuda_jit("sm_90", tile_rows=tile_rows, tma=tma,
                                           min_blocks=min_blocks)
            assert shaped["tile_rows"] == tile_rows and shaped["bytes"] > 0
    with pytest.raises(InvalidInput, match="sm_XX or compute_XX"):
        plan.compile_cuda_jit("hopper")


@needs_nvrtc
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan_specs())
def test_nvrtc_compiles_random_plans(spec: dict[str, Any]) -> None:
    plan = FeaturePlan(spec)
    try:
        out = plan.compile_cuda_jit("sm_90")
    except Unavailable as e:  # rows too wide for a 32-row tile: the generic kernel runs those
        assert "too wide" in str(e)
        return
    assert out["bytes"] > 0
    assert plan.compile_cuda_jit("sm_90", tma=True)["bytes"] > 0


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_90", "compute_90"])
def test_nvrtc_compiles_wide_edge_tables_with_infinite_edges(arch: str) -> None:
    # More than 30 edges go into a __device__ table, whose initializer must be a constant
    # expression: an infinite edge written as a function call was "dynamic initialization"
    # to NVRTC (seen on an H100), while the host compiler took it.
    plan = FeaturePlan(WIDE_EDGES_SPEC)
    assert float("-inf") in WIDE_EDGES_SPEC["features"][0]["histogram"]["edges"]
    assert "mls_jit_edges_0" in plan.cuda_jit_source()
    for tma in (False, True):
        assert plan.compile_cuda_jit(arch, tma=tma)["bytes"] > 0


def test_plans_too_wide_for_the_jit_tile_say_so() -> None:
    wide = {"features": [{"name": "item", "kind": "categorical",
                          "ops": [{"op": "onehot", "size": 5000}]}]}
    if not HAVE_NVRTC:
        pytest.skip("NVRTC not installed")
    with pytest.raises(Unavailable, match="too wide"):
        FeaturePlan(wide).compile_cuda_jit("sm_90")
