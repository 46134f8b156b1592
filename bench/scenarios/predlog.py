"""Scenario ``predlog``: what the durable prediction log (``mlserve serve --prediction-log``)
costs the serving path, and how fast its writer turns buffered rows into Parquet parts.

(a) requests/s of asyncio tasks looping ``Engine.apredict(x, tag=...)`` on the realistic plan
(bench/plans.py, f_in 20) with the C++ ``noop`` backend, the worst case for a relative cost
(nothing else to do per request): one engine with the prediction export on, drained into a real
:class:`mlserve.predlog.PredictionLogWriter` in a temporary directory every 0.5 s by its own
thread (Parquet writing included, competing for the same cores), one with it off; both get a
tag per request (the server tags requests whenever monitoring or the log is on). Rounds
alternate between the two; medians. (b) the writer alone: rows/s of ``flush()`` writing rows
that the engine buffered (the part's columns built from the drained arrays, Parquet written).
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from typing import Any

import numpy as np

from bench import load, plans
from bench.registry import register

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {"concurrency": [8], "rows": [1], "duration_s": 0.1, "repeats": 1,
              "writer_rows": 5_000, "server": False},
    "quick": {"concurrency": [8, 64], "rows": [1, 25], "duration_s": 0.3, "repeats": 3,
              "writer_rows": 50_000, "server": True, "server_concurrency": [1, 64],
              "server_duration_s": 2, "server_repeats": 2},
    "full": {"concurrency": [8, 64], "rows": [1, 25], "duration_s": 1.0, "repeats": 5,
             "writer_rows": 200_000, "server": True, "server_concurrency": [1, 64],
             "server_duration_s": 5, "server_repeats": 3},
}


def _server(cfg: dict[str, Any]) -> tuple[list[list[Any]], dict[str, float], list[Any]]:
    """(c) `mlserve serve` with and without ``--prediction-log`` (both ``--no-monitoring``),
    the http scenario's fraud model, msgpack requests of 1 and 25 rows under wrk (the Python
    client without it), each server stopped (SIGSTOP) outside its own turn; req/s and the
    server's own CPU µs per request, rounds alternating."""
    import shutil
    from pathlib import Path

    import msgpack

    from bench.scenarios import http as h

    wrk = shutil.which("wrk")
    table: list[list[Any]] = []
    ratios: dict[str, float] = {}
    runs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="mlserve-bench-predlog-s-") as tmp_name:
        tmp = Path(tmp_name)
        row, signature, _ = h._train(tmp)
        one, _, x = h._bodies(row, signature)
        many = np.ascontiguousarray(np.tile(x, (25, 1)), dtype="<f4")
        bodies = {1: one, 25: msgpack.packb({"inputs": [{
            "name": "input", "datatype": "FP32", "shape": [25, int(x.shape[1])],
            "data": many.tobytes()}]}, use_bin_type=True)}
        files = {}
        for rows, body in bodies.items():
            files[rows] = tmp / f"body-{rows}.msgpack"
            files[rows].write_bytes(body)
        common = [*h._serve_command(), "--registry", str(tmp / "registry"), "--model",
                  h._MODEL, "--host", "127.0.0.1", "--log-level", "warning", "--no-monitoring"]
        ports = {"off": h._free_port(), "on": h._free_port()}
        extra = {"off": [], "on": ["--prediction-log", str(tmp / "log"),
                                   "--prediction-log-flush", "1"]}
        with h._process([*common, "--port", str(ports["off"]), *extra["off"]],
                        tmp / "off.log") as off, \
                h._process([*common, "--port", str(ports["on"]), *extra["on"]],
                           tmp / "on.log") as on:
            procs = {"off": off, "on": on}
            for name, proc in procs.items():
                h._wait_ready(proc, ports[name], tmp / f"{name}.log", f"mlserve serve ({name})")
                h._pause(proc, True)
            got: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
            for _ in range(cfg["server_repeats"]):
                for rows in bodies:
                    for c in cfg["server_concurrency"]:
                        for name, proc in procs.items():
                            with h._resumed(proc, True):
                                request = h._raw_request(ports[name], h._INFER_PATH,
                                                         bodies[rows], h._MSGPACK)

                                def load(seconds: int, name: str = name, rows: int = rows,
                                         c: int = c, request: bytes = request) -> Any:
                                    if wrk is not None:
                                        return h._wrk(wrk, ports[name], h._INFER_PATH,
                                                      files[rows], h._MSGPACK, c, seconds)
                                    return h._py_closed(ports[name], request, c,
                                                        float(seconds), 0.2)

                                load(1)  # a resumed server's first second is slower
                                cpu0 = h._tree_cpu_ns(proc.pid)
                                r = load(cfg["server_duration_s"])
                                cpu = (h._tree_cpu_ns(proc.pid) - cpu0) / 1e3
                            if r["errors"]:
                                raise RuntimeError(f"{r['errors']} failed requests ({name})")
                            got.setdefault((name, rows, c), []).append(
                                (r["requests_per_s"], cpu / max(1, r["requests"])))
                            runs.append({"server": name, "rows": rows, "connections": c,
                                         **{k: r[k] for k in ("requests_per_s", "requests")},
                                         "server_cpu_us_per_request": cpu / max(1,
                                                                                r["requests"])})
            for name in procs:
                h._pause(procs[name], False)
        logged = sum(1 for _ in (tmp / "log").rglob("part-*.parquet"))
        for rows in bodies:
            for c in cfg["server_concurrency"]:
                off_rps, off_cpu = (float(np.median([v[i] for v in got[("off", rows, c)]]))
                                    for i in (0, 1))
                on_rps, on_cpu = (float(np.median([v[i] for v in got[("on", rows, c)]]))
                                  for i in (0, 1))
                ratios[f"server log on/off req/s, {rows} rows, {c} connections"] = \
                    on_rps / off_rps
                ratios[f"server log off/on CPU per request, {rows} rows, {c} connections"] = \
                    off_cpu / on_cpu
                table.append([rows, c, round(off_rps), round(on_rps), round(on_rps / off_rps, 3),
                              round(off_cpu, 1), round(on_cpu, 1)])
        if logged == 0:
            raise RuntimeError("the server with --prediction-log wrote no part")
    return table, ratios, runs


def _engine(plan_spec: dict[str, Any]) -> Any:
    import mlserve
    from mlserve import BatcherConfig

    return mlserve.Engine(mlserve.FeaturePlan(plan_spec), None, backend="noop",
                          config=BatcherConfig(max_batch_size=256, max_queue_delay_us=0),
                          histograms=False)


def _tagged(engine: Any) -> Any:
    counter = itertools.count()

    async def apredict(x: np.ndarray) -> Any:
        return await engine.apredict(x, tag=b"r-%d" % next(counter))
    return apredict


def _headline(ratios: dict[str, float], worst: float, writer_rps: float) -> dict[str, Any]:
    key = "server log on/off req/s, 1 rows, 64 connections"
    if key in ratios:
        cpu = ratios["server log off/on CPU per request, 1 rows, 64 connections"]
        return {"name": key, "value": ratios[key],
                "meaning": f"mlserve serve logging every one-row request keeps {ratios[key]:.0%} "
                f"of its saturated req/s ({1 / cpu - 1:+.0%} server CPU per request); the noop "
                f"engine alone keeps {worst:.0%} at worst; the writer turns "
                f"{writer_rps:,.0f} buffered rows/s into Parquet"}
    engine_key = min((k for k in ratios if not k.startswith("server")), key=ratios.__getitem__)
    return {"name": engine_key, "value": worst,
            "meaning": f"with the prediction log on, the noop engine keeps {worst:.0%} of its "
            f"requests/s at worst; the writer turns {writer_rps:,.0f} buffered rows/s into "
            "Parquet"}


@register("predlog", "serving cost of the durable prediction log (export on vs off) and its "
                     "Parquet writer's rows/s")
def run(level: str) -> dict[str, Any]:
    from mlserve.predlog import PredictionLogWriter

    cfg = _LEVELS[level]
    spec = plans.realistic_plan_spec()
    names = [f["name"] for f in spec["features"]]
    base = plans.make_rows(spec, 4096, seed=3)
    measurements: list[dict[str, Any]] = []
    rows_out: list[list[Any]] = []
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mlserve-bench-predlog-") as tmp:
        off, on = _engine(spec), _engine(spec)
        writer = PredictionLogWriter(tmp, flush_s=0.5)
        writer.watch("bench", "1", on, names, ["output"])
        writer.start()
        try:
            for rows in cfg["rows"]:
                x = np.ascontiguousarray(base[:rows])
                for n in cfg["concurrency"]:
                    got: dict[str, list[float]] = {"off": [], "on": []}
                    for _ in range(cfg["repeats"]):
                        for name, engine in (("off", off), ("on", on)):
                            got[name].append(load.asyncio_rate(
                                _tagged(engine), x, n, min(0.2, cfg["duration_s"] / 2),
                                cfg["duration_s"]))
                    med = {k: float(np.median(v)) for k, v in got.items()}
                    ratio = med["on"] / med["off"]
                    key = f"log on/off req/s, {rows} rows, {n} tasks"
                    ratios[key] = ratio
                    measurements.append({"rows": rows, "tasks": n, "off_rps": med["off"],
                                         "on_rps": med["on"], "runs": got})
                    rows_out.append([rows, n, round(med["off"]), round(med["on"]),
                                     round(ratio, 3)])
        finally:
            writer.close()
            off.close()
            on.close()
        logged = writer.counters.rows
        # (b) the writer alone: buffer rows through the engine, then time one flush.
        with tempfile.TemporaryDirectory(prefix="mlserve-bench-predlog-w-") as tmp2:
            engine = _engine(spec)
            w = PredictionLogWriter(tmp2, flush_s=60, max_buffered_rows=cfg["writer_rows"])
            w.watch("bench", "1", engine, names, ["output"])
            x = np.ascontiguousarray(base[:100])

            async def fill() -> None:
                await asyncio.gather(*(engine.apredict(x, tag=b"w-%d" % i)
                                       for i in range(cfg["writer_rows"] // 100)))
            asyncio.run(fill())
            t0 = time.perf_counter()
            parts = w.flush()
            flush_s = time.perf_counter() - t0
            w.close()
            engine.close()
            writer_rps = w.counters.rows / flush_s if flush_s > 0 else float("nan")
    server_rows: list[list[Any]] = []
    server_runs: list[Any] = []
    if cfg["server"]:
        server_rows, server_ratios, server_runs = _server(cfg)
        ratios.update(server_ratios)
    worst = min(v for k, v in ratios.items() if not k.startswith("server"))
    return {
        "parameters": {"plan": "realistic (f_in 20)", "backend": "noop", "max_batch_size": 256,
                       "flush_s": 0.5, **cfg},
        "baseline": "the same engine with the prediction export off (requests tagged alike); "
        "ratios are req/s with the log / req/s without (1.0 = free)",
        "measurements": {"serving": measurements, "server": server_runs,
                         "writer": {"rows": w.counters.rows, "parts": parts,
                                    "flush_s": flush_s, "rows_per_s": writer_rps},
                         "rows_logged_during_serving": logged},
        "ratios": ratios,
        "headline": _headline(ratios, worst, writer_rps),
        "tables": [{"title": "(a) requests/s, prediction log off vs on",
                    "columns": ["rows/request", "tasks", "off", "on", "on/off"],
                    "rows": rows_out},
                   {"title": "(b) writer", "columns": ["rows", "parts", "flush s", "rows/s"],
                    "rows": [[w.counters.rows, parts, round(flush_s, 3), round(writer_rps)]]},
                   {"title": "(c) mlserve serve, msgpack, log off vs on (req/s; server CPU "
                             "µs per request)",
                    "columns": ["rows/request", "connections", "off req/s", "on req/s",
                                "on/off", "off CPU µs", "on CPU µs"],
                    "rows": server_rows}],
        "plots": [{"title": "requests/s, prediction log off vs on", "xlabel": "case",
                   "ylabel": "req/s", "x": [f"{m['rows']}r/{m['tasks']}t" for m in measurements],
                   "series": {"off": [m["off_rps"] for m in measurements],
                              "on": [m["on_rps"] for m in measurements]},
                   "logx": False, "logy": False}],
        "notes": [],
    }
