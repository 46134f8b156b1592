"""mlserve.client against a real server process, and tritonclient against the same server.

Two parts. The first runs everywhere: the client's own wire code (msgpack and v2 JSON request
encoding, response decoding incl. the binary tensor extension, HTTP status -> typed error) and
both clients end to end over an ``httpx.MockTransport`` that plays a small v2 server.

The second trains a small fraud model into a temporary registry, starts ``mlserve serve``
(``python -m mlserve.server.cli``) on a free port of 127.0.0.1 and checks that the sync and the
async client, with both codecs, and tritonclient (JSON and binary tensors, binary outputs on and
off) return exactly what ``Engine.from_registry(...).predict`` returns on the same rows; typed
errors for an unknown model and bad input; and the admin routes behind a token. It is skipped,
with the reason, only when ``mlserve.server.app`` cannot be imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import orjson
import pytest
from mlserve.client import (
    AsyncClient,
    Client,
    InferResult,
    Unauthorized,
    decode_json_response,
    decode_msgpack_response,
    encode_json_request,
    encode_msgpack_request,
    error_from_response,
    make_tensors,
)
from mlserve.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    MlserveError,
    ModelNotFound,
    Overloaded,
    QueueFull,
    Unavailable,
)

CODECS = ["msgpack", "json"]
#: Seconds the server gets to train-free start: import, load and warm the model.
START_S = 60.0
ATOL = 1e-5

# ---- unit: encoding ------------------------------------------------------------------------------


def test_an_ndarray_is_one_tensor_named_input() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (t,) = make_tensors(x)
    assert (t.name, t.datatype, t.shape) == ("input", "FP32", [2, 3])
    (row,) = make_tensors(np.arange(3, dtype=np.float64))  # 1-D: one row, dtype kept
    assert (row.datatype, row.shape) == ("FP64", [1, 3])
    with pytest.raises(InvalidInput, match="2-D"):
        make_tensors(np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(InvalidInput, match="no KServe v2 datatype"):
        make_tensors(np.zeros((2, 2), dtype=np.complex64))
    with pytest.raises(InvalidInput):
        make_tensors({})


def test_a_dict_is_one_tensor_per_name_with_strings_as_bytes() -> None:
    tensors = make_tensors(
        {
            "amount": np.array([1.5, np.nan], dtype=np.float32),
            "country": ["US", None],
            "channel": np.array(["web", float("nan")], dtype=object),
            "code": np.array([3, 4], dtype=">i8"),  # big-endian in, little-endian out
            "flag": np.array([True, False]),
        }
    )
    by_name = {t.name: t for t in tensors}
    assert [t.datatype for t in tensors] == ["FP32", "BYTES", "BYTES", "INT64", "BOOL"]
    assert by_name["country"].data.tolist() == [b"US", b""]  # missing -> "" (server: missing)
    assert by_name["channel"].data.tolist() == [b"web", b""]
    assert by_name["code"].data.dtype.str == "<i8"
    assert by_name["code"].data.tolist() == [3, 4]


def test_msgpack_request_carries_raw_little_endian_bytes() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = encode_msgpack_request(
        make_tensors({"x": x, "s": ["a", "bé"]}),
        request_id="r1",
        parameters={"priority": 1},
        outputs=["probability"],
    )
    decoded = msgpack.unpackb(body, raw=False)
    assert decoded["id"] == "r1"
    assert decoded["parameters"] == {"priority": 1}
    assert decoded["outputs"] == [{"name": "probability"}]
    tx, ts = decoded["inputs"]
    assert (tx["name"], tx["datatype"], tx["shape"]) == ("x", "FP32", [3, 4])
    assert isinstance(tx["data"], bytes) and len(tx["data"]) == x.nbytes
    np.testing.assert_array_equal(np.frombuffer(tx["data"], "<f4").reshape(3, 4), x)
    assert ts["data"] == [b"a", "bé".encode()]


def test_json_request_is_flat_v2() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    content, headers = encode_json_request(
        make_tensors({"x": x, "s": ["a", "b"]}),
        parameters={"priority": 2, "timeout": 500},
        outputs=["probability"],
    )
    assert headers == {"content-type": "application/json"}
    body = orjson.loads(content)
    tx, ts = body["inputs"]
    assert tx == {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}
    assert ts == {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
    assert body["parameters"] == {"priority": 2, "timeout": 500}
    assert body["outputs"] == [{"name": "probability", "parameters": {"binary_data": False}}]
    assert "id" not in body


def test_json_request_sends_what_json_cannot_carry_as_binary() -> None:
    x = np.array([[1.0, np.nan], [np.inf, 4.0]], dtype=np.float32)
    content, headers = encode_json_request(
        make_tensors({"x": x, "n": np.array([5, 6]), "s": [b"\xff", b"ok"]}), request_id="r"
    )
    length = int(headers["Inference-Header-Content-Length"])
    assert headers["content-type"] == "application/octet-stream"
    body = orjson.loads(content[:length])
    tx, tn, ts = body["inputs"]
    assert tx["parameters"] == {"binary_data_size": x.nbytes} and "data" not in tx
    assert tn["data"] == [5, 6]
    strings = struct.pack("<I", 1) + b"\xff" + struct.pack("<I", 2) + b"ok"
    assert ts["parameters"] == {"binary_data_size": len(strings)}
    tail = content[length:]
    np.testing.assert_array_equal(np.frombuffer(tail[: x.nbytes], "<f4").reshape(2, 2), x)
    assert tail[x.nbytes :] == strings


# ---- unit: decoding ------------------------------------------------------------------------------


def test_msgpack_response_decodes_with_frombuffer() -> None:
    y = np.array([[0.25], [0.5]], dtype=np.float32)
    ids = np.array([7, 8], dtype=np.int64)
    body = msgpack.packb(
        {
            "model_name": "fraud",
            "model_version": "3",
            "id": "abc",
            "outputs": [
                {"name": "p", "datatype": "FP32", "shape": [2, 1], "data": y.tobytes()},
                {"name": "i", "datatype": "INT64", "shape": [2], "data": ids.tobytes()},
                {"name": "s", "datatype": "BYTES", "shape": [2], "data": [b"x", b"yz"]},
            ],
        },
        use_bin_type=True,
    )
    result = decode_msgpack_response(body)
    assert (result.model_name, result.model_version, result.id) == ("fraud", "3", "abc")
    np.testing.assert_array_equal(result.outputs["p"], y)
    assert result.outputs["p"].dtype == np.float32
    np.testing.assert_array_equal(result.outputs["i"], ids)
    assert result.outputs["s"].tolist() == [b"x", b"yz"]
    with pytest.raises(InvalidInput, match="3 outputs"):
        _ = result.output
    with pytest.raises(InternalError, match="malformed"):
        decode_msgpack_response(b"\xc1")
    bad = {"outputs": [{"name": "p", "datatype": "FP32", "shape": [3], "data": b"\0" * 4}]}
    with pytest.raises(InternalError, match="does not fit"):
        decode_msgpack_response(msgpack.packb(bad))


def test_json_response_with_and_without_the_binary_extension() -> None:
    plain = orjson.dumps(
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [{"name": "p", "datatype": "FP32", "shape": [2, 1], "data": [0.5, 1.5]}],
        }
    )
    result = decode_json_response(plain)
    np.testing.assert_array_equal(result.output, np.array([[0.5], [1.5]], dtype=np.float32))
    assert result.id is None

    y = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"c"))
    header = orjson.dumps(
        {
            "model_name": "m",
            "model_version": "2",
            "id": "q",
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [3],
                 "parameters": {"binary_data_size": y.nbytes}},
                {"name": "j", "datatype": "INT32", "shape": [1], "data": [9]},
                {"name": "s", "datatype": "BYTES", "shape": [3],
                 "parameters": {"binary_data_size": len(strings)}},
            ],
        }
    )
    result = decode_json_response(header + y.tobytes() + strings, len(header))
    np.testing.assert_array_equal(result.outputs["y"], y)
    assert result.outputs["j"].tolist() == [9]
    assert result.outputs["s"].tolist() == [b"ab", b"", b"c"]
    assert (result.model_version, result.id) == ("2", "q")
    with pytest.raises(InternalError, match="truncated"):
        decode_json_response(header + y.tobytes()[:-1], len(header))


# ---- unit: errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidInput),
        (401, Unauthorized),
        (404, ModelNotFound),
        (413, InvalidInput),
        (429, QueueFull),
        (500, InternalError),
        (503, Unavailable),
        (504, DeadlineExceeded),
        (418, InvalidInput),
        (502, InternalError),
    ],
)
def test_http_status_becomes_the_mlserve_error(status: int, cls: type[MlserveError]) -> None:
    headers = {"retry-after": "2"} if status in (429, 503) else {}
    response = httpx.Response(status, json={"error": "what went wrong"}, headers=headers)
    exc = error_from_response(response)
    assert type(exc) is cls
    assert "what went wrong" in str(exc)
    assert exc.status_code == status  # type: ignore[attr-defined]
    assert exc.retry_after == (2.0 if headers else None)  # type: ignore[attr-defined]
    if status == 413:
        assert "too large" in str(exc) and "fewer rows" in str(exc)
    if status == 401:
        assert "token" in str(exc)


def test_error_body_code_and_non_json_bodies() -> None:
    exc = error_from_response(httpx.Response(429, json={"error": "busy", "code": "overloaded"}))
    assert type(exc) is Overloaded
    exc = error_from_response(httpx.Response(502, text="Bad Gateway from the proxy"))
    assert type(exc) is InternalError and "Bad Gateway from the proxy" in str(exc)
    exc = error_from_response(httpx.Response(404, content=b""))
    assert type(exc) is ModelNotFound and str(exc)


# ---- unit: both clients over a mock transport ----------------------------------------------------

TOKEN = "s3cret-token"


def _fake_server(request: httpx.Request) -> httpx.Response:
    """A tiny v2 server: doubles every numeric input; admin routes need TOKEN."""
    path = request.url.path
    if path == "/v2/health/live":
        return httpx.Response(200, json={"live": True})
    if path == "/v2/health/ready":
        return httpx.Response(503, json={"ready": False})
    if path == "/v2":
        return httpx.Response(200, json={"name": "fake", "version": "0", "extensions": []})
    if path.startswith("/v2/repository"):
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"error": "admin routes need a token"})
        if path.endswith("/index"):
            return httpx.Response(200, json=[{"name": "m", "version": "1", "state": "READY"}])
        params = orjson.loads(request.content or b"{}").get("parameters", {})
        return httpx.Response(200, json={"path": path, "parameters": params})
    if path in ("/v2/models/m", "/v2/models/m/versions/2"):
        return httpx.Response(200, json={"name": "m", "versions": ["1", "2"]})
    if path == "/v2/models/m/ready":
        return httpx.Response(200, json={"ready": True})
    if not path.startswith("/v2/models/m/") or not path.endswith("/infer"):
        return httpx.Response(404, json={"error": f"no model at {path}"})
    version = "2" if "/versions/2/" in path else "1"
    if request.headers["content-type"] == "application/msgpack":
        body = msgpack.unpackb(request.content, raw=False)
        x = np.frombuffer(body["inputs"][0]["data"], "<f4").reshape(body["inputs"][0]["shape"])
        out = {"name": "y", "datatype": "FP32", "shape": list(x.shape), "data": (2 * x).tobytes()}
        reply = {"model_name": "m", "model_version": version, "id": body.get("id"),
                 "outputs": [out], "parameters": body.get("parameters", {})}
        return httpx.Response(200, content=msgpack.packb(reply),
                              headers={"content-type": "application/msgpack"})
    body = orjson.loads(request.content)
    x = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(body["inputs"][0]["shape"])
    if x.shape[-1] == 1:
        return httpx.Response(400, json={"error": "expected 2 features"})
    data = (2 * x).ravel().tolist()
    out = {"name": "y", "datatype": "FP32", "shape": list(x.shape), "data": data}
    reply = {"model_name": "m", "model_version": version, "id": body.get("id", ""),
             "outputs": [out], "parameters": body.get("parameters", {})}
    return httpx.Response(200, json=reply)


@pytest.mark.parametrize("codec", CODECS)
def test_sync_client_over_a_mock_transport(codec: Any) -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    transport = httpx.MockTransport(_fake_server)
    with Client("http://fake", codec=codec, transport=transport, token=TOKEN) as client:
        assert client.live() is True
        assert client.ready() is False
        assert client.model_ready("m") is True
        assert client.model_ready("nope") is False
        assert client.server_metadata()["name"] == "fake"
        assert client.model_metadata("m", version=2)["versions"] == ["1", "2"]
        result = client.infer("m", x, version=2, priority=1, timeout_us=500, request_id="r")
        assert isinstance(result, InferResult)
        np.testing.assert_array_equal(result.output, 2 * x)
        assert (result.model_version, result.id) == ("2", "r")
        assert result.parameters == {"priority": 1, "timeout": 500}
        with pytest.raises(ModelNotFound, match="no model"):
            client.infer("other", x)
        assert client.repository_index() == [{"name": "m", "version": "1", "state": "READY"}]
        loaded = client.load("m", ref="m@champion")
        assert loaded == {"path": "/v2/repository/models/m/load",
                          "parameters": {"ref": "m@champion"}}
        assert client.unload("m")["path"] == "/v2/repository/models/m/unload"
        with pytest.raises(Unauthorized, match="token"):
            client.load("m", token="wrong")
    if codec == "json":
        with Client("http://fake", codec="json", transport=transport) as client:
            with pytest.raises(InvalidInput, match="expected 2 features"):
                client.infer("m", x[:, :1])


@pytest.mark.parametrize("codec", CODECS)
def test_async_client_over_a_mock_transport(codec: Any) -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)

    async def main() -> None:
        transport = httpx.MockTransport(_fake_server)
        async with AsyncClient("http://fake", codec=codec, transport=transport) as client:
            assert await client.live() is True
            assert await client.ready() is False
            assert await client.model_ready("m") is True
            assert (await client.server_metadata())["name"] == "fake"
            assert (await client.model_metadata("m"))["name"] == "m"
            results = await asyncio.gather(*(client.infer("m", x * i) for i in range(4)))
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.output, 2 * i * x)
            with pytest.raises(ModelNotFound):
                await client.infer("other", x)
            with pytest.raises(Unauthorized):
                await client.repository_index()
            assert len(await client.repository_index(token=TOKEN)) == 1
            assert (await client.load("m", token=TOKEN))["parameters"] == {}
            assert (await client.unload("m", token=TOKEN))["path"].endswith("/unload")

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_server_is_unavailable_and_not_live() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with Client(url, timeout=5) as client:
        assert client.live() is False
        with pytest.raises(Unavailable, match="cannot reach"):
            client.infer("m", np.zeros((1, 2), dtype=np.float32))

    async def main() -> None:
        async with AsyncClient(url, timeout=5) as client:
            assert await client.ready() is False
            with pytest.raises(Unavailable, match="cannot reach"):
                await client.server_metadata()

    asyncio.run(main())


def test_bad_client_arguments() -> None:
    with pytest.raises(InvalidInput, match="codec"):
        Client(codec="xml")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="max_connections"):
        Client(max_connections=0)


# ---- a real server -------------------------------------------------------------------------------


def _server_import_error() -> str | None:
    try:
        importlib.import_module("mlserve.server.app")
    except ImportError as exc:
        return f"mlserve.server.app cannot be imported ({exc}); no server to test against"
    return None


@dataclass
class Served:
    url: str
    port: int
    registry: Path
    version: str
    token: str
    x: np.ndarray  # encoded rows [n, f] float32
    want: np.ndarray  # Engine.predict(x)
    x_filled: np.ndarray  # x with NaN (missing) as 0: for clients whose JSON cannot carry NaN
    want_filled: np.ndarray  # Engine.predict(x_filled)
    columns: dict[str, Any]  # raw per-feature values (numbers float32, categoricals strings)
    f_in: int


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_S
    with Client(url, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            if client.ready():
                return
            time.sleep(0.1)
    raise RuntimeError(f"server not ready within {START_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    reason = _server_import_error()
    if reason is not None:
        pytest.skip(reason)
    from mlserve import BatcherConfig, Engine
    from mlserve.registry import Registry
    from mlserve.trainer import datasets, encode_rows, train

    root = tmp_path_factory.mktemp("client")
    registry = Registry(root / "registry")
    result = train(
        datasets.card_transactions(3000),
        "is_fraud",
        name="fraud",
        timestamp="event_ts",
        config={"exclude": ["user_id", "merchant_id"], "epochs": 2, "hidden": [16]},
        registry=registry,
        out_dir=root / "bundle",
        progress=False,
    )
    version = str(result.model_version.version)
    frame = result.test_frame.head(97).reset_index(drop=True)  # odd size
    frame.loc[0, "country"] = None  # a missing category
    frame.loc[1, "channel"] = "never-seen"  # an unseen one: the out-of-vocabulary slot
    config = BatcherConfig(max_batch_size=256)
    with Engine.from_registry(f"fraud/{version}", registry=registry, config=config) as engine:
        inputs = engine.bundle.signature["inputs"]
        x = encode_rows(frame, inputs)
        want = engine.predict(x)
        x_filled = np.nan_to_num(x, nan=0.0)
        want_filled = engine.predict(x_filled)
    columns: dict[str, Any] = {}
    for spec in inputs:
        values = frame[spec["name"]]
        if spec["kind"] == "categorical" and "vocabulary" in spec:
            columns[spec["name"]] = [None if v is None or v != v else str(v) for v in values]
        else:
            columns[spec["name"]] = values.to_numpy(np.float32)

    # Missing values on both paths: NaN numbers (binary in the JSON codec) and None categories.
    assert np.isnan(x).any()
    assert any(v is None for values in columns.values() if isinstance(values, list) for v in values)
    token = "client-test-token"
    (root / "token").write_text(token + "\n")
    extra = ["--admin-token-file", str(root / "token")]
    with _server(root / "registry", extra, root / "server.log") as port:
        yield Served(
            url=f"http://127.0.0.1:{port}",
            port=port,
            registry=root / "registry",
            version=version,
            token=token,
            x=x,
            want=want,
            x_filled=x_filled,
            want_filled=want_filled,
            columns=columns,
            f_in=x.shape[1],
        )


@contextlib.contextmanager
def _server(registry: Path, extra: list[str], log: Path) -> Iterator[int]:
    """``mlserve serve`` of the model "fraud" on a free port; yields the port once ready."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "mlserve.server.cli", "--registry", str(registry),
            "--model", "fraud", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_predictions(result: InferResult, served: Served, rows: slice = slice(None)) -> None:
    assert result.model_version == served.version
    got = result.outputs["probability"]
    want = served.want[rows]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("codec", CODECS)
def test_sync_client_matrix_equals_engine_predict(served: Served, codec: Any) -> None:
    with Client(served.url, codec=codec) as client:
        assert client.live() and client.ready()
        assert client.model_ready("fraud") and client.model_ready("fraud", served.version)
        result = client.infer("fraud", served.x, request_id="req-1")
        _assert_predictions(result, served)
        assert result.id == "req-1"
        assert result.model_name == "fraud"
        one = client.infer("fraud", served.x[3], version=served.version, priority=1,
                           timeout_us=10_000_000, outputs=["probability"])
        _assert_predictions(one, served, slice(3, 4))


@pytest.mark.parametrize("codec", CODECS)
def test_sync_client_per_feature_tensors_equal_engine_predict(served: Served, codec: Any) -> None:
    with Client(served.url, codec=codec) as client:
        _assert_predictions(client.infer("fraud", served.columns), served)


@pytest.mark.parametrize("codec", CODECS)
def test_async_client_equals_engine_predict(served: Served, codec: Any) -> None:
    chunks = [slice(i, min(i + 13, len(served.x))) for i in range(0, len(served.x), 13)]

    async def main() -> None:
        async with AsyncClient(served.url, codec=codec, max_connections=4) as client:
            assert await client.live() and await client.ready()
            assert await client.model_ready("fraud")
            results = await asyncio.gather(
                *(client.infer("fraud", served.x[s], request_id=str(i))
                  for i, s in enumerate(chunks))
            )
            for i, (s, result) in enumerate(zip(chunks, results, strict=True)):
                _assert_predictions(result, served, s)
                assert result.id == str(i)
            _assert_predictions(await client.infer("fraud", served.columns), served)
            with pytest.raises(ModelNotFound):
                await client.infer("no-such-model", served.x)

    asyncio.run(main())


def test_metadata(served: Served) -> None:
    with Client(served.url) as client:
        meta = client.server_metadata()
        assert meta["name"] == "mlserve" and "msgpack" in meta["extensions"]
        model = client.model_metadata("fraud")
        assert model["name"] == "fraud" and served.version in model["versions"]
        assert [i["name"] for i in model["inputs"]] == list(served.columns)
        assert [o["name"] for o in model["outputs"]] == ["probability"]
        assert client.model_metadata("fraud", served.version)["name"] == "fraud"
        assert client.model_ready("no-such-model") is False


@pytest.mark.parametrize("codec", CODECS)
def test_typed_errors_carry_the_server_message(served: Served, codec: Any) -> None:
    with Client(served.url, codec=codec) as client:
        with pytest.raises(ModelNotFound, match="no-such-model") as not_found:
            client.infer("no-such-model", served.x)
        assert not_found.value.status_code == 404  # type: ignore[attr-defined]
        with pytest.raises(ModelNotFound):
            client.model_metadata("no-such-model")
        with pytest.raises(ModelNotFound):
            client.infer("fraud", served.x, version="999")
        with pytest.raises(InvalidInput) as bad_width:
            client.infer("fraud", served.x[:, :3])
        assert str(bad_width.value) and bad_width.value.status_code == 400  # type: ignore[attr-defined]
        with pytest.raises(InvalidInput, match="missing inputs"):
            client.infer("fraud", {"amount": np.ones(2, dtype=np.float32)})
        with pytest.raises(InvalidInput, match="unknown outputs"):
            client.infer("fraud", served.x, outputs=["nope"])


def test_admin_routes_need_the_token(served: Served) -> None:
    with Client(served.url) as client:
        with pytest.raises(Unauthorized, match="token"):
            client.repository_index()
        with pytest.raises(Unauthorized):
            client.load("fraud", token="wrong")
        index = client.repository_index(token=served.token)
        assert {"name": "fraud", "version": served.version, "state": "READY"}.items() <= (
            index[0].items()
        )
    with Client(served.url, token=served.token) as admin:
        loaded = admin.load("fraud", ref=f"fraud/{served.version}")
        assert loaded["version"] == served.version
        with pytest.raises(InvalidInput):
            admin.load("fraud", ref="other/1")
        _assert_predictions(admin.infer("fraud", served.x), served)


def test_deadline_and_body_limit_become_typed_errors(served: Served, tmp_path: Path) -> None:
    with Client(served.url) as client:
        with pytest.raises(DeadlineExceeded, match="not executed") as late:
            client.infer("fraud", served.x, timeout_us=1)  # expires in the batching queue
        assert late.value.status_code == 504  # type: ignore[attr-defined]
    with _server(served.registry, ["--max-body-bytes", "2048"], tmp_path / "small.log") as port:
        with Client(f"http://127.0.0.1:{port}") as small:
            _assert_predictions(small.infer("fraud", served.x[:4]), served, slice(0, 4))
            with pytest.raises(InvalidInput, match=r"too large.*fewer rows") as big:
                small.infer("fraud", served.x)
            assert big.value.status_code == 413  # type: ignore[attr-defined]


# ---- tritonclient against the same server --------------------------------------------------------


@pytest.fixture(scope="module")
def triton(served: Served) -> Iterator[Any]:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        yield client
    finally:
        client.close()


def test_tritonclient_health_and_metadata(served: Served, triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("fraud")
    assert triton.get_server_metadata()["name"] == "mlserve"
    meta = triton.get_model_metadata("fraud")
    assert meta["name"] == "fraud"
    assert [o["name"] for o in meta["outputs"]] == ["probability"]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_tritonclient_infer_equals_engine_predict(
    served: Served, triton: Any, binary_in: bool, binary_out: bool
) -> None:
    import tritonclient.http as httpclient

    # tritonclient writes NaN into JSON as a bare NaN token, which is not JSON: fill it there.
    x, want = (served.x, served.want) if binary_in else (served.x_filled, served.want_filled)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    wanted = httpclient.InferRequestedOutput("probability", binary_data=binary_out)
    result = triton.infer("fraud", [tensor], outputs=[wanted], request_id="t-1")
    got = result.as_numpy("probability")
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=ATOL)
    response = result.get_response()
    assert response["model_name"] == "fraud"
    assert response["model_version"] == served.version
    assert response["id"] == "t-1"


def test_tritonclient_errors(served: Served, triton: Any) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("input", [1, served.f_in], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, served.f_in), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="no-such-model"):
        triton.infer("no-such-model", [tensor])
