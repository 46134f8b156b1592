"""The durable prediction log: what every replica predicted, and the labels sent back for it.

``mlserve serve --prediction-log LOCATION`` (a directory, or ``s3://BUCKET/PREFIX`` shared by all
replicas) writes Parquet parts::

    LOCATION/predictions/MODEL/VERSION/date=YYYY-MM-DD/part-<ns>-<writer>.parquet
        request_id (string), row (int32: the row's index in its request),
        ts (timestamp[ns, UTC]: when its batch ran), one float32 column per model input (the raw
        row the model was given, categorical codes included), one float32 column per output
    LOCATION/labels/MODEL/date=YYYY-MM-DD/part-<ns>-<writer>.parquet
        request_id, row, ts (when the label came), label (string: the class or number sent,
        :func:`label_text`; coded with the classes of the version reported on)

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
is kept and tried again at the next flush (four buffers' rows at most), without holding back
the others.

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
from collections.abc import Callable, Sequence
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
    return time.strftime("%Y-%m-%d", time.gmtime(ns // 10**9))


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

    def write(self, name: str, data: bytes) -> None:
        """Stores the Parquet bytes ``data`` as the new part ``name`` (never replacing one)."""
        if self.s3 is None:
            dest = self.root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, dest)  # readers list *.parquet only: never a partial part
            return
        import tempfile

        from mlserve._objectstore import PreconditionFailed

        with tempfile.TemporaryDirectory(prefix="mlserve-predlog-") as tmp_dir:
            local = Path(tmp_dir) / "part.parquet"
            local.write_bytes(data)
            try:
                self.s3.put(name, local)  # create-only
            except PreconditionFailed:
                # The name is this writer's own: an earlier attempt whose answer was lost
                # (botocore retried it, or a flush gave it up) stored it, or (409) is still
                # storing it. Written only if it is there now; else kept and tried again.
                info = self.s3.head(name)
                if info is None or info.size != len(data):
                    raise

    def parts(self, under: str) -> list[str]:
        """Names of the parts under ``under`` (a folder name ending in '/'), sorted."""
        return [name for name, _ in self.sized_parts(under)]

    def sized_parts(self, under: str) -> list[tuple[str, int]]:
        """(name, bytes) of the parts under ``under``, sorted by name."""
        if self.s3 is None:
            base = self.root / under
            if not base.is_dir():
                return []
            return sorted((str(p.relative_to(self.root)), p.stat().st_size)
                          for p in base.rglob("part-*.parquet"))
        return sorted((o.key, o.size) for o in self.s3.list(under)  # keys relative to prefix
                      if o.key.rsplit("/", 1)[-1].startswith("part-")
                      and o.key.endswith(".parquet"))

    def delete(self, name: str) -> None:
        if self.s3 is None:
            (self.root / name).unlink(missing_ok=True)
        else:
            self.s3.delete(name)

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
    installed, and a directory can be created and written there; for ``s3://``, boto3, the
    bucket and the credentials (a one-key listing; credentials allowed to write but not to
    list pass; a missing write permission shows at the first flush, as
    ``mlserve_prediction_log_failed_writes_total`` and a log line). Returns the location,
    normalized; InvalidInput says what is wrong."""
    _import_pyarrow()
    storage = _Storage(location)
    if storage.s3 is not None:
        storage.s3.check_listable(f"{PREDICTIONS}/")
    else:
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
    outputs: Callable[[int], list[str]]  # names of the columns of an output this wide


@dataclass
class _Part:
    """A part to write: its name, table, and what it counts for once written."""

    name: str
    data: bytes  # the Parquet file, serialized once (a retry only uploads it again)
    rows: int
    kind: str  # PREDICTIONS or LABELS
    requests: int


@dataclass
class LogCounters:
    """What the writer did since it started (exported as metrics); counted when written."""

    requests: int = 0
    rows: int = 0
    labels: int = 0
    parts: int = 0
    dropped_rows: int = 0
    dropped_labels: int = 0
    failed_writes: int = 0
    pending: list[_Part] = field(default_factory=list)


#: Metadata columns of the log's parts; a model input or output of the same name is stored as
#: ``in__NAME`` / ``out__NAME`` (:func:`input_column`).
RESERVED = frozenset({"request_id", "row", "ts", "version", "label"})


def input_column(name: str) -> str:
    """The column of model input ``name`` in a predictions part."""
    return f"in__{name}" if name in RESERVED else name


#: Longest request id the server keeps (``x-request-id`` beyond it is cut), in bytes.
MAX_ID_BYTES = 128


def request_id_text(ident: bytes | str) -> str:
    """A request id as the log stores it, the same for a logged request (whose header the
    server cut at MAX_ID_BYTES bytes) and for feedback naming it (a JSON string, cut the same
    way): UTF-8 as is, a character the cut split dropped; other bytes (clients that send
    header text as latin-1, as Python's http.client and requests do) read as latin-1, which is
    what such a client reads back from the ``x-request-id`` answer."""
    raw = (ident.encode("utf-8") if isinstance(ident, str) else bytes(ident))[:MAX_ID_BYTES]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.end == len(raw):
            try:
                return raw[:exc.start].decode("utf-8")
            except UnicodeDecodeError:
                pass
        return raw.decode("latin-1")


def label_text(value: Any) -> str:
    """A feedback label as the log stores it: the class (an integral number as its integer,
    ``1.0`` as ``"1"``) or the regression target as text; coded into class indices or floats
    when read, with the classes of the bundle being reported."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


class PredictionLogWriter:
    """Drains the watched engines' prediction export into parts every ``flush_s`` seconds (a
    daemon thread from :meth:`start`, or the caller's :meth:`flush`; :meth:`close` flushes once
    more). Thread-safe."""

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
        self._labels: list[tuple[str, list[str], list[list[str]], int]] = []
        self._lock = threading.Lock()  # _watched, _labels
        self._flush_lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0

    @property
    def location(self) -> str:
        return self.storage.location

    def watch(self, model: str, version: str, engine: Any, inputs: Sequence[str],
              outputs: Sequence[str] | Callable[[int], list[str]]) -> None:
        """Logs ``engine``'s tagged requests as ``model``/``version`` from now on (idempotent;
        an engine is drained a last time after it closed, so a hot swap loses nothing).
        ``outputs``: the output columns' names, or a function of the output width giving them
        (the server's :meth:`~mlserve.server.models.ServedVersion.output_columns`); ``output_j``
        where they do not match the width."""
        for name in (model, version):
            if not _NAME.match(name):
                raise InvalidInput(f"prediction log: {name!r} is not a name it can store "
                                   "(letters, digits, '_', '-', '.')")
        with self._lock:
            w = self._watched.get(id(engine))
            if w is not None and w.engine is engine:
                return
            engine.configure_prediction_export(self.max_buffered_rows, self.sample)
            names = outputs if callable(outputs) else (lambda _, given=list(outputs): given)
            self._watched[id(engine)] = _Watched(model, version, engine, list(inputs), names)

    def add_labels(self, model: str, ids: Sequence[str | bytes],
                   labels: Sequence[Sequence[Any]]) -> int:
        """Queues ground truth: for each request id, one label per row of its request (a class
        or a number, stored as :func:`label_text`). Returns the rows queued."""
        if len(ids) != len(labels):
            raise InvalidInput("feedback needs one label list per id")
        texts = [[label_text(v) for v in rows] for rows in labels]
        n = sum(len(t) for t in texts)
        if n:
            with self._lock:
                self._labels.append((model, [request_id_text(i) for i in ids], texts,
                                     time.time_ns()))
        return n

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

    def wait_for_engines(self, timeout_s: float) -> bool:
        """Waits (at most ``timeout_s``) until every watched engine has closed, e.g. a retired
        version still finishing its requests at shutdown; whether they all did."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                done = all(w.engine.released for w in self._watched.values())
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.02)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the thread and flushes what is left (engines closed meanwhile included); a
        write still failing ``timeout_s`` after the start is given up, logged and counted.
        Close the engines first (or :meth:`wait_for_engines`) to log their last requests."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self.flush(deadline=deadline)
        except Exception:
            logger.exception("the prediction log's last flush failed")
        lost = self.counters.pending
        if lost:
            self.counters.pending = []
            for part in lost:
                self._drop(part.kind, part.rows)
            logger.error("prediction log: %d parts could not be written to %s and are lost",
                         len(lost), self.location)

    def flush(self, deadline: float | None = None) -> int:
        """Drains every watched engine and writes its rows and the queued labels; returns the
        parts written. Engines closed since are drained a last time and forgotten. A part that
        cannot be built (nothing does, short of a bug) is logged and dropped; one that cannot
        be written is kept for the next flush, within a bound. Past ``deadline`` (monotonic
        seconds) nothing more is written: the rest stays pending."""
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._flush_lock.acquire(timeout=timeout):
            logger.error("prediction log: a flush still running at the deadline; its parts "
                         "are kept by it")
            return 0
        try:
            return self._flush_locked(deadline)
        finally:
            self._flush_lock.release()

    def _flush_locked(self, deadline: float | None) -> int:
        with self._lock:
            watched = list(self._watched.items())
            labels, self._labels = self._labels, []
        parts: list[_Part] = list(self.counters.pending)
        self.counters.pending = []
        for key, w in watched:
            closed = w.engine.released  # before the drain: then nothing can follow it
            try:
                drained = w.engine.drain_prediction_export()
            except Exception:
                logger.exception("prediction log: could not drain %s/%s", w.model, w.version)
                continue
            self.counters.dropped_rows += int(drained["dropped_rows"])
            if drained["tags"]:
                self._build(parts, lambda w=w, d=drained: self._prediction_part(w, d),
                            int(drained["rows"].sum()), PREDICTIONS)
            if closed:
                with self._lock:
                    if self._watched.get(key) is w:
                        del self._watched[key]
        by_model: dict[str, list[tuple[list[str], list[list[str]], int]]] = {}
        for model, ids, texts, ts in labels:
            by_model.setdefault(model, []).append((ids, texts, ts))
        for model, items in by_model.items():
            self._build(parts, lambda m=model, i=items: self._label_part(m, i),
                        sum(len(t) for _, texts, _ in items for t in texts), LABELS)
        written = 0
        failed: list[_Part] = []
        for part in parts:
            late = deadline is not None and time.monotonic() > deadline
            if late or (deadline is None and self._stop.is_set()):
                failed.append(part)  # an interval flush overtaken by close(): it writes
                continue
            try:
                self.storage.write(part.name, part.data)
            except Exception as exc:
                self.counters.failed_writes += 1
                failed.append(part)
                logger.warning("prediction log: could not write %s (%s); kept for the next "
                               "flush", part.name, exc)
                continue
            written += 1
            self.counters.parts += 1
            if part.kind == PREDICTIONS:
                self.counters.requests += part.requests
                self.counters.rows += part.rows
            else:
                self.counters.labels += part.rows
        self.counters.pending = self._bounded(failed)
        return written

    def _build(self, parts: list[_Part], build: Any, rows: int, kind: str) -> None:
        try:
            parts.append(build())
        except Exception:
            logger.exception("prediction log: could not build a part of %d %s rows; dropped",
                             rows, kind)
            self._drop(kind, rows)

    def _bounded(self, failed: list[_Part]) -> list[_Part]:
        """The failed parts to keep, the newest first within four buffers' rows; the others
        are counted as dropped."""
        kept: list[_Part] = []
        total = 0
        for part in reversed(failed):
            total += part.rows
            if total > self.max_buffered_rows * 4:
                self._drop(part.kind, part.rows)
                continue
            kept.append(part)
        return list(reversed(kept))

    def _drop(self, kind: str, rows: int) -> None:
        if kind == PREDICTIONS:
            self.counters.dropped_rows += rows
        else:
            self.counters.dropped_labels += rows

    def _name(self, folder: str, ts_ns: int) -> str:
        self._seq += 1
        return (f"{folder}/date={_day(ts_ns)}/part-{ts_ns:020d}-{self.writer_id}-"
                f"{self._seq}.parquet")

    def _prediction_part(self, w: _Watched, d: dict[str, Any]) -> _Part:
        pa = self.pa
        rows = d["rows"].astype(np.int64)
        n = int(rows.sum())
        # Built by pyarrow in C++ (a Python loop over the tags costs ~0.2 µs per request); an
        # id that is not UTF-8 or too long (see request_id_text) takes the slow path.
        import pyarrow.compute as pc

        raw = pa.array(d["tags"], pa.binary())
        try:
            if pc.max(pc.binary_length(raw)).as_py() > MAX_ID_BYTES:
                raise pa.ArrowInvalid("too long")
            tags = raw.cast(pa.string())
        except pa.ArrowInvalid:
            tags = pa.array([request_id_text(t) for t in d["tags"]], pa.string())
        request_id = tags if n == len(tags) else tags.take(
            pa.array(np.repeat(np.arange(len(tags)), rows)))
        inputs, outputs = d["inputs"], d["outputs"]
        names_out = w.outputs(outputs.shape[1])
        if len(names_out) != outputs.shape[1]:
            names_out = [f"output_{j}" for j in range(outputs.shape[1])]
        unix_ns = np.repeat(d["unix_ns"], rows)
        columns: dict[str, Any] = {
            "request_id": request_id,
            "row": pa.array(_row_index(rows), pa.int32()),
            "ts": pa.array(unix_ns, pa.timestamp("ns", tz="UTC")),
        }
        by_column = np.ascontiguousarray(inputs.T)  # one pass, then contiguous columns
        input_names = (w.inputs if len(w.inputs) == inputs.shape[1]
                       else [f"input_{j}" for j in range(inputs.shape[1])])
        for j, name in enumerate(input_names):
            columns[input_column(name)] = pa.array(by_column[j], pa.float32())
        out_columns = np.ascontiguousarray(outputs.T)
        for j, name in enumerate(names_out):
            column = f"out__{name}" if name in columns or name in RESERVED else name
            columns[column] = pa.array(out_columns[j], pa.float32())
        first = int(unix_ns.min())  # instances finish batches out of order
        return _Part(self._name(f"{PREDICTIONS}/{w.model}/{w.version}", first),
                     _parquet(pa.table(columns)), n, PREDICTIONS, len(tags))

    def _label_part(self, model: str, items: list[tuple[list[str], list[list[str]], int]]
                    ) -> _Part:
        pa = self.pa
        ids: list[str] = []
        rows: list[int] = []
        stamps: list[int] = []
        values: list[str] = []
        for item_ids, texts, ts in items:
            ids.extend(item_ids)
            rows.extend(len(t) for t in texts)
            stamps.extend([ts] * len(item_ids))
            for t in texts:
                values.extend(t)
        counts = np.asarray(rows, np.int64)
        table = pa.table({
            "request_id": pa.array(ids, pa.string()).take(
                pa.array(np.repeat(np.arange(len(ids)), counts))),
            "row": pa.array(_row_index(counts), pa.int32()),
            "ts": pa.array(np.repeat(np.asarray(stamps, np.int64), counts),
                           pa.timestamp("ns", tz="UTC")),
            "label": pa.array(values, pa.string()),
        })
        first = min(ts for _, _, ts in items)
        return _Part(self._name(f"{LABELS}/{model}", first), _parquet(table), table.num_rows,
                     LABELS, len(ids))


def _parquet(table: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data: bytes = sink.getvalue().to_pybytes()
    return data


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
    """The parts under ``folder`` that may hold rows at or after ``since_ns``: a part is filed
    under the UTC day of its first row and spans at most a flush interval (under an hour), so
    the day before ``since``'s is read too, and rows are filtered afterwards."""
    names = storage.parts(folder + "/")
    if since_ns is None:
        return names
    day = _day(since_ns - 86_400 * 10**9)
    return [name for name in names
            if name.rsplit("/date=", 1)[-1].split("/", 1)[0] >= day]


def read_predictions(location: str | os.PathLike[str], model: str, version: str | None = None,
                     *, since_ns: int | None = None) -> pd.DataFrame:
    """The logged predictions of ``model`` (one ``version``, or all; a ``version`` column
    says which), rows with ``ts >= since_ns`` (all when None), ordered by time. Inputs named
    like a metadata column are in ``in__NAME`` (:func:`input_column`)."""
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
    out = pd.concat(frames, ignore_index=True) if frames else None
    if out is not None and since_ns is not None:
        out = out[out["ts"] >= pd.Timestamp(since_ns, unit="ns", tz="UTC")]
    if out is None or out.empty:
        raise InvalidInput(f"the prediction log at {storage.location} has no predictions of "
                           f"{model}{'' if version is None else '/' + version}"
                           f"{'' if since_ns is None else ' in that time'}")
    return out.sort_values(["ts", "request_id", "row"], kind="stable").reset_index(drop=True)


def read_labels(location: str | os.PathLike[str], model: str, *,
                since_ns: int | None = None) -> pd.DataFrame:
    """The labels logged for ``model`` (request_id, row, ts, label as text: see
    :func:`label_text`). With ``since_ns``, the parts filed from the day before it on (labels
    older than ``since_ns`` among them are kept: they may belong to predictions in range; the
    join decides). Empty when none."""
    import pandas as pd

    _import_pyarrow()
    storage = _Storage(location)
    frames = [storage.read(name).to_pandas()
              for name in _parts_since(storage, f"{LABELS}/{model}", since_ns)]
    if not frames:
        return pd.DataFrame({"request_id": pd.Series([], dtype=object),
                             "row": pd.Series([], dtype="int32"),
                             "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
                             "label": pd.Series([], dtype=object)})
    return pd.concat(frames, ignore_index=True)


# ---- listing and retention -------------------------------------------------------------------

@dataclass
class LogGroup:
    """The parts of one model version's predictions, or of one model's labels."""

    kind: str  # PREDICTIONS or LABELS
    model: str
    version: str | None
    parts: int
    bytes: int
    first_day: str
    last_day: str


def _groups(storage: _Storage) -> dict[tuple[str, str, str | None], list[tuple[str, int]]]:
    out: dict[tuple[str, str, str | None], list[tuple[str, int]]] = {}
    for kind in (PREDICTIONS, LABELS):
        for name, size in storage.sized_parts(kind + "/"):
            pieces = name.split("/")
            key: tuple[str, str, str | None]
            if kind == PREDICTIONS and len(pieces) == 5:
                key = (kind, pieces[1], pieces[2])
            elif kind == LABELS and len(pieces) == 4:
                key = (kind, pieces[1], None)
            else:
                continue  # not a part this module wrote
            out.setdefault(key, []).append((name, size))
    return out


def _part_day(name: str) -> str:
    return name.rsplit("/date=", 1)[-1].split("/", 1)[0]


def summarize(location: str | os.PathLike[str]) -> list[LogGroup]:
    """What the log at ``location`` holds, per model version (predictions) and per model
    (labels): parts, bytes and the first and last day, from a listing (no part is read)."""
    storage = _Storage(location)
    out = []
    for (kind, model, version), items in sorted(_groups(storage).items(), key=str):
        days = sorted(_part_day(n) for n, _ in items)
        out.append(LogGroup(kind, model, version, len(items), sum(s for _, s in items),
                            days[0], days[-1]))
    return out


def remove_older(location: str | os.PathLike[str], keep_s: float, *,
                 now_ns: int | None = None, dry_run: bool = False) -> list[str]:
    """Retention: removes the parts filed on a UTC day before the day of ``now - keep_s``
    (a part holds rows from its day, and at most a flush interval into the next), predictions
    and labels alike; returns their names (``dry_run``: only says which)."""
    if not keep_s > 0:
        raise InvalidInput("keep the log for a positive time (like 30d)")
    storage = _Storage(location)
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = _day(now - int(keep_s * 1e9))
    doomed = [name for items in _groups(storage).values() for name, _ in items
              if _part_day(name) < cutoff]
    if not dry_run:
        for name in doomed:
            storage.delete(name)
    return doomed


def joined(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``predictions`` with a ``label`` column: the last label sent for each (request, row)
    (missing where none came). A request id logged twice (a retried request) takes its latest
    prediction."""
    last_label = (labels.sort_values("ts", kind="stable")
                  .drop_duplicates(["request_id", "row"], keep="last")
                  [["request_id", "row", "label"]])
    latest = predictions.drop_duplicates(["request_id", "row"], keep="last")
    return latest.merge(last_label, on=["request_id", "row"], how="left")
