"""Describes the machine a benchmark ran on: CPU, cores, memory, OS, library versions, GPUs.

Reads /proc where it exists and falls back to ``platform`` elsewhere; never raises (a field it
cannot read is ``None``). Versions come from package metadata, so torch is not imported.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("numpy", "onnxruntime", "torch", "mlserve")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _mlserve_devices() -> dict[str, Any]:
    try:
        import mlserve

        return {
            "cuda_built": bool(mlserve.cuda_built()),
            "cuda_devices": [dict(d) for d in mlserve.cuda_devices()],
        }
    except Exception as exc:  # a missing or broken build must not stop the report
        return {"cuda_built": None, "cuda_devices": None, "error": repr(exc)}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe() -> dict[str, Any]:
    """The machine description stored with every result."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "hostname": platform.node(),
        "python_executable": sys.executable,
        "versions": _versions(),
        "load_average": _load_average(),
        **_mlserve_devices(),
    }


def git_commit(repo: Path) -> dict[str, Any]:
    """HEAD's commit and whether tracked files differ from it (``None`` when unknown)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"commit": commit, "dirty": dirty}
