"""The direct PostgreSQL store: group-committed batches give the same outcomes as one-by-one
writes, and one event the database refuses does not take its batch down with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from clerk_sync.app import WEBHOOK_PATH, create_app_from_settings
from clerk_sync.events import Outcome, parse_event
from clerk_sync.settings import Settings
from clerk_sync.storage import EventRejected
from clerk_sync.storage.postgres import PostgresStore, _Write
from tests import support


def event(user_id: str, updated_at: int, **data: object) -> bytes:
    return json.dumps(support.user_event("user.updated", user_id, updated_at, **data)).encode()


def test_concurrent_deliveries_are_batched_with_per_event_outcomes(db: str) -> None:
    bodies = [
        ("msg_a1", event("user_a", 2)),
        ("msg_a0", event("user_a", 1)),  # older: stale unless it lands first
        ("msg_b1", event("user_b", 5)),
        ("msg_b1", event("user_b", 5)),  # the same delivery twice
        ("msg_bad", b'{"type":"user.updated","data":{"id":"user_c","updated_at":1,"x":1e-20000}}'),
        ("msg_d1", event("user_d", 9)),
    ]

    async def go() -> list[object]:
        store = await PostgresStore.open(db)
        try:
            return list(
                await asyncio.gather(
                    *(store.apply(mid, parse_event(body)) for mid, body in bodies),
                    return_exceptions=True,
                )
            )
        finally:
            await store.close()

    outcomes = asyncio.run(go())
    assert isinstance(outcomes[4], EventRejected)
    assert sorted([outcomes[2], outcomes[3]]) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert outcomes[5] == Outcome.APPLIED
    assert outcomes[0] == Outcome.APPLIED
    assert outcomes[1] in (Outcome.APPLIED, Outcome.STALE)
    rows = support.fetch(
        db,
        "select id, (extract(epoch from updated_at) * 1000)::bigint as v from public.users order by id",
    )
    assert [(r["id"], r["v"]) for r in rows] == [("user_a", 2), ("user_b", 5), ("user_d", 9)]
    inbox = support.fetch(db, "select svix_id from clerk_sync.inbox order by 1")
    assert [r["svix_id"] for r in inbox] == ["msg_a0", "msg_a1", "msg_b1", "msg_d1"]


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_a_burst_in_one_batch_matches_one_by_one(db: str, mode: str) -> None:
    stream = []
    for n in range(30):
        user = f"user_{n % 7}"
        stream.append((f"msg_{n}", event(user, 1000 + (n * 37) % 101)))
    stream.append(("msg_del", json.dumps(support.deleted_event("user_3")).encode()))

    async def go(store: PostgresStore) -> list[Outcome]:
        return list(await asyncio.gather(*(store.apply(m, parse_event(b)) for m, b in stream)))

    async def run_all() -> None:
        store = await PostgresStore.open(db, delete_mode=mode)
        try:
            await go(store)
        finally:
            await store.close()

    asyncio.run(run_all())
    expected: dict[str, int] = {}
    for n in range(30):
        expected[f"user_{n % 7}"] = max(expected.get(f"user_{n % 7}", 0), 1000 + (n * 37) % 101)
    rows = support.fetch(
        db,
        "select id, (extract(epoch from updated_at) * 1000)::bigint as v, deleted_at from public.users order by id",
    )
    got = {r["id"]: r["v"] for r in rows}
    if mode == "hard":
        expected.pop("user_3")
    for user_id, version in expected.items():
        assert got.get(user_id) == version or user_id == "user_3"


def test_when_a_batch_is_applied_one_by_one_each_answer_is_its_own(db: str) -> None:
    """A refused event sends its batch through one-by-one writes; a busy user among them must
    not turn the others' committed writes into 503s (a 503 promises nothing changed), nor hold
    them up: its write is handed back (None) to be tried again, and goes through later."""
    bad = b'{"type":"user.updated","data":{"id":"user_bad","updated_at":1,"x":1e-20000}}'

    async def go() -> tuple[list[object], float]:
        store = await PostgresStore.open(db, timeout=1.0)
        holder = await asyncpg.connect(db)
        try:
            # user_slow's lock (the write path's per-user lock) is held here for 2 s.
            await holder.execute("begin")
            await holder.execute("select pg_advisory_xact_lock(1668049779, hashtext('user_slow'))")
            loop = asyncio.get_running_loop()
            now = loop.time()
            batch = [
                _Write("msg_first", parse_event(event("user_first", 1)), now + 1.0),
                _Write("msg_bad", parse_event(bad), now + 1.0),
                _Write("msg_slow", parse_event(event("user_slow", 1)), now + 3.5),
                _Write("msg_last", parse_event(event("user_last", 1)), now + 5.0),
            ]
            loop.call_later(2.0, lambda: asyncio.ensure_future(holder.execute("commit")))
            started = loop.time()
            results = await store._apply_batch(batch)
            took = loop.time() - started
            # Once the lock is released, tried again (as PostgresStore.apply does), it is written.
            await asyncio.sleep(now + 2.2 - loop.time())
            results.append(await store.apply("msg_slow", parse_event(event("user_slow", 1))))
            return list(results), took
        finally:
            await holder.close()
            await store.close()

    results, took = asyncio.run(go())
    assert results[0] == Outcome.APPLIED
    assert isinstance(results[1], EventRejected)
    assert results[2:] == [None, Outcome.APPLIED, Outcome.APPLIED]
    assert took < 1.0
    rows = support.fetch(db, "select id from public.users order by id")
    assert [r["id"] for r in rows] == ["user_first", "user_last", "user_slow"]


def test_a_batch_with_one_event_an_apps_constraint_refuses_applies_the_others(db: str) -> None:
    """The poison event is rejected alone (a dead letter for the caller); the rest of its batch
    applies, as for a data exception."""
    support.execute(
        db,
        "alter table public.users add constraint app_first_name_short"
        " check (length(first_name) < 10)",
    )
    try:

        async def go() -> list[object]:
            store = await PostgresStore.open(db)
            try:
                now = asyncio.get_running_loop().time()
                batch = [
                    _Write("msg_ok1", parse_event(event("user_ok1", 1)), now + 5),
                    _Write(
                        "msg_poison",
                        parse_event(event("user_poison", 1, first_name="Bartholomew")),
                        now + 5,
                    ),
                    _Write("msg_ok2", parse_event(event("user_ok2", 1)), now + 5),
                ]
                return list(await store._apply_batch(batch))
            finally:
                await store.close()

        results = asyncio.run(go())
    finally:
        support.execute(
            db, "alter table public.users drop constraint if exists app_first_name_short"
        )
    assert results[0] == results[2] == Outcome.APPLIED
    assert isinstance(results[1], EventRejected)
    assert "app_first_name_short" in str(results[1]) and "Bartholomew" not in str(results[1])
    rows = support.fetch(db, "select id from public.users order by id")
    assert [r["id"] for r in rows] == ["user_ok1", "user_ok2"]


def test_a_hard_delete_a_foreign_key_restricts_is_rejected_not_retried(db: str) -> None:
    support.execute(
        db,
        "create table public.app_orders (id int primary key,"
        " user_id text not null references public.users (id) on delete restrict)",
    )
    try:

        async def go() -> list[object]:
            store = await PostgresStore.open(db, delete_mode="hard")
            try:
                await store.apply("msg_u", parse_event(event("user_buyer", 1)))
                await asyncio.to_thread(
                    support.execute, db, "insert into public.app_orders values (1, 'user_buyer')"
                )
                deleted = json.dumps(support.deleted_event("user_buyer")).encode()
                return await asyncio.gather(
                    store.apply("msg_del", parse_event(deleted)), return_exceptions=True
                )
            finally:
                await store.close()

        [result] = asyncio.run(go())
    finally:
        support.execute(db, "drop table if exists public.app_orders")
    assert isinstance(result, EventRejected)
    # A foreign key violation: 23503 on PostgreSQL 15, 23001 (restrict_violation) from 16 on.
    assert ("23503" in str(result) or "23001" in str(result)) and "app_orders_user_id_fkey" in str(
        result
    )


# --- a contended user ----------------------------------------------------------------------------

LOCKED_USER = "user_locked"


@contextlib.asynccontextmanager
async def holding(db: str, how: str) -> AsyncIterator[asyncpg.Connection]:
    """Another session's open transaction that holds the locked user: its advisory lock (another
    replica's batch, a backfill page) or its row (an app's `select … for update`)."""
    conn = await asyncpg.connect(db)
    try:
        transaction = conn.transaction()
        await transaction.start()
        if how == "advisory":
            await conn.execute(
                "select pg_advisory_xact_lock(1668049779, hashtext($1))", LOCKED_USER
            )
        else:
            await conn.execute("select * from public.users where id = $1 for update", LOCKED_USER)
        yield conn
        await transaction.rollback()
    finally:
        await conn.close()


async def timed_post(client: httpx.AsyncClient, key: bytes, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.post(
        WEBHOOK_PATH, content=body, headers=support.signed_headers(key, body)
    )
    return response.status_code, time.perf_counter() - started


async def deliver_around_the_locked_user(
    db: str, secret: tuple[str, bytes], tmp_path: Path, how: str, release_after: float | None
) -> tuple[list[tuple[int, float]], tuple[int, float]]:
    """30 deliveries for other users and one for the locked user, sent together: the answers of
    the 30 and of the locked one."""
    settings = Settings(
        webhook_secret=secret[0], database_url=db, data_dir=tmp_path, db_timeout=DB_TIMEOUT
    )
    app = create_app_from_settings(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clerk-sync") as client:
            async with holding(db, how):
                others = [
                    timed_post(client, secret[1], event(f"user_other_{n}", 10)) for n in range(30)
                ]
                locked = asyncio.create_task(timed_post(client, secret[1], event(LOCKED_USER, 10)))
                answers = await asyncio.gather(*others)
                if release_after is None:
                    return answers, await locked
                await asyncio.sleep(release_after)
            return answers, await locked


DB_TIMEOUT = 5.0


@pytest.mark.parametrize("how", ["advisory", "row"])
def test_a_user_held_elsewhere_holds_up_nobody_else(
    db: str, secret: tuple[str, bytes], tmp_path: Path, how: str
) -> None:
    support.execute(db, f"insert into public.users (id) values ('{LOCKED_USER}')")
    answers, (status, elapsed) = asyncio.run(
        deliver_around_the_locked_user(db, secret, tmp_path, how, release_after=None)
    )
    assert [s for s, _ in answers] == [200] * 30
    assert max(t for _, t in answers) < 3, answers  # not the 5 s of the locked one's deadline
    # The locked user's own delivery: 503 by its deadline, not applied.
    assert status == 503 and DB_TIMEOUT - 1 < elapsed < DB_TIMEOUT + 1, elapsed
    rows = support.fetch(db, "select count(*) as n from clerk_sync.inbox")
    assert rows == [{"n": 30}]


def test_a_user_released_in_time_is_written(
    db: str, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    support.execute(db, f"insert into public.users (id) values ('{LOCKED_USER}')")
    answers, (status, elapsed) = asyncio.run(
        deliver_around_the_locked_user(db, secret, tmp_path, "row", release_after=1.0)
    )
    assert [s for s, _ in answers] == [200] * 30
    assert status == 200 and 1.0 <= elapsed < DB_TIMEOUT, elapsed
    [row] = support.fetch(db, "select updated_at from public.users where id = $1", LOCKED_USER)
    assert row["updated_at"] is not None
