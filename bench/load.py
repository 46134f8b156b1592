"""Closed-loop load generators: N threads or N asyncio tasks, each looping one request.

Each measures requests completed inside a window that opens after a warm-up and lasts a fixed
duration; requests still in flight when it closes are not counted. A failing request stops
the measurement and is re-raised in the caller.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np


def threads_rate(
    predict: Callable[[np.ndarray], object], x: np.ndarray, n: int, warm_s: float, dur_s: float
) -> float:
    """Requests/s completed by ``n`` threads looping ``predict(x)``."""
    counts = [0] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n + 1)
    clock = time.perf_counter_ns
    window: list[int] = []

    def loop(i: int) -> None:
        try:
            barrier.wait()
            begin, end = window
            done = 0
            while True:
                predict(x)
                now = clock()
                if now >= end:
                    break
                if now >= begin:
                    done += 1
            counts[i] = done
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=loop, args=(i,), name=f"bench-load-{i}") for i in range(n)]
    for w in workers:
        w.start()
    start = clock()
    window[:] = [start + int(warm_s * 1e9), start + int((warm_s + dur_s) * 1e9)]
    barrier.wait()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return sum(counts) / dur_s


def asyncio_rate(
    apredict: Callable[[np.ndarray], Awaitable[object]],
    x: np.ndarray,
    n: int,
    warm_s: float,
    dur_s: float,
) -> float:
    """Requests/s completed by ``n`` asyncio tasks looping ``await apredict(x)`` (own loop)."""
    clock = time.perf_counter_ns

    async def main() -> float:
        start = clock()
        begin, end = start + int(warm_s * 1e9), start + int((warm_s + dur_s) * 1e9)

        async def loop() -> int:
            done = 0
            while True:
                await apredict(x)
                now = clock()
                if now >= end:
                    return done
                if now >= begin:
                    done += 1

        counts = await asyncio.gather(*(loop() for _ in range(n)))
        return sum(counts) / dur_s

    return asyncio.run(main())
