"""The drift report of a table: the online machinery run once over a file.

:func:`table_report` scores the table with the model (an Engine from the bundle, with the same
histograms and row sample the server uses, so the numbers are computed exactly as online),
turns the engine's counters and sample into one window and compares it with the bundle's
reference (:func:`~mlserve.drift.analysis.analyze`). When the table holds the label column,
the model's metrics on it are reported next to the training metrics.

Categories outside a feature's vocabulary count as unseen (the OOV slot) whatever the serving
policy, so a table with new categories is reported on rather than refused.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlserve.drift.analysis import DriftReport, analyze
from mlserve.drift.config import DriftConfig
from mlserve.drift.monitor import EngineMonitor, MonitorSettings
from mlserve.drift.profile import ReferenceProfile
from mlserve.errors import InvalidInput

#: Rows per request when scoring the table (also the batcher's max_batch_size).
CHUNK_ROWS = 4096


@dataclass
class TableReport:
    """A table against a model's reference."""

    model: str
    version: str
    source: str
    drift: DriftReport
    profile: ReferenceProfile
    reference_metrics: dict[str, Any] = field(default_factory=dict)
    """The bundle's held-out metrics from training."""
    current_metrics: dict[str, Any] | None = None
    """The model's metrics on the table (when it has the label column)."""

    def to_dict(self, histograms: bool = True) -> dict[str, Any]:
        def clean(d: dict[str, Any] | None) -> dict[str, Any] | None:
            if d is None:
                return None
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in d.items()}

        return {"model": self.model, "version": self.version, "source": self.source,
                "reference_rows": self.profile.rows, "drift": self.drift.to_dict(histograms),
                "reference_metrics": clean(self.reference_metrics),
                "current_metrics": clean(self.current_metrics)}


def resolve_bundle(ref: str, registry: Any = None) -> Any:
    """A :class:`mlserve.bundle.ModelBundle` from a bundle directory (an absolute or ``./``
    path) or a registry ref (:func:`mlserve.bundle.load_model`) in ``registry`` (a location
    or a :class:`~mlserve.registry.Registry`)."""
    from mlserve.bundle import load_model

    return load_model(ref, registry)


def table_report(bundle: Any, data: str | os.PathLike[str] | Any, *,
                 config: DriftConfig | None = None, sample_rows: int = 5000,
                 progress: Callable[[int, int], None] | None = None) -> TableReport:
    """Compares the table ``data`` (a CSV/Parquet path or a DataFrame) with ``bundle``'s
    reference. ``progress(done_rows, total_rows)`` is called as scoring advances."""
    from mlserve.trainer.load import read_table
    from mlserve.trainer.preprocess import encode_rows

    frame, source = read_table(data)
    if len(frame) == 0:
        raise InvalidInput(f"{source}: the table has no rows")
    profile = ReferenceProfile.from_bundle(bundle)
    inputs = list(bundle.signature.get("inputs") or [])
    x = encode_rows(frame, inputs, unknown="oov")
    label = bundle.manifest.get("label")
    codes = None
    if label and label in frame.columns:
        y = frame[label].to_numpy()
        keep = ~frame[label].isna().to_numpy()
        codes = np.full(len(frame), np.nan)
        if keep.any():
            classes = [str(c) for c in bundle.manifest.get("classes") or []]
            codes[keep] = (y[keep].astype(np.float64) if profile.task == "regression" else
                           np.array([classes.index(str(v)) if str(v) in classes else int(v)
                                     for v in y[keep]]))
    return _report(bundle, profile, x, source, codes, config, sample_rows, progress)


def log_report(bundle: Any, location: str | os.PathLike[str], *, since_ns: int | None = None,
               config: DriftConfig | None = None, sample_rows: int = 5000,
               progress: Callable[[int, int], None] | None = None) -> TableReport:
    """The report of what ``bundle``'s model version served, from the prediction log at
    ``location`` (:mod:`mlserve.predlog`): its logged input rows since ``since_ns`` (all when
    None) against the reference, and its metrics, computed from the logged outputs (what was
    served, on whichever backend), on the rows whose labels came back (the last label of each
    row) from any replica. Labels that are no class of this version are left out and
    counted in the source line."""
    import pandas as pd

    from mlserve.predlog import RESERVED, input_column, joined, read_labels, read_predictions

    from .performance import label_codes

    profile = ReferenceProfile.from_bundle(bundle)
    # The server logs a bundle directory without a registry version as version 1.
    frame = joined(read_predictions(location, bundle.name, str(bundle.version or 1),
                                    since_ns=since_ns),
                   read_labels(location, bundle.name, since_ns=since_ns))
    names = [input_column(n) for n in bundle.plan().input_names]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise InvalidInput(f"the prediction log's rows of {bundle.name} lack the model's "
                           f"inputs {', '.join(missing)}: logged by another model?")
    x = np.ascontiguousarray(frame[names].to_numpy(np.float32))
    outputs = [c for c in frame.columns if c not in RESERVED and c not in names]
    served = np.ascontiguousarray(frame[outputs].to_numpy(np.float32))
    texts = frame["label"]
    given = texts.notna().to_numpy()
    if profile.task == "regression":
        codes = pd.to_numeric(texts, errors="coerce").to_numpy(np.float64)
        codes[~np.isfinite(codes)] = np.nan
    else:  # one check per distinct label, then a vectorized map
        classes = bundle.manifest.get("classes")
        table: dict[str, float] = {}
        for text in texts.dropna().unique():
            try:
                table[text] = float(label_codes(profile.task, classes, [text])[0])
            except InvalidInput:
                continue
        codes = texts.map(table).to_numpy(np.float64)
    labelled = int(np.isfinite(codes).sum())
    unfit = int(given.sum()) - labelled
    source = (f"{location} ({len(frame):,} logged rows, {labelled:,} labelled"
              + (f", {unfit:,} labels that are no class of this version left out" if unfit
                 else "") + ")")
    return _report(bundle, profile, x, source, codes, config, sample_rows, progress,
                   served=served)


def _report(bundle: Any, profile: ReferenceProfile, x: np.ndarray, source: str,
            codes: np.ndarray | None, config: DriftConfig | None, sample_rows: int,
            progress: Callable[[int, int], None] | None,
            served: np.ndarray | None = None) -> TableReport:
    """Scores ``x`` (raw rows) as the server would, compares the window with the reference,
    and evaluates the predictions (``served`` when given: the outputs logged as served) of
    the rows whose label code (``codes``) is not NaN."""
    from mlserve.config import BatcherConfig
    from mlserve.engine import Engine
    from mlserve.trainer.evaluate import evaluate

    engine = Engine(bundle.plan(), bundle.model_for("onnxruntime"), backend="onnxruntime",
                    config=BatcherConfig(max_batch_size=CHUNK_ROWS, max_queue_delay_us=0),
                    name=bundle.name, version=str(bundle.version or 0))
    try:
        settings = MonitorSettings(drift=config or DriftConfig(), sample_rows=sample_rows,
                                   log_entries=0)
        monitor = EngineMonitor(engine, profile, settings)
        outputs = []
        step = CHUNK_ROWS * 16
        for start in range(0, len(x), step):
            part = x[start:start + step]
            outputs.extend(engine.predict_many(
                [part[i:i + CHUNK_ROWS] for i in range(0, len(part), CHUNK_ROWS)]))
            if progress is not None:
                progress(min(start + step, len(x)), len(x))
        chunk = monitor.read_chunk(time.time())
    finally:
        engine.close()
    window = monitor.windows.merge([chunk])
    drift = analyze(profile, window, settings.drift)
    current = None
    if codes is not None:
        keep = ~np.isnan(codes)
        if keep.any():
            predictions = served if served is not None else np.concatenate(outputs)
            current = evaluate(profile.task, codes[keep], predictions[keep])
    return TableReport(model=bundle.name, version=str(bundle.version or ""), source=source,
                       drift=drift, profile=profile, reference_metrics=bundle.metrics,
                       current_metrics=current)
