"""POST /api/users/sync end to end: the app on the test database, Clerk's Backend API stand-in
(tests/clerk_standin.py) serving the JWKS and the users, and session tokens signed with keys of
the tests' own."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from clerk_sync.app import WEBHOOK_PATH, create_app_from_settings
from clerk_sync.inbox import list_deliveries
from clerk_sync.replay import replay_one
from clerk_sync.session_route import SYNC_PATH
from clerk_sync.settings import Settings
from tests import clerk_standin, support
from tests.session_keys import ORIGIN, KeyPair, jwks

PAIR = KeyPair("ins_sync1")
NOW_MS = int(time.time() * 1000)


def clerk_user(user_id: str, updated_at: int = NOW_MS - 3_600_000, **fields: Any) -> dict[str, Any]:
    """A user as GET /v1/users/{id} answers it."""
    data: dict[str, Any] = support.user_event(
        "user.created", user_id, updated_at, email=f"{user_id}@example.com", **fields
    )["data"]
    return data


@pytest.fixture
def clerk() -> Iterator[clerk_standin.StandIn]:
    standin = clerk_standin.StandIn(jwks=jwks(PAIR))
    with clerk_standin.running(standin):
        yield standin


def settings_for(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn, **more: Any
) -> Settings:
    given: dict[str, Any] = {
        "webhook_secret": secret[0],
        "database_url": db,
        "data_dir": tmp_path,
        "clerk_secret_key": clerk.secret_key,
        "clerk_api_url": clerk.url,
    }
    return Settings(**{**given, **more})


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app_from_settings(settings)) as test_client:
        yield test_client


def sync(client: TestClient | None, token: str, **headers: str) -> httpx.Response:
    assert client is not None
    return client.post(SYNC_PATH, headers={"authorization": f"Bearer {token}", **headers})


def webhook(client: TestClient, secret: tuple[str, bytes], event: dict[str, Any]) -> str:
    body = support.dumps(event)
    response = client.post(
        WEBHOOK_PATH, content=body, headers=support.signed_headers(secret[1], body)
    )
    assert response.status_code == 200, response.text
    outcome: str = response.json()["outcome"]
    return outcome


@contextlib.asynccontextmanager
async def served_async(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, for concurrent requests from one event loop."""
    app = create_app_from_settings(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://clerk-sync") as c:
            yield c


# --- the first page load ------------------------------------------------------------------------


def test_a_new_user_gets_their_row_fetched_from_clerk_and_written_once(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    user = clerk_user("user_newcomer", first_name="Nell", last_sign_in_at=NOW_MS - 1000)
    clerk.users = [user]
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        response = sync(client, PAIR.token("user_newcomer"))
        again = sync(client, PAIR.token("user_newcomer"))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    row = response.json()["user"]
    assert set(row) == {
        "id", "email", "email_verified", "phone", "username", "first_name", "last_name",
        "image_url", "external_id", "public_metadata", "unsafe_metadata", "banned",
        "created_at", "updated_at", "last_sign_in_at", "deleted_at",
    }  # fmt: skip
    assert row["id"] == "user_newcomer"
    assert row["email"] == "user_newcomer@example.com"
    assert row["email_verified"] is True
    assert row["first_name"] == "Nell"
    assert row["deleted_at"] is None
    assert "private_metadata" not in row
    # Times in ISO 8601, the instants Clerk sent.
    updated = dt.datetime.fromisoformat(row["updated_at"])
    assert int(updated.timestamp() * 1000) == user["updated_at"]
    assert dt.datetime.fromisoformat(row["created_at"]).tzinfo is not None

    # The second call, within the minute, is answered from the database.
    assert again.status_code == 200 and again.json() == response.json()
    assert clerk.user_fetches("user_newcomer") == 1
    assert clerk.jwks_fetches() == 1

    # Written through the webhook path: in the inbox as a user.updated, like a delivery.
    inbox = support.fetch(db, "select svix_id, event_type, user_id, outcome from clerk_sync.inbox")
    assert inbox == [
        {
            "svix_id": f"sync:user_newcomer:{user['updated_at']}:{user['last_sign_in_at']}",
            "event_type": "user.updated",
            "user_id": "user_newcomer",
            "outcome": "applied",
        }
    ]
    table = support.fetch(db, "select id, first_name from public.users")
    assert table == [{"id": "user_newcomer", "first_name": "Nell"}]


def test_a_row_a_webhook_wrote_within_the_minute_is_answered_without_calling_clerk(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    # An old version (updated_at a year ago) that arrived just now: the inbox says it is fresh.
    event = support.user_event("user.created", "user_hooked", NOW_MS - 365 * 86_400_000)
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        assert webhook(client, secret, event) == "applied"
        response = sync(client, PAIR.token("user_hooked"))
    assert response.status_code == 200, response.text
    assert response.json()["user"]["first_name"] == "Ada"
    assert clerk.user_fetches("user_hooked") == 0


def test_a_row_not_synced_for_a_while_is_fetched_again_then_not_for_a_minute(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    old = NOW_MS - 86_400_000
    clerk.users = [clerk_user("user_returning", old, first_name="Renamed")]
    event = support.user_event("user.created", "user_returning", old - 1000)
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        webhook(client, secret, event)
        support.execute(
            db, "update clerk_sync.inbox set received_at = now() - interval '2 minutes'"
        )
        first = sync(client, PAIR.token("user_returning"))
        for _ in range(5):  # a page that calls the route on every load
            assert sync(client, PAIR.token("user_returning")).status_code == 200
    assert first.status_code == 200
    assert first.json()["user"]["first_name"] == "Renamed"
    assert clerk.user_fetches("user_returning") == 1


def test_the_same_version_synced_again_is_a_duplicate_in_the_inbox(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_twice")]
    settings = settings_for(db, secret, tmp_path, clerk)
    for _ in range(2):  # two processes, or one restarted: neither remembers the other's fetch
        with serving(settings) as client:
            support.execute(
                db, "update clerk_sync.inbox set received_at = now() - interval '1 hour'"
            )
            assert sync(client, PAIR.token("user_twice")).status_code == 200
    assert clerk.user_fetches("user_twice") == 2
    assert support.fetch(db, "select count(*) as n from clerk_sync.inbox") == [{"n": 1}]


def test_the_syncs_inbox_row_is_listed_and_replayable_like_a_delivery(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_replayed")]
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        assert sync(client, PAIR.token("user_replayed")).status_code == 200

    async def go() -> tuple[Any, Any]:
        conn = await asyncpg.connect(db)
        try:
            listed = await list_deliveries(conn, user_id="user_replayed")
            return listed, await replay_one(conn, listed[0].svix_id)
        finally:
            await conn.close()

    listed, replayed = support.run(go())
    assert [(d.type, d.outcome) for d in listed] == [("user.updated", "applied")]
    assert listed[0].svix_id.startswith("sync:user_replayed:")
    assert (replayed.old_outcome, replayed.new_outcome) == ("applied", "stale")


# --- deleted users ------------------------------------------------------------------------------


@pytest.mark.parametrize("delete_mode", ["soft", "hard"])
def test_a_deleted_user_answers_410_and_is_not_brought_back(
    db: str,
    secret: tuple[str, bytes],
    tmp_path: Path,
    clerk: clerk_standin.StandIn,
    delete_mode: str,
) -> None:
    # Clerk still answers the user (a delete it has not finished, say): the tombstone wins.
    clerk.users = [clerk_user("user_gone", NOW_MS)]
    settings = settings_for(db, secret, tmp_path, clerk, delete_mode=delete_mode)
    with serving(settings) as client:
        webhook(client, secret, support.user_event("user.created", "user_gone", NOW_MS - 5000))
        webhook(client, secret, support.deleted_event("user_gone"))
        first = sync(client, PAIR.token("user_gone"))
        second = sync(client, PAIR.token("user_gone"))
    for response in (first, second):
        assert response.status_code == 410, response.text
        assert response.json() == {"error": "this user was deleted"}
    rows = support.fetch(db, "select id, deleted_at is not null as deleted from public.users")
    assert rows == ([{"id": "user_gone", "deleted": True}] if delete_mode == "soft" else [])
    # Soft: the row says deleted, Clerk is never asked. Hard: no row, so Clerk is asked once,
    # its copy is stale against the tombstone, and the answer is remembered for the minute.
    assert clerk.user_fetches("user_gone") == (0 if delete_mode == "soft" else 1)


def test_a_user_clerk_answers_404_for_answers_410(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        first = sync(client, PAIR.token("user_unknown"))
        second = sync(client, PAIR.token("user_unknown"))
    assert (first.status_code, second.status_code) == (410, 410)
    assert "error" in first.json()
    assert clerk.user_fetches("user_unknown") == 1
    assert support.fetch(db, "select count(*) as n from public.users") == [{"n": 0}]


# --- Clerk unavailable --------------------------------------------------------------------------


def test_clerk_answering_500_answers_503_with_retry_after(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_outage")]
    clerk.error_requests = {2}  # the JWKS is request 1, the user request 2
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        down = sync(client, PAIR.token("user_outage"))
        back = sync(client, PAIR.token("user_outage"))
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    assert down.json() == {"error": "Clerk's API is unavailable, retry later"}
    assert back.status_code == 200  # a failed fetch is not remembered


def test_clerk_unreachable_answers_503(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    closed = f"http://127.0.0.1:{support.free_port()}/v1"
    settings = settings_for(db, secret, tmp_path, clerk, clerk_api_url=closed)
    with serving(settings) as client:
        response = sync(client, PAIR.token("user_nowhere"))  # not even the JWKS
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "error" in response.json()

    # With CLERK_JWT_KEY the token verifies without Clerk; the user fetch still fails.
    settings = settings_for(
        db, secret, tmp_path, clerk, clerk_api_url=closed, clerk_jwt_key=PAIR.public_pem
    )
    with serving(settings) as client:
        response = sync(client, PAIR.token("user_nowhere"))
    assert response.status_code == 503
    assert response.json() == {"error": "Clerk's API is unavailable, retry later"}


def test_clerk_429_answers_503_with_clerks_retry_after(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_limited")]
    clerk.rate_limit_requests = {1}
    clerk.retry_after = "17"
    settings = settings_for(db, secret, tmp_path, clerk, clerk_jwt_key=PAIR.public_pem)
    with serving(settings) as client:
        response = sync(client, PAIR.token("user_limited"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "17"
    assert response.json() == {"error": "Clerk's API is rate-limited, retry later"}
    assert clerk.jwks_fetches() == 0  # the PEM key: no network to verify


def test_database_down_answers_503(
    secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{support.free_port()}/postgres"
    settings = Settings(
        webhook_secret=secret[0],
        database_url=dead,
        data_dir=tmp_path,
        clerk_secret_key=clerk.secret_key,
        clerk_api_url=clerk.url,
        db_timeout=1,
    )
    with serving(settings) as client:
        response = sync(client, PAIR.token("user_nodb"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"error": "database unavailable, retry later"}


# --- races with webhooks ------------------------------------------------------------------------


def _race(
    settings: Settings,
    secret: tuple[str, bytes],
    clerk: clerk_standin.StandIn,
    user_id: str,
    event: dict[str, Any],
) -> tuple[httpx.Response, str]:
    """A sync whose Clerk fetch is slow, and a webhook delivered while it is in flight."""
    clerk.user_delay = 1.0
    answers: dict[str, httpx.Response] = {}
    with serving(settings) as client:
        token = PAIR.token(user_id)
        thread = threading.Thread(target=lambda: answers.update(sync=sync(client, token)))
        thread.start()
        assert clerk.user_asked.wait(10)  # the sync is waiting for Clerk's answer
        outcome = webhook(client, secret, event)
        thread.join(10)
    return answers["sync"], outcome


def test_a_newer_webhook_racing_the_sync_wins(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_race", NOW_MS - 10_000, first_name="FromClerk")]
    newer = support.user_event("user.updated", "user_race", NOW_MS, first_name="FromWebhook")
    settings = settings_for(db, secret, tmp_path, clerk)
    response, outcome = _race(settings, secret, clerk, "user_race", newer)
    assert outcome == "applied"
    assert response.status_code == 200, response.text
    assert response.json()["user"]["first_name"] == "FromWebhook"  # the row after the write
    assert support.fetch(db, "select first_name from public.users") == [
        {"first_name": "FromWebhook"}
    ]
    outcomes = support.fetch(db, "select outcome from clerk_sync.inbox where svix_id like 'sync:%'")
    assert outcomes == [{"outcome": "stale"}]


def test_an_older_webhook_racing_the_sync_loses(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_race2", NOW_MS, first_name="FromClerk")]
    older = support.user_event("user.created", "user_race2", NOW_MS - 10_000, first_name="Old")
    settings = settings_for(db, secret, tmp_path, clerk)
    response, outcome = _race(settings, secret, clerk, "user_race2", older)
    assert outcome == "applied"  # it arrived first: the row was created from it
    assert response.status_code == 200, response.text
    assert response.json()["user"]["first_name"] == "FromClerk"
    assert support.fetch(db, "select first_name from public.users") == [{"first_name": "FromClerk"}]


def test_100_concurrent_calls_for_one_user_make_one_backend_api_call(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_burst", first_name="Burst")]
    clerk.user_delay = 0.3
    settings = settings_for(db, secret, tmp_path, clerk)

    async def go() -> list[httpx.Response]:
        async with served_async(settings) as client:
            token = PAIR.token("user_burst")
            calls = [
                client.post(SYNC_PATH, headers={"authorization": f"Bearer {token}"})
                for _ in range(100)
            ]
            return await asyncio.gather(*calls)

    responses = support.run(go())
    assert [r.status_code for r in responses] == [200] * 100
    assert {r.json()["user"]["first_name"] for r in responses} == {"Burst"}
    assert clerk.user_fetches("user_burst") == 1
    assert clerk.jwks_fetches() == 1


# --- the HTTP edges -----------------------------------------------------------------------------


def test_bad_tokens_get_401_and_a_flood_of_them_429(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    other = KeyPair("ins_sync1")  # the same kid, another key: a forgery
    settings = settings_for(db, secret, tmp_path, clerk, failed_verification_limit=4)
    with serving(settings) as client:
        answers = [
            client.post(SYNC_PATH),
            client.post(SYNC_PATH, headers={"authorization": "Basic dXNlcjpwdw=="}),
            sync(client, "not-a-jwt"),
            sync(client, other.token("user_forged")),
            sync(client, PAIR.token("user_late", exp=int(time.time()) - 60)),
        ]
        still_verified = sync(client, PAIR.token("user_unknown2"))
    assert [a.status_code for a in answers] == [401, 401, 401, 401, 429]
    for answer in answers[:4]:
        assert set(answer.json()) == {"error"}
        assert "not-a-jwt" not in answer.text
    assert answers[4].headers["retry-after"] == "60"
    assert still_verified.status_code == 410  # a genuine token is never throttled
    assert clerk.user_fetches("user_forged") == 0
    assert support.fetch(db, "select count(*) as n from clerk_sync.inbox") == [{"n": 0}]


def test_a_token_for_another_origin_gets_401(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    settings = settings_for(db, secret, tmp_path, clerk, clerk_authorized_parties=ORIGIN)
    with serving(settings) as client:
        response = sync(client, PAIR.token("user_csrf", azp="https://evil.example.com"))
    assert response.status_code == 401
    assert "CLERK_AUTHORIZED_PARTIES" in response.json()["error"]


def test_without_clerk_secret_key_the_route_is_404(
    db: str, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    settings = Settings(webhook_secret=secret[0], database_url=db, data_dir=tmp_path)
    with serving(settings) as client:
        response = sync(client, PAIR.token())
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


def test_cors_preflight_from_an_authorized_origin_and_from_another(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    clerk.users = [clerk_user("user_browser")]
    parties = f"{ORIGIN}, http://localhost:3000"
    settings = settings_for(db, secret, tmp_path, clerk, clerk_authorized_parties=parties)
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    with serving(settings) as client:
        allowed = client.options(SYNC_PATH, headers={"origin": ORIGIN, **preflight})
        refused = client.options(
            SYNC_PATH, headers={"origin": "https://evil.example.com", **preflight}
        )
        call = sync(client, PAIR.token("user_browser"), origin=ORIGIN)
        plain_options = client.options(SYNC_PATH)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert "origin" in refused.json()["error"].lower()
    assert call.status_code == 200
    assert call.headers["access-control-allow-origin"] == ORIGIN
    assert plain_options.status_code == 405


def test_without_authorized_parties_there_are_no_cors_headers(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        response = client.options(
            SYNC_PATH, headers={"origin": ORIGIN, "access-control-request-method": "POST"}
        )
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers


def test_the_webhook_keeps_its_fast_path_with_session_sync_on(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    """CORS wraps the sync route only: no middleware of the app's own, so deliveries still skip
    Starlette's middleware stack and router."""
    clerk.users = [clerk_user("user_fast")]
    settings = settings_for(db, secret, tmp_path, clerk, clerk_authorized_parties=ORIGIN)
    app = create_app_from_settings(settings)
    assert isinstance(app, Starlette)
    assert app.user_middleware == []
    with TestClient(app) as client:
        stack = app.middleware_stack
        assert stack is not None
        through_stack: list[str] = []

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            through_stack.append(scope["path"])
            await stack(scope, receive, send)

        app.middleware_stack = counting
        event = support.user_event("user.created", "user_fast", NOW_MS - 90_000)
        assert webhook(client, secret, event) == "applied"
        assert sync(client, PAIR.token("user_fast")).status_code == 200
    assert through_stack == [SYNC_PATH]


def test_metrics_count_answers_and_backend_api_fetches(
    db: str, secret: tuple[str, bytes], tmp_path: Path, clerk: clerk_standin.StandIn
) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        value("clerk_sync_session_syncs_total", outcome="synced"),
        value("clerk_sync_session_syncs_total", outcome="expired"),
        value("clerk_sync_session_sync_fetches_total", result="ok"),
        value("clerk_sync_session_sync_fetches_total", result="not_found"),
    )
    clerk.users = [clerk_user("user_counted")]
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        sync(client, PAIR.token("user_counted"))
        sync(client, PAIR.token("user_counted"))
        sync(client, PAIR.token("user_absent"))
        sync(client, PAIR.token("user_counted", exp=int(time.time()) - 60))
        scraped = client.get("/metrics").text
    after = (
        value("clerk_sync_session_syncs_total", outcome="synced"),
        value("clerk_sync_session_syncs_total", outcome="expired"),
        value("clerk_sync_session_sync_fetches_total", result="ok"),
        value("clerk_sync_session_sync_fetches_total", result="not_found"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 1]
    assert 'clerk_sync_session_syncs_total{outcome="deleted"}' in scraped


def test_an_unforeseen_failure_is_answered_503_not_500(
    db: str,
    secret: tuple[str, bytes],
    tmp_path: Path,
    clerk: clerk_standin.StandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clerk_sync.session_sync import SessionSync

    async def broken(self: SessionSync, user: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SessionSync, "sync_user", broken)
    with serving(settings_for(db, secret, tmp_path, clerk)) as client:
        response = sync(client, PAIR.token("user_bug"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"error": "unexpected error"}
