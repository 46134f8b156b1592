"""A feature store opened read-only: a directory store on a read-only volume (a serving
container's mount, or a store baked into an image whose root filesystem is read-only). Reads
(definitions, historical features, online reads) equal those of the writable store; changes are
refused with InvalidInput before anything is written; a real read-only bind mount (user and
mount namespaces) is detected without being told, as the model registry does."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlserve.errors import InvalidInput
from mlserve.features import Column, Entity, FeatureService, FeatureStore, FeatureView
from read_only_mount import SKIP_REASON, can_mount_read_only, read_only_mount_prefix

NOW = pd.Timestamp("2026-06-01T12:00:00Z")
USER = Entity("user", "user_id")
STATS = FeatureView("user_stats", USER, [Column("tx", "int"), Column("amount", "float")],
                    ttl_seconds=86400)


def _make(root: Path) -> FeatureStore:
    store = FeatureStore(root)
    store.apply([USER, STATS, FeatureService("fraud", ["user_stats"])])
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"user_id": rng.integers(1, 40, 300),
                         "tx": rng.integers(0, 50, 300),
                         "amount": rng.lognormal(3, 1, 300),
                         "event_ts": [NOW - pd.Timedelta(seconds=float(s))
                                      for s in rng.uniform(0, 3 * 86400, 300)]})
    store.ingest("user_stats", rows)
    store.materialize("user_stats", NOW - pd.Timedelta(days=30), NOW)
    return store


def _entities() -> pd.DataFrame:
    return pd.DataFrame({"user_id": list(range(1, 45)),
                         "event_ts": [NOW - pd.Timedelta(hours=h % 30) for h in range(44)]})


def _digest(root: Path) -> dict[str, str]:
    """Every file's sha256 but LMDB's lock file: its reader table is written by readers too
    (where the file system lets it), as it must be for readers beside a writer."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture()
def store(tmp_path: Path) -> FeatureStore:
    s = _make(tmp_path / "store")
    s.close()
    return s


def test_read_only_store_reads_like_the_writable_one(store: FeatureStore) -> None:
    users = np.arange(1, 45, dtype=np.int64)
    with FeatureStore(store.root) as rw, FeatureStore(store.root, read_only=True) as ro:
        assert ro.read_only and not rw.read_only
        assert ro.service("fraud") == rw.service("fraud")
        pd.testing.assert_frame_equal(ro.historical_features(_entities(), "fraud"),
                                      rw.historical_features(_entities(), "fraud"))
        # The writer's environment first: a read-only one in the process would refuse it.
        b = rw.online_features("fraud", {"user_id": users}, now=NOW)
        a = ro.online_features("fraud", {"user_id": users}, now=NOW)
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.status, b.status)
        assert ro.online.has_data(ro.view("user_stats"))


def test_read_only_store_refuses_changes_before_writing(store: FeatureStore) -> None:
    before = _digest(store.root)
    with FeatureStore(store.root, read_only=True) as ro:
        changed = FeatureView("user_stats", USER, [Column("tx", "int")], ttl_seconds=60)
        for what, change in [
                ("definitions .* are read-only", lambda: ro.apply([changed])),
                ("definitions .* are read-only", lambda: ro.apply([changed], dry_run=True)),
                ("cannot ingest", lambda: ro.ingest("user_stats", _entities().assign(
                    tx=1, amount=2.0))),
                ("cannot materialize", lambda: ro.materialize_incremental("user_stats")),
                ("cannot materialize", lambda: ro.materialize("user_stats", NOW, NOW)),
                ("online store .* is read-only", lambda: ro.online.writer().__enter__())]:
            with pytest.raises(InvalidInput, match=what):
                change()
    assert _digest(store.root) == before


def test_read_only_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no feature store definitions"):
        FeatureStore(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(InvalidInput, match="read_only opens a feature store in a directory"):
        FeatureStore("s3://bucket/features", read_only=True)


def test_read_only_store_without_online_data_says_what_to_do(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "store")
    s.apply([USER, STATS])
    ro = FeatureStore(tmp_path / "store", read_only=True)
    assert ro.view("user_stats").version == 1
    with pytest.raises(InvalidInput, match=r"nothing was materialized .* materialize"):
        ro.online_features(["user_stats"], {"user_id": [1]})
    assert not (tmp_path / "store" / "online").exists()


def test_a_writer_cannot_reuse_a_read_only_environment_of_its_process(
        store: FeatureStore) -> None:
    with FeatureStore(store.root, read_only=True) as ro:
        ro.online_features("fraud", {"user_id": [1]})
        with FeatureStore(store.root) as rw, pytest.raises(InvalidInput, match="open read-only"):
            rw.online_features("fraud", {"user_id": [1]})


# ---- a real read-only mount ----------------------------------------------------------------

@pytest.mark.skipif(not can_mount_read_only(), reason=SKIP_REASON)
def test_store_on_a_read_only_mount_opens_read_only(store: FeatureStore, tmp_path: Path) -> None:
    before = _digest(store.root)
    mount = tmp_path / "mnt"
    code = (
        "import numpy as np, pandas as pd, sys\n"
        "from mlserve.features import FeatureStore\n"
        f"s = FeatureStore({str(mount)!r})\n"
        f"got = s.online_features('fraud', {{'user_id': np.arange(1, 45)}},\n"
        f"                        now={NOW.isoformat()!r})\n"
        "np.save(sys.argv[1], got.values)\n"
        "try:\n    s.materialize_incremental('user_stats')\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
        f"try:\n    FeatureStore({str(store.root)!r}).copy_to({str(mount)!r})\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
        "print(s.read_only)\n")
    out = tmp_path / "values.npy"
    done = subprocess.run([*read_only_mount_prefix(store.root, mount), sys.executable, "-c",
                           code, str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["InvalidInput", "InvalidInput", "True"]
    with FeatureStore(store.root) as rw:
        want = rw.online_features("fraud", {"user_id": np.arange(1, 45)}, now=NOW)
    np.testing.assert_array_equal(np.load(out), want.values)
    assert _digest(store.root) == before


@pytest.mark.skipif(not can_mount_read_only(), reason=SKIP_REASON)
def test_no_store_on_a_read_only_mount_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code = ("from mlserve.features import FeatureStore\n"
            f"try:\n    FeatureStore({str(tmp_path / 'mnt' / 'store')!r})\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([*read_only_mount_prefix(tmp_path / "empty", tmp_path / "mnt"),
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("InvalidInput no feature store at") and \
        "Read-only file system" in done.stdout, done.stdout
