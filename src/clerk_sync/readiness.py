"""GET /readyz's probe of the database: at most one probe a second however often it is asked
(behind some proxies anyone may ask), concurrent askers sharing the one in flight. What is
wrong goes to the log, once each time it changes; the answer itself says only "not ready"."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("clerk_sync.readiness")

PROBE_EVERY_SECONDS = 1.0


class Readiness:
    def __init__(
        self,
        probe: Callable[[], Awaitable[str | None]],
        *,
        ttl: float = PROBE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe  # None when ready, else what is wrong
        self._ttl = ttl
        self._clock = clock
        self._checked_at = -math.inf
        self._reason: str | None = None
        self._pending: asyncio.Task[str | None] | None = None

    async def not_ready_reason(self) -> str | None:
        """The latest probe's finding, probing again once it is older than `ttl`."""
        if self._clock() - self._checked_at < self._ttl:
            return self._reason
        if self._pending is None:
            self._pending = asyncio.create_task(self._check())
        # Shielded: an asker that goes away does not cancel the probe the others wait for.
        return await asyncio.shield(self._pending)

    async def _check(self) -> str | None:
        try:
            reason = await self._probe()
        finally:
            self._pending = None
        if reason != self._reason:
            if reason:
                log.warning("not ready: %s", reason)
            else:
                log.info("ready again")
        self._reason, self._checked_at = reason, self._clock()
        return reason
