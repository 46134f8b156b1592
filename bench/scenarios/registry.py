"""Scenario ``registry``: what a registry shared through object storage costs against one in a
local directory, operation by operation.

Both registries hold the same bundle (``mlserve.json`` and one artifact of random bytes, the
size depending on the level); the object store is SeaweedFS on loopback (bench/s3server.py), so
the figures are the protocol's and the implementation's cost without a network's latency.
Operations: ``register`` (a new version: hash, store, commit; for s3 the blob upload and the
conditional PUT of registry.db), ``set_alias`` (a metadata change), ``resolve`` of an alias
(for s3 one conditional GET that answers 304), ``open`` warm (resolve + sha256 of the files)
and ``open`` cold on s3 (a new cache: download, hash, hardlink). The baseline is the local
registry's figure for the same operation, the two called alternately (bench.timing); each
figure is a median over repetitions.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import register
from bench.timing import interleaved_each_call_ns, interleaved_ops_ms, median

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {"artifact_mb": 1, "reps": 3, "resolve_reps": 20},
    "quick": {"artifact_mb": 16, "reps": 5, "resolve_reps": 200},
    "full": {"artifact_mb": 64, "reps": 7, "resolve_reps": 500},
}


def _bundle(path: Path, size: int, seed: int) -> Path:
    path.mkdir(parents=True)
    data = np.random.default_rng(seed).bytes(size)
    (path / "model.onnx").write_bytes(data)
    manifest = {"format_version": 1, "name": "bench", "version": None, "task": "binary",
                "artifacts": {"model.onnx": {"sha256": hashlib.sha256(data).hexdigest(),
                                             "bytes": size}}}
    (path / "mlserve.json").write_text(json.dumps(manifest))
    return path


@register("registry", "registry operations on S3-compatible object storage vs a local directory")
def run(level: str) -> dict[str, Any]:
    from mlserve.registry import Registry

    from bench.s3server import running

    cfg = _LEVELS[level]
    size = cfg["artifact_mb"] << 20
    tmp = Path(tempfile.mkdtemp(prefix="mlserve-bench-registry-"))
    try:
        with running(tmp / "seaweedfs") as server:
            bundles = [_bundle(tmp / f"bundle-{i}", size, i) for i in range(cfg["reps"])]
            stores = {"local": Registry(tmp / "local"),
                      "s3": Registry(f"s3://{server.bucket}/bench", cache_dir=tmp / "cache")}
            its = {reg.location: iter(bundles) for reg in stores.values()}
            calls: dict[str, tuple[Callable[[Any], object], int, int]] = {  # fn, calls, warmup
                "register": (lambda reg: reg.register(next(its[reg.location])), cfg["reps"], 0),
                "set_alias": (lambda reg: reg.set_alias("bench", "champion", 1), cfg["reps"], 0),
                "resolve alias": (lambda reg: reg.resolve("bench@champion"),
                                  cfg["resolve_reps"], 1),
                "open warm": (lambda reg: reg.open("bench@champion"), cfg["reps"], 1),
            }
            runs = interleaved_ops_ms(stores, calls)  # local and s3 alternately
            caches = iter(tmp / f"cold-{i}" for i in range(cfg["reps"]))
            runs["s3"]["open cold"] = interleaved_each_call_ns(
                {"s3": lambda: Registry(f"s3://{server.bucket}/bench", cache_dir=next(caches)).open(
                    "bench@champion")}, calls=cfg["reps"], warmup=0)["s3"]
            runs["s3"]["open cold"] = [t / 1e6 for t in runs["s3"]["open cold"]]
            ms = {kind: {op: median(v) for op, v in ops.items()} for kind, ops in runs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ops = list(ms["local"])
    ratios = {f"s3/local {op} ms": ms["s3"][op] / ms["local"][op] for op in ops}
    cold_mb_s = cfg["artifact_mb"] / (ms["s3"]["open cold"] / 1e3)
    measurements = [{"registry": kind, "operation": op, "median_ms": ms[kind][op],
                     "runs_ms": runs[kind][op]} for kind in ms for op in ms[kind]]
    return {
        "parameters": {"level": level, **cfg, "store": "SeaweedFS on loopback (weed server)"},
        "baseline": "the same operation on a registry in a local directory (SQLite WAL + blobs)",
        "measurements": measurements,
        "ratios": {**ratios, "s3 open cold MB/s": cold_mb_s},
        "headline": {
            "name": "s3/local resolve alias ms",
            "value": ratios["s3/local resolve alias ms"],
            "lower_is_better": True,
            "meaning": "what a server's load by alias pays for a shared registry: one "
                       "conditional GET of registry.db (304) against a local SQLite read",
        },
        "tables": [{
            "title": f"Registry operations, {cfg['artifact_mb']} MB artifact, median ms",
            "columns": ["operation", "local ms", "s3 ms", "s3 / local"],
            "rows": [[op, ms["local"][op], ms["s3"][op], ms["s3"][op] / ms["local"][op]]
                     for op in ops] + [["open cold (new cache)", None, ms["s3"]["open cold"],
                                        None]],
        }],
        "plots": [{"title": "median ms per operation", "xlabel": "operation", "ylabel": "ms",
                   "x": ops,
                   "series": {kind: [ms[kind][op] for op in ops] for kind in ("local", "s3")},
                   "logx": False, "logy": True}],
        "notes": [f"open cold on s3 fetched {cfg['artifact_mb']} MB at {cold_mb_s:.0f} MB/s "
                  "(download with sha256, hardlink, then open's own sha256 pass)"],
    }
