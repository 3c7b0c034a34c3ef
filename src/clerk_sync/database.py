"""Connecting to PostgreSQL, and what its failures mean, for every path that talks to it
directly: the `Store` backend's pool, the server's retention loop, and the operations commands
(`migrate`, `replay`, `events`, `purge`, `users`, `backfill`, `doctor`).

Connections work through Supabase's transaction pooler (port 6543: no prepared statements). A
failure becomes one of the kinds in `clerk_sync.errors`, by its SQLSTATE (`clerk_sync.sqlstate`
says which refuse the event itself and which are worth a retry), with a message of one line
that names where the database is but never the DSN (it holds the password), nor the row's
values (`describe_error`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg

from clerk_sync.errors import ClerkSyncError, ConfigError, DatabaseUnavailable, Refused
from clerk_sync.settings import describe_dsn
from clerk_sync.sqlstate import (
    CONFIGURATION_CLASSES,
    OWN_SCHEMA,
    REFUSED_CLASSES,
    REFUSED_CODES,
    describe_failure,
    refuses_event,
)

__all__ = [
    "CONFIGURATION_CLASSES",
    "CONNECT_ERRORS",
    "DATABASE_ERRORS",
    "OWN_SCHEMA",
    "POOLER_ERRORS",
    "REFUSED_CLASSES",
    "REFUSED_CODES",
    "TRANSACTION_POOLER_PORT",
    "UNREACHABLE",
    "SchemaTooOld",
    "connect",
    "connection",
    "database_error",
    "describe_dsn",
    "describe_error",
    "describe_failure",
    "one_line",
    "refuses",
    "refuses_event",
    "statement_cache_size",
    "uses_transaction_pooler",
]

# Supabase's transaction poolers (Supavisor, PgBouncer) listen on 6543 and cannot keep prepared
# statements between transactions.
TRANSACTION_POOLER_PORT = 6543

# Whatever the driver raises when a database cannot be reached or used: the network (OSError),
# time running out, the server's errors, and the driver's own (a connection closed under it).
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# The database could not be reached (or the connection broke): an outage, not a wrong query.
UNREACHABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)
# Connecting may also raise ValueError: asyncpg's answer to a DSN it cannot read.
CONNECT_ERRORS = (*DATABASE_ERRORS, ValueError)


def describe_error(exc: BaseException) -> str:
    """`describe_failure` for what asyncpg (or the network) raised."""
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(exc, asyncpg.PostgresError) or not sqlstate:
        return f"{type(exc).__name__}: {one_line(exc)}"
    return describe_failure(
        str(sqlstate),
        one_line(exc),  # asyncpg puts DETAIL (the row) on the lines after the first
        condition=type(exc).__name__,
        constraint=getattr(exc, "constraint_name", None),
        column=getattr(exc, "column_name", None),
        table=getattr(exc, "table_name", None),
        raised_in=getattr(exc, "context", None),
    )


def refuses(exc: BaseException) -> bool:
    """`refuses_event` for what asyncpg raised."""
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(exc, asyncpg.PostgresError) or not sqlstate:
        return False
    return refuses_event(str(sqlstate), getattr(exc, "schema_name", None))


class SchemaTooOld(ClerkSyncError):
    """The database's schema is older than this command needs: run `clerk-sync migrate`."""


def uses_transaction_pooler(dsn: str) -> bool:
    try:
        return urlsplit(dsn).port == TRANSACTION_POOLER_PORT
    except ValueError:
        return False


def statement_cache_size(dsn: str, prepared_statements: str) -> int:
    """asyncpg's prepared-statement cache: off through a transaction pooler (or when asked)."""
    use_cache = prepared_statements == "on" or (
        prepared_statements == "auto" and not uses_transaction_pooler(dsn)
    )
    return 1024 if use_cache else 0


# What asyncpg raises when a transaction pooler hands it a server connection where another
# client's prepared statements live (42P05), or one without its own (26000).
POOLER_ERRORS = (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError)


async def connect(
    dsn: str, prepared_statements: str = "auto", timeout: float = 10
) -> asyncpg.Connection:
    """One connection, for a command (or the retention loop): pooler-safe whatever the port,
    as its prepared-statement cache is off unless asked for (`on`). A command runs a few
    statements, which a cache does not speed up; and a transaction pooler on another port
    than 6543 (PgBouncer's default is 6432) cannot be told from its DSN. Raises what asyncpg
    raises (see `database_error`)."""
    cache = statement_cache_size(dsn, "on") if prepared_statements == "on" else 0
    return await asyncpg.connect(dsn, timeout=timeout, statement_cache_size=cache)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (asyncpg's run to several), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def database_error(exc: BaseException, dsn: str, doing: str, then: str = "") -> ClerkSyncError:
    """What a failure while `doing` something with the database at `dsn` means, in one line;
    `then` says what to do about an outage (e.g. "run it again to resume").

    A DSN asyncpg cannot read (ValueError) is a configuration error: asyncpg's message may quote
    the DSN, so only the kind of mistake is said."""
    where = describe_dsn(dsn)
    then = f" ({then})" if then else ""
    if isinstance(exc, ValueError):
        return ConfigError(
            "DATABASE_URL: the connection string cannot be read (percent-encode special "
            "characters in the password, e.g. '#' as %23, and check its options)"
        )
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError):
        return DatabaseUnavailable(
            f"cannot {doing} at {where}: the database did not answer in time{then}"
        )
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    configuration = sqlstate[:2] in CONFIGURATION_CLASSES
    reason = one_line(exc) if configuration or not sqlstate else describe_error(exc)
    hint = getattr(exc, "hint", None)
    if hint and sqlstate[:2] != "P0":  # an app's raise may put values in its hint too
        reason += ". " + " ".join(hint.split())  # asyncpg's run to several lines
    if configuration:
        return ConfigError(f"DATABASE_URL: cannot {doing} at {where}: {reason}")
    if refuses(exc):
        return Refused(f"cannot {doing} at {where}: {reason}")
    return DatabaseUnavailable(f"cannot {doing} at {where}: {reason}{then}")


@asynccontextmanager
async def connection(
    dsn: str,
    doing: str,
    *,
    then: str = "",
    prepared_statements: str = "auto",
    schema_version: int = 0,
    timeout: float = 10,
) -> AsyncIterator[asyncpg.Connection]:
    """A connection for an operations command, closed after it. Any database failure inside
    the block comes out as the `ClerkSyncError` of `database_error`; `SchemaTooOld` when the
    schema is older than `schema_version`."""
    from clerk_sync.migrations import current_version

    try:
        conn = await connect(dsn, prepared_statements, timeout)
    except CONNECT_ERRORS as exc:
        raise database_error(exc, dsn, doing, then) from None
    try:
        if schema_version:
            found = await current_version(conn)
            if found < schema_version:
                raise SchemaTooOld(
                    f"the database at {describe_dsn(dsn)} is at schema version {found}, this "
                    f"needs {schema_version}: run `clerk-sync migrate`"
                )
        yield conn
    except DATABASE_ERRORS as exc:
        raise database_error(exc, dsn, doing, then) from None
    finally:
        try:
            await asyncio.wait_for(conn.close(), timeout)
        except DATABASE_ERRORS:
            conn.terminate()
