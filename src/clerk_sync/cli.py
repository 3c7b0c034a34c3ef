"""The `clerk-sync` command: a thin layer over the library.

Every error a user can cause ends in one line on stderr saying what happened and what to do, and
exit status 2 for configuration (1 for anything else), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import asyncpg
import httpx
import typer

from clerk_sync import migrations
from clerk_sync.datadir import create_dev_secret, read_dev_secret
from clerk_sync.settings import ConfigError, Settings, decode_signing_secret, load_settings
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


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The DSN to use: DATABASE_URL, else an embedded server in the data directory."""
    if settings.database_url:
        yield settings.database_url
        return
    if settings.supabase_url or settings.supabase_service_role_key:
        fail(
            "SUPABASE_URL: REST mode is not available in this version; set DATABASE_URL to your "
            "Supabase connection string (Project Settings → Database)",
            2,
        )
    try:
        with embedded_postgres(settings.data_dir) as dsn:
            yield dsn
    except EmbeddedPostgresError as exc:
        fail(str(exc))


async def _migrate(settings: Settings, dsn: str) -> list[migrations.Migration]:
    conn = await connect(dsn, settings.prepared_statements)
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


def run_migrations(settings: Settings, dsn: str) -> None:
    try:
        applied = asyncio.run(_migrate(settings, dsn))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(f"cannot migrate the database at {describe_dsn(dsn)}: {reason} (check DATABASE_URL)")
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        typer.echo(f"clerk-sync: applied migrations {names}", err=True)
    else:
        typer.echo(
            f"clerk-sync: schema is current (version {migrations.latest_version()})", err=True
        )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


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
    delete_mode: Annotated[
        str | None,
        typer.Option(help="soft: keep the row, set deleted_at; hard: remove the row"),
    ] = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(help="Proxies whose X-Forwarded-For is trusted (comma-separated IPs)"),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
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

    import uvicorn

    from clerk_sync.app import create_app_from_settings

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with database(settings) as dsn:
        if not no_migrate:
            run_migrations(settings, dsn)
        where = "embedded PostgreSQL" if not settings.database_url else describe_dsn(dsn)
        base = f"http://{settings.host}:{settings.port}"
        typer.echo(
            f"clerk-sync: writing to {where}; webhook endpoint {base}/api/webhooks/clerk\n"
            f"clerk-sync: try it: clerk-sync send-test user.created --url {base}/api/webhooks/clerk",
            err=True,
        )
        app = create_app_from_settings(settings, dsn)
        # uvicorn re-raises SIGTERM once it has shut down; ending the process there would skip
        # stopping the embedded database. Make it end this block like Ctrl+C does instead.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            log_level=log_level.lower(),
            access_log=False,
            forwarded_allow_ips=forwarded_allow_ips,
            timeout_graceful_shutdown=10,
        )


@cli.command()
def migrate(database_url: DatabaseUrlOption = None, data_dir: DataDirOption = None) -> None:
    """Create or upgrade the schema (idempotent; safe while other replicas run it)."""
    settings = settings_or_exit(database_url=database_url, data_dir=data_dir)
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


def main() -> None:
    cli()
