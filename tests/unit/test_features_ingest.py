"""Ingestion into the offline store: CSV and Parquet in, typed Parquet parts out, and clear
errors naming the view, the column, the row and the value for anything that does not fit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlserve.errors import DefinitionNotFound, InvalidInput
from mlserve.features import Column, Entity, FeatureStore, FeatureView
from mlserve.features import offline as offline_module


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    s = FeatureStore(tmp_path / "fs")
    user = Entity("user", "user_id")
    code = Entity("code", "code", "string")
    s.apply([user, code,
             FeatureView("stats", user, [Column("amount", "float"), Column("count", "int"),
                                         Column("country", "categorical", ("US", "GB", "3"))]),
             FeatureView("by_code", code, {"level": "categorical"})])
    return s


def test_csv_and_parquet_ingest_typed_parts(store: FeatureStore, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("user_id,event_ts,amount,count,country,note\n"
                   "1,2026-01-01T00:00:00Z,1.5,2,GB,x\n"
                   "2,2026-01-01 01:00:00,,,FR,y\n"
                   "3,2026-01-01T02:00:00+01:00,-3,4,3,z\n")
    before = time.time_ns()
    result = store.ingest("stats", csv)
    assert (result.view, result.rows, result.ignored_columns) == ("stats/1", 3, ("note",))
    assert result.part is not None and result.part.parent == store.root / "offline/stats/v1"
    table = pq.read_table(result.part)
    assert table.schema.field("event_ts").type.tz == "UTC"
    df = table.to_pandas()
    assert df["user_id"].tolist() == [1, 2, 3]
    assert df["event_ts"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z"),
                                       pd.Timestamp("2026-01-01T01:00:00Z"),  # naive = UTC
                                       pd.Timestamp("2026-01-01T01:00:00Z")]
    assert (df["created_ts"].astype("int64") >= before).all()  # default: ingestion time
    assert df["amount"].tolist()[::2] == [1.5, -3.0] and np.isnan(df["amount"][1])
    assert df["count"].tolist()[::2] == [2, 4] and pd.isna(df["count"][1])
    assert df["country"].tolist() == [1, -1, 2]  # vocabulary codes; unseen -> -1

    parquet = tmp_path / "rows.parquet"
    pd.DataFrame({"user_id": np.array([5], dtype=np.int32),
                  "event_ts": pd.to_datetime(["2026-01-02"], utc=True),
                  "created_ts": [pd.NaT], "amount": [1], "count": [7.0],
                  "country": [None]}).to_parquet(parquet)
    assert store.ingest("stats", parquet).rows == 1
    assert len(store.offline.parts(store.view("stats"))) == 2


def test_string_keys_keep_their_text(store: FeatureStore, tmp_path: Path) -> None:
    csv = tmp_path / "codes.csv"
    csv.write_text("code,event_ts,level\n007,2026-01-01T00:00:00Z,3\n")
    part = store.ingest("by_code", csv).part
    assert part is not None
    assert pq.read_table(part).column("code").to_pylist() == ["007"]


def test_integers_past_2_53_stay_exact(store: FeatureStore, tmp_path: Path) -> None:
    """Keys and int features past float64's 2^53 are read exactly (CSV cells are text, object
    columns hold Python ints): rounding them would join another entity's rows."""
    big = 2**53 + 1
    csv = tmp_path / "big.csv"
    csv.write_text(f"user_id,event_ts,amount,count,country\n"
                   f"{big},2026-01-01T00:00:00Z,1.5,{big},US\n"
                   f"{2**63 - 1},2026-01-01T00:00:00Z,2.5,-{2**63},GB\n")
    table = pq.read_table(store.ingest("stats", csv).part).to_pandas()
    assert table["user_id"].tolist() == [big, 2**63 - 1]
    assert table["count"].tolist() == [big, -(2**63)]
    frame = pd.DataFrame({"user_id": pd.Series([big + 2], dtype=object),
                          "event_ts": ["2026-01-01"], "amount": [1.0],
                          "count": pd.Series([big], dtype=object), "country": ["US"]})
    table = pq.read_table(store.ingest("stats", frame).part).to_pandas()
    assert table["user_id"].tolist() == [big + 2] and table["count"].tolist() == [big]
    with pytest.raises(InvalidInput, match=f"expected integers, got row 0: '{2**63}'"):
        store.ingest("stats", pd.DataFrame({"user_id": [1], "event_ts": ["2026-01-01"],
                                            "amount": [1.0], "count": [str(2**63)],
                                            "country": ["US"]}))


def test_csv_text_that_looks_like_na(store: FeatureStore, tmp_path: Path) -> None:
    """Only an empty CSV cell is null for keys; "NA" is a string key and a vocabulary value
    spelled like a null stays that category, while in number and time columns the usual NA
    spellings are nulls."""
    store.apply([FeatureView("by_code", Entity("code", "code", "string"),
                             [Column("level", "categorical", ("EU", "NA", "None")),
                              Column("gdp", "float")])])
    csv = tmp_path / "codes.csv"
    csv.write_text("code,event_ts,created_ts,level,gdp\n"
                   "NA,2026-01-01T00:00:00Z,NA,NA,NaN\n"
                   "None,2026-01-01T00:00:00Z,,None,NA\n"
                   "DE,2026-01-01T00:00:00Z,null,nan,1.5\n")
    df = pq.read_table(store.ingest("by_code", csv).part).to_pandas()
    assert df["code"].tolist() == ["NA", "None", "DE"]
    assert df["level"].tolist()[:2] == [1, 2] and pd.isna(df["level"][2])
    assert df["gdp"].isna().tolist() == [True, True, False]


@pytest.mark.parametrize(("frame", "message"), [
    ({"user_id": [1], "amount": [1.0], "count": [1], "country": ["US"]},
     "missing column.*event_ts"),
    ({"user_id": [1], "event_ts": ["2026-01-01"], "amount": ["abc"], "count": [1],
      "country": ["US"]}, "column 'amount': expected float numbers, got row 0: 'abc'"),
    ({"user_id": [1, 2], "event_ts": ["2026-01-01"] * 2, "amount": [1.0, 2.0],
      "count": [1, 2.5], "country": ["US", "US"]}, "column 'count': expected integers, got "
     "row 1: 2.5"),
    ({"user_id": [1, None], "event_ts": ["2026-01-01"] * 2, "amount": [1.0, 2.0],
      "count": [1, 2], "country": ["US", "US"]}, "column 'user_id': join keys must not be null"),
    ({"user_id": [1.5], "event_ts": ["2026-01-01"], "amount": [1.0], "count": [1],
      "country": ["US"]}, "column 'user_id': expected int64 keys, got row 0: 1.5"),
    ({"user_id": [1], "event_ts": [None], "amount": [1.0], "count": [1], "country": ["US"]},
     "column 'event_ts': 1 null time"),
    ({"user_id": [1], "event_ts": [1767225600], "amount": [1.0], "count": [1],
      "country": ["US"]}, "column 'event_ts': expected ISO 8601 times or timestamps, got int64"),
    ({"user_id": [1], "event_ts": ["soon"], "amount": [1.0], "count": [1], "country": ["US"]},
     "column 'event_ts': expected an ISO 8601 time, got row 0: 'soon'"),
    ({"user_id": [1], "event_ts": ["2026-01-01"], "created_ts": ["later"], "amount": [1.0],
      "count": [1], "country": ["US"]}, "column 'created_ts'"),
    ({"user_id": [1], "event_ts": ["2026-01-01"], "amount": [True], "count": [1],
      "country": ["US"]}, "column 'amount': expected float numbers, got booleans"),
])
def test_schema_mismatches_name_the_column(store: FeatureStore, frame: dict[str, list[object]],
                                           message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        store.ingest("stats", pd.DataFrame(frame))
    assert "feature view 'stats/1'" in str(info.value)
    assert store.offline.parts(store.view("stats")) == []  # nothing was written


def test_other_ingest_errors(store: FeatureStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="expected string keys, got int64"):
        store.ingest("by_code", pd.DataFrame({"code": [7], "event_ts": ["2026-01-01"],
                                              "level": [1]}))
    with pytest.raises(InvalidInput, match="integer category codes"):
        store.ingest("by_code", pd.DataFrame({"code": ["a"], "event_ts": ["2026-01-01"],
                                              "level": ["high"]}))
    with pytest.raises(DefinitionNotFound, match="unknown feature view 'nope'"):
        store.ingest("nope", pd.DataFrame())
    with pytest.raises(InvalidInput, match="no such file"):
        store.ingest("stats", tmp_path / "missing.csv")
    (tmp_path / "rows.json").write_text("{}")
    with pytest.raises(InvalidInput, match=r"expected a .csv or .parquet file"):
        store.ingest("stats", tmp_path / "rows.json")
    with pytest.raises(InvalidInput, match="has no source; give a file"):
        store.ingest("stats")
    empty = pd.DataFrame({"user_id": [], "event_ts": [], "amount": [], "count": [],
                          "country": []})
    assert store.ingest("stats", empty).part is None


def test_parts_keep_ingestion_order_when_the_clock_steps_back(
        store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Name order is ingestion order (the join's last tie-breaker), whatever the wall clock."""
    rows = {"user_id": [1], "event_ts": ["2026-01-01T00:00:00Z"],
            "created_ts": ["2026-01-01T00:00:00Z"], "count": [0], "country": ["US"]}
    store.ingest("stats", pd.DataFrame({**rows, "amount": [1.0]}))
    first = store.offline.parts(store.registry.view("stats"))
    monkeypatch.setattr(offline_module.time, "time_ns", lambda: 1_000)  # back to 1970
    store.ingest("stats", pd.DataFrame({**rows, "amount": [2.0]}))
    parts = store.offline.parts(store.registry.view("stats"))
    assert parts[0] == first[0] and len(parts) == 2
    # Same event and creation times: the later ingestion wins.
    got = store.historical_features(pd.DataFrame({"user_id": [1],
                                                  "event_ts": ["2026-01-02T00:00:00Z"]}),
                                    ["stats"])
    assert got["stats__amount"].tolist() == [2.0]
