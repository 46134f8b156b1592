"""Scenario ``features``: the feature store (issue 5), offline and online.

Offline: rows/s of ``FeatureStore.historical_features`` (Parquet read + point-in-time join with a
TTL and created_ts tie-breaks + output frame) and of the join alone (``pit.as_of_rows`` on
arrays in memory), against pandas ``merge_asof`` by key with the TTL as tolerance on the same
in-memory frames. Online: p50/p99 of ``ServiceReader.read`` (TTL checked) for 1, 64 and 512
random keys of a one-view service on a store of ``online_entities`` (1M) entities, against raw
py-lmdb ``txn.get`` of the same keys in one read transaction, timed in a child process that
opens the store read-only (LMDB forbids one process opening an environment twice), interleaved
in chunks of 250 reads (the first read after each switch, cold from the other process, is
reported on its own too). The measuring code is ``bench/features_store.py`` (also runnable
on its own); this module sizes it per level and shapes the report.
"""

from __future__ import annotations

from typing import Any

from bench.registry import register

_LEVELS: dict[str, dict[str, int]] = {
    "smoke": {"entity_rows": 20_000, "feature_rows": 20_000, "entities": 2_000, "repeats": 1,
              "lookups": 50, "online_entities": 2_000},
    "quick": {"entity_rows": 1_000_000, "feature_rows": 1_000_000, "entities": 100_000,
              "repeats": 2, "lookups": 1_000, "online_entities": 1_000_000},
    "full": {"entity_rows": 1_000_000, "feature_rows": 1_000_000, "entities": 100_000,
             "repeats": 5, "lookups": 5_000, "online_entities": 1_000_000},
}
#: The issue's target for a 64-key lookup, p99 (µs).
_TARGET_P99_64_US = 100.0
_KEYS = (1, 64, 512)


@register("features", "feature store: historical_features rows/s vs pandas merge_asof, online "
          "lookup p50/p99 vs raw lmdb gets")
def run(level: str) -> dict[str, Any]:
    from bench import features_store

    cfg = _LEVELS[level]
    got = features_store.measure(**cfg)
    off = got["offline"]
    onl = got["online"]
    ratios = {
        "historical_features/merge_asof rows/s": off["ratio_historical_features_vs_merge_asof"],
        "join only/merge_asof rows/s": off["ratio_join_only_vs_merge_asof"],
    }
    for k in _KEYS:
        m = onl[f"keys_{k}"]
        ratios[f"raw lmdb/lookup p50 {k} keys"] = m["raw_lmdb_p50_us"] / m["p50_us"]
        ratios[f"raw lmdb/lookup p99 {k} keys"] = m["raw_lmdb_p99_us"] / m["p99_us"]
    p99_64 = onl["keys_64"]["p99_us"]
    measurements = [
        {"what": "historical_features", "seconds": off["historical_features_s"],
         "rows_per_s": off["historical_features_rows_per_s"]},
        {"what": "join only (pit.as_of_rows)", "seconds": off["join_only_s"],
         "rows_per_s": off["join_only_rows_per_s"]},
        {"what": "pandas merge_asof (baseline)", "seconds": off["merge_asof_baseline_s"],
         "rows_per_s": off["merge_asof_rows_per_s"]},
        *({"what": f"lookup {k} keys", "keys": k, **onl[f"keys_{k}"]} for k in _KEYS),
        {"what": "ingest", "rows_per_s": got["ingest_rows_per_s"]},
        {"what": "materialize", "keys": got["materialize"]["keys"],
         "keys_per_s": got["materialize"]["keys_per_s"]},
        {"what": "materialize (lookup view)", "keys": got["online_entities"],
         "keys_per_s": got["materialize_lookup_keys_per_s"]},
    ]
    return {
        "parameters": {"level": level, **cfg, "ttl_days": 7, "view_columns": 2,
                       "load_avg": got["machine"]["load_avg"]},
        "baseline": "offline: pandas merge_asof by user_id with the TTL as tolerance (ties on "
        "event_ts by sorting on created_ts first) on the same in-memory frames; online: raw "
        "py-lmdb txn.get of the same encoded keys in one read transaction (no decode), in a "
        "child process that opens the store read-only, interleaved with the lookups in chunks "
        "of 250 reads",
        "measurements": measurements,
        "ratios": ratios,
        "headline": {
            "name": "historical_features/merge_asof rows/s",
            "value": ratios["historical_features/merge_asof rows/s"],
            "target": 1.0,
            "meaning": f"rows/s of historical_features ({cfg['entity_rows']:,} entity rows x "
            f"{cfg['feature_rows']:,} feature rows, Parquet read and output frame included) over "
            "pandas merge_asof on frames already in memory",
        },
        "tables": [
            {
                "title": "Offline point-in-time join",
                "columns": ["what", "seconds", "rows/s"],
                "rows": [[m["what"], m["seconds"], m["rows_per_s"]] for m in measurements[:3]],
            },
            {
                "title": f"Online lookups ({cfg['lookups']} reads per size, "
                f"{cfg['online_entities']:,} entities; µs)",
                "columns": ["keys", "p50", "p99", "raw lmdb p50", "raw lmdb p99",
                            "p50 / raw p50", "first read after a switch (mean)"],
                "rows": [[k, onl[f"keys_{k}"]["p50_us"], onl[f"keys_{k}"]["p99_us"],
                          onl[f"keys_{k}"]["raw_lmdb_p50_us"],
                          onl[f"keys_{k}"]["raw_lmdb_p99_us"],
                          onl[f"keys_{k}"]["ratio_p50_vs_raw"],
                          onl[f"keys_{k}"]["first_read_after_switch_us"]] for k in _KEYS],
            },
        ],
        "plots": [
            {
                "title": "online lookup latency",
                "xlabel": "keys per read",
                "ylabel": "µs",
                "x": list(_KEYS),
                "logx": True,
                "logy": True,
                "series": {
                    "lookup p50": [onl[f"keys_{k}"]["p50_us"] for k in _KEYS],
                    "lookup p99": [onl[f"keys_{k}"]["p99_us"] for k in _KEYS],
                    "raw lmdb p50": [onl[f"keys_{k}"]["raw_lmdb_p50_us"] for k in _KEYS],
                    "raw lmdb p99": [onl[f"keys_{k}"]["raw_lmdb_p99_us"] for k in _KEYS],
                },
            },
        ],
        "notes": [
            f"64-key lookup p99 {p99_64:.0f} µs against the issue's target of "
            f"{_TARGET_P99_64_US:.0f} µs ({'met' if p99_64 <= _TARGET_P99_64_US else 'not met'}"
            " on this machine at this load).",
            f"historical_features agrees with merge_asof on "
            f"{off['agreement_with_baseline']:.2%} of rows (merge_asof has no ingestion-order "
            "tie-break).",
            f"ingestion {got['ingest_rows_per_s']:,.0f} rows/s; materialization "
            f"{got['materialize']['keys_per_s']:,.0f} keys/s.",
        ],
    }
