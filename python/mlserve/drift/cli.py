"""``mlserve drift report``: a table (CSV or Parquet) against a model's training reference,
written as an HTML page with per-feature plots and a JSON summary (docs/monitoring.md)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from mlserve.errors import InvalidInput, MlserveError
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
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE",
                        help="the current data: .csv or .parquet with the model's input columns "
                        "(and optionally its label column)")
    source.add_argument("--prediction-log", metavar="LOCATION",
                        help="what the model version served: the prediction log `mlserve serve "
                        "--prediction-log` wrote (a directory or s3://BUCKET/PREFIX), its "
                        "metrics on the rows whose labels came back to /feedback")
    report.add_argument("--since", metavar="DURATION", default=None,
                        help="with --prediction-log: only rows logged in the last DURATION "
                        "(30m, 24h, 7d; default all)")
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` (or a number of seconds) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise InvalidInput(f"a duration is a positive number with s, m, h or d, like 24h; got "
                           f"{text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mlserve.drift.config import DriftConfig, read_config_file
    from mlserve.drift.offline import log_report, resolve_bundle, table_report
    from mlserve.drift.report import write_report
    from mlserve.progress import rows_progress

    console = Console(stderr=True)
    try:
        config = DriftConfig.from_dict(read_config_file(args.config)) if args.config else None
        bundle = resolve_bundle(args.model, args.registry)
        out = args.out or f"drift-report-{bundle.name}-{bundle.version or 0}"
        if args.prediction_log is not None:
            since_ns = (None if args.since is None
                        else time.time_ns() - int(parse_duration_s(args.since) * 1e9))
            with rows_progress(console, "scoring the logged rows", args.quiet) as advance:
                report = log_report(bundle, args.prediction_log, since_ns=since_ns,
                                    config=config, sample_rows=args.sample_rows,
                                    progress=advance)
        else:
            if args.since is not None:
                raise InvalidInput("--since applies to --prediction-log")
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

