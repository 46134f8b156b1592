"""Process-tagged temp names, shared by the registry, its object-storage cache and the feature
store's: entries are named ``<pid>-<random>.<kind>``, so cleanup can tell a crashed writer's
leftovers (dead pid) from a live writer's work in progress. Stateless and thread-safe.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def temp_path(tmp_dir: Path, kind: str) -> Path:
    """A fresh, unused path in ``tmp_dir`` tagged with this process's pid."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.{kind}"


def temp_owner_alive(entry: Path) -> bool:
    """Whether the process that created the temp entry may still be running."""
    pid_text = entry.name.split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def touch(path: Path) -> None:
    """Marks a cache file as used now (pruning and gc go by its time)."""
    try:
        os.utime(path)
    except OSError:
        pass  # removed meanwhile, or another user's: nothing to protect
