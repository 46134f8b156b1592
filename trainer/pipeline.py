"""The training pipeline end to end: :func:`train` (load -> split -> fit plan -> train MLP ->
evaluate -> export -> reference profile -> bundle -> registry) and :func:`tune` (random search,
each trial logged as a run, the best registered). The table is a file or DataFrame, or an
entity file joined point-in-time with a feature service (:mod:`mlserve.trainer.features`).

Not thread-safe: training seeds torch's global generator. The registry is duck-typed: any
object with ``log_run(params, metrics, *, name=None) -> str`` and
``register(bundle_dir, *, name=None, run_id=None, ...) -> version`` works.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from mlserve.bundle import FORMAT_VERSION
from mlserve.errors import InvalidInput
from mlserve.features import FeatureService
from mlserve.trainer import bundle as bundle_io
from mlserve.trainer.config import ConfigSource, TrainConfig, load_config, with_values
from mlserve.trainer.evaluate import SELECTION_METRIC, evaluate
from mlserve.trainer.export import (
    check_parity,
    export_onnx,
    export_torchscript,
    output_signature,
)
from mlserve.trainer.features import StoreLike, feature_table
from mlserve.trainer.load import DataSource, LoadedTable, load_table
from mlserve.trainer.model import ServingModel, predict, train_model
from mlserve.trainer.preprocess import Preprocessing, encode_rows, fit_preprocessing
from mlserve.trainer.reference import reference_profile
from mlserve.trainer.split import Splits, split_table
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

logger = logging.getLogger(__name__)


class RegistryLike(Protocol):
    def log_run(self, params: dict[str, Any], metrics: dict[str, Any], *,
                name: str | None = None) -> str: ...

    def register(self, bundle_dir: Path, *, name: str | None = None,
                 run_id: str | None = None) -> Any: ...


@dataclass
class TrainResult:
    """What one training run produced."""

    metrics: dict[str, float]
    """Held-out (test split) metrics."""
    bundle_path: Path
    model_version: Any
    """What ``registry.register`` returned, or None without a registry."""
    run_id: str | None
    """What ``registry.log_run`` returned, or None without a registry."""
    history: list[dict[str, float]]
    valid_metrics: dict[str, float] = field(default_factory=dict)
    config: TrainConfig = field(default_factory=TrainConfig)
    task: str = "binary"
    name: str = ""
    preprocessing: Preprocessing | None = None
    model: ServingModel | None = None
    test_frame: pd.DataFrame | None = None
    """The raw test rows (features, label)."""
    test_outputs: np.ndarray | None = None
    """The model's outputs on ``test_frame`` at training time."""


@dataclass
class TuneResult:
    best: TrainResult
    trials: list[dict[str, Any]]
    """Per trial: ``params`` (the sampled values), ``valid_metrics``, ``metrics``, ``run_id``,
    ``bundle_path``."""


def _labels(table: LoadedTable, frame: pd.DataFrame) -> np.ndarray:
    y = frame[table.label]
    if table.task == "regression":
        return np.asarray(y.to_numpy(np.float64))
    index = {c: i for i, c in enumerate(table.classes or [])}
    return np.asarray(y.map(index).to_numpy(np.int64))


def _default_name(data: DataSource | None, name: str | None) -> str:
    if name:
        return name
    if isinstance(data, (str, Path)):
        return Path(data).name.split(".")[0]
    return "model"


def _bundle_dir(out_dir: str | Path | None, name: str) -> Path:
    if out_dir is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = Path("runs") / f"{name}-{stamp}"
    else:
        path = Path(out_dir)
    if path.exists() and any(path.iterdir()):
        raise InvalidInput(f"output directory '{path}' is not empty; choose a new --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


class _EpochProgress:
    """A rich progress bar advanced once per epoch (no-op when disabled)."""

    def __init__(self, enabled: bool, epochs: int, name: str) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} epochs"),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 disable=not enabled, transient=False)
        self.task = self.progress.add_task(f"training {name}", total=epochs, status="")

    def __enter__(self) -> _EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, row: dict[str, float]) -> None:
        status = "  ".join(f"{k}={v:.4f}" for k, v in row.items()
                           if k != "epoch" and isinstance(v, float))
        self.progress.update(self.task, advance=1, status=status)


def _fit(table: LoadedTable, splits: Splits, config: TrainConfig, *, name: str,
         bundle_dir: Path, progress: bool,
         lineage: Mapping[str, Any] | None = None) -> TrainResult:
    """Stages 3-8 (without the registry) on an already split table."""
    prep = fit_preprocessing(splits.train, table.numeric, table.categorical, config)
    encoded_train = encode_rows(splits.train, prep.inputs, unknown="oov")
    x_train = prep.plan.transform(encoded_train)
    x_valid = prep.transform(splits.valid)
    x_test = prep.transform(splits.test)
    y_train, y_valid, y_test = (_labels(table, f) for f in (splits.train, splits.valid,
                                                            splits.test))
    n_classes = len(table.classes or [])

    with _EpochProgress(progress, config.epochs, name) as on_epoch:
        trained = train_model(x_train, y_train, x_valid, y_valid, task=table.task,
                              n_classes=n_classes, config=config, on_epoch=on_epoch,
                              valid_metric=lambda out: evaluate(table.task, y_valid, out))
    model = trained.model
    test_outputs = predict(model, x_test)
    metrics = evaluate(table.task, y_test, test_outputs)
    valid_metrics = evaluate(table.task, y_valid, predict(model, x_valid))

    export_torchscript(model, x_train, bundle_dir / "model.pt")
    export_onnx(model, x_train, bundle_dir / "model.onnx")
    parity_rows = x_test[:1000] if len(x_test) else x_train[:1000]
    parity = check_parity(model, bundle_dir / "model.onnx", bundle_dir / "model.pt",
                          parity_rows, config.parity_atol)
    bundle_io.write_history(trained.history, bundle_dir / "metrics.jsonl")
    bundle_io.plot_curves(trained.history, bundle_dir / "training_curves.png")

    reference = reference_profile(prep.spec, encoded_train, table.task, predict(model, x_train),
                                  sample_size=config.reference_sample, seed=config.seed)
    params = {**config.to_dict(), "best_epoch": trained.best_epoch,
              "epochs_run": len(trained.history)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": None,
        "created_at": bundle_io.utc_now(),
        "framework": bundle_io.framework_versions(),
        "task": table.task,
        "label": table.label,
        "classes": table.classes,
        "signature": {"inputs": prep.inputs,
                      "outputs": output_signature(table.task, n_classes)},
        "preprocessing": prep.spec,
        "reference": reference,
        "metrics": {**metrics, "parity_max_abs_diff": parity},
        "params": params,
        "lineage": {"dataset_fingerprint": table.fingerprint, "rows": len(table.frame),
                    "source": table.source, "feature_views": [],
                    "code_version": bundle_io.code_version(), "seed": config.seed,
                    "parent_run": None, "imported": False,
                    "split": {"train": len(splits.train), "valid": len(splits.valid),
                              "test": len(splits.test), "time_ordered": splits.time_ordered},
                    **(lineage or {})},
    }
    bundle_io.write_manifest(bundle_dir, manifest, ["model.pt", "model.onnx",
                                                    "training_curves.png", "metrics.jsonl"])
    logger.info("bundle %s written: %s", bundle_dir, metrics)
    test_frame = splits.test[[*table.features, table.label]]
    return TrainResult(metrics=metrics, bundle_path=bundle_dir, model_version=None, run_id=None,
                       history=trained.history, valid_metrics=valid_metrics, config=config,
                       task=table.task, name=name, preprocessing=prep, model=model,
                       test_frame=test_frame, test_outputs=test_outputs)


def _register(result: TrainResult, registry: RegistryLike, params: Mapping[str, Any]) -> None:
    result.run_id = registry.log_run(dict(params), dict(result.metrics), name=result.name)
    result.model_version = registry.register(result.bundle_path, name=result.name,
                                             run_id=result.run_id)


def _load(data: DataSource | None, label: str | None, *, task: str | None,
          numeric: Sequence[str] | None, categorical: Sequence[str] | None,
          timestamp: str | None, config: TrainConfig, features: str | FeatureService | None,
          entities: DataSource | None, feature_store: StoreLike,
          as_of_created: Any) -> tuple[LoadedTable, dict[str, Any] | None]:
    """The validated table, from ``data`` or from the feature store (``features`` over
    ``entities``), and the lineage the latter adds."""
    if label is None:
        raise InvalidInput("train: the label column is required")
    if features is None:
        if entities is not None:
            raise InvalidInput("entities= needs features= (the feature service to join)")
        if data is None:
            raise InvalidInput("train: give data= (a table) or features= and entities=")
        return load_table(data, label, task=task, numeric=numeric, categorical=categorical,
                          timestamp=timestamp, config=config), None
    if data is not None:
        raise InvalidInput("give either data= or features= with entities=, not both")
    if entities is None:
        raise InvalidInput("features= needs entities= (keys, event timestamp, label and "
                           "request-time columns)")
    joined = feature_table(entities, label, features, store=feature_store, timestamp=timestamp,
                           numeric=numeric, categorical=categorical,
                           as_of_created=as_of_created, config=config)
    table = load_table(joined.frame, label, task=task, numeric=joined.numeric,
                       categorical=joined.categorical, timestamp=joined.timestamp,
                       config=config)
    table.source = joined.source
    return table, joined.lineage


def train(data: DataSource | None = None, label: str | None = None, *, name: str | None = None,
          task: str | None = None, numeric: Sequence[str] | None = None,
          categorical: Sequence[str] | None = None, timestamp: str | None = None,
          config: ConfigSource = None, overrides: Sequence[str] = (),
          registry: RegistryLike | None = None, out_dir: str | Path | None = None,
          progress: bool = True, features: str | FeatureService | None = None,
          entities: DataSource | None = None, feature_store: StoreLike = None,
          as_of_created: Any = None) -> TrainResult:
    """Train a model on a table and write (and optionally register) its bundle.

    ``data``: a DataFrame or a .csv/.parquet path; ``label``: the target column. ``task``
    (binary | multiclass | regression), the feature columns and their kinds are inferred when
    not given (see :func:`mlserve.trainer.load.load_table`). ``config``: a TrainConfig, a dict
    or a .toml path; ``overrides``: ``key=value`` strings applied on top. ``out_dir``: the
    bundle directory (new or empty; default ``runs/<name>-<utc time>``). ``name`` defaults to
    the data file's stem. Invalid data or config raises :class:`mlserve.errors.InvalidInput`.

    From the feature store instead of ``data``: ``features`` (a feature service, ``NAME`` or
    ``NAME/VERSION``) and ``entities`` (a DataFrame or file with its join keys, the event
    timestamp ``timestamp`` (default ``event_ts``), the label and optionally request-time
    columns, which ``numeric``/``categorical`` then name). The table is
    ``historical_features`` of the service for those rows, split by time; the bundle's lineage
    records the service and view versions (see :mod:`mlserve.trainer.features`), so that the
    server fetches the same features online for requests carrying entity keys.
    ``feature_store``: a FeatureStore or its root (default ``$MLSERVE_FEATURE_STORE``, else
    ``$MLSERVE_HOME/features``); ``as_of_created``: the bitemporal cut-off.
    """
    cfg = load_config(config, overrides)
    name = _default_name(data if features is None else entities, name)
    table, lineage = _load(data, label, task=task, numeric=numeric, categorical=categorical,
                           timestamp=timestamp, config=cfg, features=features,
                           entities=entities, feature_store=feature_store,
                           as_of_created=as_of_created)
    splits = split_table(table, cfg)
    result = _fit(table, splits, cfg, name=name, bundle_dir=_bundle_dir(out_dir, name),
                  progress=progress, lineage=lineage)
    if registry is not None:
        _register(result, registry, cfg.to_dict())
    return result


def sample_space(space: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """One draw: a uniformly chosen value per parameter (lists, tuples and ranges)."""
    draw: dict[str, Any] = {}
    for key, values in space.items():
        choices = list(values)
        if not choices:
            raise InvalidInput(f"search space '{key}' has no values")
        draw[key] = rng.choice(choices)
    return draw


def tune(data: DataSource | None = None, label: str | None = None, *,
         space: Mapping[str, Any], trials: int = 10, name: str | None = None,
         task: str | None = None, numeric: Sequence[str] | None = None,
         categorical: Sequence[str] | None = None, timestamp: str | None = None,
         config: ConfigSource = None, overrides: Sequence[str] = (),
         registry: RegistryLike | None = None, out_dir: str | Path | None = None,
         progress: bool = True, search_seed: int = 0,
         features: str | FeatureService | None = None, entities: DataSource | None = None,
         feature_store: StoreLike = None, as_of_created: Any = None) -> TuneResult:
    """Random search: ``trials`` draws from ``space`` (param -> list/range of values), each
    trained like :func:`train` into ``out_dir/trial-NNN`` and logged with
    ``registry.log_run``; the trial with the best validation metric (ROC-AUC, accuracy or
    RMSE by task) is registered. Returns the best result and every trial's record.
    ``features``/``entities``/``feature_store``/``as_of_created``: as for :func:`train`."""
    if trials < 1:
        raise InvalidInput(f"trials must be >= 1 (got {trials})")
    base = load_config(config, overrides)
    for key in space:
        with_values(base, {key: space[key][0] if isinstance(space[key], Sequence) else
                           next(iter(space[key]))})
    name = _default_name(data if features is None else entities, name)
    table, lineage = _load(data, label, task=task, numeric=numeric, categorical=categorical,
                           timestamp=timestamp, config=base, features=features,
                           entities=entities, feature_store=feature_store,
                           as_of_created=as_of_created)
    root = _bundle_dir(out_dir, f"{name}-tune")
    metric, higher = SELECTION_METRIC[table.task]
    rng = random.Random(search_seed)
    records: list[dict[str, Any]] = []
    best: TrainResult | None = None
    best_score = -np.inf
    for k in range(trials):
        draw = sample_space(space, rng)
        cfg = with_values(base, draw)
        result = _fit(table, split_table(table, cfg), cfg, name=name,
                      bundle_dir=_bundle_dir(root / f"trial-{k:03d}", name), progress=progress,
                      lineage=lineage)
        if registry is not None:
            result.run_id = registry.log_run({**cfg.to_dict(), "trial": k},
                                             dict(result.metrics), name=f"{name}-trial-{k:03d}")
        score = result.valid_metrics.get(metric, np.nan)
        score = score if higher else -score
        records.append({"params": draw, "valid_metrics": result.valid_metrics,
                        "metrics": result.metrics, "run_id": result.run_id,
                        "bundle_path": result.bundle_path})
        if best is None or (np.isfinite(score) and score > best_score):
            best, best_score = result, score
    assert best is not None
    if registry is not None:
        best.model_version = registry.register(best.bundle_path, name=name, run_id=best.run_id)
    return TuneResult(best=best, trials=records)
