"""``mlserve demo``: the core end to end on embedded synthetic card transactions.

Generates seeded transactions, fits a feature plan on the training split with numpy (median
imputation, quantile clipping, log1p for heavy tails, standardization, one-hot vocabularies,
hash buckets, decile histogram edges), fits a logistic-regression scorer on the plan's output,
exports it to ONNX and serves it through an :class:`Engine` (dynamic batching, onnxruntime),
printing predictions, held-out ROC-AUC, throughput per access pattern, batch sizes and drift
histograms. The trainer issue replaces the scorer with the real torch pipeline.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mlserve.config import BatcherConfig
from mlserve.engine import Engine
from mlserve.plan import FeaturePlan

NUMERIC = ("amount", "account_age_days", "tx_velocity_1h", "hour")
CATEGORICAL = {"merchant_category": 12, "country": 20, "channel": 3}
HASHED = {"merchant_id": 64}


def make_transactions(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic transactions [n, 8] float32 (NaN = missing) and a 0/1 fraud label."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.2, n)
    age = rng.uniform(0, 3650, n)
    velocity = rng.poisson(1.5, n).astype(np.float64)
    hour = rng.integers(0, 24, n).astype(np.float64)
    mcc = np.minimum(rng.zipf(1.6, n) - 1, 14).astype(np.float64)  # codes >= 12: unseen/rare
    country = rng.integers(0, 20, n).astype(np.float64)
    channel = rng.integers(0, 3, n).astype(np.float64)
    merchant = rng.integers(0, 50_000, n).astype(np.float64)
    logit = (
        -4.0
        + 0.9 * (np.log1p(amount) - 3.5)
        - 0.0006 * age
        + 0.6 * velocity
        + 1.2 * ((hour < 5) | (hour > 22))
        + 1.5 * (mcc == 7)
        + 0.8 * (channel == 2)
        + 1.0 * (country >= 17)
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    columns = [amount, age, velocity, hour, mcc, country, channel, merchant]
    x = np.stack(columns, 1).astype(np.float32)
    x[rng.random(n) < 0.05, 0] = np.nan
    x[rng.random(n) < 0.02, 1] = np.nan
    x[rng.random(n) < 0.01, 5] = np.nan
    return x, label


def fit_plan(x: np.ndarray) -> dict[str, Any]:
    """A preprocessing plan fitted on training rows only (docs/feature_plan.md)."""
    features: list[dict[str, Any]] = []
    for j, name in enumerate(NUMERIC):
        col = x[:, j][~np.isnan(x[:, j])].astype(np.float64)
        lo, hi = np.quantile(col, [0.001, 0.999])
        ops: list[dict[str, Any]] = [
            {"op": "impute", "value": float(np.median(col))},
            {"op": "clip", "lo": float(lo), "hi": float(hi)},
        ]
        clipped = np.clip(col, lo, hi)
        if name in ("amount", "tx_velocity_1h"):
            ops.append({"op": "log1p"})
            clipped = np.log1p(clipped)
        mean, std = float(clipped.mean()), float(clipped.std())
        ops.append({"op": "standardize", "mean": mean, "std": std})
        edges = np.unique(np.quantile(col, np.linspace(0.1, 0.9, 9)))
        features.append({"name": name, "kind": "numeric", "ops": ops,
                         "histogram": {"edges": [-np.inf, *edges.tolist(), np.inf]}})
    for name, size in CATEGORICAL.items():
        features.append({"name": name, "kind": "categorical", "histogram": True,
                         "ops": [{"op": "onehot", "size": size}]})
    for name, n in HASHED.items():
        features.append({"name": name, "kind": "categorical", "histogram": True,
                         "ops": [{"op": "hash_bucket", "n": n}]})
    return {"features": features}


def fit_logistic(z: np.ndarray, y: np.ndarray, steps: int = 300) -> tuple[np.ndarray, float]:
    """Full-batch gradient descent with a little L2; returns (weights, bias)."""
    w = np.zeros(z.shape[1])
    b = 0.0
    zz = z.astype(np.float64)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(zz @ w + b)))
        g = p - y
        w -= 0.5 * (zz.T @ g / len(y) + 1e-4 * w)
        b -= 0.5 * float(g.mean())
    return w, b


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC (ties averaged)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    s = score[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        if j > i:
            ranks[order[i : j + 1]] = (i + j + 2) / 2
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def export_onnx(w: np.ndarray, b: float, path: Path) -> None:
    """The scorer as an ONNX graph: sigmoid(x @ W + b), dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = len(w)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["probability"])],
        "fraud_scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w.astype(np.float32).reshape(d, 1), "W"),
         numpy_helper.from_array(np.array([b], np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def run(rows: int = 200_000, requests: int = 20_000) -> None:
    console = Console()
    console.rule("[bold]mlserve demo: card-transaction fraud scoring")
    x, y = make_transactions(rows)
    split = int(0.8 * rows)
    plan = FeaturePlan(fit_plan(x[:split]))
    console.print(f"data: {rows:,} transactions, fraud rate {y.mean():.2%}; plan: "
                  f"{plan.f_in} raw features -> {plan.f_out} model inputs")

    t0 = time.perf_counter()
    z_train = plan.transform(x[:split])
    t_norm = time.perf_counter() - t0
    w, b = fit_logistic(z_train, y[:split])
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "scorer.onnx"
        export_onnx(w, b, model_path)
        config = BatcherConfig(max_batch_size=64, max_queue_delay_us=200, instance_count=2)
        with Engine(plan, model_path, backend="onnxruntime", config=config, name="fraud") as engine:
            _serve(console, engine, x, y, split, requests, t_norm)


def _serve(console: Console, engine: Engine, x: np.ndarray, y: np.ndarray, split: int,
           requests: int, t_norm: float) -> None:
    x_test, y_test = x[split:], y[split:]
    p_bulk = np.concatenate([engine.predict(x_test[i : i + 64]) for i in range(0, len(x_test), 64)])
    auc = roc_auc(y_test, p_bulk[:, 0])
    table = Table(title="first held-out transactions")
    for col in ("amount", "age (days)", "velocity", "hour", "mcc", "country", "channel", "fraud?",
                "P(fraud)"):
        table.add_column(col, justify="right")
    for i in range(6):
        r = x_test[i]
        table.add_row(*[("-" if np.isnan(v) else f"{v:,.0f}") for v in r[:7]],
                      "yes" if y_test[i] else "no", f"{p_bulk[i, 0]:.3f}")
    console.print(table)
    console.print(f"held-out ROC-AUC: [bold]{auc:.3f}[/] on {len(y_test):,} rows "
                  f"(constant scorer: 0.500)")

    singles = [x_test[i % len(x_test)][None, :] for i in range(requests)]
    results = Table(title=f"throughput, {requests:,} one-row requests (onnxruntime, 2 instances)")
    results.add_column("access pattern")
    results.add_column("requests/s", justify="right")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("serving", total=4)
        n_sync = requests // 10
        t0 = time.perf_counter()
        for s in singles[:n_sync]:
            engine.predict(s)
        results.add_row("predict(), 1 thread", _rate(n_sync, time.perf_counter() - t0))
        progress.advance(task)

        def worker(chunk: list[np.ndarray]) -> None:
            for s in chunk:
                engine.predict(s)

        threads = [threading.Thread(target=worker, args=(singles[k::8],)) for k in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results.add_row("predict(), 8 threads", _rate(requests, time.perf_counter() - t0))
        progress.advance(task)

        t0 = time.perf_counter()
        futures = [engine.submit(s) for s in singles]
        for f in futures:
            f.result()
        results.add_row("submit() futures, 1 thread", _rate(requests, time.perf_counter() - t0))
        progress.advance(task)

        async def many() -> None:
            sem = asyncio.Semaphore(256)

            async def one(s: np.ndarray) -> None:
                async with sem:
                    await engine.apredict(s)

            await asyncio.gather(*(one(s) for s in singles))

        t0 = time.perf_counter()
        asyncio.run(many())
        results.add_row("apredict(), 256 in flight", _rate(requests, time.perf_counter() - t0))
        progress.advance(task)
    chunks = [x_test[i : i + 64] for i in range(0, len(x_test) - 63, 64)]
    t0 = time.perf_counter()
    engine.predict_many(chunks)
    results.add_row("predict_many(), 64-row chunks (rows/s)",
                    _rate(64 * len(chunks), time.perf_counter() - t0))
    results.add_row("plan.transform() alone (rows/s)", _rate(split, t_norm))
    console.print(results)

    stats = engine.stats()
    sizes = sorted(stats["batch_sizes"].items())
    top = sorted(sizes, key=lambda kv: -kv[1])[:6]
    console.print(f"batches: {stats['batches']:,} for {stats['requests']:,} requests; most common "
                  "sizes: " + ", ".join(f"{k} rows x{v:,}" for k, v in sorted(top)))
    hist = engine.histograms()["features"]["amount"]
    counts = hist["counts"]
    share = counts / max(1, counts.sum())
    console.print("drift histogram 'amount' (deciles of training data, served traffic): "
                  + " ".join(f"{s:.0%}" for s in share) + f"  missing: {hist['nan']:,}")
