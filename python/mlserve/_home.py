"""``$MLSERVE_HOME``: the folder under which mlserve keeps what it is not told to keep elsewhere
(the default registry, feature store, caches, demo output). Stateless and thread-safe."""

from __future__ import annotations

import os
from pathlib import Path


def mlserve_home() -> Path:
    """``$MLSERVE_HOME``, default ``~/.mlserve``."""
    return Path(os.environ.get("MLSERVE_HOME") or os.path.join("~", ".mlserve")).expanduser()
