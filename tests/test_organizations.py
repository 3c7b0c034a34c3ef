"""Organizations and memberships (the contract's v2 section), through the webhook: signed
deliveries into public.organizations and public.organization_memberships. The first tests pin the
cases that break hand-written handlers; the property test then checks that random streams of user,
organization and membership events, repeated and shuffled, end in the rows a model of the contract
predicts, whether applied one by one or in batches.
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


# --- Clerk's examples ---------------------------------------------------------------------------


def test_the_examples_are_applied_in_any_order(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    def example(name: str) -> bytes:
        return (EXAMPLES_DIR / f"{name}.json").read_bytes()

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


@dataclass(frozen=True)
class Ev:
    svix_id: str
    kind: str  # org | org_delete | member | member_delete | user_delete
    target: str  # the organization, membership or user id
    version: int  # data.updated_at (unused by organization.deleted and user.deleted)
    org_version: int  # a membership's embedded organization's updated_at
    label: str  # the name or role it writes

    def event(self) -> dict[str, Any]:
        if self.kind == "user_delete":
            return support.deleted_event(self.target)
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
            if self.hard:
                self.orgs.pop(ev.target, None)
            elif ev.target in self.orgs:
                self.orgs[ev.target] = (*self.orgs[ev.target][:2], True)
            return "applied"
        if ev.kind == "org":
            return "applied" if self.write_org(ev.target, ev.version, ev.label) else "stale"
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


def events_strategy() -> st.SearchStrategy[list[Ev]]:
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
    one = st.one_of(member, member, org, org_delete, user_delete)
    return st.lists(one, max_size=14).map(
        lambda items: [Ev(f"msg_{i}", *item) for i, item in enumerate(items)]
    )


def observed(db: str) -> tuple[dict[str, Any], dict[str, Any]]:
    o = {k: (r["updated_at"], r["name"], r["deleted_at"] is not None) for k, r in orgs(db).items()}
    m = {
        k: (r["updated_at"], r["role"], r["deleted_at"] is not None) for k, r in members(db).items()
    }
    return o, m


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    events=events_strategy(),
    hard=st.booleans(),
    batch_size=st.sampled_from([1, 3, 50]),
)
def test_any_order_and_repetition_ends_in_the_model_rows(
    db: str, data: st.DataObject, events: list[Ev], hard: bool, batch_size: int
) -> None:
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

    model = Model(hard, {}, {}, set(), set(), set(), set())
    assert outcomes == [model.apply(ev) for ev in arrivals]
    want_orgs = {k: (ms(v), n, d) for k, (v, n, d) in model.orgs.items()}
    want_members = {k: (ms(v), r, e) for k, (v, r, e) in model.members.items()}
    assert observed(db) == (want_orgs, want_members)
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
    model = Model(hard, {}, {}, set(), set(), set(), set())
    for _, chunk, outcomes in done:
        assert outcomes == [model.apply(ev) for ev in chunk], chunk
    want_orgs = {k: (ms(v), n, d) for k, (v, n, d) in model.orgs.items()}
    want_members = {k: (ms(v), r, e) for k, (v, r, e) in model.members.items()}
    assert observed(db) == (want_orgs, want_members)
    assert tombstoned(db)[0] == model.org_tombs
