"""The `Store` backend for direct PostgreSQL through `DATABASE_URL` (or the embedded server),
with an asyncpg pool. Connection options and error kinds are `clerk_sync.database`'s.

Each event is one call of `public.clerk_sync_apply`: one statement, one transaction, so a
failure at any point leaves nothing half-written. Every wait is bounded (pool, connect, query)
so that a dead or stuck database is answered 503 well inside Svix's 15 s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import orjson

from clerk_sync.database import CONNECT_ERRORS, DATABASE_ERRORS, UNREACHABLE, statement_cache_size
from clerk_sync.events import ClerkEvent, Outcome
from clerk_sync.migrations import current_version, latest_version
from clerk_sync.storage.base import (
    BUSY_USER,
    LOCKED_RETRY_S,
    RETRY,
    USER_COLUMNS,
    EventRejected,
    StoredUser,
    StoreUnavailable,
)
from clerk_sync.storage.group_commit import GroupCommitter

log = logging.getLogger("clerk_sync.storage")

# Several events in one statement, so one transaction, with the outcomes of applying them
# one after another in the order given.
APPLY_BATCH_SQL = """
select event_outcome
from public.clerk_sync_apply_batch($1::text[], $2::text[]::jsonb[], $3)
order by event_index
"""
RECORD_INVALID_SQL = "select public.clerk_sync_record_invalid($1, $2, $3)"
# One user's row, and when a user event (webhook, backfill or session sync) last reached it: the
# newest such inbox row (the inbox is indexed by user), or the row's own version if later.
READ_USER_SQL = f"""
select {", ".join("u." + column for column in USER_COLUMNS)},
       greatest(u.updated_at, (
           select max(i.received_at) from clerk_sync.inbox as i
           where i.user_id = u.id and i.event_type in ('user.created', 'user.updated')
       )) as synced_at
from public.users as u
where u.id = $1
"""

# Group commit: one write transaction at a time per process; deliveries that arrive while it
# runs share the next one (up to MAX_BATCH). A batch statement has a fixed cost, so fewer, larger
# batches do more per second (measured with bench/run.py: ~4,400/s with one in flight, ~3,600/s
# with two, ~2,900/s with four). Every batch still ends by its earliest caller's deadline, so a
# stuck one cannot hold the others past it; a batch never waits for a lock (see RETRY).
MAX_WRITES_IN_FLIGHT = 1
MAX_BATCH = 100

# A failure to reach the database, or a DSN asyncpg cannot read (ValueError): answered 503.
_UNAVAILABLE = (*UNREACHABLE, ValueError)


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """asyncpg resets every connection it takes back (RESET ALL, UNLISTEN, …): one more round
    trip per delivery. We keep no session state (advisory locks are transaction-scoped), and an
    open transaction is still rolled back by the pool before this runs."""


@dataclass(frozen=True, slots=True)
class _Write:
    message_id: str
    event: ClerkEvent
    deadline: float  # event loop time by which the caller must have its answer


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, *, delete_mode: str, timeout: float) -> None:
        self._pool = pool
        self._delete_mode = delete_mode
        self._timeout = timeout
        # None: the event's user was busy (RETRY), it goes again on its own.
        self._writer: GroupCommitter[_Write, Outcome | None] = GroupCommitter(
            self._apply_batch, max_in_flight=MAX_WRITES_IN_FLIGHT, max_batch=MAX_BATCH
        )

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        delete_mode: str = "soft",
        timeout: float = 5.0,
        pool_size: int = 10,
        prepared_statements: str = "auto",
    ) -> PostgresStore:
        # min_size=0: the server starts (and says it is not ready) even while the database is
        # down; connections are made on first use and remade after an outage.
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=pool_size,
            max_inactive_connection_lifetime=60,
            reset=_no_session_reset,
            timeout=timeout,
            statement_cache_size=statement_cache_size(dsn, prepared_statements),
        )
        return cls(pool, delete_mode=delete_mode, timeout=timeout)

    async def _fetch(self, deadline: float, query: str, *args: object) -> list[asyncpg.Record]:
        """Run one statement (one transaction) by `deadline` (event loop time), mapping failures
        to the Store's exceptions. asyncpg cancels the statement in the server when time runs
        out, so a write that is answered 503 is rolled back, not committed later."""
        loop = asyncio.get_running_loop()
        try:
            # The extra second lets the statement's own timeout answer first; it only guards
            # against a stuck driver.
            async with asyncio.timeout_at(deadline + 1):
                budget = deadline - loop.time()
                if budget <= 0:
                    raise TimeoutError
                async with self._pool.acquire(timeout=budget) as conn:
                    budget = deadline - loop.time()
                    if budget <= 0:
                        raise TimeoutError
                    return list(await conn.fetch(query, *args, timeout=budget))
        except asyncpg.DataError as exc:
            raise EventRejected(str(exc)) from None
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise StoreUnavailable("the database did not answer in time") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database error: {type(exc).__name__}: {exc}") from exc

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._timeout

    async def apply(self, message_id: str, event: ClerkEvent) -> Outcome:
        write = _Write(message_id, event, self._deadline())
        outcome = await self._writer.submit(write)
        while outcome is None:  # its user is busy elsewhere: alone now, by its own deadline
            if asyncio.get_running_loop().time() + LOCKED_RETRY_S >= write.deadline:
                raise StoreUnavailable(BUSY_USER)
            await asyncio.sleep(LOCKED_RETRY_S)
            result = await self._apply_one(write)
            if isinstance(result, Exception):
                raise result
            outcome = result
        return outcome

    async def _apply_batch(self, batch: list[_Write]) -> list[Outcome | Exception | None]:
        if len(batch) > 1:
            ids = [write.message_id for write in batch]
            bodies = [write.event.body for write in batch]
            deadline = min(write.deadline for write in batch)
            try:
                rows = await self._fetch(deadline, APPLY_BATCH_SQL, ids, bodies, self._delete_mode)
            except StoreUnavailable as exc:
                return [exc] * len(batch)
            except (EventRejected, asyncpg.PostgresError):
                pass  # one event spoiled the batch: nothing was written; apply each on its own
            else:
                return [None if row[0] == RETRY else Outcome(row[0]) for row in rows]
        return [await self._apply_one(write) for write in batch]

    async def _apply_one(self, write: _Write) -> Outcome | Exception | None:
        try:
            rows = await self._fetch(
                write.deadline,
                APPLY_BATCH_SQL,
                [write.message_id],
                [write.event.body],
                self._delete_mode,
            )
        except (StoreUnavailable, EventRejected) as exc:
            return exc
        except asyncpg.PostgresError as exc:
            # Anything else (a lost race on the inbox key, a deadlock): retrying will settle it.
            return StoreUnavailable(f"database error: {type(exc).__name__}: {exc}")
        return None if rows[0][0] == RETRY else Outcome(rows[0][0])

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        try:
            await self._fetch(self._deadline(), RECORD_INVALID_SQL, message_id, body, error)
        except asyncpg.PostgresError as exc:
            raise StoreUnavailable(f"database error: {type(exc).__name__}: {exc}") from exc

    async def read_user(self, user_id: str) -> StoredUser | None:
        try:
            rows = await self._fetch(self._deadline(), READ_USER_SQL, user_id)
        except (EventRejected, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"database error: {type(exc).__name__}: {exc}") from exc
        if not rows:
            return None
        row = dict(rows[0])
        synced_at = row.pop("synced_at")
        for column in ("public_metadata", "unsafe_metadata"):
            row[column] = orjson.loads(row[column])
        return StoredUser(row, synced_at)

    async def not_ready_reason(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.acquire(timeout=self._timeout) as conn:
                    version = await current_version(conn)
        except CONNECT_ERRORS as exc:
            return f"database unreachable: {type(exc).__name__}"
        if version < latest_version():
            return (
                f"schema at version {version}, expected {latest_version()}: run clerk-sync migrate"
            )
        return None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=self._timeout)
        except DATABASE_ERRORS:
            self._pool.terminate()
