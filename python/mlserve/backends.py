"""Execution backends that run in Python: onnxruntime and TorchScript.

Each factory returns ``fn(batch: float32 [n, f_out]) -> array`` that the core calls once per
batch, taking the GIL only for the call (both libraries release it while computing). The core's
own backends ("noop", "rowsum") and plain callables ("python") need nothing from here.
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
    try:
        with warnings.catch_warnings():
            # torch 2.13 marks TorchScript deprecated in favour of torch.export; bundles still
            # ship TorchScript (ARCHITECTURE §3), and loading it works as before.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*jit.*")
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(_existing(model)), map_location="cpu"
            ).eval()
    except Exception as e:  # torch raises RuntimeError subclasses for bad files
        raise InvalidInput(f"backend 'torch': cannot load TorchScript model: {e}") from e

    def run(batch: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()

    return run


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"model file {str(p)!r} does not exist")
    return p
