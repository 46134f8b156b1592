"""Execution backends that run in Python: onnxruntime and TorchScript, on CPU or GPU.

Host backends (``onnxruntime_fn``, ``torch_fn``) return ``fn(batch: float32 [n, f_out]) ->
array`` that the core calls once per batch with the normalized rows, taking the GIL only for the
call (both libraries release it while computing). GPU backends (``torch_cuda_fn`` here,
``tensorrt_fn`` in :mod:`mlserve.tensorrt_engine`) return ``fn(batch: _core.DeviceBatch) ->
DLPack array``: the batch was normalized on the GPU by the core's pipeline, fn enqueues the model
on ``batch.stream`` and returns the device result, which the core copies back on that stream.
The core's own backends ("noop", "rowsum", "normalize-cuda") and plain callables ("python",
"python-cuda") need nothing from here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput, Unavailable

BatchFn = Callable[[np.ndarray], Any]
DeviceFn = Callable[[Any], Any]


def onnxruntime_fn(model: str | os.PathLike[str] | bytes, f_out: int) -> BatchFn:
    """An onnxruntime CPU session with one intra-op thread, shared by every instance.

    ``Session.run`` is thread-safe; with one intra-op thread each instance computes on its own
    worker thread (two intra-op threads on two cores stall each other, measured).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - a core dependency
        raise Unavailable("backend 'onnxruntime' needs the onnxruntime package") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(_existing(model))
    try:
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise InvalidInput(f"backend 'onnxruntime': cannot load model: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidInput(
            f"backend 'onnxruntime': the model has {len(inputs)} inputs; it must take one "
            f"float32 [n, {f_out}] tensor (the normalized features)"
        )
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise InvalidInput(
            f"backend 'onnxruntime': model input {inp.name!r} is {inp.type}, not float32"
        )
    width = inp.shape[-1] if inp.shape else None
    if isinstance(width, int) and width != f_out:
        raise InvalidInput(
            f"backend 'onnxruntime': model input {inp.name!r} has {width} columns but the feature "
            f"plan produces {f_out}; export the model for this plan"
        )
    name = inp.name
    output = session.get_outputs()[0].name

    def run(batch: np.ndarray) -> Any:
        return session.run([output], {name: batch})[0]

    return run


def torch_fn(model: str | os.PathLike[str]) -> BatchFn:
    """A TorchScript module on the CPU, run under ``torch.inference_mode``."""
    try:
        import torch
    except ImportError as e:
        raise Unavailable(
            "backend 'torch' needs torch: pip install torch==2.13.0 (CPU wheel), "
            "or use 'onnxruntime'"
        ) from e
    module = _load_torchscript(torch, model, "cpu", "torch")

    def run(batch: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()

    return run


def torch_cuda_fn(model: str | os.PathLike[str], device: int = 0) -> DeviceFn:
    """A TorchScript module on CUDA device ``device``, fed the core's device batch.

    Per batch: ``torch.from_dlpack(batch)`` views the normalized rows in place (no copy), the
    module runs under ``torch.inference_mode`` with the instance's stream as torch's current
    stream (``torch.cuda.ExternalStream``), and the float32 result tensor is returned as is; the
    core copies it to the host on the same stream and keeps the tensor until the batch ended.
    Raises Unavailable (no GPU, CPU-only torch) before loading anything onto the device.
    """
    from mlserve.gpu import import_torch_cuda

    torch = import_torch_cuda(device)
    target = torch.device("cuda", device)
    module = _load_torchscript(torch, model, target, "torch-cuda")
    streams: dict[int, Any] = {}  # one ExternalStream object per instance stream (GIL-guarded)

    def run(batch: Any) -> Any:
        stream = streams.get(batch.stream)
        if stream is None:
            stream = torch.cuda.ExternalStream(batch.stream, device=target)
            streams[batch.stream] = stream
        with torch.cuda.stream(stream), torch.inference_mode():
            y = module(torch.from_dlpack(batch))
            return y.float().contiguous()

    return run


def _load_torchscript(torch: Any, model: str | os.PathLike[str], map_location: Any,
                      backend: str) -> Any:
    try:
        with warnings.catch_warnings():
            # torch 2.13 marks TorchScript deprecated in favour of torch.export; bundles still
            # ship TorchScript (ARCHITECTURE §3), and loading it works as before.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*jit.*")
            return torch.jit.load(str(_existing(model)), map_location=map_location).eval()
    except InvalidInput:
        raise
    except Exception as e:  # torch raises RuntimeError subclasses for bad files
        raise InvalidInput(f"backend {backend!r}: cannot load TorchScript model: {e}") from e


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"model file {str(p)!r} does not exist")
    return p
