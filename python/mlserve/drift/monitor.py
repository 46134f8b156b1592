"""EngineMonitor: the online drift statistics of one served model version.

Fed without touching the request path: every interval, :meth:`EngineMonitor.tick` reads the
engine's cumulative histogram counters (counted by the core in the normalization pass) and takes
the row sample and prediction histogram the core recorded per executed batch
(``Engine.sample(reset=True)``), turns them into one :class:`~mlserve.drift.window.Chunk` (the
counter deltas since the previous tick), adds it to the windows and, when a window is due,
compares it with the bundle's reference (:func:`~mlserve.drift.analysis.analyze`).

Thread-safety: ``tick`` is meant for one thread at a time (the server runs it in a worker thread,
off the event loop); ``latest`` is replaced by a new object in one assignment, so readers on
other threads see either the previous report or the new one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlserve.drift.analysis import DriftReport, analyze
from mlserve.drift.config import DriftConfig, WindowSpec
from mlserve.drift.profile import CategoricalReference, ReferenceProfile
from mlserve.drift.window import Chunk, Windows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings:
    """What one engine monitor records and how it judges."""

    window: WindowSpec = field(default_factory=WindowSpec)
    drift: DriftConfig = field(default_factory=DriftConfig)
    sample_rows: int = 5000
    """Rows of the window's uniform sample (KS/Wasserstein, out-of-range rates)."""
    chunk_sample_rows: int | None = None
    """Rows the core samples per interval (None: ``sample_rows``). A sliding window of many
    intervals needs only a share of ``sample_rows`` from each: see :func:`chunk_sample_rows`."""
    log_entries: int = 100_000
    """Requests kept in the prediction log for feedback (0: no log)."""
    log_max_age_s: float = 3600.0
    """Oldest logged prediction feedback can still join, in seconds (0: no age bound)."""
    seed: int = 0


def chunk_sample_rows(sample_rows: int, window: WindowSpec, interval_s: float) -> int:
    """Rows to sample per interval so that a window by time still merges into about
    ``sample_rows`` rows: twice its share of them (traffic varies between intervals), at least
    100, at most ``sample_rows``; windows by rows take ``sample_rows`` per interval."""
    if window.by != "time":
        return sample_rows
    intervals = max(1.0, window.size / interval_s)
    return int(min(sample_rows, max(100, math.ceil(2 * sample_rows / intervals))))


def histogram_bins(snapshot: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per feature of an ``Engine.histograms()`` snapshot, its counts as drift bins: numeric
    counts with underflow folded into the first bin and overflow into the last, then NaN;
    categorical slot counts then missing."""
    out: dict[str, np.ndarray] = {}
    for name, h in snapshot["features"].items():
        counts = np.asarray(h["counts"], dtype=np.int64).copy()
        if h["kind"] == "numeric":
            if counts.size:
                counts[0] += int(h["underflow"])
                counts[-1] += int(h["overflow"])
            out[name] = np.append(counts, int(h["nan"]))
        else:
            out[name] = np.append(counts, int(h["missing"]))
    return out


class EngineMonitor:
    """Windows and drift reports of one engine (see the module docstring)."""

    def __init__(self, engine: Any, profile: ReferenceProfile,
                 settings: MonitorSettings | None = None) -> None:
        self.engine = engine
        self.profile = profile
        self.settings = settings or MonitorSettings()
        self.windows = Windows(self.settings.window, self.settings.sample_rows, self.settings.seed)
        prediction = profile.prediction
        argmax = isinstance(prediction, CategoricalReference)
        edges = [] if prediction is None or argmax else list(prediction.edges)  # type: ignore[union-attr]
        per_interval = self.settings.chunk_sample_rows or self.settings.sample_rows
        engine.configure_monitoring(
            sample_rows=per_interval, prediction_edges=edges,
            prediction_argmax=argmax, seed=self.settings.seed,
            log_entries=self.settings.log_entries, log_max_age_s=self.settings.log_max_age_s)
        self._previous = histogram_bins(engine.histograms(reset=False))
        self._last_tick = time.time()
        #: The newest report (None until a window was evaluated).
        self.latest: DriftReport | None = None
        #: Rows of the window being filled (tumbling) or of the latest window (sliding).
        self.window_rows = 0

    def tick(self, now: float | None = None) -> DriftReport | None:
        """Reads one interval from the engine; returns a new report when a window was due."""
        now = time.time() if now is None else now
        chunk = self.read_chunk(now)
        window = self.windows.add(chunk)
        self.window_rows = window.rows if window is not None and self.settings.window.kind == \
            "sliding" else self.windows.pending_rows()
        if window is None:
            return None
        report = analyze(self.profile, window, self.settings.drift)
        self.latest = report
        return report

    def read_chunk(self, now: float) -> Chunk:
        """The interval since the previous read as a chunk (counter deltas and the sample)."""
        current = histogram_bins(self.engine.histograms(reset=False))
        sample = self.engine.sample(reset=True)
        counts: dict[str, np.ndarray] = {}
        for name, reference in self.profile.features.items():
            now_counts = current.get(name)
            if now_counts is None or now_counts.shape != (reference.bins,):
                continue  # the plan's histogram does not match the reference's bins
            before = self._previous.get(name)
            delta = now_counts - before if before is not None and before.shape == \
                now_counts.shape else now_counts
            if (delta < 0).any():  # someone reset the counters: count from zero again
                delta = now_counts
            counts[name] = delta
        self._previous = current
        prediction_counts = None
        predicted = np.asarray(sample["prediction_counts"], dtype=np.int64)
        if predicted.size:
            prediction_counts = np.append(predicted, int(sample["prediction_missing"]))
        rows = int(max((int(c.sum()) for c in counts.values()), default=sample["seen"]))
        chunk = Chunk(rows=rows, counts=counts, prediction_counts=prediction_counts,
                      inputs=np.asarray(sample["inputs"]), outputs=np.asarray(sample["outputs"]),
                      start=self._last_tick, end=now, sample_seen=int(sample["seen"]))
        self._last_tick = now
        return chunk
