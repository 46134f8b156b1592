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


#: The layout entry that marks a chunk with non-integer counts (merged from the chunks, never from
#: running totals).
_INEXACT: tuple[str, tuple[int, ...]] = ("", (-1,))


class Windows:
    """The chunks of the current window(s) under ``spec``; ``add`` one chunk per interval.
    Merged samples hold at most ``sample_rows`` rows."""

    def __init__(self, spec: WindowSpec, sample_rows: int = 5000, seed: int = 0) -> None:
        self.spec = spec
        self.sample_rows = sample_rows
        self._chunks: deque[Chunk] = deque()
        self._tumbling_id: int | None = None
        self._rng = np.random.default_rng(seed)
        # Running totals of the sliding window's chunks (a sliding window is merged every
        # interval; re-adding hundreds of chunks' counts was most of a tick's merge): rows, the
        # counts per (feature, shape), the prediction counts per shape, and how many chunks have
        # each set of features and shapes (totals answer only while that set is the same for all).
        self._rows = 0
        self._totals: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._prediction_totals: dict[tuple[int, ...], np.ndarray] = {}
        self._layouts: dict[tuple[tuple[str, tuple[int, ...]], ...], int] = {}

    def add(self, chunk: Chunk) -> WindowData | None:
        """Adds one interval. Returns the window to evaluate now: for sliding windows the latest
        one (every call), for tumbling windows one that just closed (else None)."""
        spec = self.spec
        if spec.kind == "sliding":
            self._push(chunk)
            if spec.by == "time":
                while self._chunks and self._chunks[0].end <= chunk.end - spec.size:
                    self._pop()
            else:
                while len(self._chunks) > 1 and self._rows - self._chunks[0].rows >= spec.size:
                    self._pop()
            return self._sliding_window()
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

    @staticmethod
    def _layout(chunk: Chunk) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """A chunk's features with their shapes; non-integer counts (whose running sums would
        not be exact) make a layout of their own that the totals never answer for."""
        layout = tuple((name, np.shape(v)) for name, v in chunk.counts.items())
        exact = all(np.asarray(v).dtype.kind in "iu" for v in chunk.counts.values()) and (
            chunk.prediction_counts is None
            or np.asarray(chunk.prediction_counts).dtype.kind in "iu")
        return layout if exact else (*layout, _INEXACT)

    def _push(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self._account(chunk, 1)

    def _pop(self) -> None:
        self._account(self._chunks.popleft(), -1)

    def _account(self, chunk: Chunk, sign: int) -> None:
        """Adds (sign 1) or takes away (sign -1) a chunk's rows and counts from the totals
        (integer counts only: the totals are int64 and exact)."""
        self._rows += sign * chunk.rows
        layout = self._layout(chunk)
        left = self._layouts.get(layout, 0) + sign
        if left:
            self._layouts[layout] = left
        else:
            self._layouts.pop(layout, None)
        if layout and layout[-1] == _INEXACT:
            return
        for key, v in zip(layout, chunk.counts.values(), strict=True):
            total = self._totals.get(key)
            if total is None:
                total = self._totals[key] = np.zeros(key[1], dtype=np.int64)
            total += sign * np.asarray(v, dtype=np.int64)
        if chunk.prediction_counts is not None:
            shape = np.shape(chunk.prediction_counts)
            total = self._prediction_totals.get(shape)
            if total is None:
                total = self._prediction_totals[shape] = np.zeros(shape, dtype=np.int64)
            total += sign * np.asarray(chunk.prediction_counts, dtype=np.int64)
        if not self._chunks:  # nothing left: drop the keys of layouts that came and went
            self._totals.clear()
            self._prediction_totals.clear()

    def _sliding_window(self) -> WindowData:
        """merge(self._chunks), with the counts from the running totals when every chunk has the
        same features and shapes (else merged from the chunks)."""
        chunks = list(self._chunks)
        if len(self._layouts) != 1 or _INEXACT in next(iter(self._layouts)):
            return self.merge(chunks)
        first = chunks[0]
        counts = {name: self._totals[(name, np.shape(v))].astype(np.asarray(v).dtype)
                  for name, v in first.counts.items()}
        prediction = None
        if first.prediction_counts is not None:
            prediction = self._prediction_totals[np.shape(first.prediction_counts)].astype(
                np.asarray(first.prediction_counts).dtype)
        inputs, outputs = self._merge_samples(chunks)
        return WindowData(rows=self._rows, counts=counts, prediction_counts=prediction,
                          inputs=inputs, outputs=outputs, start=first.start, end=chunks[-1].end)

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
