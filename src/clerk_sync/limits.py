"""Per-client limit on failed verifications: a client that keeps sending forged or malformed
deliveries gets 429 instead of an answer that helps it probe. Genuine (verified) deliveries are
never counted or throttled. While a client is limited, what its headers alone refuse is
answered 429 before its body is read, a body is read only up to a small cap, and a failed
verification is answered 429 without being counted (`delivery.py`, `webhook.py`).

Memory is bounded whatever a client sends: at most `limit + 1` times are kept per client (that
is all "more than `limit` in the window" needs), for at most MAX_TRACKED_CLIENTS clients. An
IPv6 client is keyed by its /64, the block one host is usually given: otherwise every one of
its 2^64 addresses would be a client of its own.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MAX_TRACKED_CLIENTS = 10_000


def client_key(host: str) -> str:
    """The key a client is counted under: its IPv4 address, or its IPv6 /64."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


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

    def is_limited(self, client: str) -> bool:
        """Whether `client` is over the limit now: until a minute after its last failed
        verification, when that one made more than `limit` in a minute. Checked before a
        request is read, and not counted (a refused request does not extend the limit)."""
        if not self._failures:  # the usual case: nobody has failed lately
            return False
        failures = self._failures.get(client_key(client))
        if failures is None or len(failures) <= self._limit:
            return False
        # record_failure keeps only the failures within a window of the last one.
        return failures[-1] > self._clock() - self._window

    def record_failure(self, client: str) -> bool:
        """Count one failed verification; True when the client is now over the limit."""
        key = client_key(client)
        now = self._clock()
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self._limit + 1)
            if len(self._failures) > MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)  # forget the client seen longest ago
        else:
            self._failures.move_to_end(key)
        self._expire(failures, now)
        failures.append(now)
        return len(failures) > self._limit

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self._window:
            failures.popleft()

    def tracked_times(self) -> int:
        """How many failure times are held in all (what the limiter's memory grows with)."""
        return sum(len(failures) for failures in self._failures.values())
