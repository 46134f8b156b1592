"""The online-lookup baseline of the ``features`` benchmark: raw py-lmdb gets, in a child process.

mlserve's online store opens its LMDB environment with its own binding (``mlserve._core``), and
LMDB forbids opening one environment twice in a process (the second open re-initialises the
lock file's reader table), so py-lmdb must not open the store in the process that measures
mlserve. This module is that other process: it opens the store read-only with py-lmdb and, per
request from the parent, times ``txn.get`` of each read's keys in one read transaction
(``buffers=True``, no decode), exactly what the lookups are compared with. It first reads the
whole database once (every page mapped, as in a process that has been serving for a while) and
then says it is ready.

    python -m bench.lmdb_baseline ENV_PATH DB_NAME        # spoken to by RawLmdbBaseline

Protocol on stdin/stdout, binary, little-endian: a request is ``<u32 reads><u32 keys per
read><u32 key bytes>`` followed by the encoded keys (``reads * keys_per_read`` of ``key bytes``
each, fixed width: int64 entity keys); the answer is ``reads`` int64 nanosecond timings.
A request of 0 reads ends the process. Single-threaded; the parent owns the process.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

_HEADER = struct.Struct("<III")
_ROOT = Path(__file__).resolve().parents[1]


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError(f"expected {size} bytes from the parent, got {len(data or b'')}")
    return data


def serve(env_path: str, db_name: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    import lmdb

    env = lmdb.open(env_path, readonly=True, subdir=True, max_dbs=4096, readahead=False,
                    max_readers=1024, lock=True)
    try:
        db = env.open_db(db_name.encode(), create=False)
        with env.begin(db=db, buffers=True) as txn:  # warm-up: map every page of the store
            for _ in txn.cursor().iternext(keys=True, values=True):
                pass
        stdout.write(b"R")
        stdout.flush()
        while True:
            reads, per_read, width = _HEADER.unpack(_read_exact(stdin, _HEADER.size))
            if reads == 0:
                return
            blob = _read_exact(stdin, reads * per_read * width)
            batches = [[blob[(r * per_read + i) * width:(r * per_read + i + 1) * width]
                        for i in range(per_read)] for r in range(reads)]
            out = []
            for keys in batches:
                start = time.perf_counter_ns()
                with env.begin(db=db, buffers=True) as txn:
                    for key in keys:
                        txn.get(key)
                out.append(time.perf_counter_ns() - start)
            stdout.write(struct.pack(f"<{reads}q", *out))
            stdout.flush()
    finally:
        env.close()


class RawLmdbBaseline:
    """The parent's side: starts ``python -m bench.lmdb_baseline`` on a store and asks it to
    time reads. Use as a context manager; the child ends with it."""

    def __init__(self, env_path: str | Path, db_name: str) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "bench.lmdb_baseline",
                                       str(env_path), db_name], cwd=_ROOT,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        if self._proc.stdout.read(1) != b"R":  # warmed up
            self.close()
            raise RuntimeError("bench.lmdb_baseline did not start (is py-lmdb installed?)")

    def time_reads(self, reads: list[list[bytes]]) -> list[int]:
        """ns per read, each read's keys (all of one width) got in one read transaction."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        per_read = len(reads[0])
        width = len(reads[0][0])
        self._proc.stdin.write(_HEADER.pack(len(reads), per_read, width))
        self._proc.stdin.write(b"".join(b"".join(keys) for keys in reads))
        self._proc.stdin.flush()
        raw = _read_exact(self._proc.stdout, 8 * len(reads))
        return list(struct.unpack(f"<{len(reads)}q", raw))

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(_HEADER.pack(0, 0, 0))
                self._proc.stdin.flush()
            except BrokenPipeError:
                pass
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except BrokenPipeError:
                pass
        self._proc.wait(timeout=30)

    def __enter__(self) -> RawLmdbBaseline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.stdin.buffer, sys.stdout.buffer)
