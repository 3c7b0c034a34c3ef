"""Migrations: versioned, idempotent, safe when replicas run them at once, and `schema` prints
the same thing for teams with their own tooling."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from clerk_sync import migrations
from tests import support
from tests.test_cli import assert_one_clear_line
from tests.test_cli import clerk_sync as run_cli


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


# What a first `migrate` applies: every versioned file and every repeatable one.
EVERYTHING = len(migrations.migrations()) + len(migrations.repeatables())


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
    assert first == EVERYTHING
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
    assert sorted(applied) == [0] * 5 + [EVERYTHING]
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
    # The event checks of the write path too: batch_events and is_ms become part of the statement.
    plan = support.fetch(
        db,
        """explain (verbose, costs off)
        select b.problem, b.version, b.sign_in, b.user_id
        from clerk_sync.batch_events(array['msg_1'], array[
            '{"type": "user.created", "data": {"id": "user_1", "updated_at": 1}}'::jsonb]) as b""",
    )
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    for helper in ("batch_events", "is_ms", "ms_to_timestamptz"):
        assert helper not in text, helper
    assert "Function Scan on u" in text  # unnest, the only function scan


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


# --- checksums of applied files ------------------------------------------------------------------


def test_each_applied_file_is_recorded_with_its_checksum(db: str) -> None:
    rows = support.fetch(db, "select version, checksum from clerk_sync.schema_migrations")
    assert {r["version"]: r["checksum"] for r in rows} == {
        m.version: m.checksum for m in migrations.migrations()
    }
    rows = support.fetch(db, "select name, checksum from clerk_sync.schema_repeatables")
    assert {r["name"]: r["checksum"] for r in rows} == {
        r.name: r.checksum for r in migrations.repeatables()
    }


def test_an_applied_file_that_changed_is_refused(
    empty_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    support.migrate_database(empty_db)
    original = migrations.migrations()
    edited = tuple(
        dataclasses.replace(m, sql=m.sql + "\n-- edited in place\n") if m.version == 2 else m
        for m in original
    )
    monkeypatch.setattr(migrations, "migrations", lambda: edited)
    with pytest.raises(migrations.AppliedMigrationChanged) as info:
        support.migrate_database(empty_db)
    message = str(info.value)
    assert "0002" in message and "0001" not in message and "\n" not in message
    # Refused before anything ran; the recorded checksum is still the released file's.
    [row] = support.fetch(
        empty_db, "select checksum from clerk_sync.schema_migrations where version = 2"
    )
    assert row["checksum"] == original[1].checksum
    monkeypatch.setattr(migrations, "migrations", lambda: original)
    assert support.migrate_database(empty_db) == []


def test_the_cli_refuses_a_changed_migration_in_one_line(empty_db: str, tmp_path: Path) -> None:
    support.migrate_database(empty_db)
    support.execute(
        empty_db, "update clerk_sync.schema_migrations set checksum = 'x' where version in (1, 4)"
    )
    result = run_cli(tmp_path, "migrate", DATABASE_URL=empty_db)
    assert result.returncode == 2, result.stderr
    line = assert_one_clear_line(result, ("0001, 0004",))
    assert "must never change once released" in line


def test_repeatable_files_run_again_when_their_text_changes(
    empty_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    support.migrate_database(empty_db)
    assert support.migrate_database(empty_db) == []
    original = migrations.repeatables()
    edited = tuple(
        dataclasses.replace(
            r,
            sql=r.sql.replace(
                "select coalesce(max(version), 0)", "select 0 + coalesce(max(version), 0)"
            ),
        )
        if r.name == "schema_version"
        else r
        for r in original
    )
    assert edited != original
    monkeypatch.setattr(migrations, "repeatables", lambda columns=None: edited)
    assert support.migrate_database(empty_db) == ["schema_version (repeatable)"]
    [row] = support.fetch(
        empty_db, "select prosrc from pg_proc where proname = 'clerk_sync_schema_version'"
    )
    assert "select 0 + coalesce" in row["prosrc"]
    assert support.migrate_database(empty_db) == []


def test_named_schema_versions_name_their_files() -> None:
    names = {m.version: m.name for m in migrations.migrations()}
    assert names[migrations.INITIAL_VERSION] == "initial"
    assert names[migrations.REPLAY_VERSION] == "replay"
    assert names[migrations.DEFINITIONS_VERSION] == "repeatable_definitions"
    # The lock-down runs last, after every other definition.
    assert migrations.repeatables()[-1].name == migrations.LOCK_DOWN


def test_the_write_function_is_defined_once() -> None:
    """A reviewer reads the write path in one file: no versioned file repeats a definition."""
    for m in migrations.migrations():
        assert "create or replace function" not in m.sql.lower(), m.label
    defined = [
        r.name
        for r in migrations.repeatables()
        if "function public.clerk_sync_apply_batch(" in r.sql
    ]
    assert defined == ["write_path"]


def test_the_schema_script_refuses_a_changed_migration_too(empty_db: str) -> None:
    support.migrate_database(empty_db)
    support.execute(
        empty_db, "update clerk_sync.schema_migrations set checksum = 'x' where version = 3"
    )
    with pytest.raises(asyncpg.PostgresError) as info:
        support.execute(empty_db, migrations.render_schema())
    assert info.value.sqlstate == migrations.CHANGED_SQLSTATE
    assert str(info.value).startswith("the schema migrations 0003 applied to this database differ")
