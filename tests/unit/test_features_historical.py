"""historical_features against a brute-force reference (tests/feature_reference.py).

Random histories over a few entities, ingested in one to three Parquet parts of a real store in
a temporary directory: duplicate event times, created_ts ties (so ingestion order decides),
TTL edges (inclusive), queries for unknown entities, null keys and times, and the bitemporal
cut-off (a fixed time, or each row's own time). Then fixed cases: nanosecond TTL edges, row
order and index preserved, composite keys, two entities in one service, clear errors.
"""

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
from mlserve.errors import DefinitionNotFound, InvalidInput
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_reference import pit_row

BASE = pd.Timestamp("2026-01-01T00:00:00Z")
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def at(seconds: int | None) -> pd.Timestamp | None:
    return None if seconds is None else BASE + pd.Timedelta(seconds=seconds)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    key_dtype = draw(st.sampled_from(["int64", "string"]))
    universe: list[Any] = [-7, 0, 3, 10**12] if key_dtype == "int64" else ["a", "b", "", "é"]
    known = universe[:3]  # universe[3] is never ingested: a missing entity
    history = []
    for _ in range(draw(st.integers(0, 24))):
        event = draw(st.integers(0, 8))
        history.append({
            "key": draw(st.sampled_from(known)),
            "event": event,
            "created": event + draw(st.sampled_from([0, 0, 1, 3, -1])),
            "x": draw(st.one_of(st.none(), st.integers(-40, 40).map(lambda v: v / 4))),
            "n": draw(st.one_of(st.none(), st.integers(-5, 5))),
        })
    cuts = sorted(draw(st.lists(st.integers(0, len(history)), max_size=2)))
    # Every (entity, time) on the grid, so each example checks every edge it has; plus null
    # keys and times, in a drawn order.
    grid: list[tuple[Any, int | None]] = [(k, t) for k in universe for t in range(-1, 15)]
    grid += [(None, 3), (known[0], None), (None, None)]
    queries = draw(st.permutations(grid))
    return {
        "key_dtype": key_dtype,
        "history": history,
        "parts": [history[a:b] for a, b in zip([0, *cuts], [*cuts, len(history)], strict=True)],
        "queries": queries,
        "ttl": draw(st.one_of(st.none(), st.integers(1, 4))),
        "as_of": draw(st.one_of(st.none(), st.integers(-1, 10), st.just("row"))),
    }


def history_frame(rows: list[dict[str, Any]], key: str = "k") -> pd.DataFrame:
    return pd.DataFrame({
        key: [r["key"] for r in rows],
        "event_ts": [at(r["event"]) for r in rows],
        "created_ts": [at(r["created"]) for r in rows],
        "x": pd.array([r["x"] for r in rows], dtype="Float64"),
        "n": pd.array([r["n"] for r in rows], dtype="Int64"),
    })


def entity_frame(queries: list[tuple[Any, int | None]], key_dtype: str) -> pd.DataFrame:
    keys = [k for k, _ in queries]
    return pd.DataFrame({
        "k": pd.array(keys, dtype="Int64") if key_dtype == "int64" else pd.Series(keys,
                                                                                 dtype=object),
        "ts": pd.Series([at(t) for _, t in queries], dtype="datetime64[ns, UTC]"),
    })


@PROPERTY
@given(scenarios())
def test_historical_features_equal_the_brute_force_reference(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as root, FeatureStore(root) as store:
        entity = Entity("acct", "k", case["key_dtype"])
        view = FeatureView("v", entity, [Column("x", "float"), Column("n", "int")],
                           ttl_seconds=case["ttl"])
        store.apply([entity, view])
        for part in case["parts"]:
            if part:
                store.ingest("v", history_frame(part))
        entity_df = entity_frame(case["queries"], case["key_dtype"])
        as_of = case["as_of"]
        out = store.historical_features(entity_df, ["v"], timestamp_column="ts",
                                        as_of_created=as_of if as_of in (None, "row")
                                        else at(as_of))

    assert list(out.columns) == ["k", "ts", "v__x", "v__n"]
    assert out.index.equals(entity_df.index)
    pd.testing.assert_frame_equal(out[["k", "ts"]], entity_df)
    assert out["v__x"].dtype == np.float64 and out["v__n"].dtype == "Int64"
    for i, (key, ts) in enumerate(case["queries"]):
        expected = None
        if key is not None and ts is not None:
            cutoff = ts if as_of == "row" else as_of
            expected = pit_row(case["history"], key, ts, ttl=case["ttl"], created_cutoff=cutoff)
        got_x, got_n = out["v__x"].iloc[i], out["v__n"].iloc[i]
        want_x = None if expected is None else expected["x"]
        want_n = None if expected is None else expected["n"]
        assert (np.isnan(got_x) if want_x is None else got_x == want_x), (i, key, ts, expected)
        assert (got_n is pd.NA if want_n is None else got_n == want_n), (i, key, ts, expected)


def _store(tmp_path: Path, *, ttl_seconds: float | None = None) -> FeatureStore:
    store = FeatureStore(tmp_path / "fs")
    user = Entity("user", "user_id")
    store.apply([user, FeatureView("stats", user, {"amount": "float", "count": "int"},
                                   ttl_seconds=ttl_seconds)])
    return store


def test_ttl_edge_is_inclusive_to_the_nanosecond(tmp_path: Path) -> None:
    store = _store(tmp_path, ttl_seconds=10)
    store.ingest("stats", pd.DataFrame({
        "user_id": [1], "event_ts": [BASE], "amount": [2.5], "count": [3]}))
    edge = BASE + pd.Timedelta(seconds=10)
    entity_df = pd.DataFrame({"user_id": [1, 1, 1, 1],
                              "event_ts": [BASE - pd.Timedelta(1, "ns"), BASE, edge,
                                           edge + pd.Timedelta(1, "ns")]})
    out = store.historical_features(entity_df, ["stats"])
    assert out["stats__amount"].tolist()[1:3] == [2.5, 2.5]
    assert np.isnan(out["stats__amount"].iloc[0]) and np.isnan(out["stats__amount"].iloc[3])
    assert out["stats__count"].iloc[3] is pd.NA


def test_ttl_past_int64_means_no_expiry(tmp_path: Path) -> None:
    """A TTL longer than int64 nanoseconds (~292 years) is clamped, as the online read does."""
    store = _store(tmp_path, ttl_seconds=1e11)
    store.ingest("stats", pd.DataFrame({
        "user_id": [1], "event_ts": [BASE], "amount": [2.5], "count": [3]}))
    out = store.historical_features(pd.DataFrame({
        "user_id": [1, 1], "event_ts": [BASE - pd.Timedelta(1, "ns"),
                                        BASE + pd.Timedelta(days=36500)]}), ["stats"])
    assert np.isnan(out["stats__amount"].iloc[0]) and out["stats__amount"].iloc[1] == 2.5


def test_nullable_integer_keys_past_2_53_join_exactly(tmp_path: Path) -> None:
    """An Int64 key column with nulls is not read through float64: 2^53 + 1 must not join the
    features of 2^53."""
    store = _store(tmp_path)
    big = 2**53
    store.ingest("stats", pd.DataFrame({
        "user_id": [big, big + 2], "event_ts": [BASE] * 2, "amount": [1.0, 3.0],
        "count": [1, 3]}))
    later = BASE + pd.Timedelta(seconds=1)
    out = store.historical_features(pd.DataFrame({
        "user_id": pd.array([big + 1, None, big + 2, big], dtype="Int64"),
        "event_ts": [later] * 4}), ["stats"])
    got = out["stats__amount"].tolist()
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2:] == [3.0, 1.0]


def test_output_keeps_rows_index_and_columns(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ingest("stats", pd.DataFrame({
        "user_id": [1, 2, 1], "event_ts": [at(0), at(0), at(5)], "amount": [1.0, 2.0, 3.0],
        "count": [1, 2, 3]}))
    entity_df = pd.DataFrame({"label": ["p", "q", "r", "s"], "user_id": [1, 2, 1, 9],
                              "event_ts": [at(6), at(1), at(1), at(9)]},
                             index=pd.Index([40, 10, 30, 20], name="row"))
    out = store.historical_features(entity_df, ["stats"])
    assert list(out.columns) == ["label", "user_id", "event_ts", "stats__amount",
                                 "stats__count"]
    assert out.index.equals(entity_df.index)
    assert out["stats__amount"].tolist()[:3] == [3.0, 2.0, 1.0]
    assert np.isnan(out["stats__amount"].iloc[3])
    assert entity_df.shape == (4, 3)  # the input is not modified


def test_bitemporal_cutoff_hides_late_corrections(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ingest("stats", pd.DataFrame({
        "user_id": [1, 1], "event_ts": [at(0), at(0)], "created_ts": [at(1), at(100)],
        "amount": [1.0, 99.0], "count": [1, 99]}))
    entity_df = pd.DataFrame({"user_id": [1, 1], "event_ts": [at(50), at(200)]})
    latest = store.historical_features(entity_df, ["stats"])
    assert latest["stats__amount"].tolist() == [99.0, 99.0]
    as_known = store.historical_features(entity_df, ["stats"], as_of_created="row")
    assert as_known["stats__amount"].tolist() == [1.0, 99.0]
    fixed = store.historical_features(entity_df, ["stats"], as_of_created=at(10))
    assert fixed["stats__amount"].tolist() == [1.0, 1.0]
    assert store.historical_features(entity_df, ["stats"], as_of_created="2026-01-01T00:00:00Z"
                                     )["stats__count"].isna().all()


def test_composite_keys_and_two_entities_in_one_service(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "fs")
    user = Entity("user", "user_id")
    pair = Entity("user_country", ["user_id", "country"], ["int64", "string"])
    merchant = Entity("merchant", "merchant_id")
    store.apply([
        user, pair, merchant,
        FeatureView("per_country", pair, {"spend": "float"}),
        FeatureView("merchant_risk", merchant, {"risk": "float", "tier": "categorical"},
                    ttl_seconds=60),
        FeatureService("fraud", ["per_country", ("merchant_risk", ["risk"])]),
    ])
    store.ingest("per_country", pd.DataFrame({
        "user_id": [1, 1, 2], "country": ["US", "GB", "US"],
        "event_ts": [at(0), at(0), at(0)], "spend": [10.0, 20.0, 30.0]}))
    store.ingest("merchant_risk", pd.DataFrame({
        "merchant_id": [7, 7], "event_ts": [at(0), at(100)], "risk": [0.1, 0.9],
        "tier": [1, 2]}))
    entity_df = pd.DataFrame({"user_id": [1, 1, 2, 2], "country": ["GB", "US", "GB", "US"],
                              "merchant_id": [7, 7, 7, 8],
                              "event_ts": [at(10), at(101), at(70), at(101)]})
    out = store.historical_features(entity_df, "fraud")
    assert list(out.columns[-2:]) == ["per_country__spend", "merchant_risk__risk"]
    np.testing.assert_array_equal(out["per_country__spend"], [20.0, 10.0, np.nan, 30.0])
    np.testing.assert_array_equal(out["merchant_risk__risk"], [0.1, 0.9, np.nan, np.nan])


def test_clear_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(InvalidInput, match=r"lacks join key.*user_id"):
        store.historical_features(pd.DataFrame({"event_ts": [at(0)]}), ["stats"])
    with pytest.raises(InvalidInput, match="no timestamp column 'ts'"):
        store.historical_features(pd.DataFrame({"user_id": [1]}), ["stats"],
                                  timestamp_column="ts")
    with pytest.raises(InvalidInput, match="expected int64 keys"):
        store.historical_features(pd.DataFrame({"user_id": ["a"], "event_ts": [at(0)]}),
                                  ["stats"])
    with pytest.raises(InvalidInput, match="not an ISO 8601 time"):
        store.historical_features(pd.DataFrame({"user_id": [1], "event_ts": ["yesterday"]}),
                                  ["stats"])
    with pytest.raises(InvalidInput, match="would replace a column"):
        store.historical_features(pd.DataFrame({"user_id": [1], "event_ts": [at(0)],
                                                "stats__amount": [0.0]}), ["stats"])
    with pytest.raises(DefinitionNotFound, match=r"unknown feature view 'nope'.*known: stats"):
        store.historical_features(pd.DataFrame({"user_id": [1], "event_ts": [at(0)]}),
                                  ["nope"])
    with pytest.raises(InvalidInput, match="has no column 'volume'"):
        store.historical_features(pd.DataFrame({"user_id": [1], "event_ts": [at(0)]}),
                                  [("stats", ["volume"])])
    for far in ("3000-01-01T00:00:00Z", "1500-06-01T00:00:00Z",
                pd.Timestamp("3000-01-01").as_unit("s")):
        # Out of int64 nanoseconds: named, not pandas' OutOfBoundsDatetime.
        with pytest.raises(InvalidInput, match=r"column 'event_ts': .*\(row 1\) is outside "
                                               r"the times the feature store holds"):
            store.historical_features(pd.DataFrame({"user_id": [1, 1],
                                                    "event_ts": [at(0), far]}), ["stats"])
        with pytest.raises(InvalidInput, match=r"'event_ts': .*\(row 0\) is outside"):
            store.ingest("stats", pd.DataFrame({"user_id": [1], "event_ts": [far],
                                                "amount": [1.0], "count": [1]}))
    store.apply([FeatureService("scoring", ["stats"])])
    with pytest.raises(DefinitionNotFound, match=r"unknown feature service 'scoring/2'"):
        store.historical_features(pd.DataFrame({"user_id": [1], "event_ts": [at(0)]}),
                                  "scoring/2")
