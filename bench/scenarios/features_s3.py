"""Scenario ``features-s3``: what a feature store shared through object storage costs against one
in a local directory, operation by operation.

Both stores get the same definitions and the same offline data (a view of four columns over
``entities`` users, ingested in ``parts`` parts); the object store is SeaweedFS on loopback
(bench/s3server.py), so the figures are the protocol's and the implementation's cost without a
network's latency. Operations: ``apply`` (a definition change: for s3 a conditional GET, the SQL
on a copy and a conditional PUT), ``view`` (reading a definition: for s3 one conditional GET
that answers 304), ``ingest`` (validate and append one part: for s3 a conditional GET of the
definitions, a listing and a create-only PUT), ``historical warm`` (a point-in-time join of
``query_rows`` entity rows once the parts are cached: for s3 conditional GETs of the service and
view definitions and a listing per view more) and ``historical cold`` on s3 (a new cache: every
part downloaded and checked first). The baseline is the local store's figure for the same
operation, the two called alternately (bench.timing); each figure is a median over repetitions.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import register
from bench.timing import interleaved_each_call_ns, interleaved_ops_ms, median

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {"entities": 1_000, "rows_per_part": 2_000, "parts": 2, "query_rows": 1_000,
              "reps": 3, "view_reps": 20},
    "quick": {"entities": 20_000, "rows_per_part": 50_000, "parts": 4, "query_rows": 20_000,
              "reps": 5, "view_reps": 200},
    "full": {"entities": 100_000, "rows_per_part": 250_000, "parts": 8,
             "query_rows": 100_000, "reps": 7, "view_reps": 500},
}


def _rows(rng: np.random.Generator, n: int, entities: int) -> Any:
    import pandas as pd

    base = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame({
        "user_id": rng.integers(0, entities, n),
        "event_ts": base + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
        "a": rng.normal(size=n), "b": rng.normal(size=n),
        "c": rng.integers(0, 1000, n), "d": rng.integers(0, 8, n),
    })


@register("features-s3", "feature store operations on S3-compatible object storage vs a local "
          "directory")
def run(level: str) -> dict[str, Any]:
    import pandas as pd
    from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView

    from bench.s3server import running

    cfg = _LEVELS[level]
    rng = np.random.default_rng(0)
    user = Entity("user", "user_id")
    columns = [Column("a", "float"), Column("b", "float"), Column("c", "int"),
               Column("d", "categorical")]

    def view(description: str = "") -> FeatureView:
        return FeatureView("stats", user, columns, ttl_seconds=7 * 86400,
                           description=description)

    tmp = Path(tempfile.mkdtemp(prefix="mlserve-bench-features-s3-"))
    try:
        with running(tmp / "seaweedfs") as server:
            uri = f"s3://{server.bucket}/bench-features"
            stores = {"local": FeatureStore(tmp / "local"),
                      "s3": FeatureStore(uri, cache_dir=tmp / "cache")}
            parts = [_rows(rng, cfg["rows_per_part"], cfg["entities"])
                     for _ in range(cfg["parts"])]
            for store in stores.values():
                store.apply([user, view(), FeatureService("svc", ["stats"])])
                for frame in parts:
                    store.ingest("stats", frame)
            query = pd.DataFrame({
                "user_id": rng.integers(0, cfg["entities"], cfg["query_rows"]),
                "event_ts": pd.Timestamp("2026-01-20", tz="UTC") + pd.to_timedelta(
                    rng.integers(0, 10 * 86400, cfg["query_rows"]), unit="s")})
            extra = _rows(rng, cfg["rows_per_part"] // 10, cfg["entities"])
            counter = itertools.count()
            calls: dict[str, tuple[Callable[[Any], object], int, int]] = {
                "apply": (lambda s: s.apply([view(f"run {next(counter)}")]), cfg["reps"], 1),
                "view": (lambda s: s.view("stats"), cfg["view_reps"], 1),
                "ingest": (lambda s: s.ingest("stats", extra), cfg["reps"], 0),
                "historical warm": (lambda s: s.historical_features(query, "svc"),
                                    cfg["reps"], 1),
            }
            runs = interleaved_ops_ms(stores, calls)  # local and s3 alternately
            caches = iter(tmp / f"cold-{i}" for i in range(cfg["reps"]))
            cold = interleaved_each_call_ns(
                {"s3": lambda: FeatureStore(uri, cache_dir=next(caches)).historical_features(
                    query, "svc")}, calls=cfg["reps"], warmup=0)["s3"]
            runs["s3"]["historical cold"] = [t / 1e6 for t in cold]
            part_bytes = sum(p.stat().st_size for p in (tmp / "local").rglob("part-*.parquet"))
            n_parts = len(list((tmp / "local").rglob("part-*.parquet")))
            ms = {kind: {op: median(v) for op, v in ops.items()} for kind, ops in runs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ops = list(ms["local"])
    ratios = {f"s3/local {op} ms": ms["s3"][op] / ms["local"][op] for op in ops}
    ratios["s3 historical cold / local warm"] = (ms["s3"]["historical cold"]
                                                 / ms["local"]["historical warm"])
    measurements = [{"store": kind, "operation": op, "median_ms": ms[kind][op],
                     "runs_ms": runs[kind][op]} for kind in ms for op in ms[kind]]
    return {
        "parameters": {"level": level, **cfg, "store": "SeaweedFS on loopback (weed server)",
                       "offline parts at the end": n_parts,
                       "offline MB at the end": part_bytes / 1e6},
        "baseline": "the same operation on a feature store in a local directory",
        "measurements": measurements,
        "ratios": ratios,
        "headline": {
            "name": "s3/local historical warm ms",
            "value": ratios["s3/local historical warm ms"],
            "lower_is_better": True,
            "meaning": "what a training join pays for a shared store once its parts are "
                       "cached: a listing per view and a conditional GET per definition read",
        },
        "tables": [{
            "title": f"Feature store operations, {n_parts} parts ({part_bytes / 1e6:.1f} MB), "
                     f"{cfg['query_rows']} entity rows, median ms",
            "columns": ["operation", "local ms", "s3 ms", "s3 / local"],
            "rows": [[op, ms["local"][op], ms["s3"][op], ms["s3"][op] / ms["local"][op]]
                     for op in ops] + [["historical cold (new cache)", None,
                                        ms["s3"]["historical cold"], None]],
        }],
        "plots": [{"title": "median ms per operation", "xlabel": "operation", "ylabel": "ms",
                   "x": ops,
                   "series": {kind: [ms[kind][op] for op in ops] for kind in ("local", "s3")},
                   "logx": False, "logy": True}],
        "notes": ["historical cold on s3 downloads every part (sha256 checked) into a new "
                  "cache, then joins as warm does"],
    }
