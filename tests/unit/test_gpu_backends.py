"""The GPU execution backends, as far as they can be checked without a GPU.

Backend selection (Engine, from_bundle, the serving config and its ``REF:BACKEND`` specs) and the
typed errors when a GPU, a CUDA build of torch or TensorRT is missing; ``mlserve build-engine``
refusing cleanly; ``mlserve devices``; the DLPack producer and consumer of the bindings, run on
host arrays (the GPU path uses the same code with device pointers); and the TensorRT code paths
against a stand-in ``tensorrt`` module that records the calls (TensorRT cannot be installed on
the project's machines; the real thing runs in tests/integration/test_gpu_serving.py where it
is installed).

Tests that only make sense without a GPU skip on a GPU machine, and the other way round.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import types
from pathlib import Path
from typing import Any

import mlserve
import numpy as np
import pytest
from conftest import SMALL_SPEC
from mlserve import Engine, FeaturePlan, _core, gpu
from mlserve.bundle import ModelBundle
from mlserve.errors import InternalError, InvalidInput, Unavailable
from mlserve.gpu_cli import main as cli_main
from mlserve.registry import Registry
from mlserve.server.settings import ServerSettings, split_model_spec

HAVE_GPU = bool(mlserve.cuda_devices())
without_gpu = pytest.mark.skipif(HAVE_GPU, reason="a GPU is visible: the no-GPU errors differ")


def make_bundle(root: Path, onnx: Path, torchscript: Path, name: str = "mlp") -> Path:
    """A bundle directory of SMALL_SPEC with both model artifacts (checksummed)."""
    root.mkdir(parents=True)
    artifacts = {}
    for src, file in ((onnx, "model.onnx"), (torchscript, "model.pt")):
        shutil.copyfile(src, root / file)
        artifacts[file] = {"sha256": hashlib.sha256((root / file).read_bytes()).hexdigest()}
    inputs = [{"name": f["name"], "kind": f["kind"], "dtype": "float32"}
              for f in SMALL_SPEC["features"]]
    manifest = {"name": name, "preprocessing": SMALL_SPEC, "artifacts": artifacts,
                "signature": {"inputs": inputs}}
    (root / "mlserve.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def bundle(tmp_path: Path, onnx_mlp_path: Path, torchscript_mlp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle", onnx_mlp_path, torchscript_mlp_path)


@pytest.fixture
def registry(tmp_path: Path, bundle: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    reg.register(bundle)
    return reg


# ---- backend selection and the errors without a GPU -------------------------------------------


def test_cpu_is_onnxruntime(bundle: Path, small_rows: Any, rng: np.random.Generator) -> None:
    x = small_rows(rng, 9)
    with Engine.from_bundle(bundle, backend="cpu") as a, Engine.from_bundle(bundle) as b:
        assert a.backend == "cpu" and a.device is None
        np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_unknown_normalize_kernel_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput, match="normalize_kernel must be one of"):
        Engine(FeaturePlan(SMALL_SPEC), lambda b: b[:, :1], backend="python",
               normalize_kernel="fast")
    if mlserve.cuda_devices():
        return
    # Without a GPU the GPU pipeline is never built: a bad MLSERVE_CUDA_KERNEL surfaces where it
    # is read, as the caller's error, with the names that work.
    monkeypatch.setenv("MLSERVE_CUDA_KERNEL", "fast")
    with pytest.raises(InvalidInput, match="'generic', 'jit', 'jit-tma' or 'auto'"):
        plan = FeaturePlan(SMALL_SPEC)
        plan.transform_cuda(np.zeros((1, plan.f_in), dtype=np.float32))


def test_unknown_backend_is_invalid_input(bundle: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown backend 'cuda'"):
        Engine(FeaturePlan(SMALL_SPEC), None, backend="cuda")
    with pytest.raises(InvalidInput, match="cannot run a bundle"):
        Engine.from_bundle(bundle, backend="python-cuda")


@without_gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt", "normalize-cuda", "python-cuda"])
def test_gpu_backends_without_a_gpu_are_unavailable(backend: str, tmp_path: Path) -> None:
    model: Any = {"torch-cuda": tmp_path / "m.pt", "tensorrt": tmp_path / "m.plan",
                  "python-cuda": lambda batch: batch, "normalize-cuda": None}[backend]
    with pytest.raises(Unavailable, match=r"GPU|without CUDA") as info:
        Engine(FeaturePlan(SMALL_SPEC), model, backend=backend)
    assert backend in str(info.value)


@without_gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt"])
def test_from_bundle_on_a_gpu_backend_without_a_gpu(bundle: Path, backend: str) -> None:
    # The GPU check comes first: no model is loaded, no TensorRT object is made.
    with pytest.raises(Unavailable, match="GPU"):
        Engine.from_bundle(bundle, backend=backend)


def test_bundle_without_an_engine_says_how_to_build_one(bundle: Path) -> None:
    with pytest.raises(InvalidInput, match="mlserve build-engine mlp"):
        ModelBundle.load(bundle).model_for("tensorrt")
    assert ModelBundle.load(bundle).model_for("torch-cuda").name == "model.pt"


@without_gpu
def test_require_device_and_imports_say_what_is_missing() -> None:
    for check in (gpu.require_device, gpu.import_torch_cuda, gpu.import_tensorrt):
        with pytest.raises(Unavailable) as info:
            check(0)
        message = str(info.value)
        assert ("no usable GPU" in message) or ("without CUDA" in message), message
    status = gpu.backend_status()
    assert status["cpu"] == "ok"
    assert status["torch-cuda"] != "ok" and status["tensorrt"] != "ok"


def test_tensorrt_type_stubs_alone_are_not_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    # tensorrt-stubs makes `import tensorrt` find an empty namespace package; without the stubs
    # the import fails. Either way the backend is unavailable and says what to install.
    monkeypatch.setattr(gpu, "require_device", lambda device=0, backend="": FAKE_GPU)
    with pytest.raises(Unavailable, match="needs the tensorrt package"):
        gpu.import_tensorrt(0)


def test_devices_command_lists_backends(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "CUDA kernels built" in out
    for name in ("cpu", "torch-cuda", "tensorrt"):
        assert f"  {name}" in out
    assert "normalize kernel: " in out and "NVRTC" in out


def test_mlserve_command_dispatches_the_gpu_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from mlserve.cli import main

    assert main(["devices"]) == 0
    assert "execution backends" in capsys.readouterr().out


# ---- mlserve build-engine ------------------------------------------------------------------------


def test_build_engine_refuses_a_bad_profile(registry: Registry,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["build-engine", "mlp", "--registry", str(registry.root), "--min-batch", "8",
                     "--opt-batch", "4"])
    assert code == 2
    assert "min-batch <= opt-batch" in capsys.readouterr().err


def test_build_engine_without_gpu_or_tensorrt_refuses_cleanly(
        registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        have_trt = False
    else:
        have_trt = True
    if HAVE_GPU and have_trt:
        pytest.skip("GPU and TensorRT present: build-engine works here")
    code = cli_main(["build-engine", "mlp", "--registry", str(registry.root)])
    assert code == 2
    err = capsys.readouterr().err
    assert ("GPU" in err or "without CUDA" in err) if not HAVE_GPU else "tensorrt" in err
    assert "model.plan" not in registry.resolve("mlp").artifacts  # nothing was registered


# ---- serving config: backend per model -----------------------------------------------------------


def test_model_specs_name_their_backend() -> None:
    assert split_model_spec("fraud@champion:torch-cuda") == ("fraud@champion", "torch-cuda")
    assert split_model_spec("fraud/3") == ("fraud/3", None)
    with pytest.raises(InvalidInput, match="unknown execution backend 'gpu'"):
        split_model_spec("fraud:gpu")
    settings = ServerSettings(models=("a:tensorrt", "b"), backend="torch-cuda", device=1)
    assert settings.backends() == {"tensorrt", "torch-cuda"}
    again = ServerSettings.from_env(settings.to_env())
    assert (again.models, again.backend, again.device) == (settings.models, "torch-cuda", 1)
    with pytest.raises(InvalidInput, match="unknown execution backend"):
        ServerSettings(backend="cuda")
    with pytest.raises(InvalidInput, match="fraud:onnx"):
        ServerSettings(models=("fraud:onnx",))


def test_model_manager_loads_with_the_named_backend(registry: Registry) -> None:
    pytest.importorskip("orjson", reason="the server's codecs need orjson")
    from mlserve.server.models import ModelManager

    async def load() -> tuple[str, str]:
        manager = ModelManager(str(registry.root))
        try:
            torch_served = await manager.load("mlp/1:torch")
            backend = torch_served.engine.backend
            default = (await manager.load("mlp/1")).engine.backend
            return backend, default
        finally:
            await manager.close(5.0)

    assert asyncio.run(load()) == ("torch", "onnxruntime")


@without_gpu
def test_serve_with_a_gpu_backend_without_a_gpu_exits_before_binding(
        registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    from mlserve.server import cli as server_cli

    code = server_cli.main(["--registry", str(registry.root), "--model", "mlp:torch-cuda",
                            "--port", "1"])
    assert code == 2
    assert "torch-cuda" in capsys.readouterr().err


# ---- DLPack (the code the GPU path uses, on host arrays) -----------------------------------------


def test_core_arrays_are_shared_with_torch_and_numpy_without_a_copy() -> None:
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = _core._dlpack_host_array(x)
    assert a.shape == (4, 3) and a.__dlpack_device__() == (1, 0)
    t = torch.from_dlpack(a)
    n = np.from_dlpack(a)
    x[1, 2] = -7.0
    assert t[1, 2].item() == -7.0 and n[1, 2] == -7.0  # views, not copies
    assert t.data_ptr() == a.data_ptr == x.ctypes.data
    np.testing.assert_array_equal(torch.from_dlpack(a.head(2)).numpy(), x[:2])
    with pytest.raises(InvalidInput, match="head"):
        a.head(5)
    with pytest.raises(BufferError):
        a.__dlpack__(copy=True)


def test_results_are_read_from_any_dlpack_producer() -> None:
    torch = pytest.importorskip("torch")
    got = _core._dlpack_import(torch.arange(6, dtype=torch.float32).reshape(3, 2))
    assert (got["ndim"], got["rows"], got["width"]) == (2, 3, 2)
    np.testing.assert_array_equal(got["values"], np.arange(6, dtype=np.float32))
    one_d = _core._dlpack_import(np.ones(5, np.float32))
    assert (one_d["ndim"], one_d["rows"], one_d["width"]) == (1, 5, 1)
    sliced = torch.arange(12, dtype=torch.float32).reshape(4, 3)[1:]  # a byte offset
    np.testing.assert_array_equal(_core._dlpack_import(sliced)["values"],
                                  np.arange(3, 12, dtype=np.float32))
    bad = {
        "float32": torch.zeros(3, dtype=torch.float64),
        "contiguous": torch.zeros(3, 2).t(),
        "3-d": torch.zeros(2, 2, 2),
        "DLPack support": [1.0, 2.0],
    }
    for needle, obj in bad.items():
        with pytest.raises(InternalError, match=needle):
            _core._dlpack_import(obj)


# ---- TensorRT against a stand-in module ----------------------------------------------------------


class _Dims(list[int]):
    pass


class FakeTensorRT:
    """Just enough of TensorRT 10's Python API to drive mlserve.tensorrt_engine, recording calls."""

    def __init__(self, *, input_shape: tuple[int, int] = (-1, 8), parse_ok: bool = True,
                 profile: tuple[int, int, int] = (1, 64, 4096), out_width: int = 1,
                 dtype: str = "float") -> None:
        self.__version__ = "10.16.1"
        self.calls: list[tuple[Any, ...]] = []
        fake = self
        ns = types.SimpleNamespace
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.MemoryPoolType = ns(WORKSPACE="workspace")
        self.BuilderFlag = ns(FP16="fp16")
        self.TensorIOMode = ns(INPUT="in", OUTPUT="out")
        self.DataType = ns(FLOAT="float", HALF="half")
        self.Dims2 = lambda d0, d1: (d0, d1)

        class Network:
            num_inputs, num_outputs = 1, 1

            def get_input(self, i: int) -> Any:
                return ns(name="x", shape=_Dims(input_shape))

            def get_output(self, i: int) -> Any:
                return ns(name="y", shape=_Dims([-1, out_width]))

        class Profile:
            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                fake.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

        class Config:
            def set_memory_pool_limit(self, pool: Any, size: int) -> None:
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag: Any) -> None:
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, p: Any) -> int:
                fake.calls.append(("add_profile",))
                return 0

        class Builder:
            def __init__(self, logger: Any) -> None:
                fake.calls.append(("Builder",))

            def create_network(self, flags: int = 0) -> Any:
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self) -> Any:
                return Config()

            def create_optimization_profile(self) -> Any:
                return Profile()

            def build_serialized_network(self, network: Any, config: Any) -> Any:
                return memoryview(b"ENGINE")

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                return parse_ok

            def get_error(self, i: int) -> str:
                return "unsupported op Foo"

        class Context:
            def __init__(self) -> None:
                self.shape: tuple[int, ...] = ()

            def set_input_shape(self, name: str, shape: Any) -> bool:
                self.shape = tuple(shape)
                fake.calls.append(("set_input_shape", name, self.shape))
                return True

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                fake.calls.append(("address", name, ptr))
                return True

            def get_tensor_shape(self, name: str) -> Any:
                return _Dims([self.shape[0], out_width])

            def execute_async_v3(self, stream: int) -> bool:
                fake.calls.append(("execute", stream))
                return True

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i: int) -> str:
                return ["x", "y"][i]

            def get_tensor_mode(self, name: str) -> str:
                return "in" if name == "x" else "out"

            def get_tensor_dtype(self, name: str) -> str:
                return dtype

            def get_tensor_shape(self, name: str) -> Any:
                return _Dims([-1, input_shape[1]] if name == "x" else [-1, out_width])

            def get_tensor_profile_shape(self, name: str, index: int) -> Any:
                return [_Dims([p, input_shape[1]]) for p in profile]

            def create_execution_context(self) -> Any:
                fake.calls.append(("context",))
                return Context()

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                return Engine() if data == b"ENGINE" else None

        self.Builder, self.OnnxParser, self.Runtime = Builder, Parser, Runtime


class FakeArray:
    def __init__(self, rows: int, width: int, ptr: int) -> None:
        self.shape = (rows, width)
        self.data_ptr = ptr

    def head(self, rows: int) -> FakeArray:
        return FakeArray(rows, self.shape[1], self.data_ptr)


class FakeBatch(FakeArray):
    """What the core hands a device function: rows, stream, instance, padding, output buffer."""

    def __init__(self, rows: int, width: int, instance: int = 0) -> None:
        super().__init__(rows, width, 0x1000)
        self.stream = 0xBEEF
        self.instance = instance
        self.capacity_rows = 4096

    def padded(self, rows: int) -> FakeArray:
        assert self.shape[0] <= rows <= self.capacity_rows
        return FakeArray(rows, self.shape[1], self.data_ptr)

    def output(self, rows: int, width: int = 1) -> FakeArray:
        return FakeArray(rows, width, 0x2000)


FAKE_GPU = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0),
            "total_memory_bytes": 80 << 30, "multiprocessors": 132}


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlserve import tensorrt_engine

    holder: dict[str, FakeTensorRT] = {"trt": FakeTensorRT()}
    monkeypatch.setattr(tensorrt_engine, "require_device", lambda device=0, backend="": FAKE_GPU)
    monkeypatch.setattr(tensorrt_engine, "import_tensorrt", lambda device=0: holder["trt"])
    return holder


def test_build_engine_sets_the_batch_profile_and_records_versions(fake_trt: Any) -> None:
    from mlserve.tensorrt_engine import BatchProfile, build_engine

    built = build_engine(b"onnx", f_out=8, profile=BatchProfile(2, 32, 512), fp16=True,
                         workspace_bytes=1 << 20)
    calls = fake_trt["trt"].calls
    assert ("create_network", 0) in calls
    assert ("set_shape", "x", (2, 8), (32, 8), (512, 8)) in calls
    assert ("flag", "fp16") in calls and ("pool", "workspace", 1 << 20) in calls
    assert built.data == b"ENGINE"
    info = built.info
    assert info["gpu"] == FAKE_GPU["name"] and info["compute_capability"] == "9.0"
    assert info["tensorrt_version"] == "10.16.1" and info["precision"] == "fp16"
    assert info["profile"] == {"min_batch": 2, "opt_batch": 32, "max_batch": 512}
    assert "cuda_runtime_version" in info and "cuda_driver_version" in info


def test_build_engine_refuses_unparsable_or_static_models(fake_trt: Any) -> None:
    from mlserve.tensorrt_engine import build_engine

    fake_trt["trt"] = FakeTensorRT(parse_ok=False)
    with pytest.raises(InvalidInput, match="unsupported op Foo"):
        build_engine(b"onnx", f_out=8)
    fake_trt["trt"] = FakeTensorRT(input_shape=(16, 8))
    with pytest.raises(InvalidInput, match="dynamic batch"):
        build_engine(b"onnx", f_out=8)
    fake_trt["trt"] = FakeTensorRT(input_shape=(-1, 9))
    with pytest.raises(InvalidInput, match=r"expected \[-1, 8\]"):
        build_engine(b"onnx", f_out=8)


def test_build_registered_engine_adds_an_immutable_artifact(fake_trt: Any,
                                                            registry: Registry) -> None:
    from mlserve.tensorrt_engine import build_registered_engine

    f_out = FeaturePlan(SMALL_SPEC).f_out
    fake_trt["trt"] = FakeTensorRT(input_shape=(-1, f_out))
    version = build_registered_engine("mlp", registry=registry)
    info = version.artifacts["model.plan"]
    assert info["sha256"] == hashlib.sha256(b"ENGINE").hexdigest() and info["bytes"] == 6
    assert info["source_sha256"] == version.artifacts["model.onnx"]["sha256"]
    assert info["kind"] == "tensorrt" and info["gpu"] == FAKE_GPU["name"]
    registry.open("mlp").verify()  # the version directory matches its new manifest
    assert registry.verify() == []
    assert ModelBundle.load(version.path).model_for("tensorrt").read_bytes() == b"ENGINE"
    with pytest.raises(InvalidInput, match="immutable"):
        build_registered_engine("mlp", registry=registry)
    assert "model.h100.plan" in build_registered_engine(
        "mlp", registry=registry, artifact="model.h100.plan").artifacts


def test_tensorrt_fn_pads_to_the_profile_and_uses_the_instance_stream(
        fake_trt: Any, tmp_path: Path) -> None:
    from mlserve.tensorrt_engine import tensorrt_fn

    fake_trt["trt"] = FakeTensorRT(profile=(8, 64, 4096), out_width=3)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"ENGINE")
    run = tensorrt_fn(plan, f_out=8, max_batch_size=256)
    out = run(FakeBatch(3, 8))
    assert out.shape == (3, 3) and out.data_ptr == 0x2000
    out = run(FakeBatch(100, 8, instance=1))
    assert out.shape == (100, 3)
    calls = fake_trt["trt"].calls
    assert [c for c in calls if c[0] == "set_input_shape"] == [
        ("set_input_shape", "x", (8, 8)), ("set_input_shape", "x", (100, 8))]
    assert ("address", "x", 0x1000) in calls and ("address", "y", 0x2000) in calls
    assert calls.count(("execute", 0xBEEF)) == 2
    assert calls.count(("context",)) == 2  # one execution context per instance


def test_tensorrt_fn_refuses_engines_that_cannot_serve(fake_trt: Any, tmp_path: Path) -> None:
    from mlserve.tensorrt_engine import check_engine_info, tensorrt_fn

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"ENGINE")
    fake_trt["trt"] = FakeTensorRT(profile=(1, 64, 128))
    with pytest.raises(InvalidInput, match="--max-batch 256"):
        tensorrt_fn(plan, f_out=8, max_batch_size=256)
    fake_trt["trt"] = FakeTensorRT(dtype="half")
    with pytest.raises(InvalidInput, match="not float32"):
        tensorrt_fn(plan, f_out=8, max_batch_size=256)
    fake_trt["trt"] = FakeTensorRT(input_shape=(-1, 5))
    with pytest.raises(InvalidInput, match="takes 5 features"):
        tensorrt_fn(plan, f_out=8, max_batch_size=256)
    (tmp_path / "other.plan").write_bytes(b"not an engine")
    with pytest.raises(InvalidInput, match="cannot load the engine"):
        tensorrt_fn(tmp_path / "other.plan", f_out=8, max_batch_size=256)
    check_engine_info({"compute_capability": "9.0"})
    with pytest.raises(Unavailable, match="rebuild it here"):
        check_engine_info({"compute_capability": "8.0", "gpu": "NVIDIA A100"})
