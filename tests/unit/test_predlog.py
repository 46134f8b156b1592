"""The durable prediction log (mlserve.predlog) on real engines and real files (and a real
S3-compatible store): what the core buffers per tagged request is written as Parquet parts
that read back to exactly the rows and outputs served; labels join to their rows (the last one
winning); nothing is lost across a hot swap or an engine's close, or when a write fails once;
what does not fit the buffer is dropped and counted, never blocking."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlserve import Engine, FeaturePlan
from mlserve.errors import InvalidInput
from mlserve.predlog import PredictionLogWriter, joined, read_labels, read_predictions

SPEC = {"features": [
    {"name": "amount", "kind": "numeric", "ops": [{"op": "log1p"}]},
    {"name": "code", "kind": "categorical", "ops": [{"op": "onehot", "size": 3}]},
]}


def _engine(scale: float = 1.0) -> Engine:
    return Engine(FeaturePlan(SPEC), lambda x: np.stack(
        [x.sum(axis=1) * scale, x[:, 0] - scale], axis=1).astype(np.float32),
        backend="python", name="m")


def _send(engine: Engine, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        return list(await asyncio.gather(*(engine.apredict(x, tag=t.encode())
                                           for t, x in requests)))
    return asyncio.run(run())


def _requests(seed: int, n: int, prefix: str) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = int(rng.integers(1, 6))
        x = np.stack([rng.lognormal(2, 1, rows), rng.integers(0, 4, rows)], axis=1)
        out.append((f"{prefix}-{i}", x.astype(np.float32)))
    return out


def _expected(requests: list[tuple[str, np.ndarray]], outputs: list[np.ndarray]
              ) -> pd.DataFrame:
    """What the log must hold, built with pandas from what was sent and answered."""
    rows = []
    for (tag, x), y in zip(requests, outputs, strict=True):
        for r in range(len(x)):
            rows.append({"request_id": tag, "row": r, "amount": x[r, 0], "code": x[r, 1],
                         "p_0": y[r, 0], "p_1": y[r, 1]})
    return pd.DataFrame(rows).astype({"amount": np.float32, "code": np.float32,
                                      "p_0": np.float32, "p_1": np.float32, "row": np.int32})


def _logged(location: str | Path, model: str = "m", version: str | None = None
            ) -> pd.DataFrame:
    got = read_predictions(location, model, version)
    return got.sort_values(["request_id", "row"]).reset_index(drop=True)


def _check(location: str | Path, requests: list[tuple[str, np.ndarray]],
           outputs: list[np.ndarray], version: str | None = None) -> pd.DataFrame:
    got = _logged(location, version=version)
    want = _expected(requests, outputs).sort_values(["request_id", "row"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[list(want.columns)], want)
    assert got["ts"].dt.tz is not None and got["ts"].is_monotonic_increasing is not None
    return got


def test_round_trip_through_parts(tmp_path: Path) -> None:
    log = tmp_path / "log"
    writer = PredictionLogWriter(log, flush_s=60)
    engine = _engine()
    writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
    first = _requests(1, 40, "a")
    out1 = _send(engine, first)
    assert writer.flush() == 1
    second = _requests(2, 25, "b")
    out2 = _send(engine, second)
    _send(engine, [("", np.ones((2, 2), np.float32))])  # untagged: not logged
    writer.close()
    engine.close()
    got = _check(log, first + second, out1 + out2)
    assert set(got["version"]) == {"1"}
    parts = sorted(p.relative_to(log).parts[:3] for p in log.rglob("*.parquet"))
    assert parts == [("predictions", "m", "1")] * 2
    assert not list(log.rglob("*.tmp"))
    assert writer.counters.requests == 65 and writer.counters.dropped_rows == 0


def test_labels_join_to_their_rows_last_label_wins(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, flush_s=60)
    engine = _engine()
    writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
    requests = _requests(3, 10, "r")
    _send(engine, requests)
    sizes = {tag: len(x) for tag, x in requests}
    writer.add_labels("m", ["r-0", "r-1"], [[0] * sizes["r-0"], [1.0] * sizes["r-1"]])
    writer.flush()
    writer.add_labels("m", ["r-0"], [[True] * sizes["r-0"]])  # corrected later
    assert writer.add_labels("m", [], []) == 0  # nothing queued, no empty part
    writer.close()
    engine.close()
    table = joined(_logged(tmp_path), read_labels(tmp_path, "m"))
    by_id = table.groupby("request_id")["label"]
    assert (by_id.get_group("r-0") == "1").all() and (by_id.get_group("r-1") == "1").all()
    assert table[~table["request_id"].isin(["r-0", "r-1"])]["label"].isna().all()
    assert len(table) == sum(sizes.values())
    assert len(list(tmp_path.rglob("labels/**/*.parquet"))) == 2
    assert writer.counters.labels == sizes["r-0"] * 2 + sizes["r-1"]


def test_a_hot_swapped_or_closed_engine_loses_nothing(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, flush_s=60)
    old, new = _engine(1.0), _engine(2.0)
    writer.watch("m", "1", old, ["amount", "code"], ["p_0", "p_1"])
    before = _requests(4, 12, "old")
    out_old = _send(old, before)
    writer.watch("m", "1", new, ["amount", "code"], ["p_0", "p_1"])  # the swap
    after = _requests(5, 12, "new")
    out_new = _send(new, after)
    old.close()  # closed before any flush: its rows come from what close() drained
    writer.flush()
    more = _requests(6, 5, "late")
    out_late = _send(new, more)
    new.close()
    writer.close()
    _check(tmp_path, before + after + more, out_old + out_new + out_late)
    assert writer.flush() == 0  # closed engines are forgotten once drained


def test_overflow_is_dropped_and_counted_never_blocking(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, flush_s=60, max_buffered_rows=10)
    engine = _engine()
    writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
    requests = [(f"r{i}", np.ones((4, 2), np.float32)) for i in range(5)]
    for r in requests:
        _send(engine, [r])
    writer.close()
    engine.close()
    got = _logged(tmp_path)
    assert sorted(set(got["request_id"])) == ["r0", "r1"]  # 8 rows fit, 12 did not
    assert writer.counters.dropped_rows == 12


def test_a_failed_write_is_kept_and_written_next_time(tmp_path: Path) -> None:
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log's folder should be")
    writer = PredictionLogWriter(blocker, flush_s=60)
    engine = _engine()
    writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
    requests = _requests(7, 8, "x")
    outputs = _send(engine, requests)
    writer.add_labels("m", ["x-0"], [[0] * len(requests[0][1])])
    assert writer.flush() == 0 and writer.counters.failed_writes == 2
    assert len(writer.counters.pending) == 2  # the predictions and the labels, kept
    assert writer.counters.rows == writer.counters.labels == 0  # counted once written
    blocker.unlink()
    assert writer.flush() == 2 and not writer.counters.pending
    assert writer.counters.rows == sum(len(x) for _, x in requests)
    writer.close()
    engine.close()
    _check(blocker, requests, outputs)
    assert len(read_labels(blocker, "m")) == len(requests[0][1])


def test_reads_filter_by_time_and_version_and_say_what_is_missing(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, flush_s=60)
    v1, v2 = _engine(1.0), _engine(2.0)
    writer.watch("m", "1", v1, ["amount", "code"], ["p_0", "p_1"])
    writer.watch("m", "2", v2, ["amount", "code"], ["p_0", "p_1"])
    _send(v1, _requests(8, 6, "one"))
    writer.flush()
    cut = pd.Timestamp.now(tz="UTC").value
    _send(v2, _requests(9, 4, "two"))
    writer.close()
    v1.close()
    v2.close()
    assert set(read_predictions(tmp_path, "m")["version"]) == {"1", "2"}
    assert set(read_predictions(tmp_path, "m", "2")["version"]) == {"2"}
    recent = read_predictions(tmp_path, "m", since_ns=cut)
    assert set(recent["request_id"].str.split("-").str[0]) == {"two"}
    with pytest.raises(InvalidInput, match="no predictions of other"):
        read_predictions(tmp_path, "other")
    assert read_labels(tmp_path, "m").empty


def test_bad_names_and_settings_are_refused(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path)
    with pytest.raises(InvalidInput, match="not a name it can store"):
        writer.watch("m/../x", "1", _engine(), ["amount", "code"], ["p_0", "p_1"])
    with pytest.raises(InvalidInput, match="flush interval"):
        PredictionLogWriter(tmp_path, flush_s=0)


def test_parts_in_object_storage(s3_uri: str, s3_server: Any) -> None:
    writers = [PredictionLogWriter(s3_uri, flush_s=60) for _ in range(2)]
    engines = [_engine(), _engine()]
    sent: list[tuple[str, np.ndarray]] = []
    outputs: list[np.ndarray] = []
    for i, (w, e) in enumerate(zip(writers, engines, strict=True)):  # two replicas
        w.watch("m", "1", e, ["amount", "code"], ["p_0", "p_1"])
        requests = _requests(10 + i, 15, f"replica{i}")
        outputs += _send(e, requests)
        sent += requests
    writers[1].add_labels("m", ["replica0-3"], [[1] * len(sent[3][1])])  # the other one
    for w, e in zip(writers, engines, strict=True):
        w.close()
        e.close()
    _check(s3_uri, sent, outputs)
    table = joined(_logged(s3_uri), read_labels(s3_uri, "m"))
    assert table.loc[table["request_id"] == "replica0-3", "label"].eq("1").all()
    assert table["label"].notna().sum() == len(sent[3][1])
    assert os.environ.get("AWS_ENDPOINT_URL")  # the fixture's store, not a real bucket


def _tag_hash(data: bytes) -> int:
    """FNV-1a, then MurmurHash3's fmix64: the core's sampling hash, written independently."""
    m = (1 << 64) - 1
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & m
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & m
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & m
    return h ^ (h >> 33)


def test_sampling_keeps_the_same_request_ids_everywhere(tmp_path: Path) -> None:
    sample = 0.3
    requests = [(f"id-{i}", np.full((1, 2), float(i), np.float32)) for i in range(1500)]
    for replica in ("a", "b"):  # two replicas, the same ids: the same subset
        writer = PredictionLogWriter(tmp_path / replica, flush_s=60, sample=sample)
        engine = _engine()
        writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
        _send(engine, requests)
        writer.close()
        engine.close()
    kept = {r: set(read_predictions(tmp_path / r, "m")["request_id"]) for r in ("a", "b")}
    bound = sample * 18446744073709551615.0
    want = {tag for tag, _ in requests if _tag_hash(tag.encode()) < bound}
    assert kept["a"] == kept["b"] == want
    assert 0.25 < len(want) / len(requests) < 0.35
    with pytest.raises(InvalidInput, match="sample"):
        PredictionLogWriter(tmp_path, sample=0.0)


def test_one_unwritable_model_does_not_hold_back_the_others(tmp_path: Path) -> None:
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "a").write_text("a file where model a's folder should be")
    writer = PredictionLogWriter(tmp_path, flush_s=60)
    a, b = _engine(), _engine()
    writer.watch("a", "1", a, ["amount", "code"], ["p_0", "p_1"])
    writer.watch("b", "1", b, ["amount", "code"], ["p_0", "p_1"])
    for _ in range(3):  # a's part fails every time; b's are written every time
        _send(a, _requests(20, 3, "a"))
        _send(b, _requests(21, 3, "b"))
        writer.flush()
    assert len(list((tmp_path / "predictions" / "b").rglob("*.parquet"))) == 3
    assert [p.name.split("/")[0] for p in writer.counters.pending] == ["predictions"] * 3
    (tmp_path / "predictions" / "a").unlink()
    assert writer.flush() == 3
    writer.close()
    a.close()
    b.close()
    for model, seed in (("a", 20), ("b", 21)):  # every flush's rows, once
        rows = sum(len(x) for _, x in _requests(seed, 3, model))
        assert len(read_predictions(tmp_path, model)) == 3 * rows


def test_ids_that_are_not_utf8_or_cut_mid_character_still_log_and_join(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, flush_s=60)
    engine = _engine()
    writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
    long_id = "é" * 100  # 200 bytes: the server keeps 128, cutting no character here...
    odd_id = "x" * 127 + "é"  # ...and here half of one
    x = np.ones((1, 2), np.float32)

    async def run() -> None:
        await engine.apredict(x, tag=b"\xff\xfe-raw")
        await engine.apredict(x, tag=long_id.encode()[:128])
        await engine.apredict(x, tag=odd_id.encode()[:128])
        await engine.apredict(x, tag=b"plain")
    asyncio.run(run())
    # feedback names each as its client knows it: a latin-1 client reads b"\xff\xfe-raw" back
    # from the x-request-id answer as "ÿþ-raw"; the others as the strings they sent
    writer.add_labels("m", [long_id, odd_id, "plain", "ÿþ-raw"], [[1], [0], [1], [0]])
    writer.close()
    engine.close()
    table = joined(_logged(tmp_path), read_labels(tmp_path, "m"))
    assert len(table) == 4 and table["label"].notna().all()
    assert "ÿþ-raw" in set(table["request_id"])


def test_request_id_text_matches_what_each_side_holds() -> None:
    from mlserve.predlog import request_id_text

    assert request_id_text("é" * 64) == "é" * 64  # exactly 128 bytes: kept whole
    assert request_id_text(("a" + "é" * 64).encode()[:128]) == "a" + "é" * 63  # cut: dropped
    assert request_id_text("a" + "é" * 64) == "a" + "é" * 63  # feedback, cut the same way
    header = "d-été".encode("latin-1")  # http.client / requests send str headers so
    assert request_id_text(header) == header.decode("latin-1") == request_id_text("d-été")
    assert request_id_text(b"x\xff") != request_id_text(b"x\xfe")  # no collision


def test_a_part_spanning_midnight_is_found_by_since(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    midnight = pd.Timestamp("2026-09-22T00:00:00Z").value
    folder = tmp_path / "predictions" / "m" / "1" / "date=2026-09-21"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({
        "request_id": ["before", "after"], "row": pa.array([0, 0], pa.int32()),
        "ts": pa.array([midnight - 10**9, midnight + 5 * 10**9], pa.timestamp("ns", tz="UTC")),
        "amount": pa.array([1.0, 2.0], pa.float32())}),
        folder / f"part-{midnight - 10**9:020d}-w-1.parquet")
    got = read_predictions(tmp_path, "m", since_ns=midnight)
    assert list(got["request_id"]) == ["after"]


def test_inputs_named_like_log_columns_are_kept_apart(tmp_path: Path) -> None:
    spec = {"features": [{"name": name, "kind": "numeric", "ops": []}
                         for name in ("ts", "label", "version", "amount")]}
    engine = Engine(FeaturePlan(spec), lambda x: x[:, :1].copy(), backend="python")
    writer = PredictionLogWriter(tmp_path, flush_s=60)
    writer.watch("m", "1", engine, ["ts", "label", "version", "amount"], ["ts"])
    _send(engine, [("r", np.array([[1, 2, 3, 4]], np.float32))])
    writer.add_labels("m", ["r"], [[1]])
    writer.close()
    engine.close()
    table = joined(_logged(tmp_path), read_labels(tmp_path, "m"))
    row = table.iloc[0]
    assert (row["in__ts"], row["in__label"], row["in__version"], row["amount"]) == (1, 2, 3, 4)
    assert row["out__ts"] == 1 and row["label"] == "1" and row["version"] == "1"
    assert isinstance(row["ts"], pd.Timestamp)


def _old_part(root: Path, kind_path: str, day: str, tag: str) -> Path:
    """A part filed on ``day`` (written as the writer would file it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ts = pd.Timestamp(f"{day}T12:00:00Z").value
    folder = root / kind_path / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{ts:020d}-{tag}-1.parquet"
    pq.write_table(pa.table({"request_id": [tag], "row": pa.array([0], pa.int32()),
                             "ts": pa.array([ts], pa.timestamp("ns", tz="UTC"))}), path)
    return path


def test_show_and_retention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlserve.cli import main
    from mlserve.predlog import remove_older, summarize

    old = [_old_part(tmp_path, "predictions/m/1", "2026-01-01", "a"),
           _old_part(tmp_path, "labels/m", "2026-01-02", "b")]
    kept = [_old_part(tmp_path, "predictions/m/1", "2026-01-10", "c"),
            _old_part(tmp_path, "predictions/m/2", "2026-01-09", "d")]
    (tmp_path / "predictions" / "notes.txt").write_text("not a part: left alone")
    groups = {(g.kind, g.model, g.version): (g.parts, g.first_day, g.last_day)
              for g in summarize(tmp_path)}
    assert groups == {("predictions", "m", "1"): (2, "2026-01-01", "2026-01-10"),
                      ("predictions", "m", "2"): (1, "2026-01-09", "2026-01-09"),
                      ("labels", "m", None): (1, "2026-01-02", "2026-01-02")}
    now = pd.Timestamp("2026-01-11T08:00:00Z").value
    would = remove_older(tmp_path, 2 * 86400, now_ns=now, dry_run=True)  # cutoff 2026-01-09
    assert sorted(would) == sorted(str(p.relative_to(tmp_path)) for p in old)
    assert all(p.exists() for p in old)
    assert sorted(remove_older(tmp_path, 2 * 86400, now_ns=now)) == sorted(would)
    assert not any(p.exists() for p in old) and all(p.exists() for p in kept)
    assert (tmp_path / "predictions" / "notes.txt").exists()
    with pytest.raises(InvalidInput, match="positive"):
        remove_older(tmp_path, 0)
    assert main(["predlog", "show", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "2026-01-10" in shown and "predictions" in shown
    assert main(["predlog", "gc", str(tmp_path), "--keep", "1d", "--dry-run"]) == 0
    assert "would remove 2 parts" in capsys.readouterr().out  # today's cutoff: both remain old
    assert main(["predlog", "gc", str(tmp_path), "--keep", "soon"]) == 2


def test_retention_in_object_storage(s3_uri: str, s3_server: Any) -> None:
    from mlserve.predlog import remove_older, summarize

    writer = PredictionLogWriter(s3_uri, flush_s=60)
    engine = _engine()
    writer.watch("m", "1", engine, ["amount", "code"], ["p_0", "p_1"])
    _send(engine, _requests(30, 4, "s"))
    writer.close()
    engine.close()
    assert [g.parts for g in summarize(s3_uri)] == [1]
    assert remove_older(s3_uri, 86400) == []  # today's part is kept
    tomorrow = pd.Timestamp.now(tz="UTC").value + 3 * 86400 * 10**9
    assert len(remove_older(s3_uri, 86400, now_ns=tomorrow)) == 1
    assert summarize(s3_uri) == []
