"""Typed configuration of the dynamic batcher (Triton's dynamic_batching options).

Bounds are validated once, by the C++ core, which raises InvalidInput naming the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatcherConfig:
    """How requests are grouped into batches and executed."""

    max_batch_size: int = 64
    """Most rows in one batch; a request with more rows is rejected (InvalidInput)."""
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)
    """Row counts to cut at once when the whole queue forms one (and to prefer after the delay)."""
    max_queue_delay_us: int = 100
    """Longest the oldest queued request waits for a batch to fill (0: cut at once)."""
    max_queue_size: int = 0
    """Most queued requests; beyond it submits fail at once with QueueFull. 0: unbounded."""
    default_timeout_us: int = 0
    """Timeout of requests that give none; expired while queued -> DeadlineExceeded. 0: none."""
    priority_levels: int = 1
    """Request priorities are 1..priority_levels, 1 the highest; 0 means the default level."""
    default_priority_level: int = 0
    """Level of requests with priority 0; 0 means the lowest level (priority_levels)."""
    preserve_ordering: bool = False
    """Publish results in the order batches were formed, even across instances."""
    instance_count: int = 1
    """Worker threads, each executing whole batches (one intra-op thread each for onnxruntime)."""
    normalize_threads: int = 1
    """Threads that split the normalization of one large batch."""
    inline_max_compute_us: int = 0
    """For ``Engine.apredict`` (asyncio): run batches on the event loop's own thread, right after
    the requests that fill them were submitted, while the model's mean batch compute time stays
    at most this many µs; 0 (the default): always hand batches to the worker threads. For tiny
    models on few cores the hand-off (a worker wake-up, the GIL moving to the worker and back,
    the completion wake-up) costs more than the batch itself; a slower model keeps the loop free
    by running on the workers (the core measures the compute time and decides per batch).
    Not used by device backends, by ``preserve_ordering`` batchers, or by synchronous callers."""

    def core_kwargs(self) -> dict[str, Any]:
        kw = asdict(self)
        kw["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        del kw["inline_max_compute_us"]  # the engine's, not the batcher's
        return kw
