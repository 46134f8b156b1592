"""The per-chunk function of batch inference: a table of rows in, the same rows with the
model's predictions out.

:class:`BatchScorer` is what every runner calls: the local job (:mod:`mlserve.batch.job`, one
scorer per worker process) and Ray Data (``ds.map_batches(BatchScorer, fn_constructor_kwargs=
{...}, concurrency=N)``, one per actor). It takes a ``pyarrow.Table``, a ``pandas.DataFrame`` or
a dict of numpy arrays (Ray Data's three batch formats) and answers in the same format.

Scoring is the server's: the bundle's categorical encoding and unknown-category policy
(:func:`mlserve.trainer.preprocess.encode_rows`), the fused feature plan and the model, through
an :class:`~mlserve.engine.Engine`. A model trained on a feature service (its bundle's
``lineage``) gets its stored features joined **point in time** from the offline store, exactly
as its training table was built: as of each row's timestamp column (or one ``as_of`` time for
every row), from the views and versions it was trained on, typed as training typed them.

Not thread-safe: one scorer per thread (the engine inside is).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from mlserve._tempfiles import touch
from mlserve.errors import InvalidInput

if TYPE_CHECKING:
    from mlserve.features import FeatureStore

#: A feature store: its location (a directory, ``s3://...``) or an open one.
StoreLike: TypeAlias = "str | os.PathLike[str] | FeatureStore"

#: Rows per Engine request (and the batcher's max_batch_size): big batches, one model call each.
BATCH_ROWS = 8192


def output_columns(bundle: Any, width: int) -> list[str]:
    """The prediction column names for a model answering ``width`` values per row.

    One column per value, named by the bundle's output (``probability`` for a binary model,
    ``prediction`` for a regression): the output's name when ``width`` is 1, else
    ``<output>_<class>`` for a multiclass model's classes and ``<output>_<i>`` otherwise.
    Classification models add ``predicted_class`` (:func:`predicted_class`).
    """
    outputs = bundle.signature.get("outputs") or []
    name = str(outputs[0].get("name", "output")) if outputs else "output"
    classes = _classes(bundle)
    if width == 1:
        names = [name]
    elif classes is not None and len(classes) == width:
        names = [f"{name}_{c}" for c in classes]
    else:
        names = [f"{name}_{i}" for i in range(width)]
    if classes is not None and bundle.task in ("binary", "multiclass"):
        names.append("predicted_class")
    return names


def _classes(bundle: Any) -> list[Any] | None:
    classes = bundle.manifest.get("classes")
    return list(classes) if isinstance(classes, list) and classes else None


def predicted_class(bundle: Any, y: np.ndarray, threshold: float) -> np.ndarray | None:
    """The class label of each row: a multiclass model's most probable class; a binary model's
    positive class (its second) where the probability is ``>= threshold``."""
    classes = _classes(bundle)
    if classes is None or bundle.task not in ("binary", "multiclass"):
        return None
    labels = np.asarray(classes)
    if bundle.task == "binary" and y.shape[1] == 1 and len(classes) == 2:
        out: np.ndarray = labels[(y[:, 0] >= threshold).astype(np.intp)]
        return out
    if y.shape[1] == len(classes):
        out = labels[np.argmax(y, axis=1)]
        return out
    return None


def required_columns(bundle: Any, as_of: Any = None) -> list[str]:
    """The columns of the scored rows the model reads: its request-time inputs, and for a model
    trained on a feature service, the join keys and (unless ``as_of``) the timestamp column."""
    from mlserve.features import feature_name
    from mlserve.server.feature_join import lineage_service

    inputs = [str(s["name"]) for s in bundle.signature.get("inputs") or []]
    lineage = bundle.manifest.get("lineage") or {}
    if not lineage_service(lineage):
        return inputs
    views = [v for v in lineage.get("feature_views") or [] if isinstance(v, Mapping)]
    stored = {feature_name(str(v["name"]), str(c)) for v in views for c in v.get("columns") or []}
    keys = [str(k) for v in views for k in v.get("join_keys") or []]
    ts = [] if as_of is not None else [str(lineage.get("timestamp_column") or "event_ts")]
    return list(dict.fromkeys([*(c for c in inputs if c not in stored), *keys, *ts]))


class PointInTimeJoin:
    """The stored features a bundle was trained on, joined as of each row's time from the
    offline store: the views and versions of its lineage, typed as its training table was
    (:func:`mlserve.trainer.features.training_column`).

    ``parts``: the part files to read per view (``{view_ref: [file names]}``), pinned by a job
    at its start so that every chunk, and a resumed run, sees the same offline data; default:
    the view's parts now. Each view's rows are read once and kept in memory.
    """

    def __init__(self, bundle: Any, *, feature_store: StoreLike | None = None,
                 as_of: Any = None, parts: Mapping[str, Sequence[str]] | None = None) -> None:
        from mlserve.features import FeatureStore

        lineage = bundle.manifest.get("lineage") or {}
        views = [v for v in lineage.get("feature_views") or [] if isinstance(v, Mapping)]
        if not views:
            raise InvalidInput(f"model {bundle.ref}: its lineage names no feature views")
        root = feature_store or lineage.get("feature_store") or None
        self.store = root if isinstance(root, FeatureStore) else FeatureStore(root)
        self.timestamp = str(lineage.get("timestamp_column") or "event_ts")
        self.as_of = as_of
        self.selections = []
        for v in views:
            try:
                view = self.store.registry.view(str(v["name"]), int(v["version"]))
            except Exception as e:  # DefinitionNotFound / InvalidInput: say which store
                raise InvalidInput(
                    f"model {bundle.ref} was trained on feature view {v.get('name')}/"
                    f"{v.get('version')}, which feature store {self.store.location} does not have "
                    f"({e}); pass the store it was trained with (--feature-store)") from None
            self.selections.append((view, tuple(str(c) for c in v.get("columns") or [])))
        offline = self.store.offline
        self.parts: dict[str, list[str]] = {}
        for view, _ in self.selections:
            if parts is not None and view.ref in parts:
                self.parts[view.ref] = [str(p) for p in parts[view.ref]]
            else:
                self.parts[view.ref] = [p.name for p in offline.parts(view)]
        self._loaded: dict[tuple[str, tuple[str, ...]], Any] = {}

    @property
    def feature_columns(self) -> list[str]:
        from mlserve.features import feature_name

        return [feature_name(view.name, c) for view, cols in self.selections for c in cols]

    def load(self, view: Any, columns: Sequence[str] | None = None, *,
             parts: Sequence[Path] | None = None) -> Any:
        """:class:`~mlserve.features.historical.ViewSource`: the pinned parts, read once."""
        cols = tuple(view.column_names if columns is None else columns)
        key = (view.ref, cols)
        if key not in self._loaded:
            offline = self.store.offline
            directory = offline.view_dir(view)
            files = [directory / name for name in self.parts[view.ref]]
            if not all(f.is_file() for f in files):
                offline.parts(view)  # a shared store: this machine's copies fetched
            gone = [f.name for f in files if not f.is_file()]
            if gone:
                raise InvalidInput(f"feature view {view.ref}: part file(s) {', '.join(gone)} "
                                   f"of the offline store at {self.store.location} are gone "
                                   "since this job started; start it again with a new output")
            if self.store.cache_base is not None:  # a shared store's copies: gc leaves them
                for f in files:
                    touch(f)
            self._loaded[key] = offline.load(view, cols, parts=files)
        return self._loaded[key]

    def __call__(self, frame: Any) -> Any:
        """``frame`` with the features added (``<view>__<column>``), as training typed them."""
        from mlserve.features.historical import historical_features
        from mlserve.trainer.features import training_column

        if self.as_of is not None:
            frame = frame.assign(**{self.timestamp: self.as_of_time()})
        elif self.timestamp not in frame.columns:
            raise InvalidInput(
                f"the rows have no column {self.timestamp!r}: the model's stored features are "
                f"joined as of each row's time; add that column or score every row as of one "
                f"time (as_of=..., --as-of 2026-01-31T12:00:00Z or now)")
        joined = historical_features(self, frame, self.selections,
                                     timestamp_column=self.timestamp)
        dtypes = [view.column(c).dtype for view, cols in self.selections for c in cols]
        for name, dtype in zip(self.feature_columns, dtypes, strict=True):
            joined[name] = training_column(joined[name], dtype)
        return joined

    def as_of_time(self) -> Any:
        import pandas as pd

        from mlserve.features._time import to_ns

        return pd.Timestamp(to_ns(self.as_of, "as_of"), unit="ns", tz="UTC")

    def close(self) -> None:
        self._loaded.clear()
        self.store.close()


class BatchScorer:
    """Scores tables with one model: ``scorer(table) -> table with prediction columns``.

    Args:
        model: a registry ref (``NAME``, ``NAME/VERSION``, ``NAME@ALIAS``) or a bundle
            directory. Runners pin a ref to ``NAME/VERSION`` first so every worker scores with
            the same version.
        registry: the registry (or its root) for a ref; None: ``$MLSERVE_HOME/registry``.
        backend: ``onnxruntime`` (alias ``cpu``), ``torch``, ``torch-cuda`` or ``tensorrt``.
        device: the GPU of the GPU backends.
        keep: the input columns copied to the output, in this order (None: all of them).
        feature_store: for a model trained on a feature service: the store (default: the one
            its lineage names, else the default store).
        as_of: score every row's stored features as of this time (ISO 8601 or ``now``)
            instead of the row's timestamp column.
        feature_parts: the offline part files per view (see :class:`PointInTimeJoin`).
        with_features: add the joined stored feature columns to the output too.
        threshold: a binary model's ``predicted_class`` is its positive class where the
            probability is at least this.
        batch_rows: rows per model call.
    """

    def __init__(self, model: str | os.PathLike[str], *, registry: Any = None,
                 backend: str = "onnxruntime", device: int = 0,
                 keep: Sequence[str] | None = None,
                 feature_store: StoreLike | None = None, as_of: Any = None,
                 feature_parts: Mapping[str, Sequence[str]] | None = None,
                 with_features: bool = False, threshold: float = 0.5,
                 batch_rows: int = BATCH_ROWS) -> None:
        from mlserve.config import BatcherConfig
        from mlserve.engine import Engine
        from mlserve.server.feature_join import lineage_service

        if batch_rows < 1:
            raise InvalidInput(f"batch_rows must be >= 1, got {batch_rows}")
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"threshold must be within [0, 1], got {threshold}")
        from mlserve.bundle import locate, retry_on_mismatch

        def load() -> Engine:
            path, registered = locate(model, registry)
            return Engine.from_bundle(
                path, registered=registered, backend=backend, device=device, histograms=False,
                config=BatcherConfig(max_batch_size=batch_rows, max_queue_delay_us=0))

        self.engine = retry_on_mismatch(load)
        try:
            self.bundle = self.engine.bundle
            self.inputs = list(self.bundle.signature.get("inputs") or [])
            self.keep = None if keep is None else list(dict.fromkeys(keep))
            self.with_features = with_features
            self.threshold = float(threshold)
            self.batch_rows = batch_rows
            lineage = self.bundle.manifest.get("lineage") or {}
            self.join = (PointInTimeJoin(self.bundle, feature_store=feature_store, as_of=as_of,
                                         parts=feature_parts)
                         if lineage_service(lineage) else None)
        except BaseException:
            self.engine.close()
            raise
        #: Columns of the scored rows the model reads; the rest is only copied when kept.
        self.required = required_columns(self.bundle, as_of)
        self.width = self._probe_width()
        self.columns = output_columns(self.bundle, self.width)

    def _probe_width(self) -> int:
        outputs = self.bundle.signature.get("outputs") or []
        shape = outputs[0].get("shape") if outputs else None
        if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) \
                and shape[1] > 0:
            return int(shape[1])
        y = self.engine.predict(np.zeros((1, len(self.inputs)), dtype=np.float32))
        return int(y.shape[1]) if y.ndim == 2 else 1

    # ---- scoring ---------------------------------------------------------------------------

    def predict(self, frame: Any) -> tuple[dict[str, np.ndarray], Any]:
        """The prediction columns of a DataFrame's rows, and the rows the model read (with the
        joined features, for ``with_features``)."""
        from mlserve.trainer.preprocess import encode_rows

        source = self.join(frame) if self.join is not None else frame
        x = encode_rows(source, self.inputs)
        if len(x) == 0:
            y = np.empty((0, self.width), dtype=np.float32)
        else:
            b = self.batch_rows
            y = np.concatenate(self.engine.predict_many([x[i:i + b]
                                                         for i in range(0, len(x), b)]))
            if y.ndim == 1:
                y = y[:, None]
        if y.shape[1] != self.width:
            raise InvalidInput(f"model {self.bundle.ref} answered {y.shape[1]} values per row; "
                               f"its signature says {self.width}")
        cols = {name: np.ascontiguousarray(y[:, j]) for j, name in
                enumerate(self.columns[:self.width])}
        label = predicted_class(self.bundle, y, self.threshold)
        if label is not None:
            cols["predicted_class"] = label
        return cols, source

    def _kept(self, names: Sequence[str]) -> list[str]:
        if self.keep is None:
            kept = list(names)
        else:
            missing = [c for c in self.keep if c not in names]
            if missing:
                raise InvalidInput(f"keep: column(s) {', '.join(missing)} are not in the rows "
                                   f"(columns: {', '.join(map(str, names))})")
            kept = self.keep
        clash = [c for c in self.columns if c in kept]
        if clash:
            raise InvalidInput(f"the output column(s) {', '.join(clash)} would replace input "
                               "column(s) of the same name; keep only the other columns "
                               "(keep=[...], --keep)")
        return kept

    def _extra(self, source: Any) -> dict[str, Any]:
        if not self.with_features or self.join is None:
            return {}
        return {c: source[c] for c in self.join.feature_columns}

    def score_frame(self, frame: Any) -> Any:
        """A pandas DataFrame in, the kept columns plus predictions out (same index)."""
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            raise InvalidInput(f"expected a pandas DataFrame, got {type(frame).__name__}")
        kept = self._kept([str(c) for c in frame.columns])
        cols, source = self.predict(frame)
        labels = {str(c): c for c in frame.columns}  # kept names are strings; labels may not be
        out = frame[[labels[c] for c in kept]].copy()
        for name, values in self._extra(source).items():
            out[name] = values.to_numpy() if hasattr(values, "to_numpy") else values
        for name, values in cols.items():
            out[name] = values
        return out

    def score_table(self, table: Any) -> Any:
        """A pyarrow Table in, the kept columns plus predictions out. Only the columns the
        model reads are converted to pandas; kept columns are copied as they are."""
        import pyarrow as pa

        if not isinstance(table, pa.Table):
            raise InvalidInput(f"expected a pyarrow Table, got {type(table).__name__}")
        kept = self._kept(table.column_names)
        read = [c for c in self.required if c in table.column_names]
        frame = table.select(read).to_pandas()
        if len(frame) != table.num_rows:  # a table with no columns read converts to 0 rows
            frame = frame.reindex(range(table.num_rows))
        cols, source = self.predict(frame)
        out = table.select(kept)
        for name, values in self._extra(source).items():
            out = out.append_column(name, pa.Array.from_pandas(values))
        for name, values in cols.items():
            out = out.append_column(name, pa.array(values))
        return out

    def score_arrays(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A dict of numpy arrays (Ray Data's ``numpy`` format) in, the kept arrays as given
        (strings with None, multi-dimensional tensor columns) plus predictions out. Only the
        columns the model reads go through pandas."""
        import pandas as pd

        arrays = {str(k): np.asarray(v) for k, v in batch.items()}
        kept = self._kept(list(arrays))
        n = len(next(iter(arrays.values()), ()))
        frame = pd.DataFrame({c: arrays[c] for c in self.required if c in arrays},
                             index=pd.RangeIndex(n))
        cols, source = self.predict(frame)
        out = {c: arrays[c] for c in kept}
        for name, values in self._extra(source).items():
            out[name] = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
        out.update(cols)
        return out

    def __call__(self, batch: Any) -> Any:
        """Ray Data's batch formats: ``pyarrow``, ``pandas`` or ``numpy`` (a dict of arrays).
        pyarrow is only needed for its own format."""
        import pandas as pd

        if isinstance(batch, pd.DataFrame):
            return self.score_frame(batch)
        if isinstance(batch, Mapping):
            return self.score_arrays(batch)
        if type(batch).__module__.startswith("pyarrow"):
            return self.score_table(batch)
        raise InvalidInput("expected a pyarrow Table, a pandas DataFrame or a dict of numpy "
                           f"arrays, got {type(batch).__name__}")

    def close(self) -> None:
        self.engine.close()
        if self.join is not None:
            self.join.close()

    def __enter__(self) -> BatchScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
