"""The ``mlserve`` command line. Each subcommand has ``--help``."""

from __future__ import annotations

import argparse
import sys

from mlserve import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlserve",
        description="High-performance serving for feature-based models.",
    )
    parser.add_argument("--version", action="version", version=f"mlserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="normalize + batch + serve a fraud scorer on embedded synthetic data",
        description="Fits a feature plan and a scorer on synthetic card transactions, serves it "
        "through the Engine (dynamic batching, onnxruntime) and prints predictions, "
        "ROC-AUC, throughput per access pattern, batch sizes and drift histograms.",
    )
    demo.add_argument("--rows", type=int, default=200_000, help="transactions to generate")
    demo.add_argument("--requests", type=int, default=20_000, help="one-row requests per pattern")

    devices = sub.add_parser("devices", help="show the GPUs this build can use",
                             description="Lists CUDA devices usable by the native core.")
    devices.set_defaults()

    from mlserve.registry import cli as registry_cli

    registry_cli.add_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "registry":
        return int(registry_cli.run(args))
    if args.command == "demo":
        from mlserve.demo import run

        run(rows=args.rows, requests=args.requests)
    elif args.command == "devices":
        from mlserve import cuda_built, cuda_devices

        found = cuda_devices()
        print(f"CUDA kernels built: {cuda_built()}")
        for d in found:
            print(f"  [{d['index']}] {d['name']} sm_{d['compute_capability'][0]}"
                  f"{d['compute_capability'][1]}, {d['total_memory_bytes'] / 2**30:.0f} GiB")
        if not found:
            print("  no usable GPU; the CPU path serves everything")
    return 0


if __name__ == "__main__":
    sys.exit(main())
