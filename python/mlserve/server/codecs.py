"""Wire formats of the v2 inference API: JSON, Triton's binary tensor data extension, msgpack.

Pure functions over ``bytes``; no I/O, no web framework, safe to call from any thread. Every
problem with a request raises :class:`mlserve.errors.InvalidInput` naming the tensor and what is
wrong; a response the server cannot encode (its own bug) raises
:class:`mlserve.errors.InternalError`.

Ownership: numeric tensors decoded from binary data (the binary extension, msgpack, the raw
form) are read-only ``np.frombuffer`` views into the request body, which they keep alive; no
copy is made unless the view would be misaligned for its dtype (a JSON header of any length
precedes the binary data), in which case that one tensor is copied so that the C++ core never
reads unaligned memory. Consumers must not write into decoded tensors.

Choices the protocol leaves open:

* JSON has no NaN or infinity, and its strings must be UTF-8. An output that was to be sent as
  JSON but holds non-finite floats, or BYTES that are not UTF-8, is sent in binary form instead
  (``parameters.binary_data_size`` tells every v2 client; Triton itself fails the request).
* ``Inference-Header-Content-Length: 0`` is Triton's raw binary request: no JSON, the whole
  body is the data of the model's only input. Its name, datatype and shape come from model
  metadata, so the caller passes them as ``raw_input`` (a :class:`TensorSpec`, ``-1`` for at
  most one variable dimension, resolved from the body size); without it the request is refused.
  A raw BYTES input is one element holding the whole body, without a length prefix.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import orjson

from mlserve.errors import InternalError, InvalidInput

#: Header giving the length of the JSON part of a body followed by binary tensor data.
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

# Binary tensor data is little-endian; these dtypes say so explicitly.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
#: Magnitudes from which a float64 rounds to infinity when cast (round to nearest even):
#: the largest finite value plus half an ulp.
_OVERFLOW_AT = {"FP16": 65520.0, "FP32": 2.0**128 - 2.0**103}
#: The smallest magnitude that a cast to float32 turns into infinity.
FP32_OVERFLOW = _OVERFLOW_AT["FP32"]
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items() if name != "BYTES"}
_MAX_NDIM = 32
_MAX_ELEMENTS = sys.maxsize // 16
_U32 = struct.Struct("<I")

Array = npt.NDArray[Any]


@dataclass(eq=False)
class Tensor:
    """One named tensor. ``data`` is C-ordered with shape ``shape``: a numpy array of the
    matching dtype, or for BYTES an object array of ``bytes``. Compare with ``np.array_equal``.
    """

    name: str
    datatype: str
    shape: list[int]
    data: Array


@dataclass(frozen=True)
class TensorSpec:
    """A model input as its metadata declares it: ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class RequestedOutput:
    """An output the client asked for; ``binary_data`` already folds in the request's
    ``binary_data_output`` parameter (an explicit per-output value wins)."""

    name: str
    binary_data: bool = False


@dataclass(eq=False)
class InferRequest:
    """A decoded inference request. ``outputs`` is None when the client named none."""

    id: str | None
    inputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None


@dataclass(eq=False)
class InferResponse:
    """An inference response to encode."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype (``object`` for BYTES); InvalidInput if unknown."""
    try:
        return _DTYPES[datatype]
    except (KeyError, TypeError):
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(_DTYPES)}"
        ) from None


def datatype_of(array: Array) -> str:
    """The v2 datatype of a numpy array (object, bytes and str arrays are BYTES)."""
    dtype = np.asarray(array).dtype
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no v2 datatype") from None


def binary_outputs_of(request: InferRequest) -> bool | set[str]:
    """The ``binary`` argument of :func:`encode_json_response` that this request asks for."""
    if request.outputs is None:
        return bool(request.parameters.get("binary_data_output", False))
    return {o.name for o in request.outputs if o.binary_data}


# ---------------------------------------------------------------------------------------------
# Requests


def decode_json_request(
    body: bytes, header_length: int | None, *, raw_input: TensorSpec | None = None
) -> InferRequest:
    """Decode a v2 JSON request, with binary tensor data when ``header_length`` is given.

    @param body           the whole HTTP body
    @param header_length  ``Inference-Header-Content-Length`` in bytes, or None without it;
                          0 is the raw form (see the module docstring)
    @param raw_input      the model's only input, needed for the raw form only
    """
    body = bytes(body) if not isinstance(body, bytes) else body
    if header_length is None:
        json_end = len(body)
    elif type(header_length) is not int or header_length < 0:
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    elif header_length == 0:
        return _decode_raw(body, raw_input)
    elif header_length > len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes"
        )
    else:
        json_end = header_length
    try:
        obj = orjson.loads(memoryview(body)[:json_end])
    except orjson.JSONDecodeError as exc:
        hint = ""
        if header_length is None and ("after document" in str(exc) or "UTF-8" in str(exc)):
            hint = f" (binary data after the JSON needs the {HEADER_LENGTH} header)"
        raise InvalidInput(f"the request is not valid JSON: {exc}{hint}") from None
    cursor = _Cursor(body, json_end, header_length is not None)
    request = _decode_request_object(obj, cursor.decode_input, json_format=True)
    if cursor.pos != len(body):
        raise InvalidInput(
            f"{len(body) - cursor.pos} trailing bytes after the JSON header and the binary "
            "data of the inputs (check each input's binary_data_size)"
        )
    return request


def decode_msgpack_request(body: bytes) -> InferRequest:
    """Decode a msgpack request (layout in docs/server_contract.md)."""
    return msgpack_request_from_object(unpack_msgpack(body))


def unpack_msgpack(body: bytes) -> Any:
    """The msgpack object of a request body, unvalidated; InvalidInput if it is not msgpack."""
    try:
        return msgpack.unpackb(body, raw=False)
    except msgpack.ExtraData:
        hint = (" (the body looks like JSON: send it as application/json)"
                if body[:1] in (b"{", b"[") else "")
        raise InvalidInput(f"trailing bytes after the msgpack request object{hint}") from None
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        why = str(exc) or type(exc).__name__
        raise InvalidInput(f"the request is not valid msgpack: {why}") from None


def msgpack_request_from_object(obj: Any) -> InferRequest:
    """Validates an unpacked msgpack request (see :func:`unpack_msgpack`)."""
    return _decode_request_object(obj, _msgpack_input, json_format=False)


def fast_json_rows(body: bytes, f_in: int) -> tuple[Array, str | None, dict[str, Any]] | None:
    """The JSON counterpart of :func:`fast_msgpack_rows` for a body without binary data:
    ``(rows, id, parameters)`` when it is one FP32 ``[n, f_in]`` tensor whose ``data`` is a
    flat list of numbers (the form tritonclient and KServe clients send), else None (the
    general path then decodes it, or raises the precise error). Never raises."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    fields = _fast_fields(obj, f_in, list)
    if fields is None:
        return None
    n, data, request_id, parameters = fields
    if len(data) != n * f_in:
        return None
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged or too deep
        return None
    if values.dtype.kind not in "iuf" or values.ndim != 1:  # bools, strings, nesting, null
        return None
    if values.dtype.kind == "f":  # beyond float32's range: the general path names the value
        limit = _OVERFLOW_AT["FP32"]
        if len(data) <= 64:  # the builtins on a few numbers beat two numpy reductions (~2 µs)
            if max(data) >= limit or min(data) <= -limit:
                return None
        elif float(values.min()) <= -limit or float(values.max()) >= limit:
            return None
    return values.astype(_F4).reshape(n, f_in), request_id, parameters


_FAST_REQUEST_KEYS = frozenset({"inputs", "id", "parameters"})
_FAST_PARAMETER_KEYS = frozenset({"priority", "timeout"})
_FAST_INPUT_KEYS = frozenset({"name", "datatype", "shape", "data"})
_F4 = np.dtype("<f4")


def fast_msgpack_rows(
    obj: Any, f_in: int
) -> tuple[Array, str | None, dict[str, Any]] | None:
    """The serving fast lane: ``(rows, id, parameters)`` when ``obj`` (an unpacked msgpack
    request) is the common shape -- one FP32 ``[n, f_in]`` tensor as raw bytes, optional string
    ``id``, optional ``priority``/``timeout`` parameters, no ``outputs`` -- else None.

    None means "take the general path" (:func:`msgpack_request_from_object`), which accepts
    every valid request and raises the precise error for every invalid one: this function
    never raises and never accepts what the general path would refuse. ``rows`` is a read-only
    view into ``obj``'s bytes (aligned). Parameter values are checked by the caller.
    """
    fields = _fast_fields(obj, f_in, bytes)
    if fields is None:
        return None
    n, data, request_id, parameters = fields
    if len(data) != 4 * n * f_in:
        return None
    rows = np.frombuffer(data, dtype=_F4).reshape(n, f_in)
    if not rows.flags.aligned:
        rows = rows.copy()
    return rows, request_id, parameters


def _fast_fields(
    obj: Any, f_in: int, data_type: type
) -> tuple[int, Any, str | None, dict[str, Any]] | None:
    """The fast lanes' shared check of the request object: ``(n, data, id, parameters)`` for
    one FP32 ``[n, f_in]`` input (n > 0) whose ``data`` has type ``data_type``, else None."""
    if type(obj) is not dict or not obj.keys() <= _FAST_REQUEST_KEYS:
        return None
    inputs = obj.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    item = inputs[0]
    if type(item) is not dict or item.keys() != _FAST_INPUT_KEYS or item["datatype"] != "FP32":
        return None
    name, shape, data = item["name"], item["shape"], item["data"]
    if type(name) is not str or not name or type(shape) is not list or len(shape) != 2:
        return None
    n, width = shape
    if type(n) is not int or type(width) is not int or width != f_in or n <= 0:
        return None
    if type(data) is not data_type:
        return None
    request_id = obj.get("id")
    if request_id is not None and type(request_id) is not str:
        return None
    parameters = obj.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict or not parameters.keys() <= _FAST_PARAMETER_KEYS:
        return None
    return n, data, request_id, parameters


InputDecoder = Callable[[str, str, list[int], dict[str, Any]], Tensor]


def _decode_request_object(
    obj: Any, decode_input: InputDecoder, *, json_format: bool
) -> InferRequest:
    what = "JSON" if json_format else "msgpack"
    if not isinstance(obj, dict):
        raise InvalidInput(f"the request must be a {what} object, got {_kind(obj)}")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_kind(request_id)}")
    parameters = _optional_dict(obj.get("parameters"), "request 'parameters'")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInput(
            f"parameter 'binary_data_output' must be a boolean, got {binary_default!r}"
        )

    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput(f"'inputs' must be a non-empty list, got {_kind(raw_inputs)}")
    inputs: list[Tensor] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{i}] must be an object, got {_kind(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in seen:
            raise InvalidInput(f"input {name!r} is given twice")
        seen.add(name)
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in _DTYPES:
            raise InvalidInput(
                f"input {name!r}: unknown datatype {datatype!r}; "
                f"expected one of {', '.join(_DTYPES)}"
            )
        shape = _check_shape(name, item.get("shape"))
        inputs.append(decode_input(name, datatype, shape, item))

    return InferRequest(
        id=request_id,
        inputs=inputs,
        parameters=parameters,
        outputs=_decode_outputs(obj.get("outputs"), binary_default),
    )


def _decode_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f"'outputs' must be a list, got {_kind(raw)}")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidInput(f"outputs[{i}] must be an object, got {_kind(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{i}]: 'name' must be a non-empty string")
        if name in seen:
            raise InvalidInput(f"output {name!r} is requested twice")
        seen.add(name)
        params = _optional_dict(item.get("parameters"), f"output {name!r}: 'parameters'")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {name!r}: 'binary_data' must be a boolean, got {binary!r}")
        outputs.append(RequestedOutput(name, binary))
    # An empty list names no output, like no list: the model's outputs are all returned.
    return outputs or None


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list):
        raise InvalidInput(
            f"input {name!r}: 'shape' must be a list of integers, got {_kind(shape)}"
        )
    if len(shape) > _MAX_NDIM:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions, at most {_MAX_NDIM}"
        )
    for d in shape:
        if type(d) is not int:
            raise InvalidInput(f"input {name!r}: shape {shape} holds a non-integer {d!r}")
        if d < 0:
            raise InvalidInput(f"input {name!r}: shape {shape} has a negative dimension")
    # numpy refuses shapes whose nonzero dimensions overflow its sizes, even for empty arrays.
    if math.prod(d for d in shape if d) > _MAX_ELEMENTS:
        raise InvalidInput(f"input {name!r}: shape {shape} is too large")
    return shape


class _Cursor:
    """Walks the binary data that follows a JSON header, one input after the other."""

    def __init__(self, body: bytes, start: int, header_given: bool) -> None:
        self.body = body
        self.pos = start
        self.header_given = header_given

    def decode_input(
        self, name: str, datatype: str, shape: list[int], item: dict[str, Any]
    ) -> Tensor:
        params = _optional_dict(item.get("parameters"), f"input {name!r}: 'parameters'")
        if "shared_memory_region" in params:
            raise InvalidInput(f"input {name!r}: shared-memory inputs are not supported")
        size = params.get("binary_data_size")
        count = math.prod(shape)
        if size is None:
            if "data" not in item:
                raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
            if datatype == "BYTES":
                data = _bytes_from_json(name, shape, count, item["data"])
            else:
                data = _numeric_from_json(name, datatype, shape, count, item["data"])
            return Tensor(name, datatype, shape, data)
        if type(size) is not int or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size")
        if not self.header_given:
            raise InvalidInput(
                f"input {name!r} sets binary_data_size but the request has no "
                f"{HEADER_LENGTH} header"
            )
        remaining = len(self.body) - self.pos
        if size > remaining:
            raise InvalidInput(
                f"input {name!r}: binary_data_size is {size} but only {remaining} bytes of the "
                "body remain (truncated body?)"
            )
        start, self.pos = self.pos, self.pos + size
        if datatype == "BYTES":
            data = _bytes_from_buffer(name, shape, count, self.body, start, size)
        else:
            data = _numeric_from_buffer(name, datatype, shape, count, self.body, start, size)
        return Tensor(name, datatype, shape, data)


def _msgpack_input(name: str, datatype: str, shape: list[int], item: dict[str, Any]) -> Tensor:
    if "data" not in item:
        raise InvalidInput(f"input {name!r} has no 'data'")
    data = item["data"]
    count = math.prod(shape)
    if datatype == "BYTES":
        if not isinstance(data, list):
            raise InvalidInput(f"input {name!r}: BYTES data must be a list of byte strings")
        if len(data) != count:
            raise InvalidInput(
                f"input {name!r}: data holds {len(data)} elements but shape {shape} needs {count}"
            )
        items: list[bytes] = []
        for x in data:
            if isinstance(x, bytes):
                items.append(x)
            elif isinstance(x, str):
                items.append(_utf8(name, x))
            else:
                raise InvalidInput(f"input {name!r}: BYTES element is {_kind(x)}, not bytes")
        return Tensor(name, datatype, shape, _object_array(items, shape))
    if not isinstance(data, bytes):
        raise InvalidInput(
            f"input {name!r}: {datatype} data must be raw little-endian bytes (msgpack bin), "
            f"got {_kind(data)}"
        )
    return Tensor(
        name,
        datatype,
        shape,
        _numeric_from_buffer(name, datatype, shape, count, data, 0, len(data)),
    )


def _decode_raw(body: bytes, spec: TensorSpec | None) -> InferRequest:
    if spec is None:
        raise InvalidInput(
            f"{HEADER_LENGTH}: 0 is a raw binary request (the whole body is the data of the "
            "model's only input), which this endpoint cannot resolve without the model's input "
            "metadata; send a JSON header with the input's name, datatype and shape"
        )
    dtype = numpy_dtype(spec.datatype)
    shape = list(spec.shape)
    variable = [i for i, d in enumerate(shape) if d < 0]
    if len(variable) > 1:
        raise InvalidInput(
            f"input {spec.name!r}: a raw binary request cannot resolve shape {shape} with more "
            "than one variable dimension; send a JSON header"
        )
    if spec.datatype == "BYTES":
        shape = [1 if d < 0 else d for d in shape]
        if math.prod(shape) != 1:
            raise InvalidInput(
                f"input {spec.name!r}: a raw binary BYTES request needs a one-element shape, "
                f"the model declares {list(spec.shape)}"
            )
        return InferRequest(None, [Tensor(spec.name, "BYTES", shape, _object_array([body], shape))])
    if len(body) % dtype.itemsize:
        raise InvalidInput(
            f"input {spec.name!r}: raw binary body of {len(body)} bytes is not a whole number "
            f"of {spec.datatype} elements"
        )
    count = len(body) // dtype.itemsize
    fixed = math.prod(d for d in shape if d >= 0)
    if variable:
        if (fixed == 0 and count) or (fixed and count % fixed):
            raise InvalidInput(
                f"input {spec.name!r}: {count} {spec.datatype} elements do not fit shape {shape}"
            )
        shape[variable[0]] = count // fixed if fixed else 0
    elif fixed != count:
        raise InvalidInput(
            f"input {spec.name!r}: raw binary body holds {count} elements, "
            f"shape {shape} needs {fixed}"
        )
    data = _numeric_from_buffer(spec.name, spec.datatype, shape, count, body, 0, len(body))
    return InferRequest(None, [Tensor(spec.name, spec.datatype, shape, data)])


def _numeric_from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> Array:
    dtype = _DTYPES[datatype]
    try:
        inferred = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise InvalidInput(
            f"input {name!r}: 'data' must be a flat or regularly nested list of numbers"
        ) from None
    if inferred.size != count:
        raise InvalidInput(
            f"input {name!r}: 'data' holds {inferred.size} elements but shape {shape} needs {count}"
        )
    if count == 0:
        return np.empty(shape, dtype)
    kind = inferred.dtype.kind
    if dtype.kind in "iu" and kind in "fO":
        # numpy turns a mix of int64 and uint64-only values into float64 (and bigger integers
        # into objects): look at the Python values themselves, off the fast path.
        return _integers_from_json(name, datatype, shape, data)
    if datatype == "BOOL":
        allowed, wanted = "b", "booleans"
    elif dtype.kind in "iu":
        allowed, wanted = "biu", "integers"
    else:
        allowed, wanted = "biuf", "numbers"
    if kind not in allowed:
        found = {"f": "numbers" if datatype == "BOOL" else "non-integer numbers",
                 "i": "integers", "u": "integers", "U": "strings"}.get(
                     kind, "null or non-numeric values")
        raise InvalidInput(f"input {name!r}: {datatype} data must be {wanted}, got {found}")
    if dtype.kind in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(inferred.min()), int(inferred.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(f"input {name!r}: value {bad} is out of {datatype} range")
    # JSON numbers are finite (orjson refuses the rest), so the cast can only overflow into
    # infinity, where a narrower float cannot hold a value: check the range before the cast
    # (two reductions; cheaper than np.errstate plus an isfinite pass).
    limit = _OVERFLOW_AT.get(datatype)
    if limit is not None and (kind == "f" or (datatype == "FP16" and kind in "iu")):
        if float(inferred.min()) <= -limit or float(inferred.max()) >= limit:
            raise InvalidInput(f"input {name!r}: a value is out of {datatype} range")
    return inferred.astype(dtype).reshape(shape)


def _integers_from_json(name: str, datatype: str, shape: list[int], data: Any) -> Array:
    values = np.asarray(data, dtype=object).reshape(-1).tolist()
    info = np.iinfo(_DTYPES[datatype])
    if not all(type(v) in (int, bool) for v in values):
        floats = [v for v in values if type(v) is float]
        # A whole number past 2^64 parses as a float (orjson): name it as out of range.
        huge = [v for v in floats if math.isfinite(v) and v == math.floor(v)
                and not info.min <= v <= info.max]
        if huge:
            raise InvalidInput(f"input {name!r}: value {huge[0]:.17g} is out of {datatype} range")
        found = "non-integer numbers" if floats else "null or non-numeric values"
        raise InvalidInput(f"input {name!r}: {datatype} data must be integers, got {found}")
    for v in (min(values), max(values)):
        if not info.min <= v <= info.max:
            raise InvalidInput(f"input {name!r}: value {v} is out of {datatype} range")
    return np.array(values, dtype=_DTYPES[datatype]).reshape(shape)


def _bytes_from_json(name: str, shape: list[int], count: int, data: Any) -> Array:
    items: list[bytes] = []
    # Iterative flattening: JSON nesting may be deeper than Python's recursion limit.
    stack = [iter([data])]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            if not isinstance(x, str):
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {_kind(x)}")
            items.append(_utf8(name, x))
        else:
            stack.pop()
    if len(items) != count:
        raise InvalidInput(
            f"input {name!r}: 'data' holds {len(items)} elements but shape {shape} needs {count}"
        )
    return _object_array(items, shape)


def _numeric_from_buffer(
    name: str, datatype: str, shape: list[int], count: int, buf: bytes, offset: int, size: int
) -> Array:
    """A read-only view of ``size`` bytes at ``offset`` of ``buf`` (copied only if misaligned)."""
    dtype = _DTYPES[datatype]
    expected = count * dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"input {name!r}: {size} bytes of binary data but {datatype} shape {shape} "
            f"needs {expected}"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    if not arr.flags.aligned:
        arr = arr.copy()
    if datatype == "BOOL" and count and int(arr.view(np.uint8).max()) > 1:
        raise InvalidInput(f"input {name!r}: BOOL binary data must be bytes 0 or 1")
    return arr.reshape(shape)


def _bytes_from_buffer(
    name: str, shape: list[int], count: int, buf: bytes, offset: int, size: int
) -> Array:
    """Elements of ``count`` (4-byte little-endian length, bytes) in ``size`` bytes."""
    if count * _U32.size > size:
        raise InvalidInput(
            f"input {name!r}: binary_data_size {size} is too small for {count} BYTES elements "
            "(each has a 4-byte length)"
        )
    end = offset + size
    pos = offset
    items: list[bytes] = []
    for i in range(count):
        if pos + _U32.size > end:
            raise InvalidInput(f"input {name!r}: BYTES element {i} is truncated")
        (length,) = _U32.unpack_from(buf, pos)
        pos += _U32.size
        if length > end - pos:
            raise InvalidInput(
                f"input {name!r}: BYTES element {i} claims {length} bytes but only {end - pos} "
                "remain in its binary data"
            )
        items.append(buf[pos : pos + length])
        pos += length
    if pos != end:
        raise InvalidInput(
            f"input {name!r}: {end - pos} bytes left over after {count} BYTES elements "
            "(binary_data_size mismatch)"
        )
    return _object_array(items, shape)


# ---------------------------------------------------------------------------------------------
# Responses


def encode_json_response(
    resp: InferResponse, *, binary: bool | Set[str] = False
) -> tuple[bytes, dict[str, str]]:
    """Encode a v2 JSON response; outputs named in ``binary`` (all if True) go as binary data.

    Returns the body and the headers to send: ``Content-Type`` always, and
    ``Inference-Header-Content-Length`` when any output is binary.
    """
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for t in resp.outputs:
        want_binary = binary is True or (not isinstance(binary, bool) and t.name in binary)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": _shape_of(t)}
        raw: bytes | memoryview
        if t.datatype == "BYTES":
            items = _output_bytes(t)
            if not want_binary:
                try:
                    entry["data"] = [b.decode("utf-8") for b in items]
                except UnicodeDecodeError:
                    want_binary = True  # JSON strings are UTF-8; see the module docstring
            raw = _serialize_bytes(t.name, items) if want_binary else b""
        else:
            flat = _output_numeric(t)
            if not want_binary and flat.dtype.kind == "f" and not all_finite(flat):
                want_binary = True  # JSON has no NaN/inf; see the module docstring
            if want_binary:
                raw = flat.view(np.uint8).data
            else:
                entry["data"] = flat
        if want_binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        entries.append(entry)

    header = _dumps_json(_response_object(resp, entries))
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def all_finite(flat: Array) -> bool:
    """Whether every value of a flat float array is finite (JSON cannot carry the rest)."""
    if flat.size <= 16:  # the common small output: Python floats beat two numpy calls
        return all(map(math.isfinite, flat.tolist()))
    return bool(np.isfinite(flat).all())


def encode_msgpack_response(resp: InferResponse) -> bytes:
    """Encode a msgpack response: numeric data as raw little-endian bytes, BYTES as a list."""
    entries: list[dict[str, Any]] = []
    for t in resp.outputs:
        data: list[bytes] | memoryview
        if t.datatype == "BYTES":
            data = _output_bytes(t)
        else:
            data = _output_numeric(t).view(np.uint8).data
        entries.append(
            {"name": t.name, "datatype": t.datatype, "shape": _shape_of(t), "data": data}
        )
    try:
        packed: bytes = msgpack.packb(_response_object(resp, entries), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InternalError(
            f"response of model {resp.model_name!r} is not msgpack-serializable: {exc}"
        ) from None
    return packed


def _response_object(resp: InferResponse, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id is not None:
        obj["id"] = resp.id
    if resp.parameters:
        obj["parameters"] = resp.parameters
    obj["outputs"] = outputs
    return obj


def _dumps_json(obj: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise InternalError(
            f"response of model {obj['model_name']!r} is not JSON-serializable: {exc}"
        ) from None


def _shape_of(t: Tensor) -> list[int]:
    return [int(d) for d in t.shape]


def _output_numeric(t: Tensor) -> Array:
    """The output's data, flat, C-contiguous, little-endian, in its declared dtype."""
    dtype = _DTYPES.get(t.datatype)
    if dtype is None or t.datatype == "BYTES":
        raise InternalError(f"output {t.name!r}: unknown datatype {t.datatype!r}")
    arr = np.asarray(t.data)
    count = math.prod(_shape_of(t))
    if arr.size != count:
        raise InternalError(
            f"output {t.name!r}: shape {t.shape} needs {count} elements, data has {arr.size}"
        )
    if not np.can_cast(arr.dtype, dtype, "same_kind"):
        raise InternalError(f"output {t.name!r}: {arr.dtype} data cannot be sent as {t.datatype}")
    return np.ascontiguousarray(arr.reshape(-1), dtype=dtype)


def _output_bytes(t: Tensor) -> list[bytes]:
    arr = np.asarray(t.data)
    count = math.prod(_shape_of(t))
    if arr.size != count:
        raise InternalError(
            f"output {t.name!r}: shape {t.shape} needs {count} elements, data has {arr.size}"
        )
    items: list[bytes] = []
    for x in arr.reshape(-1).tolist():
        if isinstance(x, bytes):
            items.append(x)
        elif isinstance(x, str):
            items.append(x.encode("utf-8", "surrogatepass"))
        else:
            raise InternalError(f"output {t.name!r}: BYTES element is {_kind(x)}, not bytes or str")
    return items


def _serialize_bytes(name: str, items: list[bytes]) -> bytes:
    try:
        return b"".join(part for b in items for part in (_U32.pack(len(b)), b))
    except struct.error:
        raise InternalError(f"output {name!r}: a BYTES element is 4 GiB or longer") from None


# ---------------------------------------------------------------------------------------------
# Helpers


def _object_array(items: list[bytes], shape: list[int]) -> Array:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def _utf8(name: str, s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"input {name!r}: a BYTES string is not valid UTF-8") from None


def _optional_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        bytes: "bytes",
    }.get(type(value), type(value).__name__)


__all__ = [
    "BINARY_CONTENT_TYPE",
    "HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "binary_outputs_of",
    "datatype_of",
    "decode_json_request",
    "decode_msgpack_request",
    "encode_json_response",
    "encode_msgpack_response",
    "numpy_dtype",
]
