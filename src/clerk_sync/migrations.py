"""Versioned schema migrations: ordered `.sql` files in `sql/migrations/`, tracked in
`clerk_sync.schema_migrations`.

`migrate` applies every pending file in one transaction under an advisory lock, so replicas that
start at the same moment take turns and the later ones find nothing to do. It needs no
session state, so it also runs through Supabase's transaction pooler. `render_schema` prints the
same SQL, bookkeeping included, for teams that apply migrations with their own tooling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: REST mode reads `latest_version` without loading a database driver.
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection = asyncpg.Connection | PoolConnectionProxy

MIGRATION_LOCK = "select pg_catalog.pg_advisory_xact_lock(1668049780, 0)"

BOOTSTRAP_SQL = """\
create schema if not exists clerk_sync;
create table if not exists clerk_sync.schema_migrations (
    version     integer primary key,
    name        text not null,
    applied_at  timestamptz not null default now()
);
"""

RECORD_SQL = "insert into clerk_sync.schema_migrations (version, name) values ($1, $2)"

CURRENT_VERSION_SQL = "select coalesce(max(version), 0) from clerk_sync.schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for entry in resources.files("clerk_sync").joinpath("sql", "migrations").iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))


def latest_version() -> int:
    return migrations()[-1].version


async def migrate(conn: Connection) -> list[Migration]:
    """Apply the pending migrations; returns those applied (none when already current)."""
    async with conn.transaction():
        await conn.execute(MIGRATION_LOCK)
        await conn.execute(BOOTSTRAP_SQL)
        done = {
            row[0] for row in await conn.fetch("select version from clerk_sync.schema_migrations")
        }
        pending = [m for m in migrations() if m.version not in done]
        for migration in pending:
            await conn.execute(migration.sql)
            await conn.execute(RECORD_SQL, migration.version, migration.name)
    return pending


async def current_version(conn: Connection) -> int:
    """The schema version a database is at (0 when clerk-sync never migrated it)."""
    exists = await conn.fetchval("select to_regclass('clerk_sync.schema_migrations') is not null")
    return int(await conn.fetchval(CURRENT_VERSION_SQL)) if exists else 0


def render_schema() -> str:
    """Everything `migrate` runs, as one script that can be applied more than once."""
    parts = [
        "-- clerk-sync schema (printed by `clerk-sync schema`). Apply it with your own tooling,",
        "-- e.g. save it as supabase/migrations/<timestamp>_clerk_sync.sql and run `supabase db push`.",
        "begin;",
        MIGRATION_LOCK + ";",
        BOOTSTRAP_SQL,
    ]
    for m in migrations():
        parts.append(f"-- migration {m.version:04d}_{m.name}")
        # A migration that is already recorded must not run again: guard it with a check.
        parts.append(
            "do $clerk_sync_migration$ begin\n"
            f"if not exists (select 1 from clerk_sync.schema_migrations where version = {m.version})"
            " then\n"
            f"execute $clerk_sync_sql${m.sql}$clerk_sync_sql$;\n"
            "insert into clerk_sync.schema_migrations (version, name) "
            f"values ({m.version}, '{m.name}');\n"
            "end if;\nend $clerk_sync_migration$;\n"
        )
    parts.append("commit;")
    return "\n".join(parts) + "\n"
