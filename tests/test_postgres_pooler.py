"""Through a transaction pooler, as Supabase's Supavisor on port 6543: PgBouncer in transaction
mode in front of the test server, which (like Supavisor) cannot keep prepared statements."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from clerk_sync.events import Outcome, parse_event
from clerk_sync.storage.postgres import PostgresStore, statement_cache_size
from tests import support
from tests import test_cli as cli

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(PGBOUNCER) and os.environ.get("CI") != "true",
        reason="pgbouncer is not installed (apt-get install pgbouncer; CI installs it)",
    ),
]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def pooler(pg_server: str) -> Iterator[tuple[int, str]]:
    """PgBouncer (transaction mode) in front of a fresh database, on Supabase's port when it is
    free; yields (port, database name)."""
    yield from run_pgbouncer(pg_server, 6543 if port_is_free(6543) else support.free_port())


@pytest.fixture
def pooler_elsewhere(pg_server: str) -> Iterator[tuple[int, str]]:
    """The same on a random port (PgBouncer's own default is 6432): nothing to tell from it."""
    port = support.free_port()
    while port == 6543:
        port = support.free_port()
    yield from run_pgbouncer(pg_server, port)


def run_pgbouncer(pg_server: str, port: int) -> Iterator[tuple[int, str]]:
    # PgBouncer drops root: its files live where its own user can read them.
    tmp_path = Path(tempfile.mkdtemp(prefix="clerk-sync-pgbouncer-"))
    tmp_path.chmod(0o777)
    dsn = support.create_database(pg_server)
    name = urlsplit(dsn).path.lstrip("/")
    parts = urlsplit(pg_server)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir:  # the embedded server: a Unix socket owned by its own system user
        target, run_as = f"host={socket_dir} port={parts.port or 5432}", Path(socket_dir).owner()
    else:
        target, run_as = f"host={parts.hostname} port={parts.port or 5432}", "postgres"
    (tmp_path / "users.txt").write_text('"postgres" ""\n')
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n{name} = {target} dbname={name}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {tmp_path / 'users.txt'}\npool_mode = transaction\n"
        "default_pool_size = 4\nmax_client_conn = 200\n"
        f"logfile = {tmp_path / 'pgbouncer.log'}\n"
    )
    pwd.getpwnam(run_as)  # fails clearly if the user is missing
    process = subprocess.Popen([PGBOUNCER, "-u", run_as, str(config)])
    try:
        deadline = time.monotonic() + 10
        while port_is_free(port) and time.monotonic() < deadline:
            assert process.poll() is None, "pgbouncer exited at start"
            time.sleep(0.05)
        yield port, name
    finally:
        process.terminate()
        process.wait(10)
        support.drop_database(pg_server, dsn)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_port_6543_turns_prepared_statements_off() -> None:
    assert statement_cache_size("postgresql://u:p@pooler.supabase.com:6543/postgres", "auto") == 0
    assert statement_cache_size("postgresql://u:p@pooler.supabase.com:5432/postgres", "auto") > 0
    assert statement_cache_size("postgresql://u:p@db:5432/postgres", "off") == 0
    assert statement_cache_size("postgresql://u:p@db:6543/postgres", "on") > 0


def test_serve_through_a_transaction_pooler(pooler: tuple[int, str], pg_server: str) -> None:
    port, name = pooler
    env = {"CLERK_SYNC_PREPARED_STATEMENTS": "off"} if port != 6543 else {}
    serve_and_deliver(port, name, pg_server, env)


def test_every_command_works_through_a_transaction_pooler_on_any_port(
    pooler_elsewhere: tuple[int, str], pg_server: str, tmp_path: Path
) -> None:
    """No setting, no telling port: migrate, serve, replay and events find out by themselves
    (a pooler's server connections keep the prepared statements of earlier clients)."""
    port, name = pooler_elsewhere
    url = f"postgresql://postgres@127.0.0.1:{port}/{name}"
    for _ in range(3):  # again and again: each run finds the statements the last one left
        migrated = cli.clerk_sync(tmp_path, "migrate", DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.stderr
    serve_and_deliver(port, name, pg_server, {})
    for _ in range(2):
        replayed = cli.clerk_sync(tmp_path, "replay", "--svix-id", "msg_pool0000", DATABASE_URL=url)
        assert replayed.returncode == 0, replayed.stderr
        assert "msg_pool0000" in replayed.stdout
        listed = cli.clerk_sync(tmp_path, "events", "--limit", "5", DATABASE_URL=url)
        assert listed.returncode == 0, listed.stderr
        assert "msg_pool" in listed.stdout


def serve_and_deliver(port: int, name: str, pg_server: str, more_env: dict[str, str]) -> None:
    """serve through the pooler on `port`, and 120 deliveries twice, 16 at a time."""
    secret, key = support.make_secret()
    env = {
        "CLERK_WEBHOOK_SECRET": secret,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/{name}",
        "CLERK_SYNC_POOL_SIZE": "8",
        **more_env,
    }
    # serve migrates through the pooler too (the database is already migrated: a no-op pass).
    with support.running_server(env) as server:
        events = []
        for n in range(40):
            user = f"user_pool{n:03d}"
            events.append(support.user_event("user.created", user, 1_000 + n, email=f"{n}@x.io"))
            events.append(
                support.user_event(
                    "user.updated", user, 2_000 + n, email=f"{n}@x.io", first_name="New"
                )
            )
            events.append(support.user_event("user.updated", user, 500, first_name="Stale"))
        deliveries = [(f"msg_pool{i:04d}", support.dumps(e)) for i, e in enumerate(events)]

        def send(delivery: tuple[str, bytes]) -> tuple[int, str]:
            message_id, body = delivery
            headers = support.signed_headers(key, body, message_id)
            response = httpx.post(server.webhook_url, content=body, headers=headers, timeout=15)
            return response.status_code, response.json().get("outcome", "")

        with ThreadPoolExecutor(16) as pool:
            first = list(pool.map(send, deliveries))
            again = list(pool.map(send, deliveries))

    assert all(status == 200 for status, _ in first), first
    outcomes = [outcome for _, outcome in first]
    assert outcomes.count("applied") + outcomes.count("stale") == len(deliveries)
    assert again == [(200, "duplicate")] * len(deliveries)
    rows = support.fetch(
        support.with_database(pg_server, name),
        "select id, first_name, email from public.users order by id",
    )
    assert len(rows) == 40
    assert all(r["first_name"] == "New" for r in rows)
    assert rows[0]["email"] == "0@x.io"


def test_the_store_stops_preparing_statements_once_a_pooler_shows_itself(
    pooler_elsewhere: tuple[int, str], pg_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another replica's statements, under the names this process will use next, wait on the
    pooler's server connection (as each process counts its names from 1, they do). Every
    delivery still applies: the store turns preparing off and runs the statement again."""
    port, name = pooler_elsewhere
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{name}"

    async def go() -> tuple[list[Outcome], bool]:
        other = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            start = asyncpg.connection._uid  # type: ignore[attr-defined]
            await other.execute(
                ";".join(
                    f'prepare "__asyncpg_stmt_{uid:x}__" as select 1'
                    for uid in range(start + 1, start + 200)
                )
            )
        finally:
            await other.close()
        store = await PostgresStore.open(dsn, pool_size=2)
        try:
            outcomes = []
            for n in range(10):
                event = support.user_event("user.created", f"user_pp{n}", 1_000 + n)
                outcomes.append(await store.apply(f"msg_pp{n}", parse_event(support.dumps(event))))
            return outcomes, store._reopen_unprepared is None
        finally:
            await store.close()

    outcomes, turned_off = asyncio.run(go())
    assert outcomes == [Outcome.APPLIED] * 10
    assert turned_off
    assert "prepared statements are off from now on" in caplog.text
    rows = support.fetch(
        support.with_database(pg_server, name), "select count(*) from public.users"
    )
    assert rows == [{"count": 10}]
