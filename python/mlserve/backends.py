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
import threading
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


#: Batch sizes whose model launches one instance keeps as CUDA graphs; others run eagerly.
MAX_MODEL_GRAPHS = 64
#: Eager runs of a batch size before it is captured (TorchScript's profiling executor optimizes
#: the module over its first runs; capturing earlier would record the unoptimized launches).
GRAPH_WARMUP_RUNS = 3
#: One capture at a time in the process: torch registers each graph with its shared CUDA
#: generator state, which is not guarded for concurrent captures from several instances' threads.
_CAPTURE_LOCK = threading.Lock()


def torch_cuda_fn(model: str | os.PathLike[str], device: int = 0, *,
                  cuda_graphs: bool = True) -> DeviceFn:
    """A TorchScript module on CUDA device ``device``, fed the core's device batch.

    Per batch: ``torch.from_dlpack(batch)`` views the normalized rows in place (no copy), the
    module runs under ``torch.inference_mode`` with the instance's stream as torch's current
    stream (``torch.cuda.ExternalStream``), and the float32 result tensor is returned as is; the
    core copies it to the host on the same stream and keeps the tensor until the batch ended.
    Raises Unavailable (no GPU, CPU-only torch) before loading anything onto the device.

    With ``cuda_graphs``, the module's launches for a batch size are captured into a CUDA graph
    (``torch.cuda.CUDAGraph``, thread-local capture on the instance stream, one memory pool per
    instance) after GRAPH_WARMUP_RUNS eager runs of that size, and replayed from then on: one
    launch instead of the module's kernel launches and TorchScript's interpreter, which is most
    of a small batch's time. A graph reads its input from the address it was captured with, so
    graphs are keyed by (stream, input address, rows): the pipeline's normalized buffer is
    allocated once per instance, so that address is stable. The graph's output tensor is
    rewritten by its next replay; the core has copied it to the host and synchronized the
    stream before the instance's next batch. Up to MAX_MODEL_GRAPHS sizes per instance; a
    failed capture turns graphs off for this model (eager from then on, with a warning).
    """
    from mlserve.gpu import import_torch_cuda

    torch = import_torch_cuda(device)
    target = torch.device("cuda", device)
    module = _load_torchscript(torch, model, target, "torch-cuda")
    # Per instance stream (all GIL-guarded): its ExternalStream, graph memory pool, graphs.
    streams: dict[int, Any] = {}
    pools: dict[int, Any] = {}
    graphs: dict[tuple[int, int, int], tuple[Any, Any]] = {}  # key -> (graph, output)
    per_stream: dict[int, int] = {}  # graphs kept per instance stream
    eager_runs: dict[tuple[int, int, int], int] = {}
    graphs_on = [cuda_graphs]

    def graphs_off(why: str) -> None:
        graphs_on[0] = False
        with _CAPTURE_LOCK:
            graphs.clear()
            per_stream.clear()
        warnings.warn(f"torch-cuda: {why}; running the model eagerly from now on",
                      RuntimeWarning, stacklevel=3)

    def capture(stream_key: int, x: Any) -> tuple[Any, Any] | None:
        graph = torch.cuda.CUDAGraph()
        pool = pools.get(stream_key)
        if pool is None:
            pool = pools[stream_key] = torch.cuda.graph_pool_handle()
        try:
            # Thread-local mode: the other instances' threads may keep launching meanwhile.
            with _CAPTURE_LOCK:
                graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                try:
                    out = module(x).float().contiguous()
                finally:
                    graph.capture_end()
        except Exception as e:  # torch raises RuntimeError for ops it cannot capture
            graphs_off(f"CUDA graph capture failed ({e})")
            return None
        return graph, out

    def run(batch: Any) -> Any:
        stream = streams.get(batch.stream)
        if stream is None:
            stream = torch.cuda.ExternalStream(batch.stream, device=target)
            streams[batch.stream] = stream
        with torch.cuda.stream(stream), torch.inference_mode():
            x = torch.from_dlpack(batch)
            if graphs_on[0]:
                key = (batch.stream, x.data_ptr(), x.shape[0])
                entry = graphs.get(key)
                if entry is None and per_stream.get(batch.stream, 0) < MAX_MODEL_GRAPHS:
                    runs = eager_runs.get(key, 0)
                    if runs >= GRAPH_WARMUP_RUNS:
                        entry = capture(batch.stream, x)
                        if entry is not None:
                            graphs[key] = entry
                            per_stream[batch.stream] = per_stream.get(batch.stream, 0) + 1
                            eager_runs.pop(key, None)
                    else:
                        eager_runs[key] = runs + 1
                if entry is not None:
                    try:
                        entry[0].replay()  # on the current (instance) stream
                        return entry[1]
                    except Exception as e:  # the eager run below reports a broken context
                        graphs_off(f"CUDA graph replay failed ({e})")
            y = module(x)
            return y.float().contiguous()

    run.graphs = graphs  # type: ignore[attr-defined]  # for tests and stats
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
