"""``mlserve train`` and ``mlserve tune``: argument parsing and result tables for the trainer.

:func:`add_parser` adds both subcommands to an argparse ``subparsers``; :func:`run` executes
the parsed arguments and returns the exit status (2 for invalid input, printed as one line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mlserve.errors import MlserveError
from mlserve.features._settings import CLI_HELP as FEATURES_HELP
from mlserve.features._settings import CLI_METAVAR as FEATURES_METAVAR
from rich.console import Console
from rich.table import Table


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="training table (.csv or .parquet)")
    parser.add_argument("--label", required=True, help="target column")
    parser.add_argument("--features", metavar="SERVICE",
                        help="instead of --data: train on this feature service's point-in-time "
                        "values (NAME or NAME/VERSION) for the rows of --entities")
    parser.add_argument("--entities", metavar="FILE",
                        help="with --features: .csv/.parquet of join keys, event timestamp "
                        "(--timestamp, default event_ts), label and request-time columns")
    parser.add_argument("--feature-store", metavar=FEATURES_METAVAR,
                        help=f"feature store: {FEATURES_HELP}")
    parser.add_argument("--name", help="model name (default: the data file's stem)")
    parser.add_argument("--task", choices=["binary", "multiclass", "regression"])
    parser.add_argument("--numeric", nargs="+", metavar="COL", help="numeric feature columns")
    parser.add_argument("--categorical", nargs="+", metavar="COL",
                        help="categorical feature columns")
    parser.add_argument("--timestamp", metavar="COL", help="split by time on this column "
                        "(with --features: the entity file's event time, default event_ts)")
    parser.add_argument("--config", metavar="FILE.toml", help="TrainConfig values")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--registry", metavar="PATH|s3://BUCKET/PREFIX",
                        help="register the bundle in this registry (a directory, or one shared "
                        "through object storage)")
    parser.add_argument("--out", metavar="DIR", help="bundle directory (new or empty)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers: Any) -> None:
    """Add ``train`` and ``tune`` to an argparse subparsers object."""
    train = subparsers.add_parser("train", help="train a model on a table and write its bundle")
    _add_common(train)
    train.set_defaults(trainer_command="train")
    tune = subparsers.add_parser("tune", help="random hyperparameter search; best is registered")
    _add_common(tune)
    tune.add_argument("--trials", type=int, default=8, help="number of trials")
    tune.add_argument("--space", metavar="JSON",
                      help='search space, e.g. \'{"lr": [0.001, 0.003], "hidden": [[32], [64]]}\'')
    tune.set_defaults(trainer_command="tune")


DEFAULT_SPACE: dict[str, list[Any]] = {
    "lr": [3e-4, 1e-3, 3e-3],
    "hidden": [[32], [64, 32], [128, 64]],
    "dropout": [0.0, 0.1, 0.2],
    "weight_decay": [0.0, 1e-4, 1e-3],
}


def _open_registry(path: str | None, console: Console) -> Any:
    if path is None:
        return None
    try:
        from mlserve.registry import Registry
    except ImportError:
        console.print("[yellow]mlserve.registry is not available; the bundle is not registered")
        return None
    return Registry(Path(path))


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    return table


def run(args: argparse.Namespace) -> int:
    """Execute ``train`` or ``tune``; 0 on success, 2 on invalid input."""
    from mlserve.trainer.pipeline import train, tune

    console = Console()
    if (args.data is None) == (args.features is None) or \
            (args.features is None) != (args.entities is None):
        console.print("[red]error:[/] give --data FILE, or --features SERVICE with "
                      "--entities FILE")
        return 2
    common: dict[str, Any] = {
        "features": args.features, "entities": args.entities,
        "feature_store": args.feature_store,
        "name": args.name, "task": args.task, "numeric": args.numeric,
        "categorical": args.categorical, "timestamp": args.timestamp, "config": args.config,
        "overrides": tuple(args.overrides), "out_dir": args.out,
        "progress": not args.no_progress,
    }
    try:
        registry = _open_registry(args.registry, console)
        if args.trainer_command == "tune":
            space = json.loads(args.space) if args.space else DEFAULT_SPACE
            outcome = tune(args.data, args.label, space=space, trials=args.trials,
                           registry=registry, **common)
            result = outcome.best
            best = next(t for t in outcome.trials if t["bundle_path"] == result.bundle_path)
            console.print(f"{len(outcome.trials)} trials; best: {best['params']}")
        else:
            result = train(args.data, args.label, registry=registry, **common)
    except MlserveError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except json.JSONDecodeError as exc:
        console.print(f"[red]error:[/] --space is not valid JSON: {exc}")
        return 2
    console.print(metrics_table(result.metrics, f"{result.name}: held-out metrics ({result.task})"))
    console.print(f"bundle: {result.bundle_path}")
    if result.model_version is not None:
        version = getattr(result.model_version, "version", result.model_version)
        console.print(f"registered: {result.name} version {version} (run {result.run_id})")
    return 0
