"""Retention: old `clerk_sync.inbox` rows are deleted; dead letters are kept until replayed.

The inbox is the dedupe key of every delivery, so it must outlast Svix's retries (about 27 hours
after the first attempt): rows are kept at least 2 days, 30 by default
(`CLERK_SYNC_RETENTION_DAYS`). Rows go in chunks of `BATCH` per statement, each its own short
transaction, so a purge never holds many locks for long, and replicas purging at once skip the
rows another one holds.

The server runs `retention_loop` in the background; `clerk-sync purge` does one pass by hand
(and, with `--dead-letters`, purges old dead letters too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg

from clerk_sync.database import DATABASE_ERRORS, connect
from clerk_sync.errors import ConfigError

log = logging.getLogger("clerk_sync.retention")

MIN_RETENTION = dt.timedelta(days=2)
DEFAULT_RETENTION_DAYS = 30
BATCH = 5000
DEFAULT_INTERVAL_S = 3600.0

PURGE_SQL = "select public.clerk_sync_purge_inbox($1, $2, $3)"


class RetentionTooShort(ConfigError, ValueError):
    """Dedupe would not outlast Svix's retries."""


def retention_period(older_than: float | dt.timedelta) -> dt.timedelta:
    """`older_than` (days, or a timedelta) checked against the 2-day floor."""
    period = older_than if isinstance(older_than, dt.timedelta) else dt.timedelta(days=older_than)
    if period < MIN_RETENTION:
        raise RetentionTooShort(
            f"inbox rows are kept at least {MIN_RETENTION.days} days, since the inbox is what "
            "recognises Svix's retries (for about 27 hours)"
        )
    return period


async def purge_expired(
    db: asyncpg.Pool | asyncpg.Connection,
    days: float | dt.timedelta = DEFAULT_RETENTION_DAYS,
    *,
    dead_letters: bool = False,
    batch: int = BATCH,
) -> int:
    """Delete inbox rows received more than `days` ago, `batch` at a time; returns how many.

    Dead letters (outcome 'invalid') are kept unless `dead_letters`. Pass a pool, or a connection
    that is not inside a transaction: each chunk must commit on its own.
    """
    period = retention_period(days)
    total = 0
    while True:
        deleted = int(await db.fetchval(PURGE_SQL, period, dead_letters, batch))
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # let deliveries on the same event loop go first


async def retention_loop(
    db: str | asyncpg.Pool,
    days: float = DEFAULT_RETENTION_DAYS,
    interval_s: float = DEFAULT_INTERVAL_S,
    *,
    prepared_statements: str = "auto",
) -> None:
    """Purge expired inbox rows now and every `interval_s` seconds, until cancelled.

    `db` is a DSN (a connection is made for each pass and closed after it) or an asyncpg pool.
    A failed pass is logged and tried again at the next interval; it never ends the loop. The
    server starts it in its lifespan (direct PostgreSQL mode only; REST mode has no DSN):

        task = asyncio.create_task(retention_loop(dsn, settings.retention_days))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    """
    period = retention_period(days)
    while True:
        try:
            if isinstance(db, str):
                conn = await connect(db, prepared_statements)
                try:
                    deleted = await purge_expired(conn, period)
                finally:
                    await conn.close(timeout=5)
            else:
                deleted = await purge_expired(db, period)
        except DATABASE_ERRORS as exc:
            log.warning("retention: purge failed, next try in %.0f s: %s", interval_s, exc)
        else:
            if deleted:
                log.info("retention: purged %d inbox rows older than %s", deleted, period)
        await asyncio.sleep(interval_s)
