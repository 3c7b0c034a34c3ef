"""Single flight: concurrent callers asking for the same key share one run of the work.

Used where a burst of callers would otherwise each call Clerk's API: one fetch of a user for
every concurrent sync of that user, one fetch of the JWKS for every token with an unknown key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


class SingleFlight(Generic[Key, Result]):
    def __init__(self) -> None:
        self._flights: dict[Key, asyncio.Task[Result]] = {}

    def running(self, key: Key) -> bool:
        task = self._flights.get(key)
        return task is not None and not task.done()

    async def run(self, key: Key, work: Callable[[], Awaitable[Result]]) -> Result:
        """The result of `work()`, run once for all the callers that ask while it runs.

        The work runs as a task of its own: a caller that gives up (a client that disconnects)
        does not cancel it for the others.
        """
        task = self._flights.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(work())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task)

    def _landed(self, key: Key, task: asyncio.Task[Result]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have given up before it ended
