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

    def core_kwargs(self) -> dict[str, Any]:
        kw = asdict(self)
        kw["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return kw
