"""`clerk_sync.database`: what each database failure means (by its SQLSTATE class), said in one
line that never holds the DSN's password, and the connection helper the operations commands use,
against a real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from clerk_sync import database, migrations
from clerk_sync.errors import ClerkSyncError, ConfigError, DatabaseUnavailable, Refused
from clerk_sync.storage import EventRejected, StoreUnavailable
from tests import support

DSN = "postgresql://app:hunter2hunter2@db.example.com:5432/app"


def test_every_error_has_one_root_and_its_exit_status() -> None:
    assert issubclass(StoreUnavailable, DatabaseUnavailable)
    assert issubclass(EventRejected, Refused)
    for kind, status in ((ConfigError, 2), (Refused, 2), (DatabaseUnavailable, 1)):
        assert issubclass(kind, ClerkSyncError) and kind.exit_status == status


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (asyncpg.InvalidPasswordError("password authentication failed for user app"), ConfigError),
        (asyncpg.InvalidCatalogNameError('database "app" does not exist'), ConfigError),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), DatabaseUnavailable),
        (asyncpg.AdminShutdownError("terminating connection"), DatabaseUnavailable),
        (asyncpg.DeadlockDetectedError("deadlock detected"), DatabaseUnavailable),
        (asyncpg.InvalidTextRepresentationError("invalid input syntax"), Refused),
        (asyncpg.UniqueViolationError("duplicate key value"), Refused),
        (asyncpg.CheckViolationError("violates check constraint"), Refused),
        (asyncpg.ForeignKeyViolationError("violates foreign key constraint"), Refused),
        (asyncpg.RaiseError("refused by the app's trigger"), Refused),
        (asyncpg.ReadOnlySQLTransactionError("read-only transaction"), DatabaseUnavailable),
        (asyncpg.SerializationError("could not serialize access"), DatabaseUnavailable),
        (asyncpg.InsufficientPrivilegeError("permission denied"), DatabaseUnavailable),
        (asyncpg.LockNotAvailableError("lock timeout"), DatabaseUnavailable),
        (asyncpg.QueryCanceledError("canceling statement"), DatabaseUnavailable),
        (asyncpg.CannotConnectNowError("the database system is starting up"), DatabaseUnavailable),
        (ConnectionRefusedError(111, "Connection refused"), DatabaseUnavailable),
        (TimeoutError(), DatabaseUnavailable),
        (asyncpg.InterfaceError("connection is closed"), DatabaseUnavailable),
    ],
    ids=lambda value: type(value).__name__,
)
def test_each_failure_maps_to_its_kind(error: BaseException, kind: type[ClerkSyncError]) -> None:
    mapped = database.database_error(error, DSN, "migrate the database", "check DATABASE_URL")
    assert type(mapped) is kind
    message = str(mapped)
    assert "db.example.com:5432/app" in message and "migrate the database" in message
    assert "hunter2" not in message and "\n" not in message
    if kind is ConfigError:
        assert message.startswith("DATABASE_URL: ")
    if kind is DatabaseUnavailable:
        assert message.endswith("(check DATABASE_URL)")


def test_a_dsn_asyncpg_cannot_read_is_configuration_and_never_echoed() -> None:
    dsn = "postgresql://u:Sup3r#Secr3t@127.0.0.1:5432/db"

    async def go() -> None:
        async with database.connection(dsn, "read users"):
            pass

    with pytest.raises(ConfigError) as caught:
        support.run(go())
    message = str(caught.value)
    assert message.startswith("DATABASE_URL: ") and "%23" in message
    assert "Sup3r" not in message and "Secr3t" not in message


def test_an_unreachable_database_is_unavailable() -> None:
    port = support.free_port()  # nothing listens there

    async def go() -> None:
        async with database.connection(f"postgresql://postgres@127.0.0.1:{port}/x", "replay"):
            pass

    with pytest.raises(DatabaseUnavailable, match=f"cannot replay at 127.0.0.1:{port}/x"):
        support.run(go())


def test_a_database_that_does_not_exist_names_the_variable(pg_server: str) -> None:
    async def go() -> None:
        async with database.connection(support.with_database(pg_server, "no_such_db"), "purge"):
            pass

    with pytest.raises(ConfigError, match=r'^DATABASE_URL: cannot purge at .*"no_such_db"'):
        support.run(go())


def test_the_connection_checks_the_schema_version(pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:

        async def go() -> int:
            async with database.connection(dsn, "replay", schema_version=1) as conn:
                return int(await conn.fetchval("select 1"))

        with pytest.raises(database.SchemaTooOld, match="at schema version 0, this needs 1"):
            support.run(go())
    finally:
        support.drop_database(pg_server, dsn)


def test_a_failure_inside_the_block_is_mapped_too(database_url: str) -> None:
    async def go() -> None:
        async with database.connection(database_url, "read users") as conn:
            await conn.execute("select 1/0")

    with pytest.raises(Refused, match="division by zero"):
        support.run(go())


def test_a_current_database_answers(database_url: str) -> None:
    async def go() -> int:
        async with database.connection(
            database_url, "read", schema_version=migrations.latest_version()
        ) as conn:
            return int(await conn.fetchval("select 41 + 1"))

    assert support.run(go()) == 42


@pytest.mark.parametrize(
    ("sqlstate", "refused"),
    [
        ("22012", True), ("23514", True), ("23505", True), ("23503", True), ("23502", True),
        ("P0001", True), ("25006", False), ("40001", False), ("40P01", False), ("42501", False),
        ("55P03", False), ("57014", False), ("57P01", False), ("08006", False), ("53100", False),
    ],
)  # fmt: skip
def test_what_refuses_the_event_and_what_is_worth_a_retry(sqlstate: str, refused: bool) -> None:
    assert database.refuses_event(sqlstate) is refused


def test_a_race_on_clerk_syncs_own_keys_is_worth_a_retry() -> None:
    assert database.refuses_event("23505", "public")
    assert not database.refuses_event("23505", "clerk_sync")


def test_errors_are_described_without_the_rows_values(database_url: str) -> None:
    """DETAIL (`Failing row contains (…)`) never; a raised exception's own text never (the
    function that raised is named instead); a data exception's input with emails masked."""

    async def go() -> list[str]:
        conn = await asyncpg.connect(database_url)
        said = []
        try:
            await conn.execute(
                "create temp table t (email text constraint short_email check (length(email) < 5))"
            )
            await conn.execute(
                "create function pg_temp.refuse() returns void language plpgsql as $$"
                " begin raise exception 'no %', 'jöhn.doe@exämple.de'; end $$"
            )
            for query in (
                "insert into t values ('jöhn.doe@exämple.de')",
                "select pg_temp.refuse()",
                "select 'jöhn.doe@exämple.de'::int",
            ):
                try:
                    await conn.execute(query)
                except asyncpg.PostgresError as exc:
                    assert database.refuses(exc)
                    said.append(database.describe_error(exc))
        finally:
            await conn.close()
        return said

    check, raised, data = support.run(go())
    for text in (check, raised, data):
        assert "jöhn" not in text and "Failing row" not in text and "\n" not in text
    assert "(23514, integrity constraint violation, constraint short_email, table t)" in check
    assert raised.startswith("RaiseError: raised in PL/pgSQL function") and "P0001" in raised
    assert "invalid input syntax for type integer" in data and "<email>" in data
