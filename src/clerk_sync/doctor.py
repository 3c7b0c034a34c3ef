"""`clerk-sync doctor`: what is wrong with a setup, found before Clerk's deliveries find it.

Each check gives one `Finding`: a status and one plain sentence. The configuration is read by
pydantic-settings' own sources for `Settings` (the same names, parsing and precedence: flags,
then the environment, then `.env`), one variable at a time, so that a malformed secret is
explained instead of stopping the command; each value is judged by the decoders and rules in
`settings.py` that `serve` applies, and only explained here. No check prints more of a secret or
key than its first 8 characters, nor any part of a DSN's password.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from clerk_sync import migrations
from clerk_sync.app import WEBHOOK_PATH
from clerk_sync.custom_columns import (
    NO_COLUMNS,
    CustomColumn,
    CustomColumns,
    held_columns,
    load_custom_columns,
)
from clerk_sync.database import (
    CONNECT_ERRORS,
    DATABASE_ERRORS,
    connect,
    database_error,
    uses_transaction_pooler,
)
from clerk_sync.datadir import DEV_SECRET_FILE, pgdata_path
from clerk_sync.errors import ConfigError
from clerk_sync.session_sync_checks import check_session_sync
from clerk_sync.settings import (
    DEFAULT_DATA_DIR,
    MIN_SIGNING_KEY_BYTES,
    SECRET_PREFIX,
    SUPABASE_PUBLISHABLE_KEY_PREFIX,
    SUPABASE_SECRET_KEY_PREFIX,
    Backend,
    EmbeddedBackend,
    PostgresBackend,
    RestBackend,
    Settings,
    blank_is_unset,
    check_database_url,
    choose_backend,
    describe_dsn,
    signing_key,
    split_secrets,
    supabase_jwt_claims,
    supabase_key_role,
    variables,
)

# Standard Webhooks: "Random. Between 24 bytes (192 bits) and 64 bytes"; Svix's are 24 or 32.
SVIX_KEY_BYTES = range(24, 65)
SUPABASE_ROLES = ("anon", "authenticated", "service_role")
SHOWN_CHARACTERS = 8


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but worth knowing; does not fail the run
    FAIL = "fail"
    SKIP = "skip"  # not checked, and why


@dataclass(frozen=True)
class Finding:
    status: Status
    topic: str
    message: str


def ok(topic: str, message: str) -> Finding:
    return Finding(Status.OK, topic, message)


def warn(topic: str, message: str) -> Finding:
    return Finding(Status.WARN, topic, message)


def fail(topic: str, message: str) -> Finding:
    return Finding(Status.FAIL, topic, message)


def skip(topic: str, message: str) -> Finding:
    return Finding(Status.SKIP, topic, message)


def shown(value: str) -> str:
    """The most of a secret that may be printed: its first 8 characters, and never all of it."""
    return value[: min(SHOWN_CHARACTERS, len(value) // 2)] + "…"


# --- where settings come from -------------------------------------------------------------------


@dataclass(frozen=True)
class Supplied:
    variable: str
    source: str  # "environment", ".env" or "flag"
    value: str

    @property
    def where(self) -> str:
        return f"{self.variable} ({self.source})"


def _source(kind: type[EnvSettingsSource], values: Mapping[str, str]) -> EnvSettingsSource:
    """A pydantic-settings source for `Settings` over `values` instead of what it would read."""
    source = kind(Settings)
    source.env_vars = parse_env_vars(
        values, source.case_sensitive, source.env_ignore_empty, source.env_parse_none_str
    )
    return source


class Sources:
    """The environment and the `.env` file, looked up by pydantic-settings' own sources for
    `Settings`: the environment beats `.env`; within one, the first of a field's names wins."""

    def __init__(self, environ: Mapping[str, str], dotenv: Mapping[str, str]) -> None:
        self._sources = (
            ("environment", _source(EnvSettingsSource, environ)),
            (".env", _source(DotEnvSettingsSource, dotenv)),
        )

    @classmethod
    def load(cls, environ: Mapping[str, str], dotenv_path: Path = Path(".env")) -> Sources:
        dotenv = DotEnvSettingsSource(Settings, env_file=dotenv_path).env_vars
        return cls(environ, {k: v for k, v in dotenv.items() if v is not None})

    def lookup(self, field: str) -> Supplied | None:
        """The value in force for a `Settings` field, and where it comes from."""
        for label, source in self._sources:
            value, variable, _ = source.get_field_value(Settings.model_fields[field], field)
            if value is not None:
                return Supplied(variable, label, value)
        return None

    def value(self, field: str) -> str | None:
        """The value in force, None when unset or blank (as `Settings` counts it)."""
        supplied = self.lookup(field)
        value = blank_is_unset(supplied.value) if supplied else None
        return value.strip() if value else None

    def every(self, field: str) -> list[Supplied]:
        """Every place one of a field's variables is set, in the order `lookup` considers them."""
        found = []
        for label, source in self._sources:
            for variable in variables(field):
                value = source.env_vars.get(variable.lower())
                if value is not None:
                    found.append(Supplied(variable, label, value))
        return found


def _quoted(value: str) -> bool:
    value = value.strip()
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"


# --- signing secrets ----------------------------------------------------------------------------


def check_signing_secrets(sources: Sources, data_dir: Path = DEFAULT_DATA_DIR) -> list[Finding]:
    topic = "signing secret"
    supplied = sources.lookup("webhook_secret")
    if supplied is None or blank_is_unset(supplied.value) is None:
        hint = ""
        if (data_dir / DEV_SECRET_FILE).is_file():
            hint = f" (only `serve --dev` runs without one: it uses {data_dir / DEV_SECRET_FILE})"
        if supplied is not None:
            return [
                fail(
                    topic,
                    f"{supplied.where} is set but empty; paste the endpoint's Signing Secret "
                    f"(whsec_…) from Clerk Dashboard → Webhooks{hint}",
                )
            ]
        return [
            fail(
                topic,
                "not set; set CLERK_WEBHOOK_SECRET to the endpoint's Signing Secret (whsec_…) "
                f"from Clerk Dashboard → Webhooks → your endpoint{hint}",
            )
        ]

    findings: list[Finding] = []
    others = [
        s
        for s in sources.every("webhook_secret")
        if s != supplied
        and blank_is_unset(s.value)
        and split_secrets(s.value) != split_secrets(supplied.value)
    ]
    for other in others:
        if other.variable == supplied.variable:
            findings.append(
                warn(
                    topic,
                    f"{supplied.where} overrides a different {other.where}: the environment "
                    "wins over .env",
                )
            )
            continue
        findings.append(
            fail(
                topic,
                f"{supplied.where} and {other.where} are both set and differ; clerk-sync uses "
                f"{supplied.where} and ignores the other: remove one (during a rotation, put both "
                "secrets in one variable, separated by a space)",
            )
        )

    value = supplied.value
    if _quoted(value):
        return [
            *findings,
            fail(
                topic,
                f"{supplied.where} is wrapped in quotes, which become part of the value: "
                "remove them",
            ),
        ]
    if value != value.strip():
        findings.append(
            warn(
                topic,
                f"{supplied.where} has leading or trailing whitespace (a pasted newline?); "
                "clerk-sync trims it, other tools may not",
            )
        )

    secrets = split_secrets(value)
    for number, secret in enumerate(secrets, 1):
        label = f"{supplied.where}" + (
            f", secret {number} of {len(secrets)}" if len(secrets) > 1 else ""
        )
        findings.append(_check_one_secret(topic, label, secret))
    return findings


def _check_one_secret(topic: str, label: str, secret: str) -> Finding:
    try:
        key = signing_key(secret)  # as `serve` decodes it
    except ValueError:
        if not secret.startswith(SECRET_PREFIX):
            return fail(
                topic,
                f"{label}: {shown(secret)} does not start with 'whsec_'; copy the Signing Secret "
                "from Clerk Dashboard → Webhooks → your endpoint (not an API key)",
            )
        return fail(
            topic,
            f"{label}: the part after 'whsec_' is not valid base64 (a character lost or added "
            "when copying?)",
        )
    if len(key) < MIN_SIGNING_KEY_BYTES:  # `serve` refuses it
        return fail(
            topic,
            f"{label}: {shown(secret)} decodes to {len(key)} bytes, too short for a Svix signing "
            "secret (24 to 64 bytes); it was probably cut off when copying",
        )
    if len(key) not in SVIX_KEY_BYTES:
        side = "shorter" if len(key) < SVIX_KEY_BYTES.start else "longer"
        return warn(
            topic,
            f"{label}: {shown(secret)} decodes to {len(key)} bytes, {side} than Svix's secrets "
            "(24 to 64 bytes); check it is the whole Signing Secret",
        )
    return ok(topic, f"{label}: {shown(secret)}, a {len(key)}-byte Svix signing secret")


# --- the Supabase key ---------------------------------------------------------------------------


def _project_ref(supabase_url: str) -> str | None:
    host = urlsplit(supabase_url.strip()).hostname or ""
    return host.removesuffix(".supabase.co") if host.endswith(".supabase.co") else None


def check_supabase_key(sources: Sources, *, direct: bool) -> list[Finding]:
    """The key in SUPABASE_SERVICE_ROLE_KEY must be the service-role or a secret key."""
    topic = "Supabase key"
    key, url = sources.value("supabase_service_role_key"), sources.value("supabase_url")
    findings: list[Finding] = []
    if not direct:
        try:
            choose_backend(None, url, key, DEFAULT_DATA_DIR)  # as `serve` chooses
        except ConfigError as exc:  # REST mode, half set
            findings.append(fail(topic, str(exc)))
    key_var = sources.lookup("supabase_service_role_key")
    if key is None or key_var is None:
        return findings
    where = key_var.where
    if _quoted(key):
        return [*findings, fail(topic, f"{where} is wrapped in quotes: remove them")]
    try:
        role = supabase_key_role(key)  # as `Settings` reads it
    except ValueError:
        return [
            *findings,
            fail(
                topic,
                f"{where}: {shown(key)} is not a Supabase key clerk-sync recognises (a service_role "
                "JWT eyJ… or a secret key sb_secret_…)",
            ),
        ]
    if key.startswith(SUPABASE_SECRET_KEY_PREFIX):
        return [*findings, ok(topic, f"{where}: {shown(key)}, a secret key (acts as service_role)")]
    if key.startswith(SUPABASE_PUBLISHABLE_KEY_PREFIX):
        return [
            *findings,
            fail(
                topic,
                f"{where}: {shown(key)} is the publishable key, meant for browsers: RLS blocks its "
                "writes; use a secret key (sb_secret_…) from Project Settings → API Keys",
            ),
        ]
    claims = supabase_jwt_claims(key) or {}
    if role == "anon":
        return [
            *findings,
            fail(
                topic,
                f"{where}: {shown(key)} is the public anon key (role 'anon'): RLS will block "
                "writes; use the service_role key (Project Settings → API Keys → Legacy)",
            ),
        ]
    if role != "service_role":
        return [
            *findings,
            fail(
                topic,
                f"{where}: {shown(key)} is a JWT with role {role!r}, not 'service_role'",
            ),
        ]
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires < time.time():
        return [*findings, fail(topic, f"{where}: {shown(key)} has expired")]
    key_ref, url_ref = claims.get("ref"), _project_ref(url) if url else None
    if isinstance(key_ref, str) and url_ref and key_ref != url_ref:
        return [
            *findings,
            fail(
                topic,
                f"{where} belongs to project {key_ref!r}, but SUPABASE_URL points at {url_ref!r}",
            ),
        ]
    return [*findings, ok(topic, f"{where}: {shown(key)}, a service_role JWT")]


# --- the database -------------------------------------------------------------------------------

# Supabase, as the migration recognises it: its three roles, and auth.jwt() in this database.
SUPABASE_SQL = """
select (select count(*) from pg_catalog.pg_roles where rolname = any($1::text[])) = $2
   and pg_catalog.to_regprocedure('auth.jwt()') is not null
"""

# Who may execute clerk-sync's functions in schema public. A function without an ACL is
# executable by PUBLIC (PostgreSQL's default). The organization helpers for the app's policies
# ($1: HELPERS) are meant for authenticated: check_helpers judges them.
FUNCTION_GRANTS_SQL = """
select 'public.' || p.proname as function,
       pg_catalog.has_function_privilege('anon', p.oid, 'EXECUTE') as anon,
       pg_catalog.has_function_privilege('authenticated', p.oid, 'EXECUTE') as authenticated,
       (p.proacl is null or exists (
           select 1 from pg_catalog.aclexplode(p.proacl) a
           where a.grantee = 0 and a.privilege_type = 'EXECUTE')) as public
from pg_catalog.pg_proc p
where p.pronamespace = 'public'::regnamespace and p.proname like 'clerk\\_sync\\_%'
  and p.proname <> all($1::text[])
order by 1
"""

SCHEMA_USAGE_SQL = """
select r.rolname from pg_catalog.pg_roles r
where r.rolname in ('anon', 'authenticated')
  and pg_catalog.has_schema_privilege(r.rolname, 'clerk_sync', 'USAGE')
order by 1
"""


def _reason(exc: BaseException, timeout: float) -> str:
    """One line saying why a connection failed."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (firewall, wrong host, or IPv6-only host?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that host and port)"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


async def check_database(
    dsn: str, *, described: str, timeout: float = 5.0, columns: CustomColumns = NO_COLUMNS
) -> list[Finding]:
    """Reachable, migrated (the custom `columns` too), and, on Supabase, locked down as the
    migration leaves it."""
    where = f"{describe_dsn(dsn)}, from {described}"
    findings: list[Finding] = []
    try:
        async with asyncio.timeout(timeout):
            conn = await connect(dsn, timeout=timeout)
    except ValueError as exc:  # a DSN asyncpg cannot read; its message may quote the password
        return [fail("database", str(database_error(exc, dsn, "connect")))]
    except CONNECT_ERRORS as exc:
        return [fail("database", f"cannot connect to {where}: {_reason(exc, timeout)}")]
    try:
        async with asyncio.timeout(timeout * 2):
            findings.append(ok("database", f"connected to {where}"))
            if uses_transaction_pooler(dsn):
                findings.append(
                    ok(
                        "database",
                        "port 6543 is Supabase's transaction pooler: prepared statements are off",
                    )
                )
            findings.extend(await _check_schema(conn, columns))
    except DATABASE_ERRORS as exc:
        findings.append(fail("database", f"checking {where} failed: {_reason(exc, timeout)}"))
    finally:
        try:
            await asyncio.wait_for(conn.close(), timeout)
        except DATABASE_ERRORS:
            conn.terminate()
    return findings


async def _check_schema(conn: asyncpg.Connection, columns: CustomColumns) -> list[Finding]:
    version = await migrations.current_version(conn)
    latest = migrations.latest_version()
    if version < latest:
        return [
            fail(
                "schema",
                f"at version {version}, this clerk-sync needs {latest}: run `clerk-sync migrate` "
                "(or apply `clerk-sync schema` with `supabase db push`)",
            ),
            skip("RLS", "checked once the schema is current"),
        ]
    if version > latest:
        found = [
            fail(
                "schema",
                f"at version {version}, newer than this clerk-sync knows ({latest}): upgrade it",
            )
        ]
    else:
        found = [ok("schema", f"at version {version} (current)")]
    found += await check_custom_columns(conn, columns)
    if not await conn.fetchval(SUPABASE_SQL, list(SUPABASE_ROLES), len(SUPABASE_ROLES)):
        found.append(
            skip(
                "RLS",
                "not a Supabase database (no anon/authenticated/service_role roles and auth.jwt()):"
                " RLS and grant checks skipped",
            )
        )
        return found
    return found + await _check_lockdown(conn)


async def _check_lockdown(conn: asyncpg.Connection) -> list[Finding]:
    """The Supabase lockdown: what the anon key (public) and signed-in users may not do."""
    found = await check_synced_tables(conn) + await check_helpers(conn)
    exposed = []
    for row in await conn.fetch(FUNCTION_GRANTS_SQL, list(HELPERS)):
        who = [role for role in ("anon", "authenticated", "public") if row[role]]
        if who:
            exposed.append(f"{row['function']} to {'/'.join(who)}")
    if exposed:
        found.append(
            fail(
                "grants",
                f"EXECUTE granted on {'; '.join(exposed)}: anyone with the anon key can forge "
                "users; revoke execute on the function from public, anon, authenticated",
            )
        )
    else:
        found.append(
            ok("grants", "clerk-sync's functions are not executable by anon or authenticated")
        )

    readers = [r["rolname"] for r in await conn.fetch(SCHEMA_USAGE_SQL)]
    if readers:
        found.append(
            fail(
                "grants",
                f"{' and '.join(readers)} may use schema clerk_sync (raw payloads with private "
                "metadata): revoke usage on schema clerk_sync from them",
            )
        )
    else:
        found.append(ok("grants", "schema clerk_sync is out of reach of anon and authenticated"))
    return found


# --- custom columns (clerk-sync.toml) ------------------------------------------------------------

COLUMNS_TOPIC = "custom columns"

# What `migrate` last made of each custom column (sql/migrations/0010_custom_columns.sql).
REGISTERED_SQL = """
select table_name, column_name, path, type, default_sql, applied_at
from clerk_sync.custom_columns order by table_name, column_name
"""

# When a backfill last went through each resource to the end.
BACKFILLED_SQL = """
select r.resource, max(b.finished_at) as finished_at
from clerk_sync.backfill_runs as b cross join unnest(b.resources) as r(resource)
where b.outcome = 'completed'
group by r.resource
"""

# The backfill's resource (backfill.py) that lists each table's objects.
BACKFILL_RESOURCE = {
    "users": "users",
    "organizations": "organizations",
    "organization_memberships": "memberships",
}


def load_columns(sources: Sources) -> CustomColumns | Finding:
    """The columns file `serve` would read (CLERK_SYNC_CONFIG, else ./clerk-sync.toml), or the
    finding that says what is wrong with it."""
    named = sources.value("config_file")
    try:
        return load_custom_columns(Path(named) if named else None)
    except ConfigError as exc:
        return fail(COLUMNS_TOPIC, str(exc))


async def check_custom_columns(conn: asyncpg.Connection, columns: CustomColumns) -> list[Finding]:
    """Each declared column against the database's: there with its type, and as `migrate`
    last made it; the rows a backfill has yet to fill; the columns no longer declared. Nothing
    when none is declared or registered."""
    registered = {(r["table_name"], r["column_name"]): r for r in await conn.fetch(REGISTERED_SQL)}
    if not columns and not registered:
        return []
    backfilled = {r["resource"]: r["finished_at"] for r in await conn.fetch(BACKFILLED_SQL)}
    source = columns.source or "clerk-sync.toml"
    found: list[Finding] = []
    fine: dict[str, list[str]] = {}
    for held in await held_columns(conn, columns):
        column, label = held.column, f"public.{held.column.label}"
        record = registered.get((column.table, column.name))
        if held.held is None:
            found.append(
                fail(
                    COLUMNS_TOPIC,
                    f"{label} ({column.type}) is in {source} but not in the database, so "
                    "deliveries do not write it: run `clerk-sync migrate` (REST mode: apply the "
                    "current `clerk-sync schema` with `supabase db push`)",
                )
            )
        elif not held.same:
            found.append(
                fail(
                    COLUMNS_TOPIC,
                    f"{label} is {held.held}, and {source} says {column.type}: run `clerk-sync "
                    f"migrate --retype {column.label}`, which drops it (losing what it holds) "
                    "and adds and fills it again",
                )
            )
        elif record is None:
            found.append(
                fail(
                    COLUMNS_TOPIC,
                    f"{label} is there, but the database was not migrated with it in {source}, "
                    "so deliveries do not write it: run `clerk-sync migrate`, which takes it "
                    "over and fills it",
                )
            )
        elif (record["path"], record["type"], record["default_sql"]) != (
            column.dotted_path,
            column.type,
            column.default_sql,
        ):
            found.append(
                fail(
                    COLUMNS_TOPIC,
                    f"{label} is written from {record['path']} (default {record['default_sql']}) "
                    f"as the database was last migrated, and {source} says {column.dotted_path} "
                    f"(default {column.default_sql}): run `clerk-sync migrate`, which fills it "
                    "again",
                )
            )
        else:
            fine.setdefault(column.table, []).append(f"{column.name} {column.type}")
            found += _unfilled(column, record["applied_at"], backfilled)
    found[:0] = [
        ok(COLUMNS_TOPIC, f"public.{table}: {', '.join(names)}, as {source} declares")
        for table, names in fine.items()
    ]
    for (table, name), record in registered.items():
        if columns.find(f"{table}.{name}") is None:
            found.append(
                warn(
                    COLUMNS_TOPIC,
                    f"public.{table}.{name} ({record['path']}) is no longer in {source}, but the "
                    "database was last migrated with it, so deliveries still write it: run "
                    "`clerk-sync migrate`, which stops that and leaves the column as it is "
                    f"(drop it when nothing reads it: alter table public.{table} drop column "
                    f"{name})",
                )
            )
    return found


def _unfilled(
    column: CustomColumn, added: dt.datetime, backfilled: Mapping[str, dt.datetime]
) -> list[Finding]:
    """A column on a path whose data clerk-sync does not keep holds its default in the rows
    synced before it was added, until a backfill (completed since) fills them."""
    _, kept = migrations.fill_sql(column)
    last = backfilled.get(BACKFILL_RESOURCE[column.table])
    if kept or (last is not None and last > added):
        return []
    return [
        warn(
            COLUMNS_TOPIC,
            f"public.{column.label} is on {column.dotted_path}, which clerk-sync does not keep: "
            f"rows synced before it was added ({added:%Y-%m-%d %H:%M} UTC) hold its default "
            "until `clerk-sync backfill` fills them from Clerk",
        )
    ]


async def check_rest_columns(
    backend: RestBackend, columns: CustomColumns, timeout: float
) -> list[Finding]:
    """REST mode: whether the declared columns are there, as far as Supabase's REST API shows
    (not their types)."""
    from clerk_sync.storage.base import StoreUnavailable
    from clerk_sync.storage.rest import RestStore

    store = RestStore(backend.url, backend.key, timeout=timeout)
    try:
        missing = await store.missing_columns(columns)
    except StoreUnavailable as exc:
        return [fail(COLUMNS_TOPIC, f"cannot check them through Supabase's REST API: {exc}")]
    finally:
        await store.close()
    source = columns.source or "clerk-sync.toml"
    found = [
        fail(
            COLUMNS_TOPIC,
            f"public.{c.label} is in {source} but Supabase's REST API does not find it, so "
            "deliveries do not write it: apply the current `clerk-sync schema` with "
            "`supabase db push`",
        )
        for c in missing
    ]
    there: dict[str, list[str]] = {}
    for column in columns.columns:
        if column not in missing:
            there.setdefault(column.table, []).append(column.name)
    found[:0] = [
        ok(
            COLUMNS_TOPIC,
            f"public.{table}: {', '.join(names)} found through Supabase's REST API, which does "
            "not show their types (`clerk-sync doctor --database-url postgresql://…` checks "
            "those)",
        )
        for table, names in there.items()
    ]
    return found


# --- the synced tables and the app's helpers on Supabase -----------------------------------------


@dataclass(frozen=True)
class SyncedTable:
    """A table clerk-sync writes in schema public, as sql/repeatable/90_supabase.sql locks it
    down: row-level security on, the service role its only writer, and `authenticated` reading
    what `policies` (select policies for authenticated, by name) let it, when `readable`. A table
    `readable` only by the app's choice (invitations: `None`) may or may not grant authenticated
    select, for a policy of the app's own; anon never reads it."""

    name: str
    policies: tuple[str, ...] = ()
    readable: bool | None = True


SYNCED_TABLES = (
    SyncedTable("public.users", ("clerk-sync: users read their own row",)),
    SyncedTable("public.organizations", ("clerk-sync: members read their organizations",)),
    SyncedTable(
        "public.organization_memberships",
        ("clerk-sync: members read their organizations' members",),
    ),
    # Invitees' email addresses: no client role reads them unless the app grants it with a
    # policy of its own (docs/supabase.md).
    SyncedTable("public.organization_invitations", readable=None),
)

# What each table is to the client roles: row-level security, the names of the select policies
# for authenticated, the policies that let anon or authenticated (or PUBLIC, polroles 0) write,
# and each privilege anon or authenticated holds on it (PUBLIC's grants included).
SYNCED_TABLES_SQL = """
select t.name, c.oid is not null as present, c.relrowsecurity as rls,
       array(select p.polname::text from pg_catalog.pg_policy p
             where p.polrelid = c.oid and p.polcmd in ('r', '*')
               and (0 = any(p.polroles) or exists (
                     select 1 from pg_catalog.pg_roles r
                     where r.oid = any(p.polroles) and r.rolname = 'authenticated'))
             order by 1) as read_policies,
       array(select p.polname::text from pg_catalog.pg_policy p
             where p.polrelid = c.oid and p.polcmd <> 'r'
               and (0 = any(p.polroles) or exists (
                     select 1 from pg_catalog.pg_roles r
                     where r.oid = any(p.polroles) and r.rolname in ('anon', 'authenticated')))
             order by 1) as write_policies,
       array(select r.role || ' ' || pg_catalog.lower(v.privilege)
             from unnest(array['anon', 'authenticated']) as r(role)
             cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                     'REFERENCES', 'TRIGGER']) as v(privilege)
             where c.oid is not null
               and pg_catalog.has_table_privilege(r.role, c.oid, v.privilege)) as privileges
from unnest($1::text[]) with ordinality as t(name, n)
left join pg_catalog.pg_class c on c.oid = pg_catalog.to_regclass(t.name)
order by t.n
"""

# The app's helpers for its own policies (the contract's v2 section): SECURITY DEFINER with a
# pinned search_path, executable by authenticated and not by anon.
HELPERS = ("clerk_sync_is_member", "clerk_sync_org_role", "clerk_sync_active_org_id")
HELPERS_SQL = """
select h.name,
       'public.' || h.name || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')'
           as signature, p.prosecdef as security_definer,
       exists (select 1 from unnest(p.proconfig) as c(setting)
               where c.setting like 'search_path=%') as pinned_search_path,
       pg_catalog.has_function_privilege('authenticated', p.oid, 'EXECUTE') as authenticated,
       pg_catalog.has_function_privilege('anon', p.oid, 'EXECUTE') as anon
from unnest($1::text[]) with ordinality as h(name, n)
left join pg_catalog.pg_proc p
       on p.proname = h.name and p.pronamespace = 'public'::regnamespace
order by h.n
"""

# Re-applying the whole lock-down: the schema SQL is idempotent.
REAPPLY = "run `clerk-sync schema` in the SQL editor (idempotent) to restore the lock-down"


async def check_synced_tables(
    conn: asyncpg.Connection, tables: tuple[SyncedTable, ...] = SYNCED_TABLES
) -> list[Finding]:
    """One finding per table that is locked down as it should be, one per problem otherwise."""
    rows = await conn.fetch(SYNCED_TABLES_SQL, [t.name for t in tables])
    found: list[Finding] = []
    for table, row in zip(tables, rows, strict=True):
        problems = _table_problems(table, row)
        if problems:
            found += [fail("RLS", problem) for problem in problems]
        else:
            reads = _who_reads(table, row)
            found.append(
                ok("RLS", f"enabled on {table.name}; only the service role writes; {reads}")
            )
    return found


def _who_reads(table: SyncedTable, row: asyncpg.Record) -> str:
    if table.readable:
        return "signed-in users read it through its policies"
    if table.readable is None and "authenticated select" in row["privileges"]:
        policies = ", ".join(repr(p) for p in row["read_policies"]) or "none yet"
        return f"signed-in users read it only through your own policies ({policies})"
    return "no client role reads it"


def _table_problems(table: SyncedTable, row: asyncpg.Record) -> list[str]:
    name = table.name
    if not row["present"]:
        return [f"{name} does not exist: run `clerk-sync migrate`"]
    problems = []
    if not row["rls"]:
        problems.append(
            f"row-level security is off on {name}: its policies do nothing, and a role with a "
            f"grant on it (authenticated: select) reaches every row; run: alter table {name} "
            "enable row level security"
        )
    if row["write_policies"]:
        problems.append(
            f"policies let anon or authenticated write {name}: "
            f"{', '.join(row['write_policies'])}; drop them (only the service role writes)"
        )
    missing = [p for p in table.policies if p not in row["read_policies"]]
    if missing:
        problems.append(
            f"policy {', '.join(repr(p) for p in missing)} missing on {name}: signed-in users "
            f"cannot read their rows; {REAPPLY}"
        )
    expected = {"authenticated select"} if table.readable else set()
    granted = set(row["privileges"])
    if table.readable is None:
        granted.discard("authenticated select")  # the app's own choice
    extra, lacking = sorted(granted - expected), sorted(expected - granted)
    if extra:
        problems.append(f"{', '.join(extra)} granted on {name} ({_revoke_hint(table)}")
    if lacking:
        problems.append(
            f"authenticated may not select from {name}: its policies cannot let signed-in "
            f"users read their rows; run: grant select on table {name} to authenticated"
        )
    return problems


def _revoke_hint(table: SyncedTable) -> str:
    name = table.name
    if table.readable:
        return (
            f"only the service role writes it); run: revoke all on table {name} from public, "
            f"anon, authenticated; grant select on table {name} to authenticated"
        )
    if table.readable is None:
        return (
            f"only the service role writes it, and anon never reads it); run: revoke all on "
            f"table {name} from public, anon; revoke insert, update, delete, truncate, "
            f"references, trigger on table {name} from authenticated"
        )
    return (
        f"only the service role writes it, and no client role reads it); run: revoke all on "
        f"table {name} from public, anon, authenticated"
    )


async def check_helpers(conn: asyncpg.Connection) -> list[Finding]:
    """The helpers as the app's policies need them: one finding, or one per problem."""
    problems = []
    for row in await conn.fetch(HELPERS_SQL, list(HELPERS)):
        function = row["signature"] or f"public.{row['name']}"
        if row["signature"] is None:
            problems.append(f"{function} does not exist; {REAPPLY}")
            continue
        if not row["security_definer"]:
            problems.append(
                f"{function} is not SECURITY DEFINER: under the caller's own policies it cannot "
                f"see their memberships; run: alter function {function} security definer"
            )
        if not row["pinned_search_path"]:
            problems.append(
                f"{function} has no pinned search_path (a SECURITY DEFINER function without "
                f"one runs whatever the caller's search_path finds); run: alter function "
                f"{function} set search_path = ''"
            )
        if not row["authenticated"]:
            problems.append(
                f"authenticated may not execute {function}: policies that call it fail for "
                f"signed-in users; run: grant execute on function {function} to authenticated"
            )
        if row["anon"]:
            problems.append(
                f"anon may execute {function}; run: revoke execute on function {function} "
                "from public, anon"
            )
    if problems:
        return [fail("helpers", problem) for problem in problems]
    return [
        ok(
            "helpers",
            f"{', '.join(HELPERS)}: SECURITY DEFINER, search_path pinned, executable by "
            "authenticated only",
        )
    ]


# --- the deployed endpoint ----------------------------------------------------------------------

PROBE_BODY = b'{"type": "clerk-sync.doctor", "object": "event", "data": {}}'


def _is_clerk_sync_error(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text[:80] + ("…" if len(text) > 80 else "")


def _healthz_url(url: str) -> str | None:
    """{base}/healthz when `url` ends in clerk-sync's webhook path, else None."""
    parts = urlsplit(url)
    if not parts.path.rstrip("/").endswith(WEBHOOK_PATH):
        return None
    base = parts.path.rstrip("/").removesuffix(WEBHOOK_PATH)
    return urlunsplit(parts._replace(path=base + "/healthz", query="", fragment=""))


async def check_endpoint(url: str, *, timeout: float = 10.0) -> list[Finding]:
    """POST an unsigned event: clerk-sync must be the one refusing it, and nothing redirect."""
    topic = "endpoint"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [fail(topic, f"{url!r} is not an http(s):// URL")]
    findings: list[Finding] = []
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        findings.append(
            warn(topic, f"{url} is plain http: use https:// for the endpoint in production")
        )
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout) as client:
        try:
            response = await client.post(
                url, content=PROBE_BODY, headers={"content-type": "application/json"}
            )
        except httpx.TimeoutException:
            return [*findings, fail(topic, f"{url} is unreachable: no answer within {timeout:g} s")]
        except httpx.ConnectError as exc:
            reason = f"cannot connect ({exc})" if str(exc) else "cannot connect"
            return [*findings, fail(topic, f"{url} is unreachable: {reason}")]
        except httpx.HTTPError as exc:
            return [*findings, fail(topic, f"{url} failed: {exc or type(exc).__name__}")]
        findings.append(_judge(url, response))
        healthz = _healthz_url(url)
        if healthz:
            findings.append(await _check_healthz(client, healthz))
    return findings


def _judge(url: str, response: httpx.Response) -> Finding:
    topic = "endpoint"
    status = response.status_code
    if response.is_redirect:
        location = response.headers.get("location", "(no Location header)")
        return fail(
            topic,
            f"{url} redirects ({status}) to {location}; Svix does not follow redirects: put the "
            "final URL (often the www. one) in Clerk Dashboard → Webhooks",
        )
    clerk_sync = _is_clerk_sync_error(response)
    if status in (400, 401) and clerk_sync:
        return ok(
            topic,
            f"{url} answered {status} {_snippet(response)}: clerk-sync is there and refuses "
            "unsigned requests",
        )
    if status == 429 and clerk_sync:
        return warn(
            topic, f"{url} answered 429: clerk-sync is there, rate-limiting failed verifications"
        )
    if status == 404:
        path = urlsplit(url).path or "/"
        hint = (
            "" if path.endswith(WEBHOOK_PATH) else f"; clerk-sync's receiver is at {WEBHOOK_PATH}"
        )
        return fail(topic, f"{url} answered 404: no route at {path}{hint}")
    if status == 405:
        return fail(
            topic,
            f"{url} answered 405: the route does not accept POST (a page or a GET-only route, "
            "not clerk-sync's receiver?)",
        )
    if status in (401, 403):
        return fail(
            topic,
            f"{url} answered {status} {_snippet(response)!r}, not from clerk-sync: auth middleware "
            "(or deployment protection) in front of the route; make the route public, the "
            "signature is its protection",
        )
    if response.is_success:
        return fail(
            topic,
            f"{url} answered {status} to an unsigned request: whatever serves it does not verify "
            "signatures",
        )
    if status == 503 and clerk_sync:
        return fail(topic, f"{url} answered 503 {_snippet(response)}: clerk-sync is not ready")
    return fail(topic, f"{url} answered {status} {_snippet(response)!r}, not clerk-sync's 400/401")


async def _check_healthz(client: httpx.AsyncClient, url: str) -> Finding:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return warn("healthz", f"{url}: {type(exc).__name__}")
    if response.status_code == 200:
        return ok("healthz", f"{url} answered 200")
    # Serverless deployments often expose only the webhook route: worth a note, not a failure.
    return skip(
        "healthz",
        f"{url} answered {response.status_code} (fine if only the webhook route is public)",
    )


# --- all of it ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseTarget:
    backend: Backend
    described: str  # where its setting comes from


def database_target(
    sources: Sources, database_url: str | None, data_dir: Path = DEFAULT_DATA_DIR
) -> DatabaseTarget | Finding:
    """Which database `serve` would use (as `Settings.backend` chooses it), or the finding
    that says why there is none."""
    supplied = (
        Supplied("--database-url", "flag", database_url)
        if database_url
        else sources.lookup("database_url")
    )
    dsn = blank_is_unset(supplied.value) if supplied else None
    if supplied is not None and dsn is not None:
        try:
            dsn = check_database_url(dsn)  # as `Settings` reads it; never echoed
        except ValueError as exc:
            return fail("database", f"{supplied.where}: {exc}")
    try:
        backend = choose_backend(
            dsn, sources.value("supabase_url"), sources.value("supabase_service_role_key"), data_dir
        )
    except ConfigError:  # REST mode, half set: the Supabase key check says which half
        return skip("database", "REST mode (SUPABASE_URL) is half set: see the Supabase key")
    if isinstance(backend, PostgresBackend) and supplied is not None:
        return DatabaseTarget(
            backend, supplied.where if supplied.source != "flag" else "--database-url"
        )
    return DatabaseTarget(backend, backend.kind)


def run(
    environ: Mapping[str, str],
    *,
    dotenv_path: Path = Path(".env"),
    database_url: str | None = None,
    data_dir: Path | None = None,
    url: str | None = None,
    timeout: float = 5.0,
) -> list[Finding]:
    """Every check, in the order a delivery meets them: secret, key, database, endpoint."""
    sources = Sources.load(environ, dotenv_path)
    if data_dir is None:
        configured = sources.value("data_dir")
        data_dir = Path(configured) if configured else DEFAULT_DATA_DIR
    findings = check_signing_secrets(sources, data_dir)
    columns = load_columns(sources)
    if isinstance(columns, Finding):
        findings.append(columns)
        columns = NO_COLUMNS
    target = database_target(sources, database_url, data_dir)
    direct = isinstance(target, DatabaseTarget) and isinstance(target.backend, PostgresBackend)
    findings += check_supabase_key(sources, direct=direct)
    if isinstance(target, Finding):
        findings.append(target)
    elif isinstance(target.backend, PostgresBackend):
        findings += asyncio.run(
            check_database(
                target.backend.dsn, described=target.described, timeout=timeout, columns=columns
            )
        )
    elif isinstance(target.backend, RestBackend):
        findings.append(
            skip(
                "database",
                "REST mode (SUPABASE_URL): schema, RLS and grants are checked through a direct "
                "connection; run `clerk-sync doctor --database-url postgresql://…` for them",
            )
        )
        if columns:
            findings += asyncio.run(check_rest_columns(target.backend, columns, timeout))
    else:
        findings += _check_embedded(target.backend, timeout, columns)
    findings += check_session_sync(sources, timeout=timeout)
    if url:
        findings += asyncio.run(check_endpoint(url, timeout=max(timeout, 10.0)))
    return findings


def _check_embedded(
    backend: EmbeddedBackend, timeout: float, columns: CustomColumns
) -> list[Finding]:
    data_dir = backend.data_dir
    if not (pgdata_path(data_dir) / "PG_VERSION").is_file():
        return [
            fail(
                "database",
                f"no DATABASE_URL, and no embedded database in {data_dir} yet: set DATABASE_URL, "
                "or run `clerk-sync migrate` to create the embedded one",
            )
        ]
    from clerk_sync.storage.embedded import EmbeddedPostgresError, embedded_postgres

    try:
        with embedded_postgres(data_dir) as dsn:
            described = f"the embedded database in {data_dir}"
            return asyncio.run(
                check_database(dsn, described=described, timeout=timeout, columns=columns)
            )
    except EmbeddedPostgresError as exc:
        return [fail("database", str(exc))]


def passed(findings: Iterable[Finding]) -> bool:
    return all(f.status is not Status.FAIL for f in findings)


MARKS = {
    True: {Status.OK: "✓", Status.WARN: "!", Status.FAIL: "✗", Status.SKIP: "-"},
    False: {Status.OK: "ok  ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"},
}


def render(findings: Iterable[Finding], *, tty: bool) -> str:
    """One line per finding, then a summary line."""
    findings = list(findings)
    lines = [f"{MARKS[tty][f.status]} {f.topic}: {f.message}" for f in findings]
    problems = sum(f.status is Status.FAIL for f in findings)
    if problems:
        lines.append(f"{problems} problem{'s' if problems > 1 else ''} found")
    else:
        lines.append("all checks passed")
    return "\n".join(lines) + "\n"
