"""Migrations: versioned, idempotent, safe when replicas run them at once, and `schema` prints
the same thing for teams with their own tooling."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from clerk_sync import migrations
from tests import support


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


def versions(dsn: str) -> list[int]:
    return [
        r["version"]
        for r in support.fetch(dsn, "select version from clerk_sync.schema_migrations order by 1")
    ]


def test_files_are_numbered_in_order() -> None:
    found = migrations.migrations()
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert found[0].version == 1
    assert migrations.latest_version() == found[-1].version


def test_migrate_is_idempotent(empty_db: str) -> None:
    async def go() -> tuple[int, int, int]:
        conn = await asyncpg.connect(empty_db)
        try:
            before = await migrations.current_version(conn)
            first = len(await migrations.migrate(conn))
            second = len(await migrations.migrate(conn))
            return before, first, second
        finally:
            await conn.close()

    before, first, second = support.run(go())
    assert before == 0
    assert first == len(migrations.migrations())
    assert second == 0
    assert versions(empty_db) == [m.version for m in migrations.migrations()]


def test_replicas_migrating_at_the_same_moment(empty_db: str) -> None:
    async def one() -> int:
        conn = await asyncpg.connect(empty_db)
        try:
            return len(await migrations.migrate(conn))
        finally:
            await conn.close()

    async def many() -> list[int]:
        return list(await asyncio.gather(*(one() for _ in range(6))))

    applied = support.run(many())
    assert sorted(applied) == [0] * 5 + [len(migrations.migrations())]
    assert versions(empty_db) == [m.version for m in migrations.migrations()]


def test_schema_script_applies_twice_and_matches_migrate(empty_db: str, pg_server: str) -> None:
    script = migrations.render_schema()
    support.execute(empty_db, script)
    support.execute(empty_db, script)
    assert versions(empty_db) == [m.version for m in migrations.migrations()]

    # A database set up with the script is current for `migrate`, and has the same tables and
    # functions as one set up by `migrate`.
    async def applied_after_script() -> int:
        conn = await asyncpg.connect(empty_db)
        try:
            return len(await migrations.migrate(conn))
        finally:
            await conn.close()

    assert support.run(applied_after_script()) == 0
    migrated = support.create_database(pg_server)
    try:
        catalog = """
            select table_schema, table_name, column_name, data_type, is_nullable
            from information_schema.columns
            where table_schema in ('public', 'clerk_sync') order by 1, 2, 3
        """
        assert support.fetch(empty_db, catalog) == support.fetch(migrated, catalog)
        functions = """
            select n.nspname, p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname in ('public', 'clerk_sync') order by 1, 2
        """
        assert support.fetch(empty_db, functions) == support.fetch(migrated, functions)
    finally:
        support.drop_database(pg_server, migrated)


def test_users_table_has_the_contract_columns(db: str) -> None:
    rows = support.fetch(
        db,
        """select column_name, data_type, is_nullable from information_schema.columns
           where table_schema = 'public' and table_name = 'users'""",
    )
    columns = {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows}
    assert columns["id"][0] == "text"
    for name in (
        "email",
        "phone",
        "username",
        "first_name",
        "last_name",
        "image_url",
        "external_id",
    ):
        assert columns[name][0] == "text"
    for name in ("public_metadata", "unsafe_metadata"):
        assert columns[name] == ("jsonb", "NO")
    for name in ("email_verified", "banned"):
        assert columns[name][0] == "boolean"
    for name in ("created_at", "updated_at", "last_sign_in_at", "deleted_at"):
        assert columns[name][0] == "timestamp with time zone"
    assert "private_metadata" not in columns


def test_write_functions_are_not_executable_by_public(db: str) -> None:
    rows = support.fetch(
        db,
        """select p.proname, has_function_privilege('public', p.oid, 'execute') as public_can
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = 'public' and p.proname like 'clerk_sync_%'""",
    )
    assert rows and not any(r["public_can"] for r in rows)


def test_an_existing_users_table_of_another_shape_stops_the_migration(empty_db: str) -> None:
    support.execute(empty_db, "create table public.users (id text primary key, email varchar(5))")

    async def go() -> None:
        conn = await asyncpg.connect(empty_db)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()

    with pytest.raises(asyncpg.RaiseError) as info:
        support.run(go())
    message = str(info.value)
    assert "public.users already exists without the columns clerk-sync writes" in message
    assert "email text" in message and "email_verified boolean" in message
    # Nothing of the migration stays behind.
    assert support.fetch(empty_db, "select to_regclass('clerk_sync.inbox') as t") == [{"t": None}]


def test_the_write_helpers_are_inlined_into_the_statements_that_use_them(db: str) -> None:
    """A helper the planner cannot inline runs as a statement of its own on every call: that
    was most of a batch's fixed cost."""
    plan = support.fetch(
        db,
        """explain (verbose, costs off)
        select clerk_sync.ms_to_timestamptz(payload -> 'updated_at'),
               clerk_sync.primary_entry(
                   payload -> 'email_addresses', payload -> 'primary_email_address_id')
        from clerk_sync.inbox""",
    )
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    assert "ms_to_timestamptz" not in text
    assert "primary_entry" not in text
    assert "jsonb_path_query_first" in text


def test_inlined_helpers_keep_their_answers(db: str) -> None:
    rows = support.fetch(
        db,
        """select clerk_sync.ms_to_timestamptz('1700000000123'::jsonb) as at,
                  clerk_sync.ms_to_timestamptz('"1700000000123"'::jsonb) as text_ms,
                  clerk_sync.ms_to_timestamptz('253402300799999'::jsonb) as last_ms,
                  clerk_sync.primary_entry(
                      '[{"id": "a", "n": 1}, {"id": "b", "n": 2}]', '"b"') as entry,
                  clerk_sync.primary_entry('{"id": "b"}', '"b"') as not_a_list,
                  clerk_sync.primary_entry('[{"id": "b"}]', '1') as not_an_id""",
    )
    row = rows[0]
    assert row["at"].isoformat() == "2023-11-14T22:13:20.123000+00:00"
    assert row["text_ms"] is None
    assert row["last_ms"].isoformat() == "9999-12-31T23:59:59.999000+00:00"
    assert row["entry"] == '{"n": 2, "id": "b"}'
    assert row["not_a_list"] is None
    assert row["not_an_id"] is None


def test_payloads_stay_in_the_inbox_row(db: str) -> None:
    rows = support.fetch(
        db,
        """select attstorage::text from pg_attribute
        where attrelid = 'clerk_sync.inbox'::regclass and attname = 'payload'""",
    )
    assert rows == [{"attstorage": "m"}]
