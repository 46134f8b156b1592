"""Environment settings of the feature store: its default location, the cache of shared
stores, the LMDB map size and the crash-test hook.

This is the only module of ``mlserve.features`` that reads environment variables. Stateless and
thread-safe.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlserve._home import mlserve_home

#: The feature store: a directory (definitions, offline Parquet data, online LMDB environment)
#: or ``s3://BUCKET/PREFIX`` (definitions and offline data shared through object storage,
#: :mod:`mlserve.features.remote`).
ROOT_ENV = "MLSERVE_FEATURE_STORE"
#: Where a machine keeps its copies of shared feature stores, and their online stores.
CACHE_ENV = "MLSERVE_FEATURE_STORE_CACHE"
#: ``--store``/``--feature-store`` of the commands.
CLI_METAVAR = "PATH|s3://BUCKET/PREFIX"
#: The part of their help that says what a location is.
CLI_HELP = ("a directory, or s3://BUCKET/PREFIX for one shared through object storage "
            f"(default: ${ROOT_ENV}, else $MLSERVE_HOME/features)")
#: Size in bytes of the LMDB memory map (address space, not disk; the file grows as written).
MAP_SIZE_ENV = "MLSERVE_FEATURE_STORE_MAP_SIZE"
#: Test hook: seconds each materialization batch sleeps inside its write transaction, before
#: committing, so that tests can SIGKILL a writer mid-transaction and check that readers are not
#: blocked by an open write transaction. Never set it in production.
TEST_BATCH_DELAY_ENV = "MLSERVE_FEATURES_TEST_BATCH_DELAY_S"

DEFAULT_MAP_SIZE = 64 << 30


def _location(text: str) -> str | Path:
    return text if text.startswith("s3:/") else Path(text).expanduser()


def default_root() -> str | Path:
    """``$MLSERVE_FEATURE_STORE`` (a directory or ``s3://...``), else ``$MLSERVE_HOME/features``
    next to the model registry (``MLSERVE_HOME`` defaults to ``~/.mlserve``)."""
    explicit = os.environ.get(ROOT_ENV)
    return _location(explicit) if explicit else mlserve_home() / "features"


def configured_root() -> str | Path | None:
    """``$MLSERVE_FEATURE_STORE`` when set, else None. The server uses only an explicitly
    configured store: a model that needs online features never reads a default location."""
    explicit = os.environ.get(ROOT_ENV)
    return _location(explicit) if explicit else None


def default_cache_root() -> Path:
    """``$MLSERVE_FEATURE_STORE_CACHE``, else ``$MLSERVE_HOME/cache/features``."""
    explicit = os.environ.get(CACHE_ENV)
    return Path(explicit).expanduser() if explicit else mlserve_home() / "cache" / "features"


def map_size_bytes() -> int:
    """``$MLSERVE_FEATURE_STORE_MAP_SIZE`` (bytes), default 64 GiB."""
    value = os.environ.get(MAP_SIZE_ENV)
    return int(value) if value else DEFAULT_MAP_SIZE


def test_batch_pause() -> None:
    """Sleeps for ``$MLSERVE_FEATURES_TEST_BATCH_DELAY_S`` seconds if set (tests only)."""
    delay_s = os.environ.get(TEST_BATCH_DELAY_ENV)
    if delay_s:
        time.sleep(float(delay_s))
