"""``mlserve demo``: raw data -> feature store -> trained, registered model -> served predictions.

Derives per-user and per-merchant feature views from the embedded synthetic card transactions
(daily aggregates: activity, amounts, merchant fraud rates with delayed labels), ingests them
into a feature store (Parquet offline, LMDB online) and materializes them; trains a fraud model
on ``historical_features`` of the transactions (point-in-time correct) plus their request-time
columns (mlserve.trainer: fitted feature plan, torch MLP, TorchScript + ONNX export, drift
reference), registers it and points ``fraud@champion`` at it, then serves it through an
:class:`Engine` built from the registry (native normalization, dynamic batching, onnxruntime)
and prints the held-out evaluation, predictions on fresh transactions, throughput per access
pattern, batch sizes and the drift histogram counted while serving; scores the fresh
transactions with a batch job (``mlserve batch``: point-in-time features, Parquet out); then
starts ``mlserve serve --feature-store`` on a free local port and sends real requests keyed
by ``user_id`` and ``merchant_id`` with :mod:`mlserve.client` (predictions, the same with the
features sent explicitly, latency, the feature-fetch metrics), then normal and drifted traffic:
the server's drift report (``/monitoring``), online metrics from feedback labels, and the
offline HTML drift report (``mlserve drift report``) of the drifted rows.

The transactions are moved in time so that their history ends today: the online store enforces
TTLs at the current time. The demo's feature store (default: ``demo-features`` beside the
registry) is the demo's own and is rebuilt on every run.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mlserve._objectstore import is_uri
from mlserve.config import BatcherConfig
from mlserve.engine import Engine
from mlserve.errors import InvalidInput

#: The demo's feature service and the file that marks a feature store as the demo's own.
SERVICE = "fraud_features"
_MARKER = ".mlserve-demo"


#: The demo server's monitoring: a short window so that drift shows within seconds.
_DEMO_INTERVAL_S = 0.5
_DEMO_WINDOW_S = 4.0


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def run(
    rows: int = 40_000,
    requests: int = 20_000,
    epochs: int = 12,
    registry: str | None = None,
    http: bool = True,
    feature_store: str | None = None,
) -> None:
    import pandas as pd

    import mlserve.trainer
    from mlserve.registry import Registry
    from mlserve.trainer import datasets, encode_rows, train
    from mlserve.trainer.features import feature_table

    if feature_store is not None and is_uri(feature_store):
        raise InvalidInput(
            f"--feature-store {feature_store}: the demo rebuilds its feature store on every run "
            "and so takes a directory; to share one, copy it afterwards: `mlserve features "
            "copy --store DIR --to s3://...`")
    console = Console()
    console.rule("[bold]mlserve demo: card-transaction fraud, features -> train -> register -> "
                 "serve")
    reg = Registry(registry)
    data = datasets.card_transactions(rows, seed=7)
    # Move the history so that it ends at today's midnight (UTC): TTLs are checked at now.
    shift = pd.Timestamp.now(tz="UTC").floor("D") - data["event_ts"].max().ceil("D")
    data["event_ts"] += shift
    work = _work_dir(reg)
    root = Path(feature_store) if feature_store else work / "demo-features"
    store = _build_feature_store(console, data, root)
    config = Path(mlserve.trainer.__file__).parent / "configs" / "demo.toml"
    console.print(f"training on {rows:,} transactions ({data['is_fraud'].mean():.1%} fraud) "
                  f"joined point-in-time with feature service {SERVICE!r}, config "
                  f"{config.name}, registry {reg.location}")
    with tempfile.TemporaryDirectory() as tmp:
        result = train(label="is_fraud", features=SERVICE, entities=data, feature_store=store,
                       name="fraud", config=config, overrides=[f"epochs={epochs}"],
                       registry=reg, out_dir=Path(tmp) / "bundle", progress=True)
    version = result.model_version
    reg.set_alias("fraud", "champion", version.version, reason="demo: newest trained model")
    metrics = Table(title=f"held-out evaluation of {version.ref} (now fraud@champion)")
    for key in ("roc_auc", "pr_auc", "log_loss", "accuracy", "ece"):
        metrics.add_column(key, justify="right")
    metrics.add_row(*(f"{result.metrics[k]:.4f}" for k in
                      ("roc_auc", "pr_auc", "log_loss", "accuracy", "ece")))
    console.print(metrics)
    lineage = version.lineage
    console.print(f"lineage: feature service {SERVICE}/{lineage['feature_service']['version']}, "
                  "views " + ", ".join(f"{v['name']}/{v['version']}"
                                       for v in lineage["feature_views"])
                  + f"; request-time inputs: {', '.join(lineage['request_features'])}")

    fresh = datasets.card_transactions(max(2_000, rows // 4), seed=8)
    fresh["event_ts"] += shift
    fresh_table = feature_table(fresh, "is_fraud", SERVICE, store=store).frame
    config_b = BatcherConfig(max_batch_size=64, max_queue_delay_us=200, instance_count=2)
    with Engine.from_registry("fraud@champion", registry=reg, config=config_b) as engine:
        x = encode_rows(fresh_table, engine.bundle.signature["inputs"])
        _serve(console, engine, fresh_table, x, requests)
        inputs = engine.bundle.signature["inputs"]
    _batch(console, reg, fresh, version.version)
    drifted = datasets.card_transactions(len(fresh), seed=9, drift=1.0,
                                         drift_features=["amount", "channel"])
    drifted["event_ts"] = fresh["event_ts"].to_numpy()  # the same days: stored features exist
    drifted_table = feature_table(drifted, "is_fraud", SERVICE, store=store).frame
    if http:
        _serve_http(console, reg.location, store, fresh, inputs, lineage["request_features"],
                    (fresh_table, drifted_table))
    _drift(console, reg, drifted_table, version.version)
    store.close()


def _build_feature_store(console: Console, data: Any, root: Path) -> Any:
    """The demo's feature store at ``root``, rebuilt: definitions applied, the transactions'
    per-user and per-merchant daily aggregates ingested and materialized up to now."""
    import pandas as pd

    from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView
    from mlserve.trainer import datasets

    if root.exists() and any(root.iterdir()):
        if not (root / _MARKER).is_file():
            raise InvalidInput(f"{root} is not empty and not a demo feature store; pass "
                               "--feature-store with a new or empty directory")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).write_text("the feature store of `mlserve demo`, rebuilt on every run\n")
    store = FeatureStore(root)
    user = Entity("user", "user_id", description="card holder")
    merchant = Entity("merchant", "merchant_id")
    store.apply([
        user, merchant,
        FeatureView("user_activity", user,
                    [Column("tx_count_1d", "int"), Column("tx_count_7d", "int"),
                     Column("amount_avg_7d", "float"), Column("amount_max_7d", "float"),
                     Column("night_share_7d", "float")],
                    ttl_seconds=7 * 86400, description="daily snapshot of the last 7 days"),
        FeatureView("merchant_risk", merchant,
                    [Column("tx_count_30d", "int"), Column("amount_avg_30d", "float"),
                     Column("fraud_rate_30d", "float")],
                    ttl_seconds=35 * 86400,
                    description="daily snapshot; fraud labels counted after a 7-day delay"),
        FeatureService(SERVICE, ["user_activity", "merchant_risk"]),
    ])
    histories = datasets.transaction_feature_history(data)
    now = pd.Timestamp.now(tz="UTC")
    table = Table(title=f"feature store {root} (Parquet offline, LMDB online)")
    for col in ("view", "entity", "TTL", "rows ingested", "keys materialized", "s"):
        table.add_column(col, justify="right")
    for view, frame in histories.items():
        t0 = time.perf_counter()
        ingested = store.ingest(view, frame)
        done = store.materialize(view, frame["event_ts"].min(), now)
        fv = store.view(view)
        ttl = "-" if fv.ttl_seconds is None else f"{fv.ttl_seconds / 86400:g} d"
        table.add_row(fv.ref, fv.entity_name, ttl,
                      f"{ingested.rows:,}", f"{done.written:,}",
                      f"{time.perf_counter() - t0:.2f}")
    console.print(table)
    return store


def _work_dir(reg: Any) -> Path:
    """Where the demo keeps its files: beside a local registry, else in ``$MLSERVE_HOME``
    (a registry on object storage has no folder of its own here)."""
    from mlserve.registry._settings import mlserve_home
    from mlserve.registry.remote import RemoteRegistry

    if isinstance(reg, RemoteRegistry):
        return mlserve_home() / "demo"
    return Path(reg.root).parent


def _serve_http(console: Console, registry_root: str, store: Any, fresh: Any,
                inputs: list[dict[str, Any]], request_features: list[str],
                tables: tuple[Any, Any]) -> None:
    """Starts `mlserve serve --feature-store` for fraud@champion and sends it requests keyed by
    user_id/merchant_id with mlserve.client, then the same rows with the features written out."""
    import socket
    import subprocess
    import sys

    from mlserve.client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlserve.cli", "serve", "--registry", registry_root,
           "--model", "fraud@champion", "--port", str(port), "--log-level", "warning",
           "--feature-store", str(store.root),
           "--monitoring-interval", str(_DEMO_INTERVAL_S),
           "--monitoring-window", f"sliding:{_DEMO_WINDOW_S:g}s", "--alert-min-rows", "200"]
    console.rule(f"[bold]HTTP: mlserve serve on {url} (KServe v2 + msgpack, online features "
                 "from LMDB)")
    # The server's log (an access-log line per request) goes to a file: a pipe nobody reads
    # would fill up and block the server.
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        with Client(url, codec="msgpack") as client:
            deadline = time.monotonic() + 60
            while not client.ready():
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    err = log.read().decode(errors="replace")
                    raise RuntimeError(f"the server did not become ready: {err[-2000:]}")
                time.sleep(0.1)
            rows = fresh.tail(6)  # the newest transactions: their users were active lately
            keys = {"user_id": rows["user_id"].to_numpy(np.int64),
                    "merchant_id": rows["merchant_id"].to_numpy(np.int64)}
            request = {**keys, **_tensors(rows, [s for s in inputs
                                                 if s["name"] in request_features])}
            keyed = client.infer("fraud", request)
            online = store.online_features(SERVICE, keys)
            explicit = dict(request)
            del explicit["user_id"], explicit["merchant_id"]
            for j, name in enumerate(online.names):
                explicit[name] = online.values[:, j]
            same = client.infer("fraud", explicit)
            table = Table(title=f"POST {url}/v2/models/fraud/infer keyed by user_id/merchant_id"
                          f" (+ request-time inputs) -> version {keyed.model_version}")
            for col in ("user_id", "merchant_id", "amount", "channel", "user feats",
                        "merchant feats", "P(fraud)"):
                table.add_column(col, justify="right")
            status = online.status_names()
            for i, p in enumerate(keyed.output[:, 0]):
                r = rows.iloc[i]
                table.add_row(str(r["user_id"]), str(r["merchant_id"]), f"{r['amount']:,.2f}",
                              str(r["channel"]), status[i][0], status[i][1], f"{p:.3f}")
            console.print(table)
            diff = float(np.max(np.abs(keyed.output - same.output)))
            console.print(f"the same rows with the {len(online.names)} stored features sent "
                          f"explicitly: max |difference| {diff:.1e} (missing/expired features "
                          "are NaN, imputed by the plan)")
            one_keyed = {k: v[:1] for k, v in request.items()}
            one_explicit = {k: v[:1] for k, v in explicit.items()}
            lat: dict[str, list[float]] = {"keyed": [], "explicit": []}
            for _ in range(300):
                for label, body in (("keyed", one_keyed), ("explicit", one_explicit)):
                    t0 = time.perf_counter()
                    client.infer("fraud", body)
                    lat[label].append(time.perf_counter() - t0)
            for label, what in (("keyed", "keyed by user_id/merchant_id"),
                                ("explicit", "all features sent")):
                ms = np.percentile(np.array(lat[label]) * 1e3, [50, 99])
                console.print(f"one-row msgpack requests, {what}, sequential: p50 {ms[0]:.2f} "
                              f"ms, p99 {ms[1]:.2f} ms (client + network + server)")
        import httpx

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        fetch = {ln.split("{")[0]: float(ln.split()[-1]) for ln in metrics.splitlines()
                 if ln.startswith(("mlserve_feature_fetch_seconds_sum",
                                   "mlserve_feature_fetch_seconds_count"))}
        if fetch.get("mlserve_feature_fetch_seconds_count"):
            mean_us = 1e6 * fetch["mlserve_feature_fetch_seconds_sum"] / fetch[
                "mlserve_feature_fetch_seconds_count"]
            console.print(f"online feature fetch in the server: mean {mean_us:.0f} µs over "
                          f"{fetch['mlserve_feature_fetch_seconds_count']:.0f} keyed requests "
                          "(mlserve_feature_fetch_seconds)")
        shown = [ln for ln in metrics.splitlines()
                 if ln.startswith(("mlserve_requests_total", "mlserve_engine_batches_total",
                                   "mlserve_feature_keys_total"))]
        console.print(f"Prometheus metrics at {url}/metrics, e.g.:")
        for line in shown[:8]:
            console.print(f"  {line}", markup=False)
        _drifted_traffic(console, url, *tables, inputs)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _drifted_traffic(console: Console, url: str, normal: Any, drifted: Any,
                     inputs: list[dict[str, Any]]) -> None:
    """Normal, then drifted traffic (amount and channel shift) to the server, every feature
    sent explicitly; prints its drift report and the online metrics of the feedback labels
    sent for the drifted requests."""
    from mlserve.client import Client
    from mlserve.trainer import encode_rows

    console.rule(f"[bold]monitoring: normal, then drifted traffic ({_DEMO_WINDOW_S:g} s "
                 "sliding window)")
    normal_x = encode_rows(normal, inputs)
    drifted_x = encode_rows(drifted, inputs)
    labels = drifted["is_fraud"].to_numpy()
    with Client(url) as client:
        def send(x: np.ndarray, seconds: float) -> tuple[list[str], list[list[int]]]:
            ids, truth, i = [], [], 0
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                start = (i * 20) % (len(x) - 20)
                result = client.infer("fraud", x[start:start + 20])
                if result.request_id is not None:
                    ids.append(result.request_id)
                    truth.append([int(v) for v in labels[start:start + 20]])
                i += 1
            return ids, truth

        send(normal_x, _DEMO_WINDOW_S + 1.0)
        calm = client.monitoring("fraud")["versions"][0]["drift"] or {}
        ids, truth = send(drifted_x, _DEMO_WINDOW_S + 1.0)
        time.sleep(2 * _DEMO_INTERVAL_S)
        status = client.monitoring("fraud")["versions"][0]
        answer = client.feedback("fraud", ids, truth)
        performance = client.monitoring("fraud")["versions"][0]["performance"]
    report = status["drift"] or {}
    console.print(f"normal traffic: drifted features "
                  f"{', '.join(calm.get('drifted_features') or []) or 'none'}")
    table = Table(title=f"GET {url}/v2/models/fraud/monitoring after drifted traffic "
                  f"({report.get('rows', 0):,} rows in the window)")
    for col in ("feature", "test", "value", "threshold", "drift", "PSI", "JS"):
        table.add_column(col, justify="right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for name, f in (report.get("features") or {}).items():
        mark = "[bold red]yes[/]" if f["drifted"] else "no" if f["drifted"] is not None else "?"
        table.add_row(name, f["test"], fmt(f["value"]), fmt(f["threshold"]), mark,
                      f"{fmt(f['psi'])} {f['psi_level']}", fmt(f["js"]))
    console.print(table)
    alerts = sorted({a["labels"].get("feature", "") or a["labels"]["alertname"]
                     for a in status.get("alerts", [])})
    console.print(f"drifted: {', '.join(report.get('drifted_features') or []) or 'none'}; "
                  f"alerts firing in the server: {', '.join(alerts) or 'none'} "
                  "(log, and --alert-webhook URL)")
    console.print(f"feedback: {answer['matched']:,} labelled requests joined by request id; "
                  f"online ROC-AUC {fmt(performance.get('roc_auc'))}, accuracy "
                  f"{fmt(performance.get('accuracy'))} over {performance.get('labels', 0):,} rows")
    console.print("gauges: mlserve_feature_drift_{psi,js,ks_pvalue,wasserstein,detected}, "
                  "mlserve_online_*, mlserve_alerts_firing at /metrics; alert rules and a "
                  "Grafana dashboard in deploy/")


def _batch(console: Console, reg: Any, fresh: Any, version: int) -> None:
    """A batch job (``mlserve batch``) over the fresh transactions as a Parquet file: their keys,
    times and request-time columns in, point-in-time features joined from the offline store,
    scores out as a Parquet dataset in input order."""
    from mlserve.batch import run_batch
    from mlserve.trainer.evaluate import roc_auc

    root = _work_dir(reg) / "batch"
    root.mkdir(parents=True, exist_ok=True)
    src = root / "fresh-transactions.parquet"
    fresh.drop(columns=["is_fraud"]).to_parquet(src, index=False)
    out = root / f"scores-fraud-{version}"
    result = run_batch(f"fraud/{version}", src, out, registry=reg, chunk_rows=4096,
                       keep=["user_id", "merchant_id", "event_ts"], overwrite=True)
    import pandas as pd

    scores = pd.read_parquet(out)
    auc = roc_auc(fresh["is_fraud"].to_numpy(), scores["probability"].to_numpy())
    console.print(f"batch job (`mlserve batch fraud/{version} --input {src.name} --output DIR`): "
                  f"{result.rows:,} rows in {result.chunks} parts, "
                  f"{result.rows_per_second:,.0f} rows/s with point-in-time features, ROC-AUC "
                  f"{auc:.3f} -> {out}")


def _drift(console: Console, reg: Any, drifted: Any, version: int) -> None:
    """The offline drift report (HTML + JSON) of a drifted table against the model."""
    from mlserve.drift.offline import resolve_bundle, table_report
    from mlserve.drift.report import write_report

    bundle = resolve_bundle(f"fraud/{version}", reg)
    report = table_report(bundle, drifted)
    out = _work_dir(reg) / "reports" / f"drift-fraud-{version}"
    html_path, _ = write_report(report, out)
    d = report.drift
    console.print(f"offline drift report of {d.rows:,} drifted rows (`mlserve drift report "
                  f"--model fraud/{version} --data FILE`): drifted "
                  f"{', '.join(d.drifted_features) or 'none'} -> {html_path}")


def _tensors(rows: Any, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Request tensors of raw columns: strings for categoricals, float32 for the rest."""
    out: dict[str, Any] = {}
    for spec in specs:
        col = rows[spec["name"]]
        if spec["kind"] == "categorical" and "vocabulary" in spec:
            out[spec["name"]] = ["" if v is None else str(v) for v in col.tolist()]
        else:
            out[spec["name"]] = col.to_numpy(dtype=np.float32)
    return out


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
