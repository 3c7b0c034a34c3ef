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

Custom columns (clerk-sync.toml, custom_columns.py) are part of both: the repeatable files are
rendered with them (each `-- custom columns of <table>: <part>` line is followed by that part for
the table's declared columns; with none declared the files run as written), so their checksums
are over the rendered text and a changed file runs them again; then each declared column is added
and filled, or checked, by clerk_sync.apply_custom_column (sql/repeatable/12_custom_columns.sql).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import TYPE_CHECKING

from clerk_sync.custom_columns import CustomColumn, CustomColumns, Table, configured
from clerk_sync.errors import ConfigError, Refused

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


class CustomColumnRetyped(Refused):
    """A custom column exists with another type than the file declares (see `--retype`)."""


RETYPED_SQLSTATE = "CSTYP"


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
def _repeatable_files() -> tuple[tuple[str, str], ...]:
    found = sorted(_files("repeatable"), key=lambda item: int(item[0][1]))
    return tuple((m[2], sql) for m, sql in found)


def repeatables(columns: CustomColumns | None = None) -> tuple[Repeatable, ...]:
    """In the order they run (by file name), the lock-down last; rendered with `columns` (by
    default the configured ones)."""
    columns = configured() if columns is None else columns
    return tuple(
        Repeatable(name, render_custom_columns(sql, columns)) for name, sql in _repeatable_files()
    )


# --- custom columns -----------------------------------------------------------------------------

MARKER = re.compile(r"^(?P<lead>.*?)-- custom columns of (?P<table>\w+): (?P<part>.+)$", re.M)
KEEPING = re.compile(r"updates, keeping (\w+)'s when excluded\.updated_at is null")
CHANGED = re.compile(r"changed(?: in (?P<row>\w+))? from (?P<source>.+)")


def _fragment(declared: tuple[CustomColumn, ...], part: str) -> list[str]:
    """The lines a marker's part stands for (see `render_custom_columns`)."""
    names = [c.quoted for c in declared]
    if part == "names":
        return [", ".join(names) + ","] if declared else []
    if part == "updates":
        return [f"{name} = excluded.{name}," for name in names]
    if keeping := KEEPING.fullmatch(part):
        row = keeping[1]
        return [
            f"{name} = case when excluded.updated_at is null then {row}.{name} "
            f"else excluded.{name} end,"
            for name in names
        ]
    source = part.partition(" from ")[2]
    if part.startswith("values from "):
        return [c.value_sql(source) + "," for c in declared]
    if part.startswith("sets from "):
        return [f"{c.quoted} = {c.value_sql(source)}," for c in declared]
    if changed := CHANGED.fullmatch(part):
        if not declared:
            return ["false and"]
        source, row = changed["source"], changed["row"] or "u"
        held = ", ".join(f"{row}.{name}" for name in names)
        sent = ", ".join(c.value_sql(source) for c in declared)
        return [f"row({held}) is distinct from row({sent}) and"]
    raise ValueError(f"unknown custom columns marker part {part!r}")


def render_custom_columns(sql: str, columns: CustomColumns) -> str:
    """`sql` with each `-- custom columns of <table>: <part>` line followed by that part for the
    table's declared columns, at the line's indentation: `names` (of an insert), `values from
    <jsonb>` (its values), `updates` (of `on conflict do update`), `updates, keeping <alias>'s when
    excluded.updated_at is null`, `sets from <jsonb>` (of an update), `changed from <jsonb>` (a
    condition of its where clause, ending in `and`, comparing the row `u`; `changed in <alias>
    from <jsonb>` for another alias)."""

    def expand(marker: re.Match[str]) -> str:
        table: Table = marker["table"]  # type: ignore[assignment]
        indent = " " * len(marker["lead"])
        lines = _fragment(columns.of(table), marker["part"])
        return marker[0] + "".join(f"\n{indent}{line}" for line in lines)

    return MARKER.sub(expand, sql)


# The data clerk-sync keeps of each table's Clerk object, by field (as jsonb, for the row `t`):
# what `migrate` fills a custom column from for rows already synced.
KEPT: dict[Table, dict[str, str]] = {
    "users": {
        "public_metadata": "t.public_metadata",
        "unsafe_metadata": "t.unsafe_metadata",
        "private_metadata": "(select m.private_metadata from clerk_sync.private_metadata as m "
        "where m.user_id = t.id)",
        **{
            field: f"pg_catalog.to_jsonb(t.{field})"
            for field in ("username", "first_name", "last_name", "image_url", "external_id")
        },
    },
    "organizations": {
        "public_metadata": "t.public_metadata",
        "private_metadata": "(select m.private_metadata from "
        "clerk_sync.organization_private_metadata as m where m.organization_id = t.id)",
        **{
            field: f"pg_catalog.to_jsonb(t.{field})"
            for field in ("name", "slug", "image_url", "created_by")
        },
    },
    "organization_memberships": {
        "public_metadata": "t.public_metadata",
        "private_metadata": "(select m.private_metadata from clerk_sync.membership_private_metadata"
        " as m where m.membership_id = t.id)",
        "role": "pg_catalog.to_jsonb(t.role)",
    },
}


def fill_sql(column: CustomColumn) -> tuple[str, bool]:
    """The UPDATE that fills a custom column for every row from the data clerk-sync keeps, and
    whether that data holds its path (else it sets the default)."""
    kept = KEPT[column.table].get(column.path[0])
    value = column.default_sql if kept is None else column.value_sql(kept, column.path[1:])
    return f"update public.{column.table} as t set {column.quoted} = {value}", kept is not None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def custom_columns_sql(columns: CustomColumns, retype: frozenset[str] = frozenset()) -> str:
    """Add and fill (or check) each declared column, and forget those no longer declared (the
    columns in `retype` are dropped first when their type differs)."""
    calls = []
    for column in columns.columns:
        fill, kept = fill_sql(column)
        arguments = ", ".join(
            [
                _quote(column.table),
                _quote(column.name),
                _quote(column.type),
                _quote(column.dotted_path),
                _quote(column.default_sql),
                _quote(fill),
                "true" if kept else "false",
                "true" if column.label in retype else "false",
            ]
        )
        calls.append(f"perform clerk_sync.apply_custom_column({arguments});")
    declared = ", ".join(_quote(column.label) for column in columns.columns)
    calls.append(f"perform clerk_sync.forget_custom_columns(array[{declared}]::text[]);")
    body = "\n".join(calls)
    return f"do $clerk_sync_columns$ begin\n{body}\nend $clerk_sync_columns$;\n"


def latest_version() -> int:
    return migrations()[-1].version


def check_applied_sql() -> str:
    files = ", ".join(f"({m.version}, '{m.checksum}')" for m in migrations())
    return CHECK_APPLIED_SQL.format(files=files)


async def migrate(
    conn: Connection,
    columns: CustomColumns | None = None,
    retype: frozenset[str] = frozenset(),
) -> list[Migration | Repeatable]:
    """Apply what is pending: versioned files not yet applied, then repeatable files whose
    text changed (and the lock-down, when anything was), then the custom columns (by default
    the configured ones; what they did is said in notices). Returns the files it applied (none
    when current); AppliedMigrationChanged when an applied versioned file has changed,
    CustomColumnRetyped when a custom column has another type and is not in `retype`."""
    import asyncpg

    columns = configured() if columns is None else columns
    for label in sorted(label for label in retype if columns.find(label) is None):
        raise ConfigError(
            f"--retype {label}: no such column in {columns.source or 'clerk-sync.toml'} "
            "(name it as table.column, e.g. users.credits)"
        )

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
        for repeatable in repeatables(columns):
            changed = recorded.get(repeatable.name) != repeatable.checksum
            if changed or (repeatable.name == LOCK_DOWN and applied):
                await conn.execute(repeatable.sql)
                await conn.execute(RECORD_REPEATABLE_SQL, repeatable.name, repeatable.checksum)
                if changed:
                    applied.append(repeatable)
        try:
            await conn.execute(custom_columns_sql(columns, retype))
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == RETYPED_SQLSTATE:
                raise CustomColumnRetyped(str(exc)) from None
            raise
    return applied


async def current_version(conn: Connection) -> int:
    """The schema version a database is at (0 when clerk-sync never migrated it)."""
    exists = await conn.fetchval("select to_regclass('clerk_sync.schema_migrations') is not null")
    return int(await conn.fetchval(CURRENT_VERSION_SQL)) if exists else 0


def render_schema(columns: CustomColumns | None = None) -> str:
    """Everything `migrate` runs, as one script that can be applied more than once: each
    versioned file guarded by its record, each repeatable file by its checksum, the lock-down
    at the end, then the custom columns (by default the configured ones)."""
    columns = configured() if columns is None else columns
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
    for r in repeatables(columns):
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
    parts.append("-- custom columns (clerk-sync.toml)")
    parts.append(custom_columns_sql(columns))
    parts.append("commit;")
    return "\n".join(parts) + "\n"
