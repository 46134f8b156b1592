"""Timers for the scenarios: warm-up, calibrated inner loops, interleaved repeats, medians.

All clocks are ``time.perf_counter_ns``. Variants measured together are interleaved (one sample
of each per round) so that a noisy neighbour slows every variant alike instead of one of them.
Not thread-safe; call from one thread.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Fn = Callable[[], object]


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of a non-empty sequence."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def calibrate_inner(fn: Fn, target_sample_ns: int, max_inner: int = 1_000_000) -> int:
    """How many calls of ``fn`` fill about ``target_sample_ns`` (at least 1)."""
    inner = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= target_sample_ns // 4 or inner >= max_inner:
            break
        inner *= 4
    per_call = max(elapsed / inner, 1.0)
    return int(min(max_inner, max(1, round(target_sample_ns / per_call))))


def interleaved_per_call_ns(
    fns: Mapping[str, Fn],
    *,
    repeats: int,
    warmup: int,
    target_sample_ns: int,
) -> dict[str, list[float]]:
    """Per-call times (ns) of each function: ``repeats`` samples each, interleaved by round.

    Each function first runs ``warmup`` times (the calibration's first call counts as one),
    then gets an inner loop count filling about ``target_sample_ns`` per sample; a sample is
    the mean per call of one inner loop.
    """
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(warmup - 1):
            fn()
        inner[name] = calibrate_inner(fn, max(target_sample_ns, 1))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            k = inner[name]
            t0 = time.perf_counter_ns()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter_ns() - t0) / k)
    return samples


def interleaved_each_call_ns(
    fns: Mapping[str, Fn], *, calls: int, warmup: int, rounds: int = 10
) -> dict[str, list[float]]:
    """Times every call separately (for latency percentiles): ``calls`` per function, made in
    ``rounds`` interleaved chunks after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.perf_counter_ns
    chunk = max(1, calls // rounds)
    done = 0
    while done < calls:
        step = min(chunk, calls - done)
        for name, fn in fns.items():
            times = out[name]
            for _ in range(step):
                t0 = clock()
                fn()
                times.append(float(clock() - t0))
        done += step
    return out


def interleaved_ops_ms(targets: Mapping[str, Any],
                       ops: Mapping[str, tuple[Callable[[Any], object], int, int]]
                       ) -> dict[str, dict[str, list[float]]]:
    """``{target: {op: [ms of each call]}}``: for each op ``(fn, calls, warmup)``, ``fn(target)``
    timed call by call, the targets (e.g. a local and a remote store) called alternately."""
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
    for op, (fn, n, warmup) in ops.items():
        timed = interleaved_each_call_ns(
            {name: functools.partial(fn, target) for name, target in targets.items()},
            calls=n, warmup=warmup, rounds=n)
        for name, ns in timed.items():
            runs[name][op] = [t / 1e6 for t in ns]
    return runs
