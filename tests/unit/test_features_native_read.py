"""The online store's native batched read (``mlserve._core.LmdbEnv.read_records``, used by
``OnlineStore.read`` and ``ServiceReader.read``) against an independent reference: the records
decoded by hand with ``struct`` from what a plain transaction stores under the keys encoded by
``keys.encode_keys``. Also: missing keys, the inclusive TTL edge, wrong record sizes, int64
arrays and encoded keys giving the same answer, the key checks of ``int64_key_values``, the
newer-wins native write, and the LMDB binding's own errors."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import _core
from mlserve.errors import InternalError, InvalidInput
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView, RowStatus
from mlserve.features.keys import encode_keys, int64_key_values
from mlserve.features.records import RecordLayout

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER = Entity("user", "user_id")
I64 = st.integers(-(2**63), 2**63 - 1)


def reference_read(raw: dict[bytes, bytes], keys: list[bytes], f: int, now_ns: int | None,
                   ttl_ns: int | None) -> tuple[list[list[float]], list[int], list[int]]:
    """Brute force: decode each stored record with struct, one key at a time."""
    values, status, event_ts = [], [], []
    for key in keys:
        rec = raw.get(key)
        if rec is None:
            values.append([math.nan] * f)
            status.append(int(RowStatus.MISSING))
            event_ts.append(0)
            continue
        ts = struct.unpack_from("<q", rec, 0)[0]
        event_ts.append(ts)
        if now_ns is not None and ttl_ns is not None and ts < now_ns - ttl_ns:
            values.append([math.nan] * f)
            status.append(int(RowStatus.EXPIRED))
            continue
        row = list(struct.unpack_from(f"<{f}f", rec, 16))
        nulls = rec[16 + 4 * f:16 + 4 * f + (f + 7) // 8]
        values.append([math.nan if nulls[j // 8] >> (j % 8) & 1 else row[j] for j in range(f)])
        status.append(int(RowStatus.PRESENT))
    return values, status, event_ts


def assert_same(got: tuple[np.ndarray, np.ndarray, np.ndarray],
                want: tuple[list[list[float]], list[int], list[int]], f: int) -> None:
    values, status, event_ts = got
    assert values.dtype == np.float32 and values.shape == (len(want[1]), f)
    expected = np.asarray(want[0], dtype=np.float32).reshape(values.shape)
    np.testing.assert_array_equal(values, expected)
    assert status.dtype == np.int8 and status.tolist() == want[1]
    assert event_ts.dtype == np.int64 and event_ts.tolist() == want[2]


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    f = draw(st.integers(0, 17))
    stored = draw(st.lists(I64, unique=True, max_size=40))
    rows = []
    for _ in stored:
        nulls = draw(st.lists(st.booleans(), min_size=f, max_size=f))
        vals = draw(st.lists(st.floats(width=32, allow_nan=True), min_size=f, max_size=f))
        rows.append((draw(I64), draw(I64), vals, nulls))
    asked = draw(st.lists(st.one_of(st.sampled_from(stored) if stored else I64, I64),
                          max_size=60))
    now = draw(st.one_of(st.none(), I64))
    ttl = draw(st.one_of(st.none(), st.integers(0, 2**63 - 1)))
    return {"f": f, "stored": stored, "rows": rows, "asked": asked, "now": now, "ttl": ttl}


@FEW
@given(cases())
def test_native_read_equals_a_brute_force_decode(tmp_path_factory: pytest.TempPathFactory,
                                                  case: dict[str, Any]) -> None:
    f = case["f"]
    layout = RecordLayout(f)
    env = _core.LmdbEnv(str(tmp_path_factory.mktemp("env")), 1 << 24)
    try:
        dbi = env.open_db("view/v/v1", create=True)
        assert dbi is not None
        keys = encode_keys(USER, [case["stored"]])
        raw: dict[bytes, bytes] = {}
        with env.begin(write=True) as txn:
            for key, (ts, created, vals, nulls) in zip(keys, case["rows"], strict=True):
                rec = layout.encode(np.array([ts]), np.array([created]),
                                    np.array([vals], dtype=np.float32).reshape(1, f),
                                    np.array([nulls], dtype=bool).reshape(1, f)).tobytes()
                txn.put(dbi, key, rec)
                raw[key] = rec
        asked = case["asked"]
        want = reference_read(raw, encode_keys(USER, [asked]), f, case["now"], case["ttl"])
        by_value = env.read_records(dbi, np.array(asked, dtype=np.int64), f, case["now"],
                                    case["ttl"], "db")
        by_bytes = env.read_records(dbi, encode_keys(USER, [asked]), f, case["now"],
                                    case["ttl"], "db")
        assert_same(by_value, want, f)
        assert_same(by_bytes, want, f)
    finally:
        env.close()


def make_store(root: Path, ttl: int | None = None) -> FeatureStore:
    store = FeatureStore(root)
    store.apply([USER, FeatureView("v", USER, [Column("x", "float"), Column("n", "int")],
                                   ttl_seconds=ttl), FeatureService("svc", ["v"])])
    return store


def put_raw(store: FeatureStore, view: FeatureView, items: dict[bytes, bytes]) -> None:
    """Writes bytes as they are into the view's database (bypassing the record checks)."""
    env = store.online._env
    dbi = env.db(f"view/{view.name}/v{view.version}", create=True)
    assert dbi is not None
    with env.env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(dbi, key, value)


def test_missing_keys_ttl_edge_and_both_key_forms(tmp_path: Path) -> None:
    with make_store(tmp_path, ttl=10) as store:
        view = store.view("v")
        layout = RecordLayout(2)
        second = 1_000_000_000
        recs = layout.encode(np.array([100 * second, 89 * second]), np.array([0, 0]),
                             np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 2), bool))
        put_raw(store, view, dict(zip(encode_keys(USER, [[1, 2]]), (r.tobytes() for r in recs),
                                      strict=True)))
        now = 100 * second
        for keys in ([2, 7, 1], np.array([2, 7, 1])):
            got = store.service_reader("svc").read(keys, now_ns=now)  # type: ignore[arg-type]
            assert got.status[:, 0].tolist() == [RowStatus.EXPIRED, RowStatus.MISSING,
                                                 RowStatus.PRESENT]
            assert got.event_ts[:, 0].tolist() == [89 * second, 0, 100 * second]
            assert np.isnan(got.values[:2]).all() and got.values[2].tolist() == [1.0, 2.0]
        # now - ttl itself is still present (inclusive), one ns later it is expired.
        edge = store.online.read(view, np.array([2]), now_ns=99 * second)
        assert edge.status.tolist() == [RowStatus.PRESENT] and edge.values.tolist() == [[3, 4]]
        late = store.online.read(view, encode_keys(USER, [[2]]), now_ns=99 * second + 1)
        assert late.status.tolist() == [RowStatus.EXPIRED]
        # Without now_ns no TTL applies.
        assert store.online.read(view, np.array([2])).status.tolist() == [RowStatus.PRESENT]
        # Empty batches.
        assert store.online.read(view, np.array([], dtype=np.int64)).values.shape == (0, 2)
        assert store.online.read(view, []).status.shape == (0,)


@pytest.mark.parametrize("size", [0, 8, 31, 33, 64])
def test_wrong_record_sizes_are_internal_errors_naming_the_view(tmp_path: Path,
                                                                size: int) -> None:
    with make_store(tmp_path) as store:
        view = store.view("v")
        put_raw(store, view, {encode_keys(USER, [[5]])[0]: b"\x00" * size})
        with pytest.raises(InternalError, match=r"online database of 'v/1' holds records of the "
                                                r"wrong size; expected 32 bytes each, row 1"):
            store.online.read(view, np.array([4, 5]))
        with pytest.raises(InternalError, match="wrong size"):
            store.service_reader("svc").read([5])


def test_int64_key_values_checks_rows_like_encode_keys() -> None:
    assert int64_key_values(USER, [[1, -2]]).tolist() == [1, -2]
    assert int64_key_values(USER, [np.array([3.0])]).dtype == np.int64
    assert int64_key_values(USER, [np.array([[1], [2]])[:, 0]]).flags.c_contiguous
    for column, message in [
        ([1.5], "row 0 is 1.5, expected an int64 key"),
        ([1, "7"], "row 1 is '7', expected an int64 key"),
        ([True], "row 0 is True, expected an int64 key"),
        ([None], "row 0 is None, expected an int64 key"),
        ([2**63], "row 0 is 9223372036854775808, expected an int64 key"),
        (np.array([np.nan]), "row 0 is nan, not an int64 key"),
        (np.array([2**64 - 1], dtype=np.uint64), "above the int64 range"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            int64_key_values(USER, [column])
    with pytest.raises(InvalidInput, match="not one int64 key"):
        int64_key_values(Entity("code", "code", "string"), [["a"]])
    with pytest.raises(InvalidInput, match="got 2 key column"):
        int64_key_values(USER, [[1], [2]])


def test_lists_of_ints_read_like_arrays_and_odd_lists_get_the_checked_errors(
    tmp_path: Path,
) -> None:
    """A list of Python ints goes to the core as is (the lookup hot path); a list holding
    anything else falls back to int64_key_values: integral floats and numpy ints still read,
    the rest raise its errors naming the row."""
    with make_store(tmp_path) as store:
        view = store.view("v")
        layout = RecordLayout(2)
        recs = layout.encode(np.array([5, 6]), np.array([0, 0]),
                             np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 2), bool))
        put_raw(store, view, dict(zip(encode_keys(USER, [[-3, 2**62]]),
                                      (r.tobytes() for r in recs), strict=True)))
        want = store.online.read_arrays(view, np.array([2**62, 7, -3]))
        reader = store.service_reader("svc")
        for keys in ([2**62, 7, -3], [2**62, 7.0, -3], [2**62, np.int64(7), -3]):
            got = store.online.read_arrays(view, keys)  # type: ignore[arg-type]
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(reader.read(keys).values, want[0])  # type: ignore
        for keys, message in [([1, 1.5], "row 1 is 1.5"), ([1, None], "row 1 is None"),
                              ([1, True], "row 1 is True"), ([1, 2**63], "row 1 is 9223"),
                              ([1, "7"], "row 1 is '7'")]:
            with pytest.raises(InvalidInput, match=message):
                store.online.read_arrays(view, keys)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput, match=message):
                reader.read(keys)
        with pytest.raises(InvalidInput, match="row 1 is not bytes"):
            store.online.read_arrays(view, [b"\x01" + bytes(8), 3])  # type: ignore[list-item]


def test_arrays_are_refused_for_string_keyed_views(tmp_path: Path) -> None:
    code = Entity("code", "code", "string")
    with FeatureStore(tmp_path) as store:
        store.apply([code, FeatureView("c", code, {"x": "float"}), FeatureService("s", ["c"])])
        with pytest.raises(InvalidInput, match="pass encoded keys"):
            store.online.read(store.view("c"), np.array([1]))
        with pytest.raises(InvalidInput, match="pass encoded keys"):
            store.online.read(store.view("c"), [1])  # type: ignore[list-item]
        assert store.online_features("s", ["a"]).status.tolist() == [[RowStatus.MISSING]]


def test_native_write_keeps_newer_records(tmp_path: Path) -> None:
    env = _core.LmdbEnv(str(tmp_path), 1 << 24)
    try:
        dbi = env.open_db("d", create=True)
        assert dbi is not None
        layout = RecordLayout(1)
        keys = encode_keys(USER, [[1, 2, 3]])

        def records(ts: list[int], created: list[int], x: list[float]) -> np.ndarray:
            recs = layout.encode(np.array(ts), np.array(created), np.array(x).reshape(-1, 1),
                                 np.zeros((len(ts), 1), bool))
            return recs.view(np.uint8).reshape(-1)

        with env.begin(write=True) as txn:
            assert txn.put_newer_records(dbi, keys, records([5, 5, 5], [1, 1, 1], [1, 1, 1]),
                                         layout.record_bytes) == (3, 0)
        with env.begin(write=True) as txn:
            # older event (kept), same stamps (replaced), newer created_ts (replaced)
            assert txn.put_newer_records(dbi, keys, records([4, 5, 5], [9, 1, 2], [2, 3, 4]),
                                         layout.record_bytes) == (2, 1)
        values, _, _ = env.read_records(dbi, np.array([1, 2, 3]), 1, None, None, "d")
        assert values[:, 0].tolist() == [1.0, 3.0, 4.0]
        with env.begin(write=True) as txn, pytest.raises(InvalidInput, match="bytes of records"):
            txn.put_newer_records(dbi, keys, records([1], [1], [1]), layout.record_bytes)
    finally:
        env.close()


def test_binding_errors(tmp_path: Path) -> None:
    env = _core.LmdbEnv(str(tmp_path), 1 << 24)
    dbi = env.open_db("d", create=True)
    assert dbi is not None and env.open_db("absent", create=False) is None
    with pytest.raises(InvalidInput, match="1-d int64 array"):
        env.read_records(dbi, np.array([1.0]), 1, None, None, "d")
    with pytest.raises(InvalidInput, match="row 1 is not bytes"):
        env.read_records(dbi, [b"\x01" * 9, "x"], 1, None, None, "d")  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="1 to 511 bytes"):
        env.read_records(dbi, [b""], 1, None, None, "d")
    txn = env.begin()
    with pytest.raises(InvalidInput, match="transaction"):
        env.close()
    txn.abort()
    with pytest.raises(InvalidInput, match="ended"):
        txn.get(dbi, b"k")
    env.close()
    assert env.closed
    with pytest.raises(InvalidInput, match="closed"):
        env.begin()
    with pytest.raises(InvalidInput, match="mdb_env_open"):
        _core.LmdbEnv(str(tmp_path / "does-not-exist"), 1 << 24)
