"""Fresh install and upgrade end the same: a database left at each earlier schema version (built
from the files those releases shipped, tests/fixtures/schema_history/) and then migrated has the
same catalog as one migrated from nothing, with and without Supabase's roles. So does one set up
with the `clerk-sync schema` script, applied twice."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clerk_sync import migrations
from tests import support
from tests.postgrest_standin import SUPABASE_AUTH_SQL, create_supabase_roles

HISTORY = Path(__file__).parent / "fixtures" / "schema_history"
HISTORIC_FILES = sorted(HISTORY.glob("[0-9][0-9][0-9][0-9]_*.sql.gz"))
SCHEMAS = "('public', 'clerk_sync')"

# Everything `migrate` decides, read from the catalogs by name (never by oid). ACLs are sorted:
# the order of their entries means nothing.
CATALOG = {
    "functions": f"""
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) as args,
               md5(pg_get_functiondef(p.oid)) as definition, p.prosecdef, p.proconfig,
               p.provolatile, array(select unnest(p.proacl)::text order by 1) as acl
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in {SCHEMAS} order by 1, 2, 3""",
    "relations": f"""
        select n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               c.reloptions, array(select unnest(c.relacl)::text order by 1) as acl,
               obj_description(c.oid, 'pg_class') as comment
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in {SCHEMAS} order by 1, 2""",
    "columns": f"""
        select n.nspname, c.relname, a.attnum, a.attname,
               format_type(a.atttypid, a.atttypmod) as type, a.attnotnull, a.attstorage,
               a.attcompression, a.attidentity, pg_get_expr(d.adbin, d.adrelid) as default
        from pg_attribute a
        join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where n.nspname in {SCHEMAS} and a.attnum > 0 and not a.attisdropped
        order by 1, 2, 3""",
    "indexes": f"""
        select schemaname, tablename, indexname, indexdef from pg_indexes
        where schemaname in {SCHEMAS} order by 1, 2, 3""",
    "constraints": f"""
        select n.nspname, c.conrelid::regclass::text as relation, c.conname,
               pg_get_constraintdef(c.oid) as definition
        from pg_constraint c join pg_namespace n on n.oid = c.connamespace
        where n.nspname in {SCHEMAS} order by 1, 2, 3""",
    "policies": f"""
        select p.polrelid::regclass::text as relation, p.polname, p.polcmd, p.polpermissive,
               array(select r::regrole::text from unnest(p.polroles) as r order by 1) as roles,
               pg_get_expr(p.polqual, p.polrelid) as qual,
               pg_get_expr(p.polwithcheck, p.polrelid) as with_check
        from pg_policy p join pg_class c on c.oid = p.polrelid
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in {SCHEMAS} order by 1, 2""",
    "schemas": f"""
        select nspname, array(select unnest(nspacl)::text order by 1) as acl
        from pg_namespace where nspname in {SCHEMAS} order by 1""",
    "default_privileges": """
        select d.defaclobjtype, array(select unnest(d.defaclacl)::text order by 1) as acl
        from pg_default_acl d join pg_namespace n on n.oid = d.defaclnamespace
        where n.nspname = 'clerk_sync' order by 1""",
    "migrations": """
        select version, name, checksum from clerk_sync.schema_migrations order by 1""",
    "repeatables": "select name, checksum from clerk_sync.schema_repeatables order by 1",
}


def catalog(dsn: str) -> dict[str, list[dict[str, Any]]]:
    return {part: support.fetch(dsn, query) for part, query in CATALOG.items()}


def new_database(pg_server: str, supabase: bool) -> str:
    if supabase:
        create_supabase_roles(pg_server)
    dsn = support.create_database(pg_server, migrate=False)
    if supabase:
        support.execute(dsn, SUPABASE_AUTH_SQL)
    return dsn


def leave_at(dsn: str, version: int) -> None:
    """What a release at `version` left behind: its bookkeeping, its files applied in order."""

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute((HISTORY / "bootstrap.sql").read_text())
                for path in HISTORIC_FILES[:version]:
                    match = re.fullmatch(r"(\d+)_(\w+)\.sql\.gz", path.name)
                    assert match is not None
                    number, name = match.groups()
                    await conn.execute(gzip.decompress(path.read_bytes()).decode())
                    await conn.execute(
                        "insert into clerk_sync.schema_migrations (version, name) values ($1, $2)",
                        int(number),
                        name,
                    )
        finally:
            await conn.close()

    support.run(go())


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "supabase"])
def fresh(request: pytest.FixtureRequest, pg_server: str) -> Iterator[tuple[bool, dict[str, Any]]]:
    """Whether on Supabase, and the catalog of a database migrated from nothing."""
    supabase: bool = request.param
    dsn = new_database(pg_server, supabase)
    try:
        support.migrate_database(dsn)
        yield supabase, catalog(dsn)
    finally:
        support.drop_database(pg_server, dsn)


def test_the_history_is_every_version_before_the_repeatable_layout() -> None:
    assert [p.name[:4] for p in HISTORIC_FILES] == [
        f"{v:04d}" for v in range(1, migrations.DEFINITIONS_VERSION)
    ]


@pytest.mark.parametrize("version", range(1, len(HISTORIC_FILES) + 1))
def test_an_upgrade_ends_as_a_fresh_install(
    version: int, fresh: tuple[bool, dict[str, Any]], pg_server: str
) -> None:
    supabase, expected = fresh
    dsn = new_database(pg_server, supabase)
    try:
        leave_at(dsn, version)
        applied = support.migrate_database(dsn)
        assert applied == [
            *(m.label for m in migrations.migrations() if m.version > version),
            *(r.label for r in migrations.repeatables()),
        ]
        got = catalog(dsn)
        for part in CATALOG:
            assert got[part] == expected[part], part
        assert support.migrate_database(dsn) == []
        assert catalog(dsn) == expected
    finally:
        support.drop_database(pg_server, dsn)


def test_the_schema_script_ends_as_migrate_does(
    fresh: tuple[bool, dict[str, Any]], pg_server: str
) -> None:
    supabase, expected = fresh
    dsn = new_database(pg_server, supabase)
    try:
        script = migrations.render_schema()
        support.execute(dsn, script)
        assert catalog(dsn) == expected
        support.execute(dsn, script)
        assert catalog(dsn) == expected
        assert support.migrate_database(dsn) == []
    finally:
        support.drop_database(pg_server, dsn)


def test_the_schema_script_upgrades_an_earlier_version(
    fresh: tuple[bool, dict[str, Any]], pg_server: str
) -> None:
    supabase, expected = fresh
    dsn = new_database(pg_server, supabase)
    try:
        leave_at(dsn, 3)
        support.execute(dsn, migrations.render_schema())
        assert catalog(dsn) == expected
    finally:
        support.drop_database(pg_server, dsn)
