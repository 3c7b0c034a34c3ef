"""Retention: old `clerk_sync.inbox` rows are deleted, and sooner the payloads of handled
deliveries; dead letters are kept, with theirs, until replayed.

The inbox is the dedupe key of every delivery, so it must outlast Svix's retries (about 27 hours
after the first attempt): rows are kept at least 2 days, 30 by default
(`CLERK_SYNC_RETENTION_DAYS`). The payloads of deliveries that applied, were stale or ignored
(what `replay` needs, most of a row's bytes) are dropped from their rows after
`CLERK_SYNC_PAYLOAD_RETENTION_DAYS` (3 by default; 0 drops them at every pass). Rows go in chunks of `BATCH` per statement, each its own short
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
DEFAULT_PAYLOAD_RETENTION_DAYS = 3
BATCH = 5000
DEFAULT_INTERVAL_S = 3600.0

PURGE_SQL = "select public.clerk_sync_purge_inbox($1, $2, $3)"
DROP_PAYLOADS_SQL = "select public.clerk_sync_drop_payloads($1, $2)"

Database = asyncpg.Pool | asyncpg.Connection


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


async def _in_chunks(db: Database, query: str, batch: int, *args: object) -> int:
    """Run `query` (a function that handles up to `batch` rows and says how many) until it
    handles fewer; each call commits on its own. Returns the total."""
    total = 0
    while True:
        done = int(await db.fetchval(query, *args, batch))
        total += done
        if done < batch:
            return total
        await asyncio.sleep(0)  # let deliveries on the same event loop go first


async def purge_expired(
    db: Database,
    days: float | dt.timedelta = DEFAULT_RETENTION_DAYS,
    *,
    dead_letters: bool = False,
    batch: int = BATCH,
) -> int:
    """Delete inbox rows received more than `days` ago, `batch` at a time; returns how many.

    Dead letters (outcome 'invalid') are kept unless `dead_letters`. Pass a pool, or a connection
    that is not inside a transaction: each chunk must commit on its own.
    """
    return await _in_chunks(db, PURGE_SQL, batch, retention_period(days), dead_letters)


async def drop_expired_payloads(
    db: Database, days: float | dt.timedelta = DEFAULT_PAYLOAD_RETENTION_DAYS, *, batch: int = BATCH
) -> int:
    """Drop the payloads of handled deliveries received more than `days` ago (0: all of them),
    `batch` rows at a time; returns how many. Dead letters keep theirs. Same `db` as
    `purge_expired`."""
    period = days if isinstance(days, dt.timedelta) else dt.timedelta(days=days)
    return await _in_chunks(db, DROP_PAYLOADS_SQL, batch, period)


async def retention_pass(
    db: Database,
    days: float | dt.timedelta = DEFAULT_RETENTION_DAYS,
    payload_days: float | dt.timedelta = DEFAULT_PAYLOAD_RETENTION_DAYS,
    *,
    dead_letters: bool = False,
) -> tuple[int, int]:
    """One pass: expired rows deleted, then expired payloads dropped; how many of each."""
    deleted = await purge_expired(db, days, dead_letters=dead_letters)
    return deleted, await drop_expired_payloads(db, payload_days)


async def retention_loop(
    db: str | asyncpg.Pool,
    days: float = DEFAULT_RETENTION_DAYS,
    interval_s: float = DEFAULT_INTERVAL_S,
    *,
    payload_days: float = DEFAULT_PAYLOAD_RETENTION_DAYS,
    prepared_statements: str = "auto",
) -> None:
    """Purge expired inbox rows and payloads now and every `interval_s` seconds, until
    cancelled.

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
                    deleted, dropped = await retention_pass(conn, period, payload_days)
                finally:
                    await conn.close(timeout=5)
            else:
                deleted, dropped = await retention_pass(db, period, payload_days)
        except DATABASE_ERRORS as exc:
            log.warning("retention: purge failed, next try in %.0f s: %s", interval_s, exc)
        else:
            if deleted:
                log.info("retention: purged %d inbox rows older than %s", deleted, period)
            if dropped:
                log.info("retention: dropped %d payloads older than %g days", dropped, payload_days)
        await asyncio.sleep(interval_s)
