"""The `clerk-sync` command: a thin layer over the library.

Every error a user can cause is a `ClerkSyncError` (`clerk_sync.errors`), and ends in one place,
`Commands.invoke`: one line on stderr saying what happened and what to do, and the exit status of
its kind (2 for configuration, usage or a refusal, 1 for anything else), never a traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import httpx
import typer
from typer.core import TyperGroup

from clerk_sync import database, logs, migrations
from clerk_sync.custom_columns import CustomColumn, HeldColumn, held_columns, lacking_warning
from clerk_sync.datadir import create_dev_secret, read_dev_secret
from clerk_sync.errors import ClerkSyncError, ConfigError, DatabaseUnavailable
from clerk_sync.settings import (
    PostgresBackend,
    RestBackend,
    Settings,
    decode_signing_secret,
    load_settings,
)
from clerk_sync.storage import open_store
from clerk_sync.storage.embedded import embedded_postgres
from clerk_sync.storage.rest import RestStore


class Commands(TyperGroup):
    """The one place a command's error becomes what the user sees."""

    # Any: newer typer vendors click, older typer passes click's own Context.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClerkSyncError as exc:
            typer.echo(f"clerk-sync: {exc}", err=True)
            raise typer.Exit(exc.exit_status) from None


class Interrupted(ClerkSyncError):
    """Ctrl+C: the conventional status of a process ended by SIGINT."""

    exit_status = 130


cli = typer.Typer(
    name="clerk-sync",
    help="Keep your Clerk users in your own Supabase/PostgreSQL database.",
    cls=Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Embedded database and dev secret [env: CLERK_SYNC_DATA_DIR]"),
]
DeleteModeOption = Annotated[
    str | None,
    typer.Option(
        help="soft: keep the row, set deleted_at; hard: remove the row [env: CLERK_SYNC_DELETE_MODE]"
    ),
]
DatabaseUrlOption = Annotated[
    str | None, typer.Option("--database-url", help="postgresql:// DSN [env: DATABASE_URL]")
]


DIRECT_CONNECTION = "the connection string from Supabase Dashboard → Connect"
NEEDS_DIRECT_CONNECTION = (
    "DATABASE_URL: not set; this command needs a direct database connection (REST mode, "
    f"SUPABASE_URL, only serves webhooks): set DATABASE_URL to {DIRECT_CONNECTION}"
)


@contextmanager
def direct_database(settings: Settings, rest_mode: str = NEEDS_DIRECT_CONNECTION) -> Iterator[str]:
    """The DSN of the backend `settings` choose: DATABASE_URL, else an embedded server in the
    data directory (started for the block). REST mode cannot serve these commands: ConfigError
    `rest_mode`."""
    backend = settings.backend
    if isinstance(backend, RestBackend):
        raise ConfigError(rest_mode)
    if isinstance(backend, PostgresBackend):
        yield backend.dsn
        return
    with embedded_postgres(backend.data_dir) as dsn:
        yield dsn


_T = TypeVar("_T")


def on_database(
    settings: Settings,
    dsn: str,
    work: Callable[[asyncpg.Connection], Coroutine[object, object, _T]],
    doing: str,
    *,
    schema_version: int = 0,
    then: str = "",
) -> _T:
    """Run `work(connection)` on the database at `dsn`, its schema at least `schema_version`;
    a failure comes out as a ClerkSyncError that says what could not be done."""

    async def run() -> _T:
        async with database.connection(
            dsn,
            doing,
            then=then,
            prepared_statements=settings.prepared_statements,
            schema_version=schema_version,
        ) as conn:
            return await work(conn)

    return asyncio.run(run())


def run_migrations(settings: Settings, dsn: str, retype: frozenset[str] = frozenset()) -> None:
    said: list[str] = []  # what the migrations said (a skipped step says so in a notice)

    def listen(conn: object, message: asyncpg.PostgresLogMessage) -> None:
        if str(message.message).startswith("clerk-sync: "):
            said.append(str(message.message))

    async def migrate(
        conn: asyncpg.Connection,
    ) -> list[migrations.Migration | migrations.Repeatable]:
        conn.add_log_listener(listen)
        return await migrations.migrate(conn, settings.custom_columns, retype)

    applied = on_database(settings, dsn, migrate, "migrate the database", then="check DATABASE_URL")
    if applied:
        names = ", ".join(m.label for m in applied)
        typer.echo(f"clerk-sync: applied migrations {names}", err=True)
    else:
        typer.echo(
            f"clerk-sync: schema is current (version {migrations.latest_version()})", err=True
        )
    for line in said:
        typer.echo(line, err=True)


def check_rest_schema(settings: Settings, backend: RestBackend) -> None:
    """REST mode cannot migrate: at start, stop with how to create the schema if it is not there
    (or if Supabase refuses the key)."""

    columns = settings.custom_columns

    async def not_ready_reason() -> tuple[str | None, list[CustomColumn]]:
        store = await open_store(settings, backend)
        try:
            reason = await store.not_ready_reason()
            if reason or not columns or not isinstance(store, RestStore):
                return reason, []
            return None, await store.missing_columns(columns)
        finally:
            await store.close()

    reason, lacking = asyncio.run(not_ready_reason())
    if reason:
        raise DatabaseUnavailable(reason)
    if lacking:
        how = "the current `clerk-sync schema` is applied (`supabase db push`)"
        typer.echo(f"clerk-sync: warning: {lacking_warning(columns, lacking, how)}", err=True)


def check_custom_columns(settings: Settings, dsn: str) -> None:
    """`serve --no-migrate`: say, at start, which declared custom columns the database lacks
    or holds with another type. A warning, not a refusal: see README, "Your own columns"."""
    columns = settings.custom_columns
    if not columns:
        return

    async def held(conn: asyncpg.Connection) -> list[HeldColumn]:
        return await held_columns(conn, columns)

    found = on_database(settings, dsn, held, "read the custom columns", then="check DATABASE_URL")
    lacking = [h.column for h in found if h.held is None]
    if lacking:
        how = "`clerk-sync migrate` runs"
        typer.echo(f"clerk-sync: warning: {lacking_warning(columns, lacking, how)}", err=True)
    for h in found:
        if h.held is not None and not h.same:
            typer.echo(
                f"clerk-sync: warning: public.{h.column.label} is {h.held}, and "
                f"{columns.source} says {h.column.type}: deliveries write it as the database "
                f"was last migrated; `clerk-sync migrate --retype {h.column.label}` changes it",
                err=True,
            )


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


# Deliveries in flight get this long to finish at shutdown: more than a delivery's database
# deadline (CLERK_SYNC_DB_TIMEOUT), less than the 30 s most orchestrators wait before SIGKILL.
SHUTDOWN_GRACE_SECONDS = 12


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_server(
    settings: Settings,
    dsn: str | None,
    where: str,
    forwarded_allow_ips: str | None,
    log_level: str,
) -> None:
    """Serve until stopped: PostgreSQL at `dsn` (None: REST mode, as `settings` say)."""
    import uvicorn

    from clerk_sync.app import create_app_from_settings
    from clerk_sync.server import ConnectionLimits, Server, server_options

    base = f"http://{settings.host}:{settings.port}"
    typer.echo(
        f"clerk-sync: writing to {where}; webhook endpoint {base}/api/webhooks/clerk\n"
        f"clerk-sync: try it: clerk-sync send-test user.created --url {base}/api/webhooks/clerk",
        err=True,
    )
    app = create_app_from_settings(settings, dsn)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,
        server_header=False,
        **server_options(
            ConnectionLimits(
                max_connections=settings.max_connections,
                header_timeout=settings.header_timeout,
                max_header_bytes=settings.max_header_bytes,
                max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
                other_fds=settings.pool_size + 64,
            )
        ),
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    # uvicorn re-raises SIGTERM once it has shut down; ending the process there would skip
    # stopping the embedded database. Make it end this block like Ctrl+C does instead.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    Server(config, app).run()


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [env: HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [env: PORT]")] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Local trial: make a signing secret if none is set")
    ] = False,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not apply pending migrations at start")
    ] = False,
    delete_mode: DeleteModeOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(help="Proxies whose X-Forwarded-For is trusted (comma-separated IPs)"),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="How much to log")
    ] = LogLevel.info,
) -> None:
    """Run the webhook server (POST /api/webhooks/clerk)."""
    settings = load_settings(
        host=host, port=port, delete_mode=delete_mode, database_url=database_url, data_dir=data_dir
    )
    if not settings.signing_secrets:
        if not dev:
            raise ConfigError(
                "CLERK_WEBHOOK_SECRET: not set; copy the endpoint's Signing Secret (whsec_…) from "
                "the Clerk Dashboard, or run `clerk-sync serve --dev` to try it locally"
            )
        settings.webhook_secret = create_dev_secret(settings.data_dir)
        typer.echo(
            f"clerk-sync: --dev: no signing secret configured, using a local one kept in "
            f"{settings.data_dir / 'dev-webhook-secret'} (send-test finds it there)",
            err=True,
        )

    backend = settings.backend
    logs.configure(log_level.value)
    # REST mode's calls to Supabase: each delivery is logged once already, by the receiver.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    if isinstance(backend, RestBackend):
        check_rest_schema(settings, backend)
        run_server(settings, None, backend.where, forwarded_allow_ips, log_level.value)
        return
    with direct_database(settings) as dsn:
        if not no_migrate:
            run_migrations(settings, dsn)
        else:
            check_custom_columns(settings, dsn)
        run_server(settings, dsn, backend.where, forwarded_allow_ips, log_level.value)


@cli.command()
def migrate(
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
    retype: Annotated[
        list[str] | None,
        typer.Option(
            help="A custom column (table.column) whose type clerk-sync.toml changed: drop it, "
            "add it with the new type and fill it again (what it holds is lost)",
            metavar="TABLE.COLUMN",
        ),
    ] = None,
) -> None:
    """Create or upgrade the schema (idempotent; safe while other replicas run it)."""
    settings = load_settings(database_url=database_url, data_dir=data_dir)
    rest_mode = (
        "DATABASE_URL: not set; `migrate` needs a direct database connection, which REST "
        f"mode (SUPABASE_URL) cannot give: set DATABASE_URL to {DIRECT_CONNECTION}, or "
        "save `clerk-sync schema` as a migration and apply it with `supabase db push`"
    )
    with direct_database(settings, rest_mode) as dsn:
        run_migrations(settings, dsn, frozenset(retype or ()))


@cli.command()
def schema() -> None:
    """Print the schema SQL (custom columns included), for `supabase db push` or your own
    migration tooling."""
    sys.stdout.write(migrations.render_schema(load_settings().custom_columns))


RECENT_USERS_SQL = """
select id, email, first_name, last_name, updated_at, last_sign_in_at, deleted_at
from public.users order by updated_at desc nulls last limit $1
"""


@cli.command()
def users(
    limit: Annotated[int, typer.Option(help="How many rows to show")] = 20,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show the most recently updated rows of public.users."""
    settings = load_settings(database_url=database_url, data_dir=data_dir)

    async def recent(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(await conn.fetch(RECENT_USERS_SQL, limit))

    with direct_database(settings) as dsn:
        rows = on_database(settings, dsn, recent, "read users", then="run clerk-sync migrate?")
    if not rows:
        typer.echo("no users yet")
    for row in rows:
        name = " ".join(part for part in (row["first_name"], row["last_name"]) if part)
        state = f"deleted {row['deleted_at']:%Y-%m-%d %H:%M:%S}" if row["deleted_at"] else ""
        typer.echo(
            f"{row['id']}  {row['email'] or '-'}  {name or '-'}  updated {row['updated_at']}"
            f"  signed in {row['last_sign_in_at'] or '-'}  {state}".rstrip()
        )


RECENT_ORGANIZATIONS_SQL = """
select o.id, o.name, o.slug, o.updated_at, o.deleted_at,
       (select count(*) from public.organization_memberships as m
        where m.organization_id = o.id and m.deleted_at is null) as members
from public.organizations as o order by o.updated_at desc nulls last, o.id limit $1
"""

LIVE_MEMBERS_SQL = """
select o.deleted_at as organization_deleted_at, m.id, m.user_id, m.role, m.created_at,
       u.email, u.first_name, u.last_name
from public.organizations as o
left join public.organization_memberships as m
       on m.organization_id = o.id and m.deleted_at is null
left join public.users as u on u.id = m.user_id
where o.id = $1
order by m.created_at nulls last, m.id
"""


@cli.command()
def organizations(
    limit: Annotated[int, typer.Option(help="How many rows to show")] = 20,
    members: Annotated[
        str | None,
        typer.Option("--members", help="Show this organization's live members instead (org_…)"),
    ] = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show the most recently updated organizations with their live member counts, or one
    organization's live members (--members org_…)."""
    settings = load_settings(database_url=database_url, data_dir=data_dir)

    async def read(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        if members is not None:
            return list(await conn.fetch(LIVE_MEMBERS_SQL, members))
        return list(await conn.fetch(RECENT_ORGANIZATIONS_SQL, limit))

    with direct_database(settings) as dsn:
        rows = on_database(
            settings,
            dsn,
            read,
            "read organizations",
            schema_version=migrations.ORGANIZATIONS_VERSION,
        )
    if members is not None:
        _echo_members(members, rows)
        return
    if not rows:
        typer.echo("no organizations yet")
    for row in rows:
        state = f"deleted {row['deleted_at']:%Y-%m-%d %H:%M:%S}" if row["deleted_at"] else ""
        typer.echo(
            f"{row['id']}  {row['name'] or '-'}  {row['slug'] or '-'}  members {row['members']}"
            f"  updated {row['updated_at'] or '-'}  {state}".rstrip()
        )


def _echo_members(org_id: str, rows: list[asyncpg.Record]) -> None:
    if not rows:
        raise ClerkSyncError(
            f"no organization {org_id} in public.organizations (`clerk-sync organizations` "
            "lists them)"
        )
    if rows[0]["organization_deleted_at"] is not None:
        typer.echo(f"{org_id} was deleted {rows[0]['organization_deleted_at']:%Y-%m-%d %H:%M:%S}")
    live = [row for row in rows if row["id"] is not None]
    if not live:
        typer.echo(f"{org_id} has no live members")
    for row in live:
        name = " ".join(part for part in (row["first_name"], row["last_name"]) if part)
        typer.echo(
            f"{row['user_id']}  {row['email'] or '-'}  {name or '-'}  {row['role'] or '-'}"
            f"  {row['id']}  since {row['created_at'] or '-'}"
        )


@cli.command("send-test")
def send_test(
    event_type: Annotated[
        str,
        typer.Argument(
            help="e.g. user.created, session.created, organization.updated, "
            "organizationMembership.created"
        ),
    ],
    url: Annotated[
        str | None, typer.Option(help="Webhook URL [default: http://HOST:PORT/api/webhooks/clerk]")
    ] = None,
    user_id: Annotated[str | None, typer.Option(help="The user's id (user_…)")] = None,
    org_id: Annotated[
        str | None, typer.Option(help="The organization's id (org_…), for organization events")
    ] = None,
    email: Annotated[str | None, typer.Option(help="The user's primary email address")] = None,
    first_name: Annotated[str | None, typer.Option(help="The user's first name")] = None,
    last_name: Annotated[str | None, typer.Option(help="The user's last name")] = None,
    updated_at: Annotated[
        int | None, typer.Option(help="data.updated_at in ms [default: now]")
    ] = None,
    svix_id: Annotated[
        str | None, typer.Option(help="The delivery's svix-id [default: new]")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Post a realistic signed example event to a running clerk-sync."""
    from clerk_sync.sendtest import Overrides, build_event, example_types, post_event

    settings = load_settings(data_dir=data_dir)
    if event_type not in example_types():
        raise ConfigError(
            f"unknown event type {event_type!r}; one of: {', '.join(example_types())}"
        )
    secret = next(iter(settings.signing_secrets), None) or read_dev_secret(settings.data_dir)
    if secret is None:
        raise ConfigError(
            "CLERK_WEBHOOK_SECRET: not set, and no dev secret in "
            f"{settings.data_dir} (start `clerk-sync serve --dev` first, or set the variable)"
        )
    target = url or f"http://{settings.host}:{settings.port}/api/webhooks/clerk"
    overrides = Overrides(user_id, email, first_name, last_name, updated_at, org_id)
    event = build_event(event_type, overrides)
    try:
        response = post_event(target, decode_signing_secret(secret), event, svix_id)
    except httpx.HTTPError as exc:
        raise ClerkSyncError(
            f"could not post to {target}: {exc or type(exc).__name__} (is clerk-sync serve running?)"
        ) from None
    typer.echo(f"{response.status_code} {response.text.strip()}")
    if response.is_redirect:
        raise ClerkSyncError(
            f"{target} redirects to {response.headers.get('location')}; Svix does not follow redirects"
        )
    if not response.is_success:
        raise typer.Exit(1)


@cli.command()
def doctor(
    url: Annotated[
        str | None,
        typer.Option(
            help="Also probe the deployed endpoint, e.g. https://example.com/api/webhooks/clerk"
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.5, max=60, help="Seconds to wait for the database")
    ] = 5.0,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check secrets, keys, database and endpoint, and say what is wrong in plain words.

    Exit status 0 when every check passes, 1 otherwise.
    """
    import os

    from clerk_sync import doctor as checkup

    findings = checkup.run(
        os.environ, database_url=database_url, data_dir=data_dir, url=url, timeout=timeout
    )
    typer.echo(checkup.render(findings, tty=sys.stdout.isatty()), nl=False)
    raise typer.Exit(0 if checkup.passed(findings) else 1)


@cli.command()
def backfill(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Read everything, write nothing, say what would change"),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete (as user.deleted, organization.deleted and "
            "organizationMembership.deleted do) rows that Clerk no longer has; not "
            "invitations, which have no delete event and end with their organization",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Let --prune remove more than --max-prune-ratio")
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Begin anew instead of resuming an unfinished run")
    ] = False,
    max_prune_ratio: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Largest share of a resource's rows --prune may remove"
        ),
    ] = 0.10,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="RESOURCE",
            help="Walk only these: users, organizations, memberships, invitations (repeat the "
            "flag, or separate them by commas); all four by default",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Copy every user, organization, membership and organization invitation from Clerk's
    Backend API through the webhook write path (users, then organizations, then memberships,
    then invitations).

    Exit status: 0 in sync, 3 drift repaired, 4 drift found (--dry-run), 1 failed, 2 refused.
    """
    from clerk_sync import backfill as backfilling

    try:
        resources = backfilling.select_resources(only or [])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = load_settings(database_url=database_url, data_dir=data_dir)
    if not settings.clerk_secret_key:
        raise ConfigError(
            "CLERK_SECRET_KEY: not set; copy the secret key (sk_…) from Clerk Dashboard → API Keys"
        )
    options = backfilling.BackfillOptions(
        dry_run=dry_run,
        prune=prune,
        force=force,
        restart=restart,
        max_prune_ratio=max_prune_ratio,
        delete_mode=settings.delete_mode,
        resources=resources,
    )
    reporter = backfilling.RichReporter() if sys.stderr.isatty() else backfilling.PlainReporter()
    with direct_database(settings) as dsn:
        try:
            result = asyncio.run(backfilling.run(settings, dsn, options, reporter))
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted; run `clerk-sync backfill` again to resume where it stopped"
            ) from None
        except backfilling.PruneRefused as exc:
            typer.echo(exc.result.summary())
            raise
    for done in result.resources:
        for kind, ids in done.samples.items():
            typer.echo(
                f"clerk-sync: {done.resource} {kind} (first {len(ids)}): {', '.join(ids)}",
                err=True,
            )
    typer.echo(result.summary())
    if result.exit_status == backfilling.FAILED:
        failed = ", ".join(
            f"{done.tally.errors} {done.resource}" for done in result.resources if done.tally.errors
        )
        raise ClerkSyncError(f"{failed} could not be written (see the lines above)")
    raise typer.Exit(result.exit_status)


# --- dead letters, replay and retention --------------------------------------------------------


def _time_option(option: str, text: str | None) -> dt.datetime | None:
    from clerk_sync.inbox import BadTime, parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except BadTime as exc:
        raise ConfigError(f"{option}: {exc}") from None


@cli.command()
def replay(
    svix_id: Annotated[
        list[str] | None,
        typer.Option("--svix-id", help="Replay this delivery (repeat for several)"),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Replay deliveries received since: ISO time (UTC) or ago (2h, 3d)"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="…and before this time: ISO time (UTC) or ago (2h, 3d)")
    ] = None,
    dead_letters: Annotated[
        bool, typer.Option("--dead-letters", help="Replay every dead letter (outcome invalid)")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what each replay would do; write nothing")
    ] = False,
    delete_mode: DeleteModeOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Apply stored deliveries again through the write path: by svix-id, by time, or dead letters.

    Exit status: 0 all replayed (stale counts: the database already holds newer), 1 some could
    not be applied (still invalid, or no such svix-id), 2 bad usage.
    """
    from clerk_sync import replay as replaying

    chosen = [bool(svix_id), since is not None or until is not None, dead_letters]
    if sum(chosen) != 1:
        raise ConfigError("choose exactly one of --svix-id, --since/--until, or --dead-letters")
    start, end = _time_option("--since", since), _time_option("--until", until)
    if start and end and start >= end:
        raise ConfigError("--since: must be before --until")
    settings = load_settings(delete_mode=delete_mode, database_url=database_url, data_dir=data_dir)

    async def go(conn: asyncpg.Connection) -> replaying.ReplaySummary:
        if svix_id:
            ids = list(dict.fromkeys(svix_id))
        elif dead_letters:
            ids = await replaying.select_dead_letters(conn)
        else:
            ids = await replaying.select_range(conn, start, end)
        summary = replaying.ReplaySummary(dry_run)
        async for result in replaying.replay(
            conn, ids, delete_mode=settings.delete_mode, dry_run=dry_run
        ):
            typer.echo(result.line())
            summary.add(result)
        return summary

    with direct_database(settings) as dsn:
        summary = on_database(settings, dsn, go, "replay", schema_version=migrations.REPLAY_VERSION)
    typer.echo(summary.text())
    if summary.failed:
        raise ClerkSyncError(f"{summary.failed} events could not be applied (see the lines above)")


@cli.command()
def events(
    limit: Annotated[int, typer.Option(min=1, help="How many deliveries to show")] = 50,
    outcome: Annotated[
        str | None, typer.Option(help="Only this outcome: applied, stale, ignored, invalid")
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only this event type, e.g. user.updated")
    ] = None,
    user_id: Annotated[str | None, typer.Option(help="Only this user's deliveries")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only since: ISO time (UTC) or ago (2h, 3d)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines (the default when not on a terminal)")
    ] = False,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List recent deliveries, newest first: time, svix-id, type, user, outcome, error.

    Payloads are never shown (they hold private metadata and email addresses).
    """
    from clerk_sync import inbox

    if outcome is not None and outcome not in inbox.OUTCOMES:
        raise ConfigError(f"--outcome: {outcome!r} is not one of {', '.join(inbox.OUTCOMES)}")
    start = _time_option("--since", since)
    settings = load_settings(database_url=database_url, data_dir=data_dir)

    async def go(conn: asyncpg.Connection) -> list[inbox.Delivery]:
        return await inbox.list_deliveries(
            conn, limit=limit, outcome=outcome, event_type=event_type, user_id=user_id, since=start
        )

    with direct_database(settings) as dsn:
        deliveries = on_database(
            settings, dsn, go, "read the inbox", schema_version=inbox.INBOX_SCHEMA_VERSION
        )
    if as_json or not sys.stdout.isatty():
        for delivery in deliveries:
            sys.stdout.write(delivery.json_line() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("received_at (UTC)", "svix_id", "type", "user_id", "outcome", "error")
    for column in table.columns[:5]:
        column.no_wrap = True
    for d in deliveries:
        table.add_row(
            f"{d.received_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}",
            d.svix_id,
            d.type or "-",
            d.user_id or "-",
            d.outcome,
            d.error or "",
        )
    Console().print(table if deliveries else "no deliveries", markup=False, highlight=False)


@cli.command()
def purge(
    older_than: Annotated[
        str | None,
        typer.Option(help="Age of the rows to delete, e.g. 30d [env: CLERK_SYNC_RETENTION_DAYS]"),
    ] = None,
    dead_letters: Annotated[
        bool, typer.Option("--dead-letters", help="Delete old dead letters too")
    ] = False,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Delete inbox rows older than the retention period, and drop the payloads of handled
    deliveries older than CLERK_SYNC_PAYLOAD_RETENTION_DAYS (the server also does it hourly).

    Dead letters are kept unless --dead-letters. Never under 2 days: Svix retries for ~27 h.
    """
    from clerk_sync import retention
    from clerk_sync.inbox import BadTime, parse_duration

    settings = load_settings(database_url=database_url, data_dir=data_dir)
    try:
        period = retention.retention_period(
            parse_duration(older_than)
            if older_than is not None
            else dt.timedelta(days=settings.retention_days)
        )
    except (BadTime, retention.RetentionTooShort) as exc:
        raise ConfigError(f"--older-than: {exc}") from None

    payload_days = settings.payload_retention_days

    async def go(conn: asyncpg.Connection) -> tuple[int, int]:
        return await retention.retention_pass(conn, period, payload_days, dead_letters=dead_letters)

    with direct_database(settings) as dsn:
        deleted, dropped = on_database(
            settings,
            dsn,
            go,
            "purge the inbox",
            schema_version=migrations.PAYLOAD_RETENTION_VERSION,
        )
    kept = "" if dead_letters else "; dead letters kept (--dead-letters to purge them too)"
    typer.echo(f"purged {deleted} inbox rows older than {_describe_period(period)}{kept}")
    typer.echo(
        f"dropped {dropped} payloads of deliveries older than {payload_days} days"
        " (dead letters keep theirs)"
    )


def _describe_period(period: dt.timedelta) -> str:
    if period % dt.timedelta(days=1):
        hours = period / dt.timedelta(hours=1)
        return f"{hours:g} hours"
    return f"{period.days} days"


def main() -> None:
    cli()
