"""Scenario ``batch``: rows/s of ``mlserve batch`` (run_batch) against a hand-written loop.

A fraud model is trained (small, one epoch) and registered in a temporary registry; the input
is ``card_transactions`` rows in one Parquet file. The baseline is what a user writes without
mlserve.batch: ``pandas.read_parquet`` of the file, the bundle's encoding (``encode_rows``) and
plan (``FeaturePlan.transform``), ``onnxruntime.InferenceSession.run`` (default threads) over
slices of 8192 rows, the probability added as a column, ``DataFrame.to_parquet``. mlserve runs
``run_batch`` with 1 worker (in process) and with 2 and ``os.cpu_count()`` worker processes
(their start-up included), into a new output directory each time; both paths read the file and
write every input column plus the prediction. Variants alternate, one run each per round; the
median seconds per variant count. Their probabilities are compared.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import register

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {"rows": 3000, "rounds": 1, "train_rows": 1500},
    "quick": {"rows": 200_000, "rounds": 2, "train_rows": 4000},
    "full": {"rows": 1_000_000, "rounds": 3, "train_rows": 8000},
}
_SLICE = 8192


def _baseline(bundle_dir: Path, src: Path, dst: Path) -> np.ndarray:
    import onnxruntime as ort
    import pandas as pd
    from mlserve.bundle import ModelBundle
    from mlserve.trainer.preprocess import encode_rows

    bundle = ModelBundle.load(bundle_dir)
    plan = bundle.plan()
    session = ort.InferenceSession(str(bundle.model_for("onnxruntime")),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    frame = pd.read_parquet(src)
    x = plan.transform(encode_rows(frame, bundle.signature["inputs"]))
    y = np.concatenate([session.run(None, {name: x[i:i + _SLICE]})[0]
                        for i in range(0, len(x), _SLICE)])
    frame["probability"] = y[:, 0]
    frame.to_parquet(dst, index=False)
    return np.asarray(y[:, 0])


@register("batch", "rows/s of mlserve batch (1..N worker processes) vs a pandas + onnxruntime loop")
def run(level: str) -> dict[str, Any]:
    import pandas as pd
    from mlserve.batch import run_batch
    from mlserve.registry import Registry
    from mlserve.trainer import train
    from mlserve.trainer.datasets import card_transactions

    cfg = _LEVELS[level]
    cpus = os.cpu_count() or 1
    worker_counts = sorted({1, 2, cpus})
    tmp = Path(tempfile.mkdtemp(prefix="mlserve-bench-batch-"))
    try:
        registry = Registry(tmp / "registry")
        result = train(card_transactions(cfg["train_rows"], seed=3), "is_fraud", name="fraud",
                       timestamp="event_ts", registry=registry, out_dir=tmp / "bundle",
                       config={"exclude": ["user_id", "merchant_id"], "epochs": 1,
                               "hidden": [64, 32]}, progress=False)
        src = tmp / "rows.parquet"
        card_transactions(cfg["rows"], seed=9).drop(columns=["is_fraud"]).to_parquet(
            src, index=False)

        variants: dict[str, Any] = {
            "pandas+onnxruntime": lambda out: _baseline(result.bundle_path, src,
                                                        out / "out.parquet")}
        for w in worker_counts:
            variants[f"mlserve w={w}"] = (
                lambda out, w=w: run_batch("fraud/1", src, out, registry=registry, workers=w))
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        outputs: dict[str, np.ndarray] = {}
        for r in range(cfg["rounds"]):
            for name, fn in variants.items():
                out = tmp / f"out-{r}-{name.replace(' ', '_').replace('=', '')}"
                out.mkdir()
                start = time.perf_counter()
                fn(out)
                seconds[name].append(time.perf_counter() - start)
                if r == 0:
                    outputs[name] = (pd.read_parquet(out)["probability"].to_numpy()
                                     if name.startswith("mlserve") else
                                     pd.read_parquet(out / "out.parquet")["probability"].to_numpy())
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = cfg["rows"]
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    rate = {k: rows / v for k, v in med.items()}
    base = "pandas+onnxruntime"
    diff = max(float(np.max(np.abs(outputs[k] - outputs[base]))) for k in outputs)
    ratios = {f"{k}/{base} rows/s": rate[k] / rate[base] for k in rate if k != base}
    best = max((k for k in rate if k != base), key=lambda k: rate[k])
    measurements = [{"variant": k, "rows": rows, "median_s": med[k], "runs_s": seconds[k],
                     "rows_per_s": rate[k]} for k in variants]
    return {
        "parameters": {"level": level, **cfg, "workers": worker_counts, "cpu_count": cpus,
                       "chunk_rows": 65536, "model": "MLP 64-32, 13 inputs"},
        "baseline": "pandas.read_parquet + encode_rows + FeaturePlan.transform + onnxruntime "
        "(default threads) over 8192-row slices + DataFrame.to_parquet, in one process",
        "measurements": measurements,
        "ratios": ratios,
        "headline": {
            "name": f"{best}/{base} rows/s",
            "value": ratios[f"{best}/{base} rows/s"],
            "target": 1.0,
            "meaning": f"rows/s of mlserve batch at its best worker count ({best}) over the "
            f"hand-written loop, {rows:,} rows read from and written to Parquet",
        },
        "tables": [{
            "title": f"Scoring {rows:,} rows (Parquet in, Parquet out), median of "
                     f"{cfg['rounds']} run(s)",
            "columns": ["variant", "seconds", "rows/s", "ratio to baseline"],
            "rows": [[k, med[k], rate[k], rate[k] / rate[base]] for k in variants],
        }],
        "plots": [{"title": f"rows/s, {rows:,} rows", "xlabel": "worker processes",
                   "ylabel": "rows/s", "x": worker_counts,
                   "series": {"mlserve batch": [rate[f"mlserve w={w}"] for w in worker_counts],
                              base: [rate[base]] * len(worker_counts)},
                   "logx": False, "logy": False}],
        "notes": [f"largest |probability difference| between mlserve and the baseline: "
                  f"{diff:.2e}",
                  "worker processes start (spawn, import, model load) inside the timed run"],
    }
