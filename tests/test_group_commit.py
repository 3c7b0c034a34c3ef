"""Group commit: batches form only under load, each caller gets its own result, and a caller
that gave up is left out of the batch."""

from __future__ import annotations

import asyncio

import pytest

from clerk_sync.storage.group_commit import GroupCommitter


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.release = asyncio.Event()

    async def flush(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        if self.delay:
            await asyncio.sleep(self.delay)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_a_lone_item_is_flushed_at_once_alone() -> None:
    async def go() -> tuple[int, list[list[int]]]:
        recorder = Recorder()
        committer = GroupCommitter(recorder.flush, max_in_flight=2, max_batch=10)
        return await committer.submit(7), recorder.batches

    assert asyncio.run(go()) == (70, [[7]])


def test_items_arriving_while_the_slots_are_busy_share_a_batch() -> None:
    async def go() -> tuple[list[int], list[list[int]]]:
        recorder = Recorder(delay=0.05)
        committer = GroupCommitter(recorder.flush, max_in_flight=1, max_batch=3)
        results = await asyncio.gather(*(committer.submit(i) for i in range(1, 8)))
        return list(results), recorder.batches

    results, batches = asyncio.run(go())
    assert results == [i * 10 for i in range(1, 8)]
    assert batches == [[1], [2, 3, 4], [5, 6, 7]]


def test_each_caller_gets_its_own_exception() -> None:
    async def go() -> list[object]:
        recorder = Recorder(delay=0.01)
        committer = GroupCommitter(recorder.flush, max_in_flight=1, max_batch=10)
        return list(
            await asyncio.gather(*(committer.submit(i) for i in (1, -2, 3)), return_exceptions=True)
        )

    first, second, third = asyncio.run(go())
    assert first == 10 and third == 30
    assert isinstance(second, ValueError) and str(second) == "bad -2"


def test_a_flush_that_raises_fails_its_whole_batch_only() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 2:
            raise RuntimeError("boom")
        return list(items)

    async def go() -> list[object]:
        committer = GroupCommitter(flush, max_in_flight=1, max_batch=2)
        return list(
            await asyncio.gather(*(committer.submit(i) for i in range(5)), return_exceptions=True)
        )

    results = asyncio.run(go())
    assert results[0] == 0
    assert all(isinstance(r, RuntimeError) for r in results[1:3])
    assert results[3:] == [3, 4]


def test_a_caller_that_gave_up_is_left_out_of_the_batch() -> None:
    async def go() -> list[list[int]]:
        recorder = Recorder(delay=0.05)
        committer = GroupCommitter(recorder.flush, max_in_flight=1, max_batch=10)
        first = asyncio.create_task(committer.submit(1))
        await asyncio.sleep(0.01)  # 1 is in flight; 2 and 3 wait for the slot
        waiting = asyncio.create_task(committer.submit(2))
        kept = asyncio.create_task(committer.submit(3))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await first
        assert await kept == 30
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return recorder.batches

    assert asyncio.run(go()) == [[1], [3]]


def test_the_next_batch_starts_before_the_finished_callers_resume() -> None:
    """The database should not wait while a finished batch's callers write their answers."""

    async def go() -> list[str]:
        order: list[str] = []

        async def flush(items: list[int]) -> list[int | Exception]:
            order.append(f"flush {items}")
            await asyncio.sleep(0.02)
            return items

        committer = GroupCommitter(flush, max_in_flight=1, max_batch=10)

        async def caller(item: int) -> None:
            await committer.submit(item)
            order.append(f"answered {item}")

        first = asyncio.create_task(caller(1))
        await asyncio.sleep(0.005)  # batch [1] is in flight
        second = asyncio.create_task(caller(2))
        await asyncio.gather(first, second)
        return order

    assert asyncio.run(go()) == ["flush [1]", "flush [2]", "answered 1", "answered 2"]
