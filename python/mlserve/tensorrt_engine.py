"""TensorRT: build an engine from a bundle's ONNX model, and run one on the core's GPU pipeline.

``build_engine(onnx, ...)`` parses the ONNX model (its input must be float32 ``[batch, f_out]``
with a dynamic batch dimension), builds a serialized engine with one optimization profile over
the batch dimension (min/opt/max rows) and optionally FP16 kernels, and returns its bytes with
what it was built for: GPU name and compute capability, TensorRT, CUDA runtime and driver
versions, precision and profile. ``build_registered_engine`` does that for a registry version
and adds the engine to that same version as an immutable, checksummed artifact
(``model.plan`` by default): ``mlserve build-engine REF``.

``tensorrt_fn(plan, device, ...)`` deserializes an engine and returns the device function the
core's CUDA pipeline calls per batch: one execution context per instance, input and output
addresses set to the core's device buffers (the normalized batch, ``batch.output``), and
``execute_async_v3`` on the instance's stream. Batches smaller than the profile's minimum run
padded (``batch.padded``); larger than its maximum is refused when the engine is loaded.

The TensorRT 10 Python API is used exactly as documented by NVIDIA (``Builder``,
``INetworkDefinition`` via ``create_network(0)``, ``OnnxParser``, ``IBuilderConfig`` with
``set_memory_pool_limit`` / ``add_optimization_profile``, ``build_serialized_network``,
``Runtime.deserialize_cuda_engine``, ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3``). NVIDIA's wheels hold only the compiled module;
mypy checks every call here against the published type stubs of TensorRT's bindings
(``tensorrt-stubs`` 10.13, generated from the compiled module; ``make setup`` installs them
without their runtime dependencies, TensorRT itself), imported under TYPE_CHECKING as
``trt_api``. At run time ``tensorrt`` is imported lazily, after the GPU check.
Every entry point checks for a usable GPU (mlserve.gpu) before it creates any TensorRT object:
TensorRT's runtime crashes the process when created without one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlserve import _core
from mlserve.errors import InternalError, InvalidInput, Unavailable
from mlserve.gpu import import_tensorrt, require_device
from mlserve.plan import FeaturePlan

if TYPE_CHECKING:
    import tensorrt as trt_api  # the published stubs (tensorrt-stubs): types only

#: Artifact name of the engine in a bundle, unless build-engine is told another.
PLAN_ARTIFACT = "model.plan"
DEFAULT_WORKSPACE_BYTES = 1 << 30


# ---- building ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProfile:
    """The batch dimension's optimization profile: rows min <= opt <= max."""

    min_batch: int = 1
    opt_batch: int = 256
    max_batch: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InvalidInput(
                f"batch profile must satisfy 1 <= min-batch <= opt-batch <= max-batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and what it was built for (stored beside it in the manifest)."""

    data: bytes
    info: dict[str, Any]


def _versions(trt: Any, device: dict[str, Any], profile: BatchProfile, fp16: bool,
              input_name: str, f_out: int) -> dict[str, Any]:
    major, minor = device["compute_capability"]
    return {
        "kind": "tensorrt",
        "gpu": device["name"],
        "compute_capability": f"{major}.{minor}",
        "tensorrt_version": str(getattr(trt, "__version__", "unknown")),
        "cuda_runtime_version": _cuda_version(_core.cuda_runtime_version()),
        "cuda_driver_version": _cuda_version(_core.cuda_driver_version()),
        "precision": "fp16" if fp16 else "fp32",
        "profile": {"min_batch": profile.min_batch, "opt_batch": profile.opt_batch,
                    "max_batch": profile.max_batch},
        "input": {"name": input_name, "shape": [-1, f_out]},
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v > 0 else "none"


def build_engine(onnx_model: bytes, *, f_out: int, device: int = 0,
                 profile: BatchProfile | None = None, fp16: bool = False,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> BuiltEngine:
    """Builds a TensorRT engine from ONNX bytes whose one input is float32 ``[batch, f_out]``.

    Raises Unavailable (no GPU, no TensorRT), InvalidInput (the model does not parse, has not
    one input, or its input is not ``[dynamic batch, f_out]``), InternalError (build failed).
    """
    profile = profile or BatchProfile()
    gpu = require_device(device, backend="tensorrt")  # before any TensorRT object
    trt = import_tensorrt(device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder: trt_api.Builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser: trt_api.OnnxParser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InvalidInput(f"TensorRT cannot parse the ONNX model: {errors or 'unknown error'}")
    if network.num_inputs != 1 or network.num_outputs < 1:
        raise InvalidInput(
            f"the ONNX model has {network.num_inputs} inputs and {network.num_outputs} outputs; "
            "an mlserve model takes one float32 [batch, features] input"
        )
    tensor = network.get_input(0)
    dims = [int(tensor.shape[i]) for i in range(len(tensor.shape))]
    if len(dims) != 2 or dims[0] != -1 or dims[1] not in (-1, f_out):
        raise InvalidInput(
            f"the ONNX model's input {tensor.name!r} has shape {dims}; expected [-1, {f_out}] "
            "(a dynamic batch dimension over the plan's normalized features): export it with a "
            "dynamic batch axis"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(tensor.name, trt.Dims2(profile.min_batch, f_out),
                     trt.Dims2(profile.opt_batch, f_out), trt.Dims2(profile.max_batch, f_out))
    config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InternalError(
            "TensorRT could not build the engine (see TensorRT's log above); try a smaller "
            "--max-batch or without --fp16"
        )
    return BuiltEngine(bytes(memoryview(serialized)),
                       _versions(trt, gpu, profile, fp16, tensor.name, f_out))


def build_registered_engine(ref: str, *, registry: Any = None, device: int = 0,
                            profile: BatchProfile | None = None, fp16: bool = False,
                            workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                            artifact: str = PLAN_ARTIFACT) -> Any:
    """Builds an engine for the registry version ``ref`` from its ``model.onnx`` and adds it to
    that version as ``artifact``. Returns the updated ``ModelVersion``."""
    import tempfile

    from mlserve.registry import Registry

    reg = registry if isinstance(registry, Registry) else Registry(registry)
    require_device(device, backend="tensorrt")  # fail before reading anything large
    version = reg.open(ref)  # verified checksums
    if artifact in version.artifacts:
        raise InvalidInput(
            f"{version.ref} already has an artifact {artifact!r}; artifacts are immutable: pass "
            "--artifact NAME to add another engine (e.g. for another GPU)"
        )
    if "model.onnx" not in version.artifacts:
        raise InvalidInput(f"{version.ref} has no model.onnx to build a TensorRT engine from")
    f_out = FeaturePlan(version.manifest["preprocessing"]).f_out
    built = build_engine((version.path / "model.onnx").read_bytes(), f_out=f_out, device=device,
                         profile=profile, fp16=fp16, workspace_bytes=workspace_bytes)
    info = dict(built.info, source="model.onnx",
                source_sha256=version.artifacts["model.onnx"]["sha256"])
    with tempfile.TemporaryDirectory(prefix="mlserve-engine-") as tmp:
        path = Path(tmp) / "engine.plan"
        path.write_bytes(built.data)
        return reg.add_artifact(version.ref, path, file=artifact, info=info,
                                reason=f"TensorRT {info['tensorrt_version']} for {info['gpu']}")


# ---- running -------------------------------------------------------------------------------------


def check_engine_info(info: dict[str, Any], device: int = 0) -> None:
    """Refuses (Unavailable) an engine recorded as built for another compute capability than
    GPU ``device``'s: TensorRT engines only run on the architecture they were built for."""
    gpu = require_device(device, backend="tensorrt")
    built_for = info.get("compute_capability")
    major, minor = gpu["compute_capability"]
    if built_for is not None and built_for != f"{major}.{minor}":
        raise Unavailable(
            f"the TensorRT engine was built for compute capability {built_for} "
            f"({info.get('gpu', 'unknown GPU')}); device {device} ({gpu['name']}) is "
            f"{major}.{minor}: rebuild it here with `mlserve build-engine REF --artifact NAME`"
        )


def tensorrt_fn(plan: str | os.PathLike[str], *, f_out: int, max_batch_size: int,
                device: int = 0) -> Callable[[Any], Any]:
    """The device function running the serialized engine at ``plan`` (see module docstring).

    Raises Unavailable (no GPU, no TensorRT) or InvalidInput (unreadable engine, not one float32
    input and output, input width is not ``f_out``, profile maximum below ``max_batch_size``).
    """
    path = Path(plan)
    if not path.is_file():
        raise InvalidInput(f"TensorRT engine {str(path)!r} does not exist")
    require_device(device, backend="tensorrt")  # before any TensorRT object
    trt = import_tensorrt(device)
    logger = trt.Logger(trt.Logger.WARNING)
    runtime: trt_api.Runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise InvalidInput(
            f"TensorRT cannot load the engine {path.name} (built with another TensorRT version or "
            "for another GPU?): rebuild it with `mlserve build-engine`"
        )
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise InvalidInput(
            f"the TensorRT engine has inputs {inputs} and outputs {outputs}; mlserve runs engines "
            "with one input and one output"
        )
    input_name, output_name = inputs[0], outputs[0]
    for name in (input_name, output_name):
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise InvalidInput(
                f"the TensorRT engine's tensor {name!r} is {engine.get_tensor_dtype(name)}, not "
                "float32; build it from the bundle's float32 ONNX (--fp16 keeps float32 I/O)"
            )
    width_in = int(engine.get_tensor_shape(input_name)[1])
    if width_in not in (-1, f_out):
        raise InvalidInput(
            f"the TensorRT engine takes {width_in} features but the plan produces {f_out}"
        )
    low, _, high = engine.get_tensor_profile_shape(input_name, 0)
    min_rows, max_rows = int(low[0]), int(high[0])
    if max_rows < max_batch_size:
        raise InvalidInput(
            f"the TensorRT engine's profile allows at most {max_rows} rows but the batcher "
            f"forms batches of up to {max_batch_size}: rebuild with --max-batch "
            f"{max_batch_size} or lower max_batch_size"
        )
    contexts: dict[int, trt_api.IExecutionContext] = {}  # one per instance (GIL-guarded)

    def context(instance: int) -> trt_api.IExecutionContext:
        ctx = contexts.get(instance)
        if ctx is None:
            ctx = engine.create_execution_context()
            if ctx is None:
                raise Unavailable("TensorRT could not create an execution context (GPU memory?)")
            contexts[instance] = ctx
        return ctx

    def run(batch: Any) -> Any:
        n = int(batch.shape[0])
        rows = max(n, min_rows)
        x = batch if rows == n else batch.padded(rows)
        ctx = context(int(batch.instance))
        if not ctx.set_input_shape(input_name, (rows, f_out)):
            raise InternalError(f"TensorRT refused input shape ({rows}, {f_out})")
        ctx.set_tensor_address(input_name, int(x.data_ptr))
        out_dims = ctx.get_tensor_shape(output_name)
        width = math.prod(int(out_dims[i]) for i in range(1, len(out_dims)))
        out = batch.output(rows, max(1, width))
        ctx.set_tensor_address(output_name, int(out.data_ptr))
        if not ctx.execute_async_v3(int(batch.stream)):
            raise InternalError("TensorRT execute_async_v3 failed (see TensorRT's log)")
        return out if rows == n else out.head(n)

    return run
