"""Prometheus exposition of request metrics and native-core engine stats: the core's latency
histograms, their text form, and the per-worker snapshot files of multiprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlserve import BatcherConfig, Engine
from mlserve.metrics import (
    LATENCY_BUCKETS,
    REQUEST_STATS,
    RequestStats,
    engine_families,
    render,
    request_families,
)
from mlserve.worker_snapshots import WorkerSnapshots, add_stats, is_alive, process_start
from prometheus_client.parser import text_string_to_metric_families

SPEC = {"features": [{"name": f"f{i}", "kind": "numeric", "ops": []} for i in range(3)]}
LATENCY_KEYS = ("queue_seconds", "request_seconds", "normalize_seconds", "compute_seconds")


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def run_batches(engine: Engine, sizes_per_batch: list[list[int]]) -> None:
    """One batch per inner list, of requests with those row counts (hold makes it exact)."""
    for sizes in sizes_per_batch:
        engine.hold_batching(len(sizes))
        futures = [engine.submit(np.ones((k, 3), np.float32)) for k in sizes]
        for f in futures:
            f.result(timeout=30)


def test_engine_stats_and_request_metrics_are_exported() -> None:
    with Engine(
        SPEC,
        backend="rowsum",
        name="m",
        version="3",
        config=BatcherConfig(max_batch_size=8, max_queue_delay_us=0),
    ) as engine:
        run_batches(engine, [[1, 2, 3]])
    # Closed: the workers are joined, so the last batch's counters are in (they are updated just
    # after results are published); a closed engine keeps its final stats.
    for _ in range(3):
        REQUEST_STATS.record("m", "3", "ok", 0.002)
    body, content_type = render(lambda: [("m", "3", engine.stats())])
    assert content_type.startswith("text/plain")
    got = samples(body)
    lv = frozenset({("model", "m"), ("version", "3")})
    assert got[("mlserve_engine_requests_total", lv)] == 3
    assert got[("mlserve_engine_rows_total", lv)] == 6
    assert got[("mlserve_engine_batches_total", lv)] == 1
    assert got[("mlserve_engine_batch_size_bucket", lv | {("le", "4.0")})] == 0
    assert got[("mlserve_engine_batch_size_bucket", lv | {("le", "8.0")})] == 1
    assert got[("mlserve_engine_batch_size_sum", lv)] == 6
    assert got[("mlserve_requests_total", lv | {("outcome", "ok")})] >= 3
    assert got[("mlserve_request_latency_seconds_count", lv)] >= 1
    assert any(name == "process_cpu_seconds_total" for name, _ in got)


def test_engine_latency_histograms_count_requests_and_batches() -> None:
    batches = [[1, 2, 3], [4], [2, 2]]
    with Engine(SPEC, backend="rowsum", name="m", version="1",
                config=BatcherConfig(max_batch_size=8, max_queue_delay_us=0)) as engine:
        run_batches(engine, batches)
    stats = engine.stats()  # closed: final
    requests = sum(len(b) for b in batches)
    assert stats["batches"] == len(batches) and stats["completed"] == requests
    for key in LATENCY_KEYS:
        hist = stats[key]
        assert len(hist["buckets"]) == len(LATENCY_BUCKETS) + 1
        assert hist["buckets"] == sorted(hist["buckets"])  # cumulative
        assert hist["sum"] >= 0.0
    assert stats["queue_seconds"]["buckets"][-1] == requests
    assert stats["request_seconds"]["buckets"][-1] == requests
    assert stats["normalize_seconds"]["buckets"][-1] == len(batches)
    assert stats["compute_seconds"]["buckets"][-1] == len(batches)
    # The exact sums are the old totals, in seconds; a request's latency includes its queue wait.
    assert stats["queue_seconds"]["sum"] == pytest.approx(stats["queue_us_total"] / 1e6)
    assert stats["compute_seconds"]["sum"] == pytest.approx(stats["compute_us_total"] / 1e6)
    assert stats["request_seconds"]["sum"] >= stats["queue_seconds"]["sum"]

    families = {f.name: f for f in text_string_to_metric_families(
        render(lambda: [("m", "1", stats)])[0].decode())}
    for key, count in (("queue", requests), ("request", requests), ("normalize", len(batches)),
                       ("compute", len(batches))):
        family = families[f"mlserve_engine_{key}_seconds"]
        assert family.type == "histogram"
        by_name: dict[str, list[Any]] = {}
        for s in family.samples:
            by_name.setdefault(s.name, []).append(s)
        buckets = by_name[f"mlserve_engine_{key}_seconds_bucket"]
        assert [s.labels["le"] for s in buckets] == [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        assert buckets[-1].value == by_name[f"mlserve_engine_{key}_seconds_count"][0].value == count
        assert by_name[f"mlserve_engine_{key}_seconds_sum"][0].value == pytest.approx(
            stats[f"{key}_seconds"]["sum"])
    for name in ("mlserve_engine_requests", "mlserve_engine_batches"):
        assert families[name].type == "counter"
    assert families["mlserve_engine_queue_depth"].type == "gauge"
    assert families["mlserve_engine_batch_size"].type == "histogram"


def test_closed_engine_keeps_its_final_stats() -> None:
    engine = Engine(SPEC, backend="rowsum", config=BatcherConfig(max_queue_delay_us=0))
    run_batches(engine, [[1], [2]])
    engine.close()
    after = engine.stats()
    assert after["requests"] == after["completed"] == 2 and after["batches"] == 2
    assert after["queue_seconds"]["buckets"][-1] == 2
    assert engine.stats() == after


# ---- multiprocess snapshots -------------------------------------------------------------------


def stats_of(requests: int, queued: int = 0) -> dict[str, Any]:
    """Engine.stats() of an engine that ran `requests` 2-row batches, as a snapshot holds it."""
    n = len(LATENCY_BUCKETS) + 1
    hist = {"buckets": [requests] * n, "sum": 0.001 * requests}
    return {"requests": requests, "queued": queued, "batch_sizes": {"2": requests},
            "backend": "rowsum", **{key: hist for key in LATENCY_KEYS}}


def test_add_stats_sums_counters_batch_sizes_and_buckets() -> None:
    a = {"requests": 2, "batch_sizes": {"1": 2}, "queue_seconds": {"buckets": [1, 2], "sum": 0.5},
         "backend": "x"}
    b = {"requests": 3, "batch_sizes": {"1": 1, "4": 2}, "queue_seconds": {"buckets": [0, 3],
         "sum": 0.25}, "backend": "x"}
    assert add_stats(a, b) == {"requests": 5, "batch_sizes": {"1": 3, "4": 2},
                               "queue_seconds": {"buckets": [1, 5], "sum": 0.75}, "backend": "x"}
    with pytest.raises(ValueError, match="lengths"):
        add_stats([1, 2], [1])


def test_gpu_entry_is_exported_only_for_gpu_engines() -> None:
    """A CPU engine has no "gpu" stats and no GPU samples; a GPU engine's entry (as two workers'
    snapshots sum it) becomes the kernel info, the graph launches and the disabled instances."""
    with Engine(SPEC, backend="rowsum", name="m", version="1",
                config=BatcherConfig(max_batch_size=8, max_queue_delay_us=0)) as engine:
        run_batches(engine, [[1, 2]])
    cpu = engine.stats()
    assert "gpu" not in cpu
    got = samples(render(lambda: [("m", "1", cpu)])[0])
    gpu_names = ("mlserve_engine_gpu", "mlserve_engine_cuda")
    assert not any(name.startswith(gpu_names) for name, _ in got)

    def worker(launches: int, disabled: int) -> dict[str, Any]:
        gpu = {"instances": 2, "normalize_kernel": "jit", "batches": launches + 1,
               "graph_launches": launches, "graphs": 3, "graphs_disabled": disabled}
        return {**cpu, "gpu": gpu}

    both = add_stats(worker(5, 0), worker(7, 1))
    assert both["gpu"]["instances"] == 4 and both["gpu"]["normalize_kernel"] == "jit"
    got = samples(render(lambda: [("m", "1", both)])[0])
    lv = frozenset({("model", "m"), ("version", "1")})
    assert got[("mlserve_engine_gpu_info", lv | {("normalize_kernel", "jit")})] == 1
    assert got[("mlserve_engine_cuda_graph_launches_total", lv)] == 12
    assert got[("mlserve_engine_cuda_graphs_disabled", lv)] == 1


def test_worker_snapshots_keep_counts_of_exited_workers(tmp_path: Path) -> None:
    """A real child process writes its snapshot and exits: the first reader retires it once;
    its counters stay, its queue depth and process metrics go."""
    child = (
        "import sys, json\n"
        "from mlserve.worker_snapshots import WorkerSnapshots\n"
        "engines, process = json.loads(sys.argv[2])\n"
        "WorkerSnapshots(sys.argv[1]).write(engines, process)\n"
    )
    process = {"process_cpu_seconds": {"type": "counter", "help": "cpu", "value": 1.5}}
    arg = json.dumps([[["m", "1", stats_of(5, queued=4)]], process])
    subprocess.run([sys.executable, "-c", child, str(tmp_path), arg], check=True)
    (path,) = tmp_path.glob("mlserve-worker-*.json")
    child_pid = json.loads(path.read_text())["pid"]
    assert not is_alive(child_pid, json.loads(path.read_text())["start"])

    mine = WorkerSnapshots(tmp_path)
    mine.write([("m", "1", stats_of(3, queued=1))], process)
    assert is_alive(os.getpid(), process_start(os.getpid()))
    other_reader = WorkerSnapshots(tmp_path)
    found, retired = mine.read()
    assert retired == [child_pid]
    assert other_reader.read()[1] == []  # already retired: nobody renames it twice
    by_pid = {s.pid: s for s in found}
    assert set(by_pid) == {child_pid, os.getpid()}
    gone, live = by_pid[child_pid], by_pid[os.getpid()]
    assert not gone.live and gone.process == {} and gone.engines[0][2]["queued"] == 0
    assert gone.engines[0][2]["requests"] == 5
    assert live.live and live.process == process and live.engines[0][2]["queued"] == 1
    assert len(list(tmp_path.glob("mlserve-exited-*.json"))) == 1

    # Summed as the /metrics answer sums them: the exited worker's requests still count.
    (summed,) = [add_stats(gone.engines[0][2], live.engines[0][2])]
    got = {f.name: f for f in engine_families([("m", "1", summed)])}
    assert got["mlserve_engine_requests"].samples[0].value == 8
    assert got["mlserve_engine_queue_depth"].samples[0].value == 1

    mine.retire()  # a clean exit: retired, still counted
    found, _ = WorkerSnapshots(tmp_path).read()
    assert sorted(s.engines[0][2]["requests"] for s in found) == [3, 5]
    assert not any(s.live for s in found)


def test_request_stats_match_prometheus_client_histograms_and_counters() -> None:
    """RequestStats (plain ints on the hot path) exports what prometheus_client's own Counter
    and Histogram would for the same observations, bucket edges included."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    rng = np.random.default_rng(7)
    # Exactly on bucket bounds too: `le` means <=.
    values = [*rng.lognormal(-6, 2, 500).tolist(), *LATENCY_BUCKETS[:5], 0.0, 1e9]
    outcomes = rng.choice(["ok", "InvalidInput", "QueueFull"], len(values)).tolist()
    stats = RequestStats()
    registry = CollectorRegistry()
    ref_count = Counter("mlserve_requests", "c", ["model", "version", "outcome"],
                        registry=registry)
    ref_hist = Histogram("mlserve_request_latency_seconds", "h", ["model", "version"],
                         buckets=LATENCY_BUCKETS, registry=registry)
    for seconds, outcome in zip(values, outcomes, strict=True):
        stats.record("m", "1", outcome, seconds)
        ref_count.labels("m", "1", outcome).inc()
        ref_hist.labels("m", "1").observe(seconds)
    ours = CollectorRegistry()

    class _Fixed:
        def collect(self) -> Any:
            return request_families([stats.snapshot()])

    ours.register(_Fixed())  # type: ignore[arg-type]
    got = samples(generate_latest(ours))
    want = samples(generate_latest(registry))
    for key, value in want.items():
        if key[0].endswith("_created"):
            continue
        assert got[key] == pytest.approx(value, rel=1e-12), key
    in_flight = {k: v for k, v in got.items() if k[0] == "mlserve_requests_in_flight"}
    assert in_flight == {}


def test_request_families_sum_workers_and_in_flight() -> None:
    a, b = RequestStats(), RequestStats()
    a.record("m", "1", "ok", 0.001)
    b.record("m", "1", "ok", 0.003)
    b.record("m", "2", "QueueFull", 0.0001)
    a.in_flight["m"] = 2
    b.in_flight["m"] = 3
    registry_body = b"".join(
        generate_text(fam) for fam in request_families([a.snapshot(), b.snapshot()]))
    got = samples(registry_body)
    v1 = frozenset({("model", "m"), ("version", "1")})
    assert got[("mlserve_requests_total", v1 | {("outcome", "ok")})] == 2
    assert got[("mlserve_request_latency_seconds_count", v1)] == 2
    assert got[("mlserve_request_latency_seconds_sum", v1)] == pytest.approx(0.004)
    v2 = frozenset({("model", "m"), ("version", "2")})
    assert got[("mlserve_requests_total", v2 | {("outcome", "QueueFull")})] == 1
    assert got[("mlserve_requests_in_flight", frozenset({("model", "m")}))] == 5


def generate_text(family: Any) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()

    class _One:
        def collect(self) -> Any:
            return [family]

    registry.register(_One())  # type: ignore[arg-type]
    return generate_latest(registry)
