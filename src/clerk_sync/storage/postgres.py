"""The `Store` backend for direct PostgreSQL through `DATABASE_URL` (or the embedded server),
with an asyncpg pool. Connection options and error kinds are `clerk_sync.database`'s.

Each event is one call of `public.clerk_sync_apply`: one statement, one transaction, so a
failure at any point leaves nothing half-written. Every wait is bounded (pool, connect, query)
so that a dead or stuck database is answered 503 well inside Svix's 15 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import orjson

from clerk_sync.database import (
    CONNECT_ERRORS,
    DATABASE_ERRORS,
    POOLER_ERRORS,
    UNREACHABLE,
    describe_error,
    refuses,
    statement_cache_size,
)
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
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        delete_mode: str,
        timeout: float,
        reopen_unprepared: Callable[[], Awaitable[asyncpg.Pool]] | None = None,
    ) -> None:
        self._pool = pool
        self._delete_mode = delete_mode
        self._timeout = timeout
        # While set, the pool prepares statements without knowing whether a transaction pooler
        # sits in front (on a port other than 6543): the first sign of one swaps the pool for
        # one from this, which prepares none, and the statement is run again.
        self._reopen_unprepared = reopen_unprepared
        self._reopening = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
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
        cache_size = statement_cache_size(dsn, prepared_statements)

        def create_pool(cache_size: int) -> Awaitable[asyncpg.Pool]:
            # min_size=0: the server starts (and says it is not ready) even while the database
            # is down; connections are made on first use and remade after an outage.
            return asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=pool_size,
                max_inactive_connection_lifetime=60,
                reset=_no_session_reset,
                timeout=timeout,
                statement_cache_size=cache_size,
            )

        detect = prepared_statements == "auto" and cache_size > 0
        return cls(
            await create_pool(cache_size),
            delete_mode=delete_mode,
            timeout=timeout,
            reopen_unprepared=(lambda: create_pool(0)) if detect else None,
        )

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
                pool = self._pool
                async with pool.acquire(timeout=budget) as conn:
                    budget = deadline - loop.time()
                    if budget <= 0:
                        raise TimeoutError
                    try:
                        return list(await conn.fetch(query, *args, timeout=budget))
                    except POOLER_ERRORS:
                        # Nothing ran: the statement failed at its preparation (or binding).
                        if self._reopen_unprepared is None:
                            raise
                # Only once a transaction pooler has shown itself, the connection back in the pool.
                await self._stop_preparing(pool)
                return await self._fetch(deadline, query, *args)
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise StoreUnavailable("the database did not answer in time") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database error: {describe_error(exc)}") from exc
        except asyncpg.PostgresError as exc:
            if refuses(exc):  # this event's data (a constraint, an app's trigger): never retry
                raise EventRejected(describe_error(exc)) from None
            raise

    async def _stop_preparing(self, seen_on: asyncpg.Pool) -> None:
        """A transaction pooler keeps prepared statements on its server connections, where the
        next client finds them: from now on, prepare none (as on port 6543). The first caller
        to find out swaps the pool; the others, meanwhile, use the new one."""
        async with self._reopening:
            if self._pool is not seen_on or self._reopen_unprepared is None:
                return
            self._pool = await self._reopen_unprepared()
            self._reopen_unprepared = None
            log.warning(
                "DATABASE_URL leads to a transaction pooler (prepared statements do not last "
                "between transactions there): prepared statements are off from now on; set "
                "CLERK_SYNC_PREPARED_STATEMENTS=off to start that way"
            )
            retiring = asyncio.create_task(self._close_pool(seen_on))
            self._retired.add(retiring)
            retiring.add_done_callback(self._retired.discard)

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
            # Anything else (a deadlock, a failover, a missing grant): a retry may settle it.
            return StoreUnavailable(f"database error: {describe_error(exc)}")
        return None if rows[0][0] == RETRY else Outcome(rows[0][0])

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        try:
            await self._fetch(self._deadline(), RECORD_INVALID_SQL, message_id, body, error)
        except (EventRejected, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"database error: {describe_error(exc)}") from exc

    async def read_user(self, user_id: str) -> StoredUser | None:
        try:
            rows = await self._fetch(self._deadline(), READ_USER_SQL, user_id)
        except (EventRejected, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"database error: {describe_error(exc)}") from exc
        if not rows:
            return None
        row = dict(rows[0])
        synced_at = row.pop("synced_at")
        for column in ("public_metadata", "unsafe_metadata"):
            row[column] = orjson.loads(row[column])
        return StoredUser(row, synced_at)

    async def not_ready_reason(self) -> str | None:
        pool = self._pool
        try:
            try:
                version = await self._schema_version(pool)
            except POOLER_ERRORS:
                if self._reopen_unprepared is None:
                    raise
                await self._stop_preparing(pool)
                version = await self._schema_version(self._pool)
        except CONNECT_ERRORS as exc:
            return f"database unreachable: {type(exc).__name__}"
        if version < latest_version():
            return (
                f"schema at version {version}, expected {latest_version()}: run clerk-sync migrate"
            )
        return None

    async def _schema_version(self, pool: asyncpg.Pool) -> int:
        async with asyncio.timeout(self._timeout):
            async with pool.acquire(timeout=self._timeout) as conn:
                return await current_version(conn)

    async def close(self) -> None:
        await asyncio.gather(*self._retired)
        await self._close_pool(self._pool)

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), timeout=self._timeout)
        except DATABASE_ERRORS:
            pool.terminate()
