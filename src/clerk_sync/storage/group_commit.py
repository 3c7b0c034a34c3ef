"""Group commit: deliveries that arrive while earlier writes are in flight share one transaction.

At low load every item is flushed at once, alone (no added latency). Under load, at most
`max_in_flight` flushes run at a time and whatever arrives meanwhile waits for the next free
slot, so batches grow with the load by themselves: one round trip and one commit serve many
deliveries, and each caller is answered only once its batch has committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# What a flush returns for each item, in order: its result, or the exception to raise for it.
Flush = Callable[[list[Item]], Awaitable[list[Result | Exception]]]


class GroupCommitter(Generic[Item, Result]):
    def __init__(self, flush: Flush[Item, Result], *, max_in_flight: int, max_batch: int) -> None:
        self._flush = flush
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """Write `item` in the next batch; returns once that batch is done.

        A caller that gives up (cancelled, timed out) before its batch starts is left out of it.
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start_flushes()
        return await future

    def _start_flushes(self) -> None:
        while self._pending and self._in_flight < self._max_in_flight:
            taken = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            batch = [(item, future) for item, future in taken if not future.done()]
            if batch:
                self._in_flight += 1
                task = asyncio.create_task(self._run(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # a flush reports failures per item; this is the safety net
            results = [exc] * len(batch)
        finally:
            self._in_flight -= 1
        # The next batch first: its task is scheduled ahead of the callers woken below, so the
        # database does not sit idle while they write their answers.
        self._start_flushes()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
