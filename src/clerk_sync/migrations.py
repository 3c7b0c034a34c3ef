"""The schema: versioned migrations for tables, repeatable definitions for everything else.

- `sql/migrations/NNNN_name.sql`: ordered deltas (tables, columns, indexes, and dropping what is
  gone), each applied once and recorded in `clerk_sync.schema_migrations` with a checksum of its
  text. A file that was applied and has changed since is refused (`AppliedMigrationChanged`):
  the database would not be what the files say.
- `sql/repeatable/NN_name.sql`: the current definition of functions and grants, one file per
  concern (the write path and its helpers, replay, the Supabase lock-down), in file-name order.
  Each one runs again whenever its text changes (recorded in `clerk_sync.schema_repeatables`),
  after the versioned files. The lock-down (`90_supabase.sql`) runs after every change, whatever
  brought it, as a replaced function has lost its SECURITY DEFINER and a new one has no grants.

`migrate` does all of it in one transaction under an advisory lock, so replicas that start at
the same moment take turns and the later ones find nothing to do. It needs no session state, so
it also runs through Supabase's transaction pooler. `render_schema` prints the same SQL,
bookkeeping included, as one script that can be applied any number of times.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import TYPE_CHECKING

from clerk_sync.errors import Refused

if TYPE_CHECKING:
    # Only for annotations: REST mode reads `latest_version` without loading a database driver.
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection = asyncpg.Connection | PoolConnectionProxy

# Schema versions other code depends on: the versioned file that brought what it needs.
INITIAL_VERSION = 1  # 0001_initial: public.users and the inbox
REPLAY_VERSION = 4  # 0004_replay: the inbox's replay bookkeeping (clerk-sync replay)
DEFINITIONS_VERSION = 6  # 0006_repeatable_definitions: sql/repeatable/ (classify_batch among them)
PAYLOAD_RETENTION_VERSION = 7  # 0007_payload_retention: clerk_sync_drop_payloads' index
ORGANIZATIONS_VERSION = 8  # 0008_organizations: public.organizations and its memberships

MIGRATION_LOCK = "select pg_catalog.pg_advisory_xact_lock(1668049780, 0)"

# The bookkeeping. Releases before version 6 made schema_migrations without its checksum column:
# it is added here, and filled in for the files they applied (see CHECK_APPLIED_SQL).
BOOTSTRAP_SQL = """\
create schema if not exists clerk_sync;
create table if not exists clerk_sync.schema_migrations (
    version     integer primary key,
    name        text not null,
    applied_at  timestamptz not null default now()
);
alter table clerk_sync.schema_migrations add column if not exists checksum text;
create table if not exists clerk_sync.schema_repeatables (
    name        text primary key,
    checksum    text not null,
    applied_at  timestamptz not null default now()
);
"""

# Checked before anything is applied, with (version, checksum) of every file in {files}: versions
# applied by a release that kept no checksum get the current file's, as the baseline; then any
# applied file whose checksum differs is refused (SQLSTATE CSMIG), by `migrate` and the script alike.
CHECK_APPLIED_SQL = """\
do $clerk_sync_check$
declare
    v_changed text;
begin
    update clerk_sync.schema_migrations as m set checksum = f.checksum
    from (values {files}) as f(version, checksum)
    where m.version = f.version and m.checksum is null;
    select string_agg(pg_catalog.lpad(m.version::text, 4, '0'), ', ' order by m.version)
    into v_changed
    from clerk_sync.schema_migrations as m
    join (values {files}) as f(version, checksum) on f.version = m.version
    where m.checksum <> f.checksum;
    if v_changed is not null then
        raise exception 'the schema migrations % applied to this database differ from the files '
            'of this clerk-sync release: a migration must never change once released (restore '
            'the file, or add a new migration)', v_changed using errcode = 'CSMIG';
    end if;
end
$clerk_sync_check$;
"""
CHANGED_SQLSTATE = "CSMIG"

RECORD_SQL = (
    "insert into clerk_sync.schema_migrations (version, name, checksum) values ($1, $2, $3)"
)
RECORD_REPEATABLE_SQL = """\
insert into clerk_sync.schema_repeatables as r (name, checksum) values ($1, $2)
on conflict (name) do update set checksum = excluded.checksum, applied_at = now()
"""

CURRENT_VERSION_SQL = "select coalesce(max(version), 0) from clerk_sync.schema_migrations"

# The repeatable file that runs after every change.
LOCK_DOWN = "supabase"


class AppliedMigrationChanged(Refused):
    """A versioned migration this database applied is not the file this release carries."""


class _SqlFile:
    sql: str

    @cached_property
    def checksum(self) -> str:
        """What is recorded of the text applied, to tell when it changed."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class Migration(_SqlFile):
    """A versioned file: applied once."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class Repeatable(_SqlFile):
    """A repeatable file: applied again whenever its text changes."""

    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.name} (repeatable)"


def _files(folder: str) -> list[tuple[re.Match[str], str]]:
    found = []
    for entry in resources.files("clerk_sync").joinpath("sql", folder).iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((match, entry.read_text(encoding="utf-8")))
    return found


@cache
def migrations() -> tuple[Migration, ...]:
    found = [Migration(int(m[1]), m[2], sql) for m, sql in _files("migrations")]
    return tuple(sorted(found, key=lambda m: m.version))


@cache
def repeatables() -> tuple[Repeatable, ...]:
    """In the order they run (by file name); the lock-down last."""
    found = sorted(_files("repeatable"), key=lambda item: int(item[0][1]))
    return tuple(Repeatable(m[2], sql) for m, sql in found)


def latest_version() -> int:
    return migrations()[-1].version


def check_applied_sql() -> str:
    files = ", ".join(f"({m.version}, '{m.checksum}')" for m in migrations())
    return CHECK_APPLIED_SQL.format(files=files)


async def migrate(conn: Connection) -> list[Migration | Repeatable]:
    """Apply what is pending: versioned files not yet applied, then repeatable files whose
    text changed (and the lock-down, when anything was). Returns what it applied (none when
    current); AppliedMigrationChanged when an applied versioned file has changed."""
    import asyncpg

    async with conn.transaction():
        await conn.execute(MIGRATION_LOCK)
        await conn.execute(BOOTSTRAP_SQL)
        try:
            await conn.execute(check_applied_sql())
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == CHANGED_SQLSTATE:
                raise AppliedMigrationChanged(str(exc)) from None
            raise
        done = {
            row[0] for row in await conn.fetch("select version from clerk_sync.schema_migrations")
        }
        applied: list[Migration | Repeatable] = []
        for migration in migrations():
            if migration.version not in done:
                await conn.execute(migration.sql)
                await conn.execute(
                    RECORD_SQL, migration.version, migration.name, migration.checksum
                )
                applied.append(migration)
        recorded: dict[str, str] = {
            row[0]: row[1]
            for row in await conn.fetch("select name, checksum from clerk_sync.schema_repeatables")
        }
        for repeatable in repeatables():
            changed = recorded.get(repeatable.name) != repeatable.checksum
            if changed or (repeatable.name == LOCK_DOWN and applied):
                await conn.execute(repeatable.sql)
                await conn.execute(RECORD_REPEATABLE_SQL, repeatable.name, repeatable.checksum)
                if changed:
                    applied.append(repeatable)
    return applied


async def current_version(conn: Connection) -> int:
    """The schema version a database is at (0 when clerk-sync never migrated it)."""
    exists = await conn.fetchval("select to_regclass('clerk_sync.schema_migrations') is not null")
    return int(await conn.fetchval(CURRENT_VERSION_SQL)) if exists else 0


def render_schema() -> str:
    """Everything `migrate` runs, as one script that can be applied more than once: each
    versioned file guarded by its record, each repeatable file by its checksum, and the
    lock-down at the end."""
    parts = [
        "-- clerk-sync schema (printed by `clerk-sync schema`). Apply it with your own tooling,",
        "-- e.g. save it as supabase/migrations/<timestamp>_clerk_sync.sql and run `supabase db push`.",
        "begin;",
        MIGRATION_LOCK + ";",
        BOOTSTRAP_SQL,
        check_applied_sql(),
    ]
    for m in migrations():
        parts.append(f"-- migration {m.label}")
        parts.append(
            "do $clerk_sync_migration$ begin\n"
            f"if not exists (select 1 from clerk_sync.schema_migrations where version = {m.version})"
            " then\n"
            f"execute $clerk_sync_sql${m.sql}$clerk_sync_sql$;\n"
            "insert into clerk_sync.schema_migrations (version, name, checksum) "
            f"values ({m.version}, '{m.name}', '{m.checksum}');\n"
            "end if;\nend $clerk_sync_migration$;\n"
        )
    for r in repeatables():
        parts.append(f"-- repeatable {r.label}")
        guard = (
            "true"
            if r.name == LOCK_DOWN
            else "not exists (select 1 from clerk_sync.schema_repeatables "
            f"where name = '{r.name}' and checksum = '{r.checksum}')"
        )
        parts.append(
            "do $clerk_sync_repeatable$ begin\n"
            f"if {guard} then\n"
            f"execute $clerk_sync_sql${r.sql}$clerk_sync_sql$;\n"
            "insert into clerk_sync.schema_repeatables as r (name, checksum) "
            f"values ('{r.name}', '{r.checksum}') on conflict (name) do update set "
            "checksum = excluded.checksum, applied_at = now();\n"
            "end if;\nend $clerk_sync_repeatable$;\n"
        )
    parts.append("commit;")
    return "\n".join(parts) + "\n"
