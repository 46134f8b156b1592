"""Stage 6: export the model to TorchScript and ONNX, and check that onnxruntime agrees with
torch on held-out rows.

Both artifacts take normalized features float32 [n, f_out] (input ``x``, dynamic batch) and
return the bundle's output (``probability``, ``probabilities`` or ``prediction``). Torch's
export deprecation warnings are silenced locally, never globally.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from mlserve.errors import InternalError
from mlserve.trainer.model import ServingModel, predict

logger = logging.getLogger(__name__)

OUTPUT_NAMES = {"binary": "probability", "multiclass": "probabilities",
                "regression": "prediction"}


def output_signature(task: str, n_classes: int) -> list[dict[str, object]]:
    """``signature.outputs`` of docs/bundle.md."""
    width = n_classes if task == "multiclass" else 1
    return [{"name": OUTPUT_NAMES[task], "dtype": "float32", "shape": [-1, width]}]


def export_torchscript(model: ServingModel, example: np.ndarray, path: Path) -> Path:
    """Trace the model (eval mode) and save it to ``path``."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            model, torch.from_numpy(np.array(example[:2], np.float32)))
        torch.jit.save(traced, str(path))
    return path


def export_onnx(model: ServingModel, example: np.ndarray, path: Path) -> Path:
    """One-file ONNX with a dynamic batch dimension (dynamo exporter; legacy as fallback)."""
    model.eval()
    x = torch.from_numpy(np.array(example[:2], np.float32))
    output = OUTPUT_NAMES[model.task]
    sink = io.StringIO()
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" notes are noise here
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False,
                              input_names=["x"], output_names=[output], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # the dynamo exporter is young; the legacy one is enough here
            logger.warning("dynamo ONNX export failed (%s); using the legacy exporter", exc)
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=[output],
                              dynamic_axes={"x": {0: "batch"}, output: {0: "batch"}})
        finally:
            onnx_logger.setLevel(level)
    return path


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model with onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0])


def check_parity(model: ServingModel, onnx_path: Path, torchscript_path: Path, x: np.ndarray,
                 atol: float) -> float:
    """Max |onnxruntime - torch| and |TorchScript - torch| on ``x``; InternalError if > atol."""
    expected = predict(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(torchscript_path))  # type: ignore[no-untyped-call]
        with torch.no_grad():
            ts_out = scripted(torch.from_numpy(np.array(x, np.float32))).numpy()
    worst = 0.0
    for label, got in (("onnxruntime", onnx_outputs(onnx_path, x)), ("TorchScript", ts_out)):
        if got.shape != expected.shape:
            raise InternalError(f"{label} output shape {got.shape} != torch {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        if not diff <= atol:
            raise InternalError(f"{label} disagrees with torch by {diff:.3g} (> {atol:g}) on "
                                "held-out rows; the export is wrong")
        worst = max(worst, diff)
    return worst
