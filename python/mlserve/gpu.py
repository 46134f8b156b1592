"""Which execution backends can run here, and the checks that say why one cannot.

Execution backends of a served model (``Engine(backend=...)``, ``mlserve serve --backend``):

- ``cpu`` (alias ``onnxruntime``): the bundle's ``model.onnx`` on onnxruntime, CPU.
- ``torch``: the bundle's ``model.pt`` (TorchScript) on torch, CPU.
- ``torch-cuda``: ``model.pt`` on a GPU. The batch is normalized on the GPU by the core's CUDA
  pipeline and handed to torch through DLPack on the instance's stream (no copy).
- ``tensorrt``: the bundle's TensorRT engine (``model.plan``, made by ``mlserve build-engine``)
  on the same pipeline.

Every check raises :class:`mlserve.errors.Unavailable` saying what is missing and what to
install, and never creates a CUDA or TensorRT object unless a usable GPU was found first
(TensorRT's runtime crashes the process when created without one). Imports of torch and
TensorRT happen here, lazily, only when a GPU backend is asked for. Stateless, thread-safe.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from mlserve import _core
from mlserve.errors import Unavailable

#: Backend names a bundle can be served with, and the artifact each one runs.
BUNDLE_BACKENDS = ("cpu", "onnxruntime", "torch", "torch-cuda", "tensorrt")
#: The ones that run on a GPU.
GPU_BACKENDS = ("torch-cuda", "tensorrt")
#: Aliases: the serving config's ``cpu`` is onnxruntime.
ALIASES = {"cpu": "onnxruntime"}

TORCH_CUDA_HINT = (
    "install a CUDA build of torch (e.g. pip install torch --index-url "
    "https://download.pytorch.org/whl/cu130), or serve with --backend cpu"
)
TENSORRT_HINT = (
    "install TensorRT 10 for your CUDA (pip install tensorrt-cu13, or tensorrt-cu12), or serve "
    "with --backend torch-cuda or cpu"
)


def canonical_backend(name: str) -> str:
    """``cpu`` -> ``onnxruntime``; other names unchanged."""
    return ALIASES.get(name, name)


def require_device(device: int = 0, *, backend: str = "GPU") -> dict[str, Any]:
    """The core's description of CUDA device ``device``; Unavailable when there is none.

    Uses the core's CUDA runtime query only (no context is created): any runtime error or zero
    devices means no usable GPU, exactly as ``mlserve devices`` reports it.
    """
    if not _core.cuda_built():
        raise Unavailable(
            f"backend {backend!r} needs a GPU build of mlserve, and this one was built without "
            "CUDA (nvcc not found at build time): reinstall with nvcc on PATH (MLSERVE_CUDA=ON), "
            "or serve with --backend cpu"
        )
    devices = _core.cuda_devices()
    if not devices:
        raise Unavailable(
            f"backend {backend!r} needs an NVIDIA GPU, and no usable GPU was found (no driver, "
            "no device, or none visible through CUDA_VISIBLE_DEVICES); `mlserve devices` shows "
            "what the core sees; serve with --backend cpu"
        )
    if not 0 <= device < len(devices):
        raise Unavailable(
            f"backend {backend!r}: CUDA device {device} does not exist ({len(devices)} visible: "
            f"0..{len(devices) - 1})"
        )
    return dict(devices[device])


def import_torch_cuda(device: int = 0) -> ModuleType:
    """torch, after checking the core sees GPU ``device`` and torch can use it."""
    require_device(device, backend="torch-cuda")
    try:
        torch = importlib.import_module("torch")
    except ImportError as e:
        raise Unavailable(f"backend 'torch-cuda' needs torch: {TORCH_CUDA_HINT}") from e
    if getattr(torch.version, "cuda", None) is None:
        raise Unavailable(
            f"backend 'torch-cuda': the installed torch {torch.__version__} is a CPU-only "
            f"build; {TORCH_CUDA_HINT}"
        )
    if not torch.cuda.is_available() or torch.cuda.device_count() <= device:
        raise Unavailable(
            f"backend 'torch-cuda': torch {torch.__version__} cannot use CUDA device {device} "
            "(torch.cuda.is_available() is False or too few devices); check that torch's CUDA "
            "version is supported by the driver"
        )
    return torch


def import_tensorrt(device: int = 0) -> ModuleType:
    """The ``tensorrt`` module, imported only after GPU ``device`` was found usable."""
    require_device(device, backend="tensorrt")
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as e:
        raise Unavailable(f"backend 'tensorrt' needs the tensorrt package: {TENSORRT_HINT}") from e
    if not hasattr(module, "Runtime"):
        # A namespace package: only the type stubs (tensorrt-stubs) are installed, not TensorRT.
        raise Unavailable(f"backend 'tensorrt' needs the tensorrt package (only its type stubs "
                          f"are installed): {TENSORRT_HINT}")
    return module


def backend_status() -> dict[str, str]:
    """Per execution backend: ``"ok"`` or why it cannot run here (for ``mlserve devices``).

    Creates no CUDA context and no TensorRT object; only checks imports and device queries.
    """
    status: dict[str, str] = {"cpu": "ok"}
    try:
        importlib.import_module("torch")
        status["torch"] = "ok"
    except ImportError:
        status["torch"] = "torch is not installed"
    for name in GPU_BACKENDS:
        try:
            require_device(0, backend=name)
        except Unavailable as e:
            status[name] = str(e)
            continue
        module = "torch" if name == "torch-cuda" else "tensorrt"
        try:
            found = importlib.import_module(module)
        except ImportError:
            hint = TORCH_CUDA_HINT if module == "torch" else TENSORRT_HINT
            status[name] = f"{module} is not installed: {hint}"
            continue
        if module == "torch" and getattr(found.version, "cuda", None) is None:
            status[name] = f"torch {found.__version__} is a CPU-only build: {TORCH_CUDA_HINT}"
        else:
            status[name] = "ok"
    return status
