"""The ``mlserve`` command line. Each subcommand has ``--help``."""

from __future__ import annotations

import argparse
import sys

from mlserve import __version__
from mlserve.registry._settings import CLI_HELP as REGISTRY_HELP
from mlserve.registry._settings import CLI_METAVAR as REGISTRY_METAVAR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlserve",
        description="High-performance serving for feature-based models.",
    )
    parser.add_argument("--version", action="version", version=f"mlserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="feature store, train, register and serve a fraud model on embedded synthetic data",
        description="Builds a feature store from synthetic card transactions (per-user and "
        "per-merchant daily aggregates, materialized to LMDB), trains a fraud model on their "
        "point-in-time join plus request-time columns (fitted feature plan, torch MLP, "
        "TorchScript + ONNX export), registers it as fraud@champion, serves it through the "
        "Engine (native normalization, dynamic batching, onnxruntime) and prints the "
        "evaluation, predictions on fresh rows, throughput per access pattern, batch sizes and "
        "drift histograms; then serves it over HTTP and sends requests keyed by user_id and "
        "merchant_id.",
    )
    demo.add_argument("--rows", type=int, default=40_000, help="transactions to train on")
    demo.add_argument("--requests", type=int, default=20_000, help="one-row requests per pattern")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (early stopping)")
    demo.add_argument("--registry", metavar=REGISTRY_METAVAR, default=None, help=REGISTRY_HELP)
    demo.add_argument("--feature-store", metavar="PATH", default=None,
                      help="the demo's feature store, rebuilt on every run (default: "
                      "demo-features beside the registry)")
    demo.add_argument("--no-http", action="store_true",
                      help="skip the part that starts `mlserve serve` and uses the client")

    from mlserve import gpu_cli, predlog_cli
    from mlserve.batch import cli as batch_cli
    from mlserve.drift import cli as drift_cli
    from mlserve.features import cli as features_cli
    from mlserve.registry import cli as registry_cli
    from mlserve.server import cli as server_cli
    from mlserve.trainer import cli as trainer_cli

    gpu_cli.add_parsers(sub)
    trainer_cli.add_parser(sub)
    registry_cli.add_parser(sub)
    server_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    features_cli.add_parser(sub)
    drift_cli.add_parser(sub)
    predlog_cli.add_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return int(server_cli.run(args))
    if args.command == "registry":
        return int(registry_cli.run(args))
    if args.command == "batch":
        return int(batch_cli.run(args))
    if args.command == "features":
        return int(features_cli.run(args))
    if args.command == "drift":
        return int(drift_cli.run(args))
    if args.command == "predlog":
        return int(predlog_cli.run(args))
    if args.command in ("train", "tune"):
        return int(trainer_cli.run(args))
    if args.command in ("devices", "build-engine"):
        return gpu_cli.run(args)
    if args.command == "demo":
        from mlserve.demo import run
        from mlserve.errors import MlserveError

        try:
            run(rows=args.rows, requests=args.requests, epochs=args.epochs,
                registry=args.registry, http=not args.no_http, feature_store=args.feature_store)
        except MlserveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
