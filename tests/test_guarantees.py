"""The contract's four database guarantees, against a real PostgreSQL, through PostgresStore.

Every write goes through `public.clerk_sync_apply`, called here exactly as the server calls it:
`PostgresStore.apply(svix_id, parse_event(body))`. The first tests pin each rule with a small,
hand-written sequence; the property-based tests then check that any order, repetition or
concurrency of a set of deliveries ends in the rows an independent Python model of the contract
predicts.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clerk_sync.events import parse_event
from clerk_sync.storage.postgres import PostgresStore
from tests import support

BASE_MS = 1_716_883_200_000  # 2024-05-28T08:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PROFILE_COLUMNS = (
    "email",
    "email_verified",
    "phone",
    "username",
    "first_name",
    "last_name",
    "image_url",
    "external_id",
    "public_metadata",
    "unsafe_metadata",
    "banned",
    "created_at",
    "updated_at",
)

USERS_SQL = """
select id, email, email_verified, phone, username, first_name, last_name, image_url,
       external_id, public_metadata, unsafe_metadata, banned, created_at, updated_at,
       last_sign_in_at, deleted_at
from public.users order by id
"""


@pytest.fixture
def db(columns_db: str) -> str:
    """These tests run with custom columns declared (tests/fixtures/custom-columns.toml), which
    must change none of the guarantees, and each agrees with its source after every test."""
    return columns_db


def ms(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value)


# --- applying events through the store --------------------------------------------------------

Delivery = tuple[str, dict[str, Any] | bytes]


def _body(event: dict[str, Any] | bytes) -> bytes:
    return event if isinstance(event, bytes) else support.dumps(event)


async def _apply_all(dsn: str, deliveries: Sequence[Delivery], delete_mode: str) -> list[str]:
    store = await PostgresStore.open(dsn, delete_mode=delete_mode)
    try:
        outcomes = []
        for svix_id, event in deliveries:
            outcome = await store.apply(svix_id, parse_event(_body(event)))
            outcomes.append(outcome.value)
        return outcomes
    finally:
        await store.close()


def apply(db: str, *deliveries: Delivery, delete_mode: str = "soft") -> list[str]:
    """Apply each (svix_id, event) in turn, in one store; the outcomes, as strings."""
    return asyncio.run(_apply_all(db, deliveries, delete_mode))


def apply_one(
    db: str, svix_id: str, event: dict[str, Any] | bytes, delete_mode: str = "soft"
) -> str:
    return apply(db, (svix_id, event), delete_mode=delete_mode)[0]


def users(db: str) -> dict[str, dict[str, Any]]:
    """public.users by id, jsonb decoded."""
    rows = {}
    for row in support.fetch(db, USERS_SQL):
        for column in ("public_metadata", "unsafe_metadata"):
            if isinstance(row[column], str):
                row[column] = json.loads(row[column])
        rows[row.pop("id")] = row
    return rows


def user(db: str, user_id: str) -> dict[str, Any] | None:
    return users(db).get(user_id)


def tombstones(db: str) -> dict[str, dict[str, Any]]:
    rows = support.fetch(db, "select user_id, deleted_at, svix_id from clerk_sync.tombstones")
    return {r["user_id"]: r for r in rows}


def inbox(db: str) -> dict[str, dict[str, Any]]:
    rows = support.fetch(db, "select svix_id, event_type, user_id, outcome from clerk_sync.inbox")
    return {r["svix_id"]: r for r in rows}


def db_now(db: str) -> datetime:
    return support.fetch(db, "select now() as now")[0]["now"]


# --- newest updated_at wins -------------------------------------------------------------------


def test_newest_updated_at_wins_in_any_order(db: str) -> None:
    u = "user_newest"
    v1 = support.user_event("user.created", u, BASE_MS, first_name="One", email="one@x.io")
    v2 = support.user_event("user.updated", u, BASE_MS + 2000, first_name="Two", email="two@x.io")
    v3 = support.user_event("user.updated", u, BASE_MS + 1000, first_name="Three")

    assert apply(db, ("m1", v1), ("m2", v2), ("m3", v3)) == ["applied", "applied", "stale"]
    row = user(db, u)
    assert row is not None
    assert row["first_name"] == "Two"
    assert row["email"] == "two@x.io"
    assert row["email_verified"] is True
    assert row["updated_at"] == ms(BASE_MS + 2000)

    # The newest arriving first: everything older is stale and changes no profile column.
    support.execute(db, support.CLEAN_SQL)
    assert apply(db, ("m2", v2), ("m3", v3), ("m1", v1)) == ["applied", "stale", "stale"]
    assert user(db, u) == row


def test_equal_updated_at_is_stale(db: str) -> None:
    u = "user_equal"
    first = support.user_event("user.created", u, BASE_MS, first_name="First", email="a@x.io")
    same = support.user_event(
        "user.updated", u, BASE_MS, first_name="Second", email="b@x.io", banned=True
    )
    assert apply_one(db, "m1", first) == "applied"
    before = user(db, u)
    assert apply_one(db, "m2", same) == "stale"
    assert user(db, u) == before
    assert before is not None and before["first_name"] == "First" and before["banned"] is False


def test_profile_columns_follow_the_contract(db: str) -> None:
    """Every profile column from the winning event; private_metadata never stored."""
    u = "user_columns"
    event = support.user_event(
        "user.created",
        u,
        BASE_MS + 5,
        email=None,
        first_name="Ada",
        username="ada",
        image_url="https://img.clerk.com/ada",
        external_id="ext_1",
        primary_email_address_id="idn_b",
        primary_phone_number_id="idn_p2",
        email_addresses=[
            {"id": "idn_a", "email_address": "a@x.io", "verification": {"status": "verified"}},
            {"id": "idn_b", "email_address": "b@x.io", "verification": {"status": "unverified"}},
        ],
        phone_numbers=[
            {"id": "idn_p1", "phone_number": "+15550000001"},
            {"id": "idn_p2", "phone_number": "+15550000002"},
        ],
        public_metadata={"plan": "pro"},
        unsafe_metadata=None,
        banned=True,
        created_at=BASE_MS - 1,
        last_sign_in_at=BASE_MS + 3,
    )
    assert apply_one(db, "m1", event) == "applied"
    assert user(db, u) == {
        "email": "b@x.io",
        "email_verified": False,
        "phone": "+15550000002",
        "username": "ada",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "image_url": "https://img.clerk.com/ada",
        "external_id": "ext_1",
        "public_metadata": {"plan": "pro"},
        "unsafe_metadata": {},
        "banned": True,
        "created_at": ms(BASE_MS - 1),
        "updated_at": ms(BASE_MS + 5),
        "last_sign_in_at": ms(BASE_MS + 3),
        "deleted_at": None,
    }
    stored = support.fetch(db, "select row_to_json(u)::text as j from public.users u")[0]["j"]
    assert "never in public.users" not in stored


@pytest.mark.parametrize(
    "value",
    [
        1_716_883_200_123,  # 2024
        4_102_444_800_001,  # 2100
        253_402_300_799_999,  # 9999-12-31T23:59:59.999Z, the last millisecond Python can hold
    ],
)
def test_millisecond_times_are_stored_exactly(db: str, value: int) -> None:
    u = "user_exact"
    event = support.user_event("user.created", u, value, created_at=value, last_sign_in_at=value)
    assert apply_one(db, "m1", event) == "applied"
    row = user(db, u)
    assert row is not None
    assert (row["created_at"], row["updated_at"], row["last_sign_in_at"]) == (ms(value),) * 3


# --- deletes are final ------------------------------------------------------------------------


def test_delete_is_a_tombstone_nothing_brings_the_user_back(db: str) -> None:
    u = "user_gone"
    created = support.user_event(
        "user.created", u, BASE_MS, first_name="Here", last_sign_in_at=BASE_MS
    )
    assert apply_one(db, "m1", created) == "applied"
    before = db_now(db)
    assert apply_one(db, "m2", support.deleted_event(u)) == "applied"
    after = db_now(db)
    deleted = user(db, u)
    assert deleted is not None
    assert deleted["deleted_at"] is not None and before <= deleted["deleted_at"] <= after

    later = [
        ("m3", support.user_event("user.updated", u, BASE_MS + 10_000, first_name="Back")),
        ("m4", support.user_event("user.created", u, BASE_MS + 20_000, first_name="Again")),
        ("m5", support.session_event(u, BASE_MS + 30_000)),
        ("m6", support.session_event(u, BASE_MS + 30_000, last_sign_in_at=BASE_MS + 40_000)),
        ("m7", support.deleted_event(u)),
    ]
    assert apply(db, *later) == ["stale"] * len(later)
    assert user(db, u) == deleted  # not a single column moved, deleted_at included
    assert set(tombstones(db)) == {u}
    assert tombstones(db)[u]["svix_id"] == "m2"


def test_delete_of_an_unknown_user_is_applied_and_leaves_a_tombstone(db: str) -> None:
    u = "user_never_seen"
    assert apply_one(db, "m1", support.deleted_event(u)) == "applied"
    assert set(tombstones(db)) == {u}
    assert users(db) == {}
    assert apply(
        db,
        ("m2", support.user_event("user.created", u, BASE_MS)),
        ("m3", support.session_event(u, BASE_MS)),
        ("m4", support.user_event("user.updated", u, BASE_MS + 1)),
    ) == ["stale", "stale", "stale"]
    assert users(db) == {}
    assert inbox(db)["m1"]["outcome"] == "applied"


def test_delete_drops_a_pending_sign_in(db: str) -> None:
    u = "user_pending_then_deleted"
    assert apply_one(db, "m1", support.session_event(u, BASE_MS)) == "applied"
    assert apply_one(db, "m2", support.deleted_event(u)) == "applied"
    assert apply_one(db, "m3", support.user_event("user.created", u, BASE_MS)) == "stale"
    assert users(db) == {}


def test_soft_delete_keeps_the_row_with_deleted_at(db: str) -> None:
    u = "user_soft"
    other = "user_bystander"
    apply(
        db,
        ("m1", support.user_event("user.created", u, BASE_MS, email="s@x.io")),
        ("m2", support.user_event("user.created", other, BASE_MS)),
    )
    before = user(db, u)
    assert apply_one(db, "m3", support.deleted_event(u), delete_mode="soft") == "applied"
    after = user(db, u)
    assert before is not None and after is not None
    assert after["deleted_at"] is not None
    assert {k: v for k, v in after.items() if k != "deleted_at"} == {
        k: v for k, v in before.items() if k != "deleted_at"
    }
    bystander = user(db, other)
    assert bystander is not None and bystander["deleted_at"] is None


def test_hard_delete_removes_the_row_and_keeps_the_tombstone(db: str) -> None:
    u = "user_hard"
    other = "user_bystander"
    apply(
        db,
        ("m1", support.user_event("user.created", u, BASE_MS)),
        ("m2", support.user_event("user.created", other, BASE_MS)),
        delete_mode="hard",
    )
    assert apply_one(db, "m3", support.deleted_event(u), delete_mode="hard") == "applied"
    assert set(users(db)) == {other}
    assert set(tombstones(db)) == {u}
    assert apply(
        db,
        ("m4", support.user_event("user.updated", u, BASE_MS + 1000)),
        ("m5", support.session_event(u, BASE_MS + 2000)),
        ("m6", support.user_event("user.created", u, BASE_MS + 3000)),
        delete_mode="hard",
    ) == ["stale", "stale", "stale"]
    assert set(users(db)) == {other}
    # An unknown id in hard mode: applied, tombstone, no row.
    assert apply_one(db, "m7", support.deleted_event("user_x"), delete_mode="hard") == "applied"
    assert set(tombstones(db)) == {u, "user_x"}
    assert set(users(db)) == {other}


# --- last_sign_in_at only moves forward -------------------------------------------------------


def test_last_sign_in_at_only_moves_forward(db: str) -> None:
    u = "user_signin"
    t = BASE_MS
    assert (
        apply_one(db, "m1", support.user_event("user.created", u, t, last_sign_in_at=t + 5000))
        == "applied"
    )

    def lsi() -> datetime | None:
        row = user(db, u)
        assert row is not None
        return row["last_sign_in_at"]

    assert apply_one(db, "m2", support.session_event(u, t + 1000)) == "stale"
    assert lsi() == ms(t + 5000)
    assert apply_one(db, "m3", support.session_event(u, t + 9000)) == "applied"
    assert lsi() == ms(t + 9000)
    # A newer profile carrying an older sign-in: profile applied, sign-in kept.
    newer = support.user_event(
        "user.updated", u, t + 100, first_name="New", last_sign_in_at=t + 2000
    )
    assert apply_one(db, "m4", newer) == "applied"
    row = user(db, u)
    assert row is not None and row["first_name"] == "New" and row["last_sign_in_at"] == ms(t + 9000)
    # A newer profile with no sign-in at all: the sign-in is not erased.
    assert apply_one(db, "m5", support.user_event("user.updated", u, t + 200)) == "applied"
    assert lsi() == ms(t + 9000)
    # A stale profile still carries a sign-in time, and that is the greatest seen.
    older = support.user_event(
        "user.updated", u, t + 50, first_name="Old", last_sign_in_at=t + 12_000
    )
    assert apply_one(db, "m6", older) == "stale"
    row = user(db, u)
    assert row is not None and row["first_name"] == "Ada" and row["updated_at"] == ms(t + 200)
    assert row["last_sign_in_at"] == ms(t + 12_000)


@pytest.mark.parametrize(
    ("profile_sign_in", "session_time"),
    [
        (None, BASE_MS + 5000),
        (BASE_MS + 1000, BASE_MS + 5000),  # the session is newer
        (BASE_MS + 9000, BASE_MS + 5000),  # the profile's sign-in is newer
        (BASE_MS + 5000, BASE_MS + 5000),
    ],
)
def test_session_before_user_created_gives_the_same_row(
    db: str, profile_sign_in: int | None, session_time: int
) -> None:
    u = "user_race"
    created = support.user_event("user.created", u, BASE_MS, last_sign_in_at=profile_sign_in)
    session = support.session_event(u, session_time)

    user_first = apply(db, ("m1", created), ("m2", session))
    row_user_first = user(db, u)
    support.execute(db, support.CLEAN_SQL)
    session_first = apply(db, ("m2", session), ("m1", created))
    row_session_first = user(db, u)

    assert row_user_first is not None
    assert row_session_first == row_user_first
    expected = max(t for t in (profile_sign_in, session_time) if t is not None)
    assert row_user_first["last_sign_in_at"] == ms(expected)
    assert user_first[0] == "applied" and session_first == ["applied", "applied"]


def test_several_pending_sign_ins_keep_the_greatest(db: str) -> None:
    u = "user_pending"
    assert (
        apply(
            db,
            ("m1", support.session_event(u, BASE_MS + 3000)),
            ("m2", support.session_event(u, BASE_MS + 1000)),
            ("m3", support.session_event(u, BASE_MS + 2000)),
        )[0]
        == "applied"
    )
    assert users(db) == {}  # a sign-in alone makes no user row
    assert apply_one(db, "m4", support.user_event("user.created", u, BASE_MS)) == "applied"
    row = user(db, u)
    assert row is not None and row["last_sign_in_at"] == ms(BASE_MS + 3000)


@pytest.mark.parametrize(
    ("created_at", "user_sign_in", "expected"),
    [
        (BASE_MS + 5000, BASE_MS + 7000, BASE_MS + 7000),  # data.user.last_sign_in_at wins...
        (BASE_MS + 5000, BASE_MS + 4000, BASE_MS + 4000),  # ...even when older than created_at
        (BASE_MS + 5000, None, BASE_MS + 5000),  # else the session's created_at
    ],
)
@pytest.mark.parametrize("user_first", [True, False])
def test_session_sign_in_time_source(
    db: str, created_at: int, user_sign_in: int | None, expected: int, user_first: bool
) -> None:
    u = "user_source"
    session = support.session_event(u, created_at, last_sign_in_at=user_sign_in)
    created = support.user_event("user.created", u, BASE_MS)
    order = [("m1", created), ("m2", session)] if user_first else [("m2", session), ("m1", created)]
    assert apply(db, *order) == ["applied", "applied"]
    row = user(db, u)
    assert row is not None and row["last_sign_in_at"] == ms(expected)


def test_session_with_a_user_object_whose_sign_in_is_null_uses_created_at(db: str) -> None:
    u = "user_null_signin"
    session = support.session_event(u, BASE_MS + 5000)
    session["data"]["user"] = {"object": "user", "id": u, "last_sign_in_at": None}
    apply_one(db, "m1", support.user_event("user.created", u, BASE_MS))
    assert apply_one(db, "m2", session) == "applied"
    row = user(db, u)
    assert row is not None and row["last_sign_in_at"] == ms(BASE_MS + 5000)


def test_session_created_changes_nothing_but_last_sign_in_at(db: str) -> None:
    u = "user_only_signin"
    created = support.user_event(
        "user.created", u, BASE_MS, email="keep@x.io", first_name="Keep", public_metadata={"a": 1}
    )
    assert apply_one(db, "m1", created) == "applied"
    before = user(db, u)
    # A session whose embedded user says something else entirely (and is "newer").
    session = support.session_event(u, BASE_MS + 60_000)
    session["data"]["user"] = support.user_event(
        "user.updated", u, BASE_MS + 99_000, email="other@x.io", first_name="Other", banned=True
    )["data"]
    session["data"]["user"]["last_sign_in_at"] = None
    assert apply_one(db, "m2", session) == "applied"
    after = user(db, u)
    assert before is not None and after is not None
    assert after["last_sign_in_at"] == ms(BASE_MS + 60_000)
    assert {k: v for k, v in after.items() if k != "last_sign_in_at"} == {
        k: v for k, v in before.items() if k != "last_sign_in_at"
    }
    # And a later, older profile event is still judged against the profile's own updated_at.
    assert apply_one(db, "m3", support.user_event("user.updated", u, BASE_MS + 1)) == "applied"


# --- each svix-id at most once ----------------------------------------------------------------


def test_same_svix_id_is_applied_at_most_once(db: str) -> None:
    u = "user_dup"
    created = support.user_event("user.created", u, BASE_MS, first_name="Once")
    assert apply_one(db, "msg_same", created) == "applied"
    row = user(db, u)
    redeliveries = [
        ("msg_same", created),
        # The same svix-id with another body (newer profile, sign-in, delete): still a duplicate.
        ("msg_same", support.user_event("user.updated", u, BASE_MS + 5000, first_name="Twice")),
        ("msg_same", support.session_event(u, BASE_MS + 9000)),
        ("msg_same", support.deleted_event(u)),
    ]
    assert apply(db, *redeliveries) == ["duplicate"] * len(redeliveries)
    assert user(db, u) == row
    assert tombstones(db) == {}
    assert list(inbox(db)) == ["msg_same"]

    for svix_id, event in [
        ("msg_sess", support.session_event(u, BASE_MS + 1000)),
        ("msg_del", support.deleted_event("user_other")),
        ("msg_org", {"type": "organizationDomain.created", "object": "event", "data": {"id": "x"}}),
    ]:
        first, *again = apply(db, (svix_id, event), (svix_id, event), (svix_id, event))
        assert first in ("applied", "ignored")
        assert again == ["duplicate", "duplicate"]
    assert sorted(inbox(db)) == ["msg_del", "msg_org", "msg_same", "msg_sess"]


def test_an_ignored_type_changes_nothing(db: str) -> None:
    u = "user_ignored"
    apply_one(db, "m1", support.user_event("user.created", u, BASE_MS))
    before = users(db)
    ended = support.session_event(u, BASE_MS + 50_000)
    ended["type"] = "session.ended"
    assert apply_one(db, "m2", ended) == "ignored"
    assert users(db) == before
    assert inbox(db)["m2"]["outcome"] == "ignored"


# --- the model: what the contract says the rows must be ---------------------------------------


@dataclass(frozen=True)
class Ev:
    """One generated delivery and what the contract makes of it."""

    svix_id: str
    user_id: str
    kind: str  # "profile" | "session" | "delete" | "ignored"
    body: bytes
    updated_at: int | None = None  # profiles
    sign_in: int | None = None  # the sign-in time this event carries, if any
    profile: dict[str, Any] = field(default_factory=dict)  # the profile columns it would set


@dataclass
class ProfileSpec:
    event_type: str
    updated_at: int
    created_at: int
    last_sign_in_at: int | None
    first_name: str | None
    last_name: str | None
    username: str | None
    email: tuple[str, str] | None  # (address, verification status)
    dangling_primary_email: bool
    phone: str | None
    image_url: str | None
    external_id: str | None
    public_metadata: dict[str, Any] | None
    unsafe_metadata: dict[str, Any] | None
    banned: bool


def profile_event(svix_id: str, user_id: str, spec: ProfileSpec) -> Ev:
    email_entries = []
    primary_email = None
    if spec.email is not None:
        primary_email = "idn_e_" + user_id
        email_entries = [
            {"object": "email_address", "id": "idn_other", "email_address": "decoy@x.io",
             "verification": {"status": "verified"}},
            {"object": "email_address", "id": primary_email, "email_address": spec.email[0],
             "verification": {"status": spec.email[1], "strategy": "email_code"}},
        ]  # fmt: skip
    elif spec.dangling_primary_email:
        primary_email = "idn_missing"  # as in Clerk's own example: a primary id, no addresses
    phone_entries = []
    primary_phone = None
    if spec.phone is not None:
        primary_phone = "idn_p_" + user_id
        phone_entries = [
            {"object": "phone_number", "id": primary_phone, "phone_number": spec.phone}
        ]
    data = {
        "object": "user",
        "id": user_id,
        "username": spec.username,
        "first_name": spec.first_name,
        "last_name": spec.last_name,
        "image_url": spec.image_url,
        "external_id": spec.external_id,
        "primary_email_address_id": primary_email,
        "primary_phone_number_id": primary_phone,
        "email_addresses": email_entries,
        "phone_numbers": phone_entries,
        "public_metadata": spec.public_metadata,
        "private_metadata": {"secret": svix_id},
        "unsafe_metadata": spec.unsafe_metadata,
        "banned": spec.banned,
        "created_at": spec.created_at,
        "updated_at": spec.updated_at,
        "last_sign_in_at": spec.last_sign_in_at,
    }
    body = {"object": "event", "type": spec.event_type, "timestamp": spec.updated_at, "data": data}
    expected = {
        "email": spec.email[0] if spec.email else None,
        "email_verified": bool(spec.email and spec.email[1] == "verified"),
        "phone": spec.phone,
        "username": spec.username,
        "first_name": spec.first_name,
        "last_name": spec.last_name,
        "image_url": spec.image_url,
        "external_id": spec.external_id,
        "public_metadata": spec.public_metadata or {},
        "unsafe_metadata": spec.unsafe_metadata or {},
        "banned": spec.banned,
        "created_at": ms(spec.created_at),
        "updated_at": ms(spec.updated_at),
    }
    return Ev(
        svix_id, user_id, "profile", support.dumps(body),
        updated_at=spec.updated_at, sign_in=spec.last_sign_in_at, profile=expected,
    )  # fmt: skip


def session_ev(
    svix_id: str, user_id: str, created_at: int, user_part: str, user_sign_in: int
) -> Ev:
    """user_part: "none" (data.user null), "signed_in" (carries last_sign_in_at), "null"."""
    event = support.session_event(user_id, created_at)
    sign_in = created_at
    if user_part == "signed_in":
        event["data"]["user"] = {"object": "user", "id": user_id, "last_sign_in_at": user_sign_in}
        sign_in = user_sign_in
    elif user_part == "null":
        event["data"]["user"] = {"object": "user", "id": user_id, "last_sign_in_at": None}
    return Ev(svix_id, user_id, "session", support.dumps(event), sign_in=sign_in)


def delete_ev(svix_id: str, user_id: str) -> Ev:
    return Ev(svix_id, user_id, "delete", support.dumps(support.deleted_event(user_id)))


def ignored_ev(svix_id: str, user_id: str, event_type: str, at: int) -> Ev:
    event = support.session_event(user_id, at, last_sign_in_at=at)
    event["type"] = event_type
    return Ev(svix_id, user_id, "ignored", support.dumps(event))


@dataclass
class ModelUser:
    profile: dict[str, Any] | None = None
    sign_in: int | None = None
    deleted: bool = False


def model_rows(canonical: Iterable[Ev], delete_mode: str) -> dict[str, dict[str, Any]]:
    """Apply each event once, in the given order, by the contract's rules alone."""
    state: dict[str, ModelUser] = {}
    for ev in canonical:
        if ev.kind == "ignored":
            continue
        model = state.setdefault(ev.user_id, ModelUser())
        if model.deleted:
            continue  # the user never comes back
        if ev.kind == "delete":
            model.deleted = True
            continue
        if ev.sign_in is not None:  # the greatest sign-in seen from any event
            model.sign_in = ev.sign_in if model.sign_in is None else max(model.sign_in, ev.sign_in)
        if ev.kind == "profile":
            assert ev.updated_at is not None
            if model.profile is None or ms(ev.updated_at) > model.profile["updated_at"]:
                model.profile = ev.profile
    rows = {}
    for user_id, model in state.items():
        if model.profile is None or (model.deleted and delete_mode == "hard"):
            continue  # a sign-in alone, or a hard-deleted user, makes no row
        rows[user_id] = {
            **model.profile,
            "last_sign_in_at": None if model.sign_in is None else ms(model.sign_in),
            "deleted": model.deleted,
        }
    return rows


def arrival_model(arrivals: Sequence[Ev]) -> tuple[list[str | None], set[str]]:
    """What the contract says of each arrival (None: not pinned), and which svix-ids reached
    their user before that user's delete (the only ones that can shape the final row)."""
    seen: set[str] = set()
    deleted: set[str] = set()
    newest: dict[str, int] = {}
    outcomes: list[str | None] = []
    effective: set[str] = set()
    for ev in arrivals:
        if ev.svix_id in seen:
            outcomes.append("duplicate")
            continue
        seen.add(ev.svix_id)
        if ev.kind == "ignored":
            outcomes.append("ignored")
        elif ev.user_id in deleted:
            outcomes.append("stale")
        elif ev.kind == "delete":
            deleted.add(ev.user_id)
            effective.add(ev.svix_id)
            outcomes.append("applied")
        elif ev.kind == "profile":
            assert ev.updated_at is not None
            fresh = ev.updated_at > newest.get(ev.user_id, -1)
            newest[ev.user_id] = max(ev.updated_at, newest.get(ev.user_id, -1))
            effective.add(ev.svix_id)
            outcomes.append("applied" if fresh else "stale")
        else:
            effective.add(ev.svix_id)
            outcomes.append(None)
    return outcomes, effective


def canonical_order(events: Sequence[Ev], effective: set[str]) -> list[Ev]:
    """Generation order, keeping only the events that count, each user's delete last."""
    kept = [ev for ev in events if ev.svix_id in effective]
    return [ev for ev in kept if ev.kind != "delete"] + [ev for ev in kept if ev.kind == "delete"]


def observed_rows(db: str) -> dict[str, dict[str, Any]]:
    rows = {}
    for user_id, row in users(db).items():
        deleted_at = row.pop("deleted_at")
        rows[user_id] = {**row, "deleted": deleted_at is not None}
    return rows


# --- generating event sets ---------------------------------------------------------------------

NAMES = st.sampled_from([None, "Ada", "Grace", "Édith", "李", "O'Brien"])
METADATA = st.sampled_from([None, {}, {"plan": "pro"}, {"n": [1, 2], "x": {"y": None}}])
TIMES = st.builds(lambda s, m: BASE_MS + s * 1000 + m, st.integers(0, 40), st.integers(0, 999))


@st.composite
def profile_specs(draw: st.DrawFn, updated_at: int) -> ProfileSpec:
    return ProfileSpec(
        event_type=draw(st.sampled_from(["user.created", "user.updated"])),
        updated_at=updated_at,
        created_at=draw(st.sampled_from([BASE_MS - 86_400_000, BASE_MS - 1, BASE_MS])),
        last_sign_in_at=draw(st.none() | TIMES),
        first_name=draw(NAMES),
        last_name=draw(NAMES),
        username=draw(st.sampled_from([None, "ada", "grace_h"])),
        email=draw(st.sampled_from([None, ("a@x.io", "verified"), ("b@x.io", "unverified")])),
        dangling_primary_email=draw(st.booleans()),
        phone=draw(st.sampled_from([None, "+15550001111"])),
        image_url=draw(
            st.sampled_from([None, "https://img.clerk.com/a", "https://img.clerk.com/b"])
        ),
        external_id=draw(st.sampled_from([None, "ext_1"])),
        public_metadata=draw(METADATA),
        unsafe_metadata=draw(METADATA),
        banned=draw(st.booleans()),
    )


@st.composite
def event_sets(draw: st.DrawFn) -> list[Ev]:
    events: list[Ev] = []
    n_users = draw(st.integers(1, 3))
    for i in range(n_users):
        user_id = f"user_p{i}"
        # Distinct updated_at per user (whole seconds apart): "newest wins" is then well defined.
        seconds = draw(st.lists(st.integers(0, 20), max_size=4, unique=True))
        for j, s in enumerate(seconds):
            updated_at = BASE_MS + s * 1000 + draw(st.integers(0, 999))
            events.append(profile_event(f"msg_{i}_p{j}", user_id, draw(profile_specs(updated_at))))
        for j in range(draw(st.integers(0, 3))):
            part = draw(st.sampled_from(["none", "signed_in", "null"]))
            events.append(session_ev(f"msg_{i}_s{j}", user_id, draw(TIMES), part, draw(TIMES)))
        if draw(st.booleans()):
            events.append(delete_ev(f"msg_{i}_d", user_id))
        if draw(st.integers(0, 4)) == 0:
            kind = draw(st.sampled_from(["session.ended", "session.removed", "user.signed_out"]))
            events.append(ignored_ev(f"msg_{i}_i", user_id, kind, BASE_MS + 99_000))
    return events


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), events=event_sets(), delete_mode=st.sampled_from(["soft", "hard"]))
def test_any_order_and_repetition_ends_in_the_model_rows(
    db: str, data: st.DataObject, events: list[Ev], delete_mode: str
) -> None:
    support.execute(db, support.CLEAN_SQL)
    arrivals = list(data.draw(st.permutations(events), label="order")) if events else []
    if events:
        redeliveries = data.draw(
            st.lists(st.tuples(st.sampled_from(events), st.integers(0, 100)), max_size=6),
            label="redeliveries",
        )
        for ev, where in redeliveries:
            arrivals.insert(where % (len(arrivals) + 1), ev)

    outcomes = apply(db, *((ev.svix_id, ev.body) for ev in arrivals), delete_mode=delete_mode)

    expected_outcomes, effective = arrival_model(arrivals)
    for ev, got, expected in zip(arrivals, outcomes, expected_outcomes, strict=True):
        if expected is not None:
            assert got == expected, (ev.svix_id, ev.kind)
        else:
            assert got in ("applied", "stale"), ev.svix_id
    assert observed_rows(db) == model_rows(canonical_order(events, effective), delete_mode)

    recorded = inbox(db)
    assert set(recorded) == {ev.svix_id for ev in events}
    first_outcome: dict[str, str] = {}
    for ev, got in zip(arrivals, outcomes, strict=True):
        first_outcome.setdefault(ev.svix_id, got)
    assert {k: v["outcome"] for k, v in recorded.items()} == first_outcome
    assert set(tombstones(db)) == {ev.user_id for ev in events if ev.kind == "delete"}


# --- concurrency --------------------------------------------------------------------------------


def random_events(rng: random.Random, user_id: str, prefix: str, *, delete: bool) -> list[Ev]:
    events: list[Ev] = []
    for j, s in enumerate(rng.sample(range(60), 6)):
        spec = ProfileSpec(
            event_type=rng.choice(["user.created", "user.updated"]),
            updated_at=BASE_MS + s * 1000 + rng.randrange(1000),
            created_at=BASE_MS,
            last_sign_in_at=rng.choice([None, BASE_MS + rng.randrange(90_000)]),
            first_name=f"N{s}",
            last_name=rng.choice([None, "L"]),
            username=f"u{s}",
            email=rng.choice([None, (f"{s}@x.io", "verified"), (f"{s}@x.io", "unverified")]),
            dangling_primary_email=False,
            phone=rng.choice([None, "+15550001111"]),
            image_url=None,
            external_id=None,
            public_metadata={"s": s},
            unsafe_metadata=None,
            banned=rng.random() < 0.3,
        )
        events.append(profile_event(f"{prefix}_p{j}", user_id, spec))
    for j in range(5):
        part = rng.choice(["none", "signed_in", "null"])
        events.append(
            session_ev(
                f"{prefix}_s{j}", user_id, BASE_MS + rng.randrange(90_000), part,
                BASE_MS + rng.randrange(90_000),
            )
        )  # fmt: skip
    if delete:
        events.append(delete_ev(f"{prefix}_d", user_id))
    events.append(ignored_ev(f"{prefix}_i", user_id, "session.ended", BASE_MS + 99_000))
    return events


async def _apply_concurrently(
    dsn: str, arrivals: list[Ev], workers: int, pool_size: int
) -> list[tuple[Ev, str]]:
    store = await PostgresStore.open(dsn, pool_size=pool_size)
    queue: asyncio.Queue[Ev] = asyncio.Queue()
    for ev in arrivals:
        queue.put_nowait(ev)
    results: list[tuple[Ev, str]] = []

    async def worker() -> None:
        while not queue.empty():
            ev = queue.get_nowait()
            outcome = await store.apply(ev.svix_id, parse_event(ev.body))
            results.append((ev, outcome.value))

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await store.close()
    return results


@pytest.mark.parametrize("seed", range(20))
def test_concurrent_deliveries_end_in_the_model_rows(db: str, seed: int) -> None:
    rng = random.Random(seed)
    live = ["user_c0", "user_c1", "user_c2"]
    doomed = "user_c3"
    events: list[Ev] = []
    for n, user_id in enumerate([*live, doomed]):
        events += random_events(rng, user_id, f"msg_{n}", delete=user_id == doomed)
    events.append(delete_ev("msg_unknown_d", "user_c4"))

    arrivals = events[:]
    rng.shuffle(arrivals)
    # Users whose first sign-in and user.created arrive at the same moment (the pending race).
    for k in range(6):
        user_id = f"user_pair{k}"
        live.append(user_id)
        pair = [
            random_events(rng, user_id, f"msg_pair{k}", delete=False)[0],
            session_ev(f"msg_pair{k}_s", user_id, BASE_MS + 95_000, "none", 0),
        ]
        rng.shuffle(pair)
        events += pair
        where = rng.randrange(len(arrivals) + 1)
        arrivals[where:where] = pair
    # Redeliveries racing each other: runs of the same svix-id, side by side in the queue.
    for ev in rng.sample(events, 12):
        where = rng.randrange(len(arrivals) + 1)
        arrivals[where:where] = [ev] * rng.randint(2, 8)

    results = asyncio.run(_apply_concurrently(db, arrivals, workers=8, pool_size=4))
    assert len(results) == len(arrivals)

    by_svix: dict[str, list[str]] = {}
    for ev, outcome in results:
        by_svix.setdefault(ev.svix_id, []).append(outcome)
    for svix_id, got in by_svix.items():
        first = [o for o in got if o != "duplicate"]
        assert len(first) == 1, (svix_id, got)  # applied (or judged) exactly once
    recorded = inbox(db)
    assert sorted(recorded) == sorted(ev.svix_id for ev in events)
    assert all(
        recorded[s]["outcome"] == next(o for o in got if o != "duplicate")
        for s, got in by_svix.items()
    )

    rows = observed_rows(db)
    live_events = [ev for ev in events if ev.user_id in live]
    assert {u: rows.get(u) for u in live} == {
        u: model_rows(live_events, "soft").get(u) for u in live
    }
    for u in live:  # the newest profile can never be stale
        newest = max((ev for ev in events if ev.user_id == u and ev.kind == "profile"),
                     key=lambda ev: ev.updated_at or 0)  # fmt: skip
        assert [o for o in by_svix[newest.svix_id] if o != "duplicate"] == ["applied"]

    # The deleted user: which events beat the delete is up to the race, but the row (if any)
    # is marked deleted and holds one of its own profiles, and nothing after the delete counted.
    assert set(tombstones(db)) == {doomed, "user_c4"}
    assert [o for o in by_svix["msg_3_d"] if o != "duplicate"] == ["applied"]
    if doomed in rows:
        row = rows[doomed]
        assert row["deleted"] is True
        own = [ev.profile for ev in events if ev.user_id == doomed and ev.kind == "profile"]
        assert {k: row[k] for k in PROFILE_COLUMNS} in own
    assert "user_c4" not in rows


# --- one batch ----------------------------------------------------------------------------------


def apply_as_one_batch(db: str, arrivals: Sequence[Ev], delete_mode: str) -> list[str]:
    """All arrivals in a single call of the batch function: one transaction, as group commit
    sends deliveries that arrive together."""

    async def go() -> list[str]:
        conn = await asyncpg.connect(db)
        try:
            rows = await conn.fetch(
                "select event_outcome from public.clerk_sync_apply_batch($1::text[], "
                "$2::text[]::jsonb[], $3) order by event_index",
                [ev.svix_id for ev in arrivals],
                [ev.body.decode() for ev in arrivals],
                delete_mode,
            )
            return [row[0] for row in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    events=event_sets(),
    delete_mode=st.sampled_from(["soft", "hard"]),
    split=st.integers(0, 20),
)
def test_a_batch_ends_as_one_by_one_would(
    db: str, data: st.DataObject, events: list[Ev], delete_mode: str, split: int
) -> None:
    """The same guarantees when deliveries share a transaction: the arrivals, with
    redeliveries, go in two batches (the first may be empty), and every outcome and row is
    what applying them one after another gives."""
    support.execute(db, support.CLEAN_SQL)
    arrivals = list(data.draw(st.permutations(events), label="order")) if events else []
    redeliveries = data.draw(
        st.lists(st.tuples(st.sampled_from(events), st.integers(0, 100)), max_size=6)
        if events
        else st.just([]),
        label="redeliveries",
    )
    for ev, where in redeliveries:
        arrivals.insert(where % (len(arrivals) + 1), ev)
    cut = split % (len(arrivals) + 1)

    outcomes = apply_as_one_batch(db, arrivals[:cut], delete_mode) + apply_as_one_batch(
        db, arrivals[cut:], delete_mode
    )

    expected_outcomes, effective = arrival_model(arrivals)
    for ev, got, expected in zip(arrivals, outcomes, expected_outcomes, strict=True):
        if expected is not None:
            assert got == expected, (ev.svix_id, ev.kind)
        else:
            assert got in ("applied", "stale"), ev.svix_id
    assert observed_rows(db) == model_rows(canonical_order(events, effective), delete_mode)
    assert {k: v["outcome"] for k, v in inbox(db).items()} == {
        ev.svix_id: got
        for ev, got in reversed(list(zip(arrivals, outcomes, strict=True)))
        if got != "duplicate"
    }
    assert set(tombstones(db)) == {ev.user_id for ev in events if ev.kind == "delete"}

    # And exactly what one-by-one delivery gives, outcome for outcome, row for row.
    rows_batched = observed_rows(db)
    support.execute(db, support.CLEAN_SQL)
    one_by_one = apply(db, *((ev.svix_id, ev.body) for ev in arrivals), delete_mode=delete_mode)
    assert outcomes == one_by_one
    assert observed_rows(db) == rows_batched
