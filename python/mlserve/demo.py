"""``mlserve demo``: raw data -> trained, registered model -> served predictions, end to end.

Trains a fraud model on the embedded synthetic card transactions (mlserve.trainer: fitted
feature plan, torch MLP, TorchScript + ONNX export, drift reference), registers it and points
``fraud@champion`` at it, then serves it through an :class:`Engine` built from the registry
(native normalization, dynamic batching, onnxruntime) and prints the held-out evaluation,
predictions on fresh transactions, throughput per access pattern, batch sizes and the drift
histogram counted while serving; then starts ``mlserve serve`` on a free local port and sends
real requests with :mod:`mlserve.client` (predictions, latency, where /metrics is).
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


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def run(
    rows: int = 40_000,
    requests: int = 20_000,
    epochs: int = 12,
    registry: str | None = None,
    http: bool = True,
) -> None:
    import mlserve.trainer
    from mlserve.registry import Registry
    from mlserve.trainer import datasets, encode_rows, train

    console = Console()
    console.rule("[bold]mlserve demo: card-transaction fraud, train -> register -> serve")
    reg = Registry(registry)
    data = datasets.card_transactions(rows, seed=7)
    config = Path(mlserve.trainer.__file__).parent / "configs" / "demo.toml"
    console.print(f"training on {rows:,} transactions ({data['is_fraud'].mean():.1%} fraud), "
                  f"config {config.name}, registry {reg.root}")
    with tempfile.TemporaryDirectory() as tmp:
        result = train(data, "is_fraud", name="fraud", timestamp="event_ts", config=config,
                       overrides=[f"epochs={epochs}"], registry=reg,
                       out_dir=Path(tmp) / "bundle", progress=True)
    version = result.model_version
    reg.set_alias("fraud", "champion", version.version, reason="demo: newest trained model")
    metrics = Table(title=f"held-out evaluation of {version.ref} (now fraud@champion)")
    for key in ("roc_auc", "pr_auc", "log_loss", "accuracy", "ece"):
        metrics.add_column(key, justify="right")
    metrics.add_row(*(f"{result.metrics[k]:.4f}" for k in
                      ("roc_auc", "pr_auc", "log_loss", "accuracy", "ece")))
    console.print(metrics)

    fresh = datasets.card_transactions(max(2_000, rows // 4), seed=8)
    config_b = BatcherConfig(max_batch_size=64, max_queue_delay_us=200, instance_count=2)
    with Engine.from_registry("fraud@champion", registry=reg, config=config_b) as engine:
        x = encode_rows(fresh, engine.bundle.signature["inputs"])
        _serve(console, engine, fresh, x, requests)
        inputs = engine.bundle.signature["inputs"]
    if http:
        _serve_http(console, reg.root, fresh, inputs)


def _serve_http(console: Console, registry_root: Path, fresh: Any,
                inputs: list[dict[str, Any]]) -> None:
    """Starts `mlserve serve` for fraud@champion and talks to it with mlserve.client."""
    import socket
    import subprocess
    import sys

    from mlserve.client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlserve.cli", "serve", "--registry", str(registry_root),
           "--model", "fraud@champion", "--port", str(port), "--log-level", "warning"]
    console.rule(f"[bold]HTTP: mlserve serve on {url} (KServe v2 + msgpack)")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with Client(url, codec="msgpack") as client:
            deadline = time.monotonic() + 60
            while not client.ready():
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read().decode() if server.stderr else ""
                    raise RuntimeError(f"the server did not become ready: {err[-2000:]}")
                time.sleep(0.1)
            rows = fresh.head(5)
            tensors: dict[str, Any] = {}
            for spec in inputs:
                col = rows[spec["name"]]
                if spec["kind"] == "categorical" and "vocabulary" in spec:
                    tensors[spec["name"]] = ["" if v is None else str(v) for v in col.tolist()]
                else:
                    tensors[spec["name"]] = col.to_numpy(dtype=np.float32)
            result = client.infer("fraud", tensors)
            table = Table(title=f"POST {url}/v2/models/fraud/infer (per-feature tensors, "
                          f"strings for categoricals) -> version {result.model_version}")
            for col in ("amount", "merchant_category", "country", "channel", "P(fraud)"):
                table.add_column(col, justify="right")
            for i, p in enumerate(result.output[:, 0]):
                r = rows.iloc[i]
                table.add_row(f"{r['amount']:,.2f}", str(r["merchant_category"]),
                              str(r["country"]), str(r["channel"]), f"{p:.3f}")
            console.print(table)
            one = {k: v[:1] for k, v in tensors.items()}
            lat = []
            for _ in range(300):
                t0 = time.perf_counter()
                client.infer("fraud", one)
                lat.append(time.perf_counter() - t0)
            ms = np.percentile(np.array(lat) * 1e3, [50, 99])
            console.print(f"one-row msgpack requests over HTTP, sequential: p50 {ms[0]:.2f} ms, "
                          f"p99 {ms[1]:.2f} ms (client + network + server)")
        import httpx

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        shown = [ln for ln in metrics.splitlines()
                 if ln.startswith(("mlserve_requests_total", "mlserve_engine_batches_total"))]
        console.print(f"Prometheus metrics at {url}/metrics, e.g.:")
        for line in shown[:4]:
            console.print(f"  {line}", markup=False)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _serve(console: Console, engine: Engine, fresh: Any, x: np.ndarray, requests: int) -> None:
    from mlserve.trainer.evaluate import roc_auc

    y = fresh["is_fraud"].to_numpy()
    p = np.concatenate(engine.predict_many([x[i : i + 64] for i in range(0, len(x), 64)]))
    table = Table(title=f"fresh transactions scored by {engine.name}/{engine.version}")
    shown = ("amount", "hour", "merchant_category", "country", "channel")
    for col in (*shown, "fraud?", "P(fraud)"):
        table.add_column(col, justify="right")
    for i in range(6):
        cells = []
        for col in shown:
            v = fresh[col].iloc[i]
            cells.append("-" if v is None or (isinstance(v, float) and np.isnan(v))
                         else (f"{v:,.0f}" if isinstance(v, (int, float, np.number)) else str(v)))
        table.add_row(*cells, "yes" if y[i] else "no", f"{p[i, 0]:.3f}")
    console.print(table)
    console.print(f"ROC-AUC on {len(y):,} fresh transactions: [bold]{roc_auc(y, p[:, 0]):.3f}[/] "
                  "(constant scorer: 0.500)")

    singles = [x[i % len(x)][None, :] for i in range(requests)]
    results = Table(title=f"throughput, {requests:,} one-row requests (onnxruntime, 2 instances)")
    results.add_column("access pattern")
    results.add_column("requests/s", justify="right")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("serving", total=5)
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

        chunks = [x[i : i + 64] for i in range(0, len(x) - 63, 64)]
        t0 = time.perf_counter()
        engine.predict_many(chunks)
        results.add_row("predict_many(), 64-row chunks (rows/s)",
                        _rate(64 * len(chunks), time.perf_counter() - t0))
        progress.advance(task)
    console.print(results)

    stats = engine.stats()
    top = sorted(sorted(stats["batch_sizes"].items(), key=lambda kv: -kv[1])[:6])
    console.print(f"batches: {stats['batches']:,} for {stats['requests']:,} requests; most common "
                  "sizes: " + ", ".join(f"{k} rows x{v:,}" for k, v in top))
    hist = engine.histograms()["features"].get("amount")
    if hist is not None:
        share = hist["counts"] / max(1, hist["counts"].sum())
        console.print("drift histogram 'amount' while serving (training deciles): "
                      + " ".join(f"{s:.0%}" for s in share) + f"  missing: {hist['nan']:,}")
