"""mlserve.trainer: raw table -> fitted FeaturePlan -> torch model -> bundle (issue 3).

Public surface: :func:`train`, :func:`tune`, :class:`TrainConfig`, :class:`TrainResult`,
:class:`TuneResult`, :func:`encode_rows` (raw rows -> the plan's float32 input, shared with
serving) and the synthetic data sets in :mod:`mlserve.trainer.datasets`. The stages live in
small modules (load, split, preprocess, model, evaluate, export, reference, bundle, pipeline).
"""

from __future__ import annotations

from mlserve.trainer.config import TrainConfig, load_config
from mlserve.trainer.pipeline import TrainResult, TuneResult, train, tune
from mlserve.trainer.preprocess import encode_rows

__all__ = ["TrainConfig", "TrainResult", "TuneResult", "encode_rows", "load_config", "train",
           "tune"]
