"""mlserve.trainer: raw table -> fitted FeaturePlan -> torch model -> bundle (issue 3).

Public surface: :func:`train`, :func:`tune`, :class:`TrainConfig`, :class:`TrainResult`,
:class:`TuneResult`, :func:`encode_rows` (raw rows -> the plan's float32 input, shared with
serving) and the synthetic data sets in :mod:`mlserve.trainer.datasets`. The stages live in
small modules (load, split, preprocess, model, evaluate, export, reference, bundle, pipeline).

The names are imported on first access (PEP 562): importing a submodule such as
``mlserve.trainer.cli`` or ``mlserve.trainer.datasets`` must not import torch, which takes
seconds and would slow every ``mlserve`` command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlserve.trainer.config import TrainConfig, load_config
    from mlserve.trainer.pipeline import TrainResult, TuneResult, train, tune
    from mlserve.trainer.preprocess import encode_rows

_HOME = {"TrainConfig": "config", "load_config": "config", "TrainResult": "pipeline",
         "TuneResult": "pipeline", "train": "pipeline", "tune": "pipeline",
         "encode_rows": "preprocess"}

__all__ = ["TrainConfig", "TrainResult", "TuneResult", "encode_rows", "load_config", "train",
           "tune"]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
