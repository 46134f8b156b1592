"""Prometheus exposition of request metrics and native-core engine stats."""

from __future__ import annotations

import numpy as np
from mlserve import BatcherConfig, Engine
from mlserve.metrics import REQUEST_LATENCY, REQUESTS, render
from prometheus_client.parser import text_string_to_metric_families

SPEC = {"features": [{"name": f"f{i}", "kind": "numeric", "ops": []} for i in range(3)]}


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_engine_stats_and_request_metrics_are_exported() -> None:
    with Engine(
        SPEC,
        backend="rowsum",
        name="m",
        version="3",
        config=BatcherConfig(max_batch_size=8, max_queue_delay_us=0),
    ) as engine:
        engine.hold_batching(3)
        futures = [engine.submit(np.ones((k, 3), np.float32)) for k in (1, 2, 3)]
        for f in futures:
            f.result(timeout=30)
        REQUESTS.labels("m", "3", "ok").inc(3)
        REQUEST_LATENCY.labels("m", "3").observe(0.002)
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
