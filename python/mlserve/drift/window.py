"""Windows of traffic for the online statistics, made of per-interval chunks.

A :class:`Chunk` is what one monitoring interval saw: the deltas of the core's cumulative
histogram counters (per feature: bins + a missing bin), the prediction histogram, and the
interval's uniform row sample (raw input and output rows) with the number of rows it was drawn
from. :class:`Windows` keeps the chunks a :class:`~mlserve.drift.config.WindowSpec` needs and
merges them into :class:`WindowData`: counts add up exactly; samples merge into one uniform
sample of the window (each chunk contributes in proportion to the rows it saw, at the lowest
sampling rate of any chunk, capped at ``sample_rows``).

Not thread-safe: one monitor task owns each instance.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from mlserve.drift.config import WindowSpec


@dataclass
class WindowData:
    """Current traffic to compare with the reference."""

    rows: int
    """Rows counted in the histograms."""
    counts: dict[str, np.ndarray]
    """Per feature: counts per reference bin (numeric) or slot (categorical), missing last."""
    prediction_counts: np.ndarray | None
    """Prediction bins (or classes), missing last; None when not recorded."""
    inputs: np.ndarray
    """Uniform sample of the raw input rows, float32 [m, f_in]."""
    outputs: np.ndarray
    """The model's outputs for those rows, float32 [m, width]."""
    start: float = 0.0
    """Unix seconds: when the window's first interval began."""
    end: float = 0.0
    """Unix seconds: when its last interval ended."""


@dataclass
class Chunk(WindowData):
    """One monitoring interval (a WindowData of one interval, plus how many rows its sample
    was drawn from)."""

    sample_seen: int = 0


class Windows:
    """The chunks of the current window(s) under ``spec``; ``add`` one chunk per interval.
    Merged samples hold at most ``sample_rows`` rows."""

    def __init__(self, spec: WindowSpec, sample_rows: int = 5000, seed: int = 0) -> None:
        self.spec = spec
        self.sample_rows = sample_rows
        self._chunks: deque[Chunk] = deque()
        self._tumbling_id: int | None = None
        self._rng = np.random.default_rng(seed)

    def add(self, chunk: Chunk) -> WindowData | None:
        """Adds one interval. Returns the window to evaluate now: for sliding windows the latest
        one (every call), for tumbling windows one that just closed (else None)."""
        spec = self.spec
        if spec.kind == "sliding":
            self._chunks.append(chunk)
            if spec.by == "time":
                while self._chunks and self._chunks[0].end <= chunk.end - spec.size:
                    self._chunks.popleft()
            else:
                while (len(self._chunks) > 1
                       and sum(c.rows for c in self._chunks) - self._chunks[0].rows >= spec.size):
                    self._chunks.popleft()
            return self.merge(list(self._chunks))
        if spec.by == "time":
            window_id = math.floor((chunk.start + chunk.end) / 2.0 / spec.size)
            closed = None
            if self._tumbling_id is not None and window_id != self._tumbling_id and self._chunks:
                closed = self.merge(list(self._chunks))
                self._chunks.clear()
            self._tumbling_id = window_id
            self._chunks.append(chunk)
            return closed
        self._chunks.append(chunk)
        if sum(c.rows for c in self._chunks) >= spec.size:
            closed = self.merge(list(self._chunks))
            self._chunks.clear()
            return closed
        return None

    def pending_rows(self) -> int:
        """Rows in the chunks held now (a tumbling window's rows so far)."""
        return sum(c.rows for c in self._chunks)

    def merge(self, chunks: list[Chunk]) -> WindowData:
        """One window from consecutive chunks (at least one)."""
        first = chunks[0]
        counts = {name: sum((c.counts[name] for c in chunks), np.zeros_like(v))
                  for name, v in first.counts.items()}
        prediction = None
        if first.prediction_counts is not None:
            prediction = sum((c.prediction_counts for c in chunks if c.prediction_counts is not None
                              and c.prediction_counts.shape == first.prediction_counts.shape),
                             np.zeros_like(first.prediction_counts))
        inputs, outputs = self._merge_samples(chunks)
        return WindowData(rows=sum(c.rows for c in chunks), counts=counts,
                          prediction_counts=prediction, inputs=inputs, outputs=outputs,
                          start=first.start, end=chunks[-1].end)

    def _merge_samples(self, chunks: list[Chunk]) -> tuple[np.ndarray, np.ndarray]:
        first = chunks[0]
        width = max((c.outputs.shape[1] for c in chunks if len(c.outputs)), default=0)
        usable = [c for c in chunks if c.sample_seen > 0 and len(c.inputs)
                  and (c.outputs.shape[1] == width)]
        if not usable:
            return (np.empty((0, first.inputs.shape[1]), np.float32),
                    np.empty((0, width), np.float32))
        # Every row of the window is kept with the same probability: the lowest rate of any chunk.
        rate = min(len(c.inputs) / c.sample_seen for c in usable)
        parts_in, parts_out = [], []
        for c in usable:
            take = min(len(c.inputs), round(rate * c.sample_seen))
            pick = (np.arange(len(c.inputs)) if take == len(c.inputs)
                    else self._rng.choice(len(c.inputs), size=take, replace=False))
            parts_in.append(c.inputs[pick])
            parts_out.append(c.outputs[pick])
        inputs = np.concatenate(parts_in)
        outputs = np.concatenate(parts_out)
        if len(inputs) > self.sample_rows:
            pick = self._rng.choice(len(inputs), size=self.sample_rows, replace=False)
            inputs, outputs = inputs[pick], outputs[pick]
        return inputs, outputs
