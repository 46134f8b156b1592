"""Command line: ``python -m bench <scenario>|all [--quick] [--list] [--out DIR] [--plain]``.

Run from the repo root. Each scenario run writes ``bench/results/<scenario>-<stamp>.json``,
``.md`` and ``.png`` and prints the Markdown summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import harness, registry, report


def _parser(names: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="mlserve benchmarks: ratios against a baseline measured in the same run.",
    )
    p.add_argument("scenario", nargs="?", help=f"one of: {', '.join(names)}, or 'all'")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (checks the harness)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_OUT, help="results folder")
    p.add_argument("--plain", action="store_true", help="print the summary as plain Markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    known = registry.scenarios()
    args = _parser(list(known)).parse_args(argv)
    if args.list:
        width = max(len(n) for n in known)
        for name, scenario in known.items():
            print(f"{name:<{width}}  {scenario.summary}")
        return 0
    if not args.scenario:
        _parser(list(known)).print_usage(sys.stderr)
        return 2
    names = list(known) if args.scenario == "all" else [args.scenario]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown scenario {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    level = "smoke" if args.smoke else "quick" if args.quick else "full"
    for name in names:
        _record, paths = harness.run_scenario(name, level, args.out)
        report.print_markdown(paths["markdown"].read_text(), plain=args.plain)
        print(f"wrote {', '.join(str(p) for p in paths.values())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
