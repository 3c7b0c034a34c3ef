"""POST /api/webhooks/clerk through the in-process app on a real PostgreSQL database."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import clerk_sync
from clerk_sync.app import WEBHOOK_PATH, create_app, create_app_from_settings
from clerk_sync.settings import Settings
from clerk_sync.storage.postgres import PostgresStore
from clerk_sync.verify import Verifier
from tests import support

MIB = 1024 * 1024
FROZEN_NOW = 1_750_000_000
EXAMPLES_DIR = Path(clerk_sync.__file__).parent / "examples"


# --- helpers -----------------------------------------------------------------------------------


def users(db: str) -> list[dict[str, Any]]:
    return support.fetch(db, "select * from public.users order by id")


def inbox(db: str) -> list[dict[str, Any]]:
    return support.fetch(db, "select * from clerk_sync.inbox order by received_at, svix_id")


def post(client: TestClient, body: Any, headers: dict[str, str]) -> Any:
    return client.post(WEBHOOK_PATH, content=body, headers=headers)


def deliver(
    client: TestClient, key: bytes, event: dict[str, Any], message_id: str | None = None
) -> Any:
    body = support.dumps(event)
    return post(client, body, support.signed_headers(key, body, message_id))


def assert_error_json(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert isinstance(payload, dict)
    assert isinstance(payload.get("error"), str) and payload["error"]
    return str(payload["error"])


def ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


@pytest.fixture
def frozen_client(db: str, secret: tuple[str, bytes]) -> Iterator[TestClient]:
    """The app with its verifier's clock frozen at FROZEN_NOW."""

    async def open_store() -> PostgresStore:
        return await PostgresStore.open(db)

    app = create_app(
        verifier=Verifier([secret[1]], clock=lambda: FROZEN_NOW), open_store=open_store
    )
    with TestClient(app) as test_client:
        yield test_client


# --- hostile inputs ----------------------------------------------------------------------------

Built = tuple[Any, dict[str, str]]


@dataclass
class Hostile:
    name: str
    build: Callable[[bytes], Built]
    status: int
    verified: bool = False  # verified but not a Clerk event: a dead letter in the inbox
    statuses: tuple[int, ...] = field(default=())


VALID_EVENT = support.user_event(
    "user.created", "user_hostile", 1_700_000_000_000, email="h@example.com"
)
VALID_BODY = support.dumps(VALID_EVENT)


def signed(body: bytes, **overrides: str | None) -> Callable[[bytes], Built]:
    """A correctly signed delivery of `body`, with some headers replaced (None removes one)."""

    def build(key: bytes) -> Built:
        headers = support.signed_headers(key, body)
        for name, value in overrides.items():
            header = name.replace("_", "-")
            if value is None:
                headers.pop(header, None)
            else:
                headers[header] = value
        return body, headers

    return build


def at_time(body: bytes, timestamp: Callable[[], int]) -> Callable[[bytes], Built]:
    def build(key: bytes) -> Built:
        return body, support.signed_headers(key, body, timestamp=timestamp())

    return build


def wrong_secret(key: bytes) -> Built:
    return VALID_BODY, support.signed_headers(secrets.token_bytes(32), VALID_BODY)


def conflicting(name: str) -> Callable[[bytes], Built]:
    def build(key: bytes) -> Built:
        headers = support.signed_headers(key, VALID_BODY)
        other = support.signed_headers(key, VALID_BODY + b" ", timestamp=int(time.time()) - 1)
        headers[f"webhook-{name}"] = other[f"svix-{name}"]
        return VALID_BODY, headers

    return build


def oversized(content_length: str | None, size: int = MIB + 1) -> Callable[[bytes], Built]:
    body = VALID_BODY + b" " * (size - len(VALID_BODY))

    def build(key: bytes) -> Built:
        headers = support.signed_headers(key, body)
        if content_length == "absent":

            def chunks() -> Iterator[bytes]:
                for start in range(0, len(body), 64 * 1024):
                    yield body[start : start + 64 * 1024]

            return chunks(), headers
        if content_length is not None:
            headers["content-length"] = content_length
        return body, headers

    return build


def non_ascii_id(key: bytes) -> Built:
    # A raw UTF-8 header value (Starlette decodes header bytes as latin-1).
    headers: dict[str, Any] = support.signed_headers(key, VALID_BODY, "msg_\u00e9")
    headers["svix-id"] = "msg_\u00e9".encode()
    return VALID_BODY, headers


def declared_huge(key: bytes) -> Built:
    headers = support.signed_headers(key, VALID_BODY)
    headers["content-length"] = str(10 * MIB)
    return VALID_BODY, headers


def event_body(**changes: Any) -> bytes:
    event = json.loads(VALID_BODY)
    event["data"].update(changes)
    return json.dumps(event).encode()


NESTED_5000 = b'{"type": "user.created", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
NUL_STRING = VALID_BODY.replace(b'"first_name": "Ada"', b'"first_name": "A\\u0000da"')
assert NUL_STRING != VALID_BODY

HOSTILE = [
    Hostile("missing-svix-id", signed(VALID_BODY, svix_id=None), 400),
    Hostile("missing-svix-timestamp", signed(VALID_BODY, svix_timestamp=None), 400),
    Hostile("missing-svix-signature", signed(VALID_BODY, svix_signature=None), 400),
    Hostile(
        "all-headers-missing",
        signed(VALID_BODY, svix_id=None, svix_timestamp=None, svix_signature=None),
        400,
    ),
    Hostile("empty-svix-id", signed(VALID_BODY, svix_id=""), 400),
    Hostile("non-ascii-svix-id", non_ascii_id, 400),
    Hostile("long-svix-id", signed(VALID_BODY, svix_id="m" * 300), 400),
    Hostile("non-digit-timestamp", signed(VALID_BODY, svix_timestamp="yesterday"), 400),
    Hostile("negative-timestamp", signed(VALID_BODY, svix_timestamp="-1700000000"), 400),
    Hostile("float-timestamp", signed(VALID_BODY, svix_timestamp="1700000000.5"), 400),
    Hostile("huge-timestamp", signed(VALID_BODY, svix_timestamp="9" * 300), 400),
    Hostile("garbage-signature", signed(VALID_BODY, svix_signature="garbage"), 400),
    Hostile("empty-v1-signature", signed(VALID_BODY, svix_signature="v1,"), 400),
    Hostile("v1-a-b-signature", signed(VALID_BODY, svix_signature="v1,a,b"), 401),
    Hostile("bad-base64-signature", signed(VALID_BODY, svix_signature="v1,!!!notbase64"), 401),
    Hostile("only-v2-signatures", signed(VALID_BODY, svix_signature="v2,abc v1a,def"), 401),
    Hostile("conflicting-id", conflicting("id"), 400),
    Hostile("conflicting-timestamp", conflicting("timestamp"), 400),
    Hostile("conflicting-signature", conflicting("signature"), 400),
    Hostile("wrong-secret", wrong_secret, 401),
    Hostile("301s-old", at_time(VALID_BODY, lambda: int(time.time()) - 301), 401),
    Hostile("301s-future", at_time(VALID_BODY, lambda: math.ceil(time.time()) + 301), 401),
    Hostile("year-old", at_time(VALID_BODY, lambda: int(time.time()) - 365 * 86400), 401),
    Hostile("body-over-1MiB", oversized(None), 413),
    Hostile("body-over-1MiB-lying-length", oversized("100"), 413),
    Hostile("body-over-1MiB-no-length", oversized("absent"), 413),
    Hostile("body-over-1MiB-non-numeric-length", oversized("lots"), 413),
    Hostile("declared-length-over-1MiB", declared_huge, 413),
    Hostile(
        "non-utf8-body", signed(b'{"type": "user.created", "data": {"a": "\xff\xfe"}}'), 400, True
    ),
    Hostile("non-json-body", signed(b"hello, world"), 400, True),
    Hostile("empty-body", signed(b""), 400, True),
    Hostile("json-array", signed(b"[" + VALID_BODY + b"]"), 400, True),
    Hostile("json-string", signed(b'"user.created"'), 400, True),
    Hostile("missing-type", signed(b'{"object": "event", "data": {"id": "user_x"}}'), 400, True),
    Hostile("missing-data", signed(b'{"type": "user.created"}'), 400, True),
    Hostile("deeply-nested-json", signed(NESTED_5000), 400, True),
    Hostile("nul-in-string", signed(NUL_STRING), 400, True),
    Hostile("updated-at-as-string", signed(event_body(updated_at="1700000000000")), 400, True),
    Hostile("user-without-id", signed(event_body(id=None)), 400, True),
    Hostile("banned-as-string", signed(event_body(banned="yes")), 400, True),
    # Parses as an integer number of ms, but is before 4713 BC: PostgreSQL refuses it.
    Hostile(
        "updated-at-out-of-postgres-range",
        signed(event_body(updated_at=-7_000_000_000_000_000)),
        400,
        True,
    ),
    Hostile(
        "created-at-out-of-postgres-range",
        signed(event_body(created_at=-7_000_000_000_000_000)),
        400,
        True,
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_input(
    case: Hostile, client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    content, headers = case.build(secret[1])
    response = post(client, content, headers)
    assert response.status_code < 500
    assert response.status_code == case.status, response.text
    assert_error_json(response)
    assert users(db) == []
    rows = inbox(db)
    if case.verified:
        assert response.headers.get("webhook-delivery") == "abort-message"
        assert [(r["svix_id"], r["outcome"]) for r in rows] == [(headers["svix-id"], "invalid")]
        assert rows[0]["error"]
        assert bytes(rows[0]["raw_body"]) == content
    else:
        assert "webhook-delivery" not in response.headers
        assert rows == []


def test_non_utf8_dead_letter_keeps_the_raw_bytes(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = b'{"type": "user.created", "data": {"first_name": "\xc3\x28"}}'
    headers = support.signed_headers(secret[1], body)
    response = post(client, body, headers)
    assert response.status_code == 400
    assert response.headers["webhook-delivery"] == "abort-message"
    assert "not a Clerk event" in assert_error_json(response)
    (row,) = inbox(db)
    assert row["outcome"] == "invalid"
    assert bytes(row["raw_body"]) == body
    # Svix retries it (same svix-id): still answered without a 5xx, still one row.
    response = post(client, body, support.signed_headers(secret[1], body, headers["svix-id"]))
    assert response.status_code == 400
    assert len(inbox(db)) == 1


def test_body_of_exactly_1_mib_is_accepted(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = VALID_BODY + b" " * (MIB - len(VALID_BODY))
    assert len(body) == MIB
    response = post(client, body, support.signed_headers(secret[1], body))
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    assert [u["id"] for u in users(db)] == ["user_hostile"]


def test_deep_but_parseable_nesting_is_stored_not_a_5xx(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    # Python's json cannot write 1000 levels: splice them in as text (orjson accepts < 1024).
    event = support.user_event(
        "user.created", "user_deep", 1_700_000_000_000, public_metadata={"n": "NESTED"}
    )
    nested = "[" * 1000 + '"bottom"' + "]" * 1000
    body = support.dumps(event).replace(b'"NESTED"', nested.encode())
    response = post(client, body, support.signed_headers(secret[1], body))
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    (row,) = users(db)
    assert row["public_metadata"].replace(" ", "") == '{"n":' + nested + "}"


def test_the_last_millisecond_of_year_9999_is_stored_and_past_it_refused(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    updated_at = 253_402_300_799_999
    event = support.user_event("user.created", "user_future", updated_at)
    response = deliver(client, secret[1], event)
    assert response.status_code == 200, response.text
    rows = support.fetch(
        db, "select (extract(epoch from updated_at) * 1000)::bigint as ms from public.users"
    )
    assert [r["ms"] for r in rows] == [updated_at]
    later = support.user_event("user.updated", "user_future", updated_at + 1)
    response = deliver(client, secret[1], later)
    assert response.status_code == 400
    assert response.headers["webhook-delivery"] == "abort-message"


def test_escaped_backslash_before_u0000_is_not_a_nul(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = support.user_event(
        "user.created", "user_path", 1_700_000_000_000, unsafe_metadata={"dir": "C:\\u0000"}
    )
    body = support.dumps(event)
    assert b'"C:\\\\u0000"' in body  # JSON text: "C:\\u0000", no NUL anywhere
    response = post(client, body, support.signed_headers(secret[1], body))
    assert response.status_code == 200, response.text
    (row,) = users(db)
    assert json.loads(row["unsafe_metadata"]) == {"dir": "C:\\u0000"}


# --- tolerance with a frozen clock -------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-300, 200), (300, 200), (0, 200), (-301, 401), (301, 401)],
)
def test_tolerance_over_http(
    offset: int, status: int, frozen_client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = support.user_event("user.created", "user_clock", 1_700_000_000_000)
    body = support.dumps(event)
    headers = support.signed_headers(secret[1], body, timestamp=FROZEN_NOW + offset)
    response = post(frozen_client, body, headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"outcome": "applied"}
        assert [u["id"] for u in users(db)] == ["user_clock"]
    else:
        assert "5 minutes" in assert_error_json(response)
        assert users(db) == []
        assert inbox(db) == []


# --- the happy path and the outcomes -----------------------------------------------------------


def mapped_event(**changes: Any) -> dict[str, Any]:
    event = support.user_event(
        "user.created",
        "user_map",
        1_700_000_000_456,
        email="primary@example.com",
        first_name=None,
        last_name=None,
        last_sign_in_at=1_699_999_999_999,
        created_at=1_690_000_000_123,
        external_id="ext_42",
        username="ada",
        public_metadata=None,
        unsafe_metadata=None,
        primary_phone_number_id="phn_2",
        phone_numbers=[
            {"object": "phone_number", "id": "phn_1", "phone_number": "+15555550100"},
            {"object": "phone_number", "id": "phn_2", "phone_number": "+15555550101"},
        ],
    )
    data = event["data"]
    data["email_addresses"].insert(
        0,
        {
            "object": "email_address",
            "id": "idn_other",
            "email_address": "first-but-not-primary@example.com",
            "verification": {"status": "unverified", "strategy": "email_code"},
            "linked_to": [],
        },
    )
    data.update(changes)
    return event


def test_valid_user_created_is_applied_with_the_contract_mapping(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    response = deliver(client, secret[1], mapped_event(), "msg_map_1")
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    (row,) = users(db)
    assert "private_metadata" not in row
    assert "never in public.users" not in repr(row)
    assert json.loads(row.pop("public_metadata")) == {}
    assert json.loads(row.pop("unsafe_metadata")) == {}
    assert row == {
        "id": "user_map",
        "email": "primary@example.com",
        "email_verified": True,
        "phone": "+15555550101",
        "username": "ada",
        "first_name": None,
        "last_name": None,
        "image_url": "https://img.clerk.com/x",
        "external_id": "ext_42",
        "banned": False,
        "created_at": ms(1_690_000_000_123),
        "updated_at": ms(1_700_000_000_456),
        "last_sign_in_at": ms(1_699_999_999_999),
        "deleted_at": None,
    }
    (entry,) = inbox(db)
    assert (entry["svix_id"], entry["event_type"], entry["user_id"], entry["outcome"]) == (
        "msg_map_1",
        "user.created",
        "user_map",
        "applied",
    )


def test_metadata_and_banned_are_stored(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = mapped_event(
        public_metadata={"plan": "pro", "n": [1, 2]},
        unsafe_metadata={"theme": "dark"},
        banned=True,
        email_addresses=[
            {
                "id": "idn_map",
                "email_address": "primary@example.com",
                "verification": {"status": "unverified"},
            }
        ],
    )
    assert deliver(client, secret[1], event).json() == {"outcome": "applied"}
    (row,) = users(db)
    assert json.loads(row["public_metadata"]) == {"plan": "pro", "n": [1, 2]}
    assert json.loads(row["unsafe_metadata"]) == {"theme": "dark"}
    assert row["banned"] is True
    assert row["email"] == "primary@example.com"
    assert row["email_verified"] is False


def test_user_without_a_primary_email(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = mapped_event(primary_email_address_id=None, primary_phone_number_id="phn_missing")
    assert deliver(client, secret[1], event).json() == {"outcome": "applied"}
    (row,) = users(db)
    assert row["email"] is None
    assert row["email_verified"] is False
    assert row["phone"] is None


def test_clerk_example_user_created_is_applied(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = (EXAMPLES_DIR / "user.created.json").read_bytes()
    response = post(client, body, support.signed_headers(secret[1], body))
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    assert [u["id"] for u in users(db)] == [json.loads(body)["data"]["id"]]


def test_webhook_prefixed_headers_work(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = support.dumps(mapped_event())
    headers = {
        k.replace("svix-", "webhook-"): v
        for k, v in support.signed_headers(secret[1], body).items()
    }
    assert "svix-id" not in headers
    response = post(client, body, headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    assert [u["id"] for u in users(db)] == ["user_map"]


def test_any_of_several_configured_secrets_is_accepted(db: str, tmp_path: Path) -> None:
    (old, old_key), (new, new_key) = support.make_secret(), support.make_secret()
    settings = Settings(webhook_secret=f"{old} {new}", database_url=db, data_dir=tmp_path)
    with TestClient(create_app_from_settings(settings, db)) as client:
        first = support.user_event("user.created", "user_rot", 1_700_000_000_000)
        second = support.user_event("user.updated", "user_rot", 1_700_000_000_001)
        assert deliver(client, old_key, first).json() == {"outcome": "applied"}
        assert deliver(client, new_key, second).json() == {"outcome": "applied"}
        stranger = support.make_secret()[1]
        third = support.user_event("user.updated", "user_rot", 1_700_000_000_002)
        assert deliver(client, stranger, third).status_code == 401
    assert users(db)[0]["updated_at"] == ms(1_700_000_000_001)


def test_same_svix_id_again_is_a_duplicate(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = mapped_event()
    assert deliver(client, secret[1], event, "msg_dup").json() == {"outcome": "applied"}
    # a retry is re-signed with a new timestamp, same svix-id
    assert deliver(client, secret[1], event, "msg_dup").json() == {"outcome": "duplicate"}
    # even a newer body under a used svix-id is not applied again
    newer = mapped_event(updated_at=1_800_000_000_000, first_name="Changed")
    response = deliver(client, secret[1], newer, "msg_dup")
    assert response.status_code == 200
    assert response.json() == {"outcome": "duplicate"}
    (row,) = users(db)
    assert row["first_name"] is None
    assert row["updated_at"] == ms(1_700_000_000_456)
    assert len(inbox(db)) == 1


@pytest.mark.parametrize("delta", [-1, 0], ids=["older", "equal"])
def test_older_or_equal_updated_at_is_stale(
    delta: int, client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    assert deliver(client, secret[1], mapped_event()).json() == {"outcome": "applied"}
    older = mapped_event(updated_at=1_700_000_000_456 + delta, first_name="Old")
    older["type"] = "user.updated"
    response = deliver(client, secret[1], older)
    assert response.status_code == 200
    assert response.json() == {"outcome": "stale"}
    (row,) = users(db)
    assert row["first_name"] is None
    assert row["updated_at"] == ms(1_700_000_000_456)
    newer = mapped_event(updated_at=1_700_000_000_457, first_name="New")
    newer["type"] = "user.updated"
    assert deliver(client, secret[1], newer).json() == {"outcome": "applied"}
    assert users(db)[0]["first_name"] == "New"


def test_unsupported_type_is_ignored_and_recorded(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = (EXAMPLES_DIR / "organizationDomain.created.json").read_bytes()
    headers = support.signed_headers(secret[1], body, "msg_org")
    response = post(client, body, headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "ignored"}
    assert users(db) == []
    rows = inbox(db)
    assert [(r["svix_id"], r["event_type"], r["outcome"]) for r in rows] == [
        ("msg_org", "organizationDomain.created", "ignored")
    ]
    assert post(client, body, support.signed_headers(secret[1], body, "msg_org")).json() == {
        "outcome": "duplicate"
    }


def refuse_users_with(db: str, message: str) -> None:
    """A trigger of the app's that refuses every new row in public.users with a class-22 error:
    a dead letter today, and a cause that can be fixed (drop it)."""
    support.execute(
        db,
        f"""
        create or replace function public.test_refuse_users() returns trigger
        language plpgsql as $$
        begin
            raise exception '{message}' using errcode = '22023';
        end
        $$;
        create or replace trigger test_refuse_users before insert on public.users
        for each row execute function public.test_refuse_users();
        """,
    )


def test_a_resend_of_a_dead_letter_is_handled_again(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = mapped_event()
    try:
        refuse_users_with(db, "refused by the app")
        first = deliver(client, secret[1], event, "msg_resend")
        assert first.status_code == 400, first.text
        assert first.headers["webhook-delivery"] == "abort-message"
        [dead] = inbox(db)
        assert (dead["outcome"], dead["replays"]) == ("invalid", 0)
        assert "refused by the app" in dead["error"]
        # Refused again, for another reason: still one dead letter, with the reason found now.
        refuse_users_with(db, "refused again")
        assert deliver(client, secret[1], event, "msg_resend").status_code == 400
        [again] = inbox(db)
        assert again["outcome"] == "invalid"
        assert "refused again" in again["error"]
        assert again["raw_body"] == support.dumps(event)
    finally:
        support.execute(
            db,
            "drop trigger if exists test_refuse_users on public.users;"
            " drop function if exists public.test_refuse_users()",
        )
    # The cause fixed, Clerk's dashboard resends the same svix-id: applied, not a duplicate.
    response = deliver(client, secret[1], event, "msg_resend")
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    assert [row["id"] for row in users(db)] == ["user_map"]
    [handled] = inbox(db)
    assert (handled["outcome"], handled["event_type"], handled["user_id"]) == (
        "applied",
        "user.created",
        "user_map",
    )
    assert (handled["error"], handled["raw_body"]) == (None, None)
    assert handled["payload"] is not None
    # The first arrival's time is kept; the resend counts as a replay.
    assert handled["received_at"] == dead["received_at"]
    assert handled["replays"] == 1 and handled["replayed_at"] is not None
    # Handled now: the next resend is a duplicate.
    assert deliver(client, secret[1], event, "msg_resend").json() == {"outcome": "duplicate"}


# --- failed-verification limiter ---------------------------------------------------------------


def forged(client: TestClient) -> Any:
    return post(client, VALID_BODY, support.signed_headers(secrets.token_bytes(32), VALID_BODY))


def test_too_many_failed_verifications_get_429_but_valid_traffic_passes(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    for i in range(20):
        if i % 2:
            response = forged(client)
            assert response.status_code == 401
        else:
            response = post(client, VALID_BODY, {"svix-id": "msg_x"})
            assert response.status_code == 400
    response = forged(client)
    assert response.status_code == 429
    assert response.headers.get("retry-after")
    assert "too many" in assert_error_json(response)
    assert post(client, VALID_BODY, {}).status_code == 429

    # A genuine delivery from the same client is never throttled.
    response = deliver(client, secret[1], mapped_event())
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    assert [u["id"] for u in users(db)] == ["user_map"]
    # ... and does not lift the limit for forgeries either.
    assert forged(client).status_code == 429
    assert len(inbox(db)) == 1


def test_valid_deliveries_do_not_count_as_failures(
    client: TestClient, secret: tuple[str, bytes]
) -> None:
    for i in range(25):
        event = support.user_event("user.updated", "user_many", 1_700_000_000_000 + i)
        assert deliver(client, secret[1], event).status_code == 200
    for _ in range(20):
        assert forged(client).status_code == 401
    assert forged(client).status_code == 429


def test_verified_but_invalid_bodies_do_not_count_as_failures(
    client: TestClient, secret: tuple[str, bytes]
) -> None:
    for _ in range(25):
        body = b"not json " + secrets.token_hex(4).encode()
        response = post(client, body, support.signed_headers(secret[1], body))
        assert response.status_code == 400
    assert forged(client).status_code == 401


def test_of_a_header_sent_twice_the_first_counts(
    client: TestClient, secret: tuple[str, bytes]
) -> None:
    body = support.dumps(support.user_event("user.created", "user_twice", 1))
    good = support.signed_headers(secret[1], body)
    headers = [*good.items(), ("svix-signature", "v1," + "A" * 44)]
    response = client.post(WEBHOOK_PATH, content=body, headers=headers)
    assert response.status_code == 200, response.text
    forged_first = [(k, v) for k, v in good.items() if k != "svix-signature"]
    forged_first += [
        ("svix-signature", "v1," + "A" * 44),
        ("svix-signature", good["svix-signature"]),
    ]
    response = client.post(WEBHOOK_PATH, content=body, headers=forged_first)
    assert response.status_code == 401


# --- refusals by the app's own constraints and triggers --------------------------------------

PII_EMAIL = "jöhn.doe@exämple.de"
REFUSALS = {
    # name: (what the app added, what undoes it)
    "check": (
        "alter table public.users add constraint app_first_name_short"
        " check (length(first_name) < 10)",
        "alter table public.users drop constraint if exists app_first_name_short",
    ),
    "unique": (
        "create unique index app_one_account_per_email on public.users (email)",
        "drop index if exists public.app_one_account_per_email",
    ),
    "trigger": (
        """
        create function public.app_refuse_user() returns trigger language plpgsql as $$
        begin
            if length(new.first_name) >= 10 then
                raise exception 'refusing % (%)', new.first_name, new.email;
            end if;
            return new;
        end $$;
        create trigger app_refuse_user before insert or update on public.users
        for each row execute function public.app_refuse_user();
        """,
        "drop function if exists public.app_refuse_user() cascade",
    ),
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_an_event_the_apps_constraint_or_trigger_refuses_is_a_dead_letter(
    client: TestClient, db: str, secret: tuple[str, bytes], refusal: str
) -> None:
    """Not a 503 that Svix retries for 27 hours: kept, answered 400 abort-message, said without
    the row's values, and replayable once the cause is fixed."""
    add, drop = REFUSALS[refusal]
    support.execute(db, add)
    try:
        refused_then_replayed(client, db, secret[1], refusal)
    finally:
        support.execute(db, drop)


def refused_then_replayed(client: TestClient, db: str, key: bytes, refusal: str) -> None:
    if refusal == "unique":
        first = support.user_event("user.created", "user_first", 1, email=PII_EMAIL)
        assert deliver(client, key, first).json() == {"outcome": "applied"}
    poison = support.user_event(
        "user.created", "user_poison", 2, email=PII_EMAIL, first_name="Bartholomew"
    )
    body = support.dumps(poison)
    headers = support.signed_headers(key, body, "msg_poison")
    response = post(client, body, headers)
    assert response.status_code == 400
    assert response.headers["webhook-delivery"] == "abort-message"
    said = assert_error_json(response)
    [row] = [r for r in inbox(db) if r["svix_id"] == "msg_poison"]
    assert row["outcome"] == "invalid"
    expected = {"check": "app_first_name_short", "unique": "app_one_account_per_email"}
    for text in (said, row["error"]):
        assert PII_EMAIL not in text and "Bartholomew" not in text and "Failing row" not in text
        assert {"check": "23514", "unique": "23505", "trigger": "P0001"}[refusal] in text
        if refusal in expected:
            assert expected[refusal] in text
    assert [u["id"] for u in users(db)] == (["user_first"] if refusal == "unique" else [])

    # The cause fixed, a replay applies it.
    support.execute(db, REFUSALS[refusal][1])
    [replayed] = support.fetch(
        db, "select new_outcome from public.clerk_sync_replay('msg_poison', 'soft', false)"
    )
    assert replayed["new_outcome"] == "applied"
    assert "user_poison" in [u["id"] for u in users(db)]
