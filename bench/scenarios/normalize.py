"""Scenario ``normalize``: GB/s of the fused plan vs the same plan in numpy vs a plain copy.

For each row count n: ``FeaturePlan.transform`` with 1 thread and with os.cpu_count() threads,
the plan as vectorized numpy (``bench.plans.NumpyPlan``), and ``np.copyto`` of an input-sized
array of the same total bytes; again with histograms on (plan and numpy). Bytes moved: input +
output bytes for every variant.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bench import plans, timing
from bench.registry import register

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {
        "sizes": [1, 64],
        "repeats": 2,
        "repeats_large": 2,
        "warmup": 1,
        "target_sample_ms": 1.0,
    },
    "quick": {
        "sizes": [1, 256, 65536, 1 << 20],
        "repeats": 9,
        "repeats_large": 3,
        "warmup": 1,
        "target_sample_ms": 10.0,
    },
    "full": {
        "sizes": [1, 16, 256, 4096, 65536, 1 << 20],
        "repeats": 15,
        "repeats_large": 5,
        "warmup": 2,
        "target_sample_ms": 50.0,
    },
}
#: From this many rows on, a level uses ``repeats_large`` (one call is already long).
_LARGE_ROWS = 1 << 18
_CHECK_ROWS = 4096


def _check(plan: Any, ref: plans.NumpyPlan, x: np.ndarray) -> dict[str, Any]:
    """Plan and numpy must agree, or the ratios compare different work."""
    got = plan.transform(x)
    want = ref.transform(x)
    finite = np.isfinite(want)
    same_nan = bool(np.array_equal(np.isnan(got), np.isnan(want)))
    diff = float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))
    return {
        "rows": int(x.shape[0]),
        "max_abs_diff": diff,
        "same_nan": same_nan,
        "agree": same_nan and diff <= 1e-4,
    }


def _variants(plan: Any, x: np.ndarray, threads: int) -> dict[str, Any]:
    ref = plans.NumpyPlan(plan.spec)
    ref_hist = plans.NumpyPlan(plan.spec)
    # The plan writes into a reused output, as the batcher does with its batch buffer;
    # "plan_t1_alloc" shows the cost of a fresh output (first-touch page faults) per call.
    out = np.empty((x.shape[0], plan.f_out), np.float32)
    # The copy moves the same bytes as the plan: reads (in + out) / 2, writes as much.
    half = (x.nbytes + out.nbytes) // 8
    src = np.ones(half, np.float32)
    dst = np.empty_like(src)
    return {
        "plan_t1": lambda: plan.transform(x, num_threads=1, out=out),
        f"plan_t{threads}": lambda: plan.transform(x, num_threads=threads, out=out),
        "plan_t1_alloc": lambda: plan.transform(x, num_threads=1),
        "numpy": lambda: ref.transform(x),
        "copy": lambda: np.copyto(dst, src),
        "plan_t1_hist": lambda: plan.transform(x, histograms=True, num_threads=1, out=out),
        f"plan_t{threads}_hist": lambda: plan.transform(
            x, histograms=True, num_threads=threads, out=out
        ),
        "numpy_hist": lambda: ref_hist.transform(x, histograms=True),
    }


@register("normalize", "GB/s of the fused FeaturePlan.transform vs numpy vs a plain copy")
def run(level: str) -> dict[str, Any]:
    import mlserve

    cfg = _LEVELS[level]
    threads = os.cpu_count() or 1
    spec = plans.realistic_plan_spec()
    plan = mlserve.FeaturePlan(spec)
    f_in, f_out = int(plan.f_in), int(plan.f_out)
    sizes: list[int] = cfg["sizes"]
    data = plans.make_rows(spec, max(max(sizes), _CHECK_ROWS), seed=1)
    check = _check(plan, plans.NumpyPlan(spec), data[:_CHECK_ROWS])

    tn = f"plan_t{threads}"
    measurements: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    gbps: dict[str, list[float]] = {}
    table_rows: list[list[Any]] = []
    for n in sizes:
        x = data[:n]
        plan_bytes = n * (f_in + f_out) * 4
        copy_bytes = 2 * ((plan_bytes // 2) // 4 * 4)
        samples = timing.interleaved_per_call_ns(
            _variants(plan, x, threads),
            repeats=cfg["repeats_large"] if n >= _LARGE_ROWS else cfg["repeats"],
            warmup=cfg["warmup"],
            target_sample_ns=int(cfg["target_sample_ms"] * 1e6),
        )
        rate: dict[str, float] = {}
        for name, ns in samples.items():
            nbytes = copy_bytes if name == "copy" else plan_bytes
            med = timing.median(ns)
            rate[name] = nbytes / med  # bytes per ns == GB/s
            gbps.setdefault(name, []).append(rate[name])
            measurements.append(
                {
                    "variant": name,
                    "rows": n,
                    "bytes": nbytes,
                    "samples": len(ns),
                    "median_ns": med,
                    "min_ns": min(ns),
                    "max_ns": max(ns),
                    "gb_per_s": rate[name],
                    "rows_per_s": n / med * 1e9,
                }
            )
        row_ratios = {
            "plan_t1/numpy": rate["plan_t1"] / rate["numpy"],
            f"{tn}/numpy": rate[tn] / rate["numpy"],
            "plan_t1/copy": rate["plan_t1"] / rate["copy"],
            f"{tn}/copy": rate[tn] / rate["copy"],
            "plan_t1_hist/numpy_hist": rate["plan_t1_hist"] / rate["numpy_hist"],
            f"{tn}_hist/numpy_hist": rate[f"{tn}_hist"] / rate["numpy_hist"],
        }
        for key, value in row_ratios.items():
            ratios[f"{key} n={n}"] = value
        table_rows.append(
            [
                n,
                rate["plan_t1"],
                rate["plan_t1_alloc"],
                rate[tn],
                rate["numpy"],
                rate["copy"],
                rate["plan_t1_hist"],
                rate["numpy_hist"],
                row_ratios["plan_t1/numpy"],
                row_ratios[f"{tn}/numpy"],
                row_ratios["plan_t1/copy"],
                row_ratios[f"{tn}/copy"],
                row_ratios["plan_t1_hist/numpy_hist"],
            ]
        )

    head_n = sizes[-1]
    notes = [
        f"plan: {len(spec['features'])} features, f_in={f_in}, f_out={f_out}; "
        f"plan and numpy agree on {check['rows']} rows: {check['agree']} "
        f"(max abs diff {check['max_abs_diff']:.2e}, NaNs at the same places: "
        f"{check['same_nan']})",
        "the plan writes into a reused output array (as the batcher does); plan_t1_alloc "
        "allocates a fresh one per call, as numpy does; the copy moves the same bytes as the "
        "plan (in + out) between preallocated arrays.",
        f"{tn} uses num_threads=os.cpu_count()={threads}; the plan may decide to use fewer "
        "threads for small n.",
    ]
    if not check["agree"]:
        notes.insert(0, "WARNING: plan and numpy outputs differ; the ratios compare different work")
    return {
        "parameters": {
            "level": level,
            "sizes": sizes,
            "threads": threads,
            "f_in": f_in,
            "f_out": f_out,
            "repeats": cfg["repeats"],
            "repeats_large": cfg["repeats_large"],
            "large_rows": _LARGE_ROWS,
            "warmup": cfg["warmup"],
            "target_sample_ms": cfg["target_sample_ms"],
            "statistic": "median",
        },
        "baseline": "the same plan as vectorized numpy (bench.plans.NumpyPlan: np.where, "
        "np.clip, np.log1p, arithmetic, one-hot by indexing, histograms by searchsorted + "
        "bincount), and np.copyto moving the same bytes; ratios are GB/s over GB/s",
        "measurements": measurements,
        "checks": {"plan_vs_numpy": check},
        "ratios": ratios,
        "headline": {
            "name": f"plan_t1/numpy n={head_n}",
            "value": ratios[f"plan_t1/numpy n={head_n}"],
            "meaning": "how many times the numpy version's throughput the fused plan reaches "
            "on one thread",
        },
        "tables": [
            {
                "title": "Throughput (GB/s) and ratios",
                "columns": [
                    "rows",
                    "plan t1",
                    "plan t1 alloc",
                    f"plan t{threads}",
                    "numpy",
                    "copy",
                    "plan t1 hist",
                    "numpy hist",
                    "t1/numpy",
                    f"t{threads}/numpy",
                    "t1/copy",
                    f"t{threads}/copy",
                    "t1 hist/numpy hist",
                ],
                "rows": table_rows,
            }
        ],
        "plots": [
            {
                "title": "normalize throughput",
                "xlabel": "rows",
                "ylabel": "GB/s",
                "x": sizes,
                "series": gbps,
                "logx": True,
                "logy": True,
            },
            {
                "title": "ratios",
                "xlabel": "rows",
                "ylabel": "ratio",
                "x": sizes,
                "series": {
                    k: [ratios[f"{k} n={n}"] for n in sizes]
                    for k in (
                        "plan_t1/numpy",
                        f"{tn}/numpy",
                        "plan_t1/copy",
                        "plan_t1_hist/numpy_hist",
                    )
                },
                "logx": True,
                "logy": True,
                "hline": 1.0,
            },
        ],
        "notes": notes,
    }
