"""Acceptance test of the Engine under concurrent load: many threads, tasks, sizes, priorities.

Every request carries its own id in an identity column of the plan (``rid``), and its expected
result is computed independently: ``FeaturePlan.transform`` of its own rows, then the same
row-wise function the backend computes. A result that belongs to another request, a lost or a
duplicated request, or counters that do not add up fail the test. Transform is row-wise, so the
reference transforms all rows of a thread at once and compares each request's slice.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from mlserve import Engine, FeaturePlan
from mlserve.errors import DeadlineExceeded, InternalError, QueueFull

WAIT_S = 60.0
MARKER = -12345.0

SPEC: dict[str, Any] = {
    "features": [
        {"name": "marker", "kind": "numeric", "ops": []},
        {"name": "rid", "kind": "numeric", "ops": []},
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [
                {"op": "impute", "value": 1.0},
                {"op": "clip", "lo": 0.0, "hi": 1000.0},
                {"op": "log1p"},
                {"op": "standardize", "mean": 2.0, "std": 1.5},
            ],
            "histogram": {"edges": [0.0, 1.0, 10.0, 100.0]},
        },
        {
            "name": "channel",
            "kind": "categorical",
            "ops": [{"op": "impute", "value": 0}, {"op": "onehot", "size": 4}],
            "histogram": True,
        },
        {"name": "merchant", "kind": "categorical", "ops": [{"op": "hash_bucket", "n": 8}]},
    ],
}

MakeEngine = Callable[..., Engine]


def numpy_fn(batch: np.ndarray) -> np.ndarray:
    """A row-wise numpy function of the batch: [sum, sum of squares, rid] per row."""
    b = batch.astype(np.float64)
    return np.stack([b.sum(axis=1), (b * b).sum(axis=1), b[:, 1]], axis=1).astype(np.float32)


def rowsum_fn(normalized: np.ndarray) -> np.ndarray:
    """What the core's "rowsum" backend computes: [n, 1]."""
    return normalized.astype(np.float64).sum(axis=1, keepdims=True).astype(np.float32)


@dataclass
class Workload:
    """Requests of one submitter: raw rows, request boundaries, ids, priorities."""

    x: np.ndarray
    bounds: np.ndarray  # request k is x[bounds[k]:bounds[k + 1]]
    rids: np.ndarray
    priorities: np.ndarray
    timeouts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def request(self, k: int) -> np.ndarray:
        return self.x[self.bounds[k] : self.bounds[k + 1]]

    def __len__(self) -> int:
        return len(self.rids)


def make_workload(seed: int, count: int, first_rid: int, max_rows: int = 16) -> Workload:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_rows + 1, size=count)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    n = int(bounds[-1])
    rids = np.arange(first_rid, first_rid + count)
    x = np.empty((n, 5), dtype=np.float32)
    x[:, 0] = rng.uniform(-1.0, 1.0, size=n)
    x[:, 1] = np.repeat(rids, sizes)
    x[:, 2] = rng.choice([-2.0, 0.0, 0.5, 3.0, 40.0, 700.0, 5000.0, np.nan], size=n)
    x[:, 3] = rng.choice([0.0, 1.0, 2.0, 3.0, 9.0, -1.0, np.nan], size=n)
    x[:, 4] = rng.integers(-100, 100, size=n)
    return Workload(x, bounds, rids, rng.integers(1, 4, size=count))


def reference(
    plan: FeaturePlan, work: Workload, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    return fn(plan.transform(work.x))


def run_threads(target: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "a submitter thread hung"
    if errors:
        raise errors[0]


def wait_for_stats(engine: Engine, completed: int) -> dict[str, Any]:
    """stats() once every finished batch is counted (counters trail the published results)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        stats = engine.stats()
        done = stats["completed"] + stats["failed"]
        if done >= completed or time.monotonic() > deadline:
            return stats
        time.sleep(0.001)


def check_stats_add_up(stats: dict[str, Any], executed_rows: int) -> None:
    assert stats["queued"] == 0
    assert stats["requests"] == (
        stats["completed"] + stats["failed"] + stats["timed_out"] + stats["cancelled"]
    )
    assert stats["batches"] == sum(stats["batch_sizes"].values())
    assert sum(k * v for k, v in stats["batch_sizes"].items()) == executed_rows


@pytest.fixture(scope="module")
def plan() -> FeaturePlan:
    return FeaturePlan(SPEC)


# ---- the acceptance run ---------------------------------------------------------------------

THREADS = 8
PER_THREAD = 5_000


@pytest.mark.parametrize("backend", ["rowsum", "python"])
def test_threads_get_their_own_results(
    make_engine: MakeEngine, plan: FeaturePlan, backend: str
) -> None:
    fn = rowsum_fn if backend == "rowsum" else numpy_fn
    engine = make_engine(
        plan,
        None if backend == "rowsum" else numpy_fn,
        backend=backend,
        max_batch_size=64,
        priority_levels=3,
        instance_count=2,
        max_queue_delay_us=200,
    )
    works = [make_workload(100 + t, PER_THREAD, 1 + t * PER_THREAD) for t in range(THREADS)]
    got: list[list[np.ndarray | None]] = [[None] * PER_THREAD for _ in range(THREADS)]

    def submitter(t: int) -> None:
        work, out = works[t], got[t]
        for k in range(PER_THREAD):
            out[k] = engine.predict(work.request(k), priority=int(work.priorities[k]))

    run_threads(submitter, THREADS)

    width = 3 if fn is numpy_fn else 1
    total_rows = 0
    for work, out in zip(works, got, strict=True):
        for k, y in enumerate(out):
            assert y is not None, f"request {work.rids[k]} got no result"
            assert y.shape == (work.bounds[k + 1] - work.bounds[k], width)
        np.testing.assert_allclose(
            np.concatenate(out), reference(plan, work, fn), rtol=1e-6, atol=1e-5
        )
        if fn is numpy_fn:  # the rid column: every row came back to its own request, once
            ids = np.concatenate(out)[:, 2]
            np.testing.assert_array_equal(ids, work.x[:, 1])
        total_rows += len(work.x)

    stats = wait_for_stats(engine, THREADS * PER_THREAD)
    assert stats["requests"] == stats["completed"] == THREADS * PER_THREAD
    assert stats["rows"] == total_rows
    assert stats["failed"] == stats["timed_out"] == stats["rejected"] == stats["cancelled"] == 0
    check_stats_add_up(stats, total_rows)
    assert max(stats["batch_sizes"]) > 16  # concurrent requests were batched together


def test_futures_from_many_threads_complete_once_each(
    make_engine: MakeEngine, plan: FeaturePlan
) -> None:
    engine = make_engine(
        plan,
        numpy_fn,
        max_batch_size=64,
        priority_levels=3,
        instance_count=2,
        max_queue_delay_us=200,
    )
    per_thread = 1_500
    works = [make_workload(200 + t, per_thread, 1 + t * per_thread) for t in range(THREADS)]
    completions: Counter[int] = Counter()
    lock = threading.Lock()
    futures: list[list[Any]] = [[] for _ in range(THREADS)]

    def submitter(t: int) -> None:
        work = works[t]
        for k in range(per_thread):
            fut = engine.submit(work.request(k), priority=int(work.priorities[k]))
            rid = int(work.rids[k])

            def done(_: Any, rid: int = rid) -> None:
                with lock:
                    completions[rid] += 1

            fut.add_done_callback(done)
            futures[t].append(fut)

    run_threads(submitter, THREADS)
    for work, futs in zip(works, futures, strict=True):
        ys = [f.result(timeout=WAIT_S) for f in futs]
        np.testing.assert_allclose(
            np.concatenate(ys), reference(plan, work, numpy_fn), rtol=1e-6, atol=1e-5
        )
    # A future's done-callbacks run just after its waiters are woken: let them finish.
    deadline = time.monotonic() + WAIT_S
    while sum(completions.values()) < THREADS * per_thread and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(completions) == THREADS * per_thread
    assert set(completions.values()) == {1}


# ---- failures, timeouts and a full queue under load ---------------------------------------------


def test_mixed_failures_and_timeouts_only_hit_their_own_requests(
    make_engine: MakeEngine, plan: FeaturePlan
) -> None:
    failed_rids: set[int] = set()
    failed_batches = 0

    def marker_fn(batch: np.ndarray) -> np.ndarray:
        nonlocal failed_batches
        if (batch[:, 0] == MARKER).any():  # called with the GIL held: no lock needed
            failed_rids.update(int(r) for r in batch[:, 1])
            failed_batches += 1
            raise RuntimeError("marker row in batch")
        return numpy_fn(batch)

    engine = make_engine(
        plan,
        marker_fn,
        max_batch_size=32,
        priority_levels=3,
        instance_count=2,
        max_queue_delay_us=300,
    )
    per_thread = 1_500
    works = []
    kinds: list[np.ndarray] = []  # 0 normal, 1 tiny timeout, 2 marker
    for t in range(THREADS):
        work = make_workload(300 + t, per_thread, 1 + t * per_thread)
        draw = np.random.default_rng(400 + t)
        kind = draw.choice([0, 1, 2], size=per_thread, p=[0.85, 0.1, 0.05])
        for k in np.flatnonzero(kind == 2):
            work.x[work.bounds[k], 0] = MARKER
        works.append(work)
        kinds.append(kind)
    outcomes: list[list[Any]] = [[None] * per_thread for _ in range(THREADS)]

    def submitter(t: int) -> None:
        work, kind, out = works[t], kinds[t], outcomes[t]
        for k in range(per_thread):
            timeout_us = 1 if kind[k] == 1 else None
            try:
                out[k] = engine.predict(
                    work.request(k), priority=int(work.priorities[k]), timeout_us=timeout_us
                )
            except (InternalError, DeadlineExceeded) as e:
                out[k] = e

    run_threads(submitter, THREADS)

    counts: Counter[str] = Counter()
    for work, kind, out in zip(works, kinds, outcomes, strict=True):
        want = reference(plan, work, numpy_fn)
        for k, y in enumerate(out):
            rid = int(work.rids[k])
            if isinstance(y, DeadlineExceeded):
                assert kind[k] == 1, f"request {rid} without a timeout timed out"
                assert rid not in failed_rids, f"timed-out request {rid} was executed"
                counts["timed_out"] += 1
            elif isinstance(y, InternalError):
                assert rid in failed_rids, f"request {rid} failed without a marker in its batch"
                assert "marker row in batch" in str(y)
                counts["failed"] += 1
            else:
                assert kind[k] != 2, f"marker request {rid} succeeded"
                assert rid not in failed_rids
                np.testing.assert_allclose(
                    y, want[work.bounds[k] : work.bounds[k + 1]], rtol=1e-6, atol=1e-5
                )
                counts["completed"] += 1
        # Every request of a failed batch saw the failure.
        for k in range(per_thread):
            if int(work.rids[k]) in failed_rids:
                assert isinstance(out[k], InternalError)

    assert counts["timed_out"] > 0
    assert counts["failed"] >= failed_batches > 0
    assert counts["failed"] > sum(int((k == 2).sum()) for k in kinds)  # innocent neighbours too
    stats = wait_for_stats(engine, counts["completed"] + counts["failed"])
    assert stats["completed"] == counts["completed"]
    assert stats["failed"] == counts["failed"]
    assert stats["timed_out"] == counts["timed_out"]
    assert stats["requests"] == THREADS * per_thread
    check_stats_add_up(
        stats,
        sum(
            int(w.bounds[k + 1] - w.bounds[k])
            for w, out in zip(works, outcomes, strict=True)
            for k in range(per_thread)
            if not isinstance(out[k], DeadlineExceeded)
        ),
    )


def test_full_queue_under_load_only_rejects(make_engine: MakeEngine, plan: FeaturePlan) -> None:
    def slow_fn(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.0002)
        return numpy_fn(batch)

    engine = make_engine(
        plan, slow_fn, max_batch_size=8, max_queue_size=4, instance_count=2, max_queue_delay_us=1000
    )
    per_thread = 400
    works = [
        make_workload(500 + t, per_thread, 1 + t * per_thread, max_rows=4)
        for t in range(THREADS * 2)
    ]
    outcomes: list[list[Any]] = [[None] * per_thread for _ in works]

    def submitter(t: int) -> None:
        for k in range(per_thread):
            try:
                outcomes[t][k] = engine.predict(works[t].request(k))
            except QueueFull as e:
                outcomes[t][k] = e

    run_threads(submitter, len(works))
    rejected = 0
    for work, out in zip(works, outcomes, strict=True):
        want = reference(plan, work, numpy_fn)
        for k, y in enumerate(out):
            if isinstance(y, QueueFull):
                rejected += 1
            else:
                np.testing.assert_allclose(
                    y, want[work.bounds[k] : work.bounds[k + 1]], rtol=1e-6, atol=1e-5
                )
    assert rejected > 0
    total = len(works) * per_thread
    stats = wait_for_stats(engine, total - rejected)
    assert stats["rejected"] == rejected
    assert stats["completed"] == stats["requests"] == total - rejected
    assert stats["failed"] == stats["timed_out"] == 0


# ---- asyncio ----------------------------------------------------------------------------------


def test_asyncio_tasks_get_their_own_results(make_engine: MakeEngine, plan: FeaturePlan) -> None:
    tasks_n, per_task = 64, 500
    engine = make_engine(
        plan,
        backend="rowsum",
        max_batch_size=64,
        priority_levels=3,
        instance_count=2,
        max_queue_delay_us=200,
    )
    works = [make_workload(600 + t, per_task, 1 + t * per_task) for t in range(tasks_n)]

    async def task(work: Workload) -> list[np.ndarray]:
        return [
            await engine.apredict(work.request(k), priority=int(work.priorities[k]))
            for k in range(per_task)
        ]

    async def main() -> list[list[np.ndarray]]:
        return await asyncio.wait_for(asyncio.gather(*(task(w) for w in works)), WAIT_S)

    got = asyncio.run(main())
    total_rows = 0
    for work, out in zip(works, got, strict=True):
        assert len(out) == per_task
        np.testing.assert_allclose(
            np.concatenate(out), reference(plan, work, rowsum_fn), rtol=1e-6, atol=1e-5
        )
        total_rows += len(work.x)
    stats = wait_for_stats(engine, tasks_n * per_task)
    assert stats["requests"] == stats["completed"] == tasks_n * per_task
    check_stats_add_up(stats, total_rows)


# ---- cancellation and histograms under load ----------------------------------------------------


def test_cancelled_futures_under_load_run_at_most_once(
    make_engine: MakeEngine, plan: FeaturePlan
) -> None:
    executed: Counter[int] = Counter()

    def counting_fn(batch: np.ndarray) -> np.ndarray:
        executed.update(int(r) for r in batch[:, 1])  # GIL held: no lock needed
        return numpy_fn(batch)

    engine = make_engine(
        plan, counting_fn, max_batch_size=32, instance_count=2, max_queue_delay_us=500
    )
    per_thread = 1_000
    works = [make_workload(800 + t, per_thread, 1 + t * per_thread, max_rows=4) for t in range(4)]
    futures: list[list[Any]] = [[] for _ in works]
    cancelled: list[set[int]] = [set() for _ in works]

    def submitter(t: int) -> None:
        work = works[t]
        for k in range(per_thread):
            fut = engine.submit(work.request(k))
            futures[t].append(fut)
            if k % 3 == 0 and fut.cancel():
                cancelled[t].add(int(work.rids[k]))

    run_threads(submitter, len(works))
    total = 0
    for work, futs, gone in zip(works, futures, cancelled, strict=True):
        want = reference(plan, work, numpy_fn)
        for k, fut in enumerate(futs):
            rid = int(work.rids[k])
            if rid in gone:
                assert fut.cancelled()
                continue
            np.testing.assert_allclose(
                fut.result(timeout=WAIT_S),
                want[work.bounds[k] : work.bounds[k + 1]],
                rtol=1e-6,
                atol=1e-5,
            )
            total += 1
    all_cancelled = set().union(*cancelled)
    # Rows are counted per row: a request of n rows shows n times.
    rows_of = {
        int(r): int(n) for w in works for r, n in zip(w.rids, np.diff(w.bounds), strict=True)
    }
    for rid, n in executed.items():
        assert n == rows_of[rid], f"request {rid} ran {n // rows_of[rid]} times"
    removed = all_cancelled - executed.keys()  # cancelled while still queued
    stats = wait_for_stats(engine, len(executed))
    assert stats["cancelled"] == len(removed)
    assert stats["completed"] == len(executed)
    assert stats["requests"] == len(works) * per_thread
    assert not (executed.keys() | all_cancelled) ^ set(rows_of), "a request was lost"
    check_stats_add_up(stats, sum(executed.values()))


def test_histogram_snapshots_with_reset_under_load_add_up(make_engine: MakeEngine) -> None:
    # A plan of its own: engines built on one FeaturePlan object share its counters.
    engine = make_engine(
        FeaturePlan(SPEC),
        backend="rowsum",
        max_batch_size=32,
        instance_count=2,
        max_queue_delay_us=100,
    )
    works = [make_workload(900 + t, 1_500, 1 + t * 1_500, max_rows=8) for t in range(4)]
    snapshots: list[dict[str, Any]] = []
    stop = threading.Event()

    def snapper() -> None:
        while not stop.is_set():
            snapshots.append(engine.histograms(reset=True))
            time.sleep(0.0005)

    side = threading.Thread(target=snapper, daemon=True)
    side.start()

    def submitter(t: int) -> None:
        for k in range(len(works[t])):
            engine.predict(works[t].request(k))

    try:
        run_threads(submitter, len(works))
    finally:
        stop.set()
        side.join(WAIT_S)
    wait_for_stats(engine, sum(len(w) for w in works))
    snapshots.append(engine.histograms(reset=True))
    assert len(snapshots) > 2

    ref = FeaturePlan(SPEC)
    ref.transform(np.concatenate([w.x for w in works]), histograms=True)
    want = ref.histograms()
    assert sum(s["rows"] for s in snapshots) == want["rows"]
    for name, w in want["features"].items():
        for key in ("counts", "underflow", "overflow", "nan", "missing"):
            if key in w:
                got = sum(np.asarray(s["features"][name][key]) for s in snapshots)
                np.testing.assert_array_equal(got, w[key], err_msg=f"{name}.{key}")
    # Each snapshot is consistent in itself: every counted row is in exactly one bucket.
    for s in snapshots:
        amount, channel = s["features"]["amount"], s["features"]["channel"]
        in_amount = int(amount["counts"].sum()) + amount["underflow"] + amount["overflow"]
        assert in_amount + amount["nan"] == s["rows"]
        assert int(channel["counts"].sum()) + channel["missing"] == s["rows"]


# ---- shutdown under load ------------------------------------------------------------------------

# Runs in a child process: a crash there fails this test instead of killing the test run.
CLOSE_UNDER_LOAD = r"""
import sys, threading, time
import numpy as np
from mlserve import BatcherConfig, Engine
from mlserve.errors import Unavailable

rounds, threads_n = int(sys.argv[1]), int(sys.argv[2])
spec = {"features": [{"name": "a", "kind": "numeric", "ops": []},
                     {"name": "b", "kind": "numeric", "ops": [{"op": "log1p"}]}]}
problems, served = [], [0]
lock = threading.Lock()
for r in range(rounds):
    engine = Engine(spec, backend="rowsum",
                    config=BatcherConfig(max_queue_delay_us=0, instance_count=2, max_batch_size=8))
    def hammer(t, engine=engine):
        rng = np.random.default_rng(t)
        while True:
            x = rng.uniform(0.0, 9.0, size=(int(rng.integers(1, 5)), 2)).astype(np.float32)
            try:
                if t % 2:
                    y = engine.predict(x)
                else:
                    y = engine.submit(x).result(timeout=30)
            except Unavailable:
                return
            except Exception as e:
                with lock:
                    problems.append(repr(e))
                return
            want = (x[:, :1].astype(np.float64) + np.log1p(x[:, 1:].astype(np.float64)))
            with lock:
                served[0] += 1
                if y.shape != want.shape or not np.allclose(y, want, rtol=1e-5):
                    problems.append(f"wrong result {y!r} for {x!r}")
    threads = [threading.Thread(target=hammer, args=(t,), daemon=True) for t in range(threads_n)]
    for t in threads:
        t.start()
    time.sleep(0.002 * (1 + r % 5))
    closer = threading.Thread(target=engine.close, kwargs={"drain": bool(r % 2)}, daemon=True)
    closer.start()
    closer.join(30)
    if closer.is_alive():
        print("close() hung", flush=True)
        sys.exit(3)
    for t in threads:
        t.join(30)
        if t.is_alive():
            print("a submitter hung after close()", flush=True)
            sys.exit(4)
print("served", served[0], "problems", len(problems), *problems[:5], flush=True)
sys.exit(1 if problems else 0)
"""


def test_close_while_threads_are_submitting() -> None:
    """Every call either gets its own correct result or Unavailable; nothing crashes or hangs."""
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", CLOSE_UNDER_LOAD, "250", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
        f"stderr: {proc.stderr[-4000:]}"
    )
    assert proc.stdout.startswith("served ")
