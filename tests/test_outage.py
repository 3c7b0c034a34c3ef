"""A database that goes away, or answers too slowly, while `clerk-sync serve` runs.

Svix waits 15 s for an answer and retries anything but a 2xx. So while the database cannot take
a write the server must say 503 with Retry-After, quickly, having changed nothing; and once the
database is back the retried delivery (same svix-id, new timestamp and signature) applies.
Each test has a throwaway PostgreSQL of its own, never the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from clerk_sync.readiness import PROBE_EVERY_SECONDS
from tests import support

pytestmark = pytest.mark.slow

SVIX_LIMIT = 14.0  # Svix gives up on an answer after 15 s; leave a second of margin
LOCK_HELD_AT_MOST = 25.0


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[support.ThrowawayPostgres]:
    server = support.ThrowawayPostgres(tmp_path / "pg")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def default_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers get only the settings each test gives them."""
    monkeypatch.delenv("CLERK_SYNC_DB_TIMEOUT", raising=False)
    monkeypatch.delenv("CLERK_SYNC_POOL_SIZE", raising=False)


class Sender:
    """Posts one delivery as Svix would: each attempt signed afresh, with the same svix-id."""

    def __init__(self, key: bytes, url: str, event: dict[str, Any]) -> None:
        self.key = key
        self.url = url
        self.body = support.dumps(event)
        self.svix_id = "msg_" + secrets.token_hex(12)
        self.last_timestamp: int | None = None

    def post(self) -> tuple[httpx.Response, float]:
        timestamp = int(time.time())
        if self.last_timestamp is not None and timestamp <= self.last_timestamp:
            timestamp = self.last_timestamp + 1  # a retry always carries a new timestamp
        self.last_timestamp = timestamp
        headers = support.signed_headers(self.key, self.body, self.svix_id, timestamp)
        started = time.monotonic()
        response = httpx.post(self.url, content=self.body, headers=headers, timeout=30)
        return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    retry_after = response.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit(), response.headers
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json().get("error"), str) and response.json()["error"]
    assert elapsed < SVIX_LIMIT, f"answered after {elapsed:.1f}s: Svix has given up by then"


def outcome(response: httpx.Response) -> str:
    assert response.status_code == 200, (response.status_code, response.text)
    return str(response.json()["outcome"])


def get(url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(url, timeout=30)
    return response, time.monotonic() - started


def user_row(dsn: str, user_id: str) -> dict[str, Any] | None:
    rows = support.fetch(dsn, "select * from public.users where id = $1", user_id)
    return rows[0] if rows else None


def inbox_ids(dsn: str) -> list[str]:
    return [r["svix_id"] for r in support.fetch(dsn, "select svix_id from clerk_sync.inbox")]


def test_database_down_answers_503_then_the_retry_applies(
    throwaway: support.ThrowawayPostgres,
) -> None:
    secret, key = support.make_secret()
    env = {
        "CLERK_WEBHOOK_SECRET": secret,
        "DATABASE_URL": throwaway.dsn,  # a unix-socket URI, as the embedded server gives it
        "CLERK_SYNC_DB_TIMEOUT": "3",
    }
    with support.running_server(env) as server:
        url = server.webhook_url
        first = Sender(key, url, support.user_event("user.created", "user_out1", 1_000))
        response, _ = first.post()
        assert outcome(response) == "applied"

        throwaway.stop()
        # One delivery finds the pool's connection dead, the next must connect afresh: both 503.
        during = Sender(
            key, url, support.user_event("user.updated", "user_out1", 2_000, first_name="Grace")
        )
        for _ in range(3):
            response, elapsed = during.post()
            assert_unavailable(response, elapsed)
        time.sleep(PROBE_EVERY_SECONDS)  # /readyz keeps its last probe's answer that long
        response, elapsed = get(server.url + "/readyz")
        assert response.status_code == 503, response.text
        assert elapsed < SVIX_LIMIT
        assert "error" in response.json()
        response, _ = get(server.url + "/healthz")
        assert response.status_code == 200

        throwaway.start()
        response, elapsed = during.post()
        assert outcome(response) == "applied", "the first retry after the database came back"
        assert elapsed < SVIX_LIMIT
        row = user_row(throwaway.dsn, "user_out1")
        assert row is not None and row["first_name"] == "Grace"

        response, _ = during.post()
        assert outcome(response) == "duplicate"
        response, _ = first.post()
        assert outcome(response) == "duplicate"
        assert sorted(inbox_ids(throwaway.dsn)) == sorted([first.svix_id, during.svix_id])
        time.sleep(PROBE_EVERY_SECONDS)
        response, _ = get(server.url + "/readyz")
        assert response.status_code == 200, response.text


@contextlib.contextmanager
def users_table_locked(dsn: str) -> Iterator[threading.Event]:
    """Holds an ACCESS EXCLUSIVE lock on public.users from another connection until the block
    ends (or LOCK_HELD_AT_MOST seconds have passed); yields the event that releases it."""
    locked = threading.Event()
    release = threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            async with conn.transaction():
                await conn.execute("lock table public.users in access exclusive mode")
                locked.set()
                await asyncio.to_thread(release.wait, LOCK_HELD_AT_MOST)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failure.append(exc)
            locked.set()

    thread = threading.Thread(target=run, name="lock-holder", daemon=True)
    thread.start()
    try:
        assert locked.wait(15), "could not take the lock"
        assert not failure, failure
        yield release
    finally:
        release.set()
        thread.join(LOCK_HELD_AT_MOST + 10)
        assert not thread.is_alive()


def test_slow_database_answers_503_in_time_and_changes_nothing(
    throwaway: support.ThrowawayPostgres,
) -> None:
    secret, key = support.make_secret()
    base = {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": throwaway.dsn}
    # One replica with a short database timeout, one with the default configuration.
    with (
        support.running_server({**base, "CLERK_SYNC_DB_TIMEOUT": "3"}) as short,
        support.running_server(base, ["--no-migrate"]) as default,
    ):
        warm = Sender(key, short.webhook_url, support.user_event("user.created", "user_slow", 1))
        assert outcome(warm.post()[0]) == "applied"
        warm.url = default.webhook_url
        assert outcome(warm.post()[0]) == "duplicate"  # both pools now hold a live connection

        # More deliveries at once than the pool has connections (10): some wait for the pool,
        # some for the lock. Each replica gets new users and an update of the known one.
        senders = [
            Sender(
                key, server.webhook_url, support.user_event("user.created", f"user_{name}{i}", 5)
            )
            for name, server, count in (("short", short, 6), ("default", default, 12))
            for i in range(count)
        ]
        senders += [
            Sender(
                key,
                server.webhook_url,
                support.user_event("user.updated", "user_slow", 10 + n, first_name=f"Slow{n}"),
            )
            for n, server in enumerate((short, default))
        ]
        with users_table_locked(throwaway.dsn) as release:
            with ThreadPoolExecutor(len(senders)) as pool:
                results = list(pool.map(lambda s: s.post(), senders))
            readyz = [get(server.url + "/readyz") for server in (short, default)]
            release.set()

        for sender, (response, elapsed) in zip(senders, results, strict=True):
            assert_unavailable(response, elapsed)
            replica = "short" if sender.url == short.webhook_url else "default"
            if replica == "short":
                assert elapsed < 3 * 2 + 1 + 2, f"CLERK_SYNC_DB_TIMEOUT=3 took {elapsed:.1f}s"
        for response, elapsed in readyz:
            assert response.status_code in (200, 503), response.text
            assert elapsed < SVIX_LIMIT

        # A 503 changed nothing, even once the lock is gone and a cancelled write could resume.
        time.sleep(1)
        assert inbox_ids(throwaway.dsn) == [warm.svix_id]
        row = user_row(throwaway.dsn, "user_slow")
        assert row is not None and row["first_name"] == "Ada"
        assert [r["id"] for r in support.fetch(throwaway.dsn, "select id from public.users")] == [
            "user_slow"
        ]

        # Svix retries: now every delivery applies, quickly.
        for sender in senders:
            response, elapsed = sender.post()
            assert outcome(response) == "applied", sender.body
            assert elapsed < SVIX_LIMIT
        row = user_row(throwaway.dsn, "user_slow")
        assert row is not None and row["first_name"] == "Slow1"
        assert len(support.fetch(throwaway.dsn, "select id from public.users")) == 1 + 6 + 12
        assert sorted(inbox_ids(throwaway.dsn)) == sorted(
            [warm.svix_id] + [s.svix_id for s in senders]
        )
        time.sleep(PROBE_EVERY_SECONDS)
        for server in (short, default):
            response, _ = get(server.url + "/readyz")
            assert response.status_code == 200, response.text
