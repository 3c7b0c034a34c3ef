"""`clerk-sync doctor` against each misconfiguration it claims to detect: through its functions,
and through the command as a user runs it (a subprocess, no TTY, in a directory of its own)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from clerk_sync import doctor, migrations
from clerk_sync.custom_columns import CustomColumns, parse_custom_columns
from clerk_sync.doctor import Finding, Sources, Status
from tests import support
from tests.postgrest_standin import create_supabase_database

CONFIG_PREFIXES = ("CLERK_", "DATABASE_URL", "SUPABASE_")


def sources(dotenv: dict[str, str] | None = None, **environ: str) -> Sources:
    return Sources(environ, dotenv or {})


def secret_of(n_bytes: int) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def only(findings: list[Finding], topic: str) -> list[Finding]:
    return [f for f in findings if f.topic == topic]


def statuses(findings: list[Finding]) -> list[Status]:
    return [f.status for f in findings]


def jwt(claims: dict[str, object]) -> str:
    """A JWT as Supabase's legacy keys are shaped (the signature is not checked, so fake it)."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.ZmFrZS1zaWduYXR1cmU"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update(extra)
    return env


def clerk_sync_doctor(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clerk_sync", "doctor", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- signing secrets ----------------------------------------------------------------------------


def test_a_missing_secret_fails_and_names_the_variable() -> None:
    [finding] = doctor.check_signing_secrets(sources())
    assert finding.status is Status.FAIL
    assert "not set" in finding.message and "CLERK_WEBHOOK_SECRET" in finding.message


def test_an_empty_variable_hides_the_dotenv_value() -> None:
    found = doctor.check_signing_secrets(
        sources({"CLERK_WEBHOOK_SECRET": secret_of(32)}, CLERK_WEBHOOK_SECRET="")
    )
    assert statuses(found) == [Status.FAIL]
    assert "set but empty" in found[0].message and "(environment)" in found[0].message


def test_a_good_secret_passes_and_says_where_it_came_from() -> None:
    secret = secret_of(32)
    [finding] = doctor.check_signing_secrets(sources({"CLERK_WEBHOOK_SIGNING_SECRET": secret}))
    assert finding.status is Status.OK
    assert "CLERK_WEBHOOK_SIGNING_SECRET (.env)" in finding.message
    assert "32-byte" in finding.message
    assert secret[:8] in finding.message and secret[8:16] not in finding.message


def test_the_environment_beats_dotenv_as_in_settings() -> None:
    note, finding = doctor.check_signing_secrets(
        sources({"CLERK_WEBHOOK_SECRET": "whsec_bad!"}, CLERK_WEBHOOK_SECRET=secret_of(24))
    )
    assert note.status is Status.WARN and "overrides a different" in note.message
    assert finding.status is Status.OK and "(environment)" in finding.message


def test_a_secret_without_the_whsec_prefix() -> None:
    [finding] = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET="sk_live_abcdefghijkl"))
    assert finding.status is Status.FAIL
    assert "does not start with 'whsec_'" in finding.message
    assert "abcdefgh" not in finding.message  # at most 8 characters shown


def test_a_secret_that_is_not_base64() -> None:
    [finding] = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET="whsec_not*base64!"))
    assert finding.status is Status.FAIL and "not valid base64" in finding.message


def test_a_truncated_secret_fails_and_a_short_one_warns() -> None:
    [truncated] = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET=secret_of(8)))
    assert truncated.status is Status.FAIL and "8 bytes, too short" in truncated.message
    [short] = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET=secret_of(18)))
    assert short.status is Status.WARN and "18 bytes, shorter than" in short.message
    [long] = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET=secret_of(80)))
    assert long.status is Status.WARN and "longer than" in long.message


def test_a_secret_pasted_with_quotes_or_whitespace() -> None:
    secret = secret_of(24)
    [quoted] = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET=f'"{secret}"'))
    assert quoted.status is Status.FAIL and "wrapped in quotes" in quoted.message
    found = doctor.check_signing_secrets(sources(CLERK_WEBHOOK_SECRET=f" {secret}\n"))
    assert statuses(found) == [Status.WARN, Status.OK]
    assert "whitespace" in found[0].message


def test_every_secret_of_a_rotation_is_checked() -> None:
    found = doctor.check_signing_secrets(
        sources(CLERK_WEBHOOK_SECRET=f"{secret_of(24)} whsec_***,{secret_of(32)}")
    )
    assert statuses(found) == [Status.OK, Status.FAIL, Status.OK]
    assert "secret 2 of 3" in found[1].message


def test_two_variables_with_different_values() -> None:
    first, second = secret_of(24), secret_of(24)
    found = doctor.check_signing_secrets(
        sources({"CLERK_WEBHOOK_SIGNING_SECRET": second}, CLERK_WEBHOOK_SECRET=first)
    )
    assert statuses(found) == [Status.FAIL, Status.OK]
    assert "both set and differ" in found[0].message
    assert "CLERK_WEBHOOK_SIGNING_SECRET (.env)" in found[0].message
    same = doctor.check_signing_secrets(
        sources(CLERK_WEBHOOK_SECRET=first, CLERK_WEBHOOK_SIGNING_SECRET=first)
    )
    assert statuses(same) == [Status.OK]


# --- the Supabase key ---------------------------------------------------------------------------

SUPABASE_URL = "https://abcdefghijklmnop.supabase.co"


def key_findings(key: str, url: str = SUPABASE_URL) -> list[Finding]:
    return doctor.check_supabase_key(
        sources(SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=key), direct=False
    )


def test_the_anon_jwt_is_refused() -> None:
    key = jwt({"iss": "supabase", "ref": "abcdefghijklmnop", "role": "anon", "exp": 4102444800})
    [finding] = key_findings(key)
    assert finding.status is Status.FAIL
    assert "public anon key" in finding.message and "RLS will block writes" in finding.message
    assert key[8:16] not in finding.message


def test_the_service_role_jwt_passes() -> None:
    key = jwt({"ref": "abcdefghijklmnop", "role": "service_role", "exp": 4102444800})
    assert statuses(key_findings(key)) == [Status.OK]


def test_a_service_role_jwt_of_another_project_or_expired() -> None:
    other = jwt({"ref": "zzzzzzzzzzzzzzzz", "role": "service_role", "exp": 4102444800})
    [finding] = key_findings(other)
    assert finding.status is Status.FAIL and "belongs to project" in finding.message
    expired = jwt({"role": "service_role", "exp": 1_600_000_000})
    assert "expired" in key_findings(expired)[0].message


def test_the_publishable_key_is_refused_and_a_secret_key_passes() -> None:
    [publishable] = key_findings("sb_publishable_" + secrets.token_urlsafe(24))
    assert publishable.status is Status.FAIL and "publishable key" in publishable.message
    [secret] = key_findings("sb_secret_" + secrets.token_urlsafe(24))
    assert secret.status is Status.OK


def test_an_unrecognised_key() -> None:
    [finding] = key_findings("not-a-supabase-key-at-all")
    assert finding.status is Status.FAIL and "not a Supabase key" in finding.message


def test_rest_mode_needs_both_url_and_key() -> None:
    [finding] = doctor.check_supabase_key(sources(SUPABASE_URL=SUPABASE_URL), direct=False)
    assert finding.status is Status.FAIL and "SUPABASE_SERVICE_ROLE_KEY: not set" in finding.message
    assert doctor.check_supabase_key(sources(SUPABASE_URL=SUPABASE_URL), direct=True) == []


# --- the database -------------------------------------------------------------------------------


def check_database(dsn: str) -> list[Finding]:
    return support.run(doctor.check_database(dsn, described="DATABASE_URL", timeout=5))


def test_an_unreachable_database() -> None:
    port = support.free_port()  # nothing listens there
    [finding] = check_database(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    assert finding.status is Status.FAIL
    assert f"cannot connect to 127.0.0.1:{port}/postgres" in finding.message
    assert "connection refused" in finding.message
    assert "\n" not in finding.message


def test_a_database_that_was_never_migrated(pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        found = check_database(dsn)
    finally:
        support.drop_database(pg_server, dsn)
    schema = only(found, "schema")
    assert statuses(schema) == [Status.FAIL]
    assert f"at version 0, this clerk-sync needs {migrations.latest_version()}" in schema[0].message
    assert "clerk-sync migrate" in schema[0].message
    assert not doctor.passed(found)


def test_a_migrated_database_passes(database_url: str) -> None:
    found = check_database(database_url)
    assert doctor.passed(found), found
    assert only(found, "schema")[0].message == f"at version {migrations.latest_version()} (current)"


class _Forwarder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    target: tuple[int, object]


class _Forward(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        family, address = self.server.target  # type: ignore[attr-defined]
        with socket.socket(family) as upstream:
            upstream.connect(address)

            def pump(src: socket.socket, dst: socket.socket) -> None:
                with contextlib.suppress(OSError):
                    while data := src.recv(65536):
                        dst.sendall(data)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

            back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
            back.start()
            pump(self.request, upstream)
            back.join(10)


def test_port_6543_says_prepared_statements_are_off(database_url: str) -> None:
    """A plain TCP relay on 6543 to the test server stands in for Supavisor's address."""
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    port = parts.port or 5432
    if socket_dir:
        target: tuple[int, object] = (socket.AF_UNIX, f"{socket_dir}/.s.PGSQL.{port}")
    else:
        target = (socket.AF_INET, (parts.hostname, port))
    try:
        relay = _Forwarder(("127.0.0.1", 6543), _Forward)
    except OSError:
        pytest.skip("port 6543 is in use on this machine")
    relay.target = target  # type: ignore[attr-defined]
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    try:
        dsn = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:6543{parts.path}"
        found = check_database(dsn)
    finally:
        relay.shutdown()
        relay.server_close()
    assert doctor.passed(found), found
    assert any("transaction pooler: prepared statements are off" in f.message for f in found)


@pytest.fixture
def supabase_db(pg_server: str) -> Iterator[str]:
    """A database with Supabase's roles and auth.jwt(), migrated: locked down as on Supabase."""
    dsn = create_supabase_database(pg_server)
    try:
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


def messages(found: list[Finding], topic: str) -> list[str]:
    return [f.message for f in only(found, topic) if f.status is Status.FAIL]


def test_a_migrated_supabase_database_is_locked_down(supabase_db: str) -> None:
    found = check_database(supabase_db)
    assert doctor.passed(found), found
    assert [f.message.split(";")[0] for f in only(found, "RLS")] == [
        f"enabled on {table.name}" for table in doctor.SYNCED_TABLES
    ]
    assert statuses(only(found, "RLS") + only(found, "helpers") + only(found, "grants")) == [
        Status.OK
    ] * (len(doctor.SYNCED_TABLES) + 3)


def test_functions_and_schema_clerk_sync_out_of_the_clients_reach(supabase_db: str) -> None:
    support.execute(
        supabase_db,
        """
        grant execute on function public.clerk_sync_apply(text, jsonb, text) to anon;
        grant usage on schema clerk_sync to authenticated;
        """,
    )
    functions, schema = messages(check_database(supabase_db), "grants")
    assert "EXECUTE granted on public.clerk_sync_apply to anon" in functions
    assert "authenticated may use schema clerk_sync" in schema


READABLE_TABLES = [table for table in doctor.SYNCED_TABLES if table.readable]


@pytest.mark.parametrize("table", READABLE_TABLES, ids=lambda table: table.name)
def test_each_synced_table_rls_policies_and_grants(
    supabase_db: str, table: doctor.SyncedTable
) -> None:
    """Each way a synced table can come unlocked, one finding each naming what to run; and
    `clerk-sync schema`, run again as a finding says, restores the lock-down."""
    [policy] = table.policies
    support.execute(
        supabase_db,
        f"""
        alter table {table.name} disable row level security;
        create policy anyone_writes on {table.name} for insert to anon with check (true);
        drop policy "{policy}" on {table.name};
        grant insert, truncate on table {table.name} to authenticated;
        """,
    )
    found = check_database(supabase_db)
    problems = messages(found, "RLS")
    assert len(problems) == 4, problems
    off, writes, missing, granted = problems
    assert f"row-level security is off on {table.name}" in off
    assert f"run: alter table {table.name} enable row level security" in off
    assert f"policies let anon or authenticated write {table.name}: anyone_writes" in writes
    assert f"policy {policy!r} missing on {table.name}" in missing
    assert "clerk-sync schema" in missing
    assert f"authenticated insert, authenticated truncate granted on {table.name}" in granted
    assert f"revoke all on table {table.name} from public, anon, authenticated" in granted
    others = [f for f in only(found, "RLS") if table.name not in f.message]
    assert statuses(others) == [Status.OK] * (len(doctor.SYNCED_TABLES) - 1)

    support.execute(supabase_db, f"revoke select on table {table.name} from authenticated")
    [lacking] = [m for m in messages(check_database(supabase_db), "RLS") if "may not" in m]
    assert f"run: grant select on table {table.name} to authenticated" in lacking

    support.execute(supabase_db, f"drop policy anyone_writes on {table.name}")
    support.execute(supabase_db, migrations.render_schema())
    assert doctor.passed(check_database(supabase_db))


def test_a_table_clients_may_not_read_is_one_entry(supabase_db: str) -> None:
    """A synced table no client role reads at all (as organization invitations): RLS on, no
    grant to anon or authenticated, the service role writes."""
    hidden = doctor.SyncedTable("public.hidden_rows", readable=False)
    support.execute(
        supabase_db,
        """
        create table public.hidden_rows (id text primary key);
        alter table public.hidden_rows enable row level security;
        revoke all on table public.hidden_rows from public, anon, authenticated;
        grant select, insert, update, delete on table public.hidden_rows to service_role;
        """,
    )

    async def check() -> list[Finding]:
        conn = await asyncpg.connect(supabase_db)
        try:
            return await doctor.check_synced_tables(conn, (hidden,))
        finally:
            await conn.close()

    [finding] = support.run(check())
    assert finding.status is Status.OK and "no client role reads it" in finding.message
    support.execute(supabase_db, "grant select on table public.hidden_rows to authenticated")
    [finding] = support.run(check())
    assert finding.status is Status.FAIL
    assert "authenticated select granted on public.hidden_rows" in finding.message
    assert "no client role reads it" in finding.message
    assert "revoke all on table public.hidden_rows" in finding.message
    assert "grant select" not in finding.message


def test_the_helpers_are_security_definer_pinned_and_for_authenticated_only(
    supabase_db: str,
) -> None:
    support.execute(
        supabase_db,
        """
        alter function public.clerk_sync_is_member(text) security invoker;
        alter function public.clerk_sync_org_role(text) reset search_path;
        revoke execute on function public.clerk_sync_active_org_id() from authenticated;
        grant execute on function public.clerk_sync_org_role(text) to anon;
        """,
    )
    found = check_database(supabase_db)
    invoker, unpinned, anon, lacking = messages(found, "helpers")
    assert "public.clerk_sync_is_member(text) is not SECURITY DEFINER" in invoker
    assert "run: alter function public.clerk_sync_is_member(text) security definer" in invoker
    assert "public.clerk_sync_org_role(text) has no pinned search_path" in unpinned
    assert "alter function public.clerk_sync_org_role(text) set search_path = ''" in unpinned
    assert "anon may execute public.clerk_sync_org_role(text)" in anon
    assert "authenticated may not execute public.clerk_sync_active_org_id()" in lacking
    assert "grant execute on function public.clerk_sync_active_org_id() to authenticated" in (
        lacking
    )
    # The helpers are judged here, not again as clerk-sync functions exposed to anon.
    assert statuses(only(found, "grants")) == [Status.OK, Status.OK]

    support.execute(supabase_db, "drop function public.clerk_sync_org_role(text)")
    missing = [m for m in messages(check_database(supabase_db), "helpers") if "exist" in m]
    assert missing == [
        "public.clerk_sync_org_role does not exist; run `clerk-sync schema` in the SQL editor "
        "(idempotent) to restore the lock-down"
    ]


# --- the deployed endpoint ----------------------------------------------------------------------


@contextlib.contextmanager
def answering(status: int, body: bytes = b"", **headers: str) -> Iterator[str]:
    """A tiny HTTP server on 127.0.0.1 that answers every request the same way; yields its base."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def check_endpoint(url: str) -> list[Finding]:
    return support.run(doctor.check_endpoint(url, timeout=5))


def test_a_redirect_is_reported_with_its_location() -> None:
    location = "https://www.example.com/api/webhooks/clerk"
    with answering(308, Location=location) as base:
        [finding, _] = check_endpoint(base + "/api/webhooks/clerk")
    assert finding.status is Status.FAIL
    assert "redirects (308)" in finding.message and location in finding.message
    assert "Svix does not follow redirects" in finding.message


def test_a_404_is_a_wrong_path() -> None:
    with answering(404, b"Not Found") as base:
        [finding] = check_endpoint(base + "/api/webhook")
    assert finding.status is Status.FAIL
    assert "404" in finding.message and "/api/webhooks/clerk" in finding.message


def test_a_405_is_a_route_without_post() -> None:
    with answering(405, b"Method Not Allowed") as base:
        finding = check_endpoint(base + "/api/webhooks/clerk")[0]
    assert finding.status is Status.FAIL and "does not accept POST" in finding.message


def test_a_401_from_auth_middleware() -> None:
    body = b"<html><body>Sign in to continue</body></html>"
    with answering(401, body, content_type="text/html") as base:
        finding = check_endpoint(base + "/api/webhooks/clerk")[0]
    assert finding.status is Status.FAIL
    assert "auth middleware" in finding.message and "not from clerk-sync" in finding.message


def test_a_2xx_to_an_unsigned_request() -> None:
    with answering(200, b"ok") as base:
        finding = check_endpoint(base + "/api/webhooks/clerk")[0]
    assert finding.status is Status.FAIL and "does not verify signatures" in finding.message


def test_an_unreachable_endpoint() -> None:
    [finding] = check_endpoint(f"http://127.0.0.1:{support.free_port()}/api/webhooks/clerk")
    assert finding.status is Status.FAIL and "unreachable" in finding.message


# --- the command, end to end --------------------------------------------------------------------


def test_the_command_finds_nothing_wrong_with_a_running_clerk_sync(
    tmp_path: Path, db: str, secret: tuple[str, bytes]
) -> None:
    env = {"DATABASE_URL": db, "CLERK_WEBHOOK_SECRET": secret[0]}
    with support.running_server(env) as server:
        result = clerk_sync_doctor(tmp_path, "--url", server.webhook_url, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    endpoint = next(line for line in lines if " endpoint: " in line)
    assert endpoint.startswith("ok ") and "answered 400" in endpoint
    assert "clerk-sync is there and refuses unsigned requests" in endpoint
    assert any(line.startswith("ok   healthz: ") for line in lines)
    assert "✓" not in result.stdout  # not a TTY: plain words
    assert secret[0][8:16] not in result.stdout + result.stderr


def test_the_command_fails_on_each_problem_with_one_line_each(tmp_path: Path) -> None:
    anon = jwt({"role": "anon", "ref": "abcdefghijklmnop", "exp": 4102444800})
    (tmp_path / ".env").write_text(f"SUPABASE_SERVICE_ROLE_KEY={anon}\n")
    port = support.free_port()
    with answering(308, Location="https://www.example.com/api/webhooks/clerk") as base:
        result = clerk_sync_doctor(
            tmp_path,
            "--url",
            base + "/api/webhooks/clerk",
            "--timeout",
            "2",
            CLERK_WEBHOOK_SECRET="whsec_short",
            DATABASE_URL=f"postgresql://postgres:hunter2hunter2@127.0.0.1:{port}/app",
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert [line.split(":")[0] for line in failed] == [
        "FAIL signing secret",
        "FAIL Supabase key",
        "FAIL database",
        "FAIL endpoint",
    ], result.stdout
    assert "SUPABASE_SERVICE_ROLE_KEY (.env)" in failed[1]
    assert lines[-1] == "4 problems found"
    assert "hunter2" not in result.stdout
    assert anon[8:16] not in result.stdout


def test_the_command_reports_a_missing_secret_and_the_unmigrated_embedded_database(
    tmp_path: Path,
) -> None:
    result = clerk_sync_doctor(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "FAIL signing secret: not set; set CLERK_WEBHOOK_SECRET to the endpoint's Signing Secret "
        "(whsec_…) from Clerk Dashboard → Webhooks → your endpoint",
        f"FAIL database: no DATABASE_URL, and no embedded database in {tmp_path / 'data'} yet: "
        "set DATABASE_URL, or run `clerk-sync migrate` to create the embedded one",
        "2 problems found",
    ]


def test_a_password_with_an_unencoded_hash_is_explained_never_shown(tmp_path: Path) -> None:
    """The DSN as `serve` reads it: a '#' in the password ends the URL there, so the port is
    junk; doctor says so in one line, and never prints the password."""
    secret = secret_of(32)
    for where in ("environment", "flag"):
        dsn = "postgresql://u:Sup3r#Secr3t@127.0.0.1:5432/db"
        args = ["--database-url", dsn] if where == "flag" else []
        env = {"DATABASE_URL": dsn} if where == "environment" else {}
        result = clerk_sync_doctor(tmp_path, *args, CLERK_WEBHOOK_SECRET=secret, **env)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "Traceback" not in output, output
        assert "Sup3r" not in output and "Secr3t" not in output, output
        [database] = [line for line in result.stdout.splitlines() if " database: " in line]
        naming = "--database-url (flag)" if where == "flag" else "DATABASE_URL (environment)"
        assert database.startswith(f"FAIL database: {naming}: "), database
        assert "percent-encode" in database and "%23" in database, database
        assert result.stderr == ""


def test_marks_on_a_terminal() -> None:
    text = doctor.render(
        [Finding(Status.OK, "a", "fine"), Finding(Status.FAIL, "b", "broken")], tty=True
    )
    assert text == "✓ a: fine\n✗ b: broken\n1 problem found\n"


def test_invitations_are_read_only_through_the_apps_own_policy(supabase_db: str) -> None:
    """Invitations: no client role reads them after migrate; the docs' admin policy (a grant to
    authenticated and a policy) is the app's choice, not a finding; anon's select or a client's
    write is, with what to run that keeps the app's grant."""
    name = "public.organization_invitations"

    def finding() -> Finding:
        [found] = [f for f in only(check_database(supabase_db), "RLS") if name in f.message]
        return found

    assert finding().status is Status.OK and "no client role reads it" in finding().message
    support.execute(
        supabase_db,
        f"""
        grant select on table {name} to authenticated;
        create policy "admins read invitations" on {name} for select to authenticated
            using (public.clerk_sync_org_role(organization_id) = 'org:admin');
        """,
    )
    assert finding().status is Status.OK
    assert "only through your own policies ('admins read invitations')" in finding().message
    support.execute(
        supabase_db, f"grant select on {name} to anon; grant update on {name} to authenticated"
    )
    problem = finding()
    assert problem.status is Status.FAIL
    assert f"anon select, authenticated update granted on {name}" in problem.message
    assert f"revoke all on table {name} from public, anon; revoke insert, update" in problem.message
    support.execute(supabase_db, migrations.render_schema())
    assert finding().status is Status.OK
    assert "only through your own policies" in finding().message


# --- custom columns -----------------------------------------------------------------------------

MIGRATED_WITH = """
[users.columns]
role = "public_metadata.role"
plan = { path = "public_metadata.plan", default = "free" }
last_active = { path = "last_active_at", type = "timestamptz" }
gone = "public_metadata.gone"

[organizations.columns]
tier = "public_metadata.tier"
"""

DECLARED_NOW = """
[users.columns]
role = "public_metadata.role"
plan = { path = "public_metadata.plan_name", default = "free" }
last_active = { path = "last_active_at", type = "timestamptz" }
credits = { path = "public_metadata.credits", type = "integer" }
nickname = "unsafe_metadata.nickname"

[organizations.columns]
tier = { path = "public_metadata.tier", type = "integer" }
"""


def columns_of(text: str) -> CustomColumns:
    return parse_custom_columns(text, Path("clerk-sync.toml"))


def column_findings(dsn: str, text: str) -> list[Finding]:
    found = support.run(
        doctor.check_database(dsn, described="DATABASE_URL", timeout=5, columns=columns_of(text))
    )
    return only(found, "custom columns")


def test_declared_columns_against_the_databases(pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        support.migrate_database(dsn, columns_of(MIGRATED_WITH))
        support.execute(dsn, "alter table public.users add column nickname text")
        found = column_findings(dsn, DECLARED_NOW)
        by_status = {status: [f.message for f in found if f.status is status] for status in Status}
        assert by_status[Status.OK] == [
            "public.users: role text, last_active timestamptz, as clerk-sync.toml declares"
        ]
        assert by_status[Status.FAIL] == [
            "public.users.plan is written from public_metadata.plan (default 'free') as the "
            "database was last migrated, and clerk-sync.toml says public_metadata.plan_name "
            "(default 'free'): run `clerk-sync migrate`, which fills it again",
            "public.users.credits (integer) is in clerk-sync.toml but not in the database, so "
            "deliveries do not write it: run `clerk-sync migrate` (REST mode: apply the current "
            "`clerk-sync schema` with `supabase db push`)",
            "public.users.nickname is there, but the database was not migrated with it in "
            "clerk-sync.toml, so deliveries do not write it: run `clerk-sync migrate`, which "
            "takes it over and fills it",
            "public.organizations.tier is text, and clerk-sync.toml says integer: run "
            "`clerk-sync migrate --retype organizations.tier`, which drops it (losing what it "
            "holds) and adds and fills it again",
        ]
        unfilled, gone = by_status[Status.WARN]
        assert unfilled.startswith(
            "public.users.last_active is on last_active_at, which clerk-sync does not keep: "
            "rows synced before it was added ("
        )
        assert unfilled.endswith(
            "UTC) hold its default until `clerk-sync backfill` fills them from Clerk"
        )
        assert gone == (
            "public.users.gone (public_metadata.gone) is no longer in clerk-sync.toml, but the "
            "database was last migrated with it, so deliveries still write it: run `clerk-sync "
            "migrate`, which stops that and leaves the column as it is (drop it when nothing "
            "reads it: alter table public.users drop column gone)"
        )

        # A backfill of users completed since: the rows are filled. Migrated with the file
        # (the other type asked for), nothing is left but the ok lines.
        support.execute(
            dsn,
            "insert into clerk_sync.backfill_runs (resources, resource, finished_at, outcome) "
            "values ('{users}', 'users', now() + interval '1 second', 'completed')",
        )
        support.execute(dsn, "alter table public.users drop column nickname")
        declared = columns_of(DECLARED_NOW)
        support.run(_migrate_retyping(dsn, declared))
        found = column_findings(dsn, DECLARED_NOW)
        assert [(f.status, f.message) for f in found] == [
            (
                Status.OK,
                "public.users: role text, plan text, last_active timestamptz, credits integer, "
                "nickname text, as clerk-sync.toml declares",
            ),
            (Status.OK, "public.organizations: tier integer, as clerk-sync.toml declares"),
        ]
    finally:
        support.drop_database(pg_server, dsn)


async def _migrate_retyping(dsn: str, columns: CustomColumns) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn, columns, frozenset({"organizations.tier"}))
    finally:
        await conn.close()


def test_no_columns_declared_or_registered_says_nothing_of_them(database_url: str) -> None:
    assert column_findings(database_url, "") == []


def test_rest_mode_sees_whether_the_columns_are_there_not_their_types(
    pg_server: str, tmp_path: Path
) -> None:
    from tests.postgrest_standin import SERVICE_ROLE_KEY, running_postgrest

    (tmp_path / "columns.toml").write_text(
        '[users.columns]\nplan = "public_metadata.plan"\ncredits = "public_metadata.credits"\n'
        '[organizations.columns]\ntier = "public_metadata.tier"\n'
    )
    dsn = create_supabase_database(pg_server)
    try:
        support.execute(dsn, "alter table public.users add column plan integer")
        support.execute(dsn, "alter table public.organizations add column tier text")
        with running_postgrest(dsn) as postgrest:
            environ = {
                "SUPABASE_URL": postgrest.url,
                "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
                "CLERK_SYNC_CONFIG": str(tmp_path / "columns.toml"),
            }
            found = only(doctor.run(environ, dotenv_path=tmp_path / ".env"), "custom columns")
    finally:
        support.drop_database(pg_server, dsn)
    source = tmp_path / "columns.toml"
    assert [(f.status, f.message) for f in found] == [
        (
            Status.OK,
            "public.users: plan found through Supabase's REST API, which does not show their "
            "types (`clerk-sync doctor --database-url postgresql://…` checks those)",
        ),
        (
            Status.OK,
            "public.organizations: tier found through Supabase's REST API, which does not show "
            "their types (`clerk-sync doctor --database-url postgresql://…` checks those)",
        ),
        (
            Status.FAIL,
            f"public.users.credits is in {source} but Supabase's REST API does not find it, so "
            "deliveries do not write it: apply the current `clerk-sync schema` with "
            "`supabase db push`",
        ),
    ]


def test_a_malformed_columns_file_is_a_finding(tmp_path: Path) -> None:
    (tmp_path / "clerk-sync.toml").write_text("[users.columns]\ncredits = { type = 'int' }\n")
    found = only(
        doctor.run(
            {"CLERK_SYNC_CONFIG": str(tmp_path / "clerk-sync.toml")},
            dotenv_path=tmp_path / ".env",
            data_dir=tmp_path,
        ),
        "custom columns",
    )
    assert [f.status for f in found] == [Status.FAIL]
    assert found[0].message.startswith(f"{tmp_path / 'clerk-sync.toml'}: [users.columns] credits: ")
