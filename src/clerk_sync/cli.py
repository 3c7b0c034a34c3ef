"""The `clerk-sync` command: a thin layer over the library.

Every error a user can cause ends in one line on stderr saying what happened and what to do, and
exit status 2 for configuration (1 for anything else), never a traceback.
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
from typing import Annotated, NoReturn, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import typer

from clerk_sync import logs, migrations
from clerk_sync.datadir import create_dev_secret, read_dev_secret
from clerk_sync.settings import ConfigError, Settings, decode_signing_secret, load_settings
from clerk_sync.storage import open_store
from clerk_sync.storage.embedded import EmbeddedPostgresError, embedded_postgres
from clerk_sync.storage.postgres import connect, describe_dsn

cli = typer.Typer(
    name="clerk-sync",
    help="Keep your Clerk users in your own Supabase/PostgreSQL database.",
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


def fail(message: str, status: int = 1) -> NoReturn:
    typer.echo(f"clerk-sync: {message}", err=True)
    raise typer.Exit(status)


def settings_or_exit(**flags: object) -> Settings:
    try:
        return load_settings(**flags)
    except ConfigError as exc:
        fail(str(exc), 2)


DIRECT_CONNECTION = "the connection string from Supabase Dashboard → Connect"


def rest_mode_or_exit(settings: Settings) -> bool:
    """Whether to serve through Supabase's REST API; stops when only half of it is set."""
    if settings.database_url:
        return False
    if settings.supabase_url and not settings.supabase_service_role_key:
        fail(
            "SUPABASE_SERVICE_ROLE_KEY: not set; REST mode needs it with SUPABASE_URL (the "
            "service_role or sb_secret_… key from Supabase Dashboard → Project Settings → API "
            "Keys), or set DATABASE_URL instead",
            2,
        )
    if settings.supabase_service_role_key and not settings.supabase_url:
        fail(
            "SUPABASE_URL: not set; REST mode needs it with SUPABASE_SERVICE_ROLE_KEY "
            "(https://<project-ref>.supabase.co), or set DATABASE_URL instead",
            2,
        )
    return settings.rest_mode


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The DSN to use: DATABASE_URL, else an embedded server in the data directory."""
    if settings.database_url:
        yield settings.database_url
        return
    if settings.supabase_url or settings.supabase_service_role_key:
        fail(
            "DATABASE_URL: not set; this command needs a direct database connection (REST mode, "
            f"SUPABASE_URL, only serves webhooks): set DATABASE_URL to {DIRECT_CONNECTION}",
            2,
        )
    try:
        with embedded_postgres(settings.data_dir) as dsn:
            yield dsn
    except EmbeddedPostgresError as exc:
        fail(str(exc))


async def _migrate(settings: Settings, dsn: str) -> tuple[list[migrations.Migration], list[str]]:
    """The migrations applied, and what they said (a skipped step says so in a notice)."""
    conn = await connect(dsn, settings.prepared_statements)
    said: list[str] = []

    def listen(conn: object, message: asyncpg.PostgresLogMessage) -> None:
        if str(message.message).startswith("clerk-sync: "):
            said.append(str(message.message))

    conn.add_log_listener(listen)
    try:
        return await migrations.migrate(conn), said
    finally:
        await conn.close()


def run_migrations(settings: Settings, dsn: str) -> None:
    try:
        applied, said = asyncio.run(_migrate(settings, dsn))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = getattr(exc, "hint", None)
        if hint:
            reason += f". {hint}"
        fail(f"cannot migrate the database at {describe_dsn(dsn)}: {reason} (check DATABASE_URL)")
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        typer.echo(f"clerk-sync: applied migrations {names}", err=True)
        for line in said:
            typer.echo(line, err=True)
    else:
        typer.echo(
            f"clerk-sync: schema is current (version {migrations.latest_version()})", err=True
        )


def check_rest_schema(settings: Settings) -> None:
    """REST mode cannot migrate: at start, stop with how to create the schema if it is not there
    (or if Supabase refuses the key)."""

    async def not_ready_reason() -> str | None:
        store = await open_store(settings)
        try:
            return await store.not_ready_reason()
        finally:
            await store.close()

    reason = asyncio.run(not_ready_reason())
    if reason:
        fail(reason)


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
    settings = settings_or_exit(
        host=host, port=port, delete_mode=delete_mode, database_url=database_url, data_dir=data_dir
    )
    if not settings.signing_secrets:
        if not dev:
            fail(
                "CLERK_WEBHOOK_SECRET: not set; copy the endpoint's Signing Secret (whsec_…) from "
                "the Clerk Dashboard, or run `clerk-sync serve --dev` to try it locally",
                2,
            )
        settings.webhook_secret = create_dev_secret(settings.data_dir)
        typer.echo(
            f"clerk-sync: --dev: no signing secret configured, using a local one kept in "
            f"{settings.data_dir / 'dev-webhook-secret'} (send-test finds it there)",
            err=True,
        )

    rest_mode = rest_mode_or_exit(settings)
    logs.configure(log_level.value)
    # REST mode's calls to Supabase: each delivery is logged once already, by the receiver.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    if rest_mode:
        check_rest_schema(settings)
        where = f"Supabase's REST API at {urlsplit(settings.supabase_url or '').hostname}"
        run_server(settings, None, where, forwarded_allow_ips, log_level.value)
        return
    with database(settings) as dsn:
        if not no_migrate:
            run_migrations(settings, dsn)
        where = "embedded PostgreSQL" if not settings.database_url else describe_dsn(dsn)
        run_server(settings, dsn, where, forwarded_allow_ips, log_level.value)


@cli.command()
def migrate(database_url: DatabaseUrlOption = None, data_dir: DataDirOption = None) -> None:
    """Create or upgrade the schema (idempotent; safe while other replicas run it)."""
    settings = settings_or_exit(database_url=database_url, data_dir=data_dir)
    if not settings.database_url and (settings.supabase_url or settings.supabase_service_role_key):
        fail(
            "DATABASE_URL: not set; `migrate` needs a direct database connection, which REST "
            f"mode (SUPABASE_URL) cannot give: set DATABASE_URL to {DIRECT_CONNECTION}, or "
            "save `clerk-sync schema` as a migration and apply it with `supabase db push`",
            2,
        )
    with database(settings) as dsn:
        run_migrations(settings, dsn)


@cli.command()
def schema() -> None:
    """Print the schema SQL, for `supabase db push` or your own migration tooling."""
    sys.stdout.write(migrations.render_schema())


async def _recent_users(settings: Settings, dsn: str, limit: int) -> list[asyncpg.Record]:
    conn = await connect(dsn, settings.prepared_statements)
    try:
        return list(
            await conn.fetch(
                """select id, email, first_name, last_name, updated_at, last_sign_in_at, deleted_at
                   from public.users order by updated_at desc nulls last limit $1""",
                limit,
            )
        )
    finally:
        await conn.close()


@cli.command()
def users(
    limit: Annotated[int, typer.Option(help="How many rows to show")] = 20,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show the most recently updated rows of public.users."""
    settings = settings_or_exit(database_url=database_url, data_dir=data_dir)
    with database(settings) as dsn:
        try:
            rows = asyncio.run(_recent_users(settings, dsn, limit))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            fail(f"cannot read users at {describe_dsn(dsn)}: {exc} (run clerk-sync migrate?)")
    if not rows:
        typer.echo("no users yet")
    for row in rows:
        name = " ".join(part for part in (row["first_name"], row["last_name"]) if part)
        state = f"deleted {row['deleted_at']:%Y-%m-%d %H:%M:%S}" if row["deleted_at"] else ""
        typer.echo(
            f"{row['id']}  {row['email'] or '-'}  {name or '-'}  updated {row['updated_at']}"
            f"  signed in {row['last_sign_in_at'] or '-'}  {state}".rstrip()
        )


@cli.command("send-test")
def send_test(
    event_type: Annotated[
        str, typer.Argument(help="e.g. user.created, user.updated, session.created")
    ],
    url: Annotated[
        str | None, typer.Option(help="Webhook URL [default: http://HOST:PORT/api/webhooks/clerk]")
    ] = None,
    user_id: Annotated[str | None, typer.Option(help="The user's id (user_…)")] = None,
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

    settings = settings_or_exit(data_dir=data_dir)
    if event_type not in example_types():
        fail(f"unknown event type {event_type!r}; one of: {', '.join(example_types())}", 2)
    secret = next(iter(settings.signing_secrets), None) or read_dev_secret(settings.data_dir)
    if secret is None:
        fail(
            "CLERK_WEBHOOK_SECRET: not set, and no dev secret in "
            f"{settings.data_dir} (start `clerk-sync serve --dev` first, or set the variable)",
            2,
        )
    target = url or f"http://{settings.host}:{settings.port}/api/webhooks/clerk"
    event = build_event(event_type, Overrides(user_id, email, first_name, last_name, updated_at))
    try:
        response = post_event(target, decode_signing_secret(secret), event, svix_id)
    except httpx.HTTPError as exc:
        fail(
            f"could not post to {target}: {exc or type(exc).__name__} (is clerk-sync serve running?)"
        )
    typer.echo(f"{response.status_code} {response.text.strip()}")
    if response.is_redirect:
        fail(
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
            "--prune", help="Delete (as user.deleted does) users that Clerk no longer has"
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
        typer.Option(min=0.0, max=1.0, help="Largest share of rows --prune may remove"),
    ] = 0.10,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Copy every user from Clerk's Backend API through the webhook write path.

    Exit status: 0 in sync, 3 drift repaired, 4 drift found (--dry-run), 1 failed, 2 refused.
    """
    from clerk_sync import backfill as backfilling
    from clerk_sync.clerk_api import ClerkAPIError

    settings = settings_or_exit(database_url=database_url, data_dir=data_dir)
    if not settings.clerk_secret_key:
        fail(
            "CLERK_SECRET_KEY: not set; copy the secret key (sk_…) from Clerk Dashboard → API Keys",
            2,
        )
    options = backfilling.BackfillOptions(
        dry_run=dry_run,
        prune=prune,
        force=force,
        restart=restart,
        max_prune_ratio=max_prune_ratio,
        delete_mode=settings.delete_mode,
    )
    reporter = backfilling.RichReporter() if sys.stderr.isatty() else backfilling.PlainReporter()
    with database(settings) as dsn:
        try:
            result = asyncio.run(backfilling.run(settings, dsn, options, reporter))
        except KeyboardInterrupt:
            fail("interrupted; run `clerk-sync backfill` again to resume where it stopped", 130)
        except backfilling.PruneRefused as exc:
            typer.echo(exc.result.summary())
            fail(str(exc), backfilling.REFUSED)
        except (backfilling.BackfillError, ClerkAPIError) as exc:
            fail(str(exc))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fail(
                f"database error at {describe_dsn(dsn)}: {reason} (run `clerk-sync backfill` "
                "again to resume)"
            )
    for kind, user_ids in result.samples.items():
        typer.echo(f"clerk-sync: {kind} (first {len(user_ids)}): {', '.join(user_ids)}", err=True)
    typer.echo(result.summary())
    if result.exit_status == backfilling.FAILED:
        fail(f"{result.tally.errors} users could not be written (see the lines above)")
    raise typer.Exit(result.exit_status)


# --- dead letters, replay and retention --------------------------------------------------------

_DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class _InboxError(Exception):
    """The inbox cannot be used as asked; the message is one line a user can act on."""


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _inbox_connection(settings: Settings, dsn: str, version: int) -> asyncpg.Connection:
    """A connection to a database whose schema is at least `version`."""
    conn = await connect(dsn, settings.prepared_statements)
    try:
        found = await migrations.current_version(conn)
    except BaseException:
        await conn.close()
        raise
    if found < version:
        await conn.close()
        raise _InboxError(
            f"the database at {describe_dsn(dsn)} is at schema version {found}, this needs "
            f"{version}: run `clerk-sync migrate`"
        )
    return conn


_T = TypeVar("_T")


def _run_on_inbox(
    settings: Settings, work: Callable[[str], Coroutine[object, object, _T]], what: str
) -> _T:
    """Run `work(dsn)` on the configured database, ending any failure in one line."""
    with database(settings) as dsn:
        try:
            return asyncio.run(work(dsn))
        except _InboxError as exc:
            fail(str(exc))
        except _DATABASE_ERRORS as exc:
            fail(f"cannot {what} at {describe_dsn(dsn)}: {_one_line(exc)}")


def _time_or_exit(option: str, text: str | None) -> dt.datetime | None:
    from clerk_sync.inbox import BadTime, parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except BadTime as exc:
        fail(f"{option}: {exc}", 2)


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
        fail("choose exactly one of --svix-id, --since/--until, or --dead-letters", 2)
    start, end = _time_or_exit("--since", since), _time_or_exit("--until", until)
    if start and end and start >= end:
        fail("--since: must be before --until", 2)
    settings = settings_or_exit(
        delete_mode=delete_mode, database_url=database_url, data_dir=data_dir
    )

    async def go(dsn: str) -> replaying.ReplaySummary:
        conn = await _inbox_connection(settings, dsn, replaying.REPLAY_SCHEMA_VERSION)
        try:
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
        finally:
            await conn.close()

    summary: replaying.ReplaySummary = _run_on_inbox(settings, go, "replay")
    typer.echo(summary.text())
    if summary.failed:
        fail(f"{summary.failed} events could not be applied (see the lines above)")


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
        fail(f"--outcome: {outcome!r} is not one of {', '.join(inbox.OUTCOMES)}", 2)
    start = _time_or_exit("--since", since)
    settings = settings_or_exit(database_url=database_url, data_dir=data_dir)

    async def go(dsn: str) -> list[inbox.Delivery]:
        conn = await _inbox_connection(settings, dsn, 1)
        try:
            return await inbox.list_deliveries(
                conn,
                limit=limit,
                outcome=outcome,
                event_type=event_type,
                user_id=user_id,
                since=start,
            )
        finally:
            await conn.close()

    deliveries: list[inbox.Delivery] = _run_on_inbox(settings, go, "read the inbox")
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
    """Delete inbox rows older than the retention period (the server also does it hourly).

    Dead letters are kept unless --dead-letters. Never under 2 days: Svix retries for ~27 h.
    """
    from clerk_sync import retention
    from clerk_sync.inbox import BadTime, parse_duration

    settings = settings_or_exit(database_url=database_url, data_dir=data_dir)
    try:
        period = retention.retention_period(
            parse_duration(older_than)
            if older_than is not None
            else dt.timedelta(days=settings.retention_days)
        )
    except (BadTime, retention.RetentionTooShort) as exc:
        fail(f"--older-than: {exc}", 2)

    async def go(dsn: str) -> int:
        conn = await _inbox_connection(settings, dsn, retention.RETENTION_SCHEMA_VERSION)
        try:
            return await retention.purge_expired(conn, period, dead_letters=dead_letters)
        finally:
            await conn.close()

    deleted: int = _run_on_inbox(settings, go, "purge the inbox")
    kept = "" if dead_letters else "; dead letters kept (--dead-letters to purge them too)"
    typer.echo(f"purged {deleted} inbox rows older than {_describe_period(period)}{kept}")


def _describe_period(period: dt.timedelta) -> str:
    if period % dt.timedelta(days=1):
        hours = period / dt.timedelta(hours=1)
        return f"{hours:g} hours"
    return f"{period.days} days"


def main() -> None:
    cli()
