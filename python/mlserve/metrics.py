"""Every Prometheus metric of mlserve, in one module (CONVENTIONS: ``mlserve_`` prefix, ``_total``
counters, ``_seconds`` histograms, labels ``model`` and ``version``).

Two kinds:

- Request metrics observed by the server per request (outcome counters, end-to-end latency,
  in-flight gauge, model load events). With several worker processes they use
  prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before import).
- Engine metrics read from the native core at scrape time (``EngineCollector``): requests,
  rows, batches, rejections, timeouts, failures, queue depth, the exact batch-size histogram and
  summed queue/normalize/compute time. Nothing is added to the hot path for them. With several
  workers, each publishes its engine counters once a second into multiprocess gauges
  (``publish_engine_stats``) instead; the batch-size histogram and timings are then omitted.

Thread-safety: prometheus_client metrics are thread-safe; the collector reads engine stats under
the core's own locks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

#: Latency buckets (seconds): 100 µs .. 10 s, dense where serving latencies live.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
#: Batch-size histogram buckets (rows).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter(
    "mlserve_requests_total", "Inference requests by outcome (ok or the error class).",
    ["model", "version", "outcome"],
)
REQUEST_LATENCY = Histogram(
    "mlserve_request_latency_seconds", "End-to-end latency of inference requests in the server.",
    ["model", "version"], buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "mlserve_requests_in_flight", "Inference requests being handled now.", ["model"],
    multiprocess_mode="livesum",
)
MODEL_LOADS = Counter(
    "mlserve_model_loads_total", "Model load/unload events.", ["model", "version", "event"],
)

EngineSource = Callable[[], Iterable[tuple[str, str, dict[str, Any]]]]

#: With several worker processes each one's engines are invisible to the process that answers
#: /metrics, so every worker publishes its engine counters into these multiprocess gauges
#: (summed over live workers; same names as the single-process counters, type gauge).
_ENGINE_KEYS = ("requests", "rows", "batches", "rejected", "timed_out", "failed", "cancelled")
ENGINE_GAUGES: dict[str, Gauge] = (
    {
        key: Gauge(f"mlserve_engine_{key}_total", f"Engine {key} (summed over workers).",
                   ["model", "version"], multiprocess_mode="livesum")
        for key in _ENGINE_KEYS
    }
    | {
        "queued": Gauge("mlserve_engine_queue_depth", "Requests queued now (all workers).",
                        ["model", "version"], multiprocess_mode="livesum"),
    }
    if MULTIPROCESS
    else {}
)


def publish_engine_stats(source: EngineSource) -> None:
    """Multiprocess mode: copies this worker's engine stats into ENGINE_GAUGES (no-op else)."""
    if not MULTIPROCESS:
        return
    for model, version, stats in source():
        for key, gauge in ENGINE_GAUGES.items():
            gauge.labels(model, version).set(float(stats.get(key, 0)))


class EngineCollector(Collector):
    """Exposes native-core engine stats; ``source()`` yields (model, version, engine.stats())."""

    def __init__(self, source: EngineSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        labels = ["model", "version"]
        counters = {
            "requests": ("mlserve_engine_requests", "Requests accepted by the batcher."),
            "rows": ("mlserve_engine_rows", "Rows accepted by the batcher."),
            "batches": ("mlserve_engine_batches", "Batches executed."),
            "rejected": ("mlserve_engine_rejected", "Requests refused (queue full, closing)."),
            "timed_out": ("mlserve_engine_timed_out", "Requests expired while queued."),
            "failed": ("mlserve_engine_failed", "Requests failed in execution."),
            "cancelled": ("mlserve_engine_cancelled", "Requests cancelled while queued."),
        }
        families = {k: CounterMetricFamily(n, d, labels=labels) for k, (n, d) in counters.items()}
        queued = GaugeMetricFamily("mlserve_engine_queue_depth", "Requests queued now.",
                                   labels=labels)
        seconds = {
            "queue_us_total": CounterMetricFamily(
                "mlserve_engine_queue_seconds", "Summed time requests waited for a batch.",
                labels=labels),
            "normalize_us_total": CounterMetricFamily(
                "mlserve_engine_normalize_seconds", "Summed time normalizing batches.",
                labels=labels),
            "compute_us_total": CounterMetricFamily(
                "mlserve_engine_compute_seconds", "Summed time executing batches.",
                labels=labels),
        }
        batch = HistogramMetricFamily("mlserve_engine_batch_size", "Rows per executed batch.",
                                      labels=labels)
        for model, version, stats in self._source():
            lv = [model, version]
            for key, fam in families.items():
                fam.add_metric(lv, float(stats.get(key, 0)))
            queued.add_metric(lv, float(stats.get("queued", 0)))
            for key, fam in seconds.items():
                fam.add_metric(lv, float(stats.get(key, 0.0)) / 1e6)
            sizes = {int(k): int(v) for k, v in stats.get("batch_sizes", {}).items()}
            buckets: list[tuple[str, float]] = []
            for bound in BATCH_BUCKETS:
                cumulative = sum(c for s, c in sizes.items() if s <= bound)
                buckets.append((str(float(bound)), float(cumulative)))
            buckets.append(("+Inf", float(sum(sizes.values()))))
            batch.add_metric(lv, buckets, sum_value=float(sum(s * c for s, c in sizes.items())))
        yield from families.values()
        yield queued
        yield from seconds.values()
        yield batch


def render(engines: EngineSource | None = None) -> tuple[bytes, str]:
    """The /metrics body and content type: request metrics (aggregated over worker processes in
    multiprocess mode) plus this process's engines."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in (REQUESTS, REQUEST_LATENCY, IN_FLIGHT, MODEL_LOADS):
            registry.register(metric)
        from prometheus_client import PROCESS_COLLECTOR

        registry.register(PROCESS_COLLECTOR)
    if engines is not None:
        if MULTIPROCESS:
            publish_engine_stats(engines)  # this worker's part is fresh; others publish each 1 s
        else:
            registry.register(EngineCollector(engines))
    return generate_latest(registry), CONTENT_TYPE_LATEST
