"""The JSON access log: one line per (sampled) inference request, written in blocks.

A line: ``{"request_id", "model", "version", "status", "outcome", "latency_ms", "client"}``.

Why not the ``logging`` module: a LogRecord per request (caller lookup, thread and process
names, formatting, the handler lock) plus a write and flush per line cost about 30 µs of the
event loop's time per request on the 2-core bench machine, as much as the whole HTTP stack. Here
a request costs one ``orjson.dumps`` and a list append; a daemon thread joins the pending lines
and writes them with one ``write`` every ``interval`` seconds, or sooner once ``max_bytes`` have
gathered. At most ``interval`` seconds of lines are lost if the process is killed; the server
flushes at shutdown. Lines go to stderr (default) or are appended to a file.

Thread-safety: :meth:`AccessLog.record` runs on the event loop; ``list.append`` and the swap of
the pending list in :meth:`AccessLog.flush` are atomic under the GIL, and flushes serialize on a
lock, so no line is lost or duplicated.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import IO, Any

import orjson


class AccessLog:
    """Sampled JSON access-log lines, buffered and written by a background flusher."""

    def __init__(
        self,
        sample: float = 1.0,
        path: str | None = None,
        *,
        interval: float = 0.25,
        max_bytes: int = 1 << 16,
    ) -> None:
        """sample: share of requests logged (0..1); path: file to append to, None or "-" for
        stderr."""
        self.sample = sample
        self._file: IO[bytes] | None = None
        if path not in (None, "-"):
            self._file = open(path, "ab")  # closed in close()
        self._pending: list[bytes] = []
        self._size = 0
        self._max_bytes = max_bytes
        self._interval = interval
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._flush_periodically, daemon=True, name="mlserve-access-log"
        )
        self._thread.start()

    def record(
        self,
        request_id: bytes,
        model: str,
        version: str,
        status: int,
        outcome: str,
        seconds: float,
        client: Any,
    ) -> None:
        """Logs one request, if it is sampled."""
        sample = self.sample
        if sample <= 0.0 or (sample < 1.0 and random.random() >= sample):
            return
        line = orjson.dumps({
            "request_id": request_id.decode("latin-1"), "model": model, "version": version,
            "status": status, "outcome": outcome, "latency_ms": round(seconds * 1e3, 3),
            "client": client[0] if client else "",
        })
        self._pending.append(line)
        self._size += len(line) + 1
        if self._size >= self._max_bytes:
            self.flush()

    def flush(self) -> None:
        """Writes every pending line now."""
        with self._lock:
            lines, self._pending = self._pending, []
            self._size = 0
            if not lines or self._closed:
                return
            lines.append(b"")
            data = b"\n".join(lines)
            try:
                if self._file is not None:
                    self._file.write(data)
                    self._file.flush()
                else:
                    sys.stderr.write(data.decode("utf-8", "replace"))
                    sys.stderr.flush()
            except (OSError, ValueError):  # a closed or broken stream must not stop serving
                pass

    def close(self) -> None:
        """Flushes and stops writing (later lines are dropped)."""
        self.flush()
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()

    def _flush_periodically(self) -> None:
        while not self._closed:
            time.sleep(self._interval)
            self.flush()
