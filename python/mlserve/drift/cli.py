"""``mlserve drift report``: a table (CSV or Parquet) against a model's training reference,
written as an HTML page with per-feature plots and a JSON summary (docs/monitoring.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mlserve.errors import MlserveError
from mlserve.registry._settings import CLI_HELP as REGISTRY_HELP
from mlserve.registry._settings import CLI_METAVAR as REGISTRY_METAVAR


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``drift`` (with ``report``) to an ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "drift", help="compare data with a model's training reference (drift report)",
        description="Drift against the reference profile a model's bundle carries.")
    sub = parser.add_subparsers(dest="drift_command", required=True, metavar="COMMAND")
    report = sub.add_parser(
        "report", help="write an HTML + JSON drift report of a table",
        description="Scores a table with the model (as the server would), computes every drift "
        "statistic against the model's training reference (PSI, Jensen-Shannon, KS, "
        "Wasserstein, chi-squared, missing / out-of-range / unseen-category rates, prediction "
        "drift) and writes report.html (summary table, reference vs current histograms) and "
        "report.json. Exit status: 0 no dataset drift, 1 dataset drift, 2 error.")
    report.add_argument("--model", required=True, metavar="REF",
                        help="registry ref (NAME, NAME/VERSION, NAME@ALIAS) or bundle directory "
                        "(an absolute path or ./PATH)")
    report.add_argument("--data", required=True, metavar="FILE",
                        help="the current data: .csv or .parquet with the model's input columns "
                        "(and optionally its label column)")
    report.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: drift-report-NAME-VERSION)")
    report.add_argument("--registry", metavar=REGISTRY_METAVAR, default=None,
                        help=REGISTRY_HELP)
    report.add_argument("--config", metavar="FILE", default=None,
                        help="JSON/TOML drift settings (DriftConfig fields, per-feature "
                        "'features')")
    report.add_argument("--sample-rows", type=int, default=5000,
                        help="rows sampled for KS/Wasserstein (default 5000, as the server)")
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mlserve.drift.config import DriftConfig, read_config_file
    from mlserve.drift.offline import resolve_bundle, table_report
    from mlserve.drift.report import write_report
    from mlserve.progress import rows_progress

    console = Console(stderr=True)
    try:
        config = DriftConfig.from_dict(read_config_file(args.config)) if args.config else None
        bundle = resolve_bundle(args.model, args.registry)
        out = args.out or f"drift-report-{bundle.name}-{bundle.version or 0}"
        with rows_progress(console, f"scoring {args.data}", args.quiet) as advance:
            report = table_report(bundle, args.data, config=config,
                                  sample_rows=args.sample_rows, progress=advance)
        html_path, json_path = write_report(report, out)
    except (MlserveError, OSError, ValueError) as exc:
        print(f"mlserve drift report: {exc}", file=sys.stderr)
        return 2
    d = report.drift
    verdict = ("too few rows to judge" if d.dataset_drift is None
               else "DATASET DRIFT" if d.dataset_drift else "no dataset drift")
    print(f"{report.model}/{report.version}: {verdict}; drifted features: "
          f"{', '.join(d.drifted_features) or 'none'} ({d.rows:,} rows)")
    print(f"wrote {html_path} and {json_path}")
    return 1 if d.dataset_drift else 0

