"""Behaviour of the dynamic batcher through the Engine (rules in csrc/batcher/dynamic_batcher.h).

Deterministic: batching waits on ``engine.hold_batching(n)`` (no batch forms until n requests
are queued), and where a delay matters ``max_queue_delay_us`` is huge, so only the rule under
test (or shutdown) can cut a batch. The Python backend (``recorder`` fixture) records every batch
it gets; the first column of the tagged plan passes through normalization unchanged, so each
batch shows which requests it held, in order. No assertion depends on how fast anything runs:
time only bounds how long a test waits before it counts the engine as hung, and a few short
sleeps give a wrong cut the chance to happen before checking that it did not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from mlserve import BatcherConfig, Engine, FeaturePlan
from mlserve.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    QueueFull,
    Unavailable,
)

HUGE_DELAY_US = 600_000_000
WAIT_S = 30.0
#: How long a test gives a batch that must not be cut the chance to be cut anyway.
SETTLE_S = 0.05

MakeEngine = Callable[..., Engine]


def rows(tag: float, n: int = 1) -> np.ndarray:
    """Raw rows [n, 4] of the tagged plan, tag column = tag, no NaNs (results compare exactly)."""
    x = np.zeros((n, 4), dtype=np.float32)
    x[:, 0] = tag
    x[:, 1] = np.arange(n, dtype=np.float32) * 3.0 + abs(tag)
    x[:, 2] = np.arange(n) % 4
    x[:, 3] = tag + np.arange(n)
    return x


def expected(plan: FeaturePlan, x: np.ndarray, fn: Any) -> np.ndarray:
    return np.asarray(fn.expected(plan.transform(x)))


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def settled(engine: Engine, batches: int) -> dict[str, Any]:
    """stats() once the counters of ``batches`` executed batches are in.

    A batch's counters are updated just after its results are published, so a caller that got
    every result may still read the previous counts for a moment.
    """
    wait_until(lambda: engine.stats()["batches"] >= batches, f"{batches} batches in stats()")
    return engine.stats()


def results(futures: list[concurrent.futures.Future[np.ndarray]]) -> list[np.ndarray]:
    return [f.result(timeout=WAIT_S) for f in futures]


def close_in_thread(engine: Engine, drain: bool) -> None:
    """Closes the engine; fails (instead of hanging the run) if close() does not return."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.close(drain=drain)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), f"close(drain={drain}) hung"
    assert not errors, errors


# ---- when a batch is cut --------------------------------------------------------------------


def test_full_batches_are_cut_at_max_batch_size(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=8, max_queue_delay_us=HUGE_DELAY_US)
    engine.hold_batching(4)
    inputs = [rows(t, 4) for t in (1, 2, 3, 4)]
    futures = [engine.submit(x) for x in inputs]
    for x, y in zip(inputs, results(futures), strict=True):
        np.testing.assert_array_equal(y, expected(tagged_plan, x, recorder))
    assert recorder.tags == [[1] * 4 + [2] * 4, [3] * 4 + [4] * 4]
    stats = settled(engine, 2)
    assert stats["batch_sizes"] == {8: 2}
    assert stats["batches"] == 2
    assert stats["queued"] == 0


def test_request_that_does_not_fit_cuts_the_batch_and_is_never_split(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=8, max_queue_delay_us=HUGE_DELAY_US)
    engine.hold_batching(3)
    first = [engine.submit(rows(t, n)) for t, n in ((1, 5), (2, 4), (3, 3))]
    first[0].result(timeout=WAIT_S)
    # 5 rows; the next request (4) does not fit -> cut at 5. 4 + 3 = 7 < 8 waits for the delay.
    time.sleep(SETTLE_S)
    assert recorder.tags == [[1] * 5]
    assert engine.stats()["queued"] == 2
    assert not first[1].done() and not first[2].done()
    last = engine.submit(rows(4, 1))  # 4 + 3 + 1 = 8: full
    results([*first, last])
    assert recorder.tags == [[1] * 5, [2] * 4 + [3] * 3 + [4]]
    assert settled(engine, 2)["batch_sizes"] == {5: 1, 8: 1}


def test_batch_never_exceeds_max_batch_size_even_when_held(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=8, max_queue_delay_us=0)
    engine.hold_batching(6)
    sizes = [3, 3, 3, 8, 1, 2]
    futures = [engine.submit(rows(t, n)) for t, n in enumerate(sizes, start=1)]
    results(futures)
    # Greedy in FIFO order, never splitting: [3,3] | [3] (8 does not fit) | [8] | [1,2].
    assert recorder.sizes == [6, 3, 8, 3]
    assert recorder.tags == [[1] * 3 + [2] * 3, [3] * 3, [4] * 8, [5, 6, 6]]


def test_preferred_batch_size_cuts_when_the_whole_queue_forms_it(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan,
        recorder,
        max_batch_size=16,
        preferred_batch_sizes=(4,),
        max_queue_delay_us=HUGE_DELAY_US,
    )
    a = engine.submit(rows(1, 1))
    b = engine.submit(rows(2, 2))
    time.sleep(SETTLE_S)
    assert engine.stats()["batches"] == 0  # 3 queued rows: not preferred, not full
    c = engine.submit(rows(3, 1))  # 4 queued rows: preferred
    results([a, b, c])
    assert recorder.tags == [[1, 2, 2, 3]]
    assert settled(engine, 1)["batch_sizes"] == {4: 1}


def test_preferred_prefix_does_not_cut_before_the_delay(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan,
        recorder,
        max_batch_size=16,
        preferred_batch_sizes=(2,),
        max_queue_delay_us=HUGE_DELAY_US,
    )
    engine.hold_batching(3)
    futures = [engine.submit(rows(t, 1)) for t in (1, 2, 3)]
    # The first two requests form 2 rows, but the whole queue (3 rows) is not a preferred size.
    time.sleep(SETTLE_S)
    assert engine.stats()["batches"] == 0
    assert engine.stats()["queued"] == 3
    close_in_thread(engine, drain=True)
    results(futures)
    assert sum(recorder.sizes) == 3


def test_after_the_delay_the_largest_preferred_size_on_a_request_boundary_is_cut(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan,
        recorder,
        max_batch_size=16,
        preferred_batch_sizes=(2, 3),
        max_queue_delay_us=20_000,
    )
    engine.hold_batching(4)
    futures = [engine.submit(rows(t, 1)) for t in (1, 2, 3, 4)]
    results(futures)
    # 4 queued rows (not preferred) wait for the delay; then 3 (largest preferred) is cut, and
    # the last request, already past its delay, goes alone.
    assert recorder.tags == [[1, 2, 3], [4]]


def test_after_the_delay_without_a_preferred_boundary_everything_that_fits_is_cut(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan,
        recorder,
        max_batch_size=16,
        preferred_batch_sizes=(4,),
        max_queue_delay_us=20_000,
    )
    engine.hold_batching(3)
    futures = [engine.submit(rows(t, 2)) for t in (1, 2, 3)]  # boundaries at 2, 4, 6
    results(futures)
    assert recorder.tags == [[1, 1, 2, 2], [3, 3]]
    engine.hold_batching(2)
    futures = [engine.submit(rows(t, 3)) for t in (4, 5)]  # boundaries 3, 6: none preferred
    results(futures)
    assert recorder.tags[2:] == [[4, 4, 4, 5, 5, 5]]


def test_zero_delay_cuts_at_once(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=16, max_queue_delay_us=0)
    for t in range(1, 6):
        x = rows(t, 1)
        np.testing.assert_array_equal(engine.predict(x), expected(tagged_plan, x, recorder))
    assert settled(engine, 5)["batch_sizes"] == {1: 5}
    assert recorder.tags == [[1], [2], [3], [4], [5]]


def test_huge_delay_holds_a_lone_request_until_close_drains_it(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=16, max_queue_delay_us=HUGE_DELAY_US)
    x = rows(7, 2)
    fut = engine.submit(x)
    time.sleep(SETTLE_S)
    assert not fut.done()
    assert engine.stats()["queued"] == 1
    close_in_thread(engine, drain=True)
    np.testing.assert_array_equal(fut.result(timeout=WAIT_S), expected(tagged_plan, x, recorder))


def test_hold_is_one_shot_and_zero_releases(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=16, max_queue_delay_us=0)
    engine.hold_batching(10)
    futures = [engine.submit(rows(t, 1)) for t in (1, 2)]
    time.sleep(SETTLE_S)
    assert engine.stats()["batches"] == 0
    engine.hold_batching(0)
    results(futures)
    assert recorder.tags == [[1, 2]]
    # Released: later requests run without any hold.
    np.testing.assert_array_equal(engine.predict(rows(3)), expected(tagged_plan, rows(3), recorder))


# ---- request validation ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 5, 50])
def test_rows_out_of_range_are_invalid(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any, n: int
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=4, max_queue_delay_us=0)
    x = np.zeros((n, tagged_plan.f_in), dtype=np.float32)
    with pytest.raises(InvalidInput, match="max_batch_size"):
        engine.predict(x)
    with pytest.raises(InvalidInput, match="max_batch_size"):
        engine.submit(x)
    with pytest.raises(InvalidInput, match="max_batch_size"):
        asyncio.run(engine.apredict(x))
    assert engine.stats()["requests"] == 0
    # The largest allowed request is accepted.
    assert engine.predict(rows(1, 4)).shape == (4, 2)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(4, dtype=np.float32),
        np.zeros((2, 3), dtype=np.float32),
        np.zeros((2, 5), dtype=np.float32),
        np.zeros((1, 2, 4), dtype=np.float32),
        [["a", "b", "c", "d"]],
    ],
    ids=["1-d", "narrow", "wide", "3-d", "strings"],
)
def test_bad_input_shapes_are_invalid(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any, bad: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    with pytest.raises(InvalidInput):
        engine.predict(bad)
    with pytest.raises(InvalidInput):
        engine.submit(bad)
    assert engine.stats()["requests"] == 0


def test_inputs_are_converted_to_float32(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    x = rows(3, 3)
    want = expected(tagged_plan, x, recorder)
    np.testing.assert_array_equal(engine.predict(x.astype(np.float64)), want)
    np.testing.assert_array_equal(engine.predict(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(engine.predict(x.tolist()), want)


@pytest.mark.parametrize("priority", [-1, 4, 100])
def test_bad_priority_is_invalid(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any, priority: int
) -> None:
    engine = make_engine(tagged_plan, recorder, priority_levels=3, max_queue_delay_us=0)
    with pytest.raises(InvalidInput, match="priority"):
        engine.predict(rows(1), priority=priority)
    with pytest.raises(InvalidInput, match="priority"):
        engine.submit(rows(1), priority=priority)
    assert engine.stats()["requests"] == 0
    for ok in (0, 1, 2, 3):
        engine.predict(rows(1), priority=ok)


# ---- priorities -----------------------------------------------------------------------------


def test_higher_priority_requests_go_into_the_first_batch(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan, recorder, max_batch_size=6, priority_levels=3, max_queue_delay_us=0
    )
    engine.hold_batching(6)
    low = [engine.submit(rows(t, 2), priority=3) for t in (1, 2, 3)]
    high = [engine.submit(rows(t, 2), priority=1) for t in (11, 12, 13)]
    results(low + high)
    assert recorder.tags == [[11, 11, 12, 12, 13, 13], [1, 1, 2, 2, 3, 3]]


def test_priority_levels_order_and_default_level_is_the_lowest(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan, recorder, max_batch_size=2, priority_levels=3, max_queue_delay_us=0
    )
    engine.hold_batching(4)
    futures = [
        engine.submit(rows(1), priority=3),
        engine.submit(rows(2), priority=2),
        engine.submit(rows(3), priority=1),
        engine.submit(rows(4), priority=0),  # default: the lowest level, after 1 in FIFO order
    ]
    results(futures)
    assert recorder.tags == [[3, 2], [1, 4]]


def test_default_priority_level_places_priority_zero(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(
        tagged_plan,
        recorder,
        max_batch_size=1,
        priority_levels=2,
        default_priority_level=1,
        max_queue_delay_us=0,
    )
    engine.hold_batching(3)
    futures = [
        engine.submit(rows(1), priority=2),
        engine.submit(rows(2), priority=0),  # level 1 (highest)
        engine.submit(rows(3), priority=1),
    ]
    results(futures)
    assert recorder.tags == [[2], [3], [1]]


# ---- queue limits, timeouts, cancellation ---------------------------------------------------


def test_full_queue_rejects_at_once(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_size=3, max_queue_delay_us=0)
    engine.hold_batching(100)
    queued = [engine.submit(rows(t)) for t in (1, 2, 3)]
    with pytest.raises(QueueFull):
        engine.submit(rows(4))
    with pytest.raises(QueueFull):
        engine.predict(rows(5))
    with pytest.raises(QueueFull):
        asyncio.run(engine.apredict(rows(6)))
    stats = engine.stats()
    assert stats["rejected"] == 3
    assert stats["requests"] == 3
    assert stats["queued"] == 3
    engine.hold_batching(0)
    results(queued)
    assert recorder.tags == [[1, 2, 3]]
    engine.predict(rows(7))  # room again
    assert engine.stats()["rejected"] == 3


def test_timeout_while_queued_raises_and_never_runs(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    engine.hold_batching(100)
    doomed = engine.submit(rows(1), timeout_us=20_000)
    kept = engine.submit(rows(2))  # no timeout
    with pytest.raises(DeadlineExceeded, match="timed out"):
        doomed.result(timeout=WAIT_S)
    with pytest.raises(DeadlineExceeded):
        engine.predict(rows(3), timeout_us=20_000)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(engine.apredict(rows(4), timeout_us=20_000))
    stats = engine.stats()
    assert stats["timed_out"] == 3
    assert stats["queued"] == 1
    assert not kept.done()
    engine.hold_batching(0)
    kept.result(timeout=WAIT_S)
    assert recorder.tags == [[2]]
    assert settled(engine, 1)["completed"] == 1


def test_default_timeout_applies_unless_the_request_says_otherwise(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, default_timeout_us=20_000, max_queue_delay_us=0)
    engine.hold_batching(100)
    doomed = engine.submit(rows(1))
    no_timeout = engine.submit(rows(2), timeout_us=0)
    longer = engine.submit(rows(3), timeout_us=600_000_000)
    with pytest.raises(DeadlineExceeded):
        doomed.result(timeout=WAIT_S)
    time.sleep(SETTLE_S)
    assert not no_timeout.done() and not longer.done()
    engine.hold_batching(0)
    results([no_timeout, longer])
    assert recorder.tags == [[2, 3]]
    assert engine.stats()["timed_out"] == 1


def test_cancelled_future_is_removed_from_the_queue(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    engine.hold_batching(3)
    a = engine.submit(rows(1))
    b = engine.submit(rows(2))
    assert b.cancel()
    stats = engine.stats()
    assert stats["cancelled"] == 1
    assert stats["queued"] == 1
    c = engine.submit(rows(3))
    time.sleep(SETTLE_S)
    assert engine.stats()["batches"] == 0  # 2 queued: the hold (3) still holds
    d = engine.submit(rows(4))
    results([a, c, d])
    assert b.cancelled()
    assert recorder.tags == [[1, 3, 4]]
    assert settled(engine, 1)["completed"] == 3


def test_cancelling_a_finished_future_changes_nothing(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    fut = engine.submit(rows(1))
    fut.result(timeout=WAIT_S)
    assert not fut.cancel()
    assert settled(engine, 1)["completed"] == 1
    assert engine.stats()["cancelled"] == 0


def test_cancelled_asyncio_task_removes_the_queued_request(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)

    async def main() -> None:
        engine.hold_batching(2)
        task = asyncio.create_task(engine.apredict(rows(1)))
        while engine.stats()["queued"] < 1:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = engine.stats()
        assert stats["cancelled"] == 1
        assert stats["queued"] == 0
        # The hold (2) counts only what is queued: two more requests release it.
        ys = await asyncio.wait_for(
            asyncio.gather(engine.apredict(rows(2)), engine.apredict(rows(3))), WAIT_S
        )
        np.testing.assert_array_equal(ys[0], expected(tagged_plan, rows(2), recorder))
        np.testing.assert_array_equal(ys[1], expected(tagged_plan, rows(3), recorder))

    asyncio.run(main())
    assert recorder.tags == [[2, 3]]


def test_asyncio_timeout_of_wait_for_cancels_the_request(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)

    async def main() -> None:
        engine.hold_batching(100)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.apredict(rows(1)), 0.02)
        assert engine.stats()["cancelled"] == 1
        assert engine.stats()["queued"] == 0
        engine.hold_batching(0)
        await asyncio.wait_for(engine.apredict(rows(2)), WAIT_S)

    asyncio.run(main())
    assert recorder.tags == [[2]]


# ---- shutdown -------------------------------------------------------------------------------


def test_close_drain_runs_queued_requests(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_batch_size=4, max_queue_delay_us=HUGE_DELAY_US)
    engine.hold_batching(100)
    inputs = [rows(t, 2) for t in (1, 2, 3)]
    futures = [engine.submit(x) for x in inputs]
    close_in_thread(engine, drain=True)
    for x, y in zip(inputs, results(futures), strict=True):
        np.testing.assert_array_equal(y, expected(tagged_plan, x, recorder))
    assert sorted(t for batch in recorder.tags for t in batch) == [1, 1, 2, 2, 3, 3]
    assert engine.closed


def test_close_without_drain_fails_queued_requests(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=HUGE_DELAY_US)
    engine.hold_batching(100)
    futures = [engine.submit(rows(t)) for t in (1, 2, 3)]
    close_in_thread(engine, drain=False)
    for fut in futures:
        with pytest.raises(Unavailable):
            fut.result(timeout=WAIT_S)
    assert recorder.batches == []


def test_close_fails_or_finishes_a_blocked_predict(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    for drain in (True, False):
        engine = make_engine(tagged_plan, recorder, max_queue_delay_us=HUGE_DELAY_US)
        engine.hold_batching(100)
        outcome: list[Any] = []

        def call(e: Engine = engine, out: list[Any] = outcome) -> None:
            try:
                out.append(e.predict(rows(5)))
            except Exception as exc:
                out.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        wait_until(lambda e=engine: e.stats()["queued"] == 1, "the request to be queued")
        close_in_thread(engine, drain=drain)
        caller.join(WAIT_S)
        assert not caller.is_alive(), "predict still blocked after close()"
        if drain:
            np.testing.assert_array_equal(outcome[0], expected(tagged_plan, rows(5), recorder))
        else:
            assert isinstance(outcome[0], Unavailable), outcome


def test_async_requests_are_completed_by_close(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=HUGE_DELAY_US)

    async def main() -> list[Any]:
        engine.hold_batching(100)
        tasks = [asyncio.create_task(engine.apredict(rows(t))) for t in (1, 2)]
        while engine.stats()["queued"] < 2:
            await asyncio.sleep(0.001)
        engine.close(drain=False)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes


def test_requests_after_close_are_unavailable(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    engine.predict(rows(1))
    close_in_thread(engine, drain=True)
    with pytest.raises(Unavailable):
        engine.predict(rows(2))
    with pytest.raises(Unavailable):
        engine.submit(rows(2))
    with pytest.raises(Unavailable):
        asyncio.run(engine.apredict(rows(2)))
    close_in_thread(engine, drain=True)  # twice is fine
    close_in_thread(engine, drain=False)
    assert recorder.tags == [[1]]


def test_close_from_a_done_callback(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    # Done-callbacks of submit() futures run on the engine's completion thread; close() must
    # work from there too ("every method may be called from any thread").
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0)
    engine.hold_batching(2)
    errors: list[BaseException] = []
    closed = threading.Event()

    def close_engine(_: Any) -> None:
        try:
            engine.close(drain=False)
        except BaseException as e:
            errors.append(e)
        finally:
            closed.set()

    first = engine.submit(rows(1))
    first.add_done_callback(close_engine)
    engine.submit(rows(2))  # releases the hold: one batch with both
    first.result(timeout=WAIT_S)
    assert closed.wait(WAIT_S)
    assert not errors, errors
    assert engine.closed
    with pytest.raises(Unavailable):
        engine.predict(rows(3))


def test_context_manager_closes(tagged_plan: FeaturePlan, recorder: Any) -> None:
    with Engine(tagged_plan, recorder, config=BatcherConfig(max_queue_delay_us=0)) as engine:
        engine.predict(rows(1))
    assert engine.closed
    with pytest.raises(Unavailable):
        engine.predict(rows(1))


def test_close_does_not_hang_with_a_slow_backend_and_a_long_queue(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    recorder.delay_s = 0.05
    engine = make_engine(
        tagged_plan, recorder, max_batch_size=1, max_queue_delay_us=0, instance_count=2
    )
    futures = [engine.submit(rows(t)) for t in range(1, 41)]
    wait_until(lambda: len(recorder.batches) >= 2, "the first batches to start")
    close_in_thread(engine, drain=False)
    done, unavailable = 0, 0
    for fut in futures:
        try:
            fut.result(timeout=WAIT_S)
            done += 1
        except Unavailable:
            unavailable += 1
    assert done == len(recorder.batches)
    assert done + unavailable == 40
    assert unavailable > 0


# ---- ordering -------------------------------------------------------------------------------


def test_preserve_ordering_publishes_in_batch_order(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    draw = np.random.default_rng(5)
    lock = threading.Lock()
    recorder.delay_s = lambda: float(draw.uniform(0.0, 0.004))  # called under the GIL
    engine = make_engine(
        tagged_plan,
        recorder,
        max_batch_size=4,
        max_queue_delay_us=0,
        instance_count=2,
        preserve_ordering=True,
    )
    completed: list[int] = []

    def on_done(tag: int) -> Callable[[concurrent.futures.Future[np.ndarray]], None]:
        def record(fut: concurrent.futures.Future[np.ndarray]) -> None:
            with lock:
                completed.append(tag)

        return record

    sizes = np.random.default_rng(6).integers(1, 4, size=150)
    futures = []
    for tag, n in enumerate(sizes, start=1):
        fut = engine.submit(rows(tag, int(n)))
        fut.add_done_callback(on_done(tag))
        futures.append(fut)
    results(futures)
    wait_until(lambda: len(completed) == len(futures), "every done-callback")
    # One priority level: batches form in FIFO order, so batch order is submission order.
    batches_in_formation_order = sorted(recorder.tags, key=lambda b: b[0])
    flat = [int(t) for b in batches_in_formation_order for t in dict.fromkeys(b)]
    assert flat == list(range(1, len(sizes) + 1))  # whole requests, consecutive, none twice
    assert completed == list(range(1, len(sizes) + 1))
    assert settled(engine, len(recorder.batches))["batches"] == len(recorder.batches)


# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "extra"),
    [
        ("max_batch_size", 0, {}),
        ("max_batch_size", -5, {}),
        ("preferred_batch_sizes", (0,), {}),
        ("preferred_batch_sizes", (65,), {"max_batch_size": 64}),
        ("max_queue_delay_us", -1, {}),
        ("max_queue_size", -1, {}),
        ("default_timeout_us", -1, {}),
        ("priority_levels", 0, {}),
        ("default_priority_level", 4, {"priority_levels": 3}),
        ("default_priority_level", -1, {}),
        ("instance_count", 0, {}),
        ("instance_count", 257, {}),
        ("normalize_threads", 0, {}),
    ],
)
def test_bad_config_is_invalid_and_names_the_field(
    tagged_plan: FeaturePlan, recorder: Any, field: str, value: Any, extra: dict[str, Any]
) -> None:
    config = BatcherConfig(**{field: value, **extra})
    with pytest.raises(InvalidInput, match=field):
        Engine(tagged_plan, recorder, config=config)


# ---- backend failures -----------------------------------------------------------------------


def _wrong_rows(batch: np.ndarray) -> Any:
    return np.zeros(batch.shape[0] + 1, dtype=np.float32)


def _not_an_array(batch: np.ndarray) -> Any:
    return object()


def _three_d(batch: np.ndarray) -> Any:
    return np.zeros((batch.shape[0], 1, 1), dtype=np.float32)


def _runtime_error(batch: np.ndarray) -> Any:
    raise RuntimeError("model exploded on purpose")


def _mlserve_error(batch: np.ndarray) -> Any:
    raise InvalidInput("row 2 is not acceptable to this model")


@pytest.mark.parametrize(
    ("bad_fn", "error", "message"),
    [
        (_wrong_rows, InternalError, "rows for a batch of 3"),
        (_not_an_array, InternalError, "not a numeric array"),
        (_three_d, InternalError, "3-d"),
        (_runtime_error, InternalError, "RuntimeError: model exploded on purpose"),
        (_mlserve_error, InvalidInput, "row 2 is not acceptable to this model"),
    ],
    ids=["wrong-rows", "not-an-array", "3-d", "raises", "raises-mlserve-error"],
)
def test_failing_backend_fails_its_batch_and_the_engine_keeps_serving(
    make_engine: MakeEngine,
    tagged_plan: FeaturePlan,
    recorder: Any,
    bad_fn: Callable[[np.ndarray], Any],
    error: type[Exception],
    message: str,
) -> None:
    calls = {"n": 0}

    def fn(batch: np.ndarray) -> Any:
        calls["n"] += 1
        return bad_fn(batch) if calls["n"] == 1 else recorder(batch)

    engine = make_engine(tagged_plan, fn, max_queue_delay_us=0)
    engine.hold_batching(2)
    futures = [engine.submit(rows(1, 2)), engine.submit(rows(2, 1))]  # one batch of 3 rows
    for fut in futures:
        with pytest.raises(error, match=message):
            fut.result(timeout=WAIT_S)
    for t in (3, 4):
        np.testing.assert_array_equal(
            engine.predict(rows(t, 2)), expected(tagged_plan, rows(t, 2), recorder)
        )
    stats = settled(engine, 3)
    assert stats["failed"] == 2
    assert stats["completed"] == 2
    assert stats["batches"] == 3


def test_python_backend_may_return_1d_and_other_dtypes(
    make_engine: MakeEngine, tagged_plan: FeaturePlan
) -> None:
    engine = make_engine(
        tagged_plan, lambda b: b.astype(np.float64).sum(axis=1), max_queue_delay_us=0
    )
    x = rows(3, 5)
    y = engine.predict(x)
    assert y.shape == (5,)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, tagged_plan.transform(x).sum(axis=1), rtol=1e-6)
    y1 = engine.predict(rows(4, 1))
    assert y1.shape == (1,)


# ---- statistics and histograms ----------------------------------------------------------------


def test_stats_add_up(make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any) -> None:
    recorder.fail = lambda b: RuntimeError("marker") if (b[:, 0] == -1).any() else None
    engine = make_engine(
        tagged_plan, recorder, max_batch_size=8, max_queue_size=4, max_queue_delay_us=0
    )
    # Completed: 5 requests, 11 rows, each alone.
    for n in (1, 2, 3, 4, 1):
        engine.predict(rows(1, n))
    # Failed: one batch of 2 requests with the marker.
    engine.hold_batching(2)
    bad = [engine.submit(rows(-1, 2)), engine.submit(rows(2, 1))]
    for fut in bad:
        with pytest.raises(InternalError):
            fut.result(timeout=WAIT_S)
    # Timed out, cancelled and rejected while held.
    engine.hold_batching(100)
    late = engine.submit(rows(3, 2), timeout_us=1_000)
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=WAIT_S)
    gone = engine.submit(rows(4, 3))
    assert gone.cancel()
    held = [engine.submit(rows(5, 2)) for _ in range(4)]
    with pytest.raises(QueueFull):
        engine.submit(rows(6, 1))
    stats = engine.stats()
    assert stats["queued"] == 4
    engine.hold_batching(0)
    results(held)

    stats = settled(engine, len(recorder.batches))
    accepted_rows = 11 + 3 + 2 + 3 + 4 * 2
    assert stats["requests"] == 5 + 2 + 1 + 1 + 4
    assert stats["rows"] == accepted_rows
    assert stats["completed"] == 5 + 4
    assert stats["failed"] == 2
    assert stats["timed_out"] == 1
    assert stats["cancelled"] == 1
    assert stats["rejected"] == 1
    assert stats["queued"] == 0
    assert stats["requests"] == (
        stats["completed"] + stats["failed"] + stats["timed_out"] + stats["cancelled"]
    )
    assert stats["batches"] == sum(stats["batch_sizes"].values()) == len(recorder.batches)
    executed_rows = sum(k * v for k, v in stats["batch_sizes"].items())
    assert executed_rows == accepted_rows - 2 - 3 == sum(recorder.sizes)
    assert stats["queue_us_total"] >= 0 and stats["compute_us_total"] >= 0
    assert stats["backend"] == "python"


def _assert_histograms_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["rows"] == want["rows"]
    assert got["features"].keys() == want["features"].keys()
    for name, w in want["features"].items():
        g = got["features"][name]
        assert g.keys() == w.keys(), name
        for key, value in w.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(g[key], value, err_msg=f"{name}.{key}")
            else:
                assert g[key] == value, f"{name}.{key}"


def test_histograms_count_exactly_the_executed_rows(
    make_engine: MakeEngine,
    tagged_spec: dict[str, Any],
    tagged_rows: Callable[..., np.ndarray],
    rng: np.random.Generator,
    recorder: Any,
) -> None:
    engine = make_engine(
        FeaturePlan(tagged_spec),
        recorder,
        max_batch_size=16,
        max_queue_delay_us=0,
        instance_count=2,
    )
    executed = [tagged_rows(rng, int(rng.integers(1, 17)), float(t)) for t in range(60)]
    futures = [engine.submit(x) for x in executed]
    results(futures)
    # Requests that never run are not counted: one times out, one is cancelled.
    engine.hold_batching(100)
    with pytest.raises(DeadlineExceeded):
        engine.predict(tagged_rows(rng, 5, 1000.0), timeout_us=1_000)
    assert engine.submit(tagged_rows(rng, 4, 1001.0)).cancel()
    engine.hold_batching(0)

    reference = FeaturePlan(tagged_spec)
    reference.transform(np.concatenate(executed), histograms=True)
    want = reference.histograms()
    assert want["rows"] == sum(len(x) for x in executed)
    _assert_histograms_equal(engine.histograms(), want)
    # reset=True returns the counts and zeroes them.
    _assert_histograms_equal(engine.histograms(reset=True), want)
    after = engine.histograms()
    assert after["rows"] == 0
    for feature in after["features"].values():
        assert int(np.sum(feature["counts"])) == 0


def test_histograms_off_counts_nothing(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, histograms=False, max_queue_delay_us=0)
    engine.predict(rows(1, 4))
    snap = engine.histograms()
    assert snap["rows"] == 0
    for feature in snap["features"].values():
        assert int(np.sum(feature["counts"])) == 0


def test_predict_many_returns_each_arrays_own_result_in_order(
    make_engine: MakeEngine, small_plan: FeaturePlan, rng: np.random.Generator
) -> None:
    engine = make_engine(small_plan, None, backend="rowsum", max_batch_size=8)
    xs = [
        rng.normal(size=(int(k), small_plan.f_in)).astype(np.float32)
        for k in rng.integers(1, 9, 40)
    ]
    got = engine.predict_many(xs)
    assert len(got) == len(xs)
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y[:, 0], small_plan.transform(x).sum(1), rtol=1e-5, atol=1e-5)
    assert engine.predict_many([]) == []


def test_predict_many_raises_the_first_error_after_every_request_finished(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    engine = make_engine(tagged_plan, recorder, max_queue_size=3, max_queue_delay_us=0)
    engine.hold_batching(3)  # the first three wait for each other, the fourth is refused
    with pytest.raises(QueueFull):
        engine.predict_many([rows(t) for t in (1, 2, 3, 4)])
    assert sorted(t for batch in recorder.tags for t in batch) == [1, 2, 3]
    with pytest.raises(InvalidInput):
        engine.predict_many([rows(5), np.zeros((1, tagged_plan.f_in + 1), np.float32)])
    assert settled(engine, 1)["rejected"] == 1  # the bad array is refused before any submit


# ---- inline execution on the event loop (BatcherConfig.inline_max_compute_us) ----------------


def _gather_on_loop(engine: Engine, xs: list[np.ndarray], pass_loop: bool = False
                    ) -> list[np.ndarray]:
    """apredict of every x concurrently on one loop (asyncio.run: on this thread); with
    ``pass_loop`` each call is handed the running loop, as the server does."""

    async def main() -> list[np.ndarray]:
        loop = asyncio.get_running_loop() if pass_loop else None
        return list(await asyncio.gather(*(engine.apredict(x, loop=loop) for x in xs)))

    return asyncio.run(main())


def _noting_threads(recorder: Any, ran_on: list[str], sleep_s: float = 0.0) -> Any:
    """The recorder as a backend that also notes the name of the thread running each batch."""

    def fn(batch: np.ndarray) -> np.ndarray:
        ran_on.append(threading.current_thread().name)
        if sleep_s:
            time.sleep(sleep_s)
        return np.asarray(recorder(batch))

    return fn


@pytest.mark.parametrize("pass_loop", [False, True])
def test_inline_batches_run_on_the_loop_thread_and_equal_the_reference(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any, pass_loop: bool
) -> None:
    ran_on: list[str] = []
    fn = _noting_threads(recorder, ran_on)
    engine = make_engine(tagged_plan, fn, max_queue_delay_us=0, max_batch_size=16,
                         inline_max_compute_us=100_000)
    xs = [rows(float(i), n=1 + i % 3) for i in range(40)]
    got = _gather_on_loop(engine, xs, pass_loop)
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_array_equal(y, expected(tagged_plan, x, recorder))
    # The batches ran on the thread of the event loop (asyncio.run: this thread), and requests
    # submitted in one loop iteration shared batches. (A worker still running its loop, e.g.
    # not yet asleep right after start, may take one: it never has to be woken for them.)
    assert ran_on.count(threading.current_thread().name) >= len(ran_on) - 1
    stats = settled(engine, len(recorder.sizes))
    assert stats["completed"] == len(xs)
    assert max(recorder.sizes) > 1
    assert all(size <= 16 for size in recorder.sizes)


def test_inline_off_by_default_runs_batches_on_the_workers(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    ran_on: list[str] = []
    fn = _noting_threads(recorder, ran_on)
    engine = make_engine(tagged_plan, fn, max_queue_delay_us=0)
    got = _gather_on_loop(engine, [rows(1.0), rows(2.0)])
    assert len(got) == 2
    assert threading.current_thread().name not in ran_on


def test_a_slow_model_leaves_the_loop_to_the_workers_and_is_retried_later(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    """A batch slower than the bound makes the next ones run on the workers; the estimate
    decays while refused, so an inline batch is tried again now and then."""
    ran_on: list[str] = []
    fn = _noting_threads(recorder, ran_on, sleep_s=0.005)  # 5 ms per batch, bound 0.2 ms
    engine = make_engine(tagged_plan, fn, max_queue_delay_us=0, inline_max_compute_us=200)
    loop_thread = threading.current_thread().name

    async def main() -> None:
        for i in range(60):  # one request at a time: one batch each
            y = await engine.apredict(rows(float(i)))
            np.testing.assert_array_equal(y, expected(tagged_plan, rows(float(i)), recorder))

    asyncio.run(main())
    inline_runs = ran_on.count(loop_thread)
    assert ran_on[0] == loop_thread  # no estimate yet: the first batch runs inline
    assert 2 <= inline_runs <= 10, ran_on  # then mostly the workers, with periodic retries
    assert len(ran_on) == 60


def test_inline_respects_the_queue_delay_and_the_hold_hook(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    """A batch that cannot be cut yet is left to the workers, which cut it on time."""
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=20_000, max_batch_size=64,
                         inline_max_compute_us=100_000)
    engine.hold_batching(3)

    async def main() -> list[np.ndarray]:
        first = [asyncio.ensure_future(engine.apredict(rows(float(i)))) for i in range(2)]
        await asyncio.sleep(SETTLE_S)
        assert not any(f.done() for f in first)  # held: neither inline nor a worker cut it
        last = await engine.apredict(rows(2.0))
        return [*(await asyncio.gather(*first)), last]

    got = asyncio.run(main())
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, expected(tagged_plan, rows(float(i)), recorder))
    assert sorted(recorder.tags[0]) == [0.0, 1.0, 2.0]


def test_preserve_ordering_never_runs_inline(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    ran_on: list[str] = []
    fn = _noting_threads(recorder, ran_on)
    engine = make_engine(tagged_plan, fn, max_queue_delay_us=0, preserve_ordering=True,
                         inline_max_compute_us=100_000)
    _gather_on_loop(engine, [rows(float(i)) for i in range(8)])
    assert threading.current_thread().name not in ran_on


def test_inline_failures_fail_their_batch_only(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    recorder.fail = lambda batch: ValueError("bad batch") if (batch[:, 0] == 13.0).any() else None
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0, max_batch_size=1,
                         inline_max_compute_us=100_000)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(engine.apredict(rows(float(i))) for i in range(20)),
                                         return_exceptions=True))

    got = asyncio.run(main())
    for i, y in enumerate(got):
        if i == 13:
            assert isinstance(y, InternalError) and "bad batch" in str(y)
        else:
            np.testing.assert_array_equal(y, expected(tagged_plan, rows(float(i)), recorder))


def test_sync_callers_beside_an_inline_loop_are_served_by_the_workers(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    """predict() from other threads while a loop runs batches inline: nobody waits on the
    other (a synchronous request wakes the workers as usual)."""
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0, max_batch_size=8,
                         inline_max_compute_us=100_000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def sync_client(k: int) -> None:
        i = 0
        while not stop.is_set():
            x = rows(100.0 + k * 1000 + i)
            try:
                np.testing.assert_array_equal(engine.predict(x),
                                              expected(tagged_plan, x, recorder))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return
            i += 1

    threads = [threading.Thread(target=sync_client, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    xs = [rows(float(i)) for i in range(300)]
    got = _gather_on_loop(engine, xs)
    stop.set()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_array_equal(y, expected(tagged_plan, x, recorder))


def test_an_inline_backend_may_call_back_into_its_engine(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    """The inline run holds no engine lock while the backend runs: a backend reading the
    engine's stats (or the drift histograms) from inside a batch does not deadlock."""
    seen: list[int] = []
    holder: list[Engine] = []

    def fn(batch: np.ndarray) -> np.ndarray:
        seen.append(holder[0].stats()["requests"])
        return np.asarray(recorder(batch))

    engine = make_engine(tagged_plan, fn, max_queue_delay_us=0, inline_max_compute_us=100_000)
    holder.append(engine)
    xs = [rows(float(i)) for i in range(10)]
    got = _gather_on_loop(engine, xs)
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_array_equal(y, expected(tagged_plan, x, recorder))
    assert seen and max(seen) == 10


def test_close_from_another_thread_during_inline_batches_loses_no_request(
    make_engine: MakeEngine, tagged_plan: FeaturePlan, recorder: Any
) -> None:
    """close() while the loop runs batches inline: every request either gets its result or
    Unavailable, none hangs."""
    recorder.delay_s = 0.002
    engine = make_engine(tagged_plan, recorder, max_queue_delay_us=0, max_batch_size=4,
                         inline_max_compute_us=100_000)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(engine.apredict(rows(float(i)))) for i in range(200)]
        await asyncio.sleep(0.01)
        closer = threading.Thread(target=engine.close, kwargs={"drain": False})
        closer.start()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
        closer.join(WAIT_S)
        assert not closer.is_alive()
        return list(done)

    got = asyncio.run(main())
    ok = 0
    for i, y in enumerate(got):
        if isinstance(y, np.ndarray):
            np.testing.assert_array_equal(y, expected(tagged_plan, rows(float(i)), recorder))
            ok += 1
        else:
            assert isinstance(y, Unavailable), y
    assert 0 < ok < 200
