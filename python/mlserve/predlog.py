"""The durable prediction log: what every replica predicted, and the labels sent back for it.

``mlserve serve --prediction-log LOCATION`` (a directory, or ``s3://BUCKET/PREFIX`` shared by all
replicas) writes Parquet parts::

    LOCATION/predictions/MODEL/VERSION/date=YYYY-MM-DD/part-<ns>-<writer>.parquet
        request_id (string), row (int32: the row's index in its request),
        ts (timestamp[ns, UTC]: when its batch ran), one float32 column per model input (the raw
        row the model was given, categorical codes included), one float32 column per output
    LOCATION/labels/MODEL/date=YYYY-MM-DD/part-<ns>-<writer>.parquet
        request_id, row, ts (when the label came), label (float64: the class index, or the
        regression target)

Parts are immutable and uniquely named (writer = host, pid and a random tag), so any number of
processes and replicas write beside each other without coordination, and labels can reach any
replica: they are joined to the predictions offline (:func:`joined`; ``mlserve drift report REF
--prediction-log LOCATION``), the last label of a (request, row) winning.

The core buffers each tagged request's raw inputs and outputs as its batch runs
(:meth:`mlserve.engine.Engine.configure_prediction_export`), so the request path does nothing
for the log; a background thread drains the engines every ``flush_s`` seconds and writes one
part per model version. Bounded: at most ``max_buffered_rows`` rows per engine wait for a
flush; beyond that requests are dropped from the log and counted
(``mlserve_prediction_log_dropped_rows_total``). A part that cannot be written (storage down)
is kept and tried again at the next flush, up to the same bound.

Writing and reading need pyarrow (``pip install 'mlserve[features]'``); reading also pandas.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlserve._objectstore import is_uri, normalize_uri
from mlserve.errors import InvalidInput

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
LABELS = "labels"
#: Rows buffered per engine between two flushes (the core drops and counts what does not fit).
DEFAULT_MAX_BUFFERED_ROWS = 1_000_000
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InvalidInput("the prediction log writes Parquet and needs pyarrow: pip install "
                           "'mlserve[features]'") from None
    return pyarrow


def _day(ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ns / 1e9))


class _Storage:
    """A directory or an object-storage prefix holding the log's parts."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.s3: Any = None
        if is_uri(location):
            from mlserve._objectstore import S3Store

            self.location = normalize_uri(location, "prediction log")
            self.s3 = S3Store(self.location, "a prediction log")
        else:
            self.root = Path(location).expanduser().resolve()
            self.location = str(self.root)

    def write(self, name: str, table: pa.Table) -> None:
        """Writes ``table`` as the new part ``name`` (never replacing one)."""
        import pyarrow.parquet as pq

        if self.s3 is None:
            dest = self.root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, dest)  # readers list *.parquet only: never a partial part
            return
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlserve-predlog-") as tmp_dir:
            local = Path(tmp_dir) / "part.parquet"
            pq.write_table(table, local)
            self.s3.put(name, local)

    def parts(self, under: str) -> list[str]:
        """Names of the parts under ``under`` (a folder name ending in '/'), sorted."""
        if self.s3 is None:
            base = self.root / under
            if not base.is_dir():
                return []
            return sorted(str(p.relative_to(self.root)) for p in base.rglob("part-*.parquet"))
        return sorted(o.key for o in self.s3.list(under)  # keys relative to the prefix
                      if o.key.rsplit("/", 1)[-1].startswith("part-")
                      and o.key.endswith(".parquet"))

    def read(self, name: str) -> pa.Table:
        import pyarrow.parquet as pq

        if self.s3 is None:
            return pq.read_table(self.root / name)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlserve-predlog-") as tmp_dir:
            local = Path(tmp_dir) / "part.parquet"
            if self.s3.download(name, local) is None:
                raise InvalidInput(f"{self.s3.url(name)} went away while it was read; run "
                                   "again")
            return pq.read_table(local)


def check_location(location: str | os.PathLike[str]) -> str:
    """Checks, before a server starts, that a log can be written at ``location``: pyarrow is
    installed, and a directory can be created and written there (boto3 for ``s3://``).
    Returns the location, normalized; InvalidInput says what is wrong."""
    _import_pyarrow()
    storage = _Storage(location)
    if storage.s3 is None:
        try:
            storage.root.mkdir(parents=True, exist_ok=True)
            probe = storage.root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InvalidInput(f"the prediction log cannot be written at {storage.location}: "
                               f"{exc.strerror or exc}") from None
    return storage.location


@dataclass
class _Watched:
    model: str
    version: str
    engine: Any
    inputs: list[str]
    outputs: list[str]


@dataclass
class LogCounters:
    """What the writer did since it started (exported as metrics)."""

    requests: int = 0
    rows: int = 0
    labels: int = 0
    parts: int = 0
    dropped_rows: int = 0
    failed_writes: int = 0
    pending: list[tuple[str, Any]] = field(default_factory=list)


class PredictionLogWriter:
    """Drains the watched engines' prediction export into parts every ``flush_s`` seconds (a
    daemon thread from :meth:`start`; :meth:`close` flushes once more). Thread-safe."""

    def __init__(self, location: str | os.PathLike[str], *, flush_s: float = 10.0,
                 max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
                 sample: float = 1.0) -> None:
        """``sample`` in (0, 1]: the share of requests logged, chosen by a hash of the request
        id (:meth:`mlserve.engine.Engine.configure_prediction_export`); labels are all kept."""
        if not 0.0 < sample <= 1.0:
            raise InvalidInput(f"prediction log sample must be in (0, 1], got {sample}")
        if not 0.05 <= flush_s <= 3600:
            raise InvalidInput(f"prediction log flush interval must be in 0.05..3600 s, got "
                               f"{flush_s}")
        if max_buffered_rows < 1:
            raise InvalidInput("prediction log: max_buffered_rows must be >= 1")
        self.pa = _import_pyarrow()
        # What the first part would import (pyarrow loads pandas for time zones), now: a
        # server constructs its writer before it serves, and a first flush would otherwise
        # hold the GIL for a quarter of a second mid-traffic.
        self.pa.array(np.zeros(1, np.int64), self.pa.timestamp("ns", tz="UTC"))
        self.storage = _Storage(location)
        self.flush_s = flush_s
        self.max_buffered_rows = max_buffered_rows
        self.sample = sample
        self.writer_id = (f"{re.sub(r'[^A-Za-z0-9_.-]', '_', socket.gethostname())[:40]}-"
                          f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.counters = LogCounters()
        self._watched: dict[int, _Watched] = {}  # by id(engine)
        self._labels: list[tuple[str, list[bytes], list[int], np.ndarray, int]] = []
        self._lock = threading.Lock()  # _watched, _labels
        self._flush_lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0

    @property
    def location(self) -> str:
        return self.storage.location

    def watch(self, model: str, version: str, engine: Any, inputs: Sequence[str],
              outputs: Sequence[str]) -> None:
        """Logs ``engine``'s tagged requests as ``model``/``version`` from now on (idempotent;
        an engine is drained a last time after it closed, so a hot swap loses nothing)."""
        for name in (model, version):
            if not _NAME.match(name):
                raise InvalidInput(f"prediction log: {name!r} is not a name it can store "
                                   "(letters, digits, '_', '-', '.')")
        with self._lock:
            w = self._watched.get(id(engine))
            if w is not None and w.engine is engine:
                return
            engine.configure_prediction_export(self.max_buffered_rows, self.sample)
            self._watched[id(engine)] = _Watched(model, version, engine, list(inputs),
                                                 list(outputs))

    def add_labels(self, model: str, ids: Sequence[str], labels: Sequence[np.ndarray]) -> int:
        """Queues ground truth: for each request id, its rows' label codes (see
        :func:`mlserve.drift.performance.label_codes`). Returns the rows queued."""
        tags = [str(i).encode() for i in ids]
        rows = [len(v) for v in labels]
        codes = np.concatenate([np.asarray(v, np.float64) for v in labels]) if labels \
            else np.zeros(0)
        with self._lock:
            self._labels.append((model, tags, rows, codes, time.time_ns()))
        return int(codes.size)

    # ---- flushing ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlserve-prediction-log",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:
                logger.exception("prediction log flush failed; trying again next interval")

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the thread and flushes what is left (engines closed meanwhile included)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self.flush()
        except Exception:
            logger.exception("the prediction log's last flush failed")
        if self.counters.pending:
            logger.error("prediction log: %d parts could not be written to %s and are lost",
                         len(self.counters.pending), self.location)

    def flush(self) -> int:
        """Drains every watched engine and writes its rows and the queued labels; returns the
        parts written. Engines closed since are drained a last time and forgotten."""
        with self._flush_lock:
            with self._lock:
                watched = list(self._watched.items())
                labels, self._labels = self._labels, []
            tables: list[tuple[str, Any]] = list(self.counters.pending)
            self.counters.pending = []
            for key, w in watched:
                closed = w.engine.released  # before the drain: then nothing can follow it
                drained = w.engine.drain_prediction_export()
                self.counters.dropped_rows += int(drained["dropped_rows"])
                if drained["tags"]:
                    tables.append(self._prediction_part(w, drained))
                if closed:
                    with self._lock:
                        if self._watched.get(key) is w:
                            del self._watched[key]
            by_model: dict[str, list[tuple[list[bytes], list[int], np.ndarray, int]]] = {}
            for model, tags, rows, codes, ts in labels:
                by_model.setdefault(model, []).append((tags, rows, codes, ts))
            for model, items in by_model.items():
                tables.append(self._label_part(model, items))
            written = 0
            for i, (name, table) in enumerate(tables):
                try:
                    self.storage.write(name, table)
                    written += 1
                except Exception as exc:
                    self.counters.failed_writes += 1
                    budget = self.max_buffered_rows * 4
                    kept: list[tuple[str, Any]] = []
                    total = 0
                    for item in reversed(tables[i:]):  # the newest first, within the bound
                        total += item[1].num_rows
                        if total > budget:
                            self.counters.dropped_rows += item[1].num_rows
                            continue
                        kept.append(item)
                    self.counters.pending = list(reversed(kept))
                    logger.warning("prediction log: could not write %s (%s); %d parts kept for "
                                   "the next flush", name, exc, len(kept))
                    break
            self.counters.parts += written
            return written

    def _name(self, folder: str, ts_ns: int) -> str:
        self._seq += 1
        return (f"{folder}/date={_day(ts_ns)}/part-{ts_ns:020d}-{self.writer_id}-"
                f"{self._seq}.parquet")

    def _prediction_part(self, w: _Watched, d: dict[str, Any]) -> tuple[str, Any]:
        pa = self.pa
        rows = d["rows"].astype(np.int64)
        n = int(rows.sum())
        # Built by pyarrow in C++ (a Python loop over the tags was 2 µs per request).
        tags = pa.array(d["tags"], pa.binary()).cast(pa.string())
        request_id = tags if n == len(tags) else tags.take(
            pa.array(np.repeat(np.arange(len(tags)), rows)))
        inputs, outputs = d["inputs"], d["outputs"]
        if inputs.shape[1] != len(w.inputs) or outputs.shape[1] != len(w.outputs):
            names_out = [f"output_{j}" for j in range(outputs.shape[1])]
        else:
            names_out = w.outputs
        columns: dict[str, Any] = {
            "request_id": request_id,
            "row": pa.array(_row_index(rows), pa.int32()),
            "ts": pa.array(np.repeat(d["unix_ns"], rows), pa.timestamp("ns", tz="UTC")),
        }
        by_column = np.ascontiguousarray(inputs.T)  # one pass, then contiguous columns
        for j, name in enumerate(w.inputs[:inputs.shape[1]]):
            columns[name] = pa.array(by_column[j], pa.float32())
        out_columns = np.ascontiguousarray(outputs.T)
        for j, name in enumerate(names_out):
            columns[f"out__{name}" if name in columns else name] = pa.array(out_columns[j],
                                                                            pa.float32())
        self.counters.requests += len(tags)
        self.counters.rows += n
        ts0 = int(d["unix_ns"][0])
        return self._name(f"{PREDICTIONS}/{w.model}/{w.version}", ts0), pa.table(columns)

    def _label_part(self, model: str,
                    items: list[tuple[list[bytes], list[int], np.ndarray, int]]
                    ) -> tuple[str, Any]:
        pa = self.pa
        ids: list[str] = []
        counts: list[int] = []
        stamps: list[int] = []
        codes = []
        for tags, rows, c, ts in items:
            ids.extend(t.decode() for t in tags)
            counts.extend(rows)
            stamps.extend([ts] * len(tags))
            codes.append(c)
        rows_arr = np.asarray(counts, np.int64)
        table = pa.table({
            "request_id": pa.array(np.repeat(np.asarray(ids, dtype=object), rows_arr),
                                   pa.string()),
            "row": pa.array(_row_index(rows_arr), pa.int32()),
            "ts": pa.array(np.repeat(np.asarray(stamps, np.int64), rows_arr),
                           pa.timestamp("ns", tz="UTC")),
            "label": pa.array(np.concatenate(codes) if codes else np.zeros(0), pa.float64()),
        })
        self.counters.labels += table.num_rows
        return self._name(f"{LABELS}/{model}", items[0][3]), table


def _row_index(rows: np.ndarray) -> np.ndarray:
    """0..rows[i]-1 for every request, concatenated."""
    n = int(rows.sum())
    if n == 0:
        return np.zeros(0, np.int32)
    starts = np.repeat(np.cumsum(rows) - rows, rows)
    out: np.ndarray = (np.arange(n) - starts).astype(np.int32)
    return out


# ---- reading --------------------------------------------------------------------------------

def _parts_since(storage: _Storage, folder: str, since_ns: int | None) -> list[str]:
    names = storage.parts(folder + "/")
    if since_ns is None:
        return names
    day = _day(since_ns)
    keep = []
    for name in names:
        part_day = name.rsplit("/date=", 1)[-1].split("/", 1)[0]
        if part_day >= day:
            keep.append(name)
    return keep


def read_predictions(location: str | os.PathLike[str], model: str, version: str | None = None,
                     *, since_ns: int | None = None) -> pd.DataFrame:
    """The logged predictions of ``model`` (one ``version``, or all with a ``version`` column),
    rows with ``ts >= since_ns`` (all when None), ordered by time."""
    import pandas as pd

    _import_pyarrow()
    storage = _Storage(location)
    base = f"{PREDICTIONS}/{model}"
    frames = []
    for name in _parts_since(storage, base if version is None else f"{base}/{version}",
                             since_ns):
        frame = storage.read(name).to_pandas()
        frame.insert(0, "version", name[len(base) + 1:].split("/", 1)[0])
        frames.append(frame)
    if not frames:
        raise InvalidInput(f"the prediction log at {storage.location} has no predictions of "
                           f"{model}{'' if version is None else '/' + version}"
                           f"{'' if since_ns is None else ' in that time'}")
    out = pd.concat(frames, ignore_index=True)
    if since_ns is not None:
        out = out[out["ts"] >= pd.Timestamp(since_ns, unit="ns", tz="UTC")]
    return out.sort_values(["ts", "request_id", "row"], kind="stable").reset_index(drop=True)


def read_labels(location: str | os.PathLike[str], model: str, *,
                since_ns: int | None = None) -> pd.DataFrame:
    """The labels logged for ``model`` (request_id, row, ts, label); empty when none."""
    import pandas as pd

    _import_pyarrow()
    storage = _Storage(location)
    frames = [storage.read(name).to_pandas()
              for name in _parts_since(storage, f"{LABELS}/{model}", since_ns)]
    if not frames:
        return pd.DataFrame({"request_id": pd.Series([], dtype=object),
                             "row": pd.Series([], dtype="int32"),
                             "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
                             "label": pd.Series([], dtype="float64")})
    return pd.concat(frames, ignore_index=True)


def joined(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``predictions`` with a ``label`` column: the last label sent for each (request, row)
    (NaN where none came). A request id logged twice (a retried request) takes its latest
    prediction."""
    last_label = (labels.sort_values("ts", kind="stable")
                  .drop_duplicates(["request_id", "row"], keep="last")
                  [["request_id", "row", "label"]])
    latest = predictions.drop_duplicates(["request_id", "row"], keep="last")
    return latest.merge(last_label, on=["request_id", "row"], how="left")
