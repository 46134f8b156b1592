"""``mlserve devices`` and ``mlserve build-engine``: the GPU side of the command line.

``add_parsers(subparsers)`` adds both commands; ``run(args)`` executes one and returns the exit
status: 0 on success, 2 when the input is wrong or what the command needs is missing here (no
GPU, no TensorRT: the message says what to install), 1 for other failures.
``python -m mlserve.gpu_cli devices|build-engine ...`` runs them without importing the rest of
the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mlserve.errors import InvalidInput, MlserveError, Unavailable
from mlserve.registry._settings import CLI_HELP as REGISTRY_HELP
from mlserve.registry._settings import CLI_METAVAR as REGISTRY_METAVAR


def add_parsers(subparsers: Any) -> None:
    subparsers.add_parser(
        "devices", help="show the GPUs this build can use and which backends can run",
        description="Lists CUDA devices usable by the native core and, per execution backend "
        "(cpu, torch, torch-cuda, tensorrt), whether it can run here or what it needs.")
    build = subparsers.add_parser(
        "build-engine", help="build a TensorRT engine for a registered model (on this GPU)",
        description="Builds a TensorRT engine from the model.onnx of a registered version, with "
        "an optimization profile over the batch dimension, and adds it to that same version as "
        "an immutable, checksummed artifact (default model.plan) recording the GPU, TensorRT and "
        "CUDA versions it was built for. Serve it with `mlserve serve --backend tensorrt`.")
    build.add_argument("ref", help="NAME, NAME/VERSION or NAME@ALIAS")
    build.add_argument("--registry", metavar=REGISTRY_METAVAR, default=None,
                        help=REGISTRY_HELP)
    build.add_argument("--fp16", action="store_true",
                       help="allow FP16 kernels (inputs and outputs stay float32)")
    build.add_argument("--min-batch", type=int, default=1, help="profile minimum rows (default 1)")
    build.add_argument("--opt-batch", type=int, default=256,
                       help="profile rows TensorRT optimizes for (default 256)")
    build.add_argument("--max-batch", type=int, default=4096,
                       help="profile maximum rows; must cover the server's --max-batch-size "
                       "(default 4096)")
    build.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    build.add_argument("--workspace-mb", type=int, default=1024,
                       help="TensorRT builder workspace in MiB (default 1024)")
    build.add_argument("--artifact", default="model.plan",
                       help="artifact name in the version (default model.plan; artifacts are "
                       "immutable, so a second engine, e.g. for another GPU, needs another name)")


def run(args: argparse.Namespace) -> int:
    if args.command == "devices":
        return _devices()
    return _build_engine(args)


def _devices() -> int:
    from mlserve import _core
    from mlserve.gpu import backend_status

    found = _core.cuda_devices()
    print(f"CUDA kernels built: {_core.cuda_built()}"
          + (f" (CUDA runtime {_core.cuda_runtime_version()}, driver "
             f"{_core.cuda_driver_version()})" if _core.cuda_built() else ""))
    for d in found:
        major, minor = d["compute_capability"]
        print(f"  [{d['index']}] {d['name']} sm_{major}{minor}, "
              f"{d['total_memory_bytes'] / 2**30:.0f} GiB, {d['multiprocessors']} SMs")
    if not found:
        print("  no usable GPU; the CPU path serves everything")
    print("execution backends:")
    for name, status in backend_status().items():
        print(f"  {name:<11} {status}")
    from mlserve.plan import nvrtc_status

    nvrtc = nvrtc_status()
    kernel = os.environ.get("MLSERVE_CUDA_KERNEL") or "auto"
    print(f"normalize kernel: {kernel} (MLSERVE_CUDA_KERNEL: generic, jit, jit-tma or auto)")
    if nvrtc["available"]:
        print(f"  NVRTC {nvrtc['version']} for the jit kernels: {nvrtc['detail']}")
    else:
        print("  NVRTC not found: the jit kernels cannot be built (auto runs generic); "
              + nvrtc["detail"].splitlines()[0])
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    from mlserve.tensorrt_engine import BatchProfile, build_registered_engine

    try:
        profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
        if args.workspace_mb < 1:
            raise InvalidInput("--workspace-mb must be at least 1")
        version = build_registered_engine(
            args.ref, registry=args.registry, device=args.device, profile=profile,
            fp16=args.fp16, workspace_bytes=args.workspace_mb << 20, artifact=args.artifact)
    except (InvalidInput, Unavailable) as exc:
        print(f"mlserve build-engine: {exc}", file=sys.stderr)
        return 2
    except MlserveError as exc:
        print(f"mlserve build-engine: {exc}", file=sys.stderr)
        return 1
    info = version.artifacts[args.artifact]
    print(f"added {args.artifact} to {version.ref}: TensorRT {info['tensorrt_version']}, "
          f"{info['gpu']} (sm {info['compute_capability']}), {info['precision']}, batch "
          f"{info['profile']['min_batch']}..{info['profile']['max_batch']} "
          f"(opt {info['profile']['opt_batch']}), {info['bytes']} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlserve", description=__doc__)
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
