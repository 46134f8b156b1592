"""The online store across real processes: a writer subprocess materializing while a reader
thread hammers reads (no torn value, no event going back in time, never blocked), an open write
transaction not blocking a fresh reader, SIGKILL of a writer mid-materialization leaving a
readable, consistent store, and the ``mlserve features`` command line end to end.

Every value written here carries its own checksum: columns ``a`` (the key), ``b`` (the event
time in seconds) and ``c = 1000 * a + b`` (exact in float32 for these ranges), and the record's
event_ts must be ``BASE + b`` seconds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlserve.features import Entity, FeatureService, FeatureStore, FeatureView, RowStatus

BASE = pd.Timestamp("2026-01-01T00:00:00Z")
N_KEYS = 1000
DELAY_ENV = "MLSERVE_FEATURES_TEST_BATCH_DELAY_S"

WRITER = """
import sys
import numpy as np, pandas as pd
from mlserve.features import FeatureStore
root, rounds, seed, n_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = pd.Timestamp("2026-01-01T00:00:00Z")
store = FeatureStore(root)
rng = np.random.default_rng(seed)
for r in range(rounds):
    n = 2000
    keys = rng.integers(0, n_keys, n)
    # Mostly this round's events, some late arrivals from any earlier time.
    b = np.where(rng.random(n) < 0.8, rng.integers(r * 100, r * 100 + 100, n),
                 rng.integers(0, r * 100 + 1, n))
    store.ingest("v", pd.DataFrame({"k": keys, "event_ts": base + pd.to_timedelta(b, unit="s"),
                                    "a": keys.astype(float), "b": b.astype(float),
                                    "c": (1000 * keys + b).astype(float)}))
    store.materialize_incremental("v", base + pd.Timedelta(seconds=(r + 1) * 100),
                                  batch_keys=64)
print("done")
"""

MATERIALIZE = """
import sys
from mlserve.features import FeatureStore
FeatureStore(sys.argv[1]).materialize_incremental("v", sys.argv[2], batch_keys=int(sys.argv[3]))
print("done")
"""


def make_store(root: Path) -> FeatureStore:
    store = FeatureStore(root)
    entity = Entity("thing", "k")
    store.apply([entity, FeatureView("v", entity, {"a": "float", "b": "float", "c": "float"}),
                 FeatureService("svc", ["v"])])
    return store


def check_values(keys: np.ndarray, values: np.ndarray, status: np.ndarray,
                 event_ts: np.ndarray) -> None:
    """Each present value is internally consistent (never torn)."""
    present = status == RowStatus.PRESENT
    a, b, c = values[present].T
    np.testing.assert_array_equal(a, keys[present].astype(np.float32))
    np.testing.assert_array_equal(c, 1000 * a + b)
    np.testing.assert_array_equal(event_ts[present], BASE.value + b.astype(np.int64) * 10**9)
    assert np.isnan(values[~present]).all()


def test_reader_thread_never_sees_torn_or_older_values(tmp_path: Path) -> None:
    store = make_store(tmp_path / "fs")
    reader = store.service_reader("svc")
    keys = np.arange(N_KEYS, dtype=np.int64)
    failures: list[BaseException] = []
    reads = 0
    longest_s = 0.0
    done = threading.Event()

    def hammer() -> None:
        nonlocal reads, longest_s
        newest = np.zeros(N_KEYS, dtype=np.int64)
        try:
            while not done.is_set():
                batch = keys[np.random.default_rng(reads).permutation(N_KEYS)[:256]]
                start = time.perf_counter()
                got = reader.read(batch)
                longest_s = max(longest_s, time.perf_counter() - start)
                check_values(batch, got.values, got.status[:, 0], got.event_ts[:, 0])
                stamps = got.event_ts[:, 0]
                assert (stamps >= newest[batch]).all(), "an event went back in time"
                newest[batch] = stamps
                reads += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    writer = subprocess.run([sys.executable, "-c", WRITER, str(store.root), "6", "7",
                             str(N_KEYS)],
                            capture_output=True, text=True, timeout=300, check=False)
    done.set()
    thread.join(30)
    assert writer.returncode == 0, writer.stderr
    assert not failures, failures[0]
    assert reads > 5, reads
    assert longest_s < 5.0, longest_s  # generous: the machine is shared; readers never wait
    got = reader.read(keys)
    assert (got.status[:, 0] == RowStatus.PRESENT).mean() > 0.8
    check_values(keys, got.values, got.status[:, 0], got.event_ts[:, 0])
    store.close()


def ingest_two_events_per_key(store: FeatureStore, n_keys: int) -> None:
    keys = np.repeat(np.arange(n_keys, dtype=np.int64), 2)
    b = np.tile([10, 20], n_keys).astype(np.int64)
    store.ingest("v", pd.DataFrame({
        "k": keys, "event_ts": BASE + pd.to_timedelta(b, unit="s"), "a": keys.astype(float),
        "b": b.astype(float), "c": (1000 * keys + b).astype(float)}))


def test_open_write_transaction_does_not_block_a_fresh_reader(tmp_path: Path) -> None:
    store = make_store(tmp_path / "fs")
    ingest_two_events_per_key(store, 50)
    writer = subprocess.Popen(
        [sys.executable, "-c", MATERIALIZE, str(store.root), "2026-01-02T00:00:00Z", "1000000"],
        env=dict(os.environ, **{DELAY_ENV: "2.5"}), stdout=subprocess.DEVNULL)
    try:
        wait_for_writer(store, writer)
        time.sleep(0.3)  # inside its (2.5 s) write transaction now
        start = time.perf_counter()
        got = store.online_features("svc", np.arange(50))  # first use: opens env and database
        took = time.perf_counter() - start
        assert writer.poll() is None, "the writer ended before the read; nothing was shown"
        assert took < 1.5, took
        assert (got.status == RowStatus.MISSING).all()  # the open transaction is invisible
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
        writer.wait()
    got = store.online_features("svc", np.arange(50))
    assert (got.status == RowStatus.PRESENT).all()
    check_values(np.arange(50), got.values, got.status[:, 0], got.event_ts[:, 0])
    store.close()


def wait_for_writer(store: FeatureStore, child: subprocess.Popen[bytes]) -> None:
    """Returns once ``child`` holds the writer lock (it is materializing)."""
    lock = store.root / "online.writer.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip() == str(child.pid)):
        assert time.monotonic() < deadline and child.poll() is None, "the writer never started"
        time.sleep(0.005)


def test_sigkill_mid_materialization_leaves_a_consistent_store(tmp_path: Path) -> None:
    n_keys = 3000  # 30 transactions of 100 keys, each held open 30 ms by the test hook
    store = make_store(tmp_path / "fs")
    ingest_two_events_per_key(store, n_keys)
    view = store.view("v")
    rng = random.Random(5)
    partial = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", MATERIALIZE, str(store.root), "2026-01-02T00:00:00Z", "100"],
            env=dict(os.environ, **{DELAY_ENV: "0.03"}), stdout=subprocess.DEVNULL)
        wait_for_writer(store, child)
        time.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        # Readable, every value whole and the latest of its key; the state is all or nothing.
        records = store.online.scan(view)
        for key, record in records:
            k = int.from_bytes(key[1:], "big") - (1 << 63)
            assert record["values"].tolist() == [k, 20.0, 1000 * k + 20]
            assert record["event_ts"] == BASE.value + 20 * 10**9
        state = store.online.state(view)
        assert state is None or (len(records) == n_keys and state["parts"])
        partial += state is None  # killed before its last transaction
    assert partial, "no kill landed mid-materialization"
    # The next writer gets the lock (the kernel released it) and completes the work.
    result = store.materialize_incremental("v", "2026-01-02T00:00:00Z")
    assert result.written + result.kept_newer == n_keys
    got = store.online_features("svc", np.arange(n_keys))
    assert (got.status == RowStatus.PRESENT).all()
    check_values(np.arange(n_keys), got.values, got.status[:, 0], got.event_ts[:, 0])
    store.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlserve.cli", "features", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_end_to_end(tmp_path: Path) -> None:
    from mlserve.trainer.datasets import feature_history

    history = feature_history(n_users=20, n_events=300)
    history.to_csv(tmp_path / "history.csv", index=False)
    (tmp_path / "defs.toml").write_text("""
[[entity]]
name = "user"
join_keys = ["user_id"]

[[feature_view]]
name = "user_stats"
entity = "user"
ttl_seconds = 864000
source = "history.csv"
columns = { tx_count_24h = "int", avg_amount_7d = "float" }

[[feature_service]]
name = "fraud"
views = ["user_stats"]
""")
    store = ["--store", str(tmp_path / "fs")]
    done = run_cli("apply", str(tmp_path / "defs.toml"), *store)
    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout and "user_stats" in done.stdout
    done = run_cli("ingest", "user_stats", *store)
    assert done.returncode == 0, done.stderr
    assert "300 rows appended to user_stats/1" in done.stdout
    assert "ignored columns: account_age_days, home_country" in done.stdout
    end = (history["event_ts"].max() + pd.Timedelta(seconds=1)).isoformat()
    done = run_cli("materialize", "--incremental", "--end", end, *store)
    assert done.returncode == 0, done.stderr
    assert "user_stats/1" in done.stdout
    done = run_cli("get", "fraud", "1", "2", "999", "--now", end, *store)
    assert done.returncode == 0, done.stderr
    lines = {line.split("│")[1].strip(): line for line in done.stdout.splitlines()
             if line.startswith("│")}
    assert "present" in lines["1"] and "missing" in lines["999"]
    last = history[history["user_id"] == 1].iloc[-1]
    assert f"{last['avg_amount_7d']:.6g}" in lines["1"]
    done = run_cli("list", "views", *store)
    assert done.returncode == 0 and "user_stats" in done.stdout and "ttl 864000s" in done.stdout
    done = run_cli("get", "fraud", "x", *store)
    assert done.returncode == 1 and "'x' is not an integer" in done.stderr
    done = run_cli("ingest", "nope", str(tmp_path / "history.csv"), *store)
    assert done.returncode == 1 and "unknown feature view 'nope'" in done.stderr


def test_materialize_every_keeps_the_online_store_current_until_stopped(tmp_path: Path) -> None:
    """`materialize --incremental --every S` (a serving pod's sidecar): rows ingested while it
    runs reach the online store on its next run, and SIGTERM ends it with status 0."""
    store = make_store(tmp_path / "fs")
    now = pd.Timestamp.now(tz="UTC").floor("s")

    def ingest(key: int) -> None:
        store.ingest("v", pd.DataFrame({"k": [key], "event_ts": [now - pd.Timedelta(minutes=1)],
                                        "a": [float(key)], "b": [1.0], "c": [2.0]}))

    def online(key: int) -> int:
        return int(store.online_features("svc", [key]).status[0, 0])

    ingest(1)
    # A view whose only part is unreadable: reported on every run, and the others go on.
    entity = store.view("v").resolved_entity
    store.apply([FeatureView("broken", entity, {"z": "float"})])
    bad = tmp_path / "fs" / "offline" / "broken" / "v1"
    bad.mkdir(parents=True)
    (bad / f"part-{1:020d}-bad.parquet").write_bytes(b"not parquet")
    proc = subprocess.Popen([sys.executable, "-m", "mlserve.cli", "features", "materialize",
                             "--incremental", "--every", "0.3", "--store", str(tmp_path / "fs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while online(1) != RowStatus.PRESENT and time.monotonic() < deadline:
            time.sleep(0.1)
        assert online(1) == RowStatus.PRESENT
        assert online(2) == RowStatus.MISSING
        ingest(2)
        while online(2) != RowStatus.PRESENT and time.monotonic() < deadline:
            time.sleep(0.1)
        assert online(2) == RowStatus.PRESENT
        # A new version of v: the service still pins v/1, and both stay materialized.
        store.apply([FeatureView("v", entity, {"a": "float", "b": "float", "c": "float",
                                               "d": "float"})])
        while store.online.state(store.view("v/2")) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if " v/1:" in line]
    assert len(lines) >= 2 and "1 rows, 1 written" in lines[0]
    assert " v/2:" in out, "the latest version of v is materialized too"
    assert "error: materializing broken/1: offline part" in err
    assert "retrying in 0.3 s" in err
    # svc/2 pins v/2; models trained on svc/1 still read v/1, which stays covered.
    assert store.apply([FeatureService("svc", ["v"])])[0].version == 2
    done = run_cli("materialize", "--incremental", "--store", str(tmp_path / "fs"))
    assert done.returncode == 1 and "offline/broken/v1" in done.stderr  # still broken
    done = run_cli("materialize", "--incremental", "--store", str(tmp_path / "fs"), "v/1", "v/2")
    assert done.returncode == 0 and "v/1" in done.stdout and "v/2" in done.stdout
    from mlserve.features.cli import _default_views

    assert _default_views(store) == ["broken/1", "v/2", "v/1"]
    done = run_cli("materialize", "--start", "2026-01-01", "--every", "5",
                   "--store", str(tmp_path / "fs"))
    assert done.returncode == 1 and "--every SECONDS needs --incremental" in done.stderr
