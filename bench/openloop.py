"""The C open-loop load generator (``bench/openloop.c``): compile it once, run it per step.

``compile_openloop`` builds the program with the system C compiler into a directory the caller
owns (the scenario's temporary directory) and returns its path, or ``None`` and a sentence
saying why (no compiler, or the compile failed) so the caller can fall back to the Python
generator and say so. ``run_openloop`` writes the raw request next to the binary, runs one
fixed-rate step and returns the program's JSON: the keys of
``bench.scenarios.http._open_loop`` (latency from the scheduled send, from the actual send, send
lag, achieved and offered rates, dropped, errors). Nothing here is shared between threads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().with_name("openloop.c")
GENERATOR = "c-openloop"
_CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra"]
_COMPILE_TIMEOUT_S = 120.0


def compiler() -> str | None:
    """The system C compiler (``cc``, else ``gcc``), or None."""
    return shutil.which("cc") or shutil.which("gcc")


def compile_openloop(out_dir: Path) -> tuple[Path | None, str]:
    """Compiles ``openloop.c`` into ``out_dir``; (binary, "") or (None, why not)."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc or gcc) on PATH"
    binary = out_dir / "openloop"
    cmd = [cc, *_CFLAGS, "-o", str(binary), str(SOURCE)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`{' '.join(cmd)}` failed: {exc}"
    if done.returncode != 0 or not binary.exists():
        return None, (
            f"`{' '.join(cmd)}` exited with status {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-500:]}"
        )
    return binary, ""


def run_openloop(
    binary: Path,
    port: int,
    request: bytes,
    rate: float,
    dur_s: float,
    warm_s: float,
    n_conns: int,
    drain_s: float,
) -> dict[str, Any]:
    """One open-loop step against 127.0.0.1:``port``: ``request`` (raw HTTP/1.1 bytes, keep-alive)
    due every 1 / ``rate`` s for ``warm_s`` + ``dur_s`` s over ``n_conns`` connections; requests
    due in the first ``warm_s`` are not measured, requests unsent ``drain_s`` after the schedule
    are dropped. Raises with the program's stderr if it fails."""
    with tempfile.NamedTemporaryFile(
        dir=binary.parent, prefix="request-", suffix=".http", delete=False
    ) as f:
        f.write(request)
        request_path = Path(f.name)
    cmd = [
        str(binary),
        "--port", str(port),
        "--rate", repr(float(rate)),
        "--duration", repr(float(dur_s)),
        "--warmup", repr(float(warm_s)),
        "--connections", str(n_conns),
        "--drain", repr(float(drain_s)),
        "--request", str(request_path),
        "--json",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=warm_s + dur_s + 2 * drain_s + 30,
            check=False,
        )
    finally:
        request_path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"openloop failed (status {done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result
