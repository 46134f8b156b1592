"""mlserve.server.accesslog: JSON lines, sampling, buffering and flushing, no lost lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlserve.server.accesslog import AccessLog


def _lines(path: Path) -> list[dict[str, object]]:
    # split("\n"), not splitlines(): that also splits at U+0085, U+2028, ... inside strings
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def test_lines_are_json_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(1.0, str(path), interval=60.0)
    log.record(b'id-"1"', "fraud", "2", 400, "InvalidInput", 0.0012345, ("10.0.0.1", 5))
    log.record(b"id-2", "fraud", "2", 200, "ok", 0.5, None)
    assert not path.read_text()  # buffered until a flush
    log.close()
    assert _lines(path) == [
        {"request_id": 'id-"1"', "model": "fraud", "version": "2", "status": 400,
         "outcome": "InvalidInput", "latency_ms": 1.234, "client": "10.0.0.1"},
        {"request_id": "id-2", "model": "fraud", "version": "2", "status": 200,
         "outcome": "ok", "latency_ms": 500.0, "client": ""},
    ]
    log.record(b"late", "fraud", "2", 200, "ok", 0.1, None)  # after close: dropped, no error
    log.flush()
    assert len(_lines(path)) == 2


def test_the_flusher_thread_and_the_size_bound_write_without_close(tmp_path: Path) -> None:
    timed, sized = tmp_path / "timed.log", tmp_path / "sized.log"
    by_time = AccessLog(1.0, str(timed), interval=0.05)
    by_size = AccessLog(1.0, str(sized), interval=60.0, max_bytes=1000)
    for i in range(35):
        by_time.record(b"%d" % i, "m", "1", 200, "ok", 0.001, None)
        by_size.record(b"%d" % i, "m", "1", 200, "ok", 0.001, None)
    by_time._thread.join(0.3)  # the flusher never ends; this only waits a few intervals
    assert len(_lines(timed)) == 35
    assert 0 < len(_lines(sized)) < 35  # written in blocks of about 1000 bytes
    by_time.close()
    by_size.close()
    assert len(_lines(sized)) == 35


@pytest.mark.parametrize("sample, low, high", [(0.0, 0, 0), (0.25, 350, 650), (1.0, 2000, 2000)])
def test_sampling(tmp_path: Path, sample: float, low: int, high: int) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(sample, str(path), interval=60.0)
    for i in range(2000):
        log.record(b"%d" % i, "m", "1", 200, "ok", 0.001, None)
    log.close()
    assert low <= (len(_lines(path)) if path.exists() else 0) <= high


def test_concurrent_records_and_flushes_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    log = AccessLog(1.0, str(path), interval=0.001, max_bytes=4096)

    def writer(k: int) -> None:
        for i in range(3000):
            log.record(b"%d-%d" % (k, i), "m", "1", 200, "ok", 0.001, None)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    ids = [line["request_id"] for line in _lines(path)]
    assert sorted(ids) == sorted(f"{k}-{i}" for k in range(4) for i in range(3000))


def test_blocks_hold_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    from mlserve.server.accesslog import _BLOCK_BYTES, _blocks

    lines = [b"x" * n for n in (10, 4000, 90, 5000, 1, 4094, 4095)]
    blocks = _blocks(lines)
    assert b"".join(blocks) == b"".join(line + b"\n" for line in lines)
    for block in blocks:
        assert block.endswith(b"\n")
        assert len(block) <= _BLOCK_BYTES or block.count(b"\n") == 1  # only a long line alone
    assert _blocks([]) == []


@settings(max_examples=200, deadline=None)
@given(request_id=st.binary(max_size=40), model=st.text(max_size=12),
       version=st.text(max_size=4), status=st.integers(100, 599),
       outcome=st.sampled_from(["ok", "InvalidInput", "Bad%sOutcome"]),
       seconds=st.floats(0, 1e4, allow_nan=False),
       client=st.one_of(st.none(), st.tuples(st.text(max_size=20), st.integers(0, 65535))))
def test_cached_templates_write_the_same_json_as_a_dict_dump(
        tmp_path_factory: pytest.TempPathFactory, request_id: bytes, model: str, version: str,
        status: int, outcome: str, seconds: float, client: tuple[str, int] | None) -> None:
    """Lines come from %-templates cached per (model, version, status, outcome) with the id and
    client quoted per request: whatever the bytes, a line parses to the fields as given."""
    path = tmp_path_factory.mktemp("log") / "access.log"
    log = AccessLog(1.0, str(path), interval=60.0)
    for _ in range(2):  # the second line comes from the cached template
        log.record(request_id, model, version, status, outcome, seconds, client)
    log.close()
    want = {"request_id": request_id.decode("latin-1"), "model": model, "version": version,
            "status": status, "outcome": outcome, "client": client[0] if client else ""}
    for line in _lines(path):
        assert line.pop("latency_ms") == pytest.approx(seconds * 1e3, abs=6e-4)
        assert line == want
