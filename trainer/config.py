"""Typed training configuration: :class:`TrainConfig`, TOML loading and ``key=value`` overrides.

Every knob of the pipeline (splitting, preprocessing, the MLP, early stopping, export checks)
lives here with a docstring and validated bounds; cross-field checks name both fields. Plain
immutable data, safe to share between threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib
from mlserve.categories import UNKNOWN_POLICIES, check_policy, parse_feature_policies
from mlserve.errors import InvalidInput

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and pipeline settings of one training run."""

    hidden: tuple[int, ...] = (64, 32)
    """Widths of the MLP's hidden layers (empty: a linear model)."""
    dropout: float = 0.1
    """Dropout probability after each hidden layer, in [0, 1)."""
    lr: float = 1e-3
    """AdamW learning rate, > 0."""
    weight_decay: float = 1e-4
    """AdamW weight decay, >= 0."""
    batch_size: int = 256
    """Training rows per optimizer step, >= 1."""
    epochs: int = 30
    """Upper bound on passes over the training split, >= 1."""
    patience: int = 5
    """Early stopping: epochs without a better validation loss before stopping, >= 1."""
    seed: int = 7
    """Seeds the split, parameter initialisation, dropout and batch order."""
    valid_fraction: float = 0.15
    """Share of rows in the validation split (early stopping, model selection)."""
    test_fraction: float = 0.15
    """Share of rows in the test split (the reported held-out metrics)."""
    clip_quantile: float = 0.001
    """Numeric features are clipped at this quantile and its complement (0 disables)."""
    skew_threshold: float = 1.0
    """Apply log1p to a non-negative numeric feature whose skewness exceeds this."""
    min_category_count: int = 5
    """Categories seen fewer times in the training split go to the out-of-vocabulary slot."""
    max_vocabulary: int = 100
    """At most this many most frequent categories per feature keep a slot of their own."""
    max_categorical_cardinality: int = 20
    """Type inference: integer columns with at most this many distinct values are categorical."""
    unknown_category: str = "oov"
    """What serving does with a category value outside a feature's vocabulary, recorded per
    categorical input in the bundle signature: "oov" (the out-of-vocabulary slot), "missing"
    (a missing value) or "error" (refuse the request, HTTP 400)."""
    unknown_category_features: tuple[tuple[str, str], ...] = ()
    """Per-feature overrides of ``unknown_category``: a TOML table
    ``[train.unknown_category_features]`` of ``feature = "policy"``, or
    ``--set unknown_category_features=country:error,channel:missing``."""
    histogram_bins: int = 10
    """Quantile bins of the drift reference profile per numeric feature (deciles: 10)."""
    min_rows: int = 50
    """Fewer rows than this (after dropping missing labels) is refused."""
    exclude: tuple[str, ...] = ()
    """Columns never used as features when features are inferred (ids, free text...)."""
    parity_atol: float = 1e-4
    """Largest allowed |onnxruntime - torch| difference on held-out rows."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InvalidInput:
            return InvalidInput(f"config '{name}': {why} (got {getattr(self, name)!r})")

        if any(int(h) < 1 for h in self.hidden):
            raise bad("hidden", "every hidden width must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        for name in ("batch_size", "epochs", "patience", "min_category_count", "max_vocabulary",
                     "histogram_bins", "min_rows"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        for name in ("valid_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise bad(name, "must be in (0, 0.5)")
        if self.valid_fraction + self.test_fraction >= 0.8:
            raise InvalidInput("config 'valid_fraction' + 'test_fraction' must be < 0.8 so that "
                               "training keeps most rows")
        if not 0.0 <= self.clip_quantile < 0.5:
            raise bad("clip_quantile", "must be in [0, 0.5)")
        if not self.parity_atol > 0:
            raise bad("parity_atol", "must be > 0")
        if self.unknown_category not in UNKNOWN_POLICIES:
            raise bad("unknown_category", f"must be one of {', '.join(UNKNOWN_POLICIES)}")
        for feature, policy in self.unknown_category_features:
            check_policy(policy, f"config 'unknown_category_features' for '{feature}'")

    def unknown_category_for(self, feature: str) -> str:
        """The unknown-category policy of one categorical feature."""
        return dict(self.unknown_category_features).get(feature, self.unknown_category)

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-friendly form (tuples as lists, per-feature settings as tables)."""
        out = {k: list(v) if isinstance(v, tuple) else v
               for k, v in dataclasses.asdict(self).items()}
        out["unknown_category_features"] = dict(self.unknown_category_features)
        return out


ConfigSource = TrainConfig | Mapping[str, Any] | str | Path | None


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert ``value`` (TOML value or override string) to the type of the field's default."""
    if name == "unknown_category_features":
        if isinstance(value, Mapping):  # a TOML table
            return tuple((str(k), check_policy(v, f"config '{name}' for '{k}'"))
                         for k, v in value.items())
        return tuple(parse_feature_policies(value, f"config '{name}'").items())
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                parts = [p for p in value.strip("[]() ").split(",") if p.strip()]
                value = [p.strip().strip("'\"") for p in parts]
            elem = int if name == "hidden" else str
            return tuple(elem(v) for v in value)
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"config '{name}': cannot use {value!r} as "
                           f"{type(default).__name__}") from None
    return value


def _from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    base = base or TrainConfig()
    known = {f.name: getattr(base, f.name) for f in fields(TrainConfig)}
    updates: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise InvalidInput(f"config: unknown key '{key}'; known keys: {', '.join(known)}")
        updates[key] = _coerce(key, value, known[key])
    return dataclasses.replace(base, **updates)


def load_config(source: ConfigSource = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from a config, a dict or a ``.toml`` file, then
    ``key=value`` overrides (``--set``) applied in order with type coercion.

    A TOML file may hold the keys at top level or under a ``[train]`` table.
    """
    if source is None:
        config = TrainConfig()
    elif isinstance(source, TrainConfig):
        config = source
    elif isinstance(source, Mapping):
        config = _from_mapping(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"config file '{path}' does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file '{path}': not valid TOML: {exc}") from None
        config = _from_mapping(data.get("train", data))
    pairs: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"override '{item}': expected key=value, e.g. lr=0.01")
        pairs[key.strip()] = value.strip()
    return _from_mapping(pairs, config) if pairs else config


def config_defaults() -> dict[str, Any]:
    """Field name -> default (for help texts)."""
    return {f.name: f.default for f in fields(TrainConfig)}


__all__ = ["TASKS", "ConfigSource", "TrainConfig", "config_defaults", "load_config", "with_values"]


def with_values(config: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``config`` with ``values`` (field -> value, coerced and validated) applied."""
    return _from_mapping(values, config)
