"""Environment settings of the registry: its default location and the crash-test hook.

This is the only module of ``mlserve.registry`` that reads environment variables. Stateless and
thread-safe.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlserve._home import mlserve_home

__all__ = ["mlserve_home"]  # the demo and tests take it from here too

#: Test hook: seconds to sleep between the steps of ``Registry.register`` so that crash-safety
#: tests can SIGKILL a registering process mid-way. Never set it in production.
TEST_STEP_DELAY_ENV = "MLSERVE_REGISTRY_TEST_STEP_DELAY_S"


#: The default registry location: a directory or ``s3://BUCKET/PREFIX`` (a shared registry on
#: object storage, :mod:`mlserve.registry.remote`).
REGISTRY_ENV = "MLSERVE_REGISTRY"


#: ``--registry`` of every command that reads or changes a registry.
CLI_METAVAR = "PATH|s3://BUCKET/PREFIX"
CLI_HELP = ("registry: a directory, or s3://BUCKET/PREFIX for one shared through object storage "
            "(default: $MLSERVE_REGISTRY, else $MLSERVE_HOME/registry)")


def default_location() -> str | Path:
    """``$MLSERVE_REGISTRY`` when set, else :func:`default_root`."""
    return os.environ.get(REGISTRY_ENV) or default_root()


def default_root() -> Path:
    """``$MLSERVE_HOME/registry``."""
    return mlserve_home() / "registry"


#: Where a machine caches registries on object storage (:mod:`mlserve.registry.remote`).
CACHE_ENV = "MLSERVE_REGISTRY_CACHE"


def default_cache_root() -> Path:
    """``$MLSERVE_REGISTRY_CACHE``, else ``$MLSERVE_HOME/cache/registry``."""
    explicit = os.environ.get(CACHE_ENV)
    return Path(explicit).expanduser() if explicit else mlserve_home() / "cache" / "registry"


def test_step_pause() -> None:
    """Sleeps for ``$MLSERVE_REGISTRY_TEST_STEP_DELAY_S`` seconds if set (tests only)."""
    delay_s = os.environ.get(TEST_STEP_DELAY_ENV)
    if delay_s:
        time.sleep(float(delay_s))
