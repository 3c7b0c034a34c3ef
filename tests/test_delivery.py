"""The delivery core called directly, as a framework of your own would, on a real PostgreSQL.
Every entry point's answers are in tests/test_deploy.py (one table of cases)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from clerk_sync import Answer, DeliveryHandler
from clerk_sync.delivery import LIMITED_BODY_BYTES
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.storage.postgres import PostgresStore
from clerk_sync.verify import Verifier
from clerk_sync.webhook import WebhookReceiver
from tests import support

BODY = support.dumps(support.user_event("user.created", "user_core", 1_700_000_000_000))


def with_handler(
    dsn: str, key: bytes, use: Callable[[DeliveryHandler], Awaitable[Any]], limit: int = 20
) -> Any:
    async def go() -> Any:
        store = await PostgresStore.open(dsn)
        try:
            limiter = FailedVerificationLimiter(limit)
            return await use(DeliveryHandler(Verifier([key]), store, limiter))
        finally:
            await store.close()

    return asyncio.run(go())


class CaseInsensitive(dict[str, str]):
    """Request headers as frameworks give them: any case of a name finds it."""

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.items():
            if key.lower() == name.lower():
                return value
        return default


def test_an_applied_delivery_and_its_log_line(db: str, secret: tuple[str, bytes]) -> None:
    headers = CaseInsensitive(
        {k.title(): v for k, v in support.signed_headers(secret[1], BODY, "msg_core").items()}
    )
    assert "Svix-Id" in headers

    async def use(handler: DeliveryHandler) -> Answer:
        return await handler.handle(headers, BODY, "10.0.0.1")

    answer = with_handler(db, secret[1], use)
    assert (answer.status, answer.content, answer.headers) == (200, {"outcome": "applied"}, None)
    assert answer.outcome == "applied"
    assert answer.body == b'{"outcome":"applied"}'
    assert {k: answer.log[k] for k in ("svix_id", "type", "user_id", "status")} == {
        "svix_id": "msg_core",
        "type": "user.created",
        "user_id": "user_core",
        "status": 200,
    }
    assert answer.log["duration_ms"] >= 0
    assert support.fetch(db, "select id from public.users") == [{"id": "user_core"}]


def test_the_failed_verification_limit_is_per_client(db: str, secret: tuple[str, bytes]) -> None:
    forged = support.signed_headers(secrets.token_bytes(32), BODY)

    async def use(handler: DeliveryHandler) -> list[Answer]:
        return [await handler.handle(forged, BODY, client) for client in ("a", "a", "a", "b")]

    answers = with_handler(db, secret[1], use, limit=2)
    assert [a.status for a in answers] == [401, 401, 429, 401]
    assert answers[2].headers == {"Retry-After": "60"}
    assert "too many" in answers[2].content["error"]


def test_a_dead_letter_is_not_answered_400_until_it_is_kept(secret: tuple[str, bytes]) -> None:
    junk = b"verified, but not a Clerk event"
    headers = support.signed_headers(secret[1], junk)
    nowhere = f"postgresql://postgres@127.0.0.1:{support.free_port()}/x"

    async def use(handler: DeliveryHandler) -> Answer:
        return await handler.handle(headers, junk, None)

    answer = with_handler(nowhere, secret[1], use)
    # Svix brings it back once the database can keep it; never told to stop before that.
    assert (answer.status, answer.outcome) == (503, "unavailable")
    assert answer.headers == {"Retry-After": "5"}


def test_the_answers_to_a_body_refused_before_it_is_read(
    db: str, secret: tuple[str, bytes]
) -> None:
    async def use(handler: DeliveryHandler) -> tuple[Answer, Answer]:
        return handler.too_large(), handler.too_slow()

    too_large, too_slow = with_handler(db, secret[1], use)
    assert (too_large.status, too_large.outcome) == (413, "too_large")
    assert "1048576 bytes" in too_large.content["error"]
    assert (too_slow.status, too_slow.outcome) == (408, "body_timeout")
    assert too_large.log["status"] == 413


# --- the failed-verification limit, at the ASGI receiver ---------------------------------------

LIMITED = ("192.0.2.9", 40000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def receive_at(
    receiver: WebhookReceiver, headers: dict[str, str], body: bytes, chunk: int = 16 * 1024
) -> tuple[int, int]:
    """POST `body` (in chunks) to the receiver from LIMITED: (status, chunks it read)."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        index, reads = reads, reads + 1
        more = index < len(chunks) - 1
        return {"type": "http.request", "body": chunks[index], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": LIMITED,
    }
    await receiver(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], reads


def forged_headers(body: bytes) -> dict[str, str]:
    return support.signed_headers(secrets.token_bytes(32), body)


def with_limited_receiver(
    dsn: str, key: bytes, use: Callable[[WebhookReceiver, Clock], Awaitable[Any]]
) -> Any:
    """A receiver whose limiter (20 a minute) already holds LIMITED over it, at clock.now."""

    async def go() -> Any:
        store = await PostgresStore.open(dsn)
        clock = Clock()
        try:
            limiter = FailedVerificationLimiter(20, clock=clock)
            receiver = WebhookReceiver(DeliveryHandler(Verifier([key]), store, limiter))
            for _ in range(21):
                status, _ = await receive_at(receiver, forged_headers(BODY), BODY)
            assert status == 429
            return await use(receiver, clock)
        finally:
            await store.close()

    return asyncio.run(go())


def header_only_refusals(key: bytes) -> dict[str, dict[str, str]]:
    good = support.signed_headers(key, BODY)
    return {
        "missing": {"content-type": "application/json"},
        "malformed_timestamp": {**good, "svix-timestamp": "soon"},
        "out_of_tolerance": support.signed_headers(key, BODY, timestamp=int(time.time()) - 301),
        "no_v1_signature": {**good, "svix-signature": "v2,AAAA"},
        "unreadable_v1": {**good, "svix-signature": "v1,@@@"},
    }


def test_a_limited_client_is_refused_from_its_headers_before_its_body_is_read(
    db: str, secret: tuple[str, bytes]
) -> None:
    async def use(receiver: WebhookReceiver, clock: Clock) -> dict[str, tuple[int, int]]:
        return {
            name: await receive_at(receiver, headers, BODY)
            for name, headers in header_only_refusals(secret[1]).items()
        }

    answers = with_limited_receiver(db, secret[1], use)
    assert answers == {name: (429, 0) for name in header_only_refusals(secret[1])}


def test_a_limited_clients_body_is_read_only_up_to_a_small_cap(
    db: str, secret: tuple[str, bytes]
) -> None:
    big = b'{"type": "user.created", "data": {"pad": "' + b"x" * (1024 * 1024 - 100) + b'"}}'

    async def use(receiver: WebhookReceiver, clock: Clock) -> tuple[int, int]:
        return await receive_at(receiver, support.signed_headers(secret[1], big), big)

    status, reads = with_limited_receiver(db, secret[1], use)
    assert status == 429
    assert reads <= LIMITED_BODY_BYTES // (16 * 1024) + 1  # of 64 chunks


def test_refused_requests_do_not_extend_the_limit_and_genuine_ones_pass(
    db: str, secret: tuple[str, bytes]
) -> None:
    """The limit lasts a minute from the last failure that counted: forgeries refused while
    limited (headers alone, or a verified-and-failed body) do not push it on."""

    async def use(receiver: WebhookReceiver, clock: Clock) -> list[int]:
        statuses = []
        for _ in range(10):
            clock.now += 5.0  # up to 50 s after the last counted failure
            statuses.append((await receive_at(receiver, forged_headers(BODY), BODY))[0])
            statuses.append((await receive_at(receiver, {}, BODY))[0])
        genuine = support.signed_headers(secret[1], BODY, "msg_limited")
        statuses.append((await receive_at(receiver, genuine, BODY))[0])
        clock.now += 10.5  # a minute and a half-second after the last counted failure
        statuses.append((await receive_at(receiver, forged_headers(BODY), BODY))[0])
        return statuses

    statuses = with_limited_receiver(db, secret[1], use)
    assert statuses[:20] == [429] * 20
    assert statuses[20] == 200  # genuine, from a limited client
    assert statuses[21] == 401  # free again: counted anew
    assert [r["svix_id"] for r in support.fetch(db, "select svix_id from clerk_sync.inbox")] == [
        "msg_limited"
    ]
