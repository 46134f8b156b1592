"""The online store (a real LMDB environment in a temporary directory): key and record
encodings, online/offline consistency after materialization (present, missing and expired rows),
incremental materialization that never lets an older event replace a newer one, TTL enforced
online, and clear key-level errors."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve.errors import InvalidInput
from mlserve.features import (
    Column,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    RowStatus,
)
from mlserve.features.keys import decode_key, encode_keys
from mlserve.features.records import RecordLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_reference import latest_row, pit_row

BASE = pd.Timestamp("2026-01-01T00:00:00Z")
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER = Entity("user", "user_id")


def at(seconds: float) -> pd.Timestamp:
    return BASE + pd.Timedelta(seconds=seconds)


# ---------------------------------------------------------------------------- encodings


def test_int64_key_encoding_is_the_documented_one() -> None:
    assert encode_keys(USER, [[42]])[0].hex() == "01800000000000002a"
    assert encode_keys(USER, [np.array([-1])])[0].hex() == "017fffffffffffffff"
    big = np.arange(-300, 300, dtype=np.int64) * 7919  # the vectorized path (> 128 keys)
    encoded = encode_keys(USER, [big])
    assert encoded == encode_keys(USER, [big.tolist()[:100]]) + encode_keys(USER, [big[100:]])
    assert encoded == sorted(encoded)  # byte order is numeric order


def test_string_and_composite_keys() -> None:
    code = Entity("code", "code", "string")
    assert encode_keys(code, [["é"]])[0] == b"\x02\x00\x02" + "é".encode()
    pair = Entity("pair", ["user_id", "country"], ["int64", "string"])
    key = encode_keys(pair, [[5], ["US"]])[0]
    assert key == bytes.fromhex("018000000000000005") + b"\x02\x00\x02US"
    assert decode_key(pair, key) == (5, "US")


@FEW
@given(st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20)),
                max_size=200))
def test_keys_round_trip(rows: list[tuple[int, str]]) -> None:
    pair = Entity("pair", ["a", "b"], ["int64", "string"])
    keys = encode_keys(pair, [[r[0] for r in rows], [r[1] for r in rows]])
    assert [decode_key(pair, k) for k in keys] == rows
    assert len(set(keys)) == len(set(rows))


@pytest.mark.parametrize(("entity", "columns", "message"), [
    (USER, [[1.5]], "row 0 is 1.5, expected an int64 key"),
    (USER, [np.array([2.5])], "row 0 is 2.5, not an int64 key"),
    (USER, [["7"]], "row 0 is '7', expected an int64 key"),
    (USER, [[None]], "row 0 is None, expected an int64 key"),
    (USER, [np.array([np.nan])], "row 0 is nan, not an int64 key"),
    (USER, [[True]], "row 0 is True, expected an int64 key"),
    (USER, [[1], [2]], "got 2 key column"),
    (Entity("code", "code", "string"), [[7]], "row 0 is 7, expected a string key"),
    (Entity("code", "code", "string"), [["x" * 600]], "keys are at most 508"),
])
def test_key_errors_are_clear(entity: Entity, columns: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        encode_keys(entity, columns)


def test_record_layout() -> None:
    layout = RecordLayout(3)
    assert layout.record_bytes == 32  # 16 + 12 + 1 null byte, padded to 8
    rec = layout.encode(np.array([5]), np.array([6]), np.array([[1.0, 2.0, 3.0]]),
                        np.array([[False, True, False]]))
    back = layout.decode(rec.tobytes())
    assert back["event_ts"][0] == 5 and back["created_ts"][0] == 6
    np.testing.assert_array_equal(back["values"][0], [1.0, np.nan, 3.0])
    assert layout.null_mask(back).tolist() == [[False, True, False]]
    assert back["nulls"][0].tolist() == [0b010]
    assert RecordLayout(9).record_bytes == 56 and RecordLayout(9).null_bytes == 2


# ---------------------------------------------------------------------------- consistency


@st.composite
def histories(draw: st.DrawFn) -> dict[str, Any]:
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        event = draw(st.integers(0, 20))
        rows.append({"key": draw(st.integers(0, 5)), "event": event,
                     "created": event + draw(st.sampled_from([0, 0, 2])),
                     "x": draw(st.one_of(st.none(), st.integers(-50, 50).map(float))),
                     "n": draw(st.one_of(st.none(), st.integers(0, 9)))})
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=2)))
    return {"rows": rows,
            "parts": [rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)],
            "ttl": draw(st.one_of(st.none(), st.integers(1, 8))),
            "now": draw(st.integers(0, 24)),
            "incremental": draw(st.booleans())}


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [r["key"] for r in rows], "event_ts": [at(r["event"]) for r in rows],
        "created_ts": [at(r["created"]) for r in rows],
        "x": pd.array([r["x"] for r in rows], dtype="Float64"),
        "n": pd.array([r["n"] for r in rows], dtype="Int64")})


def make_store(root: str, ttl: int | None) -> FeatureStore:
    store = FeatureStore(root)
    store.apply([USER, FeatureView("v", USER, [Column("x", "float"), Column("n", "int")],
                                   ttl_seconds=ttl), FeatureService("svc", ["v"])])
    return store


@FEW
@given(histories())
def test_online_read_equals_offline_point_in_time_row_at_now(case: dict[str, Any]) -> None:
    # Out of key order, one key twice, 6 never ingested: every row comes back in request order,
    # the absent key as MISSING.
    keys = [3, 6, 0, 5, 3, 1, 4, 2]
    now = at(case["now"])
    with tempfile.TemporaryDirectory() as root, make_store(root, case["ttl"]) as store:
        for part in case["parts"]:
            if part:
                store.ingest("v", frame(part))
        if case["incremental"]:
            store.materialize_incremental("v", now)
        else:
            store.materialize("v", at(-100), now)
        online = store.online_features("svc", keys, now=now)
        offline = store.historical_features(
            pd.DataFrame({"user_id": keys, "event_ts": [now] * len(keys)}), "svc")

    assert online.names == ("v__x", "v__n") and online.views == ("v/1",)
    for i, key in enumerate(keys):
        row = latest_row(case["rows"], key, end=case["now"])
        status = RowStatus(int(online.status[i, 0]))
        if row is None:
            assert status is RowStatus.MISSING and online.event_ts[i, 0] == 0
        elif case["ttl"] is not None and row["event"] < case["now"] - case["ttl"]:
            assert status is RowStatus.EXPIRED and online.event_ts[i, 0] == at(row["event"]).value
        else:
            assert status is RowStatus.PRESENT and online.event_ts[i, 0] == at(row["event"]).value
        # The offline point-in-time row at now, TTL included, is what the online read serves.
        pit = pit_row(case["rows"], key, case["now"], ttl=case["ttl"], created_cutoff=None)
        assert (pit is not None) == (status is RowStatus.PRESENT)
        expected = np.array([offline["v__x"].iloc[i],
                             np.nan if offline["v__n"].iloc[i] is pd.NA
                             else offline["v__n"].iloc[i]], dtype=np.float32)
        np.testing.assert_array_equal(online.values[i], expected)
        if pit is not None:
            np.testing.assert_array_equal(
                online.values[i], np.array([np.nan if pit["x"] is None else pit["x"],
                                            np.nan if pit["n"] is None else pit["n"]],
                                           dtype=np.float32))


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for i in range(draw(st.integers(3, 8))):
        kind = "ingest" if i == 0 else draw(st.sampled_from(["ingest", "incremental",
                                                              "window"]))
        if kind == "ingest":
            rows = []
            for _ in range(draw(st.integers(1, 8))):
                event = draw(st.integers(0, 30))
                rows.append({"key": draw(st.integers(0, 3)), "event": event,
                             "created": event + draw(st.sampled_from([0, 1])),
                             "x": float(draw(st.integers(0, 99))), "n": None})
            ops.append(("ingest", rows))
        elif kind == "incremental":
            ops.append(("incremental", draw(st.integers(0, 30))))
        else:
            a, b = sorted((draw(st.integers(0, 30)), draw(st.integers(0, 30))))
            ops.append(("window", a, b))
    return ops


@FEW
@given(operations())
def test_materialization_never_replaces_a_newer_event(ops: list[tuple[Any, ...]]) -> None:
    history: list[dict[str, Any]] = []
    last_end = 0
    seen: dict[bytes, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as root, make_store(root, None) as store:
        view = store.view("v")
        for op in ops:
            if op[0] == "ingest":
                history += op[1]
                store.ingest("v", frame(op[1]))
            elif op[0] == "incremental":
                last_end = max(last_end, op[1])
                store.materialize_incremental("v", at(last_end))
            else:
                store.materialize("v", at(op[1]), at(op[2]))
            for key, record in store.online.scan(view):
                stamp = (int(record["event_ts"]), int(record["created_ts"]))
                assert stamp >= seen.get(key, stamp), "an older event replaced a newer one"
                seen[key] = stamp
        final = max([30, last_end])
        store.materialize_incremental("v", at(final))
        online = store.online_features("svc", [0, 1, 2, 3], now=at(final))
    for key in range(4):
        row = latest_row(history, key, end=final)
        want = np.nan if row is None else row["x"]
        np.testing.assert_array_equal(online.values[key, 0], np.float32(want))


def test_ttl_is_enforced_online_inclusively(tmp_path: Path) -> None:
    with make_store(str(tmp_path), 10) as store:
        store.ingest("v", frame([{"key": 1, "event": 0, "created": 0, "x": 1.0, "n": 2}]))
        store.materialize_incremental("v", at(0))
        edge = store.online_features("svc", [1], now=at(10))
        assert edge.status.tolist() == [[RowStatus.PRESENT]]
        assert edge.values.tolist() == [[1.0, 2.0]]
        late = store.online_features("svc", [1], now=at(10) + pd.Timedelta(1, "ns"))
        assert late.status.tolist() == [[RowStatus.EXPIRED]] and np.isnan(late.values).all()
        assert late.status_names() == [["expired"]]
        assert late.event_ts.tolist() == [[at(0).value]]


def test_incremental_picks_up_late_arrivals_and_refuses_going_back(tmp_path: Path) -> None:
    with make_store(str(tmp_path), None) as store:
        store.ingest("v", frame([{"key": 1, "event": 5, "created": 5, "x": 1.0, "n": None}]))
        first = store.materialize_incremental("v", at(10))
        assert (first.start_ns, first.written) == (None, 1)
        assert store.online.state(store.view("v"))["end_ns"] == at(10).value  # type: ignore
        # A late row (event before the watermark) and a correction of the same event.
        store.ingest("v", frame([{"key": 2, "event": 1, "created": 11, "x": 2.0, "n": None},
                                 {"key": 1, "event": 5, "created": 12, "x": 3.0, "n": None},
                                 {"key": 1, "event": 4, "created": 13, "x": 9.0, "n": None}]))
        second = store.materialize_incremental("v", at(10))
        assert (second.start_ns, second.rows, second.written, second.kept_newer) == (
            at(10).value, 3, 2, 0)  # key 1's best of the batch (event 5) replaces, 2 is new
        got = store.online_features("svc", [1, 2], now=at(10))
        assert got.values[:, 0].tolist() == [3.0, 2.0]
        with pytest.raises(InvalidInput, match="before the previous incremental end"):
            store.materialize_incremental("v", at(9))
        with pytest.raises(InvalidInput, match="is before start"):
            store.materialize("v", at(9), at(8))
        # A window over older events keeps the newer values.
        window = store.materialize("v", at(0), at(4))
        assert (window.written, window.kept_newer) == (1, 1)  # key 2 rewritten with the same
        assert store.online_features("svc", [1], now=at(10)).values[0, 0] == 3.0


def test_online_reads_before_materialization_and_key_errors(tmp_path: Path) -> None:
    with make_store(str(tmp_path), None) as store:
        got = store.online_features("svc", [1, 2])
        assert got.status.tolist() == [[RowStatus.MISSING]] * 2 and np.isnan(got.values).all()
        assert store.online_features("svc", []).values.shape == (0, 2)
        with pytest.raises(InvalidInput, match="row 1 is 'b', expected an int64 key"):
            store.online_features("svc", [1, "b"])
        with pytest.raises(InvalidInput, match=r"missing join key.*user_id"):
            store.online_features("svc", {"merchant_id": [1]})
        reader = store.service_reader(["v"])
        assert reader.join_keys == ("user_id",) and reader.names == ("v__x", "v__n")
        only_n = store.service_reader([("v", ["n"])]).read({"user_id": [1]})
        assert only_n.names == ("v__n",) and only_n.values.shape == (1, 1)
