"""Fuzzing the receiver through the in-process app (verifier, event parser, write path) on a real
PostgreSQL database: arbitrary svix-*/webhook-* headers with arbitrary bodies, and correctly
signed arbitrary bodies (JSON-ish and raw bytes, and Clerk-shaped events with arbitrary values).

Whatever arrives: never a 5xx; never a 2xx without a valid signature; nothing written (not even
to the inbox) without a valid signature; and public.users changes only for a validly signed
user event, and then only that user's row. Whether a request is validly signed is decided here,
from the Svix scheme (an HMAC-SHA256 `v1` entry over "id.timestamp.body", a timestamp within
five minutes), not by asking clerk_sync. Hypothesis prints the failing example and how to
reproduce it (`@reproduce_failure`, or --hypothesis-seed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.faults import svix_sender as svix

pytestmark = pytest.mark.slow

WEBHOOK_PATH = "/api/webhooks/clerk"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
HEADER_NAMES = [
    f"{prefix}-{name}"
    for prefix in ("svix", "webhook")
    for name in ("id", "timestamp", "signature")
]
USER_IDS = ["user_fuzz1", "user_fuzz2", "user_fuzz3"]
PRIVATE = "fuzz-private-never-stored"
MAX_MS = 253_402_300_799_999  # the end of year 9999


# --- the database, seen from outside -----------------------------------------------------------


class Database:
    """One connection of the test's own, on a loop of its own (the TestClient runs another)."""

    def __init__(self, dsn: str) -> None:
        self.runner = asyncio.Runner()
        self.conn: asyncpg.Connection = self.runner.run(asyncpg.connect(dsn, timeout=10))

    def users(self) -> dict[str, str]:
        rows = self.runner.run(self.conn.fetch("select id, u::text as row from public.users u"))
        return {r["id"]: r["row"] for r in rows}

    def inbox_count(self) -> int:
        return int(self.runner.run(self.conn.fetchval("select count(*) from clerk_sync.inbox")))

    def close(self) -> None:
        self.runner.run(self.conn.close())
        self.runner.close()


@pytest.fixture
def database(db: str) -> Iterator[Database]:
    database = Database(db)
    try:
        yield database
    finally:
        database.close()


# --- the Svix scheme, as the oracle -----------------------------------------------------------


def effective(headers: dict[str, str | bytes], name: str) -> str | None:
    """The svix- header, else its webhook- twin; None when both are there and disagree (the
    request is then malformed, whatever its signature)."""
    svix_value, twin = (headers.get(f"{prefix}-{name}") for prefix in ("svix", "webhook"))
    svix_value, twin = (
        v.decode("latin-1") if isinstance(v, bytes) else v for v in (svix_value, twin)
    )
    if svix_value is not None and twin is not None and svix_value != twin:
        return None
    return svix_value if svix_value is not None else twin


def validly_signed(key: bytes, headers: dict[str, str | bytes], body: bytes) -> bool:
    """Whether a `v1` entry of the signature header is the HMAC of "id.timestamp.body" and the
    timestamp is within five minutes: what makes a delivery genuine."""
    msg_id, timestamp, signature = (effective(headers, n) for n in ("id", "timestamp", "signature"))
    if not (msg_id and timestamp and signature):
        return False
    if not (timestamp.isascii() and timestamp.isdigit()) or abs(time.time() - int(timestamp)) > 299:
        return False
    signed = msg_id.encode("latin-1", "replace") + b"." + timestamp.encode() + b"." + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return expected in signature.split()


@dataclass
class Sent:
    genuine: bool
    status: int
    payload: Any
    users_before: dict[str, str]
    users_after: dict[str, str]
    inbox_grew: bool

    @property
    def changed_users(self) -> set[str]:
        ids = set(self.users_before) | set(self.users_after)
        return {u for u in ids if self.users_before.get(u) != self.users_after.get(u)}


def send(
    client: TestClient, database: Database, key: bytes, headers: dict[str, Any], body: bytes
) -> Sent:
    before, inbox_before = database.users(), database.inbox_count()
    genuine = validly_signed(key, headers, body)
    response = client.post(WEBHOOK_PATH, content=body, headers=headers)
    try:
        payload = response.json()
    except ValueError:
        payload = response.text
    sent = Sent(
        genuine,
        response.status_code,
        payload,
        before,
        database.users(),
        database.inbox_count() > inbox_before,
    )
    outcome = payload.get("outcome") if isinstance(payload, dict) else None
    hypothesis.event(f"genuine={genuine} status={sent.status} outcome={outcome}")
    where = f"status {sent.status} {payload!r}, genuine={genuine}, headers={headers!r}, body={body[:300]!r}"
    assert sent.status < 500, f"a 5xx: {where}"
    if sent.status >= 400:
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str), where
    if genuine:
        assert sent.status in (200, 400), f"a genuine delivery answered otherwise: {where}"
    else:
        assert sent.status in (400, 401, 413, 429), f"an unverified delivery answered: {where}"
        assert not sent.changed_users, f"an unverified delivery changed public.users: {where}"
        assert not sent.inbox_grew, f"an unverified delivery reached the inbox: {where}"
    if sent.status == 200:
        assert payload.get("outcome") in ("applied", "duplicate", "stale", "ignored"), where
    if sent.changed_users:
        event = json.loads(body)
        data = event["data"]
        assert sent.status == 200 and payload["outcome"] in ("applied", "stale"), where
        assert event["type"] in (
            "user.created",
            "user.updated",
            "user.deleted",
            "session.created",
            "user.signed_in",
        ), where
        user = data.get("user") if isinstance(data.get("user"), dict) else {}
        owners = {data.get("id"), data.get("user_id"), user.get("id")}
        assert sent.changed_users <= owners, f"rows of other users changed: {where}"
    for row in sent.users_after.values():
        assert PRIVATE not in row, f"private_metadata stored: {row}"
    return sent


def signed(key: bytes, body: bytes, msg_id: str | None = None) -> dict[str, str]:
    return svix.svix_headers(key, msg_id or svix.new_svix_id(), int(time.time()), body)


# --- strategies --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
header_values = (
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
    | st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F))
    | st.integers(min_value=0, max_value=2 * int(time.time())).map(str)
    | st.sampled_from(["", " ", "v1,", "v1", ",", "v1,=", "v1,AAAA", "v2,abc v1a,xyz", "0" * 30])
)
raw_bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([b"", b"{}", b"[]", b"null", b'{"type":"user.created"}', b"NaN"])
)
event_types = st.sampled_from(
    [
        "user.created",
        "user.updated",
        "user.deleted",
        "session.created",
        "user.signed_in",
        "organization.created",
        "organizationMembership.created",
        "email.created",
    ]
) | st.text(max_size=12)
ms_values = (
    st.integers(min_value=0, max_value=MAX_MS)
    | st.sampled_from([0, 1, MAX_MS, MAX_MS + 1, -1, 2**63, 1_700_000_000_000])
    | json_scalars
)
user_ids = st.sampled_from(USER_IDS) | json_scalars
email_entries = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["idn_a", "idn_b"]) | json_scalars,
        "email_address": st.emails() | json_values,
        "verification": st.none()
        | st.fixed_dictionaries(
            {"status": st.sampled_from(["verified", "unverified"]) | json_values}
        )
        | json_values,
    }
)
user_data = st.fixed_dictionaries(
    {"object": st.just("user"), "id": user_ids, "updated_at": ms_values},
    optional={
        "created_at": ms_values,
        "last_sign_in_at": ms_values,
        "banned": st.booleans() | json_scalars,
        "username": json_values,
        "first_name": st.text() | json_values,
        "last_name": json_scalars,
        "image_url": json_scalars,
        "external_id": json_scalars,
        "public_metadata": json_values,
        "unsafe_metadata": json_values,
        "private_metadata": st.just({"k": PRIVATE}),
        "email_addresses": st.lists(email_entries, max_size=3) | json_values,
        "primary_email_address_id": st.sampled_from(["idn_a", "idn_b"]) | json_scalars,
        "phone_numbers": st.lists(
            st.fixed_dictionaries({"id": st.just("idn_p"), "phone_number": json_scalars}),
            max_size=2,
        )
        | json_values,
        "primary_phone_number_id": st.just("idn_p") | json_scalars,
        "deleted": st.booleans(),
    },
)
session_data = st.fixed_dictionaries(
    {"object": st.just("session"), "user_id": user_ids, "created_at": ms_values},
    optional={
        "id": st.text(max_size=10),
        "user": st.none()
        | st.fixed_dictionaries({"id": user_ids}, optional={"last_sign_in_at": ms_values})
        | json_values,
    },
)
organization_data = st.fixed_dictionaries(
    {"object": st.just("organization"), "id": user_ids, "updated_at": ms_values},
    optional={
        "name": json_values,
        "slug": json_scalars,
        "max_allowed_memberships": ms_values | json_scalars,
        "admin_delete_enabled": st.booleans() | json_scalars,
        "public_metadata": json_values,
        "private_metadata": st.just({"k": PRIVATE}),
        "created_at": ms_values,
    },
)
good_ms = (
    st.integers(min_value=1_600_000_000_000, max_value=1_900_000_000_000)
    | st.integers(min_value=0, max_value=MAX_MS)
    | st.sampled_from([0, MAX_MS])
)
good_ids = st.sampled_from(USER_IDS) | st.integers(0, 10**9).map(lambda n: f"user_fz{n}")
good_user_data = user_data.flatmap(
    lambda d: st.fixed_dictionaries(
        {
            "id": good_ids,
            "updated_at": good_ms,
            "created_at": good_ms | st.none(),
            "last_sign_in_at": good_ms | st.none(),
            "banned": st.booleans(),
        }
    ).map(lambda good: {**d, **good})
)
clerk_events = (
    # Profiles that pass the parser, with arbitrary values wherever the parser does not look.
    st.fixed_dictionaries(
        {"type": st.sampled_from(["user.created", "user.updated"]), "data": good_user_data}
    )
    | st.fixed_dictionaries(
        {
            "type": st.just("session.created"),
            "data": session_data.flatmap(
                lambda d: st.fixed_dictionaries({"user_id": good_ids, "created_at": good_ms}).map(
                    lambda good: {**d, **good}
                )
            ),
        }
    )
    | st.fixed_dictionaries(
        {
            "type": st.just("user.deleted"),
            "data": st.fixed_dictionaries({"id": good_ids | user_ids, "deleted": st.booleans()}),
        }
    )
    # Organizations and memberships that pass the parser, arbitrary wherever it does not look.
    | st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "organization.created",
                    "organization.deleted",
                    "organizationMembership.updated",
                    "organizationMembership.deleted",
                ]
            ),
            "data": organization_data.flatmap(
                lambda org: st.fixed_dictionaries(
                    {
                        "id": good_ids,
                        "updated_at": good_ms,
                        "organization": st.just(org),
                        "public_user_data": st.fixed_dictionaries({"user_id": good_ids}),
                    },
                    optional={
                        "role": json_values,
                        "permissions": json_values,
                        "public_metadata": json_values,
                        "created_at": ms_values,
                    },
                ).map(lambda membership: {**org, **membership})
            ),
        }
    )
    # Anything goes.
    | st.fixed_dictionaries(
        {"type": event_types, "data": user_data | session_data | json_values},
        optional={"object": st.just("event"), "timestamp": ms_values},
    )
)


# --- the tests ---------------------------------------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    body=raw_bodies | clerk_events.map(lambda e: json.dumps(e).encode()),
)
def test_arbitrary_headers_and_bodies(
    client: TestClient,
    database: Database,
    secret: tuple[str, bytes],
    data: st.DataObject,
    body: bytes,
) -> None:
    """Headers built from a genuine set by dropping, replacing and adding svix-*/webhook-*
    headers with arbitrary values (or from nothing): whatever is not genuine writes nothing."""
    key = secret[1]
    start = data.draw(st.sampled_from(["genuine", "other_body", "empty"]), label="start")
    headers: dict[str, str | bytes] = {}
    if start == "genuine":
        headers.update(signed(key, body))
    elif start == "other_body":
        headers.update(signed(key, body + b" "))
    for name in data.draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=4), label="drop"):
        headers.pop(name, None)
    replace = data.draw(
        st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=4), label="replace"
    )
    headers.update(replace)
    if data.draw(st.booleans(), label="twins"):  # the same values under the other prefix
        for name in HEADER_NAMES:
            twin = name.replace("svix-", "webhook-") if name.startswith("svix-") else None
            if twin and name in headers and twin not in headers:
                headers[twin] = headers[name]
    send(client, database, key, headers, body)


@FUZZ
@given(body=raw_bodies | clerk_events.map(lambda e: json.dumps(e).encode()))
def test_signed_arbitrary_bodies(
    client: TestClient, database: Database, secret: tuple[str, bytes], body: bytes
) -> None:
    """Correctly signed bodies of any shape: a 200 or a 400 (never a 5xx), and only a user
    event changes public.users."""
    sent = send(client, database, secret[1], signed(secret[1], body), body)
    assert sent.genuine
    again = send(client, database, secret[1], signed(secret[1], body), body)
    assert again.status == sent.status, (sent, again)
    assert not again.changed_users, f"a re-send changed public.users: {body!r}"


def ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


@FUZZ
@given(event=clerk_events)
def test_signed_clerk_shaped_events(
    client: TestClient, database: Database, secret: tuple[str, bytes], event: dict[str, Any]
) -> None:
    """Clerk-shaped events with arbitrary values, correctly signed: an applied profile lands on
    its own row with its own updated_at."""
    body = json.dumps(event).encode()
    msg_id = "msg_" + secrets.token_hex(10)
    sent = send(client, database, secret[1], signed(secret[1], body, msg_id), body)
    assert sent.genuine
    if (
        sent.status == 200
        and sent.payload["outcome"] == "applied"
        and event["type"] in ("user.created", "user.updated")
    ):
        data = event["data"]
        rows = support_rows(database, data["id"])
        assert rows and rows[0]["updated_at"] == ms(data["updated_at"]), (event, rows)
    replay = send(client, database, secret[1], signed(secret[1], body, msg_id), body)
    if sent.status == 200:
        assert replay.status == 200 and replay.payload["outcome"] == "duplicate", (event, replay)
    assert not replay.changed_users
    for table in ("organizations", "organization_memberships"):
        rows = database.runner.run(database.conn.fetch(f"select * from public.{table}"))
        assert not any(PRIVATE in str(dict(row)) for row in rows), f"private_metadata in {table}"


def support_rows(database: Database, user_id: str) -> list[Any]:
    return list(
        database.runner.run(
            database.conn.fetch("select * from public.users where id = $1", user_id)
        )
    )
