"""Per-client limit on failed verifications: a client that keeps sending forged or malformed
deliveries gets 429 instead of an answer that helps it probe. Genuine (verified) deliveries are
never counted or throttled."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MAX_TRACKED_CLIENTS = 10_000


class FailedVerificationLimiter:
    def __init__(
        self,
        limit: int,
        *,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def record_failure(self, client: str) -> bool:
        """Count one failed verification; True when the client is now over the limit."""
        now = self._clock()
        failures = self._failures.get(client)
        if failures is None:
            failures = self._failures[client] = deque()
            if len(self._failures) > MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)  # forget the client seen longest ago
        else:
            self._failures.move_to_end(client)
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        failures.append(now)
        return len(failures) > self._limit
