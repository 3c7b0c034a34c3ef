"""What the write path refuses (sql/repeatable/20_write_path.sql, clerk_sync.batch_events): the one
place that decides whether an event's data can be applied. Each case goes through the webhook on
the real test PostgreSQL (and, from tests/test_rest.py, through Supabase's REST API): a refused
event answers 400 with `webhook-delivery: abort-message`, is kept as a dead letter, and a replay
of that dead letter refuses it again with the same reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from starlette.testclient import TestClient

from clerk_sync.app import WEBHOOK_PATH
from clerk_sync.events import USER_EVENT_TYPES, NotAClerkEvent, parse_event
from tests import support
from tests.test_events import EVENTS, MAX_MS, body_of, user

KEPT_SQL = "select outcome, error, raw_body, user_id from clerk_sync.inbox where svix_id = $1"
REPLAY_SQL = "select new_outcome, reason from public.clerk_sync_replay($1)"
USERS_SQL = "select * from public.users order by id"


def post(client: TestClient, key: bytes, body: bytes) -> tuple[Any, str]:
    headers = support.signed_headers(key, body)
    return client.post(WEBHOOK_PATH, content=body, headers=headers), headers["svix-id"]


def not_applied(client: TestClient, secret: tuple[str, bytes], db: str, body: bytes) -> str:
    """Deliver a body that reaches the database (events.py lets it through) and that the write
    path refuses: the answer and the dead letter as for any body that is not a Clerk event.
    Returns the reason given."""
    parse_event(body)
    before = support.fetch(db, USERS_SQL)
    response, svix_id = post(client, secret[1], body)
    assert response.status_code == 400, response.text
    assert response.headers["webhook-delivery"] == "abort-message"
    error = response.json()["error"]
    assert error.startswith("not a Clerk event: ")
    [kept] = support.fetch(db, KEPT_SQL, svix_id)
    assert (kept["outcome"], bytes(kept["raw_body"])) == ("invalid", body)
    # A replay of the dead letter finds the same problem, and applies nothing either.
    [replayed] = support.fetch(db, REPLAY_SQL, svix_id)
    assert replayed["new_outcome"] == "invalid"
    assert replayed["reason"].removeprefix("cannot apply: ") in error
    assert support.fetch(db, USERS_SQL) == before
    return str(error)


def applied_user(client: TestClient, secret: tuple[str, bytes], db: str, body: bytes) -> str:
    """Deliver a body the write path takes; the user id it recorded."""
    response, svix_id = post(client, secret[1], body)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] in ("applied", "stale")
    [kept] = support.fetch(db, KEPT_SQL, svix_id)
    return str(kept["user_id"])


# --- user events -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["user.created", "user.updated", "user.deleted"])
@pytest.mark.parametrize("user_id", [None, "", 42, ["user_1"], {"id": "user_1"}, "u" * 256])
def test_user_events_need_a_string_id(
    client: TestClient, secret: tuple[str, bytes], db: str, event_type: str, user_id: Any
) -> None:
    event = support.user_event(event_type, "user_1", 1_700_000_000_000)
    event["data"]["id"] = user_id
    assert "user id" in not_applied(client, secret, db, body_of(event))


@pytest.mark.parametrize("event_type", ["user.created", "user.updated"])
def test_user_events_without_an_id_key(
    client: TestClient, secret: tuple[str, bytes], db: str, event_type: str
) -> None:
    event = support.user_event(event_type, "user_1", 1_700_000_000_000)
    del event["data"]["id"]
    not_applied(client, secret, db, body_of(event))


@pytest.mark.parametrize(
    "updated_at",
    [None, "1700000000000", 1_700_000_000_000.0, 1.5, True, False, [1], {}, MAX_MS + 1, -1],
)
def test_user_events_need_an_integer_updated_at(
    client: TestClient, secret: tuple[str, bytes], db: str, updated_at: Any
) -> None:
    assert "updated_at" in not_applied(client, secret, db, body_of(user(updated_at)))


def test_user_event_without_updated_at_key(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = user()
    del event["data"]["updated_at"]
    not_applied(client, secret, db, body_of(event))


def test_huge_integer_updated_at_is_refused(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = body_of(user(123_456_789))
    assert b'"updated_at": 123456789' in body
    huge = body.replace(b'"updated_at": 123456789', b'"updated_at": 1' + b"0" * 30)
    assert "updated_at" in not_applied(client, secret, db, huge)


@pytest.mark.parametrize("updated_at", [0, 1, MAX_MS, 1_700_000_000_000])
def test_integer_updated_at_within_range_applies(
    client: TestClient, secret: tuple[str, bytes], db: str, updated_at: int
) -> None:
    assert applied_user(client, secret, db, body_of(user(updated_at))) == "user_abc"


@pytest.mark.parametrize("field", ["created_at", "last_sign_in_at"])
@pytest.mark.parametrize("value", ["1700000000000", 1.5, True, MAX_MS + 1, -1])
def test_malformed_optional_times_are_refused(
    client: TestClient, secret: tuple[str, bytes], db: str, field: str, value: Any
) -> None:
    assert field in not_applied(client, secret, db, body_of(user(**{field: value})))


@pytest.mark.parametrize("field", ["created_at", "last_sign_in_at"])
def test_null_optional_times_are_fine(
    client: TestClient, secret: tuple[str, bytes], db: str, field: str
) -> None:
    assert applied_user(client, secret, db, body_of(user(**{field: None}))) == "user_abc"


@pytest.mark.parametrize("banned", ["true", 1, 0, "false", []])
def test_banned_must_be_boolean(
    client: TestClient, secret: tuple[str, bytes], db: str, banned: Any
) -> None:
    assert "banned" in not_applied(client, secret, db, body_of(user(banned=banned)))


@pytest.mark.parametrize("banned", [True, False, None])
def test_boolean_or_null_banned_applies(
    client: TestClient, secret: tuple[str, bytes], db: str, banned: Any
) -> None:
    assert applied_user(client, secret, db, body_of(user(banned=banned))) == "user_abc"


def test_user_deleted_needs_only_an_id(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = body_of(support.deleted_event("user_gone"))
    assert applied_user(client, secret, db, body) == "user_gone"


def test_legacy_user_signed_in_with_a_user_is_checked_as_a_user_event(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = support.user_event("user.signed_in", "user_1", 1_700_000_000_000)
    assert applied_user(client, secret, db, body_of(event)) == "user_1"
    event["data"]["updated_at"] = "soon"
    not_applied(client, secret, db, body_of(event))
    # without a user object it is just an unsynced type
    other = {"type": "user.signed_in", "data": {"object": "session", "id": 3}}
    response, _ = post(client, secret[1], body_of(other))
    assert response.json() == {"outcome": "ignored"}


# --- session.created ---------------------------------------------------------------------------


def test_session_created_user_id_from_data_user_id_wins(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = support.session_event("user_s1", 1_700_000_000_000, last_sign_in_at=1_700_000_000_001)
    event["data"]["user"]["id"] = "user_other"
    assert applied_user(client, secret, db, body_of(event)) == "user_s1"


@pytest.mark.parametrize("how", ["null", "absent"])
def test_session_created_user_id_from_data_user(
    client: TestClient, secret: tuple[str, bytes], db: str, how: str
) -> None:
    event = support.session_event("user_s2", 1_700_000_000_000, last_sign_in_at=1_700_000_000_001)
    if how == "null":
        event["data"]["user_id"] = None
    else:
        del event["data"]["user_id"]
    assert applied_user(client, secret, db, body_of(event)) == "user_s2"


@pytest.mark.parametrize("user_obj", [None, "user_s3", [], {"object": "user"}, {"id": 7}])
def test_session_created_without_any_user_id_is_refused(
    client: TestClient, secret: tuple[str, bytes], db: str, user_obj: Any
) -> None:
    event = support.session_event("user_s3", 1_700_000_000_000)
    del event["data"]["user_id"]
    event["data"]["user"] = user_obj
    assert "user id" in not_applied(client, secret, db, body_of(event))


@pytest.mark.parametrize("user_id", [7, "", True, "u" * 256])
def test_session_created_with_a_malformed_user_id_is_refused(
    client: TestClient, secret: tuple[str, bytes], db: str, user_id: Any
) -> None:
    event = support.session_event("user_s4", 1_700_000_000_000)
    event["data"]["user_id"] = user_id
    not_applied(client, secret, db, body_of(event))


def test_session_created_needs_a_sign_in_time(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = support.session_event("user_s5", 1_700_000_000_000)
    event["data"]["created_at"] = "yesterday"
    assert "sign-in time" in not_applied(client, secret, db, body_of(event))
    event["data"]["user"] = {"id": "user_s5", "last_sign_in_at": 1_700_000_000_000}
    assert applied_user(client, secret, db, body_of(event)) == "user_s5"
    event["data"]["user"]["last_sign_in_at"] = "now"
    not_applied(client, secret, db, body_of(event))


# --- replay refuses what the webhook refused -----------------------------------------------------


def test_a_replayed_dead_letter_is_refused_for_the_same_reason(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = body_of(user(MAX_MS + 1))
    error = not_applied(client, secret, db, body)
    [svix_id] = [r["svix_id"] for r in support.fetch(db, "select svix_id from clerk_sync.inbox")]
    [replayed] = support.fetch(db, REPLAY_SQL, svix_id)
    assert replayed["new_outcome"] == "invalid"
    reason = "user.created event without a millisecond updated_at"
    assert reason in replayed["reason"] and reason in error


# --- property ----------------------------------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(EVENTS)
def test_every_event_shape_is_applied_with_its_user_or_refused(
    client: TestClient, secret: tuple[str, bytes], db: str, event: dict[str, Any]
) -> None:
    body = json.dumps(event).encode()
    try:
        parsed = parse_event(body)
    except NotAClerkEvent:
        return  # turned away before the database: tests/test_events.py
    response, svix_id = post(client, secret[1], body)
    assert response.status_code in (200, 400), response.text
    [kept] = support.fetch(db, KEPT_SQL, svix_id)
    if response.status_code == 400:
        assert response.headers["webhook-delivery"] == "abort-message"
        assert kept["outcome"] == "invalid"
        return
    assert kept["outcome"] == response.json()["outcome"]
    if parsed.type in USER_EVENT_TYPES or parsed.type == "session.created":
        assert isinstance(kept["user_id"], str) and kept["user_id"]
        assert kept["user_id"] == parsed.user_id
