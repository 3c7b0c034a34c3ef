"""Clerk's own example payloads (src/clerk_sync/examples), posted signed to the webhook route.

Each on an empty database: the synced types do what the contract says (the organization ones:
tests/test_organizations.py), and every other
Clerk event type is answered 200 "ignored" and recorded in the inbox as such.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import clerk_sync
from tests import support

EXAMPLES_DIR = Path(clerk_sync.__file__).parent / "examples"
EXAMPLES = {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.json")) if not p.name.startswith("_")}
SYNCED = ("user.created", "user.updated", "user.deleted", "session.created")
ORGANIZATION_TYPES = (
    "organization.created", "organization.updated", "organization.deleted",
    "organizationMembership.created", "organizationMembership.updated",
    "organizationMembership.deleted",
    "organizationInvitation.created", "organizationInvitation.accepted",
    "organizationInvitation.revoked",
)  # fmt: skip
IGNORED = sorted(set(EXAMPLES) - set(SYNCED) - set(ORGANIZATION_TYPES))
USER_ID = "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
ROUTE = "/api/webhooks/clerk"


def example(event_type: str) -> bytes:
    return EXAMPLES[event_type].read_bytes()


def post(client: TestClient, key: bytes, body: bytes, svix_id: str | None = None) -> Any:
    svix_id = svix_id or "msg_" + secrets.token_hex(12)
    return client.post(ROUTE, content=body, headers=support.signed_headers(key, body, svix_id))


def ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


def users(db: str) -> list[dict[str, Any]]:
    return support.fetch(db, "select * from public.users order by id")


def inbox(db: str) -> list[dict[str, Any]]:
    return support.fetch(
        db, "select svix_id, event_type, user_id, outcome, error from clerk_sync.inbox"
    )


def test_the_example_set_is_every_clerk_event_type() -> None:
    assert len(EXAMPLES) == 45
    assert len(IGNORED) == 32
    assert set(SYNCED) | set(ORGANIZATION_TYPES) <= set(EXAMPLES)
    for event_type, path in EXAMPLES.items():
        assert json.loads(path.read_bytes())["type"] == event_type


@pytest.mark.parametrize("event_type", IGNORED)
def test_every_other_type_is_ignored_and_recorded(
    client: TestClient, secret: tuple[str, bytes], db: str, event_type: str
) -> None:
    response = post(client, secret[1], example(event_type), "msg_ignored_1")
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "ignored"}
    assert inbox(db) == [
        {
            "svix_id": "msg_ignored_1",
            "event_type": event_type,
            "user_id": None,
            "outcome": "ignored",
            "error": None,
        }
    ]
    assert users(db) == []
    assert support.fetch(db, "select * from clerk_sync.tombstones") == []
    assert support.fetch(db, "select * from clerk_sync.pending_sign_ins") == []
    # Redelivered: a duplicate, still one inbox row.
    again = post(client, secret[1], example(event_type), "msg_ignored_1")
    assert again.status_code == 200 and again.json() == {"outcome": "duplicate"}
    assert len(inbox(db)) == 1


EXPECTED_CREATED = {
    "id": USER_ID,
    "email": None,  # the spec's primary_email_address_id points at no address
    "email_verified": False,
    "phone": None,
    "username": None,
    "first_name": "John",
    "last_name": "Doe",
    "image_url": "https://img.clerk.com/xxxxxx",
    "external_id": None,
    "public_metadata": {},
    "unsafe_metadata": {},
    "banned": False,
    "created_at": ms(1716883200000),
    "updated_at": ms(1716883200000),
    "last_sign_in_at": ms(1716883200000),
    "deleted_at": None,
}

EXPECTED_UPDATED = {
    **EXPECTED_CREATED,
    "username": "johndoe",
    "last_name": "Doe Updated",
    "image_url": "https://img.clerk.com/yyyyy",
    "public_metadata": {"department": "engineering"},
    "updated_at": ms(1716883500000),
    "last_sign_in_at": ms(1716883400000),
}


def user_rows(db: str) -> list[dict[str, Any]]:
    rows = users(db)
    for row in rows:
        for column in ("public_metadata", "unsafe_metadata"):
            row[column] = json.loads(row[column])
    return rows


def assert_inbox_outcomes(db: str, expected: dict[str, str]) -> None:
    assert {r["svix_id"]: r["outcome"] for r in inbox(db)} == expected


def test_user_created_example_is_applied(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    response = post(client, secret[1], example("user.created"), "msg_c")
    assert response.status_code == 200 and response.json() == {"outcome": "applied"}
    assert user_rows(db) == [EXPECTED_CREATED]
    assert_inbox_outcomes(db, {"msg_c": "applied"})


def test_user_updated_example_is_applied(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    response = post(client, secret[1], example("user.updated"), "msg_u")
    assert response.status_code == 200 and response.json() == {"outcome": "applied"}
    assert user_rows(db) == [EXPECTED_UPDATED]
    assert_inbox_outcomes(db, {"msg_u": "applied"})


def test_user_deleted_example_is_applied_as_a_tombstone(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    response = post(client, secret[1], example("user.deleted"), "msg_d")
    assert response.status_code == 200 and response.json() == {"outcome": "applied"}
    tombstones = support.fetch(db, "select user_id, svix_id from clerk_sync.tombstones")
    assert tombstones == [{"user_id": USER_ID, "svix_id": "msg_d"}]
    assert users(db) == []
    assert_inbox_outcomes(db, {"msg_d": "applied"})
    # The user never comes back.
    late = post(client, secret[1], example("user.created"), "msg_late")
    assert late.status_code == 200 and late.json() == {"outcome": "stale"}
    assert users(db) == []


def test_session_created_example_is_a_pending_sign_in(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    response = post(client, secret[1], example("session.created"), "msg_s")
    assert response.status_code == 200 and response.json() == {"outcome": "applied"}
    assert users(db) == []  # no user row from a sign-in alone
    pending = support.fetch(db, "select user_id, last_sign_in_at from clerk_sync.pending_sign_ins")
    assert pending == [{"user_id": USER_ID, "last_sign_in_at": ms(1716883200000)}]
    assert_inbox_outcomes(db, {"msg_s": "applied"})
    # ...which the user row takes when it arrives.
    created = post(client, secret[1], example("user.created"), "msg_c")
    assert created.json() == {"outcome": "applied"}
    assert user_rows(db) == [EXPECTED_CREATED]


def test_created_then_updated_then_created_again_is_stale(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    steps = [
        ("user.created", "msg_1", "applied"),
        ("user.updated", "msg_2", "applied"),  # updated_at 1716883500000 > 1716883200000
        ("user.created", "msg_3", "stale"),  # a new svix-id, an older updated_at
        ("user.updated", "msg_2", "duplicate"),
    ]
    for event_type, svix_id, outcome in steps:
        response = post(client, secret[1], example(event_type), svix_id)
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": outcome}, (event_type, svix_id)
    assert user_rows(db) == [EXPECTED_UPDATED]
    assert_inbox_outcomes(db, {"msg_1": "applied", "msg_2": "applied", "msg_3": "stale"})
