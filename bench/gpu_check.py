"""GPU measurements of bench/gpu_check.sh: ``python3 -m bench.gpu_check --out DIR``.

1. Kernel: the fused normalize kernel (``FeaturePlan.benchmark_cuda``: CUDA events, buffers
   rotated past L2) on the realistic plan (bench/plans.py: f_in 20, f_out 97, histograms on) at
   4K..4M rows, as GB/s of input + output bytes, against a device-to-device copy of the same
   bytes timed the same way (target: kernel >= 70% of the copy at large batches) and against
   the CPU plan (``FeaturePlan.transform`` on every core).
2. Engine: a model trained here (mlserve.trainer on the demo's synthetic card data, a few
   epochs), served by the Engine on ``cpu`` (onnxruntime), ``torch-cuda`` and, when TensorRT is
   installed, ``tensorrt`` (engine built with ``mlserve build-engine``'s code); per batch size
   1..4096: one client sending requests of that many rows back to back: rows/s, p50 and p99
   latency of ``Engine.predict``.
3. Row gather: a batch's request rows gathered on the host (one memcpy each into page-locked
   staging, one H2D copy: what the pipeline does) vs one H2D copy per request (the least a
   device-side gather would need), for a few (requests, rows) shapes.

Every measurement is appended to ``DIR/gpu_check.json`` as soon as it is made, so that a run
cut short still leaves its numbers; ``--table`` prints the table from that file (the shell
script calls it last, whatever happened before). A phase that fails is recorded with its error
and the next one runs. Nothing here is an assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_ROWS = (4096, 65536, 1 << 20, 4 << 20)
ENGINE_BATCHES = (1, 8, 64, 512, 4096)
RESULTS = "gpu_check.json"


class Results:
    """The JSON record of the run, rewritten after every measurement."""

    def __init__(self, out: Path) -> None:
        self.path = out / RESULTS
        self.data: dict[str, Any] = {"env": {}, "kernel": [], "sweep": [], "engine": [],
                                     "gather": [], "errors": []}
        out.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.data[key].append(row)
        self.save()

    def error(self, phase: str, exc: BaseException) -> None:
        print(f"[gpu_check] {phase} failed: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        self.add("errors", {"phase": phase, "error": f"{type(exc).__name__}: {exc}"})


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def phase(results: Results, name: str, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # every phase is optional: record and go on
        results.error(name, exc)
    finally:
        results.data.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        results.save()
        log(f"{name}: {time.perf_counter() - t0:.1f} s")


# ---- environment ---------------------------------------------------------------------------------


def environment(results: Results) -> None:
    import mlserve
    from mlserve import _core
    from mlserve.gpu import backend_status

    env = results.data["env"]
    env["python"] = sys.version.split()[0]
    env["mlserve_cuda_built"] = _core.cuda_built()
    env["cuda_runtime"] = _core.cuda_runtime_version()
    env["cuda_driver"] = _core.cuda_driver_version()
    env["devices"] = mlserve.cuda_devices()
    env["backends"] = backend_status()
    env["nvrtc"] = mlserve.plan.nvrtc_status()
    env["cpu_count"] = os.cpu_count()
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
    except ImportError:
        env["torch"] = None
    results.save()
    log(f"devices {env['devices']}; backends {env['backends']}")


# ---- kernel --------------------------------------------------------------------------------------

#: (name, benchmark_cuda kernel=, histograms): the interpreting kernel and the plan's JIT one.
KERNEL_VARIANTS = (("generic", "generic", True), ("jit", "jit", True),
                   ("jit-tma", "jit-tma", True), ("jit-nohist", "jit", False))


def kernel(results: Results, rows: tuple[int, ...], iterations: int) -> None:
    """Each kernel variant over every size, the generic kernel first: a JIT kernel that faulted
    (a sticky CUDA error ends the process's use of the GPU) then costs only its own figures."""
    from mlserve import FeaturePlan

    from bench.plans import make_rows, realistic_plan_spec

    spec = realistic_plan_spec()
    plan = FeaturePlan(spec)
    base = make_rows(spec, min(max(rows), 1 << 20), seed=1)
    threads = os.cpu_count() or 1
    batches: list[tuple[np.ndarray, dict[str, Any]]] = []
    for n in rows:
        x = base[:n] if n <= len(base) else np.tile(base, (-(-n // len(base)), 1))[:n]
        x = np.ascontiguousarray(x)
        out = np.empty((n, plan.f_out), dtype=np.float32)
        plan.transform(x, num_threads=threads, out=out)  # warm-up (page faults)
        cpu_s = []
        for _ in range(3 if n >= (1 << 20) else 7):
            t0 = time.perf_counter()
            plan.transform(x, num_threads=threads, out=out, histograms=True)
            cpu_s.append(time.perf_counter() - t0)
        cpu_ms = float(np.median(cpu_s)) * 1e3
        gb = n * (plan.f_in + plan.f_out) * 4 / 1e9
        row: dict[str, Any] = {"rows": n, "bytes": int(gb * 1e9), "cpu_ms": cpu_ms,
                               "cpu_gbs": gb / (cpu_ms / 1e3), "cpu_threads": threads}
        results.add("kernel", row)
        batches.append((x, row))
    # The generic kernel and the plan's JIT kernels (NVRTC), each timed against its own D2D
    # copy in the same call; "jit-nohist" shows what the histograms cost.
    for variant, kern, hist in KERNEL_VARIANTS:
        for x, row in batches:
            n = x.shape[0]
            gb = row["bytes"] / 1e9
            its = iterations if n <= (1 << 20) else max(5, iterations // 3)
            try:
                t = plan.benchmark_cuda(x, iterations=its, histograms=hist, kernel=kern)
                if t["kernel"] != kern:
                    raise RuntimeError(f"asked for the {kern} kernel, ran {t['kernel']}")
                v = {
                    "kernel_ms": t["kernel_ms"], "copy_ms": t["copy_ms"],
                    "kernel_gbs": gb / (t["kernel_ms"] / 1e3),
                    "copy_gbs": gb / (t["copy_ms"] / 1e3),
                    "tile_rows": t["tile_rows"], "blocks_per_sm": t["blocks_per_sm"],
                    "buffer_sets": t["buffer_sets"], "jit_compile_ms": t["jit_compile_ms"],
                    "registers": t["registers"], "local_bytes": t["local_bytes"],
                }
                v["of_copy"] = v["kernel_gbs"] / v["copy_gbs"]
                v["vs_cpu"] = v["kernel_gbs"] / row["cpu_gbs"]
                row[variant] = v
                results.save()
                log(f"kernel {variant} {n} rows: {v['kernel_gbs']:.0f} GB/s = "
                    f"{v['of_copy']:.0%} of copy ({v['copy_gbs']:.0f} GB/s), "
                    f"{v['vs_cpu']:.1f}x CPU, {t['blocks_per_sm']} blocks/SM, tile "
                    f"{t['tile_rows']} rows")
            except Exception as exc:
                results.error(f"kernel {variant} {n} rows", exc)
    sweep(results, plan, batches[-1][0], max(5, iterations // 3))


#: JIT kernel shapes timed at the largest batch: (kernel, tile rows, launch-bounds min blocks).
#: The defaults (32 rows, at least 5 blocks per SM) against no bound (the registers decide the
#: blocks per SM), bigger tiles (more bytes in flight per block) and tighter bounds (more blocks,
#: some register spills).
SWEEP = (("jit", 32, 0), ("jit", 32, 5), ("jit", 32, 6), ("jit", 32, 8), ("jit", 64, 0),
         ("jit", 64, 4), ("jit", 96, 0), ("jit-tma", 32, 0), ("jit-tma", 32, 5),
         ("jit-tma", 32, 6), ("jit-tma", 64, 0), ("jit-tma", 64, 3))


def sweep(results: Results, plan: Any, x: np.ndarray, iterations: int) -> None:
    """The JIT kernel's tuning variables (MLSERVE_CUDA_JIT_TILE_ROWS / _MIN_BLOCKS) at one size."""
    gb = x.shape[0] * (plan.f_in + plan.f_out) * 4 / 1e9
    try:
        for kern, tile_rows, min_blocks in SWEEP:
            os.environ["MLSERVE_CUDA_JIT_TILE_ROWS"] = str(tile_rows)
            os.environ["MLSERVE_CUDA_JIT_MIN_BLOCKS"] = str(min_blocks)
            name = f"{kern} tile {tile_rows} min_blocks {min_blocks}"
            try:
                t = plan.benchmark_cuda(x, iterations=iterations, histograms=True, kernel=kern)
                row = {"kernel": kern, "tile_rows": t["tile_rows"], "min_blocks": min_blocks,
                       "rows": x.shape[0], "kernel_gbs": gb / (t["kernel_ms"] / 1e3),
                       "copy_gbs": gb / (t["copy_ms"] / 1e3), "blocks_per_sm": t["blocks_per_sm"],
                       "registers": t["registers"], "local_bytes": t["local_bytes"]}
                row["of_copy"] = row["kernel_gbs"] / row["copy_gbs"]
                results.add("sweep", row)
                log(f"sweep {name}: {row['kernel_gbs']:.0f} GB/s = {row['of_copy']:.0%} of copy, "
                    f"{row['blocks_per_sm']} blocks/SM, {row['registers']} registers, "
                    f"{row['local_bytes']} B local")
            except Exception as exc:
                results.error(f"sweep {name}", exc)
    finally:
        os.environ.pop("MLSERVE_CUDA_JIT_TILE_ROWS", None)
        os.environ.pop("MLSERVE_CUDA_JIT_MIN_BLOCKS", None)


# ---- row gather ----------------------------------------------------------------------------------

#: (requests, rows per request) of one batch, for the row-gather comparison.
GATHER_SHAPES = ((64, 1), (256, 1), (16, 64), (4, 1024))


def gather(results: Results, f_in: int, iterations: int) -> None:
    """Where a batch's request rows are gathered. "host": what the pipeline does, one memcpy per
    request into a page-locked staging buffer, then one H2D copy of the batch. "per-request": one
    H2D copy per request (from page-locked memory, the best case) into the device batch buffer,
    which is the least any device-side gather must do before its kernel runs. Both through
    torch on one stream, timed to the stream's synchronization; each checks its device buffer."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch cannot use CUDA here")
    dev = torch.device("cuda", 0)
    stream = torch.cuda.Stream(dev)
    for k, r in GATHER_SHAPES:
        row = _gather_shape(torch, dev, stream, k, r, f_in, iterations)
        results.add("gather", row)
        log(f"gather {k} requests x {r} rows: host {row['host_us']:.1f} us, per-request copies "
            f"{row['per_request_us']:.1f} us")


def _gather_shape(torch: Any, dev: Any, stream: Any, k: int, r: int, f_in: int,
                  iterations: int) -> dict[str, Any]:
    reqs = [np.random.default_rng(i).standard_normal((r, f_in)).astype(np.float32)
            for i in range(k)]
    want = torch.from_numpy(np.concatenate(reqs)).to(dev)
    torch.cuda.synchronize(dev)  # `want` was copied on the default stream
    n = k * r
    pinned = torch.empty((n, f_in), dtype=torch.float32, pin_memory=True)
    staging = pinned.numpy()
    pinned_reqs = [torch.from_numpy(a).pin_memory() for a in reqs]
    d = torch.empty((n, f_in), dtype=torch.float32, device=dev)

    def host() -> None:
        off = 0
        for a in reqs:
            staging[off : off + len(a)] = a
            off += len(a)
        d.copy_(pinned, non_blocking=True)
        stream.synchronize()

    def per_request() -> None:
        off = 0
        for t in pinned_reqs:
            d[off : off + len(t)].copy_(t, non_blocking=True)
            off += len(t)
        stream.synchronize()

    row: dict[str, Any] = {"requests": k, "rows": r}
    with torch.cuda.stream(stream):
        for name, fn in (("host", host), ("per_request", per_request)):
            d.zero_()
            for _ in range(10):
                fn()
            if not torch.equal(d, want):
                raise RuntimeError(f"gather {name} {k}x{r}: wrong rows on the device")
            lat = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                fn()
                lat.append(time.perf_counter() - t0)
            row[f"{name}_us"] = float(np.median(lat)) * 1e6
    return row


# ---- model and engine ----------------------------------------------------------------------------


def train_model(root: Path, rows: int, epochs: int) -> tuple[Any, np.ndarray]:
    from mlserve.registry import Registry
    from mlserve.trainer import encode_rows, train
    from mlserve.trainer.datasets import card_transactions

    registry = Registry(root / "registry")
    result = train(card_transactions(rows, seed=7), "is_fraud", name="fraud",
                   timestamp="event_ts",
                   config={"exclude": ["user_id", "merchant_id"], "epochs": epochs,
                           "hidden": [64, 32], "min_category_count": 20},
                   registry=registry, out_dir=root / "bundle", progress=False)
    registry.set_alias("fraud", "champion", result.model_version.version)
    fresh = card_transactions(max(ENGINE_BATCHES) + 100, seed=8)
    x = encode_rows(fresh, result.model_version.manifest["signature"]["inputs"])
    return registry, np.ascontiguousarray(x[: max(ENGINE_BATCHES)], dtype=np.float32)


def engine_rows(results: Results, registry: Any, x: np.ndarray, backend: str,
                seconds_per_batch: float) -> None:
    from mlserve import BatcherConfig, Engine

    config = BatcherConfig(max_batch_size=max(ENGINE_BATCHES), max_queue_delay_us=0)
    with Engine.from_registry("fraud@champion", registry=registry, backend=backend,
                              config=config) as engine:
        for batch in ENGINE_BATCHES:
            xb = np.ascontiguousarray(x[:batch])
            try:
                for _ in range(5):
                    engine.predict(xb)  # warm-up: graphs, torch's profiling runs, allocations
                lat: list[float] = []
                t_end = time.perf_counter() + seconds_per_batch
                start = time.perf_counter()
                while (time.perf_counter() < t_end or len(lat) < 20) and len(lat) < 20000:
                    t0 = time.perf_counter()
                    engine.predict(xb)
                    lat.append(time.perf_counter() - t0)
                total = time.perf_counter() - start
                row = {"backend": backend, "batch": batch, "calls": len(lat),
                       "rows_per_s": batch * len(lat) / total,
                       "p50_us": float(np.percentile(lat, 50)) * 1e6,
                       "p99_us": float(np.percentile(lat, 99)) * 1e6}
                results.add("engine", row)
                log(f"engine {backend} batch {batch}: {row['rows_per_s']:,.0f} rows/s, "
                    f"p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us")
            except Exception as exc:
                results.error(f"engine {backend} batch {batch}", exc)
        gpu = engine.stats().get("gpu")
        if gpu:
            results.data.setdefault("engine_gpu", {})[backend] = gpu


def engines(results: Results, root: Path, rows: int, epochs: int,
            seconds_per_batch: float) -> None:
    t0 = time.perf_counter()
    registry, x = train_model(root, rows, epochs)
    results.data["env"]["train_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"trained the model in {time.perf_counter() - t0:.1f} s")
    backends = ["cpu", "torch-cuda"]
    try:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is not None:
            from mlserve.tensorrt_engine import BatchProfile, build_registered_engine

            build_registered_engine("fraud@champion", registry=registry,
                                    profile=BatchProfile(1, 512, max(ENGINE_BATCHES)))
            backends.append("tensorrt")
    except Exception as exc:
        results.error("tensorrt engine build", exc)
    for backend in backends:
        try:
            engine_rows(results, registry, x, backend, seconds_per_batch)
        except Exception as exc:
            results.error(f"engine {backend}", exc)


# ---- the table -----------------------------------------------------------------------------------


def table(path: Path, phases: Path | None = None) -> str:
    """The final table from the JSON record (and the shell's phase timings, when given)."""
    lines: list[str] = []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        data = {"env": {}, "kernel": [], "engine": [], "errors": [
            {"phase": "results", "error": f"no results file ({exc})"}]}
    env = data.get("env", {})
    devices = env.get("devices") or []
    gpu = devices[0]["name"] if devices else "no GPU"
    nvrtc = env.get("nvrtc") or {}
    lines.append(f"== mlserve GPU check: {gpu}; CUDA runtime {env.get('cuda_runtime')}, driver "
                 f"{env.get('cuda_driver')}; torch {env.get('torch')} (cuda "
                 f"{env.get('torch_cuda')}); NVRTC {nvrtc.get('version') or 'not found'}; "
                 f"{env.get('cpu_count')} CPUs ==")
    if phases is not None and phases.is_file():
        lines.append("phases: " + "; ".join(
            " ".join(line.split("\t")) for line in phases.read_text().splitlines() if line))
    lines.append("")
    lines.append("normalize kernel, realistic plan (f_in 20 -> f_out 97); GB/s of input+output "
                 "bytes; share of a D2D copy of the same bytes (target >= 70%); histograms on "
                 "unless 'nohist'")
    names = [v for v, _, _ in KERNEL_VARIANTS]
    lines.append(f"{'rows':>9} " + " ".join(f"{v + ' GB/s':>15} {'/copy':>6}" for v in names)
                 + f" {'copy GB/s':>10} {'CPU GB/s':>9} {'best/CPU':>9} {'jit compile':>11}")
    for r in data.get("kernel", []):
        cells, best, copy, compile_ms = [], 0.0, None, None
        for v in names:
            k = r.get(v)
            if k is None:
                cells.append(f"{'-':>15} {'-':>6}")
                continue
            cells.append(f"{k['kernel_gbs']:>15.0f} {k['of_copy']:>6.0%}")
            if not v.endswith("nohist"):
                best = max(best, k["kernel_gbs"])
            copy = copy or k["copy_gbs"]
            compile_ms = k["jit_compile_ms"] if v == "jit" else compile_ms
        lines.append(f"{r['rows']:>9} " + " ".join(cells)
                     + (f" {copy:>10.0f}" if copy else f" {'-':>10}") + f" {r['cpu_gbs']:>9.1f}"
                     + (f" {best / r['cpu_gbs']:>8.1f}x" if best else f" {'-':>9}")
                     + (f" {compile_ms:>9.0f}ms" if compile_ms else f" {'-':>11}"))
    if not data.get("kernel"):
        lines.append("  (no kernel measurements)")
    if data.get("sweep"):
        lines.append(f"JIT kernel shapes at {data['sweep'][0]['rows']} rows (histograms on): "
                     "kernel, tile rows, launch-bounds min blocks")
        lines.append(f"{'kernel':>8} {'tile':>5} {'minblk':>6} {'GB/s':>7} {'/copy':>6} "
                     f"{'blocks/SM':>9} {'regs':>5} {'spill B':>7}")
        for r in data["sweep"]:
            lines.append(f"{r['kernel']:>8} {r['tile_rows']:>5} {r['min_blocks']:>6} "
                         f"{r['kernel_gbs']:>7.0f} {r['of_copy']:>6.0%} {r['blocks_per_sm']:>9} "
                         f"{r['registers']:>5} {r['local_bytes']:>7}")
    lines.append("")
    lines.append("Engine.predict, one client, back-to-back requests of <batch> rows "
                 "(max_queue_delay_us=0)")
    lines.append(f"{'batch':>6} " + " ".join(f"{b + ' rows/s':>18} {'p50 us':>8} {'p99 us':>8}"
                                             for b in _backends(data)))
    for batch in ENGINE_BATCHES:
        cells = []
        for b in _backends(data):
            row = next((r for r in data.get("engine", []) if r["backend"] == b
                        and r["batch"] == batch), None)
            cells.append(f"{row['rows_per_s']:>18,.0f} {row['p50_us']:>8.0f} {row['p99_us']:>8.0f}"
                         if row else f"{'-':>18} {'-':>8} {'-':>8}")
        lines.append(f"{batch:>6} " + " ".join(cells))
    if not data.get("engine"):
        lines.append("  (no engine measurements)")
    for b, gpu in data.get("engine_gpu", {}).items():
        lines.append(f"  {b}: normalize kernel {gpu['normalize_kernel']}; "
                     f"{gpu['graph_launches']:,} of {gpu['batches']:,} batches were one CUDA graph "
                     f"launch ({gpu['graphs']} graphs, capture failed on "
                     f"{gpu['graphs_disabled']} instances)")
    if data.get("gather"):
        lines.append("")
        lines.append("row gather of one batch (f_in 20), median us to the stream's sync: host "
                     "memcpy per request + one H2D (the pipeline) vs one H2D per request")
        lines.append(f"{'requests':>8} {'rows':>5} {'host us':>8} {'per-request us':>14}")
        for g in data["gather"]:
            lines.append(f"{g['requests']:>8} {g['rows']:>5} {g['host_us']:>8.1f} "
                         f"{g['per_request_us']:>14.1f}")
    for e in data.get("errors", []):
        lines.append(f"ERROR in {e['phase']}: {e['error']}")
    return "\n".join(lines)


def _backends(data: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in data.get("engine", []):
        if r["backend"] not in seen:
            seen.append(r["backend"])
    return seen or ["cpu", "torch-cuda"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlserve-gpu-check")
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    p.add_argument("--phases", type=Path, default=None, help="shell phase timings to include")
    p.add_argument("--kernel-rows", type=int, nargs="+", default=list(KERNEL_ROWS))
    p.add_argument("--iterations", type=int, default=30, help="timed kernel launches per size")
    p.add_argument("--train-rows", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seconds-per-batch", type=float, default=1.0,
                   help="time spent timing each (backend, batch size)")
    p.add_argument("--skip", nargs="*", default=[], choices=["kernel", "engine", "gather"])
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out / RESULTS, args.phases))
        return 0
    results = Results(args.out)
    phase(results, "environment", lambda: environment(results))
    # Engines first: the kernel phase runs the JIT kernels, and a kernel that faulted would leave
    # this process's CUDA context unusable for what comes after it.
    if "engine" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="mlserve-gpu-check-") as tmp:
            phase(results, "engine", lambda: engines(results, Path(tmp), args.train_rows,
                                                     args.epochs, args.seconds_per_batch))
    if "gather" not in args.skip:
        phase(results, "gather", lambda: gather(results, 20, 200))
    if "kernel" not in args.skip:
        phase(results, "kernel", lambda: kernel(results, tuple(args.kernel_rows),
                                                args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
