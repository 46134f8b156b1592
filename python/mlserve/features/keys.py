"""Entity keys as LMDB keys: a byte string per entity, the same in every process.

Encoding, per join key in the entity's key order, concatenated:

- ``int64``:  the tag byte ``0x01``, then the 8 bytes of ``value XOR 2**63`` big-endian (flipping
  the sign bit makes the byte order of keys the numeric order);
- ``string``: the tag byte ``0x02``, then the UTF-8 length as 2 bytes big-endian, then the bytes.

So user 42 is ``01 80 00 00 00 00 00 00 2a``. An encoded key is at most 511 bytes (LMDB's key
limit); longer string keys are refused with InvalidInput. The online store's native read encodes
int64 keys itself from :func:`int64_key_values` (csrc/features/online_records.cc, the same
bytes). No pandas here: the server imports it. Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput

from .definitions import Entity

INT64_TAG = 0x01
STRING_TAG = 0x02
#: LMDB's default (and usual compiled) maximum key size.
MAX_KEY_BYTES = 511

_SIGN = np.uint64(1 << 63)
_INT_RECORD = np.dtype([("tag", "u1"), ("value", ">u8")])
_INT_TAG_BYTE = bytes((INT64_TAG,))
_OFFSET = 1 << 63
_INT = {int}
#: Up to this many keys, Python ints encode faster than numpy's structured arrays.
_SMALL = 128


def _int64_column(values: Any, key: str) -> np.ndarray:
    arr = values if isinstance(values, np.ndarray) else None
    if arr is None and len(values) > _SMALL:
        arr = np.asarray(values)  # fast for a list of ints; anything else is checked below
    if arr is None or arr.dtype.kind not in "iuf":
        # Python sequences (JSON, the command line) and object arrays: check each value, so
        # that a stray string is reported as itself, not as a numpy string array.
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values.tolist() if isinstance(values, np.ndarray) else values):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) \
                    or not -_OFFSET <= int(v) < _OFFSET:
                shown = "NaN" if isinstance(v, float) and v != v else repr(v)
                raise InvalidInput(f"join key {key!r}: row {i} is {shown}, expected an int64 "
                                   "key")
            out[i] = v
        return out
    if arr.dtype.kind == "u":
        if arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise InvalidInput(f"join key {key!r}: values above the int64 range")
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        ints = np.where(np.isfinite(arr), arr, 0).astype(np.int64)
        bad = ~np.isfinite(arr) | (ints != arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInput(f"join key {key!r}: row {i} is {arr[i].item()!r}, not an int64 "
                               "key")
        return ints
    return arr.astype(np.int64, copy=False)


def _string_column(values: Any, key: str) -> list[bytes]:
    out: list[bytes] = []
    for i, v in enumerate(np.asarray(values, dtype=object).tolist()):
        if not isinstance(v, str):
            raise InvalidInput(f"join key {key!r}: row {i} is {v!r}, expected a string key")
        b = v.encode("utf-8")
        if len(b) > MAX_KEY_BYTES - 3:
            raise InvalidInput(f"join key {key!r}: row {i} is {len(b)} bytes of UTF-8; keys "
                               f"are at most {MAX_KEY_BYTES - 3}")
        out.append(b)
    return out


def _encode_int64(values: Any, key: str) -> list[bytes]:
    if isinstance(values, list) and len(values) <= _SMALL and set(map(type, values)) <= _INT:
        try:  # out of the int64 range: to_bytes overflows, and the checked path below reports
            return [_INT_TAG_BYTE + (v + _OFFSET).to_bytes(8, "big") for v in values]
        except OverflowError:
            pass
    ints = _int64_column(values, key)
    if ints.shape[0] <= _SMALL:
        return [_INT_TAG_BYTE + (v + _OFFSET).to_bytes(8, "big") for v in ints.tolist()]
    rec = np.empty(ints.shape[0], dtype=_INT_RECORD)
    rec["tag"] = INT64_TAG
    rec["value"] = ints.view(np.uint64) ^ _SIGN
    buf = rec.tobytes()
    width = _INT_RECORD.itemsize
    return [buf[i:i + width] for i in range(0, len(buf), width)]


def _check_columns(entity: Entity, columns: Sequence[Any]) -> None:
    if len(columns) != len(entity.join_keys):
        raise InvalidInput(f"entity {entity.name!r} has join keys {list(entity.join_keys)}; "
                           f"got {len(columns)} key column(s)")
    n = len(columns[0]) if columns else 0
    for key, col in zip(entity.join_keys, columns, strict=True):
        if len(col) != n:
            raise InvalidInput(f"join key {key!r}: {len(col)} values, expected {n} like "
                               f"{entity.join_keys[0]!r}")


def int64_key_values(entity: Entity, columns: Sequence[Any]) -> np.ndarray:
    """For an entity with one int64 join key: its values as an int64 array, which the online
    store's native read encodes exactly as :func:`encode_keys` does (the lookup hot path: no
    bytes object per key). Null, non-integral or mistyped keys raise InvalidInput naming the key
    and the row, as :func:`encode_keys`."""
    _check_columns(entity, columns)
    if entity.key_dtypes != ("int64",):
        raise InvalidInput(f"entity {entity.name!r} has join keys "
                           f"{list(zip(entity.join_keys, entity.key_dtypes, strict=True))}, not "
                           "one int64 key")
    values = columns[0]
    if isinstance(values, list) and set(map(type, values)) <= _INT:
        try:  # a list of Python ints: one conversion, range-checked by numpy
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass  # the checked path below names the row
    return np.ascontiguousarray(_int64_column(values, entity.join_keys[0]))


def encode_keys(entity: Entity, columns: Sequence[Any]) -> list[bytes]:
    """The LMDB key of each entity row; ``columns`` holds one array-like per join key, all of
    the same length. Null, non-integral or mistyped keys raise InvalidInput naming the key and
    the row."""
    _check_columns(entity, columns)
    if entity.key_dtypes == ("int64",):
        return _encode_int64(columns[0], entity.join_keys[0])  # the hot path of reads
    parts: list[list[bytes]] = []
    for key, dtype, col in zip(entity.join_keys, entity.key_dtypes, columns, strict=True):
        if dtype == "int64":
            parts.append(_encode_int64(col, key))
        else:
            parts.append([bytes((STRING_TAG,)) + len(b).to_bytes(2, "big") + b
                          for b in _string_column(col, key)])
    out = [b"".join(p) for p in zip(*parts, strict=True)] if parts else []
    for i, k in enumerate(out):
        if len(k) > MAX_KEY_BYTES:
            raise InvalidInput(f"entity {entity.name!r}: row {i}'s key is {len(k)} bytes "
                               f"encoded; at most {MAX_KEY_BYTES}")
    return out


def decode_key(entity: Entity, key: bytes) -> tuple[int | str, ...]:
    """The join key values an encoded key stands for (listings, debugging, tests)."""
    out: list[int | str] = []
    pos = 0
    for name, dtype in zip(entity.join_keys, entity.key_dtypes, strict=True):
        tag = key[pos] if pos < len(key) else None
        if dtype == "int64" and tag == INT64_TAG and pos + 9 <= len(key):
            out.append(int.from_bytes(key[pos + 1:pos + 9], "big") - (1 << 63))
            pos += 9
        elif dtype == "string" and tag == STRING_TAG and pos + 3 <= len(key):
            size = int.from_bytes(key[pos + 1:pos + 3], "big")
            out.append(key[pos + 3:pos + 3 + size].decode("utf-8"))
            pos += 3 + size
        else:
            raise InvalidInput(f"key {key.hex()} is not an encoded {dtype} key {name!r}")
    if pos != len(key):
        raise InvalidInput(f"key {key.hex()} has {len(key) - pos} bytes after its join keys")
    return tuple(out)
