"""Every Prometheus metric of mlserve, in one module (CONVENTIONS: ``mlserve_`` prefix, ``_total``
counters, ``_seconds`` histograms, labels ``model`` and ``version``).

Three kinds:

- Request metrics observed by the server per request: ``mlserve_requests_total`` (by outcome),
  ``mlserve_request_latency_seconds`` (end to end in the server), ``mlserve_requests_in_flight``
  and ``mlserve_model_loads_total``; for entity-keyed requests ``mlserve_feature_fetch_seconds``
  (the online feature read) and ``mlserve_feature_keys_total`` (rows by view and status:
  present, missing, expired).
- Engine metrics read from the native core at scrape time (``EngineCollector``), nothing added
  to the Python hot path: counters ``mlserve_engine_{requests,rows,batches,rejected,timed_out,
  failed,cancelled}_total``, the gauge ``mlserve_engine_queue_depth`` and histograms
  ``mlserve_engine_batch_size`` (rows per batch), ``mlserve_engine_queue_seconds`` (enqueue ->
  batch start) and ``mlserve_engine_request_seconds`` (enqueue -> result published), observed
  per request that reached a batch, ``mlserve_engine_normalize_seconds`` and
  ``mlserve_engine_compute_seconds`` observed per batch. The core records the latency
  histograms itself in fixed buckets (``LATENCY_BUCKETS``, defined once in the core) with their
  exact sums.
- Process metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
  ``process_start_time_seconds``, ...; Linux) from prometheus_client's process collector.
- Monitoring gauges (``monitoring_families``), exported from what the server's monitoring task
  computed last (docs/monitoring.md; nothing is computed at scrape time): per model, version
  and feature ``mlserve_feature_drift_{psi,js,ks_statistic,ks_pvalue,wasserstein,chi2_pvalue,
  detected}`` and ``mlserve_feature_{missing_rate,out_of_range_rate,unseen_category_rate}``;
  per model and version ``mlserve_prediction_drift_{psi,js,ks_pvalue,wasserstein,chi2_pvalue,
  detected}``, ``mlserve_dataset_drift_{share,detected}``, ``mlserve_monitoring_window_rows``,
  the online metrics ``mlserve_online_{accuracy,roc_auc,log_loss,rmse,mae,labels}`` and
  ``mlserve_feedback_labels_total`` (by outcome); ``mlserve_alerts_firing`` per firing alert;
  the counters ``mlserve_alert_notifications_total`` (webhook POSTs by outcome),
  ``mlserve_monitoring_ticks_total`` and ``mlserve_monitoring_cpu_seconds_total`` (what the
  monitoring thread costs). With
  several workers monitoring is off (each process sees a share of the traffic): the families
  are declared without samples.

With several worker processes (``mlserve serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers import this module) the answer is the same set of names and types:

- model-load events and the feature-fetch metrics go through prometheus_client's multiprocess
  files (summed over workers);
- every worker writes a snapshot of its engines' stats, its request metrics
  (:class:`RequestStats`) and its process metrics into the same directory once a second
  (``write_worker_snapshot``, see :mod:`mlserve.worker_snapshots`), and the worker answering
  /metrics writes its own fresh one, then sums every worker's engine stats per (model,
  version): counters, queue depth, batch sizes and histogram buckets, and the request counters
  and latency buckets (the in-flight gauge over live workers). Exited workers keep contributing
  their counters and histograms, so sums never go backwards;
- process metrics are reported per live worker with a ``pid`` label (a sum of start times or
  file-descriptor limits would mean nothing); the supervisor process is not included.

Thread-safety: prometheus_client metrics are thread-safe; :data:`REQUEST_STATS` is bumped on the
event loop only; the collector reads engine stats under
the core's own locks; snapshot files are written and read on the event loop.
"""

from __future__ import annotations

import itertools
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mlserve import _core
from mlserve.worker_snapshots import WorkerSnapshots, add_stats

#: Latency buckets (seconds): 100 µs .. 10 s, dense where serving latencies live. Defined once in
#: the core (csrc/common/latency_histogram.h), which fills the engine histograms with them.
LATENCY_BUCKETS: tuple[float, ...] = tuple(_core.LATENCY_BUCKETS_S)
#: Batch-size histogram buckets (rows).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Seconds between two snapshots of a worker's engine stats (multiprocess mode).
SNAPSHOT_INTERVAL_S = 1.0

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

class RequestStats:
    """The request metrics of this process: ``mlserve_requests_total`` (model, version, outcome),
    ``mlserve_request_latency_seconds`` (model, version; LATENCY_BUCKETS) and
    ``mlserve_requests_in_flight`` (model), as plain ints and lists bumped on the event loop and
    turned into Prometheus families only at scrape time (:func:`request_families`).

    Why not prometheus_client's Counter/Histogram/Gauge: each call takes a lock (and, with
    several workers, writes an mmapped file); the four calls per request cost about 2 µs of the
    event loop's time on the 2-core bench machine, this about 0.5 µs. With ``--workers N`` each
    worker's counts travel in its snapshot file (:mod:`mlserve.worker_snapshots`) and are summed.

    Thread-safety: meant for the event loop's thread; a scrape from another thread reads a
    consistent-enough copy (dict copies are atomic under the GIL).
    """

    __slots__ = ("in_flight", "latency", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, str], int] = {}
        #: (model, version) -> per-bucket counts (LATENCY_BUCKETS then +Inf, not cumulative),
        #: then the sum of seconds as the last element.
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.in_flight: dict[str, int] = {}

    def record(self, model: str, version: str, outcome: str, seconds: float) -> None:
        """Counts one answered request."""
        key = (model, version, outcome)
        outcomes = self.outcomes
        outcomes[key] = outcomes.get(key, 0) + 1
        hist = self.latency.get((model, version))
        if hist is None:
            hist = self.latency[(model, version)] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        hist[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le` buckets: first bound >= seconds
        hist[-1] += seconds

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy (what a worker's snapshot file holds)."""
        return {"outcomes": [[*k, v] for k, v in list(self.outcomes.items())],
                "latency": [[*k, list(v)] for k, v in list(self.latency.items())],
                "in_flight": dict(self.in_flight)}

    def clear(self) -> None:
        """Forgets every count (tests)."""
        self.outcomes.clear()
        self.latency.clear()
        self.in_flight.clear()


#: The request metrics of this process (the server's ASGI app records into it).
REQUEST_STATS = RequestStats()


def request_families(snapshots: Iterable[dict[str, Any]]) -> list[Any]:
    """The request metric families of :meth:`RequestStats.snapshot` dicts, summed (counts add;
    in-flight gauges add too: pass only live workers' in-flight values)."""
    outcomes: dict[tuple[str, ...], float] = {}
    latency: dict[tuple[str, ...], list[float]] = {}
    in_flight: dict[str, float] = {}
    for snap in snapshots:
        for *key, count in snap.get("outcomes", []):
            outcomes[tuple(key)] = outcomes.get(tuple(key), 0) + count
        for *key, counts in snap.get("latency", []):
            have = latency.get(tuple(key))
            latency[tuple(key)] = (list(counts) if have is None
                                   else [a + b for a, b in zip(have, counts, strict=True)])
        for model, n in snap.get("in_flight", {}).items():
            in_flight[model] = in_flight.get(model, 0) + n
    total = CounterMetricFamily("mlserve_requests",
                                "Inference requests by outcome (ok or the error class).",
                                labels=["model", "version", "outcome"])
    for key, count in sorted(outcomes.items()):
        total.add_metric(list(key), float(count))
    hist = HistogramMetricFamily("mlserve_request_latency_seconds",
                                 "End-to-end latency of inference requests in the server.",
                                 labels=_LABELS)
    for key, counts in sorted(latency.items()):
        cumulative = list(itertools.accumulate(int(c) for c in counts[:-1]))
        hist.add_metric(list(key), _buckets(LATENCY_BUCKETS, cumulative), sum_value=counts[-1])
    gauge = GaugeMetricFamily("mlserve_requests_in_flight", "Inference requests being handled now.",
                              labels=["model"])
    for model, n in sorted(in_flight.items()):
        gauge.add_metric([model], float(n))
    return [total, hist, gauge]


class RequestCollector(Collector):
    """Exposes this process' :data:`REQUEST_STATS`."""

    def collect(self) -> Iterator[Any]:
        yield from request_families([REQUEST_STATS.snapshot()])


#: Buckets of the online feature fetch (seconds): 10 µs .. 100 ms; an LMDB read of a few keys
#: takes tens of microseconds, below the first request-latency bucket.
FEATURE_FETCH_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                         2.5e-2, 1e-1)
FEATURE_FETCH = Histogram(
    "mlserve_feature_fetch_seconds",
    "Time fetching the online features of one entity-keyed request (key encoding, LMDB reads, "
    "decoding).",
    ["model", "version"], buckets=FEATURE_FETCH_BUCKETS,
)
FEATURE_KEYS = Counter(
    "mlserve_feature_keys_total",
    "Entity rows looked up per feature view, by status: present, missing (no value online) or "
    "expired (older than the view's TTL).",
    ["model", "version", "view", "status"],
)
#: Whether a feature metric child exists in this process: until then /metrics leaves the
#: feature families out, as multiprocess mode does (its files appear with the first child).
_feature_metrics_used = False


def feature_metric_children(model: str, version: str, views: Iterable[str],
                            statuses: Iterable[str]) -> tuple[Any, list[list[Any]]]:
    """The fetch-latency child of a model version and its key counters per (view, status)."""
    global _feature_metrics_used
    _feature_metrics_used = True
    states = list(statuses)
    return (FEATURE_FETCH.labels(model, version),
            [[FEATURE_KEYS.labels(model, version, view, s) for s in states] for view in views])


MODEL_LOADS = Counter(
    "mlserve_model_loads_total", "Model load/unload events.", ["model", "version", "event"],
)

EngineSource = Callable[[], Iterable[tuple[str, str, dict[str, Any]]]]
#: Per monitored version (model, version, latest DriftReport or None, online metrics, firing
#: alerts); and the server-wide counts: webhook deliveries ("delivered", "failed"), "ticks" and
#: "tick_cpu_s" (CPU seconds of the monitoring thread).
MonitoredVersion = tuple[str, str, Any, dict[str, Any], list[Any]]
MonitoringSource = Callable[[], tuple[Iterable[MonitoredVersion], dict[str, float]]]

_LABELS = ["model", "version"]
#: Engine.stats() key -> (counter name, help).
_ENGINE_COUNTERS = {
    "requests": ("mlserve_engine_requests", "Requests accepted by the batcher."),
    "rows": ("mlserve_engine_rows", "Rows accepted by the batcher."),
    "batches": ("mlserve_engine_batches", "Batches executed."),
    "rejected": ("mlserve_engine_rejected", "Requests refused (queue full, closing)."),
    "timed_out": ("mlserve_engine_timed_out", "Requests expired while queued."),
    "failed": ("mlserve_engine_failed", "Requests failed in execution."),
    "cancelled": ("mlserve_engine_cancelled", "Requests cancelled while queued."),
}
#: Engine.stats() key -> (histogram name, help); values {"buckets": cumulative, "sum": seconds}.
_ENGINE_LATENCIES = {
    "queue_seconds": ("mlserve_engine_queue_seconds",
                      "Time requests waited in the queue until their batch started."),
    "request_seconds": ("mlserve_engine_request_seconds",
                        "Time from accepting a request to publishing its result in the engine."),
    "normalize_seconds": ("mlserve_engine_normalize_seconds",
                          "Time gathering and normalizing a batch's rows."),
    "compute_seconds": ("mlserve_engine_compute_seconds", "Time executing a batch."),
}


def engine_families(engines: Iterable[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """Metric families of (model, version, Engine.stats()) triples."""
    counters = {k: CounterMetricFamily(n, d, labels=_LABELS) for k, (n, d) in
                _ENGINE_COUNTERS.items()}
    queued = GaugeMetricFamily("mlserve_engine_queue_depth", "Requests queued now.",
                               labels=_LABELS)
    batch = HistogramMetricFamily("mlserve_engine_batch_size", "Rows per executed batch.",
                                  labels=_LABELS)
    latencies = {k: HistogramMetricFamily(n, d, labels=_LABELS) for k, (n, d) in
                 _ENGINE_LATENCIES.items()}
    # GPU engines only (stats["gpu"]): which normalize kernel the plan got, CUDA graph use.
    gpu_info = InfoMetricFamily("mlserve_engine_gpu",
                                "Engine placed on a GPU: the normalize kernel built for its plan.",
                                labels=_LABELS)
    graph_launches = CounterMetricFamily(
        "mlserve_engine_cuda_graph_launches",
        "GPU batches whose copy-in and normalization ran as one CUDA graph launch.",
        labels=_LABELS)
    graphs_disabled = GaugeMetricFamily(
        "mlserve_engine_cuda_graphs_disabled",
        "GPU instances whose CUDA graph capture failed (plain launches from then on).",
        labels=_LABELS)
    for model, version, stats in engines:
        lv = [model, version]
        for key, fam in counters.items():
            fam.add_metric(lv, float(stats.get(key, 0)))
        queued.add_metric(lv, float(stats.get("queued", 0)))
        sizes = {int(k): int(v) for k, v in stats.get("batch_sizes", {}).items()}
        cumulative = [sum(c for s, c in sizes.items() if s <= bound) for bound in BATCH_BUCKETS]
        batch.add_metric(lv, _buckets(BATCH_BUCKETS, [*cumulative, sum(sizes.values())]),
                         sum_value=float(sum(s * c for s, c in sizes.items())))
        for key, latency in latencies.items():
            hist = stats[key]
            latency.add_metric(lv, _buckets(LATENCY_BUCKETS, hist["buckets"]),
                               sum_value=float(hist["sum"]))
        gpu = stats.get("gpu")
        if gpu:
            gpu_info.add_metric(lv, {"normalize_kernel": str(gpu["normalize_kernel"])})
            graph_launches.add_metric(lv, float(gpu["graph_launches"]))
            graphs_disabled.add_metric(lv, float(gpu["graphs_disabled"]))
    return [*counters.values(), queued, batch, *latencies.values(), gpu_info, graph_launches,
            graphs_disabled]


def _buckets(bounds: Iterable[float], cumulative: list[int]) -> list[tuple[str, float]]:
    """(le, count) pairs of a histogram: one per bound, then +Inf (the last count)."""
    # The `le` spelling prometheus_client's own histograms use.
    les = [floatToGoString(float(b)) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    if len(les) != len(cumulative):
        raise ValueError(f"histogram has {len(cumulative)} buckets for {len(les)} bounds")
    return [(le, float(c)) for le, c in zip(les, cumulative, strict=True)]


class EngineCollector(Collector):
    """Exposes native-core engine stats; ``source()`` yields (model, version, engine.stats())."""

    def __init__(self, source: EngineSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        yield from engine_families(self._source())


# ---- monitoring ---------------------------------------------------------------------------------

#: FeatureDrift attribute -> (feature gauge, help); the prediction's are "prediction_drift_...".
_DRIFT_GAUGES = {
    "psi": ("drift_psi", "Population stability index against the reference (window)."),
    "js": ("drift_js", "Jensen-Shannon distance to the reference (natural log, window)."),
    "ks_statistic": ("drift_ks_statistic", "Two-sample Kolmogorov-Smirnov statistic."),
    "ks_pvalue": ("drift_ks_pvalue", "Two-sample Kolmogorov-Smirnov p-value."),
    "wasserstein": ("drift_wasserstein", "Wasserstein distance / reference std."),
    "chi2_pvalue": ("drift_chi2_pvalue", "Chi-squared test p-value (categorical)."),
    "drifted": ("drift_detected", "1 when the deciding test found drift, else 0."),
}
_QUALITY_GAUGES = {
    "missing_rate": ("mlserve_feature_missing_rate", "Share of missing values (window)."),
    "out_of_range_rate": ("mlserve_feature_out_of_range_rate",
                          "Share of values outside the reference's [min, max] (window sample)."),
    "unseen_rate": ("mlserve_feature_unseen_category_rate",
                    "Share of values in the out-of-vocabulary slot (window)."),
}
_ONLINE_GAUGES = {
    "accuracy": "Accuracy on labelled feedback (window).",
    "roc_auc": "ROC-AUC on labelled feedback (window).",
    "log_loss": "Log-loss on labelled feedback (window).",
    "rmse": "RMSE on labelled feedback (window).",
    "mae": "MAE on labelled feedback (window).",
    "labels": "Labelled predictions in the online-metrics window.",
}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


def monitoring_families(versions: Iterable[MonitoredVersion],
                        counts: dict[str, float]) -> list[Any]:
    """Metric families of the monitoring results (see the module docstring); a statistic not
    computed (no data, not applicable) is left out rather than exported as NaN. Every family is
    declared even without samples (monitoring off, nothing loaded yet), so /metrics has the same
    names in every configuration."""
    lf = [*_LABELS, "feature"]
    feature = {k: GaugeMetricFamily(f"mlserve_feature_{n}", d, labels=lf)
               for k, (n, d) in _DRIFT_GAUGES.items()}
    quality = {k: GaugeMetricFamily(n, d, labels=lf) for k, (n, d) in _QUALITY_GAUGES.items()}
    prediction = {k: GaugeMetricFamily(f"mlserve_prediction_{n}", d, labels=_LABELS)
                  for k, (n, d) in _DRIFT_GAUGES.items() if k != "ks_statistic"}
    share = GaugeMetricFamily("mlserve_dataset_drift_share",
                              "Share of judged features that drifted (window).", labels=_LABELS)
    dataset = GaugeMetricFamily("mlserve_dataset_drift_detected",
                                "1 when the drifted share reached the threshold.",
                                labels=_LABELS)
    rows = GaugeMetricFamily("mlserve_monitoring_window_rows",
                             "Rows in the current monitoring window.", labels=_LABELS)
    online = {k: GaugeMetricFamily(f"mlserve_online_{k}", d, labels=_LABELS)
              for k, d in _ONLINE_GAUGES.items()}
    feedback = CounterMetricFamily("mlserve_feedback_labels", "Feedback labels by outcome "
                                   "(matched to a logged prediction or not).",
                                   labels=[*_LABELS, "outcome"])
    firing = GaugeMetricFamily("mlserve_alerts_firing", "1 per alert firing in the server.",
                               labels=[*_LABELS, "alertname", "feature", "check"])
    delivered = CounterMetricFamily("mlserve_alert_notifications",
                                    "Alert webhook deliveries by outcome.", labels=["outcome"])
    for outcome in ("delivered", "failed"):
        if outcome in counts:
            delivered.add_metric([outcome], float(counts[outcome]))
    ticks = CounterMetricFamily("mlserve_monitoring_ticks", "Monitoring intervals evaluated.")
    tick_cpu = CounterMetricFamily("mlserve_monitoring_cpu_seconds",
                                   "CPU time the monitoring thread spent reading and judging.")
    if "ticks" in counts:
        ticks.add_metric([], float(counts["ticks"]))
        tick_cpu.add_metric([], float(counts["tick_cpu_s"]))
    for model, version, report, performance, alerts in versions:
        lv = [model, version]
        rows.add_metric(lv, float(performance.get("window_rows", 0)))
        for key, fam in online.items():
            if (value := _number(performance.get(key))) is not None:
                fam.add_metric(lv, value)
        feedback.add_metric([*lv, "matched"], float(performance.get("matched_total", 0)))
        feedback.add_metric([*lv, "unmatched"], float(performance.get("unmatched_total", 0)))
        for alert in alerts:
            firing.add_metric([*lv, alert.labels["alertname"], alert.feature, alert.check], 1.0)
        if report is None:
            continue
        for name, f in report.features.items():
            for key, fam in feature.items():
                if (value := _number(getattr(f, key))) is not None:
                    fam.add_metric([*lv, name], value)
            for key, fam in quality.items():
                if (value := _number(getattr(f, key))) is not None:
                    fam.add_metric([*lv, name], value)
        if report.prediction is not None:
            for key, fam in prediction.items():
                if (value := _number(getattr(report.prediction, key))) is not None:
                    fam.add_metric(lv, value)
        if report.drift_share is not None:
            share.add_metric(lv, float(report.drift_share))
            dataset.add_metric(lv, float(bool(report.dataset_drift)))
    return [*feature.values(), *quality.values(), *prediction.values(), share, dataset, rows,
            *online.values(), feedback, firing, delivered, ticks, tick_cpu]


class MonitoringCollector(Collector):
    """Exposes the monitoring results ``source()`` returns (see monitoring_families); no
    source: the families without samples."""

    def __init__(self, source: MonitoringSource | None) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        versions, notifications = self._source() if self._source is not None else ([], {})
        yield from monitoring_families(versions, notifications)


# ---- multiprocess mode ------------------------------------------------------------------------

_snapshots: WorkerSnapshots | None = None


class PredictionLogCollector(Collector):
    """The counters of this process' prediction log writer (:mod:`mlserve.predlog`), when the
    server writes one: ``mlserve_prediction_log_{requests,rows,labels,parts,dropped_rows,
    dropped_labels,failed_writes}_total`` (failed_writes counts attempts: a part failing three
    times counts three). With ``--workers N`` they travel in the worker snapshots with the
    process metrics, labelled by ``pid``."""

    _HELP: ClassVar[dict[str, str]] = {
        "requests": "requests written to the prediction log",
        "rows": "rows written to the prediction log",
        "labels": "feedback label rows written to the prediction log",
        "parts": "Parquet parts written to the prediction log",
        "dropped_rows": "rows left out of the prediction log (its buffer was full, or parts "
                        "that could not be written were given up)",
        "dropped_labels": "feedback label rows left out of the prediction log (parts that "
                          "could not be written were given up)",
        "failed_writes": "prediction log parts that could not be written (kept and tried "
                         "again, within the buffer bound)"}

    def __init__(self) -> None:
        self.writer: Any = None

    def collect(self) -> Iterator[Any]:
        if self.writer is None:
            return
        counters = self.writer.counters
        for name, doc in self._HELP.items():
            family = CounterMetricFamily(f"mlserve_prediction_log_{name}", doc)
            family.add_metric([], float(getattr(counters, name)))
            yield family


#: Set to the server's writer (mlserve.server.app) when it logs predictions.
PREDICTION_LOG = PredictionLogCollector()


def _worker_snapshots() -> WorkerSnapshots:
    global _snapshots
    if _snapshots is None or _snapshots.pid != os.getpid():
        _snapshots = WorkerSnapshots(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return _snapshots


def _process_values() -> dict[str, dict[str, Any]]:
    """This process' metrics: family name -> {"type", "help", "value"}."""
    return {
        fam.name: {"type": fam.type, "help": fam.documentation, "value": fam.samples[0].value}
        for collector in (PROCESS_COLLECTOR, PREDICTION_LOG)
        for fam in collector.collect() if fam.samples
    }


def write_worker_snapshot(source: EngineSource) -> None:
    """Multiprocess mode: replaces this worker's snapshot (engine stats, process metrics)."""
    if MULTIPROCESS:
        _worker_snapshots().write(list(source()), _process_values(), REQUEST_STATS.snapshot())


def retire_worker_snapshot() -> None:
    """Multiprocess mode, at a worker's clean exit: its counts stay in the sums, its queue depth
    and process metrics leave them."""
    if MULTIPROCESS:
        _worker_snapshots().retire()


class WorkerSnapshotCollector(Collector):
    """Engine and process metrics of every worker, from their snapshots (multiprocess mode)."""

    def __init__(self, snapshots: WorkerSnapshots) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Any]:
        from prometheus_client import multiprocess

        found, retired = self._snapshots.read()
        for pid in retired:  # drop the exited worker's in-flight gauge files too
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        summed: dict[tuple[str, str], dict[str, Any]] = {}
        for snapshot in found:
            for model, version, stats in snapshot.engines:
                key = (model, version)
                summed[key] = add_stats(summed[key], stats) if key in summed else stats
        yield from engine_families((m, v, s) for (m, v), s in summed.items())
        yield from request_families(snapshot.requests for snapshot in found)
        process: dict[str, Any] = {}
        for snapshot in found:
            for name, value in snapshot.process.items():
                if name not in process:
                    kind = CounterMetricFamily if value["type"] == "counter" else GaugeMetricFamily
                    process[name] = kind(name, value["help"], labels=["pid"])
                process[name].add_metric([str(snapshot.pid)], float(value["value"]))
        yield from process.values()


def render(engines: EngineSource | None = None,
           monitoring: MonitoringSource | None = None) -> tuple[bytes, str]:
    """The /metrics body and content type: request metrics, ``engines``' stats and process
    metrics; in multiprocess mode those of every worker (``engines`` are this worker's); and the
    ``monitoring`` results (this process' own in either mode)."""
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(monitoring))
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if engines is not None:  # this worker's part fresh; the others' are <= 1 s old
            write_worker_snapshot(engines)
        registry.register(WorkerSnapshotCollector(_worker_snapshots()))
    else:
        registry.register(RequestCollector())
        registry.register(MODEL_LOADS)
        if _feature_metrics_used:
            registry.register(FEATURE_FETCH)
            registry.register(FEATURE_KEYS)
        registry.register(PROCESS_COLLECTOR)
        registry.register(PREDICTION_LOG)
        if engines is not None:
            registry.register(EngineCollector(engines))
    return generate_latest(registry), CONTENT_TYPE_LATEST
