"""The online store and py-lmdb read and write the same LMDB environment: mlserve's binding (the
vendored liblmdb 0.9.36) and py-lmdb's default engine share the on-disk and lock-file formats.
py-lmdb runs in child processes only (LMDB forbids one process opening an environment twice),
while this process keeps the store open, so the two also share the reader table live."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView, RowStatus
from mlserve.features.keys import encode_keys
from mlserve.features.records import RecordLayout

pytest.importorskip("lmdb", reason="py-lmdb (a dev dependency) checks the interoperation")

USER = Entity("user", "user_id")
BASE = pd.Timestamp("2026-01-01T00:00:00Z")

_DUMP = """
import json, sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, max_dbs=4096, readahead=False, lock=True)
db = env.open_db(sys.argv[2].encode(), create=False)
meta = env.open_db(b"__meta__", create=False)
with env.begin() as txn:
    items = [[k.hex(), v.hex()] for k, v in txn.cursor(db=db)]
    layout = txn.get(("layout/" + sys.argv[2]).encode(), db=meta)
print(json.dumps({"items": items, "layout": json.loads(layout)}))
env.close()
"""

_WRITE = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=4096, readahead=False, map_size=1 << 26)
db = env.open_db(sys.argv[2].encode(), create=True)
with env.begin(write=True) as txn:
    for line in sys.stdin.read().split():
        key, value = line.split(":")
        txn.put(bytes.fromhex(key), bytes.fromhex(value), db=db)
env.close()
"""


def py_lmdb(script: str, *args: str, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], input=stdin, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_store(root: Path) -> FeatureStore:
    store = FeatureStore(root)
    store.apply([USER, FeatureView("v", USER, [Column("x", "float"), Column("n", "int")]),
                 FeatureService("svc", ["v"])])
    return store


def test_py_lmdb_reads_what_the_store_wrote(tmp_path: Path) -> None:
    with make_store(tmp_path) as store:
        store.ingest("v", pd.DataFrame({
            "user_id": [3, -7, 2**40], "event_ts": [BASE, BASE, BASE + pd.Timedelta(1, "s")],
            "x": [1.5, None, -2.0], "n": pd.array([1, 2, None], dtype="Int64")}))
        store.materialize_incremental("v", BASE + pd.Timedelta(1, "h"))
        view = store.view("v")
        ours = [(k.hex(), rec.tobytes().hex()) for k, rec in store.online.scan(view)]
        got = json.loads(py_lmdb(_DUMP, str(tmp_path / "online"), "view/v/v1"))
    assert [tuple(i) for i in got["items"]] == ours and len(ours) == 3
    assert got["layout"]["record_bytes"] == RecordLayout(2).record_bytes
    assert got["layout"]["columns"] == ["x", "n"]


def test_the_store_reads_what_py_lmdb_wrote_while_open(tmp_path: Path) -> None:
    layout = RecordLayout(2)
    with make_store(tmp_path) as store:
        reader = store.service_reader("svc")
        assert reader.read([1, 2]).status[:, 0].tolist() == [RowStatus.MISSING] * 2
        recs = layout.encode(np.array([10, 20]), np.array([0, 0]),
                             np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0, 0], [0, 1]], bool))
        lines = [f"{k.hex()}:{r.tobytes().hex()}"
                 for k, r in zip(encode_keys(USER, [[1, 2]]), recs, strict=True)]
        py_lmdb(_WRITE, str(tmp_path / "online"), "view/v/v1", stdin="\n".join(lines))
        got = reader.read(np.array([2, 1, 5]))
        assert got.status[:, 0].tolist() == [RowStatus.PRESENT, RowStatus.PRESENT,
                                             RowStatus.MISSING]
        np.testing.assert_array_equal(got.values[:2], [[3.0, np.nan], [1.0, 2.0]])
        assert got.event_ts[:, 0].tolist() == [20, 10, 0]
        # The store writes on top (newer-wins) and py-lmdb sees the result.
        store.ingest("v", pd.DataFrame({"user_id": [1], "event_ts": [BASE],
                                        "x": [9.0], "n": pd.array([None], dtype="Int64")}))
        store.materialize_incremental("v", BASE + pd.Timedelta(1, "h"))
        assert reader.read([1]).values.tolist()[0][0] == 9.0
        dumped = json.loads(py_lmdb(_DUMP, str(tmp_path / "online"), "view/v/v1"))
        assert len(dumped["items"]) == 2
