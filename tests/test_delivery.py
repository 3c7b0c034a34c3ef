"""The delivery core called directly, as a framework of your own would, on a real PostgreSQL.
Every entry point's answers are in tests/test_deploy.py (one table of cases)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from clerk_sync import Answer, DeliveryHandler
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.storage.postgres import PostgresStore
from clerk_sync.verify import Verifier
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
