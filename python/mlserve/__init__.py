"""mlserve: serve feature-based (tabular) models fast, from raw rows to predictions.

Public surface: the compiled :class:`FeaturePlan`, the :class:`Engine` (plan + dynamic batcher +
backend), its :class:`BatcherConfig`, CUDA device queries and :mod:`mlserve.errors`.
Everything else is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mlserve import errors
from mlserve.config import BatcherConfig
from mlserve.engine import Engine
from mlserve.plan import FeaturePlan, cuda_built, cuda_devices

__all__ = [
    "BatcherConfig",
    "Engine",
    "FeaturePlan",
    "__version__",
    "cuda_built",
    "cuda_devices",
    "errors",
]
