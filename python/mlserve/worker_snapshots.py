"""Per-worker snapshot files: how one server process answers /metrics for all of ``--workers N``.

Each worker writes its engines' full stats (``Engine.stats()``: counters, queue depth, batch
sizes, latency histograms), its request metrics and its process metrics as one JSON file,
``mlserve-worker-<pid>.json``, in the multiprocess directory, atomically (temp file +
``os.replace``), so readers never see a partial file. The worker answering /metrics reads all of
them (:meth:`WorkerSnapshots.read`).

A worker that exited keeps counting: the first reader that finds its file renames it to
``mlserve-exited-<pid>-<start>.json`` (a rename succeeds once, so no two readers both retire it),
and from then on it contributes its counters and histograms but neither queue depth nor process
metrics. Sums over workers therefore never go backwards when a worker exits or is replaced
(prometheus_client keeps the counter files of dead processes for the same reason). A process is
the one that wrote a snapshot when its pid is alive and, where ``/proc`` exists, its start time
matches, so a reused pid is not mistaken for the old worker. Files of exited workers stay until
the directory is removed (``mlserve serve`` removes its own at exit).

Thread-safety: meant for one thread per process (the event loop); files make it process-safe.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_LIVE_PREFIX = "mlserve-worker-"
_EXITED_PREFIX = "mlserve-exited-"
_SUFFIX = ".json"


@dataclass
class Snapshot:
    """One worker's snapshot as read back."""

    pid: int
    live: bool
    #: (model, version, Engine.stats()) per engine; JSON turned batch_sizes' keys into strings.
    #: An exited worker's engines have nothing queued.
    engines: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: Process metric family name -> {"type", "help", "value"} (empty for exited workers).
    process: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``metrics.RequestStats.snapshot()``: request counts and latency buckets (an exited
    #: worker's with nothing in flight).
    requests: dict[str, Any] = field(default_factory=dict)


def process_start(pid: int) -> str | None:
    """The process' start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    None without ``/proc`` or such a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def is_alive(pid: int, start: str | None) -> bool:
    """Whether the process that recorded (pid, start) still runs."""
    if os.path.isdir("/proc/self"):
        return start is not None and process_start(pid) == start
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # another user's process: the pid was reused
        return False
    return True


class WorkerSnapshots:
    """This process' snapshot file in ``directory`` and the reader of everyone's."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid()
        self._start = process_start(self.pid)
        self._path = self.directory / f"{_LIVE_PREFIX}{self.pid}{_SUFFIX}"
        self._tmp = self.directory / f".{_LIVE_PREFIX}{self.pid}.tmp"
        self._written = False

    def write(self, engines: list[tuple[str, str, dict[str, Any]]],
              process: dict[str, dict[str, Any]], requests: dict[str, Any] | None = None) -> None:
        """Replaces this process' snapshot with ``engines`` (model, version, stats),
        ``process`` (family name -> type, help, value) and ``requests`` (the request metrics,
        ``metrics.RequestStats.snapshot()``)."""
        if not self._written:
            # A file under our pid before our first write is an exited predecessor's: keep it.
            self._retire(self._path)
            self._written = True
        body = {"pid": self.pid, "start": self._start, "written_at": time.time(),
                "engines": engines, "process": process, "requests": requests or {}}
        self._tmp.write_text(json.dumps(body))
        os.replace(self._tmp, self._path)

    def retire(self) -> None:
        """Retires this process' snapshot now (clean exit): its counts stay in the sums."""
        if self._written:
            self._retire(self._path, force=True)

    def read(self) -> tuple[list[Snapshot], list[int]]:
        """Every snapshot in the directory, and the pids of workers retired by this call."""
        retired = []
        for path in self.directory.glob(f"{_LIVE_PREFIX}*{_SUFFIX}"):
            if path != self._path:
                pid = self._retire(path)
                if pid is not None:
                    retired.append(pid)
        # Listed again after the renames: a file another reader retired meanwhile is read once,
        # under its new name (our rename of it then failed, after theirs had completed). A file
        # renamed between listing and reading (a worker retiring itself) means: list again.
        for _ in range(3):
            out, complete = self._read_all()
            if complete:
                break
        return out, retired

    def _read_all(self) -> tuple[list[Snapshot], bool]:
        out = []
        complete = True
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            live = path.name.startswith(_LIVE_PREFIX)
            if not live and not path.name.startswith(_EXITED_PREFIX):
                continue
            body = _load(path)
            if body is None:
                complete = False
                continue
            engines = [(str(m), str(v), s if live else {**s, "queued": 0})
                       for m, v, s in body["engines"]]
            requests = body.get("requests") or {}
            out.append(Snapshot(pid=int(body["pid"]), live=live, engines=engines,
                                process=body["process"] if live else {},
                                requests=requests if live else {**requests, "in_flight": {}}))
        return out, complete

    def _retire(self, path: Path, force: bool = False) -> int | None:
        """Renames the live snapshot at ``path`` to its exited name when its writer is gone (or
        ``force``); returns the pid when this call renamed it."""
        body = _load(path)
        if body is None:
            return None
        pid, start = int(body["pid"]), body.get("start")
        if not force and pid == self.pid and start == self._start:
            return None
        if not force and pid != self.pid and is_alive(pid, start):
            return None
        tag = start if start is not None else str(time.time_ns())
        try:
            os.rename(path, self.directory / f"{_EXITED_PREFIX}{pid}-{tag}{_SUFFIX}")
        except FileNotFoundError:  # another reader retired it first
            return None
        return pid


def _load(path: Path) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.warning("ignoring unreadable worker snapshot %s", path, exc_info=True)
        return None
    return body


def add_stats(a: Any, b: Any) -> Any:
    """Sums two ``Engine.stats()`` dicts key by key: numbers add, dicts merge by key (batch
    sizes), lists add element-wise (histogram buckets); strings keep ``a``'s value."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = add_stats(out[key], value) if key in out else value
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise ValueError(f"cannot add lists of lengths {len(a)} and {len(b)}")
        return [add_stats(x, y) for x, y in zip(a, b, strict=True)]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return a
