"""The JSON access log: one line per (sampled) inference request, written in blocks.

A line: ``{"request_id", "model", "version", "status", "outcome", "latency_ms", "client"}``.

Why not the ``logging`` module: a LogRecord per request (caller lookup, thread and process
names, formatting, the handler lock) plus a write and flush per line cost about 30 µs of the
event loop's time per request on the 2-core bench machine, as much as the whole HTTP stack. Here
a request costs a %-format of a cached per-(model, version, status, outcome) template (about
1 µs) and a list append; a daemon thread joins the pending lines
and writes them every ``interval`` seconds, or sooner once ``max_bytes`` have gathered. At most
``interval`` seconds of lines are lost if the process is killed; the server flushes at
shutdown. Lines go to stderr (default) or are appended to a file, in writes of whole lines of
at most 4 KiB, so the logs of several worker processes on one stderr pipe never mix within a
line.

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
        self._templates: dict[tuple[str, str, int, str], bytes] = {}
        self._clients: dict[str, bytes] = {}
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
        # The line from a cached template per (model, version, status, outcome): the request
        # id and the client are the only strings that need JSON quoting per request, and an id
        # of plain printable ASCII (the usual) needs no escaping at all.
        template = self._templates.get((model, version, status, outcome))
        if template is None:
            template = self._template(model, version, status, outcome)
        if request_id.translate(None, _PLAIN):
            quoted = orjson.dumps(request_id.decode("latin-1"))
        else:
            quoted = b'"%b"' % request_id
        host = client[0] if client else ""
        client_json = self._clients.get(host)
        if client_json is None:
            if len(self._clients) >= _MAX_CACHED:
                self._clients.clear()
            client_json = self._clients[host] = orjson.dumps(host)
        line = template % (quoted, seconds * 1e3, client_json)
        self._pending.append(line)
        self._size += len(line) + 1
        if self._size >= self._max_bytes:
            self.flush()

    def _template(self, model: str, version: str, status: int, outcome: str) -> bytes:
        """The %-format of a line: (quoted request id, latency in ms, quoted client)."""
        fixed = [orjson.dumps(v).replace(b"%", b"%%") for v in (model, version, outcome)]
        template = (b'{"request_id":%%b,"model":%b,"version":%b,"status":%d,"outcome":%b,'
                    b'"latency_ms":%%.3f,"client":%%b}' % (fixed[0], fixed[1], status, fixed[2]))
        if len(self._templates) < _MAX_CACHED:  # bounded: model names come from URLs
            self._templates[(model, version, status, outcome)] = template
        return template

    def flush(self) -> None:
        """Writes every pending line now."""
        with self._lock:
            lines, self._pending = self._pending, []
            self._size = 0
            if not lines or self._closed:
                return
            try:
                if self._file is not None:
                    for block in _blocks(lines):
                        self._file.write(block)
                        self._file.flush()
                else:
                    for block in _blocks(lines):
                        sys.stderr.write(block.decode("utf-8", "replace"))
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


#: Bytes a request id may hold and still be written between quotes as it is (printable ASCII but
#: the quote and the backslash); anything else goes through orjson's escaping.
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')
#: Bound of each of the per-client and per-template caches.
_MAX_CACHED = 1024

#: Lines are written in blocks of at most this many bytes (unless one line is longer): a write
#: of up to PIPE_BUF bytes to a pipe is atomic, so the access logs of several worker processes
#: sharing one stderr pipe interleave whole lines, never parts of lines.
_BLOCK_BYTES = 4096


def _blocks(lines: list[bytes]) -> list[bytes]:
    """``lines`` joined with newlines into blocks of whole lines of <= _BLOCK_BYTES bytes."""
    blocks: list[bytes] = []
    start = size = 0
    for i, line in enumerate(lines):
        if size and size + len(line) + 1 > _BLOCK_BYTES:
            blocks.append(b"\n".join(lines[start:i]) + b"\n")
            start, size = i, 0
        size += len(line) + 1
    if start < len(lines):
        blocks.append(b"\n".join(lines[start:]) + b"\n")
    return blocks
