"""Direct PostgreSQL through `DATABASE_URL` (or the embedded server), with an asyncpg pool.

Each event is one call of `public.clerk_sync_apply`: one statement, one transaction, so a
failure at any point leaves nothing half-written. Every wait is bounded (pool, connect, query)
so that a dead or stuck database is answered 503 well inside Svix's 15 s.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import asyncpg

from clerk_sync.events import ClerkEvent, Outcome
from clerk_sync.migrations import current_version, latest_version
from clerk_sync.storage.base import EventRejected, StoreUnavailable

log = logging.getLogger("clerk_sync.storage")

APPLY_SQL = "select public.clerk_sync_apply($1, $2::jsonb, $3)"
RECORD_INVALID_SQL = "select public.clerk_sync_record_invalid($1, $2, $3)"

# Supabase's transaction poolers (Supavisor, PgBouncer) listen on 6543 and cannot keep prepared
# statements between transactions.
TRANSACTION_POOLER_PORT = 6543


def uses_transaction_pooler(dsn: str) -> bool:
    try:
        return urlsplit(dsn).port == TRANSACTION_POOLER_PORT
    except ValueError:
        return False


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, without its password: for error messages."""
    try:
        parts = urlsplit(dsn)
        where = parts.hostname or "local socket"
        return f"{where}:{parts.port or 5432}{parts.path}"
    except ValueError:
        return "the configured database"


def statement_cache_size(dsn: str, prepared_statements: str) -> int:
    """asyncpg's prepared-statement cache: off through a transaction pooler (or when asked)."""
    use_cache = prepared_statements == "on" or (
        prepared_statements == "auto" and not uses_transaction_pooler(dsn)
    )
    return 1024 if use_cache else 0


async def connect(
    dsn: str, prepared_statements: str = "auto", timeout: float = 10
) -> asyncpg.Connection:
    return await asyncpg.connect(
        dsn, timeout=timeout, statement_cache_size=statement_cache_size(dsn, prepared_statements)
    )


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """asyncpg resets every connection it takes back (RESET ALL, UNLISTEN, …): one more round
    trip per delivery. We keep no session state (advisory locks are transaction-scoped), and an
    open transaction is still rolled back by the pool before this runs."""


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, *, delete_mode: str, timeout: float) -> None:
        self._pool = pool
        self._delete_mode = delete_mode
        self._timeout = timeout

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

    async def _fetchval(self, query: str, *args: object) -> object:
        try:
            async with asyncio.timeout(self._timeout * 2 + 1):
                async with self._pool.acquire(timeout=self._timeout) as conn:
                    return await conn.fetchval(query, *args, timeout=self._timeout)
        except asyncpg.DataError as exc:
            raise EventRejected(str(exc)) from None
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise StoreUnavailable("the database did not answer in time") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"database error: {type(exc).__name__}: {exc}") from exc

    async def apply(self, message_id: str, event: ClerkEvent) -> Outcome:
        result = await self._fetchval(APPLY_SQL, message_id, event.body, self._delete_mode)
        return Outcome(str(result))

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        await self._fetchval(RECORD_INVALID_SQL, message_id, body, error)

    async def not_ready_reason(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout * 2 + 1):
                async with self._pool.acquire(timeout=self._timeout) as conn:
                    version = await current_version(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"database unreachable: {type(exc).__name__}"
        if version < latest_version():
            return (
                f"schema at version {version}, expected {latest_version()}: run clerk-sync migrate"
            )
        return None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=self._timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()
