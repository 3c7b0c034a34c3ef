"""The failed-verification limiter on its own: no database, no server."""

from __future__ import annotations

from clerk_sync.limits import MAX_TRACKED_CLIENTS, FailedVerificationLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_over_the_limit_within_the_window_then_free_again() -> None:
    clock = Clock()
    limiter = FailedVerificationLimiter(3, clock=clock)
    assert [limiter.record_failure("10.0.0.1") for _ in range(4)] == [False, False, False, True]
    assert limiter.is_limited("10.0.0.1")
    assert not limiter.is_limited("10.0.0.2")
    clock.now += 60.0
    assert not limiter.is_limited("10.0.0.1")


def test_checking_does_not_count_or_extend() -> None:
    clock = Clock()
    limiter = FailedVerificationLimiter(2, clock=clock)
    for _ in range(3):
        limiter.record_failure("10.0.0.1")
    for _ in range(100):
        clock.now += 0.5
        limiter.is_limited("10.0.0.1")
    clock.now = 1000.0 + 60.0
    assert not limiter.is_limited("10.0.0.1")


def test_a_flood_from_one_client_holds_at_most_limit_plus_one_times() -> None:
    limiter = FailedVerificationLimiter(20)
    for _ in range(100_000):
        limiter.record_failure("10.0.0.1")
    assert limiter.tracked_times() == 21
    assert limiter.is_limited("10.0.0.1")


def test_the_number_of_clients_tracked_is_bounded() -> None:
    limiter = FailedVerificationLimiter(1)
    for i in range(MAX_TRACKED_CLIENTS + 500):
        limiter.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert limiter.tracked_times() == MAX_TRACKED_CLIENTS


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    limiter = FailedVerificationLimiter(3)
    for suffix in range(4):  # four addresses of one /64: one client over the limit
        limiter.record_failure(f"2001:db8:1:2::{suffix + 1:x}")
    assert limiter.is_limited("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert not limiter.is_limited("2001:db8:1:3::1")


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("unknown") == "unknown"


def test_the_limit_lasts_a_minute_from_the_last_failure() -> None:
    """Not from the first of the failures that put the client over: 4 failures spread over
    55 s keep it limited until 60 s after the fourth."""
    clock = Clock()
    limiter = FailedVerificationLimiter(3, clock=clock)
    for step in range(4):
        clock.now = 1000.0 + step * 55.0 / 3
        limiter.record_failure("10.0.0.1")
    clock.now = 1055.0 + 59.0
    assert limiter.is_limited("10.0.0.1")
    clock.now = 1055.0 + 60.0
    assert not limiter.is_limited("10.0.0.1")
