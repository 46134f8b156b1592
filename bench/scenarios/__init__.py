"""The benchmark scenarios; ``load_all()`` imports (and so registers) them in this order."""

from __future__ import annotations

import importlib

#: Scenario modules in the order ``--list`` and ``all`` use.
MODULES = ("normalize", "batcher", "engine", "http", "features", "batch", "registry",
           "features_s3", "predlog")


def load_all() -> None:
    """Imports every scenario module; each registers itself with ``bench.registry.register``."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
