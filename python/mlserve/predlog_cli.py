"""``mlserve predlog``: what a prediction log holds, and its retention (docs/monitoring.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mlserve.errors import MlserveError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``predlog`` (``show``, ``gc``) to an ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "predlog", help="the prediction log `mlserve serve --prediction-log` writes",
        description="List or prune the Parquet parts of a prediction log (a directory or "
        "s3://BUCKET/PREFIX). Reports on it: `mlserve drift report --prediction-log`.")
    sub = parser.add_subparsers(dest="predlog_command", required=True, metavar="COMMAND")
    show = sub.add_parser("show", help="parts, size and days per model version",
                          description="Per model version (predictions) and per model "
                          "(labels): parts, bytes, first and last day. Reads only a listing.")
    show.add_argument("location", metavar="LOCATION", help="directory or s3://BUCKET/PREFIX")
    gc = sub.add_parser("gc", help="remove parts older than a retention period",
                        description="Removes the parts filed on a UTC day before the day of "
                        "now - KEEP (predictions and labels alike). Run it from a cron job.")
    gc.add_argument("location", metavar="LOCATION", help="directory or s3://BUCKET/PREFIX")
    gc.add_argument("--keep", required=True, metavar="DURATION",
                    help="how long to keep parts: 30d, 12h, ... (days are whole UTC days)")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return parser


def run(args: argparse.Namespace) -> int:
    from mlserve.drift.cli import parse_duration_s
    from mlserve.predlog import remove_older, summarize

    try:
        if args.predlog_command == "show":
            groups = summarize(args.location)
            if not groups:
                print(f"no parts at {args.location}")
                return 0
            from rich.console import Console
            from rich.table import Table

            table = Table("kind", "model", "version", "parts", "MB", "first day", "last day")
            for g in groups:
                table.add_row(g.kind, g.model, g.version or "-", str(g.parts),
                              f"{g.bytes / 1e6:.2f}", g.first_day, g.last_day)
            Console().print(table)
            return 0
        removed = remove_older(args.location, parse_duration_s(args.keep),
                               dry_run=args.dry_run)
    except (MlserveError, OSError) as exc:
        print(f"mlserve predlog: {exc}", file=sys.stderr)
        return 2
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} parts")
    for name in removed[:20]:
        print(f"  {name}")
    if len(removed) > 20:
        print(f"  ... and {len(removed) - 20} more")
    return 0
