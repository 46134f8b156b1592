"""Scenario ``http``: one-row inference over HTTP (``mlserve serve``) vs an echo server.

Setup: a tiny fraud model (``mlserve.trainer``, 3000 synthetic card transactions, one hidden
layer of 16) is trained into a temporary registry and served by ``mlserve serve`` in a
subprocess (defaults: one worker, uvicorn + uvloop + httptools, dynamic batching). The baseline
is ``bench/echo_app.py`` on the same stack (uvicorn, uvloop, httptools, one worker, no access
log, uvicorn configured as ``mlserve serve`` configures it): it reads the body and answers 200
with the same bytes, so its req/s is what the HTTP stack alone allows on this machine, with the
load generator sharing the same cores.

Closed loop (wrk 4.1 with ``bench/wrk_report.lua``; ``-t min(2, C) -c C``): one-row requests
to ``/v2/models/fraud/infer`` as msgpack (one FP32 tensor ``input`` [1, f_in], raw bytes) and as
v2 JSON, and the msgpack body POSTed to the echo server; req/s, p50/p99/p99.9 latency (µs) and
errors (status >= 400 or socket errors) at each concurrency, interleaved by round. "msgpack" and
"json" go to a server started with ``--no-monitoring``; "msgpack+monitoring" sends the same
msgpack body to a second server with monitoring on (drift sample, prediction log, a monitoring
tick every second), so ``msgpack+monitoring/msgpack`` is the hot-path cost of monitoring
(target: at most 5% fewer req/s). That server is stopped (SIGSTOP) outside its own target, so its
ticks take no CPU from the others; every closed-loop run of 2 s or more starts with one
unmeasured second of the same load (a server just resumed from SIGSTOP answers its first second
measurably slower). Each closed-loop run also records the server's own CPU time
per answered request (its process tree's threads, from /proc), so
``msgpack/msgpack+monitoring server CPU per request`` measures the same cost without depending
on how the cores were shared with the load generator. Without wrk
the scenario says so and uses a Python asyncio closed-loop client instead (slower: its figures
are bounded by the client).

Open loop: ``bench/openloop.c`` (compiled once per run with the system C compiler; epoll, one
request in flight per keep-alive connection, like wrk2's constant-throughput mode) sends msgpack
requests on a fixed schedule (a fraction of the closed-loop msgpack req/s at the highest
concurrency); latency is measured from each request's scheduled send time, so a slow response
delays no measurement (no coordinated omission). The echo server gets the same schedule as a
floor. Without a C compiler (or if the compile fails) the scenario says so and uses a Python
asyncio generator instead, whose own scheduling lag (milliseconds on a small machine) then
shows in the percentiles.

Both servers run as subprocesses and are always terminated (``finally``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import timing
from bench.openloop import GENERATOR as C_OPENLOOP
from bench.openloop import compile_openloop, run_openloop
from bench.registry import register
from bench.report import REPO_ROOT

logger = logging.getLogger(__name__)

_LEVELS: dict[str, dict[str, Any]] = {
    "smoke": {
        "concurrency": [16],
        "duration_s": 1,
        "repeats": 1,
        "warmup_s": 0,
        "open_fractions": [0.5],
        "open_duration_s": 0.6,
        "open_warmup_s": 0.1,
    },
    "quick": {
        "concurrency": [1, 16, 64],
        "duration_s": 2,
        "repeats": 1,
        "warmup_s": 1,
        "open_fractions": [0.25, 0.5, 0.75],
        "open_duration_s": 1.5,
        "open_warmup_s": 0.3,
    },
    "full": {
        "concurrency": [1, 16, 64],
        "duration_s": 8,
        "repeats": 3,
        "warmup_s": 3,
        "open_fractions": [0.25, 0.5, 0.75, 0.9],
        "open_duration_s": 8.0,
        "open_warmup_s": 1.0,
    },
}
_MODEL = "fraud"
_INFER_PATH = f"/v2/models/{_MODEL}/infer"
_READY_PATH = "/v2/health/ready"
_MSGPACK = "application/msgpack"
_JSON = "application/json"
_TARGETS = ("msgpack", "msgpack+monitoring", "json", "echo")
#: Monitoring may cost at most 5% of the msgpack req/s.
_MONITORING_TARGET = 0.95
#: Closed-loop runs at least this long get one unmeasured second of the same load first.
_SETTLE_MIN_DURATION_S = 2
#: Headline: msgpack req/s over echo req/s at this concurrency (or the highest measured).
_HEAD_CONCURRENCY = 64
_TARGET_RATIO = 0.6
#: p99 target at about half of the closed-loop throughput.
_P99_TARGET_US = 5000.0
_HALF_LOAD = 0.5
_OPEN_CONNECTIONS = 64
_PY_OPENLOOP = "python-asyncio"
#: Seconds an open-loop step may run past its schedule before unsent requests are dropped.
_OPEN_DRAIN_S = 5.0
_START_TIMEOUT_S = 90.0
_TRAIN_ROWS = 3000
_TRAIN_CONFIG = {"exclude": ["user_id", "merchant_id"], "epochs": 2, "hidden": [16]}
_WRK_SCRIPT = REPO_ROOT / "bench" / "wrk_report.lua"


class ServerUnavailable(RuntimeError):
    """The mlserve HTTP server is not part of this checkout (``mlserve.server.cli`` missing)."""


# ---- subprocesses ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command() -> list[str]:
    """``python -m mlserve.cli serve`` when the main CLI has it, else the standalone module."""
    import importlib.util

    if importlib.util.find_spec("mlserve.server.cli") is None:
        raise ServerUnavailable(
            "mlserve.server.cli is not importable: this checkout has no HTTP server "
            "(`mlserve serve`) to benchmark"
        )
    from mlserve import cli

    code: Any = 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main(["serve", "--help"])
        except SystemExit as exc:
            code = exc.code
    if code in (0, None):
        return [sys.executable, "-m", "mlserve.cli", "serve"]
    return [sys.executable, "-m", "mlserve.server.cli"]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> float:
    """Polls GET /v2/health/ready until 200; seconds waited. Raises with the log tail if the
    process exits or the deadline passes."""
    t0 = time.perf_counter()
    deadline = t0 + _START_TIMEOUT_S
    last = "no answer"
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {proc.returncode} before it was ready; "
                f"log tail:\n{_tail(log)}"
            )
        try:
            status, _ = _get(port, _READY_PATH, timeout=1.0)
            if status == 200:
                return time.perf_counter() - t0
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(
        f"{what} was not ready after {_START_TIMEOUT_S:.0f} s ({last}); log tail:\n{_tail(log)}"
    )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a stopped process would hold SIGTERM until continued
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """Starts ``cmd`` (output to ``log``) and always terminates it on exit."""
    proc: subprocess.Popen[bytes] | None = None
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )
            yield proc
        finally:
            _stop(proc)


def _pause(proc: subprocess.Popen[bytes], pause: bool) -> None:
    """Stops (SIGSTOP) or continues (SIGCONT) ``proc``: a stopped server takes no CPU."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGSTOP if pause else signal.SIGCONT)


@contextlib.contextmanager
def _resumed(proc: subprocess.Popen[bytes], run: bool) -> Iterator[None]:
    """Runs the block with the paused ``proc`` continued (``run``) or left stopped."""
    if not run:
        yield
        return
    _pause(proc, False)
    try:
        yield
    finally:
        _pause(proc, True)


# ---- model and bodies ------------------------------------------------------------------------


def _train(tmp: Path) -> tuple[Any, dict[str, Any], float]:
    """Trains the tiny fraud model into ``tmp/registry``; (a raw row, signature, seconds)."""
    from mlserve import registry as mreg
    from mlserve import trainer
    from mlserve.bundle import ModelBundle
    from mlserve.trainer import datasets

    t0 = time.perf_counter()
    result = trainer.train(
        datasets.card_transactions(_TRAIN_ROWS),
        "is_fraud",
        name=_MODEL,
        timestamp="event_ts",
        config=dict(_TRAIN_CONFIG),
        registry=mreg.Registry(tmp / "registry"),
        out_dir=tmp / "bundle",
        progress=False,
    )
    seconds = time.perf_counter() - t0
    signature = ModelBundle.load(result.bundle_path).signature
    frame = result.test_frame
    features = [spec["name"] for spec in signature["inputs"]]
    complete = frame[frame[features].notna().all(axis=1)]  # JSON has no NaN
    row = (complete if len(complete) else frame).head(1)
    return row, signature, seconds


def _bodies(row: Any, signature: dict[str, Any]) -> tuple[bytes, bytes, np.ndarray]:
    """(msgpack body, JSON body, the encoded float32 row)."""
    import msgpack
    from mlserve.trainer import encode_rows

    x = np.ascontiguousarray(encode_rows(row, signature["inputs"]), dtype="<f4")
    shape = [1, int(x.shape[1])]
    packed = msgpack.packb(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": x.tobytes()}]},
        use_bin_type=True,
    )
    as_json = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "data": [float(v) for v in x.reshape(-1)],
                }
            ]
        }
    ).encode()
    return packed, as_json, x


def _probability(outputs: list[dict[str, Any]], binary: bool) -> float:
    if not outputs:
        raise RuntimeError("the response has no outputs")
    named = [o for o in outputs if o.get("name") == "probability"]
    out = (named or outputs)[0]
    data = out.get("data")
    if binary and isinstance(data, (bytes, bytearray)):
        values = np.frombuffer(data, dtype="<f4")
    else:
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    if values.size < 1:
        raise RuntimeError(f"output {out.get('name')!r} holds no value")
    return float(values[0])


def _verify(port: int, echo_port: int, packed: bytes, as_json: bytes) -> dict[str, Any]:
    """One request of each kind; raises unless each is a 200 carrying a probability in [0, 1]
    (and the echo returns the body unchanged)."""
    import msgpack

    seen: dict[str, Any] = {}
    status, body, ctype = _post(port, _INFER_PATH, packed, _MSGPACK)
    if status != 200:
        raise RuntimeError(f"msgpack infer answered {status}: {body[:500]!r}")
    try:
        decoded = msgpack.unpackb(body, raw=False)
    except Exception as exc:
        raise RuntimeError(
            f"msgpack infer answered a body that is not msgpack ({ctype}): {body[:200]!r}"
        ) from exc
    seen["msgpack_probability"] = _probability(decoded.get("outputs", []), binary=True)
    seen["msgpack_response_bytes"] = len(body)
    status, body, ctype = _post(port, _INFER_PATH, as_json, _JSON)
    if status != 200:
        raise RuntimeError(f"JSON infer answered {status}: {body[:500]!r}")
    seen["json_probability"] = _probability(json.loads(body).get("outputs", []), binary=False)
    seen["json_response_bytes"] = len(body)
    for key in ("msgpack_probability", "json_probability"):
        p = seen[key]
        if not 0.0 <= p <= 1.0:
            raise RuntimeError(f"{key} = {p} is not a probability")
    if abs(seen["msgpack_probability"] - seen["json_probability"]) > 1e-5:
        raise RuntimeError(f"msgpack and JSON disagree: {seen}")
    status, body, _ = _post(echo_port, _INFER_PATH, packed, _MSGPACK)
    if status != 200 or body != packed:
        raise RuntimeError(f"the echo server answered {status} with {len(body)} bytes")
    return seen


# ---- load generators -------------------------------------------------------------------------


def _raw_request(port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Sends one request on a keep-alive connection and reads the whole response; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.find(b"\r\n", at + 2)
        await reader.readexactly(int(lower[at + 17 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


def _run_async(coro: Any) -> Any:
    """Runs a load generator on uvloop (asyncio's loop without it), the GC paused meanwhile:
    a collection in the generator would read as server latency."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)
    finally:
        if enabled:
            gc.enable()


def _summary(lat_ns: list[float], count: int, seconds: float, errors: int) -> dict[str, Any]:
    us = np.asarray(lat_ns, dtype=np.float64) / 1e3
    pct = (lambda q: float(np.percentile(us, q))) if us.size else (lambda q: float("nan"))
    return {
        "requests": count,
        "duration_s": seconds,
        "requests_per_s": count / seconds if seconds > 0 else float("nan"),
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
        "mean_us": float(us.mean()) if us.size else float("nan"),
        "max_us": float(us.max()) if us.size else float("nan"),
        "errors": errors,
    }


def _py_closed(port: int, request: bytes, c: int, dur_s: float, warm_s: float) -> dict[str, Any]:
    """Closed loop without wrk: ``c`` connections, each looping one request."""
    clock = time.perf_counter_ns

    async def main() -> dict[str, Any]:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(c)]
        start = clock()
        begin, end = start + int(warm_s * 1e9), start + int((warm_s + dur_s) * 1e9)
        lat: list[float] = []
        errors = 0

        async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal errors
            while True:
                t0 = clock()
                status = await _exchange(reader, writer, request)
                now = clock()
                if now >= end:
                    return
                if t0 >= begin:
                    lat.append(now - t0)
                    errors += status >= 400

        try:
            await asyncio.gather(*(loop(r, w) for r, w in conns))
        finally:
            for _, w in conns:
                w.close()
        return _summary(lat, len(lat), dur_s, errors)

    out: dict[str, Any] = _run_async(main())
    out["generator"] = "python-asyncio"
    return out


def _open_loop(
    port: int, request: bytes, rate: float, dur_s: float, warm_s: float, n_conns: int
) -> dict[str, Any]:
    """Open loop in Python (the fallback for ``bench/openloop.c``, same keys): request i is
    due at t0 + i / rate; a dispatcher queues each when due and ``n_conns`` keep-alive
    connections take them in order. Latency runs from the due time (a
    request waiting for a free connection or a late dispatcher counts as slow); requests due in
    the first ``warm_s`` are not measured."""
    clock = time.perf_counter_ns
    period_ns = 1e9 / rate
    n_total = max(1, int(rate * (warm_s + dur_s)))
    n_warm = int(rate * warm_s)

    async def main() -> dict[str, Any]:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n_conns)]
        queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        lat: list[float] = []
        service: list[float] = []
        lag: list[float] = []
        errors = 0
        dropped = 0
        last_done = 0
        t0 = clock() + 20_000_000
        # A server far behind the schedule would stretch the drain without bound: requests
        # not sent by then are dropped and counted instead.
        hard_end = t0 + int((warm_s + dur_s + _OPEN_DRAIN_S) * 1e9)

        async def dispatch() -> None:
            for i in range(n_total):
                due = t0 + int(i * period_ns)
                wait = due - clock()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                queue.put_nowait((i, due))
            for _ in conns:
                queue.put_nowait(None)

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal errors, dropped, last_done
            while (item := await queue.get()) is not None:
                i, due = item
                sent = clock()
                if sent > hard_end:
                    dropped += i >= n_warm
                    continue
                status = await _exchange(reader, writer, request)
                done = clock()
                if i >= n_warm:
                    lat.append(done - due)
                    service.append(done - sent)
                    lag.append(sent - due)
                    errors += status >= 400
                    last_done = done

        try:
            await asyncio.gather(dispatch(), *(worker(r, w) for r, w in conns))
        finally:
            for _, w in conns:
                w.close()
        measured = len(lat)
        span = (last_done - (t0 + n_warm * period_ns)) / 1e9
        out = _summary(lat, measured, span, errors)
        out["offered_per_s"] = rate
        out["dropped"] = dropped
        out["achieved_per_s"] = out.pop("requests_per_s")
        send = np.asarray(service, dtype=np.float64) / 1e3
        lag_us = np.asarray(lag, dtype=np.float64) / 1e3
        out["from_send_p50_us"] = float(np.percentile(send, 50)) if send.size else None
        out["from_send_p99_us"] = float(np.percentile(send, 99)) if send.size else None
        out["send_lag_p50_us"] = float(np.percentile(lag_us, 50)) if lag_us.size else None
        out["send_lag_p99_us"] = float(np.percentile(lag_us, 99)) if lag_us.size else None
        return out

    result: dict[str, Any] = _run_async(main())
    return result


def _wrk(
    wrk: str, port: int, path: str, body_file: Path, content_type: str, c: int, dur_s: int
) -> dict[str, Any]:
    threads = min(2, c)
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{c}",
        f"-d{dur_s}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(_WRK_SCRIPT),
        f"http://127.0.0.1:{port}{path}",
    ]
    env = {**os.environ, "WRK_BODY_FILE": str(body_file), "WRK_CONTENT_TYPE": content_type}
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=dur_s + 60, check=False
    )
    report = None
    for line in done.stdout.splitlines():
        if line.startswith('{"wrk_report"'):
            report = json.loads(line)["wrk_report"]
    if done.returncode != 0 or report is None:
        raise RuntimeError(
            f"wrk failed (status {done.returncode}): {' '.join(cmd)}\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    socket_errors = sum(
        report[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
    )
    report["http_errors"] = report["errors"]
    report["socket_errors"] = socket_errors
    report["errors"] = report["http_errors"] + socket_errors
    report["generator"] = f"wrk -t{threads}"
    return report


def _tree_cpu_ns(pid: int) -> int:
    """CPU time (ns) used so far by process ``pid`` and its descendants, summed over their live
    threads (``/proc/PID/task/TID/schedstat``, nanosecond resolution); 0 without /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return 0
    for name in entries:
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        children.setdefault(ppid, []).append(int(name))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack += children.get(p, [])
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                total += int(Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


# ---- /metrics --------------------------------------------------------------------------------

_METRIC_SUMS = (
    "mlserve_requests_total",
    "mlserve_request_latency_seconds_sum",
    "mlserve_request_latency_seconds_count",
    "mlserve_engine_rows_total",
    "mlserve_engine_rows",
    "mlserve_engine_batches_total",
    "mlserve_engine_batches",
)


def _metrics_snapshot(port: int) -> dict[str, Any]:
    """Size of the server's /metrics text and a few summed values (absent keys: no such
    metric); {"status": code} when /metrics does not answer 200."""
    try:
        status, body = _get(port, "/metrics", timeout=5.0)
    except OSError as exc:
        return {"error": str(exc)}
    if status != 200:
        return {"status": status}
    text = body.decode(errors="replace")
    sums: dict[str, float] = {}
    samples = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        samples += 1
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _METRIC_SUMS:
            with contextlib.suppress(ValueError):
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    out: dict[str, Any] = {"status": 200, "bytes": len(body), "samples": samples, **sums}
    count = sums.get("mlserve_request_latency_seconds_count")
    if count:
        out["server_mean_latency_us"] = sums["mlserve_request_latency_seconds_sum"] / count * 1e6
    rows = sums.get("mlserve_engine_rows_total", sums.get("mlserve_engine_rows"))
    batches = sums.get("mlserve_engine_batches_total", sums.get("mlserve_engine_batches"))
    if rows and batches:
        out["mean_batch_rows"] = rows / batches
    return out


# ---- the scenario ----------------------------------------------------------------------------


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("requests_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "mean_us",
            "server_cpu_us_per_request")
    out: dict[str, Any] = {k: timing.median([float(r[k]) for r in runs]) for k in keys}
    out["max_us"] = max(float(r["max_us"]) for r in runs)
    out["errors"] = int(sum(r["errors"] for r in runs))
    out["requests"] = int(sum(r["requests"] for r in runs))
    out["runs_requests_per_s"] = [float(r["requests_per_s"]) for r in runs]
    out["generator"] = runs[0]["generator"]
    return out


@register("http", "one-row inference over HTTP (msgpack, JSON) vs a raw ASGI echo server")
def run(level: str) -> dict[str, Any]:
    cfg = _LEVELS[level]
    wrk = shutil.which("wrk")
    notes: list[str] = []
    if wrk is None:
        msg = (
            "wrk is not installed (not on PATH): the closed-loop figures come from the Python "
            "asyncio client instead, which saturates sooner than wrk; install wrk 4.x for "
            "comparable numbers"
        )
        logger.warning(msg)
        notes.append(msg)
    serve_cmd = _serve_command()
    conc: list[int] = list(cfg["concurrency"])
    with tempfile.TemporaryDirectory(prefix="mlserve-bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        openloop_bin, why = compile_openloop(tmp)
        if openloop_bin is None:
            msg = (
                f"bench/openloop.c could not be built ({why}): the open-loop figures come from "
                "the Python asyncio generator instead, whose own scheduling lag (milliseconds "
                "here) shows in its percentiles; install a C compiler for comparable numbers"
            )
            logger.warning(msg)
            notes.append(msg)
        open_generator = C_OPENLOOP if openloop_bin is not None else _PY_OPENLOOP
        port, echo_port, monitored_port = _free_port(), _free_port(), _free_port()
        echo_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.echo_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(echo_port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            # as mlserve serve configures uvicorn (no proxy-headers middleware, no server header)
            "--no-proxy-headers",
            "--no-server-header",
            "--log-level",
            "warning",
            "--workers",
            "1",
        ]
        server_log, echo_log = tmp / "server.log", tmp / "echo.log"
        with _process(echo_cmd, echo_log) as echo_proc:
            row, signature, train_s = _train(tmp)
            common = [*serve_cmd, "--registry", str(tmp / "registry"), "--model", _MODEL,
                      "--host", "127.0.0.1", "--log-level", "warning"]
            cmd = [*common, "--port", str(port), "--no-monitoring"]
            monitored_cmd = [*common, "--port", str(monitored_port), "--monitoring-interval", "1"]
            monitored_log = tmp / "server-monitoring.log"
            with _process(cmd, server_log) as server_proc, \
                    _process(monitored_cmd, monitored_log) as monitored_proc:
                start_s = _wait_ready(server_proc, port, server_log, "mlserve serve")
                _wait_ready(monitored_proc, monitored_port, monitored_log,
                            "mlserve serve (monitoring on)")
                logger.info("trained in %.1f s; server ready %.1f s after start", train_s, start_s)
                _wait_ready(echo_proc, echo_port, echo_log, "the echo server")
                packed, as_json, x = _bodies(row, signature)
                verified = _verify(port, echo_port, packed, as_json)
                bodies = {"msgpack": tmp / "body.msgpack", "json": tmp / "body.json"}
                bodies["msgpack"].write_bytes(packed)
                bodies["json"].write_bytes(as_json)
                targets = {
                    "msgpack": (port, _INFER_PATH, bodies["msgpack"], _MSGPACK),
                    "msgpack+monitoring": (monitored_port, _INFER_PATH, bodies["msgpack"],
                                           _MSGPACK),
                    "json": (port, _INFER_PATH, bodies["json"], _JSON),
                    "echo": (echo_port, _INFER_PATH, bodies["msgpack"], _MSGPACK),
                }

                procs = {"msgpack": server_proc, "json": server_proc,
                         "msgpack+monitoring": monitored_proc, "echo": echo_proc}

                def closed(target: str, c: int, dur: int) -> dict[str, Any]:
                    p, path, body_file, ctype = targets[target]
                    # The monitored server runs only during its own target: its monitoring
                    # thread (1 s ticks over a window of earlier traffic) would otherwise take
                    # CPU from the other targets on a small machine.
                    with _resumed(monitored_proc, target == "msgpack+monitoring"):
                        request = _raw_request(p, path, body_file.read_bytes(), ctype)

                        def load(seconds: int) -> dict[str, Any]:
                            if wrk is not None:
                                return _wrk(wrk, p, path, body_file, ctype, c, seconds)
                            return _py_closed(p, request, c, float(seconds),
                                              min(0.5, seconds / 4))

                        # One unmeasured second first (every target alike): a server just
                        # resumed from SIGSTOP answers its first second measurably slower
                        # (+5..17% CPU per request at c=1 here, gone after a 1 s lead-in).
                        if dur >= _SETTLE_MIN_DURATION_S:
                            load(1)
                        # The server's own CPU per answered request: steadier than req/s on a
                        # machine the generator shares (it does not depend on who got the cores).
                        cpu0 = _tree_cpu_ns(procs[target].pid)
                        r = load(dur)
                        cpu_ns = _tree_cpu_ns(procs[target].pid) - cpu0
                    r["server_cpu_us_per_request"] = (
                        cpu_ns / 1e3 / r["requests"] if cpu_ns > 0 and r["requests"] else
                        float("nan"))
                    return r

                _pause(monitored_proc, True)

                if cfg["warmup_s"]:
                    for target in _TARGETS:
                        closed(target, min(16, max(conc)), cfg["warmup_s"])
                runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
                for _ in range(cfg["repeats"]):
                    for c in conc:
                        for target in _TARGETS:
                            logger.info("closed loop: %s, %d connections", target, c)
                            r = closed(target, c, cfg["duration_s"])
                            runs.setdefault((target, c), []).append(r)
                            if target != "echo" and (server_proc.poll() is not None
                                                     or monitored_proc.poll() is not None):
                                raise RuntimeError(
                                    f"mlserve serve died during the run; log tail:\n"
                                    f"{_tail(server_log)}"
                                )
                closed_m = {key: _median_runs(v) for key, v in runs.items()}

                top = max(conc)
                base_rate = closed_m[("msgpack", top)]["requests_per_s"]
                open_m: list[dict[str, Any]] = []
                msgpack_request = _raw_request(port, _INFER_PATH, packed, _MSGPACK)
                echo_request = _raw_request(echo_port, _INFER_PATH, packed, _MSGPACK)
                for frac in cfg["open_fractions"]:
                    rate = max(1.0, frac * base_rate)
                    logger.info("open loop: %.0f req/s (%.0f%%)", rate, 100 * frac)
                    for target, p, request in (
                        ("msgpack", port, msgpack_request),
                        ("echo", echo_port, echo_request),
                    ):
                        step = (p, request, rate, cfg["open_duration_s"], cfg["open_warmup_s"],
                                _OPEN_CONNECTIONS)
                        if openloop_bin is not None:
                            o = run_openloop(openloop_bin, *step, drain_s=_OPEN_DRAIN_S)
                        else:
                            o = _open_loop(*step)
                        open_m.append({"target": target, "fraction": frac, **o,
                                       "generator": open_generator})
                metrics = _metrics_snapshot(port)
                _pause(monitored_proc, False)
                monitoring = _monitoring_snapshot(monitored_port)
    return _result(
        level,
        cfg,
        wrk,
        conc,
        closed_m,
        open_m,
        metrics,
        notes,
        {
            "train_s": train_s,
            "server_ready_s": start_s,
            "f_in": int(x.shape[1]),
            "msgpack_body_bytes": len(packed),
            "json_body_bytes": len(as_json),
            "serve_command": " ".join(Path(a).name if a == sys.executable else a for a in cmd),
            "monitored_serve_command": " ".join(
                Path(a).name if a == sys.executable else a for a in monitored_cmd),
            "monitoring": monitoring,
            "open_generator": open_generator,
            **verified,
        },
    )


def _monitoring_snapshot(port: int) -> dict[str, Any]:
    """What the monitored server's /monitoring says after the run (rows in its window)."""
    try:
        status, body = _get(port, f"/v2/models/{_MODEL}/monitoring", timeout=5.0)
        version = json.loads(body)["versions"][0]
        return {"status": status, "window_rows": version.get("window_rows"),
                "window": version.get("window")}
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return {"status": None, "error": str(exc)}


def _result(
    level: str,
    cfg: dict[str, Any],
    wrk: str | None,
    conc: list[int],
    closed_m: dict[tuple[str, int], dict[str, Any]],
    open_m: list[dict[str, Any]],
    metrics: dict[str, Any],
    notes: list[str],
    setup: dict[str, Any],
) -> dict[str, Any]:
    ratios: dict[str, float] = {}
    for c in conc:
        echo = closed_m[("echo", c)]["requests_per_s"]
        for target in ("msgpack", "msgpack+monitoring", "json"):
            ratios[f"{target}/echo req/s c={c}"] = closed_m[(target, c)]["requests_per_s"] / echo
        ratios[f"msgpack+monitoring/msgpack req/s c={c}"] = (
            closed_m[("msgpack+monitoring", c)]["requests_per_s"]
            / closed_m[("msgpack", c)]["requests_per_s"])
        # Monitoring's cost as server CPU per request (plain over monitored: 0.95 = 5% more).
        cpu_plain = closed_m[("msgpack", c)]["server_cpu_us_per_request"]
        cpu_monitored = closed_m[("msgpack+monitoring", c)]["server_cpu_us_per_request"]
        if np.isfinite(cpu_plain) and np.isfinite(cpu_monitored) and cpu_monitored > 0:
            ratios[f"msgpack/msgpack+monitoring server CPU per request c={c}"] = (
                cpu_plain / cpu_monitored)
    mp_open = [o for o in open_m if o["target"] == "msgpack"]
    half = min(mp_open, key=lambda o: abs(o["fraction"] - _HALF_LOAD))
    for o in mp_open:
        if o["p99_us"] and np.isfinite(o["p99_us"]) and o["p99_us"] > 0:
            ratios[f"5 ms/p99 msgpack at {o['fraction']:.0%} load"] = _P99_TARGET_US / o["p99_us"]
    head_c = _HEAD_CONCURRENCY if _HEAD_CONCURRENCY in conc else max(conc)
    head_name = f"msgpack/echo req/s c={head_c}"
    half_key = f"5 ms/p99 msgpack at {half['fraction']:.0%} load"
    generator = f"wrk ({wrk})" if wrk else "Python asyncio closed-loop client (wrk missing)"
    if setup["open_generator"] == C_OPENLOOP:
        open_desc = "bench/openloop.c (C, epoll, timerfd; like wrk2 -R)"
        lag_desc = "the generator's wake-up delay, tens of µs when a core is free"
    else:
        open_desc = "Python asyncio (uvloop) generator (bench/openloop.c could not be built)"
        lag_desc = "the generator's ~1 ms timer granularity and its own CPU time"

    measurements: list[dict[str, Any]] = [
        {"kind": "closed", "target": t, "concurrency": c, **closed_m[(t, c)]}
        for c in conc
        for t in _TARGETS
    ]
    measurements += [{"kind": "open", **o} for o in open_m]
    measurements.append({"kind": "setup", **setup})
    if metrics:
        measurements.append({"kind": "server_metrics", **metrics})

    closed_rows = [
        [
            t,
            c,
            closed_m[(t, c)]["requests_per_s"],
            closed_m[(t, c)]["p50_us"],
            closed_m[(t, c)]["p99_us"],
            closed_m[(t, c)]["p999_us"],
            closed_m[(t, c)]["errors"],
            ratios.get(f"{t}/echo req/s c={c}", 1.0),
            closed_m[(t, c)]["server_cpu_us_per_request"],
        ]
        for c in conc
        for t in _TARGETS
    ]
    open_rows = [
        [
            o["target"],
            f"{o['fraction']:.0%}",
            o["offered_per_s"],
            o["achieved_per_s"],
            o["p50_us"],
            o["p99_us"],
            o["p999_us"],
            o["from_send_p99_us"],
            o["send_lag_p99_us"],
            o["errors"],
        ]
        for o in open_m
    ]
    errors = sum(m["errors"] for m in closed_m.values()) + sum(o["errors"] for o in open_m)
    if errors:
        notes.append(
            f"{errors} requests failed (status >= 400 or socket errors); see the errors columns."
        )
    for o in open_m:
        if o["dropped"]:
            notes.append(
                f"open loop {o['target']} at {o['fraction']:.0%}: {o['dropped']} requests "
                f"were still unsent {_OPEN_DRAIN_S:.0f} s after the schedule ended and were "
                "dropped (not in the percentiles)."
            )
        if o["achieved_per_s"] < 0.95 * o["offered_per_s"]:
            notes.append(
                f"open loop {o['target']} at {o['fraction']:.0%}: achieved "
                f"{o['achieved_per_s']:.0f}/s of {o['offered_per_s']:.0f}/s offered (the "
                "server or the generator fell behind)."
            )
    for c in conc:
        cost = ratios[f"msgpack+monitoring/msgpack req/s c={c}"]
        if cost < _MONITORING_TARGET:
            notes.append(f"monitoring cost {1 - cost:.1%} of the msgpack req/s at c={c} "
                         f"(target: at most {1 - _MONITORING_TARGET:.0%}).")
        cpu = ratios.get(f"msgpack/msgpack+monitoring server CPU per request c={c}")
        if cpu is not None and cpu < _MONITORING_TARGET:
            notes.append(f"monitoring costs {1 / cpu - 1:.1%} more server CPU per request at "
                         f"c={c} (target: at most {1 / _MONITORING_TARGET - 1:.0%}).")
    notes += [
        f"monitoring: `{setup['monitored_serve_command']}` serves 'msgpack+monitoring' (row "
        "sample, prediction histogram and prediction log per batch in the core, one "
        "monitoring tick per second); its window held "
        f"{setup['monitoring'].get('window_rows')} rows after the run. 'msgpack' and 'json' "
        "go to the server without monitoring.",
        f"server: `{setup['serve_command']}` (server defaults otherwise: 1 worker, dynamic "
        f"batching); ready {setup['server_ready_s']:.1f} s after start; model trained in "
        f"{setup['train_s']:.1f} s on {_TRAIN_ROWS} rows, f_in = {setup['f_in']}.",
        f"bodies: msgpack {setup['msgpack_body_bytes']} B, JSON {setup['json_body_bytes']} B; "
        f"first answers: probability {setup['msgpack_probability']:.4f} (msgpack) and "
        f"{setup['json_probability']:.4f} (JSON).",
        f"closed loop: {generator}{', -t min(2, C)' if wrk else ''}, C connections, "
        f"{cfg['duration_s']} s per run, {cfg['repeats']} interleaved round(s), medians; "
        "closed-loop latencies include coordinated omission, so the open-loop table is the "
        "one to read for latency under load.",
        f"open loop: {open_desc}, fixed schedule over {_OPEN_CONNECTIONS} keep-alive "
        "connections, latency from the scheduled send time; 'send lag p99' is how long "
        f"requests waited between their scheduled time and their write ({lag_desc}, plus "
        "waiting for a free connection once the server falls behind); 'p99 from send' "
        "excludes it.",
        f"the load generator and both servers share this machine's {os.cpu_count()} logical "
        "cores, so every figure includes contention with the generator.",
    ]
    if metrics.get("status") == 200:
        extra = ""
        if "mean_batch_rows" in metrics:
            extra += f", mean batch {metrics['mean_batch_rows']:.1f} rows"
        if "server_mean_latency_us" in metrics:
            extra += f", server-side mean latency {metrics['server_mean_latency_us']:.0f} µs"
        notes.append(
            f"/metrics after the run: {metrics['bytes']} bytes, {metrics['samples']} "
            f"samples{extra}."
        )
    elif metrics:
        notes.append(f"/metrics not available ({metrics}).")

    return {
        "parameters": {
            "level": level,
            "model": _MODEL,
            "train_rows": _TRAIN_ROWS,
            "train_config": _TRAIN_CONFIG,
            "f_in": setup["f_in"],
            "generator": generator,
            "open_generator": setup["open_generator"],
            "open_connections": _OPEN_CONNECTIONS,
            "p99_target_us": _P99_TARGET_US,
            **cfg,
        },
        "baseline": "bench/echo_app.py (raw ASGI: read the body, answer 200 with the same "
        "bytes) on uvicorn + uvloop + httptools, 1 worker, no access log, no proxy-headers "
        "middleware and no server header (as mlserve serve), sent the msgpack "
        "body; ratios are mlserve req/s over echo req/s at the same concurrency, and the 5 ms "
        "target over mlserve's open-loop p99",
        "measurements": measurements,
        "ratios": ratios,
        "headline": {
            "name": head_name,
            "value": ratios[head_name],
            "target": _TARGET_RATIO,
            "meaning": f"one-row msgpack inference req/s through `mlserve serve` over a raw "
            f"ASGI echo's req/s with {head_c} connections (same stack, same body); the p99 at "
            f"{half['fraction']:.0%} of msgpack's closed-loop peak "
            f"({half['offered_per_s']:.0f} req/s, open loop) is {half['p99_us']:.0f} µs vs "
            f"the {_P99_TARGET_US / 1000:.0f} ms target (`{half_key}` = "
            f"{ratios.get(half_key, float('nan')):.2f}, ≥ 1 meets it)",
        },
        "tables": [
            {
                "title": "Closed loop (median req/s and latency µs per target and concurrency)",
                "columns": [
                    "target",
                    "C",
                    "req/s",
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "errors",
                    "req/s / echo",
                    "server CPU µs/req",
                ],
                "rows": closed_rows,
            },
            {
                "title": "Open loop (fixed schedule; latency from the scheduled send, µs)",
                "columns": [
                    "target",
                    "load",
                    "offered/s",
                    "achieved/s",
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "p99 from send",
                    "send lag p99",
                    "errors",
                ],
                "rows": open_rows,
            },
        ],
        "plots": [
            {
                "title": "Closed loop req/s",
                "xlabel": "concurrency (connections)",
                "ylabel": "req/s",
                "x": conc,
                "logx": True,
                "series": {t: [closed_m[(t, c)]["requests_per_s"] for c in conc] for t in _TARGETS},
            },
            {
                "title": "Closed loop p99 (µs)",
                "xlabel": "concurrency (connections)",
                "ylabel": "µs",
                "x": conc,
                "logx": True,
                "logy": True,
                "series": {t: [closed_m[(t, c)]["p99_us"] for c in conc] for t in _TARGETS},
            },
            {
                "title": "Open loop latency (from scheduled send)",
                "xlabel": "offered req/s",
                "ylabel": "µs",
                "x": [o["offered_per_s"] for o in mp_open],
                "logy": True,
                "hline": _P99_TARGET_US,
                "series": {
                    "msgpack p50": [o["p50_us"] for o in mp_open],
                    "msgpack p99": [o["p99_us"] for o in mp_open],
                    "echo p99": [o["p99_us"] for o in open_m if o["target"] == "echo"],
                },
            },
        ],
        "notes": notes,
    }
