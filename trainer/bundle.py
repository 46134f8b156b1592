"""Stage 8: write the bundle directory of docs/bundle.md: artifacts, ``metrics.jsonl``,
``training_curves.png`` and ``mlserve.json`` with the sha256 and size of every artifact.

Writes only inside the given directory. Not safe to call twice on one directory concurrently.
"""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlserve
import numpy as np
from mlserve.bundle import MANIFEST, sha256_file


def framework_versions() -> dict[str, str]:
    import onnx
    import torch

    return {"mlserve": mlserve.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__.split("+")[0],
            "onnx": onnx.__version__}


def code_version() -> str:
    """``git:<short sha> | mlserve <version>`` (without git: the mlserve version alone)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent, check=True)
        return f"git:{sha.stdout.strip()} | mlserve {mlserve.__version__}"
    except (OSError, subprocess.SubprocessError):
        return f"mlserve {mlserve.__version__}"


def write_history(history: list[dict[str, float]], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in history))
    return path


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss curves (left) and validation metrics (right) per epoch, PNG (Agg backend)."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5))
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key in ("train_loss", "valid_loss"):
        loss_ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_title("loss")
    loss_ax.legend()
    for key in sorted({k for row in history for k in row if k.startswith("valid_")} - {
            "valid_loss"}):
        metric_ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=key)
    metric_ax.set_xlabel("epoch")
    metric_ax.set_title("validation metrics")
    if metric_ax.lines:
        metric_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def write_manifest(bundle_dir: Path, manifest: dict[str, Any], artifacts: list[str]) -> Path:
    """Add ``artifacts`` (sha256 + bytes of each named file) and write mlserve.json."""
    manifest = dict(manifest)
    manifest["artifacts"] = {
        name: {"sha256": sha256_file(bundle_dir / name),
               "bytes": (bundle_dir / name).stat().st_size}
        for name in artifacts}
    path = bundle_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
