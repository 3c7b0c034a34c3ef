"""REST mode: RestStore, and the app configured with SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY,
against a PostgREST stand-in that runs each call on the real test PostgreSQL as service_role.

REST mode must keep the same guarantees as direct mode, so the core suites run here again
through REST: the guarantee tests (their store swapped for RestStore), and the hostile-input,
outcome and example tests (with `db` and `client` rebound below to a Supabase-like database
served through the stand-in). Then what only REST mode has: its wire format, its keys, and how
it answers when Supabase refuses the key, lacks the schema, is slow or is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from clerk_sync.app import WEBHOOK_PATH, create_app_from_settings
from clerk_sync.events import ClerkEvent, Outcome, parse_event
from clerk_sync.readiness import PROBE_EVERY_SECONDS
from clerk_sync.settings import Settings
from clerk_sync.storage import EventRejected, StoreUnavailable
from clerk_sync.storage.rest import RestStore
from tests import support
from tests import test_cli as cli
from tests import test_examples as core_examples
from tests import test_guarantees as core_guarantees
from tests import test_webhook as core_webhook
from tests import test_write_path as core_write_path
from tests.postgrest_standin import (
    ANON_KEY,
    PUBLISHABLE_KEY,
    SECRET_KEY,
    SERVICE_ROLE_KEY,
    PostgrestStandin,
    create_supabase_database,
    create_supabase_roles,
    legacy_key,
    running_postgrest,
)


@pytest.fixture(scope="module")
def supabase_db(pg_server: str) -> Iterator[str]:
    """A database of this module's own, with Supabase's roles and auth.jwt(), migrated."""
    dsn = create_supabase_database(pg_server)
    try:
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


@pytest.fixture(scope="module")
def postgrest(supabase_db: str) -> Iterator[PostgrestStandin]:
    with running_postgrest(supabase_db) as standin:
        yield standin


@pytest.fixture
def db(supabase_db: str, postgrest: PostgrestStandin) -> str:
    """Rebinds the core suites' `db`: the Supabase-like database, emptied for this test."""
    support.execute(supabase_db, support.CLEAN_SQL)
    postgrest.delay, postgrest.dribble, postgrest.down = 0.0, 0.0, False
    postgrest.requests.clear()
    postgrest.connections.clear()
    return supabase_db


def rest_settings(url: str, key: str, secret: str, tmp_path: Path, **more: Any) -> Settings:
    settings = Settings(
        webhook_secret=secret,
        database_url=None,
        supabase_url=url,
        supabase_service_role_key=key,
        data_dir=tmp_path,
        **more,
    )
    assert settings.rest_mode
    return settings


@pytest.fixture
def client(
    db: str, postgrest: PostgrestStandin, secret: tuple[str, bytes], tmp_path: Path
) -> Iterator[TestClient]:
    """Rebinds the core suites' `client`: the app in REST mode, with the legacy JWT key."""
    settings = rest_settings(postgrest.url, SERVICE_ROLE_KEY, secret[0], tmp_path)
    with TestClient(create_app_from_settings(settings)) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def guarantees_through_rest(monkeypatch: pytest.MonkeyPatch, postgrest: PostgrestStandin) -> None:
    """The guarantee tests open `PostgresStore.open(dsn, …)`: give them a RestStore instead."""

    async def open_rest(dsn: str, *, delete_mode: str = "soft", pool_size: int = 10) -> RestStore:
        assert dsn == postgrest.dsn
        return RestStore(
            postgrest.url, SECRET_KEY, delete_mode=delete_mode, max_connections=pool_size
        )

    monkeypatch.setattr(core_guarantees, "PostgresStore", SimpleNamespace(open=open_rest))


# --- the core suites, through REST ------------------------------------------------------------

# Every test of these modules runs here too, with the fixtures above, except those that build a
# direct-mode app of their own or check nothing of the database.
NOT_ABOUT_STORAGE = {
    "test_tolerance_over_http",  # its own app (frozen clock) on PostgresStore
    "test_any_of_several_configured_secrets_is_accepted",  # its own direct-mode app
    "test_the_example_set_is_every_clerk_event_type",  # files only
    "test_concurrent_deliveries_end_in_the_model_rows",  # below, with fewer seeds
}
for _module in (core_guarantees, core_webhook, core_examples, core_write_path):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test) and _name not in NOT_ABOUT_STORAGE:
            globals()[_name] = _test


@pytest.mark.parametrize("seed", range(4))
def test_concurrent_deliveries_end_in_the_model_rows(db: str, seed: int) -> None:
    core_guarantees.test_concurrent_deliveries_end_in_the_model_rows(db, seed)


# --- the wire format ------------------------------------------------------------------------------


def run_store(url: str, key: str, *calls: tuple[str, Any], **options: Any) -> list[Any]:
    """Make each (method, args) call on one RestStore; the results, or the exceptions raised."""

    async def go() -> list[Any]:
        store = RestStore(url, key, **options)
        results: list[Any] = []
        try:
            for method, args in calls:
                try:
                    results.append(await getattr(store, method)(*args))
                except (StoreUnavailable, EventRejected) as exc:
                    results.append(exc)
        finally:
            await store.close()
        return results

    return list(asyncio.run(go()))


def apply_call(svix_id: str, event: dict[str, Any]) -> tuple[str, Any]:
    return "apply", (svix_id, parse_event(support.dumps(event)))


def test_an_event_is_one_rpc_call_with_the_verified_body_inside(
    db: str, postgrest: PostgrestStandin
) -> None:
    event = support.user_event("user.created", "user_wire", 1_700_000_000_000, email="w@x.io")
    body = support.dumps(event)
    [outcome] = run_store(postgrest.url, SECRET_KEY, apply_call("msg_wire", event))
    assert outcome is Outcome.APPLIED

    [(path, headers, sent)] = postgrest.requests
    assert path == "/rest/v1/rpc/clerk_sync_apply"
    assert headers["apikey"] == SECRET_KEY
    assert headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert headers["content-type"] == "application/json"
    assert json.loads(sent) == {"p_svix_id": "msg_wire", "p_event": event, "p_delete_mode": "soft"}
    assert body in sent  # the verified bytes themselves, not a re-serialisation
    assert support.fetch(db, "select id, email from public.users") == [
        {"id": "user_wire", "email": "w@x.io"}
    ]


@pytest.mark.parametrize("key", [SECRET_KEY, SERVICE_ROLE_KEY], ids=["sb_secret", "legacy_jwt"])
def test_both_kinds_of_service_key_write(db: str, postgrest: PostgrestStandin, key: str) -> None:
    event = support.user_event("user.created", "user_key", 1_700_000_000_000)
    assert run_store(postgrest.url, key, apply_call("msg_key", event)) == [Outcome.APPLIED]


def test_a_dead_letter_keeps_the_raw_bytes_over_rest(db: str, postgrest: PostgrestStandin) -> None:
    raw = b'\x00\xff{"not": "utf-8 \xc3\x28"}'
    assert run_store(postgrest.url, SECRET_KEY, ("record_invalid", ("msg_raw", raw, "bad"))) == [
        None
    ]
    rows = support.fetch(db, "select svix_id, outcome, error, raw_body from clerk_sync.inbox")
    assert rows == [{"svix_id": "msg_raw", "outcome": "invalid", "error": "bad", "raw_body": raw}]


def test_data_the_database_refuses_is_rejected_not_retried(
    db: str, postgrest: PostgrestStandin
) -> None:
    # The parser turns away times PostgreSQL cannot hold; past it, the database itself refuses
    # them (SQLSTATE 22008, answered 400 by PostgREST): an EventRejected, not a retry.
    body = '{"type": "user.created", "data": {"id": "user_range", "updated_at": -7e15}}'
    event = ClerkEvent(type="user.created", user_id="user_range", body=body)
    [result] = run_store(postgrest.url, SECRET_KEY, ("apply", ("msg_range", event)))
    assert isinstance(result, EventRejected)
    assert "(22" in str(result)
    assert support.fetch(db, "select * from clerk_sync.inbox") == []


def test_one_http_connection_is_kept_alive(db: str, postgrest: PostgrestStandin) -> None:
    calls = [
        apply_call(
            f"msg_ka{i}", support.user_event("user.updated", "user_ka", 1_700_000_000_000 + i)
        )
        for i in range(20)
    ]
    assert set(run_store(postgrest.url, SECRET_KEY, *calls)) == {Outcome.APPLIED}
    assert len(postgrest.connections) == 1


def test_the_rest_module_loads_no_database_driver() -> None:
    code = (
        "import sys, clerk_sync.storage.rest, clerk_sync.app; "
        "print(sorted(m for m in ('asyncpg', 'psycopg') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# --- when Supabase says no -------------------------------------------------------------------------


def deliver(client: TestClient, key: bytes, event: dict[str, Any], svix_id: str) -> Any:
    body = support.dumps(event)
    return client.post(
        WEBHOOK_PATH, content=body, headers=support.signed_headers(key, body, svix_id)
    )


def configuration_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "configuration error" in r.getMessage()
    ]


@pytest.mark.parametrize(
    "key",
    [
        legacy_key("service_role", secret="another-projects-jwt-secret-0123456789"),
        "sb_secret_other",
    ],
    ids=["jwt_of_another_project", "secret_key_of_another_project"],
)
def test_a_wrong_key_answers_503_and_says_so_once(
    db: str,
    postgrest: PostgrestStandin,
    secret: tuple[str, bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    key: str,
) -> None:
    event = support.user_event("user.created", "user_wrong_key", 1_700_000_000_000)
    settings = rest_settings(postgrest.url, key, secret[0], tmp_path)
    with caplog.at_level(logging.INFO), TestClient(create_app_from_settings(settings)) as client:
        for _ in range(3):
            response = deliver(client, secret[1], event, "msg_wrong_key")
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"error": "not ready"}
    assert "SUPABASE_SERVICE_ROLE_KEY" in support.not_ready_logged(caplog)
    [logged] = configuration_errors(caplog)  # once, however many deliveries fail
    assert "HTTP 401" in logged
    assert "service_role" in logged and "anon or publishable" in logged
    assert key[8:16] not in caplog.text
    assert support.fetch(db, "select * from clerk_sync.inbox") == []


@pytest.mark.parametrize("key", [ANON_KEY, PUBLISHABLE_KEY], ids=["anon_jwt", "publishable"])
def test_the_anon_key_is_refused_by_the_database_itself(
    db: str, postgrest: PostgrestStandin, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Settings refuse these keys; were one used anyway, the grants stop it: PostgreSQL's own
    # "permission denied for function", which PostgREST answers 401 for anon.
    event = support.user_event("user.created", "user_anon", 1_700_000_000_000)
    with caplog.at_level(logging.ERROR):
        [result] = run_store(postgrest.url, key, apply_call("msg_anon", event))
    assert isinstance(result, StoreUnavailable)
    assert "HTTP 401" in str(result) and "permission denied for function" in str(result)
    assert len(configuration_errors(caplog)) == 1
    assert support.fetch(db, "select * from public.users") == []
    assert support.fetch(db, "select * from clerk_sync.inbox") == []


@pytest.fixture
def unmigrated(pg_server: str) -> Iterator[PostgrestStandin]:
    """The REST API of a Supabase project where the clerk-sync schema was never applied."""
    create_supabase_roles(pg_server)
    dsn = support.create_database(pg_server, migrate=False)
    try:
        with running_postgrest(dsn) as standin:
            yield standin
    finally:
        support.drop_database(pg_server, dsn)


def test_no_schema_answers_503_and_says_how_to_create_it(
    unmigrated: PostgrestStandin,
    secret: tuple[str, bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = rest_settings(unmigrated.url, SECRET_KEY, secret[0], tmp_path)
    event = support.user_event("user.created", "user_noschema", 1_700_000_000_000)
    with caplog.at_level(logging.INFO), TestClient(create_app_from_settings(settings)) as client:
        response = deliver(client, secret[1], event, "msg_noschema")
        assert response.status_code == 503, response.text
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"error": "not ready"}
    for said in (support.not_ready_logged(caplog), *configuration_errors(caplog)):
        assert "clerk-sync schema" in said and "supabase db push" in said, said
    assert "clerk_sync_apply is not in this Supabase database" in caplog.text


def test_readyz_in_rest_mode_checks_the_schema_version(
    client: TestClient, db: str, postgrest: PostgrestStandin, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
    [(path, _, _)] = postgrest.requests
    assert path == "/rest/v1/rpc/clerk_sync_schema_version"
    latest = support.fetch(db, "select max(version) as v from clerk_sync.schema_migrations")[0]["v"]
    support.execute(db, f"delete from clerk_sync.schema_migrations where version = {latest}")
    # The one before (version numbers may skip one that another branch took).
    before = support.fetch(db, "select max(version) as v from clerk_sync.schema_migrations")[0]["v"]
    try:
        time.sleep(PROBE_EVERY_SECONDS)  # the last probe's answer is kept that long
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"error": "not ready"}
        assert f"schema at version {before}, expected {latest}" in support.not_ready_logged(caplog)
    finally:
        support.execute(
            db,
            f"insert into clerk_sync.schema_migrations (version, name) values ({latest}, 'x')",
        )


def test_a_slow_supabase_answers_503_in_time(
    db: str, postgrest: PostgrestStandin, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    settings = rest_settings(postgrest.url, SECRET_KEY, secret[0], tmp_path, db_timeout=0.5)
    event = support.user_event("user.created", "user_slow", 1_700_000_000_000)
    with TestClient(create_app_from_settings(settings)) as client:
        postgrest.delay = 2.5
        started = time.monotonic()
        response = deliver(client, secret[1], event, "msg_slow")
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert elapsed < 2.2, elapsed  # within the deadline (2 x 0.5 s + 1 s), not Supabase's time
        # PostgREST finishes a call whose client went away: the write may still land, and
        # Svix's retry then finds it done. Either way it is applied once.
        time.sleep(postgrest.delay)
        postgrest.delay = 0
        retry = deliver(client, secret[1], event, "msg_slow")
        assert retry.status_code == 200
        assert retry.json()["outcome"] in ("applied", "duplicate")
    assert [r["id"] for r in support.fetch(db, "select id from public.users")] == ["user_slow"]


def test_a_delivery_has_one_budget_not_one_per_phase(
    db: str, postgrest: PostgrestStandin, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    """CLERK_SYNC_DB_TIMEOUT bounds the whole delivery: a Supabase slower than it is answered
    503 within it (httpx's per-phase timeouts used to add up to twice it and more)."""
    settings = rest_settings(postgrest.url, SECRET_KEY, secret[0], tmp_path, db_timeout=1.0)
    event = support.user_event("user.created", "user_budget", 1_700_000_000_000)
    with TestClient(create_app_from_settings(settings)) as client:
        postgrest.dribble = 0.5  # a byte of the answer every 0.5 s: no read ever times out
        started = time.monotonic()
        response = deliver(client, secret[1], event, "msg_budget")
        elapsed = time.monotonic() - started
        postgrest.dribble = 0.0
    assert response.status_code == 503, response.text
    assert elapsed < 1.0 + 0.4, elapsed


def test_a_dead_letter_is_recorded_within_the_same_budget(
    db: str, postgrest: PostgrestStandin, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    """A refused apply and the dead letter recorded after it share one budget: when the two
    calls together would outlast it, the answer is 503 in time (the retry can keep it)."""
    settings = rest_settings(postgrest.url, SECRET_KEY, secret[0], tmp_path, db_timeout=2.0)
    poison = support.user_event("user.created", "user_p", 1_700_000_000_000, first_name="X" * 12)
    support.execute(
        db, "alter table public.users add constraint app_short check (length(first_name) < 10)"
    )
    try:
        with TestClient(create_app_from_settings(settings)) as client:
            postgrest.delay = 1.2  # each call: together 2.4 s, over the 2 s budget
            started = time.monotonic()
            response = deliver(client, secret[1], poison, "msg_p")
            elapsed = time.monotonic() - started
            time.sleep(postgrest.delay)
            assert response.status_code == 503, response.text
            assert elapsed < 2.0 + 0.4, elapsed
            postgrest.delay = 0
            # The abandoned call may still have committed the dead letter (over HTTP a call
            # given up on is not cancelled in the server): either way it is kept, once.
            retry = deliver(client, secret[1], poison, "msg_p")
            assert retry.status_code in (200, 400), retry.text
        rows = support.fetch(db, "select svix_id, outcome from clerk_sync.inbox")
        assert rows == [{"svix_id": "msg_p", "outcome": "invalid"}]
    finally:
        support.execute(db, "alter table public.users drop constraint if exists app_short")


def test_supabase_down_or_unreachable_answers_503_then_the_retry_applies(
    db: str,
    postgrest: PostgrestStandin,
    secret: tuple[str, bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = support.user_event("user.created", "user_down", 1_700_000_000_000)
    nowhere = f"http://127.0.0.1:{support.free_port()}"
    with TestClient(
        create_app_from_settings(rest_settings(nowhere, SECRET_KEY, secret[0], tmp_path))
    ) as client:
        assert deliver(client, secret[1], event, "msg_down").status_code == 503
        assert client.get("/readyz").json() == {"error": "not ready"}
        assert "cannot reach Supabase" in support.not_ready_logged(caplog)
    settings = rest_settings(postgrest.url, SECRET_KEY, secret[0], tmp_path)
    with TestClient(create_app_from_settings(settings)) as client:
        postgrest.down = True
        response = deliver(client, secret[1], event, "msg_down")
        assert response.status_code == 503, response.text
        assert support.fetch(db, "select * from clerk_sync.inbox") == []
        postgrest.down = False
        assert deliver(client, secret[1], event, "msg_down").json() == {"outcome": "applied"}


# --- `clerk-sync` in REST mode ------------------------------------------------------------------


def test_serve_in_rest_mode_writes_through_supabase(
    db: str, postgrest: PostgrestStandin, tmp_path: Path
) -> None:
    secret, key = support.make_secret()
    port = support.free_port()
    env = {
        "CLERK_WEBHOOK_SECRET": secret,
        "SUPABASE_URL": postgrest.url,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
        "PORT": str(port),
    }
    with cli.serving(tmp_path, env, ["--log-level", "warning"], tmp_path / "serve.log") as server:
        server.wait_ready(port)
        event = support.user_event("user.created", "user_served", 1_700_000_000_000)
        response = cli.post(port, key, event)
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": "applied"}
    output = server.output()
    assert "Supabase's REST API at 127.0.0.1" in output
    assert "applied migrations" not in output  # REST mode cannot migrate, and did not try
    cli.assert_secret_not_shown(output, SERVICE_ROLE_KEY, secret)
    assert not (tmp_path / ".clerk-sync").exists()  # no embedded database either
    assert [r["id"] for r in support.fetch(db, "select id from public.users")] == ["user_served"]


def test_serve_in_rest_mode_without_the_schema_says_how_to_create_it(
    unmigrated: PostgrestStandin, tmp_path: Path
) -> None:
    secret, _ = support.make_secret()
    result = cli.clerk_sync(
        tmp_path,
        "serve",
        CLERK_WEBHOOK_SECRET=secret,
        SUPABASE_URL=unmigrated.url,
        SUPABASE_SERVICE_ROLE_KEY=SECRET_KEY,
    )
    assert result.returncode == 1, result
    line = cli.assert_one_clear_line(result, ("clerk-sync schema",))
    assert "supabase db push" in line and "clerk-sync migrate" in line and "DATABASE_URL" in line


def test_serve_in_rest_mode_with_a_wrong_key_stops_at_start(
    postgrest: PostgrestStandin, tmp_path: Path
) -> None:
    secret, _ = support.make_secret()
    wrong = legacy_key("service_role", secret="another-projects-jwt-secret-0123456789")
    result = cli.clerk_sync(
        tmp_path,
        "serve",
        CLERK_WEBHOOK_SECRET=secret,
        SUPABASE_URL=postgrest.url,
        SUPABASE_SERVICE_ROLE_KEY=wrong,
    )
    assert result.returncode == 1, result
    cli.assert_one_clear_line(result, ("SUPABASE_SERVICE_ROLE_KEY",))
    cli.assert_secret_not_shown(result.stdout + result.stderr, wrong)


@pytest.mark.parametrize(
    ("command", "env", "naming"),
    [
        ("migrate", {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY}, "DATABASE_URL"),
        ("users", {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY}, "DATABASE_URL"),
        ("serve", {"SUPABASE_URL": "https://abc.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY"),
        ("serve", {"SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY}, "SUPABASE_URL"),
        ("serve", {"SUPABASE_URL": "http://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY}, "SUPABASE_URL"),
        ("serve", {"SUPABASE_URL": "abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY}, "SUPABASE_URL"),
        ("serve", {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": ANON_KEY}, "SUPABASE_SERVICE_ROLE_KEY"),
        ("serve", {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": PUBLISHABLE_KEY}, "SUPABASE_SERVICE_ROLE_KEY"),
        ("serve", {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "eyJhbGciOi.not-a-key"}, "SUPABASE_SERVICE_ROLE_KEY"),
    ],
    ids=[
        "migrate-needs-database-url",
        "users-needs-database-url",
        "url-without-key",
        "key-without-url",
        "plain-http-url",
        "url-without-scheme",
        "anon-key",
        "publishable-key",
        "malformed-key",
    ],
)  # fmt: skip
def test_rest_mode_mistakes_stop_with_status_2(
    tmp_path: Path, command: str, env: dict[str, str], naming: str
) -> None:
    secret, _ = support.make_secret()
    result = cli.clerk_sync(tmp_path, command, CLERK_WEBHOOK_SECRET=secret, **env)
    assert result.returncode == 2, result
    line = cli.assert_one_clear_line(result, (naming,))
    cli.assert_secret_not_shown(
        result.stdout + result.stderr, env.get("SUPABASE_SERVICE_ROLE_KEY", "")
    )
    if command == "migrate":
        assert "supabase db push" in line
    assert not (tmp_path / ".clerk-sync").exists()


def test_a_service_role_without_its_grant_is_told_to_reapply_the_schema(
    db: str, postgrest: PostgrestStandin
) -> None:
    function = "public.clerk_sync_apply(text, jsonb, text)"
    support.execute(db, f"revoke execute on function {function} from service_role")
    try:
        event = support.user_event("user.created", "user_grant", 1_700_000_000_000)
        [result] = run_store(postgrest.url, SECRET_KEY, apply_call("msg_grant", event))
    finally:
        support.execute(db, f"grant execute on function {function} to service_role")
    assert isinstance(result, StoreUnavailable)
    assert "HTTP 403" in str(result) and "clerk-sync schema" in str(result)
