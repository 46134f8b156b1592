"""Wire formats of mlserve.server.codecs against the v2 protocol and tritonclient's own encoder.

Requests are built by tritonclient (``InferenceServerClient.generate_request_body``, binary or
JSON per input) and decoded here; responses are encoded here and read back by tritonclient's
``InferResult``, and their binary sections are compared byte for byte with what tritonclient
produces for the same arrays. Msgpack is checked against the contract's layout with the msgpack
package. Every kind of malformed body raises InvalidInput, and random bytes raise nothing else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mlserve.errors import InternalError, InvalidInput
from mlserve.server.codecs import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    Tensor,
    TensorSpec,
    binary_outputs_of,
    datatype_of,
    decode_json_request,
    decode_msgpack_request,
    encode_json_response,
    encode_msgpack_response,
    numpy_dtype,
)
from tritonclient.utils import serialize_byte_tensor

NUMERIC = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
]
DATATYPES = [*NUMERIC, "BYTES"]

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Arrays = list[tuple[str, np.ndarray]]


def _objects(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape)


@st.composite
def tensor_arrays(draw: st.DrawFn, *, json_safe: bool) -> tuple[str, np.ndarray]:
    """A datatype and an array of it; ``json_safe`` keeps floats finite and BYTES UTF-8."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        element = st.text(max_size=6).map(str.encode) if json_safe else st.binary(max_size=6)
        n = math.prod(shape)
        return datatype, _objects(draw(st.lists(element, min_size=n, max_size=n)), shape)
    dtype = numpy_dtype(datatype)
    elements = None
    if json_safe and dtype.kind == "f":
        elements = hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


def many_arrays(*, json_safe: bool) -> st.SearchStrategy[Arrays]:
    return st.lists(tensor_arrays(json_safe=json_safe), min_size=1, max_size=3)


def _triton_body(
    arrays: Arrays, binary: list[bool], outputs: list[Any] | None = None
) -> tuple[bytes, int | None]:
    inputs = []
    for i, ((datatype, arr), as_binary) in enumerate(zip(arrays, binary, strict=True)):
        inp = httpclient.InferInput(f"in{i}", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=as_binary)
        inputs.append(inp)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs
    )
    return bytes(body), json_size


def _assert_tensor(tensor: Tensor, name: str, datatype: str, arr: np.ndarray) -> None:
    assert (tensor.name, tensor.datatype, tensor.shape) == (name, datatype, list(arr.shape))
    assert tensor.data.shape == arr.shape
    if datatype == "BYTES":
        assert tensor.data.dtype == object
        assert tensor.data.reshape(-1).tolist() == arr.reshape(-1).tolist()
    else:
        assert tensor.data.dtype == numpy_dtype(datatype)
        assert tensor.data.flags.c_contiguous
        assert tensor.data.tobytes() == arr.tobytes()  # bit-exact, NaN payloads and -0.0 too


def _triton_serialized(datatype: str, arr: np.ndarray) -> bytes:
    """tritonclient's binary form of one tensor (the reference for byte-exactness)."""
    if datatype != "BYTES":
        return arr.tobytes()
    serialized = serialize_byte_tensor(arr)
    return bytes(serialized.item()) if serialized.size else b""


# --------------------------------------------------------------------------------------------
# Round trips


@FAST
@given(arrays=many_arrays(json_safe=False), data=st.data())
def test_tritonclient_binary_requests_decode_exactly(arrays: Arrays, data: st.DataObject) -> None:
    body, json_size = _triton_body(arrays, [True] * len(arrays))
    assert json_size is not None
    request = decode_json_request(body, json_size)
    assert request.outputs is None
    assert binary_outputs_of(request) is True  # tritonclient asks for binary outputs then
    for i, ((datatype, arr), tensor) in enumerate(zip(arrays, request.inputs, strict=True)):
        _assert_tensor(tensor, f"in{i}", datatype, arr)
    # The decoded tensors, sent back as binary outputs, are tritonclient's bytes exactly.
    response = InferResponse("m", "1", None, request.inputs)
    out, headers = encode_json_response(response, binary=True)
    header_length = int(headers[HEADER_LENGTH])
    assert out[header_length:] == body[json_size:]
    assert out[header_length:] == b"".join(_triton_serialized(d, a) for d, a in arrays)


@FAST
@given(arrays=many_arrays(json_safe=True), data=st.data())
def test_tritonclient_mixed_json_and_binary_requests(arrays: Arrays, data: st.DataObject) -> None:
    binary = data.draw(st.lists(st.booleans(), min_size=len(arrays), max_size=len(arrays)))
    wanted = data.draw(st.lists(st.booleans(), max_size=3))
    outputs = [
        httpclient.InferRequestedOutput(f"out{i}", binary_data=b) for i, b in enumerate(wanted)
    ]
    body, json_size = _triton_body(arrays, binary, outputs)
    assert (json_size is None) == (not any(binary))
    request = decode_json_request(body, json_size)
    for i, ((datatype, arr), tensor) in enumerate(zip(arrays, request.inputs, strict=True)):
        _assert_tensor(tensor, f"in{i}", datatype, arr)
    if wanted:
        assert request.outputs is not None
        assert [(o.name, o.binary_data) for o in request.outputs] == [
            (f"out{i}", b) for i, b in enumerate(wanted)
        ]
        assert binary_outputs_of(request) == {f"out{i}" for i, b in enumerate(wanted) if b}
    else:
        assert request.outputs is None


@FAST
@given(arrays=many_arrays(json_safe=False), data=st.data())
def test_responses_read_back_by_tritonclient(arrays: Arrays, data: st.DataObject) -> None:
    names = [f"out{i}" for i in range(len(arrays))]
    binary: bool | set[str] = data.draw(st.one_of(st.booleans(), st.sets(st.sampled_from(names))))
    outputs = [Tensor(n, d, list(a.shape), a) for n, (d, a) in zip(names, arrays, strict=True)]
    response = InferResponse("model", "3", data.draw(st.none() | st.text()), outputs)
    body, headers = encode_json_response(response, binary=binary)

    length = headers.get(HEADER_LENGTH)
    result = httpclient.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )
    doc = result.get_response()
    assert (doc["model_name"], doc["model_version"], doc.get("id")) == ("model", "3", response.id)
    any_binary = False
    for name, (datatype, arr) in zip(names, arrays, strict=True):
        entry = result.get_output(name)
        assert (entry["datatype"], entry["shape"]) == (datatype, list(arr.shape))
        is_binary = "binary_data_size" in entry.get("parameters", {})
        any_binary |= is_binary
        requested = binary is True or (isinstance(binary, set) and name in binary)
        if requested:
            assert is_binary
        back = result.as_numpy(name)
        assert back.shape == arr.shape
        if datatype == "BYTES":
            if is_binary:
                assert back.reshape(-1).tolist() == arr.reshape(-1).tolist()
            else:  # JSON strings come back as str
                assert [x.encode() for x in back.reshape(-1)] == arr.reshape(-1).tolist()
        else:
            assert back.dtype == arr.dtype
            if is_binary:
                assert back.tobytes() == arr.tobytes()
            else:
                assert np.isfinite(arr).all() if arr.dtype.kind == "f" else True
                np.testing.assert_array_equal(back, arr)
    assert headers["Content-Type"] == (
        "application/octet-stream" if any_binary else "application/json"
    )
    assert (length is not None) == any_binary


@FAST
@given(arrays=many_arrays(json_safe=False), request_id=st.none() | st.text(max_size=5))
def test_msgpack_round_trip(arrays: Arrays, request_id: str | None) -> None:
    inputs = []
    for i, (datatype, arr) in enumerate(arrays):
        raw: Any = arr.reshape(-1).tolist() if datatype == "BYTES" else arr.tobytes()
        inputs.append(
            {"name": f"in{i}", "datatype": datatype, "shape": list(arr.shape), "data": raw}
        )
    doc: dict[str, Any] = {"inputs": inputs, "outputs": [{"name": "y"}]}
    if request_id is not None:
        doc["id"] = request_id
    request = decode_msgpack_request(msgpack.packb(doc, use_bin_type=True))
    assert request.id == request_id
    assert request.outputs is not None and [o.name for o in request.outputs] == ["y"]
    for i, ((datatype, arr), tensor) in enumerate(zip(arrays, request.inputs, strict=True)):
        _assert_tensor(tensor, f"in{i}", datatype, arr)

    response = InferResponse("m", "1", request_id, request.inputs, {"took_us": 7})
    back = msgpack.unpackb(encode_msgpack_response(response), raw=False)
    assert (back["model_name"], back["model_version"], back.get("id")) == ("m", "1", request_id)
    assert back["parameters"] == {"took_us": 7}
    for entry, (datatype, arr) in zip(back["outputs"], arrays, strict=True):
        assert (entry["datatype"], entry["shape"]) == (datatype, list(arr.shape))
        if datatype == "BYTES":
            assert entry["data"] == arr.reshape(-1).tolist()
        else:
            assert entry["data"] == arr.tobytes()


# --------------------------------------------------------------------------------------------
# Specific behaviour


def test_one_row_msgpack_decode_is_a_zero_copy_view() -> None:
    row = np.arange(16, dtype=np.float32).reshape(1, 16)
    body = msgpack.packb(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": row.tobytes()}]}
    )
    data = decode_msgpack_request(body).inputs[0].data
    # A frombuffer view over the unpacked bin object: no per-element Python work, no copy.
    owner: Any = data
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, bytes) and len(owner) == row.nbytes
    assert not data.flags.owndata and not data.flags.writeable
    assert data.flags.aligned and data.flags.c_contiguous
    np.testing.assert_array_equal(data, row)


def test_misaligned_binary_input_is_copied_aligned() -> None:
    arr = np.arange(6, dtype=np.float64)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP64",
                    "shape": [6],
                    "parameters": {"binary_data_size": 48},
                }
            ],
            "pad": "x",
        }
    )
    for pad in range(8):
        h = header.replace(b'"x"}', b'"' + b"x" * (pad + 1) + b'"}')
        data = decode_json_request(h + arr.tobytes(), len(h)).inputs[0].data
        assert data.flags.aligned
        np.testing.assert_array_equal(data, arr)


def test_nested_json_data_and_request_fields() -> None:
    body = orjson.dumps(
        {
            "id": "r1",
            "model_name": "ignored",
            "parameters": {"binary_data_output": True, "k": 1},
            "inputs": [
                {"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "b", "datatype": "FP32", "shape": [3], "data": [1, 2.5, True]},
                {"name": "c", "datatype": "BYTES", "shape": [1, 2], "data": [["x", "é"]]},
                {"name": "d", "datatype": "BOOL", "shape": [], "data": True},
            ],
            "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
        }
    )
    request = decode_json_request(body, None)
    assert request.id == "r1" and request.parameters == {"binary_data_output": True, "k": 1}
    a, b, c, d = (t.data for t in request.inputs)
    np.testing.assert_array_equal(a, np.array([[1, 2], [3, 4]], np.int32))
    assert a.dtype == np.int32 and b.dtype == np.float32
    np.testing.assert_array_equal(b, [1, 2.5, 1])
    assert c.tolist() == [[b"x", "é".encode()]]
    assert d.shape == () and d.dtype == np.bool_ and bool(d)
    assert binary_outputs_of(request) == {"y"}  # binary_data_output, overridden for z


def test_uint64_and_int64_extremes_in_json() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "u", "datatype": "UINT64", "shape": [2], "data": [0, 2**64 - 1]},
                {"name": "i", "datatype": "INT64", "shape": [2], "data": [-(2**63), 2**63 - 1]},
                {"name": "m", "datatype": "UINT64", "shape": [1, 2], "data": [[2**63, True]]},
            ]
        }
    )
    u, i, m = (t.data for t in decode_json_request(body, None).inputs)
    assert u.tolist() == [0, 2**64 - 1] and i.tolist() == [-(2**63), 2**63 - 1]
    assert m.dtype == np.uint64 and m.tolist() == [[2**63, 1]]


def test_non_finite_and_non_utf8_json_outputs_go_binary() -> None:
    values = np.array([1.0, np.nan, np.inf], np.float32)
    blob = _objects([b"\xff\xfe"], (1,))
    ok = np.array([1, 2], np.int64)
    response = InferResponse(
        "m",
        "1",
        "id",
        [
            Tensor("f", "FP32", [3], values),
            Tensor("s", "BYTES", [1], blob),
            Tensor("k", "INT64", [2], ok),
        ],
    )
    body, headers = encode_json_response(response)
    result = httpclient.InferResult.from_response_body(
        body, header_length=int(headers[HEADER_LENGTH])
    )
    assert headers["Content-Type"] == "application/octet-stream"
    assert result.get_output("f")["parameters"] == {"binary_data_size": 12}
    assert result.as_numpy("f").tobytes() == values.tobytes()
    assert result.as_numpy("s").tolist() == [b"\xff\xfe"]
    assert result.get_output("k")["data"] == [1, 2]


def test_json_only_response_has_no_header_length() -> None:
    response = InferResponse("m", "1", None, [Tensor("y", "FP64", [2, 1], np.ones((2, 1)))])
    body, headers = encode_json_response(response, binary={"other"})
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [2, 1], "data": [1.0, 1.0]}],
    }


def test_output_data_is_cast_to_the_declared_datatype() -> None:
    response = InferResponse("m", "1", None, [Tensor("y", "FP32", [2], np.array([1.5, 2.0]))])
    body, headers = encode_json_response(response, binary=True)
    assert body[int(headers[HEADER_LENGTH]) :] == np.array([1.5, 2.0], "<f4").tobytes()


@pytest.mark.parametrize(
    "tensor",
    [
        Tensor("y", "FP32", [3], np.zeros(2, np.float32)),
        Tensor("y", "INT32", [2], np.array([1.5, 2.5])),
        Tensor("y", "FP8", [1], np.zeros(1)),
        Tensor("y", "BYTES", [1], np.array([7], dtype=object)),
    ],
    ids=["size mismatch", "float to int", "unknown datatype", "BYTES of int"],
)
def test_bad_outputs_are_internal_errors(tensor: Tensor) -> None:
    response = InferResponse("m", "1", None, [tensor])
    with pytest.raises(InternalError, match="output 'y'"):
        encode_json_response(response)
    with pytest.raises(InternalError, match="output 'y'"):
        encode_msgpack_response(response)


def test_raw_binary_request() -> None:
    arr = np.arange(12, dtype=np.float32)
    spec = TensorSpec("x", "FP32", (-1, 3))
    request = decode_json_request(arr.tobytes(), 0, raw_input=spec)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.shape, request.outputs) == ("x", [4, 3], None)
    np.testing.assert_array_equal(tensor.data, arr.reshape(4, 3))
    fixed = decode_json_request(arr.tobytes(), 0, raw_input=TensorSpec("x", "FP32", (12,)))
    assert fixed.inputs[0].shape == [12]
    blob = decode_json_request(b"\x00raw", 0, raw_input=TensorSpec("s", "BYTES", (-1,)))
    assert blob.inputs[0].shape == [1] and blob.inputs[0].data.tolist() == [b"\x00raw"]
    empty = decode_json_request(b"", 0, raw_input=TensorSpec("x", "INT8", (0, -1)))
    assert empty.inputs[0].shape == [0, 0]


@pytest.mark.parametrize(
    ("body", "spec", "match"),
    [
        (b"\x00" * 8, None, "raw binary request"),
        (b"\x00" * 10, TensorSpec("x", "FP32", (-1,)), "whole number"),
        (b"\x00" * 8, TensorSpec("x", "FP32", (-1, 3)), "do not fit"),
        (b"\x00" * 8, TensorSpec("x", "FP32", (-1, -1)), "more than one variable"),
        (b"\x00" * 8, TensorSpec("x", "FP32", (3,)), "needs 3"),
        (b"\x00", TensorSpec("x", "BYTES", (2,)), "one-element"),
        (b"\x00", TensorSpec("x", "FP80", (1,)), "unknown datatype"),
        (b"\x02", TensorSpec("x", "BOOL", (1,)), "0 or 1"),
    ],
)
def test_raw_binary_request_errors(body: bytes, spec: TensorSpec | None, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_json_request(body, 0, raw_input=spec)


def test_dtype_tables() -> None:
    for datatype in NUMERIC:
        dtype = numpy_dtype(datatype)
        assert datatype_of(np.zeros(1, dtype)) == datatype
        assert datatype_of(np.zeros(1, dtype.newbyteorder(">"))) == datatype
    assert numpy_dtype("BYTES") == np.dtype(object)
    for arr in (np.array([b"a"]), np.array(["a"]), np.array([b"a"], dtype=object)):
        assert datatype_of(arr) == "BYTES"
    with pytest.raises(InvalidInput, match="FP8"):
        numpy_dtype("FP8")
    with pytest.raises(InvalidInput, match="complex"):
        datatype_of(np.zeros(1, np.complex64))


# --------------------------------------------------------------------------------------------
# Malformed requests


def _binary_request(inputs: list[dict[str, Any]], data: bytes, **extra: Any) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + data, len(header)


def _fp32(size: Any, shape: list[int] | None = None, name: str = "x") -> dict[str, Any]:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": shape or [2],
        "parameters": {"binary_data_size": size},
    }


def _json(datatype: str, shape: Any, data: Any, name: str = "x") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _doc(*inputs: dict[str, Any], **extra: Any) -> tuple[bytes, None]:
    return orjson.dumps({"inputs": list(inputs), **extra}), None


def _bytes_input(size: int) -> dict[str, Any]:
    return {
        "name": "x",
        "datatype": "BYTES",
        "shape": [2],
        "parameters": {"binary_data_size": size},
    }


EIGHT = b"\x00" * 8
BAD_JSON_REQUESTS: dict[str, tuple[tuple[bytes, int | None], str]] = {
    "not JSON": ((b'{"inputs": [', None), "not valid JSON"),
    "NaN literal": (
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[NaN]}]}', None),
        "not valid JSON",
    ),
    "header not UTF-8": ((b'{"id": "\xff"}', None), "not valid JSON"),
    "not an object": ((b"[1, 2]", None), "must be a JSON object"),
    "missing inputs": ((b"{}", None), "'inputs' must be a non-empty list"),
    "empty inputs": (_doc(), "'inputs' must be a non-empty list"),
    "input not object": ((b'{"inputs": [3]}', None), r"inputs\[0\] must be an object"),
    "missing name": (_doc({"datatype": "FP32", "shape": [1], "data": [1]}), "'name'"),
    "duplicate input": (_doc(_json("FP32", [1], [1]), _json("FP32", [1], [2])), "given twice"),
    "unknown datatype": (_doc(_json("FP8", [1], [1])), "input 'x': unknown datatype 'FP8'"),
    "missing datatype": (_doc({"name": "x", "shape": [1], "data": [1]}), "unknown datatype None"),
    "datatype a list": (_doc({"name": "x", "datatype": [], "shape": [1], "data": [1]}),
                        r"unknown datatype \[\]"),
    "datatype an object": (_doc({"name": "x", "datatype": {}, "shape": [1], "data": [1]}),
                           "unknown datatype"),
    "shape not list": (_doc(_json("FP32", 3, [1, 2, 3])), "'shape' must be a list"),
    "negative dim": (_doc(_json("FP32", [-1], [1])), "negative dimension"),
    "float dim": (_doc(_json("FP32", [1.0], [1])), "non-integer"),
    "bool dim": (_doc(_json("FP32", [True], [1])), "non-integer"),
    "huge empty shape": (_doc(_json("FP32", [0, 2**62, 2**62], [])), "too large"),
    "too many dims": (_doc(_json("FP32", [1] * 33, [1])), "dimensions"),
    "size mismatch": (_doc(_json("FP32", [2, 2], [1, 2, 3])), "holds 3 elements but shape"),
    "BYTES size mismatch": (_doc(_json("BYTES", [2], ["a"])), "holds 1 elements"),
    "ragged": (_doc(_json("FP32", [2, 2], [[1], [2, 3]])), "regularly nested"),
    "string in numeric": (
        _doc(_json("FP32", [1], ["1.5"])),
        "FP32 data must be numbers, got strings",
    ),
    "null in numeric": (_doc(_json("FP64", [2], [1, None])), "got null or non-numeric"),
    "object in numeric": (_doc(_json("INT8", [1], [{"a": 1}])), "non-numeric"),
    "float in integer": (_doc(_json("INT32", [2], [1, 2.5])), "must be integers"),
    "int in BOOL": (_doc(_json("BOOL", [2], [0, 1])), "must be booleans, got integers"),
    "float in BOOL": (_doc(_json("BOOL", [1], [1.0])), "must be booleans, got numbers"),
    "INT64 past 2^64": ((b'{"inputs":[{"name":"x","datatype":"INT64","shape":[1],'
                         b'"data":[18446744073709551616]}]}', None), "out of INT64 range"),
    "non-UTF-8 binary without header": ((orjson.dumps({"inputs": [_json("FP32", [1], [1])]})
                               + b"\xff\xfe\x00\x80", None), "needs the Inference-Header"),
    "UINT8 overflow": (_doc(_json("UINT8", [2], [1, 256])), "256 is out of UINT8 range"),
    "UINT32 negative": (_doc(_json("UINT32", [1], [-1])), "-1 is out of UINT32 range"),
    "INT64 overflow": (_doc(_json("INT64", [1], [2**63])), "out of INT64 range"),
    "INT64 mixed overflow": (_doc(_json("INT64", [2], [-1, 2**63])), "out of INT64 range"),
    "UINT64 mixed float": (_doc(_json("UINT64", [2], [2**63, 0.5])), "non-integer numbers"),
    "UINT64 mixed string": (_doc(_json("UINT64", [2], [2**63, "a"])), "got strings"),
    "UINT64 mixed null": (_doc(_json("UINT64", [2], [2**63, None])), "null or non-numeric"),
    "UINT64 negative": (_doc(_json("UINT64", [2], [2**63, -1])), "-1 is out of UINT64"),
    "FP16 overflow": (_doc(_json("FP16", [1], [1e6])), "out of FP16 range"),
    "BYTES non-string": (_doc(_json("BYTES", [1], [1])), "BYTES data must be strings"),
    "no data": (_doc({"name": "x", "datatype": "FP32", "shape": [1]}), "neither 'data'"),
    "input parameters not object": (
        _doc({**_json("FP32", [1], [1]), "parameters": [1]}),
        "'parameters' must be an object",
    ),
    "shared memory": (
        _doc({**_json("FP32", [1], [1]), "parameters": {"shared_memory_region": "r"}}),
        "shared-memory",
    ),
    "id not string": (_doc(_json("FP32", [1], [1]), id=5), "'id' must be a string"),
    "parameters not object": (
        _doc(_json("FP32", [1], [1]), parameters=[]),
        "'parameters' must be an object",
    ),
    "binary_data_output not bool": (
        _doc(_json("FP32", [1], [1]), parameters={"binary_data_output": 1}),
        "boolean",
    ),
    "outputs not list": (_doc(_json("FP32", [1], [1]), outputs={}), "'outputs' must be a list"),
    "output not object": (_doc(_json("FP32", [1], [1]), outputs=["y"]), "must be an object"),
    "output without name": (_doc(_json("FP32", [1], [1]), outputs=[{}]), "'name'"),
    "duplicate output": (
        _doc(_json("FP32", [1], [1]), outputs=[{"name": "y"}, {"name": "y"}]),
        "requested twice",
    ),
    "binary_data not bool": (
        _doc(_json("FP32", [1], [1]), outputs=[{"name": "y", "parameters": {"binary_data": "1"}}]),
        "'binary_data' must be a boolean",
    ),
    "binary without header": (
        (_binary_request([_fp32(8)], EIGHT)[0], None),
        f"not valid JSON.*needs the {HEADER_LENGTH} header",
    ),
    "binary size without header": (
        (_binary_request([_fp32(8)], b"")[0], None),
        f"no {HEADER_LENGTH} header",
    ),
    "both data and binary": (
        _binary_request([{**_fp32(8), "data": [1, 2]}], EIGHT),
        "both 'data' and binary",
    ),
    "negative binary size": (_binary_request([_fp32(-8)], EIGHT), "non-negative"),
    "float binary size": (_binary_request([_fp32(8.0)], EIGHT), "non-negative"),
    "binary size mismatch": (_binary_request([_fp32(12, [2])], b"\x00" * 12), "needs 8"),
    "truncated body": (_binary_request([_fp32(8)], b"\x00" * 4), "truncated"),
    "truncated second input": (
        _binary_request([_fp32(8), _fp32(8, name="y")], b"\x00" * 12),
        "input 'y'.*truncated",
    ),
    "trailing bytes": (_binary_request([_fp32(8)], b"\x00" * 9), "1 trailing bytes"),
    "trailing bytes after JSON": ((b'{"inputs":[]}xyz', 13), "'inputs'"),
    "trailing bytes after JSON-only": (
        (_doc(_json("FP32", [1], [1]))[0] + b"zz", len(_doc(_json("FP32", [1], [1]))[0])),
        "2 trailing bytes",
    ),
    "header longer than body": ((b"{}", 3), "only 2 bytes"),
    "negative header length": ((b"{}", -1), "non-negative integer"),
    "BOOL binary not 0/1": (
        _binary_request(
            [
                {
                    "name": "x",
                    "datatype": "BOOL",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2},
                }
            ],
            b"\x01\x07",
        ),
        "0 or 1",
    ),
    "BYTES binary too small": (_binary_request([_bytes_input(4)], b"\x00" * 4), "too small"),
    "BYTES element overruns": (
        _binary_request([_bytes_input(9)], struct.pack("<I", 1) + b"a" + struct.pack("<I", 9)),
        "element 1 claims 9 bytes",
    ),
    "BYTES leftover": (
        _binary_request([_bytes_input(11)], struct.pack("<II", 0, 1) + b"abc"),
        "2 bytes left over",
    ),
    "BYTES truncated length": (
        _binary_request([_bytes_input(10)], struct.pack("<I", 3) + b"abc" + b"\x00\x00\x00"),
        "element 1 is truncated",
    ),
}


@pytest.mark.parametrize(("case", "match"), BAD_JSON_REQUESTS.values(), ids=BAD_JSON_REQUESTS)
def test_malformed_json_requests_raise_invalid_input(
    case: tuple[bytes, int | None], match: str
) -> None:
    body, header_length = case
    with pytest.raises(InvalidInput, match=match):
        decode_json_request(body, header_length)


def _packed(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return bytes(msgpack.packb({"inputs": list(inputs), **extra}, use_bin_type=True))


BAD_MSGPACK_REQUESTS: dict[str, tuple[bytes, str]] = {
    "not msgpack": (b"\xc1", "not valid msgpack: .+"),
    "too deep": (b"\x91" * 100_000, "not valid msgpack: .+"),
    "JSON sent as msgpack": (b'{"inputs": []}', "looks like JSON"),
    "datatype a list": (_packed({"name": "x", "datatype": [], "shape": [1], "data": b"\x00"}),
                        "unknown datatype"),
    "truncated": (_packed(_json("FP32", [1], b"\x00" * 4))[:-2], "not valid msgpack"),
    "trailing bytes": (_packed(_json("FP32", [1], b"\x00" * 4)) + b"\x00", "trailing bytes"),
    "not a map": (msgpack.packb([1, 2]), "must be a msgpack object"),
    "non-string key": (msgpack.packb({1: 2}), "not valid msgpack"),
    "numeric as list": (_packed(_json("FP32", [2], [1.0, 2.0])), "raw little-endian bytes"),
    "numeric byte count": (_packed(_json("FP32", [2], b"\x00" * 7)), "needs 8"),
    "BYTES not list": (_packed(_json("BYTES", [1], b"abc")), "list of byte strings"),
    "BYTES element int": (_packed(_json("BYTES", [1], [3])), "not bytes"),
    "BYTES count": (_packed(_json("BYTES", [2], [b"a"])), "holds 1 elements"),
    "missing data": (_packed({"name": "x", "datatype": "FP32", "shape": [1]}), "no 'data'"),
    "duplicate input": (
        _packed(_json("INT8", [1], b"\x00"), _json("INT8", [1], b"\x00")),
        "given twice",
    ),
    "unknown datatype": (_packed(_json("COMPLEX", [1], b"\x00")), "unknown datatype"),
    "negative dim": (_packed(_json("INT8", [-1], b"")), "negative"),
    "BOOL not 0/1": (_packed(_json("BOOL", [1], b"\x05")), "0 or 1"),
}


@pytest.mark.parametrize(("body", "match"), BAD_MSGPACK_REQUESTS.values(), ids=BAD_MSGPACK_REQUESTS)
def test_malformed_msgpack_requests_raise_invalid_input(body: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_msgpack_request(body)


_VALID_BINARY, _VALID_LENGTH = _triton_body(
    [
        ("FP32", np.arange(4, dtype=np.float32).reshape(2, 2)),
        ("BYTES", _objects([b"ab", b"c"], (2,))),
    ],
    [True, True],
)
_VALID_MSGPACK = _packed(_json("FP32", [2], b"\x00" * 8), _json("BYTES", [1], [b"z"]))


def _decode_or_invalid(decode: Callable[..., InferRequest], *args: Any) -> InferRequest | None:
    try:
        return decode(*args)
    except InvalidInput:
        return None


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=64), header_length=st.none() | st.integers(-2, 70))
def test_random_bytes_raise_only_invalid_input(body: bytes, header_length: int | None) -> None:
    _decode_or_invalid(decode_json_request, body, header_length)
    _decode_or_invalid(decode_msgpack_request, body)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_corrupted_valid_bodies_raise_only_invalid_input(data: st.DataObject) -> None:
    for valid in (_VALID_BINARY, _VALID_MSGPACK):
        body = bytearray(valid)
        cut = data.draw(st.integers(0, len(body)))
        if data.draw(st.booleans()):
            del body[cut:]
        elif cut < len(body):
            body[cut] = data.draw(st.integers(0, 255))
        length = data.draw(st.sampled_from([_VALID_LENGTH, None, len(body), cut]))
        _decode_or_invalid(decode_json_request, bytes(body), length)
        _decode_or_invalid(decode_msgpack_request, bytes(body))


# --------------------------------------------------------------------------------------------
# The msgpack fast lane (fast_msgpack_rows) against the general decoder


def _fast_lane_objects(f_in: int) -> st.SearchStrategy[Any]:
    """Request objects around the fast lane's shape: valid ones and near misses of every kind
    (extra or missing keys, other datatypes, shapes, sizes, ids, parameters, outputs)."""
    n = st.integers(0, 5)
    width = st.sampled_from([f_in, f_in - 1, f_in + 1])

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        rows, cols = draw(n), draw(width)
        values = draw(hnp.arrays(np.float32, (rows, max(cols, 0)),
                                 elements=st.floats(width=32, allow_nan=True)))
        data: Any = values.tobytes()
        if draw(st.booleans()):  # a near miss; else the valid value
            data = draw(st.sampled_from([data[:-1] if data else b"x", values.ravel().tolist(),
                                         data + b"\0\0\0\0"]))
        shape: Any = [rows, cols]
        if draw(st.booleans()):
            shape = draw(st.sampled_from([[rows * cols], [rows, cols, 1], [rows, float(cols)],
                                          [-rows, cols]]))
        item: dict[str, Any] = {
            "name": draw(st.sampled_from(["input", "input", "x", "", 3])),
            "datatype": draw(st.sampled_from(["FP32", "FP32", "FP64", "INT32", "BYTES"])),
            "shape": shape, "data": data,
        }
        if draw(st.booleans()) and draw(st.booleans()):
            item["parameters"] = {"binary_data_size": len(values.tobytes())}
        if draw(st.booleans()) and draw(st.booleans()):
            del item[draw(st.sampled_from(sorted(item)))]
        obj: dict[str, Any] = {"inputs": draw(st.sampled_from([[item], [item, item], item]))}
        if draw(st.booleans()):
            obj["id"] = draw(st.none() | st.text(max_size=8) | st.integers(-5, 5))
        if draw(st.booleans()):
            obj["parameters"] = draw(st.sampled_from([
                {}, {"priority": 1}, {"timeout": 100, "priority": 2}, {"binary_data_output": True},
                {"priority": 1, "other": "x"}, [],
            ]))
        if draw(st.booleans()) and draw(st.booleans()):
            obj["outputs"] = [{"name": "probability"}]
        return draw(st.sampled_from([obj, obj, obj, [obj], None]))

    return build()


def _assert_fast_lane_agrees(
    fast: tuple[np.ndarray, str | None, dict[str, Any]] | None, request: InferRequest, f_in: int
) -> None:
    if fast is None:
        return
    rows, request_id, parameters = fast
    assert request.outputs is None and len(request.inputs) == 1
    tensor = request.inputs[0]
    assert tensor.datatype == "FP32" and tensor.shape == [rows.shape[0], f_in]
    np.testing.assert_array_equal(rows, tensor.data)
    assert rows.dtype == np.float32 and rows.flags.aligned and rows.flags.c_contiguous
    assert request_id == request.id and parameters == request.parameters


@FAST
@given(data=st.data(), f_in=st.integers(1, 6))
def test_fast_lane_never_accepts_what_the_general_path_refuses(
    data: st.DataObject, f_in: int
) -> None:
    """fast_msgpack_rows(obj) is None or exactly what the general decoder makes of obj, for
    the same object after a msgpack round trip (what the server decodes)."""
    from mlserve.server.codecs import fast_msgpack_rows, msgpack_request_from_object

    obj = msgpack.unpackb(msgpack.packb(data.draw(_fast_lane_objects(f_in))), raw=False)
    fast = fast_msgpack_rows(obj, f_in)
    try:
        request = msgpack_request_from_object(obj)
    except InvalidInput:
        assert fast is None
        return
    _assert_fast_lane_agrees(fast, request, f_in)


def test_fast_lane_takes_the_common_request() -> None:
    from mlserve.server.codecs import fast_msgpack_rows, unpack_msgpack

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = msgpack.packb({"id": "r1", "parameters": {"priority": 1}, "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 3], "data": x.tobytes()}]})
    fast = fast_msgpack_rows(unpack_msgpack(body), 3)
    assert fast is not None
    np.testing.assert_array_equal(fast[0], x)
    assert fast[1:] == ("r1", {"priority": 1})


@FAST
@given(data=st.data(), f_in=st.integers(1, 6))
def test_json_fast_lane_never_accepts_what_the_general_path_refuses(
    data: st.DataObject, f_in: int
) -> None:
    """fast_json_rows(body) is None or exactly what decode_json_request makes of the body."""
    from mlserve.server.codecs import fast_json_rows

    obj = data.draw(_fast_lane_objects(f_in))

    def jsonable(value: Any) -> Any:  # the JSON form of the msgpack-shaped object
        if isinstance(value, bytes):
            floats = np.frombuffer(value[: len(value) // 4 * 4], dtype="<f4")
            picked = data.draw(st.sampled_from(["floats", "ints", "mixed", "huge", "strings"]))
            out: list[Any] = [float(v) if math.isfinite(v) else 0.0 for v in floats]
            if picked == "ints":
                out = [int(v) if abs(v) < 2**62 else 0 for v in out]
            elif picked == "mixed" and out:
                out[0] = True if len(out) > 1 else 7
            elif picked == "huge" and out:
                out[-1] = data.draw(st.sampled_from([3.5e38, -1e300, 2**62, 3.4e38]))
            elif picked == "strings" and out:
                out[0] = "1.0"
            return out
        if isinstance(value, dict):
            return {k: jsonable(v) for k, v in value.items()}
        if isinstance(value, list):
            return [jsonable(v) for v in value]
        return value

    body = orjson.dumps(jsonable(obj))
    fast = fast_json_rows(body, f_in)
    try:
        request = decode_json_request(body, None)
    except InvalidInput:
        assert fast is None
        return
    _assert_fast_lane_agrees(fast, request, f_in)


def test_json_fast_lane_declines_ragged_and_deep_data() -> None:
    """Data of the right length that is not a flat list goes to the general path (which says
    what is wrong) instead of raising from the fast lane."""
    from mlserve.server.codecs import fast_json_rows

    deep: Any = 1
    for _ in range(70):
        deep = [deep]
    for data in ([[1, 2], [3], 1, 1], [deep, 1, 1, 1]):
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                         "data": data}]})
        assert fast_json_rows(body, 4) is None
        with pytest.raises(InvalidInput):
            decode_json_request(body, None)


def test_json_fast_lane_takes_the_common_request() -> None:
    from mlserve.server.codecs import fast_json_rows

    body = orjson.dumps({"id": "a", "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [1, 2.5, -3, 4]}]})
    fast = fast_json_rows(body, 2)
    assert fast is not None
    np.testing.assert_array_equal(fast[0], np.array([[1, 2.5], [-3, 4]], dtype=np.float32))
    assert fast[1:] == ("a", {})
    assert fast_json_rows(b"{not json", 2) is None


# ---- the core's msgpack lane (csrc/server/msgpack_lane.h) --------------------------------------


def _core_lane(f_in: int, non_nullable: list[bool] | None = None) -> Any:
    """A _core.MsgpackLane whose response pieces follow the documented layout for model
    ``m``/``7`` with one output ``probability``."""
    from mlserve import _core

    names = b"".join(msgpack.packb(v) for v in ("model_name", "m", "model_version", "7"))
    output = b"".join([msgpack.packb("outputs"), b"\x91\x84"]
                      + [msgpack.packb(v) for v in ("name", "probability", "datatype", "FP32",
                                                    "shape")])
    return _core.MsgpackLane(f_in, non_nullable or [False] * f_in, b"\x83" + names,
                             b"\x84" + names + msgpack.packb("id"), output,
                             msgpack.packb("data"))


def _assert_core_lane_subset(got: Any, body: bytes, f_in: int) -> None:
    """The core lane's parse ``got`` of ``body`` is None or exactly what the Python fast lane
    finds (rows bit for bit, id, the priority/timeout it would apply)."""
    from mlserve.server.codecs import fast_msgpack_rows, unpack_msgpack

    if got is None:
        return
    fast = fast_msgpack_rows(unpack_msgpack(body), f_in)  # must not raise: the lane accepted
    assert fast is not None
    rows, request_id, params = got
    assert rows.tobytes() == fast[0].tobytes() and rows.shape == fast[0].shape
    assert request_id == fast[1]
    assert params.get("priority") == fast[2].get("priority")
    assert params.get("timeout") == fast[2].get("timeout")


@FAST
@given(data=st.data(), f_in=st.integers(1, 6))
def test_core_lane_accepts_only_what_the_python_fast_lane_accepts_alike(
    data: st.DataObject, f_in: int
) -> None:
    body = msgpack.packb(data.draw(_fast_lane_objects(f_in)))
    lane = _core_lane(f_in)
    _assert_core_lane_subset(lane.parse(body), body, f_in)
    # byte-level damage: truncation, a changed byte, trailing bytes
    cut = data.draw(st.integers(0, len(body)))
    at = data.draw(st.integers(0, len(body) - 1))
    flipped = body[:at] + bytes([body[at] ^ data.draw(st.integers(1, 255))]) + body[at + 1:]
    for damaged in (body[:cut], flipped, body + b"\xc0"):
        try:
            msgpack.unpackb(damaged, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            assert lane.parse(damaged) is None
            continue
        _assert_core_lane_subset(lane.parse(damaged), damaged, f_in)


@FAST
@given(
    rows=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(3)),
                    elements=st.floats(width=32, allow_nan=True)),
    request_id=st.none() | st.text(alphabet=st.characters(max_codepoint=127), max_size=300),
    priority=st.none() | st.integers(-(2**40), 2**40),
    timeout=st.sampled_from(["absent", None]) | st.integers(-(2**62), 2**62),
    parameters_nil=st.booleans(),
)
def test_core_lane_takes_the_common_request(
    rows: np.ndarray, request_id: str | None, priority: int | None, timeout: Any,
    parameters_nil: bool,
) -> None:
    """Valid requests with ASCII ids and integer parameters: the lane takes them all, with the
    rows, id and parameters the Python fast lane finds; NaN declines only in a non-nullable
    column."""
    params: dict[str, Any] = {}
    if priority is not None:
        params["priority"] = priority
    if timeout != "absent":
        params["timeout"] = timeout
    obj: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32",
                                       "shape": [rows.shape[0], 3], "data": rows.tobytes()}]}
    if request_id is not None:
        obj["id"] = request_id
    if params or parameters_nil:
        obj["parameters"] = params or None
    body = msgpack.packb(obj)
    got = _core_lane(3).parse(body)
    assert got is not None
    _assert_core_lane_subset(got, body, 3)
    nan_in_first = bool(np.isnan(rows[:, 0]).any())
    assert (_core_lane(3, [True, False, False]).parse(body) is None) == nan_in_first


def test_core_lane_declines_duplicates_trailing_bytes_and_odd_types() -> None:
    x = np.ones((1, 2), dtype=np.float32).tobytes()
    item = {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": x}
    lane = _core_lane(2)
    assert lane.parse(msgpack.packb({"inputs": [item]})) is not None
    # a duplicate key (Python keeps the last one), built by hand: fixmap of 2 entries
    dup = b"\x82" + msgpack.packb("id") + msgpack.packb("a") + msgpack.packb("id") + \
        msgpack.packb("b")
    assert lane.parse(dup) is None
    declined = [
        msgpack.packb({"inputs": [item]}) + b"\x00",                      # trailing bytes
        msgpack.packb({"inputs": [item], "id": "ü"}),                     # non-ASCII id
        msgpack.packb({"inputs": [item], "parameters": {"priority": 1.0}}),
        msgpack.packb({"inputs": [item], "parameters": {"priority": None}}),
        msgpack.packb({"inputs": [item], "parameters": {"priority": True}}),
        msgpack.packb({"inputs": [{**item, "data": list(np.ones(2))}]}),  # a list, not bin
        msgpack.packb({"inputs": [{**item, "shape": [1, 3]}]}),
        msgpack.packb({"inputs": [{**item, "shape": [0, 2], "data": b""}]}),
        msgpack.packb({"inputs": [{**item, "datatype": b"FP32"}]}),       # bin, not str
        msgpack.packb({"inputs": [item], "outputs": [{"name": "p"}]}),
        msgpack.packb({"inputs": [item, item]}),
        msgpack.packb({"id": "only"}),
        b"",
    ]
    for body in declined:
        assert lane.parse(body) is None, body


@FAST
@given(
    y=hnp.arrays(np.float32, st.tuples(st.integers(1, 300), st.integers(1, 70)),
                 elements=st.floats(width=32, allow_nan=True)),
    request_id=st.none() | st.text(alphabet=st.characters(max_codepoint=127), max_size=70_000),
)
def test_core_lane_response_is_what_msgpack_packs(y: np.ndarray, request_id: str | None) -> None:
    """The encoded response equals msgpack.packb of the response object (an independent
    encoder): fixstr/str8/str16/str32 ids, fixint/uint8/uint16 shapes, bin8/bin16/bin32 data."""
    head: dict[str, Any] = {"model_name": "m", "model_version": "7"}
    if request_id is not None:
        head["id"] = request_id
    want = msgpack.packb({**head, "outputs": [{"name": "probability", "datatype": "FP32",
                                               "shape": list(y.shape), "data": y.tobytes()}]})
    assert _core_lane(3).encode(y, request_id) == want
