"""Bring your own model: register an ONNX or TorchScript file trained elsewhere.

``bundle_from_model`` writes a bundle directory (docs/bundle.md) around the model: the given
feature plan, or an identity plan (one numeric column per model input, no ops) when none is
given, a signature (categorical inputs with their unknown-category policy, docs/bundle.md),
checksums, and lineage that says the model was imported. The result serves exactly like a
trained bundle (``Engine.from_registry``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlserve import __version__
from mlserve.bundle import FORMAT_VERSION, MANIFEST, sha256_file
from mlserve.categories import DEFAULT_UNKNOWN_POLICY, CategoryEncoder, check_policy_features
from mlserve.errors import InvalidInput
from mlserve.plan import FeaturePlan, load_spec

_DTYPES = {"float32", "float64", "int32", "int64", "bool"}


def parse_inputs(text: str) -> list[tuple[str, str]]:
    """``"amount:float32,age:int64"`` -> [("amount", "float32"), ("age", "int64")]."""
    out: list[tuple[str, str]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, dtype = item.partition(":")
        dtype = dtype or "float32"
        if not name or dtype not in _DTYPES:
            raise InvalidInput(
                f"--inputs entry {item!r}: write NAME:DTYPE with DTYPE one of "
                f"{', '.join(sorted(_DTYPES))}"
            )
        out.append((name, dtype))
    if not out:
        raise InvalidInput("--inputs is empty; list the model's input columns as NAME:DTYPE,...")
    return out


def _onnx_io(path: Path) -> tuple[int | None, list[dict[str, Any]]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises untyped errors for bad files
        raise InvalidInput(f"{path} is not a loadable ONNX model: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise InvalidInput(
            f"{path}: mlserve serves models with one float32 [n, f] input; this one has "
            + ", ".join(f"{i.name}: {i.type}" for i in inputs)
        )
    width = inputs[0].shape[-1] if inputs[0].shape else None
    outputs = [
        {"name": o.name, "dtype": "float32",
         "shape": [-1 if not isinstance(d, int) else d for d in (o.shape or [])]}
        for o in session.get_outputs()
    ]
    return (width if isinstance(width, int) else None), outputs


def bundle_from_model(
    out_dir: str | Path,
    *,
    name: str,
    onnx: str | Path | None = None,
    torchscript: str | Path | None = None,
    preprocessing: dict[str, Any] | str | Path | None = None,
    inputs: list[tuple[str, str]] | None = None,
    input_width: int | None = None,
    task: str = "regression",
    unknown_category: str = DEFAULT_UNKNOWN_POLICY,
    unknown_category_features: Mapping[str, str] | None = None,
) -> Path:
    """Writes a bundle around a model file; returns its directory (created, must not exist).

    ``unknown_category``: the unknown-category policy of every categorical plan feature,
    ``unknown_category_features`` per-feature overrides (feature -> policy).
    """
    if (onnx is None) == (torchscript is None):
        raise InvalidInput("give exactly one model: --onnx FILE or --torchscript FILE")
    model = Path(onnx if onnx is not None else torchscript)  # type: ignore[arg-type]
    if not model.is_file():
        raise InvalidInput(f"model file {str(model)!r} does not exist")
    width, outputs = _onnx_io(model) if onnx is not None else (None, [])
    if preprocessing is not None:
        spec = load_spec(preprocessing)
    else:
        if inputs is None:
            n = input_width if input_width is not None else width
            if n is None:
                raise InvalidInput(
                    "cannot tell how many inputs the model takes: give --inputs NAME:DTYPE,... "
                    "or --input-width N (or --preprocessing plan.json)"
                )
            inputs = [(f"x{i}", "float32") for i in range(n)]
        spec = {"features": [{"name": n, "kind": "numeric", "ops": []} for n, _ in inputs]}
    plan = FeaturePlan(spec)
    if width is not None and width != plan.f_out:
        raise InvalidInput(
            f"{model.name} takes {width} input columns but the plan produces {plan.f_out}; "
            "give the plan the model was trained with (--preprocessing) or matching --inputs"
        )
    dtypes = dict(inputs or [])
    overrides = dict(unknown_category_features or {})
    categorical = [f["name"] for f in spec["features"] if f["kind"] == "categorical"]
    check_policy_features(overrides, categorical, "the unknown-category overrides")
    signature_inputs: list[dict[str, Any]] = []
    for column, f in zip(plan.input_names, spec["features"], strict=True):
        entry: dict[str, Any] = {"name": column, "dtype": dtypes.get(column, "float32"),
                                 "kind": f["kind"], "nullable": True}
        if f["kind"] == "categorical":
            entry["unknown"] = overrides.get(column, unknown_category)
            CategoryEncoder.for_input(entry, f)  # the policy must fit (no 'error' on a hash)
        signature_inputs.append(entry)
    root = Path(out_dir)
    if root.exists():
        raise InvalidInput(f"{root} already exists; give a new directory")
    root.mkdir(parents=True)
    artifact = "model.onnx" if onnx is not None else "model.pt"
    shutil.copyfile(model, root / artifact)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": None,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "framework": {"mlserve": __version__, "python": sys.version.split()[0]},
        "task": task,
        "signature": {
            "inputs": signature_inputs,
            "outputs": outputs or [{"name": "output", "dtype": "float32", "shape": [-1, -1]}],
        },
        "preprocessing": spec,
        "artifacts": {
            artifact: {
                "sha256": sha256_file(root / artifact),
                "bytes": (root / artifact).stat().st_size,
            }
        },
        "reference": {},
        "metrics": {},
        "params": {},
        "lineage": {"imported": True, "source": str(model.resolve()), "seed": None,
                    "dataset_fingerprint": None, "parent_run": None},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=True))
    return root
