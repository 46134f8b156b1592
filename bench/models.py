"""The MLP the ``engine`` scenario serves, exported to ONNX.

``export_mlp`` writes an MLP (f_in -> 256 -> 128 -> 1, ReLU, sigmoid; dynamic batch axis) built
with torch and exported by ``torch.onnx.export(dynamo=True)``, falling back to the legacy
exporter, and to a graph written with ``onnx.helper`` when torch is not installed (torch is an
optional extra of mlserve) or when asked to (the smoke level, for speed). Weights are seeded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = (256, 128)
OPSET = 18

logger = logging.getLogger(__name__)


def _torch_export(f_in: int, path: Path) -> str:
    import torch

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = f_in
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1), torch.nn.Sigmoid()).eval()
    x = torch.randn(8, f_in)
    # The exporters print progress and warn about optional operators; none of it matters here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=1 << 20)
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                verbose=False,
            )
            return "torch.onnx.export(dynamo=True)"
        except Exception as exc:
            logger.warning("dynamo export failed (%s); using the legacy exporter", exc)
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                opset_version=17,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
            return "torch.onnx.export(dynamo=False)"


def _onnx_helper_export(f_in: int, path: Path) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes: list[Any] = []
    inits: list[Any] = []
    prev, width = "input", f_in
    for i, out in enumerate((*HIDDEN, 1)):
        w = (rng.standard_normal((width, out)) / np.sqrt(width)).astype(np.float32)
        b = (0.01 * rng.standard_normal(out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        act = "Relu" if out != 1 else "Sigmoid"
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
            helper.make_node(act, [f"z{i}"], ["output" if out == 1 else f"h{i}"]),
        ]
        prev, width = f"h{i}", out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", f_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return "onnx.helper"


def export_mlp(f_in: int, path: Path, builder: str = "torch") -> str:
    """Writes the MLP for ``f_in`` inputs to ``path``; returns how it was built."""
    if builder == "torch":
        try:
            return _torch_export(f_in, path)
        except ImportError:
            logger.warning("torch is not installed; building the MLP with onnx.helper")
    elif builder != "onnx":
        raise ValueError(f"builder must be 'torch' or 'onnx', got {builder!r}")
    return _onnx_helper_export(f_in, path)
