"""``mlserve batch``: score Parquet/CSV files with a registered model into a Parquet dataset,
in worker processes, resumable (docs/batch.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mlserve.errors import MlserveError
from mlserve.features._settings import CLI_METAVAR as FEATURES_METAVAR
from mlserve.registry._settings import CLI_HELP as REGISTRY_HELP
from mlserve.registry._settings import CLI_METAVAR as REGISTRY_METAVAR


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "batch", help="score Parquet/CSV files with a model into a Parquet dataset (resumable)",
        description="Scores the rows of INPUT (Parquet or CSV files, or directories of them) "
        "with a registered model, as the server would (the bundle's encoding, feature plan and "
        "model), and writes OUTPUT: a Parquet dataset of the kept input columns and the "
        "predictions, one part per chunk of --chunk-rows rows, in input order. Models trained "
        "on a feature service get their stored features joined point in time from the offline "
        "store. A killed job resumes where it stopped when run again with the same arguments; "
        "a finished one is left as it is. Exit status: 0 done, 2 error, 130 interrupted.")
    parser.add_argument("model", metavar="MODEL",
                        help="registry ref (NAME, NAME/VERSION, NAME@ALIAS) or bundle directory "
                        "(an absolute path or ./PATH, as for mlserve serve)")
    parser.add_argument("--input", "-i", required=True, nargs="+", metavar="PATH",
                        help="Parquet/CSV files, or directories of them (read in sorted order)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="output directory (a Parquet dataset; created if needed)")
    parser.add_argument("--registry", metavar=REGISTRY_METAVAR, default=None,
                        help=REGISTRY_HELP)
    parser.add_argument("--backend", default="onnxruntime",
                        choices=["onnxruntime", "cpu", "torch", "torch-cuda", "tensorrt"],
                        help="how the model runs (default: onnxruntime on the CPU)")
    parser.add_argument("--device", type=int, default=0, help="GPU of the GPU backends")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1: score in this process, writing "
                        "parts on a thread; more pay a second or so of start-up each and help "
                        "on big inputs with spare cores)")
    parser.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                        help="rows per chunk and output part (default 65536)")
    parser.add_argument("--keep", metavar="COLS", default=None,
                        help="comma-separated input columns to copy to the output (default: "
                        "all; '' for none: only the predictions)")
    parser.add_argument("--feature-store", metavar=FEATURES_METAVAR, default=None,
                        help="feature store of a model trained on a feature service, a "
                        "directory or s3://BUCKET/PREFIX (default: the one its lineage names)")
    parser.add_argument("--as-of", metavar="TIME", default=None,
                        help="join every row's stored features as of TIME (ISO 8601 or 'now') "
                        "instead of the row's timestamp column")
    parser.add_argument("--with-features", action="store_true",
                        help="also write the joined stored feature columns")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="a binary model's predicted_class is its positive class at "
                        "probability >= this (default 0.5)")
    parser.add_argument("--overwrite", action="store_true",
                        help="score everything again, replacing a previous job's parts in OUTPUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlserve.batch.job import CHUNK_ROWS, run_batch
    from mlserve.progress import rows_progress

    console = Console(stderr=True)
    keep = None if args.keep is None else [c.strip() for c in args.keep.split(",") if c.strip()]
    try:
        with rows_progress(console, "scoring", args.quiet) as advance:
            result = run_batch(args.model, args.input, args.output, registry=args.registry,
                               backend=args.backend, device=args.device,
                               workers=args.workers,
                               chunk_rows=(CHUNK_ROWS if args.chunk_rows is None
                                           else args.chunk_rows), keep=keep,
                               feature_store=args.feature_store, as_of=args.as_of,
                               with_features=args.with_features, threshold=args.threshold,
                               overwrite=args.overwrite, progress=advance)
    except KeyboardInterrupt:
        print(f"mlserve batch: interrupted; the finished parts in {args.output} are kept: run the "
              "same command again to resume", file=sys.stderr)
        return 130
    except (MlserveError, OSError) as exc:
        print(f"mlserve batch: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"{result.model} -> {result.output}", show_header=False)
    table.add_row("rows", f"{result.rows:,}")
    table.add_row("parts", f"{result.chunks:,}" + (f" ({result.resumed_chunks:,} already done)"
                                                   if result.resumed_chunks else ""))
    table.add_row("scored now", f"{result.rows_scored:,} rows in {result.seconds:.1f} s"
                  + (f" ({result.rows_per_second:,.0f} rows/s)" if result.rows_scored else ""))
    Console().print(table)
    return 0
