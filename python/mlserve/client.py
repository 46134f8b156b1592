"""HTTP client of the mlserve server: KServe v2 routes, msgpack or v2 JSON bodies, typed errors.

``Client`` (blocking, on ``httpx.Client``) and ``AsyncClient`` (asyncio, on
``httpx.AsyncClient``) share everything but the transport: each call is built as a ``_Call``
(method, path, headers, body) and its answer is parsed by the same functions, so the two never
drift apart. Both keep one connection pool (keep-alive) for their lifetime; use them as context
managers, or call ``close()``. A client is safe to share between threads (sync) or tasks
(async), like the httpx client under it.

Wire formats follow docs/server_contract.md: with ``codec="msgpack"`` (the default) every
tensor travels as raw little-endian bytes plus datatype and shape, and is decoded with
``np.frombuffer`` (read-only arrays that share the response buffer); with ``codec="json"``
tensors are flat v2 JSON lists, except those JSON cannot carry (NaN, infinity, non-UTF-8
strings), which go in the binary tensor data extension. HTTP errors become the
``mlserve.errors`` class of their status (``InvalidInput`` 400/413, ``Unauthorized`` 401/403,
``ModelNotFound`` 404, ``QueueFull`` 429, ``InternalError`` 500, ``Unavailable`` 503,
``DeadlineExceeded`` 504), carrying the server's message, ``status_code`` and ``retry_after``
(seconds, or None) as attributes.

This module needs only numpy, httpx, msgpack and orjson: it never imports the server.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeAlias
from urllib.parse import quote

import httpx
import msgpack
import numpy as np
import orjson

from mlserve.errors import (
    BY_CODE,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    MlserveError,
    ModelNotFound,
    Overloaded,
    QueueFull,
    Unavailable,
)

Codec = Literal["msgpack", "json"]
#: What ``infer`` accepts: one [n, f] array (sent as the tensor "input"), or one tensor per name.
Inputs: TypeAlias = "np.ndarray | Mapping[str, np.ndarray | Sequence[Any]]"

MSGPACK_CONTENT_TYPE = "application/msgpack"
JSON_CONTENT_TYPE = "application/json"
OCTET_CONTENT_TYPE = "application/octet-stream"
#: Header of the v2 binary tensor data extension: length of the JSON part of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Name of the tensor an ndarray passed to ``infer`` is sent as.
DEFAULT_INPUT_NAME = "input"

_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_KIND_SIZE = {(dt.kind, dt.itemsize): name for name, dt in _DATATYPES.items()}


class Unauthorized(MlserveError, PermissionError):
    """The server refused the call for a missing or wrong admin token (HTTP 401/403)."""

    http_status = 401
    code = "unauthorized"


@dataclass
class InferResult:
    """The answer to one ``infer`` call.

    ``outputs`` maps each output name to its array (numeric arrays decoded from msgpack are
    read-only views of the response; BYTES outputs are object arrays of ``bytes``).
    """

    outputs: dict[str, np.ndarray]
    model_version: str
    id: str | None
    model_name: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    """The server's request id (``x-request-id``): the id feedback labels are joined by."""

    @property
    def output(self) -> np.ndarray:
        """The only output; raises ``InvalidInput`` when the model has several."""
        if len(self.outputs) != 1:
            raise InvalidInput(
                f"the result has {len(self.outputs)} outputs ({', '.join(self.outputs)}); "
                "pick one from .outputs"
            )
        return next(iter(self.outputs.values()))


# ---- tensors ----------------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # little-endian C-contiguous; BYTES: a flat object array of bytes


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of ``array`` ("BYTES" for strings and object arrays)."""
    if array.dtype.kind in "USO":
        return "BYTES"
    name = _BY_KIND_SIZE.get((array.dtype.kind, array.dtype.itemsize))
    if name is None:
        raise InvalidInput(
            f"dtype {array.dtype} has no KServe v2 datatype; use bool, (u)int8-64, float16-64 "
            "or strings"
        )
    return name


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The little-endian numpy dtype of the v2 ``datatype`` (BYTES is ``object``)."""
    if datatype == "BYTES":
        return np.dtype(object)
    try:
        return _DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(_DATATYPES)}, BYTES"
        ) from None


def _to_bytes(value: Any) -> bytes:
    """One BYTES element; a missing value (None, NaN) is the empty string, which the server
    reads as missing."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if value is None or (isinstance(value, float) and value != value):
        return b""
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()


def _tensor(name: str, value: Any) -> _Tensor:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    datatype = datatype_of(array)
    shape = [int(d) for d in array.shape]
    if datatype == "BYTES":
        flat = np.empty(array.size, dtype=object)
        flat[:] = [_to_bytes(v) for v in array.ravel().tolist()]
        return _Tensor(name, datatype, shape, flat)
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return _Tensor(name, datatype, shape, data)


def make_tensors(inputs: Inputs) -> list[_Tensor]:
    """Tensors of ``infer``'s inputs: an ndarray is the tensor "input" [n, f] (a 1-D array is
    one row); a mapping gives one tensor per name (strings, bytes and object arrays → BYTES,
    with None/NaN sent as the empty string: missing). Numeric arrays keep their dtype."""
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 1:
            inputs = inputs.reshape(1, -1)
        if inputs.ndim != 2:
            raise InvalidInput(
                f"inputs: expected a 2-D array [rows, features], got shape {list(inputs.shape)}; "
                "pass a dict to send tensors of other shapes"
            )
        return [_tensor(DEFAULT_INPUT_NAME, inputs)]
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput(
            "inputs: expected an ndarray [rows, features] or a non-empty dict of name -> array"
        )
    return [_tensor(str(name), value) for name, value in inputs.items()]


def _parameters(
    priority: int | None, timeout_us: int | None, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    params: dict[str, Any] = dict(extra or {})
    if priority is not None:
        params["priority"] = int(priority)
    if timeout_us is not None:
        params["timeout"] = int(timeout_us)  # v2/Triton request parameter, in microseconds
    return params


# ---- msgpack ------------------------------------------------------------------------------------


def encode_msgpack_request(
    tensors: Sequence[_Tensor],
    *,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
) -> bytes:
    """The msgpack body of an infer request (numeric data as raw little-endian bytes)."""
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "data": t.data.tolist() if t.datatype == "BYTES" else t.data.data,
            }
            for t in tensors
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _array(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    try:
        if datatype == "BYTES":
            flat = np.empty(len(data), dtype=object)
            flat[:] = [_to_bytes(v) for v in data]
            return flat.reshape(shape)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        return np.asarray(data, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise InternalError(
            f"output '{name}': the server sent data that does not fit {datatype} {shape}: {exc}"
        ) from None


def _result(body: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> InferResult:
    version = body.get("model_version")
    rid = body.get("id")
    return InferResult(
        outputs=arrays,
        model_version="" if version is None else str(version),
        id=None if rid is None or rid == "" else str(rid),
        model_name=str(body.get("model_name", "")),
        parameters=dict(body.get("parameters") or {}),
    )


def decode_msgpack_response(content: bytes) -> InferResult:
    """An ``InferResult`` from a msgpack infer response (arrays via ``np.frombuffer``)."""
    try:
        body = msgpack.unpackb(content, raw=False)
        arrays = {
            str(o["name"]): _array(
                str(o["name"]), str(o["datatype"]), [int(d) for d in o["shape"]], o["data"]
            )
            for o in body["outputs"]
        }
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise InternalError(f"malformed msgpack response from the server: {exc!r}") from None
    return _result(body, arrays)


# ---- v2 JSON ------------------------------------------------------------------------------------


def _json_data(t: _Tensor) -> Any | None:
    """The flat JSON data list of ``t``, or None when JSON cannot carry it (NaN/inf, or BYTES
    that are not UTF-8): such a tensor travels in binary form instead."""
    if t.datatype != "BYTES":
        if t.data.dtype.kind == "f" and not np.isfinite(t.data).all():
            return None
        return t.data.reshape(-1)  # orjson writes numpy arrays natively
    try:
        return [v.decode() for v in t.data.tolist()]
    except UnicodeDecodeError:
        return None


def _binary_data(t: _Tensor) -> bytes:
    """``t`` in the binary tensor extension: raw little-endian bytes; BYTES elements each
    prefixed by their 4-byte little-endian length."""
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in t.data.tolist())
    return t.data.tobytes()


def encode_json_request(
    tensors: Sequence[_Tensor],
    *,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The v2 JSON body of an infer request (flat data lists) and its extra headers.

    JSON has no NaN or infinity and only UTF-8 strings: a tensor holding those travels in the
    binary tensor data extension after the JSON (``parameters.binary_data_size``), and the
    headers then carry ``Inference-Header-Content-Length`` and an octet-stream content type.
    """
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        data = _json_data(t)
        if data is None:
            blob = _binary_data(t)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs}
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    if outputs is not None:
        body["outputs"] = [{"name": n, "parameters": {"binary_data": False}} for n in outputs]
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": JSON_CONTENT_TYPE}
    headers = {"content-type": OCTET_CONTENT_TYPE, HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then data."""
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InternalError(f"output '{name}': truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, pos)
        items.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return items


def decode_json_response(content: bytes, header_length: int | None = None) -> InferResult:
    """An ``InferResult`` from a v2 JSON infer response, with the binary tensor data
    extension when ``header_length`` (the Inference-Header-Content-Length header) is given."""
    head = content if header_length is None else content[:header_length]
    try:
        body = orjson.loads(head)
        arrays: dict[str, np.ndarray] = {}
        pos = 0 if header_length is None else header_length
        for o in body["outputs"]:
            name, datatype = str(o["name"]), str(o["datatype"])
            shape = [int(d) for d in o["shape"]]
            size = (o.get("parameters") or {}).get("binary_data_size")
            if size is None:
                arrays[name] = _array(name, datatype, shape, o["data"])
                continue
            if header_length is None or pos + int(size) > len(content):
                raise ValueError(f"output '{name}': binary data missing or truncated")
            chunk = content[pos : pos + int(size)]
            pos += int(size)
            data: Any = _split_bytes(name, chunk) if datatype == "BYTES" else chunk
            arrays[name] = _array(name, datatype, shape, data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InternalError(f"malformed JSON response from the server: {exc}") from None
    return _result(body, arrays)


def decode_infer_response(content: bytes, headers: Mapping[str, str]) -> InferResult:
    """Decodes by the response's own content type (msgpack, or JSON with or without binary)."""
    if headers.get("content-type", "").startswith(MSGPACK_CONTENT_TYPE):
        return decode_msgpack_response(content)
    length = headers.get(HEADER_LENGTH.lower())
    return decode_json_response(content, None if length is None else int(length))


# ---- errors -------------------------------------------------------------------------------------

_BY_STATUS: dict[int, type[MlserveError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Unauthorized,
    404: ModelNotFound,
    413: InvalidInput,
    429: QueueFull,
    500: InternalError,
    503: Unavailable,
    504: DeadlineExceeded,
}
_ERROR_CLASSES: tuple[type[MlserveError], ...] = (*BY_CODE, Overloaded, Unauthorized)
_BY_ERROR_CODE: dict[str, type[MlserveError]] = {cls.code: cls for cls in _ERROR_CLASSES}


def _error_message(response: httpx.Response) -> str:
    content = response.content
    body: Any = None
    try:
        if response.headers.get("content-type", "").startswith(MSGPACK_CONTENT_TYPE):
            body = msgpack.unpackb(content, raw=False)
        elif content:
            body = orjson.loads(content)
    except (ValueError, msgpack.UnpackException):
        body = None
    if isinstance(body, Mapping) and body.get("error"):
        return str(body["error"])
    text = content.decode(errors="replace").strip()
    return text or (response.reason_phrase or "no message")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: rare from servers like this one; callers back off anyway


def error_from_response(response: httpx.Response) -> MlserveError:
    """The typed error of a non-2xx response, with the server's message.

    The class is chosen by the body's ``code`` when it names one of mlserve's error codes
    (e.g. ``overloaded``), else by the status code. ``status_code`` and ``retry_after``
    (seconds from the Retry-After header, or None) are set on the returned exception.
    """
    status = response.status_code
    message = _error_message(response)
    code = None
    try:
        body = orjson.loads(response.content) if response.content else None
        if isinstance(body, dict):
            code = body.get("code")
    except ValueError:
        pass
    cls = _BY_ERROR_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status) or (InvalidInput if status < 500 else InternalError)
    if status == 413:
        message = f"request body too large for the server ({message}); send fewer rows per request"
    elif cls is Unauthorized:
        message = (
            f"the server refused the call ({status}: {message}); pass the admin token "
            "(token=...) the server was started with"
        )
    exc = cls(message)
    exc.status_code = status  # type: ignore[attr-defined]
    exc.retry_after = _retry_after(response)  # type: ignore[attr-defined]
    return exc


def _transport_error(base_url: str, exc: httpx.TransportError) -> MlserveError:
    if isinstance(exc, httpx.TimeoutException):
        err: MlserveError = DeadlineExceeded(
            f"no answer from {base_url} within the client timeout ({type(exc).__name__}); "
            "the request may still have run; raise timeout= or retry"
        )
    else:
        err = Unavailable(f"cannot reach the mlserve server at {base_url}: {exc}")
    err.status_code = None  # type: ignore[attr-defined]
    err.retry_after = None  # type: ignore[attr-defined]
    return err


# ---- calls: everything but the transport, shared by Client and AsyncClient -------------------


@dataclass
class _Call:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None


def _model_path(model: str, version: str | int | None) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    if version is not None and str(version) != "":
        path += f"/versions/{quote(str(version), safe='')}"
    return path


def _admin_headers(token: str | None) -> dict[str, str]:
    headers = {"content-type": JSON_CONTENT_TYPE}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def _infer_call(
    codec: Codec,
    model: str,
    inputs: Inputs,
    *,
    version: str | int | None,
    outputs: Sequence[str] | None,
    priority: int | None,
    timeout_us: int | None,
    request_id: str | None,
    parameters: Mapping[str, Any] | None,
) -> _Call:
    tensors = make_tensors(inputs)
    params = _parameters(priority, timeout_us, parameters)
    wanted = None if outputs is None else [str(o) for o in outputs]
    if codec == "msgpack":
        body = encode_msgpack_request(
            tensors, request_id=request_id, parameters=params, outputs=wanted
        )
        headers = {"content-type": MSGPACK_CONTENT_TYPE, "accept": MSGPACK_CONTENT_TYPE}
    else:
        body, headers = encode_json_request(
            tensors, request_id=request_id, parameters=params, outputs=wanted
        )
        headers["accept"] = JSON_CONTENT_TYPE
    if request_id is not None:  # the id the server logs the prediction under (feedback)
        headers["x-request-id"] = request_id
    return _Call("POST", _model_path(model, version) + "/infer", headers, body)


def _load_call(model: str, ref: str | None, token: str | None) -> _Call:
    body: dict[str, Any] = {}
    if ref is not None:
        body["parameters"] = {"ref": ref}
    path = f"/v2/repository/models/{quote(model, safe='')}/load"
    return _Call("POST", path, _admin_headers(token), orjson.dumps(body))


def _unload_call(model: str, token: str | None) -> _Call:
    path = f"/v2/repository/models/{quote(model, safe='')}/unload"
    return _Call("POST", path, _admin_headers(token), b"{}")


def _index_call(token: str | None) -> _Call:
    return _Call("POST", "/v2/repository/index", _admin_headers(token), b"{}")


def _feedback_call(model: str, ids: Sequence[str], labels: Sequence[Any]) -> _Call:
    body = orjson.dumps({"ids": list(ids), "labels": list(labels)},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    return _Call("POST", _model_path(model, None) + "/feedback",
                 {"content-type": JSON_CONTENT_TYPE}, body)


def _monitoring_call(model: str, version: str | int | None) -> _Call:
    return _Call("GET", _model_path(model, version) + "/monitoring")


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


def _json_body(response: httpx.Response) -> Any:
    _check(response)
    if not response.content:
        return {}
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise InternalError(f"the server answered with invalid JSON: {exc}") from None


def _dict_body(response: httpx.Response) -> dict[str, Any]:
    body = _json_body(response)
    if not isinstance(body, dict):
        raise InternalError(f"expected a JSON object from the server, got {str(body)[:200]}")
    return body


def _list_body(response: httpx.Response) -> list[dict[str, Any]]:
    body = _json_body(response)
    if isinstance(body, dict) and isinstance(body.get("models"), list):
        body = body["models"]  # some servers wrap the index
    if not isinstance(body, list):
        raise InternalError(f"expected a JSON list from the server, got {str(body)[:200]}")
    return body


def _infer_result(response: httpx.Response) -> InferResult:
    _check(response)
    result = decode_infer_response(response.content, response.headers)
    result.request_id = response.headers.get("x-request-id")
    return result


def _limits(max_connections: int) -> httpx.Limits:
    if max_connections < 1:
        raise InvalidInput(f"max_connections must be >= 1, got {max_connections}")
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def _check_codec(codec: str) -> Codec:
    if codec not in ("msgpack", "json"):
        raise InvalidInput(f"codec must be 'msgpack' or 'json', got {codec!r}")
    return "msgpack" if codec == "msgpack" else "json"


# ---- clients -----------------------------------------------------------------------------------


class Client:
    """Blocking client of one mlserve server, with a keep-alive connection pool.

    ``timeout`` is in seconds per HTTP call (None waits forever); ``max_connections`` bounds
    the pool (all kept alive); ``token`` is the default admin token of ``load``/``unload``/
    ``repository_index``; ``transport`` replaces httpx's (tests, custom TLS or proxies).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        codec: Codec = "msgpack",
        timeout: float | None = 30.0,
        max_connections: int = 64,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.codec: Codec = _check_codec(codec)
        self.token = token
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            limits=_limits(max_connections),
            transport=transport,
        )

    def _send(self, call: _Call) -> httpx.Response:
        try:
            return self._http.request(
                call.method, call.path, headers=call.headers, content=call.content
            )
        except httpx.TransportError as exc:
            raise _transport_error(self.url, exc) from exc

    def _ok(self, path: str) -> bool:
        try:
            return self._send(_Call("GET", path)).status_code == 200
        except MlserveError:
            return False

    def live(self) -> bool:
        """True when the server process answers (False too when it cannot be reached)."""
        return self._ok("/v2/health/live")

    def ready(self) -> bool:
        """True when the server is ready to serve requests."""
        return self._ok("/v2/health/ready")

    def server_metadata(self) -> dict[str, Any]:
        """The server's v2 metadata: name, version, extensions."""
        return _dict_body(self._send(_Call("GET", "/v2")))

    def model_metadata(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        """The model's v2 metadata (name, versions, platform, inputs, outputs)."""
        return _dict_body(self._send(_Call("GET", _model_path(model, version))))

    def model_ready(self, model: str, version: str | int | None = None) -> bool:
        """True when that model (version) is loaded and ready."""
        return self._ok(_model_path(model, version) + "/ready")

    def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: str | int | None = None,
        outputs: Sequence[str] | None = None,
        priority: int | None = None,
        timeout_us: int | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> InferResult:
        """Runs ``inputs`` through ``model``; see ``make_tensors`` for what inputs may be."""
        call = _infer_call(
            self.codec,
            model,
            inputs,
            version=version,
            outputs=outputs,
            priority=priority,
            timeout_us=timeout_us,
            request_id=request_id,
            parameters=parameters,
        )
        return _infer_result(self._send(call))

    def load(self, model: str, ref: str | None = None, token: str | None = None) -> dict[str, Any]:
        """Loads (or hot-swaps) ``model`` from the registry reference ``ref`` (default: the
        server's own choice for that name, e.g. ``fraud`` or ``fraud@champion``)."""
        return _dict_body(self._send(_load_call(model, ref, token or self.token)))

    def unload(self, model: str, token: str | None = None) -> dict[str, Any]:
        """Unloads ``model``; requests already queued finish first."""
        return _dict_body(self._send(_unload_call(model, token or self.token)))

    def repository_index(self, token: str | None = None) -> list[dict[str, Any]]:
        """The models the server knows, each ``{"name", "version", "state", ...}``."""
        return _list_body(self._send(_index_call(token or self.token)))

    def feedback(self, model: str, ids: Sequence[str], labels: Sequence[Any]) -> dict[str, Any]:
        """Ground truth for earlier requests (``InferResult.request_id``), one label per id
        (a list for a multi-row request); returns ``{"matched", "unmatched", ...}``."""
        return _dict_body(self._send(_feedback_call(model, ids, labels)))

    def monitoring(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        """The model's current drift window, firing alerts and online metrics."""
        return _dict_body(self._send(_monitoring_call(model, version)))

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, codec={self.codec!r})"


class AsyncClient:
    """``Client`` for asyncio, on ``httpx.AsyncClient``; same arguments and methods, awaited."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        codec: Codec = "msgpack",
        timeout: float | None = 30.0,
        max_connections: int = 64,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.codec: Codec = _check_codec(codec)
        self.token = token
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            limits=_limits(max_connections),
            transport=transport,
        )

    async def _send(self, call: _Call) -> httpx.Response:
        try:
            return await self._http.request(
                call.method, call.path, headers=call.headers, content=call.content
            )
        except httpx.TransportError as exc:
            raise _transport_error(self.url, exc) from exc

    async def _ok(self, path: str) -> bool:
        try:
            return (await self._send(_Call("GET", path))).status_code == 200
        except MlserveError:
            return False

    async def live(self) -> bool:
        """True when the server process answers (False too when it cannot be reached)."""
        return await self._ok("/v2/health/live")

    async def ready(self) -> bool:
        """True when the server is ready to serve requests."""
        return await self._ok("/v2/health/ready")

    async def server_metadata(self) -> dict[str, Any]:
        """The server's v2 metadata: name, version, extensions."""
        return _dict_body(await self._send(_Call("GET", "/v2")))

    async def model_metadata(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        """The model's v2 metadata (name, versions, platform, inputs, outputs)."""
        return _dict_body(await self._send(_Call("GET", _model_path(model, version))))

    async def model_ready(self, model: str, version: str | int | None = None) -> bool:
        """True when that model (version) is loaded and ready."""
        return await self._ok(_model_path(model, version) + "/ready")

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: str | int | None = None,
        outputs: Sequence[str] | None = None,
        priority: int | None = None,
        timeout_us: int | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> InferResult:
        """Runs ``inputs`` through ``model``; see ``make_tensors`` for what inputs may be."""
        call = _infer_call(
            self.codec,
            model,
            inputs,
            version=version,
            outputs=outputs,
            priority=priority,
            timeout_us=timeout_us,
            request_id=request_id,
            parameters=parameters,
        )
        return _infer_result(await self._send(call))

    async def load(
        self, model: str, ref: str | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """Loads (or hot-swaps) ``model`` from the registry reference ``ref``."""
        return _dict_body(await self._send(_load_call(model, ref, token or self.token)))

    async def unload(self, model: str, token: str | None = None) -> dict[str, Any]:
        """Unloads ``model``; requests already queued finish first."""
        return _dict_body(await self._send(_unload_call(model, token or self.token)))

    async def repository_index(self, token: str | None = None) -> list[dict[str, Any]]:
        """The models the server knows, each ``{"name", "version", "state", ...}``."""
        return _list_body(await self._send(_index_call(token or self.token)))

    async def feedback(self, model: str, ids: Sequence[str], labels: Sequence[Any]
                       ) -> dict[str, Any]:
        """Ground truth for earlier requests (see ``Client.feedback``)."""
        return _dict_body(await self._send(_feedback_call(model, ids, labels)))

    async def monitoring(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        """The model's current drift window, firing alerts and online metrics."""
        return _dict_body(await self._send(_monitoring_call(model, version)))

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r}, codec={self.codec!r})"


__all__ = [
    "AsyncClient",
    "Client",
    "Codec",
    "InferResult",
    "Unauthorized",
    "datatype_of",
    "decode_infer_response",
    "decode_json_response",
    "decode_msgpack_response",
    "encode_json_request",
    "encode_msgpack_request",
    "error_from_response",
    "make_tensors",
    "numpy_dtype",
]
