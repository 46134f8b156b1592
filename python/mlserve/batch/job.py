"""A local batch job: score Parquet/CSV files in chunks, in worker processes, checkpointed.

``run_batch`` reads each input file as a stream and cuts it into chunks of exactly
``chunk_rows`` rows (the last of a file shorter). Chunk ``k`` of input file ``f`` becomes the
output part ``part-<f:05d>-<k:09d>.parquet``: the file's rows ``[k * chunk_rows, ...)`` in their
order, the kept columns then the predictions. Sorted by name, the parts are the input's rows in
order, so ``pandas.read_parquet(output)`` reads the whole result as one table.

Checkpointing: a part is written to a temporary name and renamed into place, so a part on disk
is complete; ``_mlserve_batch.json`` (written first) records what the job is: the model pinned
to ``NAME/VERSION`` with its artifacts' checksums, the input files' sizes and modification
times, the chunking, the columns and the pinned offline feature parts. Run again with the same
arguments, a job skips every chunk whose part is there (its row count checked) and scores the
rest; run with anything that changes the result (another model version, changed input, other
columns), it refuses instead of mixing two results in one output. ``_SUCCESS`` (JSON: rows,
seconds, model) marks a finished output.

Workers: ``workers=1`` scores in this process; more start that many processes (``spawn``), each
with its own :class:`~mlserve.batch.scorer.BatchScorer` built once. The reading process keeps
at most two chunks per worker in flight.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserve.errors import InvalidInput, MlserveError, Unavailable

from .scorer import BatchScorer, required_columns

JOB_FILE = "_mlserve_batch.json"
SUCCESS_FILE = "_SUCCESS"
FORMAT_VERSION = 1
#: Rows per chunk, and so per output part, by default.
CHUNK_ROWS = 65_536
#: The CSV reader infers column types from its first block and keeps them: a big first block
#: makes a later row that does not fit them unlikely.
CSV_BLOCK_BYTES = 32 << 20
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass
class BatchResult:
    """What a batch job did."""

    output: Path
    model: str
    rows: int
    """Rows in the output (scored now or before a resume)."""
    chunks: int
    resumed_chunks: int
    """Chunks whose parts were already there (not scored again)."""
    seconds: float
    rows_scored: int = 0
    """Rows scored by this run."""
    parts: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "model": self.model, "rows": self.rows,
                "chunks": self.chunks, "resumed_chunks": self.resumed_chunks,
                "rows_scored": self.rows_scored, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows_per_second, 1)}


class ChunkFailed(InvalidInput):
    """A chunk could not be scored; the message names its file and rows."""


# ---- inputs ----------------------------------------------------------------------------------


def input_files(inputs: Sequence[str | os.PathLike[str]], *,
                exclude: Path | None = None) -> list[Path]:
    """The files to score, in order: each path given, or a directory's ``*.parquet``/``*.pq``/
    ``*.csv`` files (recursively, sorted by path; names starting with ``_`` or ``.`` skipped,
    as pyarrow's dataset reader skips them). ``exclude``: a directory whose files are never
    input (the job's output, when it lies inside an input directory)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    skip = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in _SUFFIXES
                           and not any(part.startswith(("_", "."))
                                       for part in p.relative_to(path).parts)
                           and (skip is None or not p.resolve().is_relative_to(skip)))
            if not found:
                raise InvalidInput(f"input directory {path} holds no .parquet or .csv files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in _SUFFIXES:
                raise InvalidInput(f"input file {path}: unsupported format {path.suffix!r}; use "
                                   ".parquet or .csv")
            files.append(path)
        else:
            raise InvalidInput(f"input {path} does not exist")
    if not files:
        raise InvalidInput("no input files given")
    if len(set(p.resolve() for p in files)) != len(files):
        raise InvalidInput("an input file is given twice")
    return files


def _fingerprint(files: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _schema_of(path: Path, text_columns: Sequence[str] = ()) -> Any:
    """The Arrow schema :func:`iter_chunks` reads ``path`` with (CSV: inferred from its first
    block, as the reader does)."""
    import pyarrow as pa

    if _SUFFIXES[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).schema_arrow
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                               convert_options=pcsv.ConvertOptions(
                                   column_types={c: pa.string() for c in text_columns}))
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise InvalidInput(f"{path}: the file is empty (not even a header line)") from None
        raise InvalidInput(f"{path}: {e}") from None
    return reader.schema


def output_schema(files: Sequence[Path], schemas: Sequence[Any], columns: Sequence[str] | None,
                  required: Sequence[str]) -> Any:
    """The one schema every chunk is cast to, so that the output reads as one table: the
    selected columns (``columns``; None: every file's) with their types unified over the files
    (``int64`` and ``double`` give ``double``, a column that is all null in one CSV takes the
    others' type; a column one file lacks is null there). Every file must hold ``required``."""
    import pyarrow as pa

    selected = []
    for path, schema in zip(files, schemas, strict=True):
        missing = [c for c in required if c not in schema.names]
        if missing:
            raise InvalidInput(f"{path}: no column(s) {', '.join(missing)}, which the model "
                               f"reads (columns: {', '.join(schema.names)})")
        if columns is not None:
            absent = [c for c in columns if c not in schema.names]
            if absent:
                raise InvalidInput(f"{path}: no column(s) {', '.join(absent)} to keep "
                                   f"(columns: {', '.join(schema.names)})")
            schema = pa.schema([schema.field(c) for c in columns])
        selected.append(schema.remove_metadata())
    try:
        return pa.unify_schemas(selected, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidInput(f"the input files' columns do not agree ({e}); give one type to "
                           "each column in every file, or score them as separate jobs") from None


def conform(table: Any, schema: Any) -> Any:
    """``table`` with ``schema``'s columns, in its order, cast to its types (null-filled where
    absent)."""
    import pyarrow as pa

    if table.schema.remove_metadata().equals(schema):
        return table
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        try:
            arrays.append(col if col.type == f.type else col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InvalidInput(f"column {f.name!r}: cannot read {col.type} as {f.type}, the "
                               f"type of other input files ({e})") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _rows_of(path: Path) -> int | None:
    if _SUFFIXES[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def iter_chunks(path: Path, chunk_rows: int, columns: Sequence[str] | None,
                text_columns: Sequence[str] = (), *, skip_rows: int = 0) -> Iterator[Any]:
    """``path``'s rows as pyarrow Tables of exactly ``chunk_rows`` rows (the last shorter; a
    file without rows gives one empty table), whatever batches the reader yields; only
    ``columns`` (None: all). ``text_columns``: read as strings from CSV whatever they look
    like (a model's string join keys: ``"0042"`` is not 42). ``skip_rows`` (Parquet only): start
    at that row, reading no row group before it (a resumed job's finished prefix)."""
    import pyarrow as pa

    if _SUFFIXES[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        groups = list(range(pf.num_row_groups))
        drop = 0
        if skip_rows:
            start = 0
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if start + n > skip_rows:
                    break
                start += n
            else:
                return  # nothing left
            groups, drop = groups[g:], skip_rows - start
        batches: Iterator[Any] = _dropping(
            pf.iter_batches(batch_size=chunk_rows, row_groups=groups,
                            columns=None if columns is None else list(columns)), drop)
        schema = pf.schema_arrow if columns is None else pa.schema(
            [pf.schema_arrow.field(c) for c in columns])
    else:
        if skip_rows:
            raise ValueError("skip_rows applies to Parquet files only")
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(include_columns=None if columns is None else
                                      list(columns),
                                      column_types={c: pa.string() for c in text_columns})
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                               convert_options=convert)
        schema = reader.schema
        batches = iter(reader)
    pending: list[Any] = []
    held = 0
    given = False
    try:
        for batch in batches:
            pending.append(batch)
            held += batch.num_rows
            while held >= chunk_rows:
                table = pa.Table.from_batches(pending, schema=schema)
                given = True
                yield table.slice(0, chunk_rows).combine_chunks()
                rest = table.slice(chunk_rows)
                pending = rest.to_batches()
                held = rest.num_rows
    except pa.ArrowInvalid as e:
        raise InvalidInput(
            f"{path}: {e}. The CSV reader types each column from the file's first "
            f"{CSV_BLOCK_BYTES >> 20} MiB; convert the file to Parquet (typed columns)") from None
    if held or not given:
        yield pa.Table.from_batches(pending, schema=schema).combine_chunks()


def _dropping(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """``batches`` without their first ``rows`` rows."""
    for batch in batches:
        if rows >= batch.num_rows:
            rows -= batch.num_rows
            continue
        yield batch.slice(rows) if rows else batch
        rows = 0


def _chunk_count(rows: int, chunk_rows: int) -> int:
    """Chunks of a file of ``rows`` rows (an empty file still gives one, empty)."""
    return max(1, -(-rows // chunk_rows))


def _finished_prefix(out_dir: Path, file_index: int, total_rows: int | None, chunk_rows: int,
                     job_id: str) -> list[tuple[str, int]]:
    """The parts (name, rows) of the leading chunks of a Parquet input that a resumed job
    finished: checked from the file's row count and the parts' metadata alone, so that their
    rows are not read again."""
    if total_rows is None:
        return []
    done = []
    for k in range(_chunk_count(total_rows, chunk_rows)):
        expect = min(chunk_rows, total_rows - k * chunk_rows)
        name = part_name(file_index, k)
        if _part_rows(out_dir / name, {"mlserve.job": job_id}) != expect:
            break
        done.append((name, expect))
    return done


# ---- the job ---------------------------------------------------------------------------------


def part_name(file_index: int, chunk: int) -> str:
    return f"part-{file_index:05d}-{chunk:09d}.parquet"


def _part_rows(path: Path, expect: dict[str, str]) -> int | None:
    """Rows of a finished part, or None when it is not one this job wrote."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError):
        return None
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    if any(kv.get(k) != v for k, v in expect.items()):
        return None
    return int(meta.num_rows)


def _write_part(table: Any, path: Path, metadata: dict[str, str]) -> None:
    """``table`` to ``path`` atomically: a temporary file, fsync, rename."""
    import pyarrow.parquet as pq

    schema = table.schema.with_metadata({**(table.schema.metadata or {}),
                                         **{k.encode(): v.encode() for k, v in metadata.items()}})
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        pq.write_table(table.replace_schema_metadata(schema.metadata), tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _job_id(job: dict[str, Any]) -> str:
    """What decides the output's contents: a resumed job must match it exactly."""
    keys = ("model", "artifacts", "backend", "inputs", "chunk_rows", "keep", "as_of",
            "feature_parts", "with_features", "threshold", "format_version")
    blob = json.dumps({k: job.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    what = {"model": "model version", "artifacts": "model artifacts", "backend": "backend",
            "inputs": "input files (paths, sizes or modification times)",
            "chunk_rows": "chunk_rows", "keep": "kept columns", "as_of": "as_of",
            "feature_parts": "offline feature parts", "with_features": "with_features",
            "threshold": "threshold", "format_version": "output format"}
    return [f"{label} ({old.get(k)!r} then, {new.get(k)!r} now)" if k in
            ("model", "backend", "chunk_rows", "as_of", "threshold") else label
            for k, label in what.items() if old.get(k) != new.get(k)]


def _ours(name: str) -> bool:
    return (name.startswith("part-") and name.endswith(".parquet")) or name.startswith(".tmp-") \
        or name in (JOB_FILE, SUCCESS_FILE)


def _prepare_output(output: Path, job: dict[str, Any], overwrite: bool) -> bool:
    """Makes ``output`` ready for ``job``; True when it already holds the finished result."""
    if output.exists() and not output.is_dir():
        raise InvalidInput(f"output {output} exists and is not a directory")
    output.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in output.iterdir()]
    if overwrite:
        for name in names:
            if _ours(name):
                (output / name).unlink()
        names = [n for n in names if not _ours(n)]
    job_file = output / JOB_FILE
    if job_file.is_file():
        old = json.loads(job_file.read_text())
        started = any(n.startswith("part-") for n in names)
        if old.get("job_id") != job["job_id"] and not started:
            _write_json(job_file, job)  # it never wrote a part (e.g. it failed to start)
            return False
        if old.get("job_id") != job["job_id"]:
            changed = _differences(old, job) or ["the job's settings"]
            raise InvalidInput(
                f"output {output} holds another job's result: its {'; '.join(changed)} "
                "differ(s). Use a new output directory, or --overwrite to score it all again")
        for name in names:
            if name.startswith(".tmp-"):
                (output / name).unlink(missing_ok=True)  # a killed worker's unfinished part
        return (output / SUCCESS_FILE).is_file()
    if not overwrite and [n for n in names if not n.startswith(".")]:
        raise InvalidInput(f"output directory {output} is not empty and holds no batch job; "
                           "choose an empty or new directory")
    _write_json(job_file, job)
    return False


def describe_job(model: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *,
                 registry: Any = None, backend: str = "onnxruntime", chunk_rows: int = CHUNK_ROWS,
                 keep: Sequence[str] | None = None,
                 feature_store: str | os.PathLike[str] | None = None, as_of: Any = None,
                 with_features: bool = False, threshold: float = 0.5,
                 previous: dict[str, Any] | None = None,
                 output: Path | None = None) -> dict[str, Any]:
    """The job's record (``_mlserve_batch.json``): the model pinned to ``NAME/VERSION`` (or its
    bundle directory) with its artifacts' checksums, the inputs' fingerprint, the options, and
    ``scorer``: the keyword arguments every worker's BatchScorer gets.

    ``previous``: the record of the job in the output, to resume it. What was pinned at its
    start from the same request stays pinned: the time ``as_of`` stood for (``now`` then) and
    the offline store's part files (parts ingested since are not read). ``output``: the job's
    output directory, never read as input when it lies inside an input directory.
    """
    from mlserve.bundle import load_model, names_bundle
    from mlserve.gpu import canonical_backend
    from mlserve.server.feature_join import lineage_service

    from .scorer import PointInTimeJoin

    if chunk_rows < 1:
        raise InvalidInput(f"chunk_rows must be >= 1, got {chunk_rows}")
    files = input_files(inputs, exclude=output)
    bundle = load_model(model, registry)  # the artifacts' checksums verified
    path = bundle.path
    pinned = str(path.resolve()) if names_bundle(model) else bundle.ref
    as_of_iso = None
    if as_of is not None:
        import pandas as pd

        from mlserve.features._time import to_ns

        as_of_iso = pd.Timestamp(to_ns(as_of, "as_of"), unit="ns", tz="UTC").isoformat()
    same_request = previous is not None and previous.get("requested_as_of") == (
        None if as_of is None else str(as_of))
    if same_request and previous is not None:
        as_of_iso = previous.get("as_of")
    feature_parts = None
    store_root = store_cache = None
    if lineage_service(bundle.manifest.get("lineage") or {}):
        join = PointInTimeJoin(bundle, feature_store=feature_store, as_of=as_of_iso,
                               parts=previous.get("feature_parts") if same_request and previous
                               else None)
        try:
            feature_parts = join.parts
            store_root = join.store.location
            if join.store.cache_base is not None:  # shared: workers use the caller's cache
                store_cache = str(join.store.cache_base)
        finally:
            join.close()
    registry_root = registry_cache = None
    if not names_bundle(model):
        from mlserve.registry import Registry

        reg = registry if isinstance(registry, Registry) else Registry(registry)
        from mlserve.registry.remote import RemoteRegistry

        if isinstance(reg, RemoteRegistry):
            registry_root, registry_cache = reg.location, str(reg.cache_base)
        else:
            registry_root = str(Path(reg.root).resolve())
    job: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": pinned,
        "requested": str(model),
        "artifacts": {k: v.get("sha256") for k, v in sorted(bundle.artifacts.items())},
        "backend": canonical_backend(backend),
        "inputs": _fingerprint(files),
        "chunk_rows": chunk_rows,
        "keep": None if keep is None else list(dict.fromkeys(keep)),
        "as_of": as_of_iso,
        "requested_as_of": None if as_of is None else str(as_of),
        "feature_parts": feature_parts,
        "with_features": with_features,
        "threshold": threshold,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    job["job_id"] = _job_id(job)
    job["required"] = required_columns(bundle, as_of_iso)
    lineage = bundle.manifest.get("lineage") or {}
    job["text_columns"] = [str(k["name"]) for k in lineage.get("entity_keys") or []
                           if isinstance(k, Mapping) and k.get("dtype") == "string"]
    job["scorer"] = {"model": pinned, "registry": registry_root, "backend": backend,
                     "keep": job["keep"], "feature_store": store_root, "as_of": as_of_iso,
                     "feature_parts": feature_parts, "with_features": with_features,
                     "threshold": threshold}
    if registry_cache is not None:
        job["scorer"]["registry_cache"] = registry_cache
    if store_cache is not None:
        job["scorer"]["feature_store_cache"] = store_cache
    return job


# ---- workers ---------------------------------------------------------------------------------

_worker_scorer: BatchScorer | None = None
_worker_error: str | None = None


class _WorkerStartFailed(MlserveError):
    """A worker process could not build its scorer (raised for every chunk it is given)."""


def _die_with_parent(parent: int) -> None:
    """Linux: this worker gets SIGTERM when ``parent``, the process that started it, dies (a
    SIGKILLed job would otherwise leave its workers holding the model, and scoring chunks
    nobody waits for)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def _scorer(kwargs: dict[str, Any]) -> BatchScorer:
    """The BatchScorer of a job's scorer spec; a registry on object storage is opened
    read-only with the caller's cache (``registry_cache``), a feature store on object storage
    with the caller's cache (``feature_store_cache``)."""
    kwargs = dict(kwargs)
    cache = kwargs.pop("registry_cache", None)
    if cache is not None:
        from mlserve.registry.remote import RemoteRegistry

        kwargs["registry"] = RemoteRegistry(kwargs["registry"], cache_dir=cache, read_only=True)
    store_cache = kwargs.pop("feature_store_cache", None)
    if store_cache is not None:
        from mlserve.features import FeatureStore

        kwargs["feature_store"] = FeatureStore(kwargs["feature_store"], cache_dir=store_cache)
    return BatchScorer(**kwargs)


def _init_worker(kwargs: dict[str, Any], parent: int) -> None:
    global _worker_scorer, _worker_error
    _die_with_parent(parent)
    try:
        _worker_scorer = _scorer(kwargs)
    except Exception as e:  # reported with the first chunk, not as a dead pool
        _worker_error = f"{type(e).__name__}: {e}" if not isinstance(e, MlserveError) \
            else str(e)


def _score_part(table: Any, path: str, metadata: dict[str, str]) -> tuple[int, float]:
    """In a worker: scores ``table`` and writes its part; (rows, seconds)."""
    if _worker_error is not None:
        raise _WorkerStartFailed(_worker_error)
    assert _worker_scorer is not None, "worker not initialized"
    start = time.perf_counter()
    out = _worker_scorer.score_table(table)
    _write_part(out, Path(path), metadata)
    return out.num_rows, time.perf_counter() - start


class _Runner:
    """Scores chunks in this process (one worker) or in a pool of processes.

    In this process, a chunk is scored in the calling thread and its part written by a writer
    thread (pyarrow releases the GIL while it encodes and compresses), so the next chunk is
    read and scored while the last one is written.
    """

    def __init__(self, workers: int, scorer_kwargs: dict[str, Any]) -> None:
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.scorer: BatchScorer | None = None
        self.writer: concurrent.futures.ThreadPoolExecutor | None = None
        if workers == 1:
            self.scorer = _scorer(scorer_kwargs)
            self.writer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="mlserve-batch-writer")
        else:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(scorer_kwargs, os.getpid()))

    def submit(self, table: Any, path: Path, metadata: dict[str, str]
               ) -> concurrent.futures.Future[tuple[int, float]]:
        if self.pool is not None:
            return self.pool.submit(_score_part, table, str(path), metadata)
        assert self.scorer is not None and self.writer is not None
        start = time.perf_counter()
        try:
            out = self.scorer.score_table(table)
        except BaseException as e:  # surfaced by the caller, as a pool's would be
            failed: concurrent.futures.Future[tuple[int, float]] = concurrent.futures.Future()
            failed.set_exception(e)
            return failed

        def write() -> tuple[int, float]:
            _write_part(out, path, metadata)
            return out.num_rows, time.perf_counter() - start

        return self.writer.submit(write)

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)
        if self.writer is not None:
            self.writer.shutdown(wait=True, cancel_futures=cancel)
        if self.scorer is not None:
            self.scorer.close()


def run_batch(model: str | os.PathLike[str], inputs: str | os.PathLike[str] |
              Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
              registry: Any = None, backend: str = "onnxruntime", device: int = 0,
              workers: int = 1,
              chunk_rows: int = CHUNK_ROWS, keep: Sequence[str] | None = None,
              feature_store: str | os.PathLike[str] | None = None, as_of: Any = None,
              with_features: bool = False, threshold: float = 0.5, overwrite: bool = False,
              progress: Callable[[int, int | None], None] | None = None) -> BatchResult:
    """Scores ``inputs`` (Parquet/CSV files or directories of them) with ``model`` into the
    Parquet dataset ``output``; resumes a job killed before it finished (module docstring).

    ``device``: the GPU of the GPU backends (not part of what a resumed job must match).
    ``progress(rows_done, rows_total)`` is called as chunks finish (``rows_total`` is None
    while a CSV input's row count is unknown). The other arguments are
    :class:`~mlserve.batch.scorer.BatchScorer`'s. Raises InvalidInput (bad arguments, a chunk
    that cannot be scored: ChunkFailed names it) or Unavailable (a worker died).
    """
    if workers < 1:
        raise InvalidInput(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    inputs_seq = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out_dir = Path(output)
    previous = None
    if not overwrite and (out_dir / JOB_FILE).is_file():
        try:
            previous = json.loads((out_dir / JOB_FILE).read_text())
        except ValueError:
            raise InvalidInput(f"{out_dir / JOB_FILE} is not valid JSON; use --overwrite to "
                               "start the job again") from None
    job = describe_job(model, inputs_seq, registry=registry, backend=backend,
                       chunk_rows=chunk_rows, keep=keep, feature_store=feature_store,
                       as_of=as_of, with_features=with_features, threshold=threshold,
                       previous=previous, output=out_dir)
    files = [Path(f["path"]) for f in job["inputs"]]
    done_before = _prepare_output(out_dir, job, overwrite)
    if done_before:
        success = json.loads((out_dir / SUCCESS_FILE).read_text())
        return BatchResult(out_dir, job["model"], int(success.get("rows", 0)),
                           int(success.get("chunks", 0)), int(success.get("chunks", 0)),
                           time.perf_counter() - start, 0, sorted(
                               p.name for p in out_dir.glob("part-*.parquet")))
    required = job["required"]
    text_columns = job["text_columns"]
    schemas = [_schema_of(p, text_columns) for p in files]
    columns = None if job["keep"] is None else list(dict.fromkeys([*job["keep"], *required]))
    schema = output_schema(files, schemas, columns, required)
    known = [_rows_of(p) for p in files]
    total = None if any(r is None for r in known) else sum(r or 0 for r in known)
    runner = _Runner(workers, {**job["scorer"], "device": device})
    rows = scored = chunks = resumed = 0
    parts: list[str] = []
    inflight: dict[concurrent.futures.Future[tuple[int, float]], str] = {}

    def finish(fut: concurrent.futures.Future[tuple[int, float]]) -> None:
        nonlocal rows, scored
        where = inflight.pop(fut)
        try:
            n, _ = fut.result()
        except _WorkerStartFailed as e:
            raise InvalidInput(f"the worker processes could not start: {e}") from None
        except BrokenProcessPool:
            raise Unavailable(f"a worker process died while scoring {where}; the parts "
                              "written so far are kept: run the job again to resume") from None
        except MlserveError as e:
            raise ChunkFailed(f"{where}: {e}") from None
        except Exception as e:
            raise ChunkFailed(f"{where}: {type(e).__name__}: {e}") from None
        rows += n
        scored += n
        if progress is not None:
            progress(rows, total)

    ok = False
    try:
        for fi, path in enumerate(files):
            prefix = _finished_prefix(out_dir, fi, known[fi], chunk_rows, job["job_id"])
            for name, n in prefix:
                parts.append(name)
                chunks += 1
                resumed += 1
                rows += n
            if prefix and progress is not None:
                progress(rows, total)
            file_rows = known[fi]
            if file_rows is not None and len(prefix) == _chunk_count(file_rows, chunk_rows):
                continue  # the whole file is done
            first = len(prefix) * chunk_rows
            for k, raw in enumerate(iter_chunks(path, chunk_rows, columns, text_columns,
                                                skip_rows=first), start=len(prefix)):
                table = conform(raw, schema)
                name = part_name(fi, k)
                parts.append(name)
                chunks += 1
                meta = {"mlserve.job": job["job_id"], "mlserve.input": str(path),
                        "mlserve.first_row": str(first)}
                first += table.num_rows
                have = _part_rows(out_dir / name, {"mlserve.job": job["job_id"]})
                if have is not None and have == table.num_rows:
                    resumed += 1
                    rows += have
                    if progress is not None:
                        progress(rows, total)
                    continue
                where = (f"chunk {k} of {path} (rows {int(meta['mlserve.first_row'])}-"
                         f"{first - 1})")
                while len(inflight) >= 2 * workers:
                    done, _ = concurrent.futures.wait(
                        inflight, return_when=concurrent.futures.FIRST_COMPLETED)
                    for fut in done:
                        finish(fut)
                inflight[runner.submit(table, out_dir / name, meta)] = where
        while inflight:
            done, _ = concurrent.futures.wait(inflight,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                finish(fut)
        ok = True
    finally:
        runner.close(cancel=not ok)
    seconds = time.perf_counter() - start
    result = BatchResult(out_dir, job["model"], rows, chunks, resumed, seconds, scored, parts)
    _write_json(out_dir / SUCCESS_FILE, {**result.to_dict(), "job_id": job["job_id"],
                                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime())})
    return result


__all__ = ["CHUNK_ROWS", "BatchResult", "ChunkFailed", "describe_job",
           "input_files", "iter_chunks", "run_batch"]
