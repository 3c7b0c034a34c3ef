"""Organizations, memberships and invitations (the contract's v2 section), through the webhook:
signed deliveries into public.organizations, public.organization_memberships and
public.organization_invitations. The first tests pin the cases that break hand-written handlers;
the property test then checks that random streams of user, organization, membership and
invitation events, repeated and shuffled, end in the rows a model of the contract predicts,
whether applied one by one or in batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import clerk_sync
from clerk_sync.app import create_app_from_settings
from clerk_sync.settings import Settings
from tests import support

ROUTE = "/api/webhooks/clerk"
EXAMPLES_DIR = Path(clerk_sync.__file__).parent / "examples"
T = 1_716_883_200_000  # 2024-05-28T08:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ORG_SQL = """
select id, name, slug, image_url, created_by, public_metadata, max_allowed_memberships,
       admin_delete_enabled, created_at, updated_at, deleted_at
from public.organizations order by id
"""
MEMBER_SQL = """
select id, organization_id, user_id, role, permissions, public_metadata, created_at, updated_at,
       deleted_at
from public.organization_memberships order by id
"""
INVITATION_SQL = """
select id, organization_id, email_address, role, status, inviter_id, user_id, public_metadata,
       expires_at, created_at, updated_at, deleted_at
from public.organization_invitations order by id
"""


@pytest.fixture
def db(columns_db: str) -> str:
    """These tests run with custom columns declared (tests/fixtures/custom-columns.toml), which
    must change none of the guarantees, and each agrees with its source after every test."""
    return columns_db


def ms(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value)


def deliver(client: TestClient, key: bytes, event: dict[str, Any] | bytes, svix_id: str) -> str:
    body = event if isinstance(event, bytes) else support.dumps(event)
    response = client.post(ROUTE, content=body, headers=support.signed_headers(key, body, svix_id))
    assert response.status_code == 200, response.text
    outcome: str = response.json()["outcome"]
    return outcome


def orgs(db: str) -> dict[str, dict[str, Any]]:
    return {r.pop("id"): r for r in support.fetch(db, ORG_SQL)}


def members(db: str) -> dict[str, dict[str, Any]]:
    return {r.pop("id"): r for r in support.fetch(db, MEMBER_SQL)}


def invitations(db: str) -> dict[str, dict[str, Any]]:
    return {r.pop("id"): r for r in support.fetch(db, INVITATION_SQL)}


def live(db: str) -> dict[str, tuple[str, str, str | None]]:
    return {
        k: (r["organization_id"], r["user_id"], r["role"])
        for k, r in members(db).items()
        if r["deleted_at"] is None
    }


def tombstoned(db: str) -> tuple[set[str], set[str]]:
    o = support.fetch(db, "select organization_id from clerk_sync.organization_tombstones")
    m = support.fetch(db, "select membership_id from clerk_sync.membership_tombstones")
    return {r["organization_id"] for r in o}, {r["membership_id"] for r in m}


@pytest.fixture
def hard_client(db: str, secret: tuple[str, bytes], tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        webhook_secret=secret[0], database_url=db, data_dir=tmp_path, delete_mode="hard"
    )
    with TestClient(create_app_from_settings(settings, db)) as test_client:
        yield test_client


def org_ev(event_type: str, org_id: str, at: int, **data: Any) -> dict[str, Any]:
    return support.organization_event(event_type, org_id, at, **data)


def mem_ev(event_type: str, mid: str, org_id: str, user_id: str, at: int, **kw: Any) -> Any:
    return support.membership_event(event_type, mid, org_id, user_id, at, **kw)


def inv_ev(action: str, inv_id: str, org_id: str, at: int, **kw: Any) -> dict[str, Any]:
    return support.invitation_event(f"organizationInvitation.{action}", inv_id, org_id, at, **kw)


# --- Clerk's examples ---------------------------------------------------------------------------


def example(name: str) -> bytes:
    return (EXAMPLES_DIR / f"{name}.json").read_bytes()


def test_the_examples_are_applied_in_any_order(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    assert deliver(client, key, example("organizationMembership.updated"), "m1") == "applied"
    assert deliver(client, key, example("organization.created"), "m2") == "stale"
    assert deliver(client, key, example("organizationMembership.created"), "m3") == "stale"
    assert deliver(client, key, example("organization.updated"), "m4") == "stale"
    org_id, mid = "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S", "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
    row = orgs(db)[org_id]
    assert row["name"] == "Acme Corp" and row["updated_at"] == ms(1716883500000)
    assert row["deleted_at"] is None
    member = members(db)[mid]
    assert member["role"] == "org:admin" and member["user_id"] == "user_2h8op3Isl1QR7tKu5FGNfaLKEoU"
    assert member["permissions"][-1] == "org:members:manage"
    # The deleted example's updated_at is older than the update's: the delete still wins.
    assert deliver(client, key, example("organizationMembership.deleted"), "m5") == "applied"
    assert members(db)[mid]["deleted_at"] is not None
    assert deliver(client, key, example("organization.deleted"), "m6") == "applied"
    assert orgs(db)[org_id]["deleted_at"] is not None
    assert deliver(client, key, example("organization.deleted"), "m6") == "duplicate"
    assert deliver(client, key, example("organization.deleted"), "m7") == "stale"
    assert deliver(client, key, example("organizationMembership.updated"), "m8") == "stale"
    inbox = support.fetch(db, "select svix_id, user_id, outcome from clerk_sync.inbox")
    assert {r["svix_id"]: r["user_id"] for r in inbox}["m1"] == "user_2h8op3Isl1QR7tKu5FGNfaLKEoU"
    assert tombstoned(db) == ({org_id}, {mid})


def test_private_metadata_never_reaches_a_public_table(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    deliver(client, secret[1], org_ev("organization.created", "org_p", T), "m1")
    deliver(client, secret[1], mem_ev("organizationMembership.created", "mem_p", "org_p",
                                      "user_p", T, org_updated_at=T + 1), "m2")  # fmt: skip
    text = json.dumps([orgs(db), members(db)], default=str)
    assert "never in" not in text and "private" not in text


# --- the cases that break hand-written handlers ------------------------------------------------


def test_a_membership_before_its_organization_and_its_user(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    created = mem_ev("organizationMembership.created", "mem_1", "org_1", "user_1", T,
                     org_updated_at=T, name="Embedded")  # fmt: skip
    assert deliver(client, key, created, "m1") == "applied"
    assert orgs(db)["org_1"]["name"] == "Embedded"
    assert live(db) == {"mem_1": ("org_1", "user_1", "org:member")}
    assert support.fetch(db, "select id from public.users") == []
    # The organization's own (older or equal) event is stale; a newer one wins.
    assert deliver(client, key, org_ev("organization.created", "org_1", T, name="Old"), "m2") == (
        "stale"
    )
    assert deliver(
        client, key, org_ev("organization.updated", "org_1", T + 5, name="New"), "m3"
    ) == ("applied")
    # The user arrives: the membership was kept and joins.
    user = support.user_event("user.created", "user_1", T)
    assert deliver(client, key, user, "m4") == "applied"
    joined = support.fetch(
        db,
        "select u.id from public.users u join public.organization_memberships m on m.user_id = u.id",
    )
    assert joined == [{"id": "user_1"}]
    # A membership whose own update is stale still writes a newer embedded organization.
    again = mem_ev("organizationMembership.created", "mem_1", "org_1", "user_1", T,
                   org_updated_at=T + 9, name="Newest")  # fmt: skip
    assert deliver(client, key, again, "m5") == "applied"
    assert orgs(db)["org_1"]["name"] == "Newest"
    assert live(db) == {"mem_1": ("org_1", "user_1", "org:member")}


def test_updated_before_created_and_roles_out_of_order(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    admin = mem_ev("organizationMembership.updated", "mem_r", "org_r", "user_r", T + 2,
                   role="org:admin")  # fmt: skip
    member = mem_ev("organizationMembership.updated", "mem_r", "org_r", "user_r", T + 1,
                    role="org:billing")  # fmt: skip
    created = mem_ev("organizationMembership.created", "mem_r", "org_r", "user_r", T)
    assert deliver(client, key, admin, "m1") == "applied"
    assert deliver(client, key, created, "m2") == "stale"
    assert deliver(client, key, member, "m3") == "stale"
    assert deliver(client, key, admin, "m4") == "stale"  # equal updated_at, another svix-id
    assert live(db) == {"mem_r": ("org_r", "user_r", "org:admin")}
    assert members(db)["mem_r"]["updated_at"] == ms(T + 2)


def test_deletes_win_without_or_with_an_older_updated_at(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    deliver(client, key, mem_ev("organizationMembership.updated", "mem_d", "org_d", "user_d",
                                T + 10, org_updated_at=T + 10), "m1")  # fmt: skip
    old_delete = mem_ev("organizationMembership.deleted", "mem_d", "org_d", "user_d", T)
    assert deliver(client, key, old_delete, "m2") == "applied"
    assert members(db)["mem_d"]["deleted_at"] is not None
    assert deliver(client, key, old_delete, "m3") == "stale"  # a second delete
    newer = mem_ev("organizationMembership.updated", "mem_d", "org_d", "user_d", T + 99)
    assert deliver(client, key, newer, "m4") == "stale"
    assert live(db) == {}
    assert deliver(client, key, org_ev("organization.deleted", "org_d", 0), "m5") == "applied"
    assert orgs(db)["org_d"]["deleted_at"] is not None
    assert deliver(client, key, org_ev("organization.updated", "org_d", T + 99), "m6") == "stale"
    assert orgs(db)["org_d"]["updated_at"] == ms(T + 10)
    assert tombstoned(db) == ({"org_d"}, {"mem_d"})


def test_a_deleted_organization_ends_its_memberships(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    for i, user_id in enumerate(["user_a", "user_b"]):
        event = mem_ev("organizationMembership.created", f"mem_{i}", "org_x", user_id, T)
        assert deliver(client, key, event, f"m{i}") == "applied"
    other = mem_ev("organizationMembership.created", "mem_y", "org_y", "user_a", T)
    assert deliver(client, key, other, "m_y") == "applied"
    assert deliver(client, key, org_ev("organization.deleted", "org_x", 0), "m_del") == "applied"
    assert live(db) == {"mem_y": ("org_y", "user_a", "org:member")}
    # Later-arriving events for the organization and its memberships are stale.
    late = mem_ev("organizationMembership.updated", "mem_0", "org_x", "user_a", T + 5,
                  org_updated_at=T + 5)  # fmt: skip
    assert deliver(client, key, late, "m_late") == "stale"
    new = mem_ev("organizationMembership.created", "mem_new", "org_x", "user_c", T + 5)
    assert deliver(client, key, new, "m_new") == "stale"
    assert set(members(db)) == {"mem_0", "mem_1", "mem_y"}
    assert orgs(db)["org_x"]["updated_at"] == ms(1_700_000_000_000)


def test_a_deleted_user_ends_their_memberships(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    for i, org_id in enumerate(["org_a", "org_b"]):
        event = mem_ev("organizationMembership.created", f"mem_{i}", org_id, "user_gone", T)
        deliver(client, key, event, f"m{i}")
    deliver(client, key, mem_ev("organizationMembership.created", "mem_s", "org_a", "user_s", T),
            "m_s")  # fmt: skip
    assert deliver(client, key, support.deleted_event("user_gone"), "m_del") == "applied"
    assert live(db) == {"mem_s": ("org_a", "user_s", "org:member")}
    late = mem_ev("organizationMembership.updated", "mem_0", "org_a", "user_gone", T + 5)
    assert deliver(client, key, late, "m_late") == "stale"
    rejoin = mem_ev("organizationMembership.created", "mem_2", "org_b", "user_gone", T + 5)
    assert deliver(client, key, rejoin, "m_rejoin") == "stale"
    assert live(db) == {"mem_s": ("org_a", "user_s", "org:member")}


def test_hard_delete_removes_the_rows_and_keeps_the_tombstones(
    hard_client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    for i, (org_id, user_id) in enumerate(
        [("org_h", "user_1"), ("org_h", "user_2"), ("org_k", "user_3"), ("org_k", "user_4")]
    ):
        event = mem_ev("organizationMembership.created", f"mem_{i}", org_id, user_id, T)
        deliver(hard_client, key, event, f"m{i}")
    assert deliver(hard_client, key, org_ev("organization.deleted", "org_h", 0), "d1") == "applied"
    assert set(orgs(db)) == {"org_k"} and set(members(db)) == {"mem_2", "mem_3"}
    gone = mem_ev("organizationMembership.deleted", "mem_2", "org_k", "user_3", T)
    assert deliver(hard_client, key, gone, "d2") == "applied"
    assert deliver(hard_client, key, support.deleted_event("user_4"), "d3") == "applied"
    assert members(db) == {}
    assert tombstoned(db) == ({"org_h"}, {"mem_2"})
    again = mem_ev("organizationMembership.created", "mem_2", "org_k", "user_3", T + 1)
    assert deliver(hard_client, key, again, "d4") == "stale"
    assert deliver(hard_client, key, org_ev("organization.created", "org_h", T + 1), "d5") == (
        "stale"
    )
    assert members(db) == {} and set(orgs(db)) == {"org_k"}


@pytest.mark.parametrize("order", ["new_first", "old_first"])
def test_a_rejoin_whose_delete_was_lost_keeps_one_live_membership(
    client: TestClient, secret: tuple[str, bytes], db: str, order: str
) -> None:
    key = secret[1]
    old = mem_ev("organizationMembership.created", "mem_old", "org_j", "user_j", T, created_at=T)
    new = mem_ev("organizationMembership.created", "mem_new", "org_j", "user_j", T + 50,
                 created_at=T + 50, role="org:admin")  # fmt: skip
    first, second = (new, old) if order == "new_first" else (old, new)
    assert deliver(client, key, first, "m1") == "applied"
    assert deliver(client, key, second, "m2") == ("stale" if order == "new_first" else "applied")
    assert live(db) == {"mem_new": ("org_j", "user_j", "org:admin")}
    # The old one never becomes live, even once the new one is deleted.
    newer_old = mem_ev("organizationMembership.updated", "mem_old", "org_j", "user_j", T + 60,
                       created_at=T)  # fmt: skip
    assert deliver(client, key, newer_old, "m3") == "stale"
    end = mem_ev("organizationMembership.deleted", "mem_new", "org_j", "user_j", T + 70,
                 created_at=T + 50)  # fmt: skip
    assert deliver(client, key, end, "m4") == "applied"
    assert deliver(client, key, newer_old, "m5") == "stale"
    assert live(db) == {}
    dead = support.fetch(db, "select count(*) as n from clerk_sync.inbox where outcome = 'invalid'")
    assert dead == [{"n": 0}]


@pytest.mark.parametrize("timestamp", [1_716_883_200, 1_716_883_200_000, None, "soon"])
def test_the_envelope_timestamp_means_nothing(
    client: TestClient, secret: tuple[str, bytes], db: str, timestamp: Any
) -> None:
    key = secret[1]
    newer = org_ev("organization.updated", "org_t", T + 2, name="Newer")
    older = org_ev("organization.updated", "org_t", T + 1, name="Older")
    newer["timestamp"], older["timestamp"] = 0, timestamp
    assert deliver(client, key, newer, "m1") == "applied"
    assert deliver(client, key, older, "m2") == "stale"
    assert orgs(db)["org_t"]["name"] == "Newer"


def test_an_organization_event_that_cannot_be_applied_is_a_dead_letter(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    no_user = mem_ev("organizationMembership.created", "mem_x", "org_x", "user_x", T)
    del no_user["data"]["public_user_data"]["user_id"]
    body = support.dumps(no_user)
    response = client.post(ROUTE, content=body, headers=support.signed_headers(key, body, "m1"))
    assert response.status_code < 500
    rows = support.fetch(db, "select outcome, error from clerk_sync.inbox")
    assert rows == [
        {
            "outcome": "invalid",
            "error": "not a Clerk event: organizationMembership.created event without a user id"
            " (22023, data exception)",
        }
    ]
    assert members(db) == {}


def test_org_events_and_user_events_share_one_batch(db: str) -> None:
    """In one batch, events apply in order: a user deleted before their membership arrives."""
    events = [
        ("b1", mem_ev("organizationMembership.created", "mem_1", "org_1", "user_1", T)),
        ("b2", support.user_event("user.created", "user_2", T)),
        ("b3", support.deleted_event("user_1")),
        ("b4", mem_ev("organizationMembership.created", "mem_2", "org_1", "user_1", T + 1,
                      created_at=T + 1)),
        ("b5", mem_ev("organizationMembership.created", "mem_3", "org_1", "user_2", T)),
        ("b5", mem_ev("organizationMembership.created", "mem_3", "org_1", "user_2", T)),
    ]  # fmt: skip
    outcomes = apply_batch(db, events, "soft")
    assert outcomes == ["applied", "applied", "applied", "stale", "applied", "duplicate"]
    assert live(db) == {"mem_3": ("org_1", "user_2", "org:member")}
    assert members(db)["mem_1"]["deleted_at"] is not None


# --- invitations -------------------------------------------------------------------------------


def test_the_invitation_examples_are_applied_in_any_order(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    inv_id, user_id = "orginv_2g7np7Hrk0SN6kj5EDMLDaKNL0S", "user_2h8op3Isl1QR7tKu5FGNfaLKEoU"
    assert deliver(client, key, example("organizationInvitation.accepted"), "i1") == "applied"
    assert deliver(client, key, example("organizationInvitation.created"), "i2") == "stale"
    # Clerk's revoked example has the accepted one's updated_at: equal is stale.
    assert deliver(client, key, example("organizationInvitation.revoked"), "i3") == "stale"
    assert deliver(client, key, example("organizationInvitation.accepted"), "i1") == "duplicate"
    assert invitations(db) == {
        inv_id: {
            "organization_id": "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            "email_address": "jane.doe@acme.com",
            "role": "org:member",
            "status": "accepted",
            "inviter_id": None,
            "user_id": user_id,
            "public_metadata": "{}",
            "expires_at": ms(1717487999000),
            "created_at": ms(1716883200000),
            "updated_at": ms(1716883500000),
            "deleted_at": None,
        }
    }
    # An invitation carries no organization: none is written for it.
    assert orgs(db) == {}
    inbox = support.fetch(db, "select svix_id, event_type, user_id, outcome from clerk_sync.inbox")
    assert sorted(inbox, key=lambda r: r["svix_id"]) == [
        {"svix_id": "i1", "event_type": "organizationInvitation.accepted", "user_id": user_id,
         "outcome": "applied"},
        {"svix_id": "i2", "event_type": "organizationInvitation.created", "user_id": None,
         "outcome": "stale"},
        {"svix_id": "i3", "event_type": "organizationInvitation.revoked", "user_id": None,
         "outcome": "stale"},
    ]  # fmt: skip


def test_neither_private_metadata_nor_the_url_is_stored(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    for n, action in enumerate(["created", "accepted"]):
        deliver(client, secret[1], inv_ev(action, "orginv_p", "org_p", T + n), f"i{n}")
    text = json.dumps(invitations(db), default=str)
    assert "never" not in text and "private" not in text and "token" not in text
    columns = support.fetch(
        db,
        "select column_name from information_schema.columns"
        " where table_schema = 'public' and table_name = 'organization_invitations'",
    )
    assert not {"url", "private_metadata"} & {c["column_name"] for c in columns}


@pytest.mark.parametrize(
    "order",
    [("created", "accepted", "revoked"), ("revoked", "created", "accepted"),
     ("accepted", "revoked", "created"), ("revoked", "accepted", "created")],
)  # fmt: skip
def test_the_greatest_updated_at_wins_whatever_the_order(
    client: TestClient, secret: tuple[str, bytes], db: str, order: tuple[str, ...]
) -> None:
    version = {"created": T, "accepted": T + 1, "revoked": T + 2}
    newest = 0
    for n, action in enumerate(order):
        event = inv_ev(action, "orginv_o", "org_o", version[action], role="org:" + action)
        want = "applied" if version[action] > newest else "stale"
        newest = max(newest, version[action])
        assert deliver(client, secret[1], event, f"i{n}") == want, action
    # An equal updated_at under another svix-id is stale too.
    again = inv_ev("created", "orginv_o", "org_o", T + 2, role="org:again")
    assert deliver(client, secret[1], again, "i_equal") == "stale"
    [row] = invitations(db).values()
    assert (row["status"], row["role"], row["updated_at"]) == ("revoked", "org:revoked", ms(T + 2))
    assert row["user_id"] is None  # the accepted event's user_id was older


def test_expiry_is_read_from_expires_at(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    now = int(datetime.now(UTC).timestamp() * 1000)
    for n, (inv_id, expires_at) in enumerate([("orginv_open", now + 3_600_000),
                                              ("orginv_expired", now - 1)]):  # fmt: skip
        event = inv_ev("created", inv_id, "org_e", T, expires_at=expires_at)
        deliver(client, secret[1], event, f"i{n}")
    open_ones = support.fetch(
        db,
        "select id from public.organization_invitations"
        " where status = 'pending' and expires_at > now() and deleted_at is null",
    )
    assert open_ones == [{"id": "orginv_open"}]


def test_a_deleted_organization_ends_its_invitations(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    assert deliver(client, key, inv_ev("created", "orginv_1", "org_x", T), "i1") == "applied"
    assert deliver(client, key, inv_ev("accepted", "orginv_2", "org_x", T), "i2") == "applied"
    assert deliver(client, key, inv_ev("created", "orginv_3", "org_y", T), "i3") == "applied"
    assert deliver(client, key, org_ev("organization.deleted", "org_x", 0), "d1") == "applied"
    rows = invitations(db)
    assert {k for k, r in rows.items() if r["deleted_at"] is not None} == {"orginv_1", "orginv_2"}
    assert rows["orginv_1"]["status"] == "pending"  # as Clerk last said; deleted_at says the rest
    # Later-arriving events for the organization's invitations, old or new, are stale.
    assert deliver(client, key, inv_ev("revoked", "orginv_1", "org_x", T + 9), "i4") == "stale"
    assert deliver(client, key, inv_ev("created", "orginv_4", "org_x", T + 9), "i5") == "stale"
    assert invitations(db) == rows
    # A second delete changes nothing.
    assert deliver(client, key, org_ev("organization.deleted", "org_x", 0), "d2") == "stale"
    assert deliver(client, key, inv_ev("revoked", "orginv_3", "org_y", T + 1), "i6") == "applied"


def test_hard_delete_removes_the_invitations_and_keeps_them_out(
    hard_client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    key = secret[1]
    for n, (inv_id, org_id) in enumerate([("orginv_1", "org_h"), ("orginv_2", "org_h"),
                                          ("orginv_3", "org_k")]):  # fmt: skip
        deliver(hard_client, key, inv_ev("created", inv_id, org_id, T), f"i{n}")
    assert deliver(hard_client, key, org_ev("organization.deleted", "org_h", 0), "d1") == "applied"
    assert set(invitations(db)) == {"orginv_3"}
    assert tombstoned(db)[0] == {"org_h"}
    late = inv_ev("accepted", "orginv_1", "org_h", T + 1)
    assert deliver(hard_client, key, late, "i_late") == "stale"
    assert set(invitations(db)) == {"orginv_3"}


def test_an_invitation_and_its_organizations_delete_in_one_batch(db: str) -> None:
    events = [
        ("b1", inv_ev("created", "orginv_1", "org_1", T)),
        ("b2", org_ev("organization.deleted", "org_1", 0)),
        ("b3", inv_ev("accepted", "orginv_1", "org_1", T + 1)),
        ("b4", inv_ev("created", "orginv_2", "org_2", T)),
        ("b4", inv_ev("created", "orginv_2", "org_2", T)),
    ]
    outcomes = apply_batch(db, events, "soft")
    assert outcomes == ["applied", "applied", "stale", "applied", "duplicate"]
    rows = invitations(db)
    assert rows["orginv_1"]["status"] == "pending" and rows["orginv_1"]["deleted_at"] is not None
    assert rows["orginv_2"]["deleted_at"] is None


def test_a_user_deleted_keeps_the_invitation_they_accepted(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    """An invitation is to an email address, not a user: user.deleted ends memberships only."""
    key = secret[1]
    accepted = inv_ev("accepted", "orginv_u", "org_u", T, user_id="user_u")
    assert deliver(client, key, accepted, "i1") == "applied"
    assert deliver(client, key, support.deleted_event("user_u"), "d1") == "applied"
    assert invitations(db)["orginv_u"]["deleted_at"] is None


def _without(field: str) -> dict[str, Any]:
    event = inv_ev("created", "orginv_bad", "org_bad", T)
    del event["data"][field]
    return event


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (_without("id"), "organizationInvitation.created event without an invitation id"),
        (_without("updated_at"), "organizationInvitation.created event without a millisecond updated_at"),
        (_without("organization_id"), "organizationInvitation.created event without an organization id"),
        (inv_ev("accepted", "orginv_bad", "org_bad", T, user_id=""),
         "organizationInvitation.accepted event with a malformed user_id"),
        (inv_ev("revoked", "orginv_bad", "org_bad", T, expires_at="soon"),
         "organizationInvitation.revoked event with a malformed expires_at"),
    ],
    ids=["no-id", "no-updated_at", "no-organization_id", "empty-user_id", "bad-expires_at"],
)  # fmt: skip
def test_an_invitation_event_that_cannot_be_applied_is_a_dead_letter(
    client: TestClient, secret: tuple[str, bytes], db: str, event: dict[str, Any], problem: str
) -> None:
    body = support.dumps(event)
    headers = support.signed_headers(secret[1], body, "i1")
    response = client.post(ROUTE, content=body, headers=headers)
    assert response.status_code == 400 and response.headers["webhook-delivery"] == "abort-message"
    rows = support.fetch(db, "select outcome, error from clerk_sync.inbox")
    assert rows == [
        {"outcome": "invalid", "error": f"not a Clerk event: {problem} (22023, data exception)"}
    ]
    assert invitations(db) == {}


# --- any order, any repetition: the model ------------------------------------------------------


def apply_batch(db: str, events: list[tuple[str, dict[str, Any]]], delete_mode: str) -> list[str]:
    async def go() -> list[str]:
        conn = await asyncpg.connect(db)
        try:
            rows = await conn.fetch(
                "select event_outcome from public.clerk_sync_apply_batch($1::text[],"
                " $2::jsonb[], $3)",
                [s for s, _ in events],
                [json.dumps(e) for _, e in events],
                delete_mode,
            )
            return [r["event_outcome"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


# Each membership id belongs to one (organization, user) pair; mem_1 and mem_2 are the same pair
# (a leave and rejoin), mem_2 created later.
MEMBERSHIPS = {
    "mem_1": ("org_1", "user_1", T),
    "mem_2": ("org_1", "user_1", T + 5),
    "mem_3": ("org_1", "user_2", T + 1),
    "mem_4": ("org_2", "user_1", T + 2),
}
# Each invitation's organization.
INVITATIONS = {"inv_1": "org_1", "inv_2": "org_1", "inv_3": "org_2"}


@dataclass(frozen=True)
class Ev:
    svix_id: str
    kind: str  # org | org_delete | member | member_delete | user_delete | invite
    target: str  # the organization, membership, user or invitation id
    version: int  # data.updated_at (unused by organization.deleted and user.deleted)
    org_version: int  # a membership's embedded organization's updated_at
    label: str  # the name or role it writes (an invitation: created, accepted or revoked)

    def event(self) -> dict[str, Any]:
        if self.kind == "user_delete":
            return support.deleted_event(self.target)
        if self.kind == "invite":
            return inv_ev(self.label, self.target, INVITATIONS[self.target], self.version)
        if self.kind in ("org", "org_delete"):
            kind = "organization.deleted" if self.kind == "org_delete" else "organization.updated"
            return org_ev(kind, self.target, self.version, name=self.label)
        org_id, user_id, created = MEMBERSHIPS[self.target]
        kind = "deleted" if self.kind == "member_delete" else "updated"
        return mem_ev(f"organizationMembership.{kind}", self.target, org_id, user_id,
                      self.version, created_at=created, role=self.label,
                      org_updated_at=self.org_version, name="E" + str(self.org_version))  # fmt: skip


@dataclass
class Model:
    """The contract's guarantees, applied one event at a time."""

    hard: bool
    orgs: dict[str, tuple[int, str, bool]]  # id: (updated_at, name, deleted)
    members: dict[str, tuple[int, str, bool]]  # id: (updated_at, role, ended)
    invites: dict[str, tuple[int, str, bool]]  # id: (updated_at, status, ended)
    org_tombs: set[str]
    member_tombs: set[str]
    user_tombs: set[str]
    seen: set[str]

    def end(self, member_id: str) -> None:
        if self.hard:
            self.members.pop(member_id, None)
        elif member_id in self.members:
            version, role, _ = self.members[member_id]
            self.members[member_id] = (version, role, True)

    def live(self, member_id: str) -> bool:
        return member_id in self.members and not self.members[member_id][2]

    def write_org(self, org_id: str, version: int, name: str) -> bool:
        if org_id in self.org_tombs or (org_id in self.orgs and self.orgs[org_id][0] >= version):
            return False
        self.orgs[org_id] = (version, name, False)
        return True

    def apply(self, ev: Ev) -> str:
        if ev.svix_id in self.seen:
            return "duplicate"
        self.seen.add(ev.svix_id)
        if ev.kind == "user_delete":
            if ev.target in self.user_tombs:
                return "stale"
            self.user_tombs.add(ev.target)
            for mid in [m for m in self.members if MEMBERSHIPS[m][1] == ev.target]:
                if self.live(mid):
                    self.end(mid)
            return "applied"
        if ev.kind == "org_delete":
            if ev.target in self.org_tombs:
                return "stale"
            self.org_tombs.add(ev.target)
            for mid in [m for m in self.members if MEMBERSHIPS[m][0] == ev.target]:
                if self.hard or self.live(mid):
                    self.end(mid)
            for iid in [i for i in self.invites if INVITATIONS[i] == ev.target]:
                if self.hard:
                    self.invites.pop(iid)
                else:
                    self.invites[iid] = (*self.invites[iid][:2], True)
            if self.hard:
                self.orgs.pop(ev.target, None)
            elif ev.target in self.orgs:
                self.orgs[ev.target] = (*self.orgs[ev.target][:2], True)
            return "applied"
        if ev.kind == "org":
            return "applied" if self.write_org(ev.target, ev.version, ev.label) else "stale"
        if ev.kind == "invite":
            if INVITATIONS[ev.target] in self.org_tombs or (
                ev.target in self.invites and self.invites[ev.target][0] >= ev.version
            ):
                return "stale"
            status = "pending" if ev.label == "created" else ev.label
            self.invites[ev.target] = (ev.version, status, False)
            return "applied"
        org_id, user_id, created = MEMBERSHIPS[ev.target]
        changed = self.write_org(org_id, ev.org_version, "E" + str(ev.org_version))
        if org_id in self.org_tombs or user_id in self.user_tombs or ev.target in self.member_tombs:
            return "applied" if changed else "stale"
        if ev.kind == "member_delete":
            self.member_tombs.add(ev.target)
            self.end(ev.target)
            return "applied"
        pair = [
            m for m in MEMBERSHIPS if MEMBERSHIPS[m][:2] == (org_id, user_id) and m != ev.target
        ]
        seen_later = [
            m
            for m in pair
            if (m in self.members or m in self.member_tombs)
            and (MEMBERSHIPS[m][2], m) > (created, ev.target)
        ]
        if (ev.target in self.members and self.members[ev.target][0] >= ev.version) or seen_later:
            return "applied" if changed else "stale"
        for m in pair:
            if self.live(m):
                self.member_tombs.add(m)
                self.end(m)
        self.members[ev.target] = (ev.version, ev.label, False)
        return "applied"


def events_strategy(writes_only: bool = False) -> st.SearchStrategy[list[Ev]]:
    """Lists of events; with `writes_only`, organization and membership events alone (no
    organization.deleted, user.deleted or invitation), which a batch writes as sets."""
    versions = st.integers(0, 4).map(lambda v: T + v)
    org = st.builds(lambda o, v, n: ("org", o, v, 0, n), st.sampled_from(["org_1", "org_2"]),
                    versions, st.sampled_from(["A", "B"]))  # fmt: skip
    org_delete = st.builds(lambda o: ("org_delete", o, 0, 0, ""), st.sampled_from(["org_1"]))
    member = st.builds(
        lambda k, m, v, ov, r: (k, m, v, ov, r),
        st.sampled_from(["member", "member", "member", "member_delete"]),
        st.sampled_from(["mem_1", "mem_2", "mem_1", "mem_2", "mem_3", "mem_4"]),  # rejoins often
        versions,
        versions,
        st.sampled_from(["org:member", "org:admin"]),
    )
    user_delete = st.builds(
        lambda u: ("user_delete", u, 0, 0, ""), st.sampled_from(["user_1", "user_2"])
    )
    invite = st.builds(
        lambda i, v, a: ("invite", i, v, 0, a),
        st.sampled_from(sorted(INVITATIONS)),
        versions,
        st.sampled_from(["created", "accepted", "revoked"]),
    )
    one = (
        st.one_of(member, member, org)
        if writes_only
        else st.one_of(member, member, org, org_delete, user_delete, invite)
    )
    return st.lists(one, max_size=14).map(
        lambda items: [Ev(f"msg_{i}", *item) for i, item in enumerate(items)]
    )


def observed(db: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    o = {k: (r["updated_at"], r["name"], r["deleted_at"] is not None) for k, r in orgs(db).items()}
    m = {
        k: (r["updated_at"], r["role"], r["deleted_at"] is not None) for k, r in members(db).items()
    }
    i = {
        k: (r["updated_at"], r["status"], r["deleted_at"] is not None)
        for k, r in invitations(db).items()
    }
    return o, m, i


def expected(model: Model) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    return tuple(  # type: ignore[return-value]
        {k: (ms(v), label, ended) for k, (v, label, ended) in rows.items()}
        for rows in (model.orgs, model.members, model.invites)
    )


MODEL_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@MODEL_SETTINGS
@given(
    data=st.data(),
    events=events_strategy(),
    hard=st.booleans(),
    batch_size=st.sampled_from([1, 3, 50]),
)
def test_any_order_and_repetition_ends_in_the_model_rows(
    db: str, data: st.DataObject, events: list[Ev], hard: bool, batch_size: int
) -> None:
    check_against_the_model(db, data, events, hard, batch_size)


@MODEL_SETTINGS
@given(
    data=st.data(),
    events=events_strategy(writes_only=True),
    hard=st.booleans(),
    batch_size=st.sampled_from([3, 50]),
)
def test_repeated_memberships_written_as_sets_end_in_the_model_rows(
    db: str, data: st.DataObject, events: list[Ev], hard: bool, batch_size: int
) -> None:
    """Batches without deletes of organizations or users and without invitations are written
    in consecutive runs of sets: a membership (or its pair) repeated, redelivered, rejoined."""
    check_against_the_model(db, data, events, hard, batch_size)


def check_against_the_model(
    db: str, data: st.DataObject, events: list[Ev], hard: bool, batch_size: int
) -> None:
    """Apply `events`, in an order and with redeliveries drawn, in batches of `batch_size`:
    the outcomes and rows are the model's, applying them one at a time."""
    support.execute(db, support.CLEAN_SQL)
    arrivals = list(data.draw(st.permutations(events), label="order")) if events else []
    if events:
        for ev, where in data.draw(
            st.lists(st.tuples(st.sampled_from(events), st.integers(0, 100)), max_size=4),
            label="redeliveries",
        ):
            arrivals.insert(where % (len(arrivals) + 1), ev)

    outcomes: list[str] = []
    for start in range(0, len(arrivals), batch_size):
        chunk = arrivals[start : start + batch_size]
        outcomes += apply_batch(
            db, [(ev.svix_id, ev.event()) for ev in chunk], "hard" if hard else "soft"
        )

    model = Model(hard, {}, {}, {}, set(), set(), set(), set())
    assert outcomes == [model.apply(ev) for ev in arrivals]
    assert observed(db) == expected(model)
    assert tombstoned(db)[0] == model.org_tombs
    live_pairs = [MEMBERSHIPS[m][:2] for m in model.members if model.live(m)]
    assert len(live_pairs) == len(set(live_pairs))


# --- send-test's events -------------------------------------------------------------------------


def test_send_test_builds_each_organization_event_with_its_overrides(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    from clerk_sync.sendtest import Overrides, build_event

    o = Overrides(user_id="user_sent", org_id="org_sent")
    for n, event_type in enumerate(
        ["organization.created", "organizationMembership.created", "organization.updated",
         "organizationMembership.updated", "organizationMembership.deleted",
         "organization.deleted"]
    ):  # fmt: skip
        event = build_event(event_type, Overrides(o.user_id, updated_at=T + n, org_id=o.org_id))
        assert deliver(client, secret[1], event, f"m{n}") == "applied", event_type
    assert set(orgs(db)) == {"org_sent"} and orgs(db)["org_sent"]["deleted_at"] is not None
    [member] = members(db).values()
    assert member["user_id"] == "user_sent" and member["deleted_at"] is not None


def test_send_test_builds_each_invitation_event_with_its_overrides(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    from clerk_sync.sendtest import Overrides, build_event

    for n, action in enumerate(["created", "accepted", "revoked"]):
        o = Overrides("user_sent", "sent@example.com", updated_at=T + n, org_id="org_sent")
        event = build_event(f"organizationInvitation.{action}", o)
        assert deliver(client, secret[1], event, f"i{n}") == "applied", action
        [row] = invitations(db).values()
        assert (row["organization_id"], row["email_address"]) == ("org_sent", "sent@example.com")
        assert row["status"] == ("pending" if action == "created" else action)
        assert row["user_id"] == ("user_sent" if action == "accepted" else None)
    # Without --updated-at, each is sent as of now: newer than the one before.
    event = build_event("organizationInvitation.created", Overrides(org_id="org_sent"))
    assert deliver(client, secret[1], event, "i_now") == "applied"


# --- concurrency --------------------------------------------------------------------------------


async def _apply_concurrently(
    db: str, arrivals: list[Ev], workers: int, hard: bool
) -> list[tuple[int | None, list[Ev], list[str]]]:
    """Apply `arrivals` in batches of two from `workers` connections at once. Each batch with
    its outcomes and its transaction id: batches whose events touch the same organization or
    user take each other's locks, so they commit in the order of their ids (assigned at the
    first write, after the locks); others commute."""
    pool = await asyncpg.create_pool(db, min_size=workers, max_size=workers)
    queue: asyncio.Queue[list[Ev]] = asyncio.Queue()
    for start in range(0, len(arrivals), 2):
        queue.put_nowait(arrivals[start : start + 2])
    done: list[tuple[int | None, list[Ev], list[str]]] = []

    async def worker() -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "select event_outcome from public.clerk_sync_apply_batch("
                    "$1::text[], $2::jsonb[], $3)",
                    [ev.svix_id for ev in chunk],
                    [json.dumps(ev.event()) for ev in chunk],
                    "hard" if hard else "soft",
                )
                xid = await conn.fetchval("select pg_current_xact_id_if_assigned()::text")
            done.append((None if xid is None else int(xid), chunk, [r[0] for r in rows]))

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await pool.close()
    return done


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), events=events_strategy(), hard=st.booleans())
def test_concurrent_writers_end_in_the_model_rows_of_their_commit_order(
    db: str, data: st.DataObject, events: list[Ev], hard: bool
) -> None:
    support.execute(db, support.CLEAN_SQL)
    arrivals = list(data.draw(st.permutations(events), label="order")) + events[:3]
    done = asyncio.run(_apply_concurrently(db, arrivals, 4, hard))

    # A batch without a transaction id wrote nothing: all its events were duplicates.
    done.sort(key=lambda batch: (batch[0] is None, batch[0] or 0))
    model = Model(hard, {}, {}, {}, set(), set(), set(), set())
    for _, chunk, outcomes in done:
        assert outcomes == [model.apply(ev) for ev in chunk], chunk
    assert observed(db) == expected(model)
    assert tombstoned(db)[0] == model.org_tombs


# Every organization has every user as a member: deleting organizations and deleting users end
# the same memberships, from both sides.
GRID_ORGS = [f"org_g{i}" for i in range(4)]
GRID_USERS = [f"user_g{i}" for i in range(4)]


def _grid_membership(org_id: str, user_id: str) -> str:
    return f"mem_{org_id.removeprefix('org_')}_{user_id.removeprefix('user_')}"


async def _delete_from_both_sides(db: str, rounds: int, hard: bool) -> list[list[str]]:
    """Per round: a fresh grid of memberships, then batches of organization.deleted (first to
    last) and of user.deleted (last to first: the opposite order), all at once from one
    connection each. Returns each batch's outcomes."""
    mode = "hard" if hard else "soft"
    conns = [await asyncpg.connect(db) for _ in range(4)]
    apply_sql = (
        "select event_outcome from public.clerk_sync_apply_batch($1::text[], $2::jsonb[], $3)"
    )

    async def apply(conn: asyncpg.Connection, batch: list[tuple[str, dict[str, Any]]]) -> list[str]:
        rows = await conn.fetch(
            apply_sql, [s for s, _ in batch], [json.dumps(e) for _, e in batch], mode
        )
        return [r[0] for r in rows]

    outcomes: list[list[str]] = []
    try:
        for r in range(rounds):
            await conns[0].execute(support.CLEAN_SQL)
            await apply(conns[0], [
                (f"r{r}_{o}_{u}", mem_ev("organizationMembership.created",
                                          _grid_membership(o, u), o, u, T))
                for o in GRID_ORGS for u in GRID_USERS
            ])  # fmt: skip
            org_batches = [
                [(f"r{r}_del_{o}", org_ev("organization.deleted", o, 0)) for o in GRID_ORGS[:2]],
                [(f"r{r}_del_{o}", org_ev("organization.deleted", o, 0)) for o in GRID_ORGS[2:]],
            ]
            user_batches = [
                [(f"r{r}_del_{u}", support.deleted_event(u)) for u in reversed(GRID_USERS[:2])],
                [(f"r{r}_del_{u}", support.deleted_event(u)) for u in reversed(GRID_USERS[2:])],
            ]
            batches = [org_batches[0], user_batches[0], org_batches[1], user_batches[1]]
            outcomes += await asyncio.gather(
                *(apply(conn, batch) for conn, batch in zip(conns, batches, strict=True))
            )
    finally:
        for conn in conns:
            await conn.close()
    return outcomes


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_organization_and_user_deletes_sharing_memberships_do_not_deadlock(
    db: str, hard: bool
) -> None:
    """organization.deleted and user.deleted end the same memberships from both sides, from
    several connections at once: neither waits for the other in a cycle (PostgreSQL would
    abort one with a deadlock, and Svix would have to retry it), and the rows end as the model
    says, whichever commits first."""
    outcomes = asyncio.run(_delete_from_both_sides(db, rounds=60, hard=hard))
    assert all(outcome == "applied" for batch in outcomes for outcome in batch), outcomes

    model = Model(hard, {}, {}, {}, set(), set(), set(), set())
    grid = {_grid_membership(o, u): (o, u) for o in GRID_ORGS for u in GRID_USERS}
    model.members = {mid: (T, "org:member", False) for mid in grid}
    model.orgs = {o: (T, "", False) for o in GRID_ORGS}
    for user_id in GRID_USERS:
        model.user_tombs.add(user_id)
        for mid in [m for m, (_, u) in grid.items() if u == user_id]:
            model.end(mid)
    for org_id in GRID_ORGS:
        model.org_tombs.add(org_id)
        for mid in [m for m, (o, _) in grid.items() if o == org_id]:
            model.end(mid)
        if hard:
            model.orgs.pop(org_id, None)
        else:
            model.orgs[org_id] = (*model.orgs[org_id][:2], True)
    want_members = {k: (ms(v), r, e) for k, (v, r, e) in model.members.items()}
    got_orgs, got_members, _ = observed(db)
    assert got_members == want_members
    assert {k: d for k, (_, _, d) in got_orgs.items()} == {
        k: d for k, (_, _, d) in model.orgs.items()
    }
    assert tombstoned(db)[0] == set(GRID_ORGS)
    users = support.fetch(db, "select user_id from clerk_sync.tombstones order by 1")
    assert [r["user_id"] for r in users] == GRID_USERS
