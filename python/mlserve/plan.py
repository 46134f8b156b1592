"""FeaturePlan: the model's fitted preprocessing, compiled by the C++ core.

The spec format and exact semantics are in docs/feature_plan.md. Transforms run in C++ with the
GIL released; this module only loads specs from files or strings.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from mlserve import _core
from mlserve.errors import InvalidInput

PlanSource = dict[str, Any] | str | os.PathLike[str]


def load_spec(source: PlanSource) -> dict[str, Any]:
    """Returns the plan dict from a dict, a JSON string, or a path to a JSON file.

    A ``mlserve.json`` bundle file is accepted too: its ``preprocessing`` section is used.
    """
    if isinstance(source, dict):
        spec = source
    elif isinstance(source, str) and source.lstrip().startswith("{"):
        try:
            spec = json.loads(source)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"feature plan: not valid JSON: {e}") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"feature plan: no such file {str(path)!r}")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InvalidInput(f"feature plan: {path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise InvalidInput("feature plan: expected a JSON object with 'features'")
    if "features" not in spec and isinstance(spec.get("preprocessing"), dict):
        spec = spec["preprocessing"]
    return spec


class FeaturePlan(_core.FeaturePlan):
    """A compiled feature plan.

    ``FeaturePlan(spec)`` accepts a dict, a JSON string or a path; a bad plan raises
    :class:`mlserve.errors.InvalidInput` naming the feature and the problem.

    Methods (from the core): ``transform(x, histograms=False, num_threads=1)`` maps float32
    ``[n, f_in]`` to ``[n, f_out]``; ``histograms(reset=False)`` reads the drift counters;
    ``transform_cuda(x, device=0, histograms=False, kernel="")`` does the same on a GPU, by
    default with the plan's NVRTC-specialized kernel where it builds (``kernel="auto"``; also
    ``"jit-tma"``, ``"jit"``, ``"generic"``: docs/gpu.md);
    ``cuda_jit_source()`` / ``compile_cuda_jit(arch)`` give that kernel's source and binary.
    Attributes: ``f_in``, ``f_out``, ``input_names``, ``output_names``, ``spec``.
    """

    def __init__(self, spec: PlanSource) -> None:
        loaded = load_spec(spec)
        super().__init__(loaded)
        self.spec: dict[str, Any] = loaded

    def __repr__(self) -> str:
        return f"FeaturePlan(f_in={self.f_in}, f_out={self.f_out}, features={self.input_names!r})"


def cuda_built() -> bool:
    """Whether this build of the core includes the CUDA kernels."""
    return bool(_core.cuda_built())


def nvrtc_library_candidates(paths: list[str] | None = None) -> list[str]:
    """libnvrtc files of NVIDIA's wheels on ``paths`` (default sys.path), newest CUDA first.

    The nvidia-cuda-nvrtc wheel (a dependency of CUDA builds of torch) puts the library in
    ``site-packages/nvidia/cu13/lib`` (CUDA 13) or ``nvidia/cuda_nvrtc/lib`` (CUDA 12), which the
    dynamic loader does not search; the core tries these before its own search path.
    """
    found: list[str] = []
    for base in paths if paths is not None else sys.path:
        for sub, name in (("cu13", "libnvrtc.so.13"), ("cuda_nvrtc", "libnvrtc.so.12")):
            lib = os.path.join(base or ".", "nvidia", sub, "lib", name)
            if os.path.isfile(lib) and lib not in found:
                found.append(lib)
    found.sort(key=lambda p: not p.endswith(".13"))
    return found


def nvrtc_status() -> dict[str, Any]:
    """Whether NVRTC loads (needed for ``kernel="jit"``): ``{available, detail, version}``."""
    return dict(_core.nvrtc_status())


_core.set_nvrtc_candidates(nvrtc_library_candidates())


def cuda_devices() -> list[dict[str, Any]]:
    """GPUs this build can use; ``[]`` without a CUDA build, a driver or a device."""
    return list(_core.cuda_devices())
