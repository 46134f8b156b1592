"""Batch inference (mlserve.batch, `mlserve batch`): real models trained and registered here,
real Parquet/CSV files, real worker processes.

The output equals the trainer's own outputs on the same rows (torch at training time, an
independent path) in input order whatever the chunking, the files and the workers; a job
killed with SIGKILL resumes without scoring its finished parts again and ends with the result
of an uninterrupted run; anything that would change the result refuses to resume; a chunk that
cannot be scored fails the job with its file and rows named and keeps the finished parts; a
model trained on a feature service gets the same point-in-time features its training table had.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlserve.batch import BatchScorer, ChunkFailed, run_batch
from mlserve.batch.job import JOB_FILE, SUCCESS_FILE, iter_chunks, part_name
from mlserve.config import BatcherConfig
from mlserve.engine import Engine
from mlserve.errors import InvalidInput
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView
from mlserve.registry import Registry
from mlserve.trainer import train
from mlserve.trainer.datasets import card_transactions
from mlserve.trainer.features import feature_table
from mlserve.trainer.preprocess import encode_rows

CONFIG = {"exclude": ["user_id", "merchant_id"], "epochs": 2, "hidden": [16],
          "min_category_count": 10}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("batch")
    registry = Registry(root / "registry")
    data = card_transactions(3000, seed=5)
    binary = train(data, "is_fraud", name="fraud", timestamp="event_ts", config=CONFIG,
                   registry=registry, out_dir=root / "fraud", progress=False)
    multi = train(data.drop(columns=["is_fraud"]), "channel", name="channel",
                  timestamp="event_ts", config=CONFIG, registry=registry,
                  out_dir=root / "channel", progress=False)
    registry.set_alias("fraud", "champion", 1)
    rows = binary.test_frame.reset_index(drop=True)
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    return {"root": root, "registry": registry, "binary": binary, "multi": multi,
            "rows": rows}


def _want(result: Any) -> np.ndarray:
    return np.asarray(result.test_outputs, dtype=np.float32).reshape(len(result.test_frame), -1)


def _write_inputs(rows: pd.DataFrame, directory: Path) -> Path:
    """The rows as three files of a directory: two Parquet (one with small row groups) and a
    CSV, read in sorted order."""
    directory.mkdir(parents=True, exist_ok=True)
    a, b, c = np.array_split(np.arange(len(rows)), 3)
    rows.iloc[a].to_parquet(directory / "a.parquet", index=False, row_group_size=37)
    rows.iloc[b].to_parquet(directory / "b.parquet", index=False)
    rows.iloc[c].to_csv(directory / "c.csv", index=False)
    (directory / "_ignored.parquet").write_bytes(b"not parquet")  # skipped like pyarrow does
    return directory


def test_output_equals_the_trainers_outputs_in_input_order(models: dict[str, Any],
                                                           tmp_path: Path) -> None:
    rows, result = models["rows"], models["binary"]
    inputs = _write_inputs(rows, tmp_path / "in")
    res = run_batch("fraud@champion", inputs, tmp_path / "out", registry=models["registry"],
                    chunk_rows=41, keep=["row_id", "is_fraud"])
    assert res.model == "fraud/1"
    assert res.rows == res.rows_scored == len(rows)
    per_file = [int(np.ceil(n / 41)) for n in map(len, np.array_split(np.arange(len(rows)), 3))]
    assert res.chunks == sum(per_file) and res.resumed_chunks == 0
    out = pd.read_parquet(tmp_path / "out")
    assert list(out.columns) == ["row_id", "is_fraud", "probability", "predicted_class"]
    np.testing.assert_array_equal(out["row_id"].to_numpy(), rows["row_id"].to_numpy())
    np.testing.assert_array_equal(out["is_fraud"].to_numpy(), rows["is_fraud"].to_numpy())
    want = _want(result)[:, 0]
    np.testing.assert_allclose(out["probability"].to_numpy(), want, rtol=0, atol=1e-5)
    classes = np.asarray(json.loads((result.bundle_path / "mlserve.json").read_text())["classes"])
    np.testing.assert_array_equal(out["predicted_class"].to_numpy(),
                                  classes[(out["probability"].to_numpy() >= 0.5).astype(int)])
    success = json.loads((tmp_path / "out" / SUCCESS_FILE).read_text())
    assert success["rows"] == len(rows) and success["model"] == "fraud/1"
    # Each part records its input file and first row.
    first = pq.read_metadata(tmp_path / "out" / part_name(0, 1)).metadata
    assert first[b"mlserve.first_row"] == b"41"
    assert first[b"mlserve.input"].decode().endswith("a.parquet")


def test_worker_processes_give_the_same_parts(models: dict[str, Any], tmp_path: Path) -> None:
    rows = models["rows"]
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    one = run_batch("fraud/1", tmp_path / "rows.parquet", tmp_path / "one",
                    registry=models["registry"], chunk_rows=100)
    two = run_batch("fraud/1", tmp_path / "rows.parquet", tmp_path / "two",
                    registry=models["registry"], chunk_rows=100, workers=2)
    assert one.parts == two.parts and len(one.parts) == int(np.ceil(len(rows) / 100))
    for name in one.parts:
        assert pq.read_table(tmp_path / "one" / name).equals(pq.read_table(tmp_path / "two" / name))
    out = pd.read_parquet(tmp_path / "two")
    assert list(out.columns) == [*rows.columns, "probability", "predicted_class"]  # all kept
    pd.testing.assert_frame_equal(out[rows.columns], pd.read_parquet(tmp_path / "rows.parquet"))


def test_multiclass_columns_per_class(models: dict[str, Any], tmp_path: Path) -> None:
    result = models["multi"]
    rows = result.test_frame.reset_index(drop=True)
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    run_batch("channel", tmp_path / "rows.parquet", tmp_path / "out",
              registry=models["registry"], keep=[])
    out = pd.read_parquet(tmp_path / "out")
    classes = json.loads((result.bundle_path / "mlserve.json").read_text())["classes"]
    assert list(out.columns) == [*(f"probabilities_{c}" for c in classes), "predicted_class"]
    want = _want(result)
    np.testing.assert_allclose(out.iloc[:, :len(classes)].to_numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["predicted_class"].to_numpy(),
                                  np.asarray(classes)[np.argmax(want, axis=1)])


def test_scorer_answers_in_the_format_it_gets(models: dict[str, Any]) -> None:
    rows = models["rows"].iloc[:300].set_axis(np.arange(1000, 1300))
    want = _want(models["binary"])[:300, 0]
    with BatchScorer("fraud/1", registry=models["registry"], keep=["row_id"],
                     batch_rows=64) as scorer:
        frame = scorer(rows)
        table = scorer(pa.Table.from_pandas(rows, preserve_index=False))
        arrays = scorer({c: rows[c].to_numpy() for c in rows.columns})
        empty = scorer(rows.iloc[:0])
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == list(rows.index)
    assert isinstance(table, pa.Table) and isinstance(arrays, dict)
    for got in (frame["probability"].to_numpy(), table.column("probability").to_numpy(),
                arrays["probability"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert list(empty.columns) == ["row_id", "probability", "predicted_class"] and len(empty) == 0
    # Ray Data's numpy format: kept arrays come back as given (None in strings, 2-D tensors).
    country = rows["country"].to_numpy(dtype=object).copy()
    country[:3] = None
    tensor = np.arange(600, dtype=np.float32).reshape(300, 2)
    batch = {**{c: rows[c].to_numpy() for c in rows.columns}, "country": country,
             "embedding": tensor}
    with BatchScorer("fraud/1", registry=models["registry"],
                     keep=["country", "embedding"]) as scorer:
        got = scorer(batch)
    with BatchScorer("fraud/1", registry=models["registry"], keep=["country"]) as scorer:
        as_frame = scorer(rows.assign(country=country))  # missing countries: imputed
    assert list(got) == ["country", "embedding", "probability", "predicted_class"]
    assert got["country"] is country and got["embedding"] is tensor
    np.testing.assert_array_equal(got["probability"], as_frame["probability"].to_numpy())
    np.testing.assert_allclose(got["probability"][3:], want[3:], rtol=0, atol=1e-5)


def test_bad_arguments_are_refused_clearly(models: dict[str, Any], tmp_path: Path) -> None:
    rows = models["rows"]
    reg = models["registry"]
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    src = tmp_path / "rows.parquet"
    with pytest.raises(InvalidInput, match="would replace input column"):
        BatchScorer("fraud/1", registry=reg)(rows.assign(probability=1.0))
    with pytest.raises(InvalidInput, match=r"no column.*nope.*to keep"):
        run_batch("fraud/1", src, tmp_path / "o1", registry=reg, keep=["nope"])
    with pytest.raises(InvalidInput, match="input column 'amount' is missing"):
        BatchScorer("fraud/1", registry=reg)(rows.drop(columns=["amount"]))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty and holds no batch job"):
        run_batch("fraud/1", src, tmp_path / "busy", registry=reg)
    with pytest.raises(InvalidInput, match="does not exist"):
        run_batch("fraud/1", tmp_path / "missing.parquet", tmp_path / "o2", registry=reg)
    (tmp_path / "rows.json").write_text("{}")
    with pytest.raises(InvalidInput, match="unsupported format"):
        run_batch("fraud/1", tmp_path / "rows.json", tmp_path / "o3", registry=reg)
    for bad in ({"workers": 0}, {"chunk_rows": 0}):
        with pytest.raises(InvalidInput, match=">= 1"):
            run_batch("fraud/1", src, tmp_path / "o4", registry=reg, **bad)


def test_a_bad_chunk_names_its_rows_and_keeps_the_finished_parts(models: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    rows = models["rows"].copy()
    rows["amount"] = rows["amount"].astype(str)  # numbers as text: read as numbers
    rows.loc[250, "amount"] = "twelve"  # in chunk 2 of 100 rows
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pytest.raises(ChunkFailed, match=r"chunk 2 of .*rows\.parquet \(rows 200-299\): "
                                              r"feature 'amount'.*'twelve'"):
            run_batch("fraud/1", tmp_path / "rows.parquet", out, registry=models["registry"],
                      chunk_rows=100, workers=workers)
        names = sorted(p.name for p in out.iterdir())
        assert part_name(0, 0) in names and part_name(0, 1) in names
        assert SUCCESS_FILE not in names and not [n for n in names if n.startswith(".tmp-")]


def test_files_with_different_columns_read_back_as_one_table(models: dict[str, Any],
                                                             tmp_path: Path) -> None:
    rows = models["rows"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    a = rows.iloc[:200].assign(note=None)  # all null in this CSV: typed null there
    a.to_csv(inputs / "a.csv", index=False)
    b = rows.iloc[200:].assign(note="x", extra=np.arange(len(rows) - 200))  # one more column
    b.to_parquet(inputs / "b.parquet", index=False)
    out = inputs / "scores"  # inside the input directory: its parts are not input
    run_batch("fraud/1", inputs, out, registry=models["registry"], chunk_rows=150)
    got = pd.read_parquet(out)
    assert len(got) == len(rows)
    assert got["note"].isna().sum() == 200 and (got["note"].iloc[200:] == "x").all()
    assert got["extra"].isna().sum() == 200
    np.testing.assert_array_equal(got["extra"].iloc[200:].to_numpy(), np.arange(len(rows) - 200))
    np.testing.assert_allclose(got["probability"].to_numpy(), _want(models["binary"])[:, 0],
                               rtol=0, atol=1e-5)
    # Run again: finished (the output is not an input that changed).
    again = run_batch("fraud/1", inputs, out, registry=models["registry"], chunk_rows=150)
    assert again.rows_scored == 0 and again.rows == len(rows)
    # A file without a column the model reads is refused before anything is scored.
    rows.drop(columns=["amount"]).to_parquet(tmp_path / "no_amount.parquet", index=False)
    with pytest.raises(InvalidInput, match=r"no_amount\.parquet: no column\(s\) amount, which "
                                           r"the model reads"):
        run_batch("fraud/1", [tmp_path / "no_amount.parquet"], tmp_path / "o2",
                  registry=models["registry"])
    assert not list((tmp_path / "o2").glob("part-*"))


def test_csv_text_columns_stay_text(tmp_path: Path) -> None:
    (tmp_path / "k.csv").write_text("key,x\n0042,1\n7,2\n")
    (table,) = iter_chunks(tmp_path / "k.csv", 10, None, ["key"])
    assert table.column("key").to_pylist() == ["0042", "7"]
    (tmp_path / "empty.csv").write_text("key,x\n")
    (empty,) = iter_chunks(tmp_path / "empty.csv", 10, None)  # one empty chunk, not none
    assert empty.num_rows == 0 and empty.column_names == ["key", "x"]


def test_worker_start_failure_is_named_and_a_corrected_run_may_reuse_the_output(
        models: dict[str, Any], tmp_path: Path) -> None:
    rows = models["rows"]
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match=r"worker processes could not start: .*tensorrt"):
        run_batch("fraud/1", tmp_path / "rows.parquet", out, registry=models["registry"],
                  backend="tensorrt", workers=2)
    res = run_batch("fraud/1", tmp_path / "rows.parquet", out, registry=models["registry"])
    assert res.rows == len(rows)
    # --overwrite replaces the job's files and leaves the user's alone.
    (out / "README.txt").write_text("mine")
    res = run_batch("fraud/1", tmp_path / "rows.parquet", out, registry=models["registry"],
                    chunk_rows=100, overwrite=True)
    assert res.rows_scored == len(rows) and (out / "README.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("part-*")) == res.parts


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_workers_exit_when_the_job_is_killed(models: dict[str, Any], tmp_path: Path) -> None:
    rows = pd.concat([models["rows"]] * 40, ignore_index=True)
    src = tmp_path / "rows.parquet"
    rows.to_parquet(src, index=False)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mlserve.cli", "batch", "fraud/1", "--input",
                             str(src), "--output", str(out), "--registry",
                             str(models["registry"].root), "--chunk-rows", "200",
                             "--workers", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("part-*.parquet")):
        assert proc.poll() is None
        time.sleep(0.02)
    workers = [p for p in _children(proc.pid)
               if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and
                                              "Z" not in _state(p) for p in workers):
        time.sleep(0.05)
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlserve.cli", "batch", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_killed_job_resumes_without_rescoring_finished_parts(models: dict[str, Any],
                                                             tmp_path: Path) -> None:
    rows = pd.concat([models["rows"]] * 60, ignore_index=True)
    rows["row_id"] = np.arange(len(rows))
    src = tmp_path / "rows.parquet"
    rows.to_parquet(src, index=False)
    out = tmp_path / "out"
    args = ["fraud@champion", "--input", str(src), "--output", str(out), "--registry",
            str(models["registry"].root), "--chunk-rows", "300", "--workers", "1", "--quiet"]
    log = tmp_path / "killed.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mlserve.cli", "batch", *args],
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    total = int(np.ceil(len(rows) / 300))
    assert 3 <= len(done) < total, "the job finished before it could be killed"
    (out / ".tmp-deadbeef0000-part-00000-999999.parquet").write_bytes(b"half a part")
    # Resume from the CLI with the same arguments.
    resumed = _run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(done)} already done)" in resumed.stdout
    for name, mtime in done.items():
        assert (out / name).stat().st_mtime_ns == mtime  # not scored again
    assert not list(out.glob(".tmp-*"))
    fresh = run_batch("fraud/1", src, tmp_path / "fresh", registry=models["registry"],
                      chunk_rows=300)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "fresh"))
    assert fresh.chunks == total
    # A finished job run again scores nothing and touches nothing.
    again = run_batch("fraud@champion", src, out, registry=models["registry"], chunk_rows=300)
    assert again.rows == len(rows) and again.rows_scored == 0


def test_resume_reads_no_row_group_of_a_finished_prefix(models: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rows = models["rows"]  # 450 rows
    src = tmp_path / "rows.parquet"
    rows.to_parquet(src, index=False, row_group_size=100)
    out = tmp_path / "out"
    run_batch("fraud/1", src, out, registry=models["registry"], chunk_rows=150)
    for k in (1, 2):  # chunk 0 stays: rows 0-149; chunk 1 starts inside row group 1
        (out / part_name(0, k)).unlink()
    (out / SUCCESS_FILE).unlink()
    read: list[list[int]] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(list(kwargs.get("row_groups") or []))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    res = run_batch("fraud/1", src, out, registry=models["registry"], chunk_rows=150)
    assert res.resumed_chunks == 1 and res.rows_scored == 300
    assert read == [[1, 2, 3, 4]]  # row group 0 (rows 0-99) is not read again
    fresh = run_batch("fraud/1", src, tmp_path / "fresh", registry=models["registry"],
                      chunk_rows=150)
    assert fresh.parts == res.parts
    for name in res.parts:
        assert pq.read_table(out / name).equals(pq.read_table(tmp_path / "fresh" / name))
    assert pq.read_metadata(out / part_name(0, 1)).metadata[b"mlserve.first_row"] == b"150"


def test_a_job_that_would_change_refuses_to_resume(models: dict[str, Any],
                                                   tmp_path: Path) -> None:
    reg = models["registry"]
    rows = models["rows"]
    src = tmp_path / "rows.parquet"
    rows.to_parquet(src, index=False)
    out = tmp_path / "out"
    run_batch("fraud@champion", src, out, registry=reg, chunk_rows=200)
    for kwargs, what in (({"chunk_rows": 100}, "chunk_rows"),
                         ({"keep": ["row_id"]}, "kept columns"),
                         ({"threshold": 0.7}, "threshold")):
        with pytest.raises(InvalidInput, match=f"another job's result.*{what}"):
            run_batch("fraud@champion", src, out, registry=reg, **{"chunk_rows": 200, **kwargs})
    with pytest.raises(InvalidInput, match=r"model version.*'fraud/1' then, 'channel/1' now"):
        run_batch("channel", src, out, registry=reg, chunk_rows=200)
    rows.iloc[:10].to_parquet(src, index=False)  # the input changed
    with pytest.raises(InvalidInput, match="input files"):
        run_batch("fraud@champion", src, out, registry=reg, chunk_rows=200)
    res = run_batch("fraud@champion", src, out, registry=reg, chunk_rows=200, overwrite=True)
    assert res.rows == 10 and sorted(p.name for p in out.glob("part-*")) == res.parts


def test_cli_help_and_errors(models: dict[str, Any], tmp_path: Path) -> None:
    helped = _run_cli("--help")
    assert helped.returncode == 0 and "--chunk-rows" in helped.stdout
    bad = _run_cli("fraud/9", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                   "--registry", str(models["registry"].root))
    assert bad.returncode == 2 and "mlserve batch:" in bad.stderr


def test_csv_chunks_are_exact_and_a_late_type_change_is_explained(tmp_path: Path) -> None:
    n = 1000
    pd.DataFrame({"a": np.arange(n), "b": np.arange(n) * 0.5}).to_csv(tmp_path / "x.csv",
                                                                      index=False)
    sizes = [t.num_rows for t in iter_chunks(tmp_path / "x.csv", 333, None)]
    assert sizes == [333, 333, 333, 1]
    got = pa.concat_tables(iter_chunks(tmp_path / "x.csv", 333, ["b"])).to_pandas()
    np.testing.assert_array_equal(got["b"].to_numpy(), np.arange(n) * 0.5)


# ---- models trained on a feature service --------------------------------------------------

NOW = pd.Timestamp("2026-11-01T00:00:00Z")


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("batch_features")
    rng = np.random.default_rng(1)
    n = 3000
    with FeatureStore(root / "store") as store:
        user = Entity("user", "user_id")
        store.apply([user, FeatureView("user_stats", user,
                                       [Column("tx_count_7d", "int"),
                                        Column("avg_amount", "float"),
                                        Column("segment", "categorical")],
                                       ttl_seconds=5 * 86400),
                     FeatureService("scoring", ["user_stats"])])
        store.ingest("user_stats", pd.DataFrame({
            "user_id": rng.integers(1, 60, n),
            "event_ts": NOW - pd.to_timedelta(rng.uniform(0, 30 * 86400, n), unit="s"),
            "tx_count_7d": rng.integers(0, 30, n),
            "avg_amount": rng.lognormal(3, 1, n),
            "segment": rng.integers(0, 4, n)}))
    m = 1500
    entities = pd.DataFrame({
        "user_id": rng.integers(1, 70, m),  # some users never ingested: nulls, imputed
        "event_ts": NOW - pd.to_timedelta(rng.uniform(0, 25 * 86400, m), unit="s"),
        "amount": rng.lognormal(3, 1, m).round(2),
        "is_fraud": (rng.random(m) < 0.3).astype(np.int64)})
    registry = Registry(root / "registry")
    train(label="is_fraud", features="scoring", entities=entities,
          feature_store=root / "store", name="fsm", registry=registry,
          config={"epochs": 2, "hidden": [8], "min_category_count": 1},
          out_dir=root / "bundle", progress=False)
    return {"root": root, "store": root / "store", "registry": registry,
            "entities": entities}


def _reference(fm: dict[str, Any], entities: pd.DataFrame) -> np.ndarray:
    """The training path: the trainer's feature table of these rows, through the Engine."""
    table = feature_table(entities, "is_fraud", "scoring", store=fm["store"])
    config = BatcherConfig(max_batch_size=len(entities))
    with Engine.from_registry("fsm", registry=fm["registry"], config=config) as engine:
        x = encode_rows(table.frame, engine.bundle.signature["inputs"])
        return engine.predict(x)[:, 0]


def test_feature_service_model_gets_its_training_features(feature_model: dict[str, Any],
                                                          tmp_path: Path) -> None:
    entities = feature_model["entities"].drop(columns=["is_fraud"])
    entities.to_parquet(tmp_path / "entities.parquet", index=False)
    res = run_batch("fsm", tmp_path / "entities.parquet", tmp_path / "out",
                    registry=feature_model["registry"], chunk_rows=400, workers=2,
                    with_features=True)
    assert res.rows == len(entities)
    out = pd.read_parquet(tmp_path / "out")
    want = _reference(feature_model, feature_model["entities"])
    np.testing.assert_allclose(out["probability"].to_numpy(), want, rtol=0, atol=1e-6)
    table = feature_table(feature_model["entities"], "is_fraud", "scoring",
                          store=feature_model["store"])
    np.testing.assert_allclose(out["user_stats__avg_amount"].to_numpy(dtype=np.float64),
                               table.frame["user_stats__avg_amount"].to_numpy(), equal_nan=True)


def test_feature_service_model_as_of_one_time_and_pinned_parts(feature_model: dict[str, Any],
                                                               tmp_path: Path) -> None:
    reg = feature_model["registry"]
    entities = feature_model["entities"].drop(columns=["is_fraud", "event_ts"])
    entities.to_parquet(tmp_path / "entities.parquet", index=False)
    with pytest.raises(InvalidInput, match=r"no column 'event_ts'.*as_of"):
        BatchScorer("fsm", registry=reg)(entities)
    at = NOW - pd.Timedelta(days=2)
    out = tmp_path / "out"
    run_batch("fsm", tmp_path / "entities.parquet", out, registry=reg, chunk_rows=500,
              as_of=at.isoformat())
    want = _reference(feature_model, feature_model["entities"].assign(event_ts=at))
    np.testing.assert_allclose(pd.read_parquet(out)["probability"].to_numpy(), want, rtol=0,
                               atol=1e-6)
    job = json.loads((out / JOB_FILE).read_text())
    assert list(job["feature_parts"]) == ["user_stats/1"]
    # Data ingested after the job started is not read when it resumes (parts are pinned).
    (out / part_name(0, 1)).unlink()
    (out / SUCCESS_FILE).unlink()
    with FeatureStore(feature_model["store"]) as store:
        store.ingest("user_stats", pd.DataFrame({
            "user_id": np.arange(1, 70), "event_ts": [at - pd.Timedelta(hours=1)] * 69,
            "tx_count_7d": [29] * 69, "avg_amount": [1e4] * 69, "segment": [3] * 69}))
    res = run_batch("fsm", tmp_path / "entities.parquet", out, registry=reg, chunk_rows=500,
                    as_of=at.isoformat())
    assert res.resumed_chunks == res.chunks - 1
    np.testing.assert_allclose(pd.read_parquet(out)["probability"].to_numpy(), want, rtol=0,
                               atol=1e-6)
