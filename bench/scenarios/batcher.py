"""Scenario ``batcher``: per-request overhead of the Engine with the C++ "noop" backend.

(a) sequential ``predict`` of 1-row requests: latency percentiles; (b) requests/s with 1..64
concurrent submitters, as threads looping ``predict`` and as asyncio tasks looping
``apredict``; (c) the core's cost per request: K ``submit`` calls from one thread, wait for
all, time / K. The baseline is what a user would write without mlserve: a queue.Queue served
by one worker thread that runs the same numpy work per request (the plan in numpy, then zeros
like the noop backend) and answers through a concurrent.futures.Future; (a) also shows the plain
function call of that numpy work and the queue round-trip with no work at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import load, plans, timing
from bench.registry import register

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {
        "latency_calls": 200,
        "concurrency": [1, 4],
        "duration_s": 0.05,
        "load_repeats": 1,
        "burst": 200,
        "repeats": 2,
    },
    "quick": {
        "latency_calls": 2000,
        "concurrency": [1, 8, 64],
        "duration_s": 0.15,
        "load_repeats": 3,
        "burst": 2000,
        "repeats": 5,
    },
    "full": {
        "latency_calls": 20000,
        "concurrency": [1, 8, 64],
        "duration_s": 1.0,
        "load_repeats": 5,
        "burst": 10000,
        "repeats": 7,
    },
}
_MAX_BATCH_SIZE = 64
_MAX_QUEUE_DELAY_US = 0

Work = Callable[[np.ndarray], np.ndarray]


class QueueServer:
    """The baseline server: requests on a queue.Queue, one worker thread, one call per request.

    ``submit`` hands the array to the worker (the caller must not modify it until the future
    completes); the future owns the result. Thread-safe.
    """

    def __init__(self, work: Work) -> None:
        self._work = work
        self._queue: queue.Queue[tuple[np.ndarray, cf.Future[np.ndarray]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="bench-queue-server")
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            x, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._work(x))
            except Exception as exc:
                fut.set_exception(exc)

    def submit(self, x: np.ndarray) -> cf.Future[np.ndarray]:
        fut: cf.Future[np.ndarray] = cf.Future()
        self._queue.put((x, fut))
        return fut

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.submit(x).result()

    async def apredict(self, x: np.ndarray) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(x))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def _burst_ns_per_request(
    submit: Callable[[np.ndarray], cf.Future[Any]], x: np.ndarray, k: int
) -> float:
    t0 = time.perf_counter_ns()
    futures = [submit(x) for _ in range(k)]
    cf.wait(futures)
    elapsed = time.perf_counter_ns() - t0
    for f in futures:
        f.result()  # re-raises a failure instead of timing it
    return elapsed / k


def _core_ns_per_request(engine: Any, x: np.ndarray, k: int) -> float:
    """Per-request ns of the core's async path: k submit_async, then drain via the eventfd."""
    # The core object the Engine's asyncio path drives; the engine must not have a completion
    # thread or event-loop reader of its own (they would drain these completions).
    batcher = engine._batcher
    fd = batcher.completion_fd()
    t0 = time.perf_counter_ns()
    for _ in range(k):
        batcher.submit_async(x)
    done = 0
    while done < k:
        select.select([fd], [], [], 1.0)
        for _rid, _res, err, msg in batcher.drain_completions():
            if err is not None:
                raise err(msg)
            done += 1
    return (time.perf_counter_ns() - t0) / k


def _mean_batch(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    batches = after.get("batches", 0) - before.get("batches", 0)
    rows = after.get("rows", 0) - before.get("rows", 0)
    return rows / batches if batches else None


@register("batcher", "per-request overhead of the Engine (noop backend) vs a queue.Queue server")
def run(level: str) -> dict[str, Any]:
    import mlserve

    cfg = _LEVELS[level]
    spec = plans.realistic_plan_spec()
    plan = mlserve.FeaturePlan(spec)
    ref = plans.NumpyPlan(spec)
    x1 = plans.make_rows(spec, 1, seed=2)

    def numpy_work(x: np.ndarray) -> np.ndarray:
        ref.transform(x)
        return np.zeros((x.shape[0], 1), dtype=np.float32)

    bcfg = mlserve.BatcherConfig(
        max_batch_size=_MAX_BATCH_SIZE, max_queue_delay_us=_MAX_QUEUE_DELAY_US, instance_count=1
    )
    engine = mlserve.Engine(plan, None, backend="noop", config=bcfg, histograms=False)
    server = QueueServer(numpy_work)
    empty_server = QueueServer(lambda x: x)
    measurements: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    try:
        # (a) sequential latency
        calls, warm = cfg["latency_calls"], max(10, cfg["latency_calls"] // 10)
        lat = timing.interleaved_each_call_ns(
            {
                "engine.predict": lambda: engine.predict(x1),
                "queue server (numpy)": lambda: server.predict(x1),
                "direct numpy call": lambda: numpy_work(x1),
                "queue round-trip, no work": lambda: empty_server.predict(x1),
            },
            calls=calls,
            warmup=warm,
        )
        lat_rows = []
        for name, ns in lat.items():
            us = [v / 1e3 for v in ns]
            rec = {
                "part": "latency",
                "variant": name,
                "calls": calls,
                "p50_us": timing.percentile(us, 50),
                "p90_us": timing.percentile(us, 90),
                "p99_us": timing.percentile(us, 99),
                "mean_us": float(np.mean(us)),
            }
            measurements.append(rec)
            lat_rows.append([name, rec["p50_us"], rec["p90_us"], rec["p99_us"], rec["mean_us"]])
        p50 = {r["variant"]: r["p50_us"] for r in measurements}
        ratios["latency p50 queue/engine"] = p50["queue server (numpy)"] / p50["engine.predict"]
        ratios["latency p50 direct/engine"] = p50["direct numpy call"] / p50["engine.predict"]

        # (b) throughput with concurrent submitters
        dur, warm_s = cfg["duration_s"], cfg["duration_s"] / 4
        tput_rows = []
        for mode in ("threads", "asyncio"):
            for n in cfg["concurrency"]:
                before = engine.stats()
                eng_runs: list[float] = []
                base_runs: list[float] = []
                for _ in range(cfg["load_repeats"]):  # alternate, so noise hits both alike
                    if mode == "threads":
                        eng_runs.append(load.threads_rate(engine.predict, x1, n, warm_s, dur))
                        base_runs.append(load.threads_rate(server.predict, x1, n, warm_s, dur))
                    else:
                        eng_runs.append(load.asyncio_rate(engine.apredict, x1, n, warm_s, dur))
                        base_runs.append(load.asyncio_rate(server.apredict, x1, n, warm_s, dur))
                eng, base = timing.median(eng_runs), timing.median(base_runs)
                mean_batch = _mean_batch(before, engine.stats())
                ratio = eng / base
                ratios[f"throughput engine/queue {mode}={n}"] = ratio
                measurements.append(
                    {
                        "part": "throughput",
                        "mode": mode,
                        "concurrency": n,
                        "engine_req_per_s": eng,
                        "queue_req_per_s": base,
                        "engine_mean_batch_rows": mean_batch,
                        "duration_s": dur,
                        "repeats": cfg["load_repeats"],
                        "engine_runs_req_per_s": eng_runs,
                        "queue_runs_req_per_s": base_runs,
                    }
                )
                tput_rows.append([mode, n, eng, base, ratio, mean_batch])

        # (c) the core's own cost per request: a burst of submits, then wait for all
        k = cfg["burst"]
        samples: dict[str, list[float]] = {"engine.submit": [], "queue server submit": []}
        before = engine.stats()
        _burst_ns_per_request(engine.submit, x1, k)  # warm-up
        _burst_ns_per_request(server.submit, x1, k)
        for _ in range(cfg["repeats"]):
            samples["engine.submit"].append(_burst_ns_per_request(engine.submit, x1, k))
            samples["queue server submit"].append(_burst_ns_per_request(server.submit, x1, k))
        mean_batch = _mean_batch(before, engine.stats())
        # (d) the C++ batcher alone: submit_async + eventfd/drain completion, no Python future
        # per request (what an event loop integration pays), against a queue.Queue round-trip
        # with no work (the cheapest hand-off plain Python has).
        core: list[float] = []
        bare: list[float] = []
        # A fresh engine: the first one's completion thread (from submit) drains its eventfd.
        with mlserve.Engine(plan, None, backend="noop", config=bcfg, histograms=False) as raw:
            _core_ns_per_request(raw, x1, k)  # warm-up
            for _ in range(cfg["repeats"]):
                core.append(_core_ns_per_request(raw, x1, k))
                bare.append(_burst_ns_per_request(empty_server.submit, x1, k))
        core_us, bare_us = timing.median(core) / 1e3, timing.median(bare) / 1e3
        ratios["per-request queue round-trip/core"] = bare_us / core_us
        measurements.append(
            {
                "part": "core",
                "requests": k,
                "repeats": cfg["repeats"],
                "core_us_per_request": core_us,
                "queue_roundtrip_us_per_request": bare_us,
            }
        )
        burst = {name: timing.median(ns) / 1e3 for name, ns in samples.items()}
        ratios["per-request queue/engine (burst)"] = (
            burst["queue server submit"] / burst["engine.submit"]
        )
        measurements.append(
            {
                "part": "burst",
                "requests": k,
                "repeats": cfg["repeats"],
                "engine_us_per_request": burst["engine.submit"],
                "queue_us_per_request": burst["queue server submit"],
                "engine_mean_batch_rows": mean_batch,
            }
        )
        stats = engine.stats()
    finally:
        engine.close()
        server.close()
        empty_server.close()

    return {
        "parameters": {
            "level": level,
            "rows_per_request": 1,
            "f_in": int(plan.f_in),
            "f_out": int(plan.f_out),
            "max_batch_size": _MAX_BATCH_SIZE,
            "max_queue_delay_us": _MAX_QUEUE_DELAY_US,
            "instance_count": 1,
            "histograms": False,
            **cfg,
        },
        "baseline": "queue.Queue + one worker thread + concurrent.futures.Future per request, "
        "the worker running the same numpy work (the plan in numpy, then zeros [n, 1]) once per "
        "request; ratios are baseline time / engine time, or engine req/s / baseline req/s",
        "measurements": measurements,
        "engine_stats": stats,
        "ratios": ratios,
        "headline": {
            "name": "per-request queue round-trip/core",
            "value": ratios["per-request queue round-trip/core"],
            "meaning": f"the C++ batcher costs {core_us:.2f} µs per 1-row request (target ≤ 5 µs: "
            "submit_async, batching, noop backend, eventfd completion, result array; a burst "
            f"from one thread), {bare_us:.2f} µs for a bare queue.Queue round-trip; the Python "
            "future/asyncio layers add their own cost (tables b, c)",
        },
        "tables": [
            {
                "title": "(a) Sequential 1-row latency (µs)",
                "columns": ["variant", "p50", "p90", "p99", "mean"],
                "rows": lat_rows,
            },
            {
                "title": "(b) Throughput, 1-row requests (req/s)",
                "columns": [
                    "submitters",
                    "n",
                    "engine",
                    "queue server",
                    "engine/queue",
                    "engine mean batch rows",
                ],
                "rows": tput_rows,
            },
            {
                "title": f"(c) Burst of {k} submits from one thread (µs per request)",
                "columns": [
                    "engine.submit",
                    "queue server submit",
                    "queue/engine",
                    "engine mean batch rows",
                ],
                "rows": [
                    [
                        burst["engine.submit"],
                        burst["queue server submit"],
                        ratios["per-request queue/engine (burst)"],
                        mean_batch,
                    ]
                ],
            },
            {
                "title": f"(d) C++ batcher alone: burst of {k} submit_async + eventfd drain "
                "(µs per request)",
                "columns": ["core", "queue.Queue round-trip, no work", "queue/core"],
                "rows": [[core_us, bare_us, ratios["per-request queue round-trip/core"]]],
            },
        ],
        "plots": [
            {
                "title": "throughput, 1-row requests",
                "xlabel": "concurrent submitters",
                "ylabel": "requests/s",
                "x": cfg["concurrency"],
                "logx": True,
                "logy": True,
                "series": {
                    f"{who} ({mode})": [
                        m[f"{who}_req_per_s"] for m in measurements if m.get("mode") == mode
                    ]
                    for mode in ("threads", "asyncio")
                    for who in ("engine", "queue")
                },
            },
        ],
        "notes": [
            f"max_queue_delay_us={_MAX_QUEUE_DELAY_US}: a batch is cut as soon as the worker is "
            "free, so batches form only from requests that queued while it was busy.",
            "the queue server's per-request time is mostly the numpy plan (see 'direct numpy "
            "call' against 'queue round-trip, no work' in (a)).",
        ],
    }
