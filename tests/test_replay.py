"""`clerk-sync replay` and `clerk-sync events` on the real test PostgreSQL: dead letters, replays
through the write path (its guarantees hold), dry runs, and what the commands print."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.testclient import TestClient

from clerk_sync import replay
from clerk_sync.app import WEBHOOK_PATH
from clerk_sync.inbox import BadTime, parse_duration, parse_time
from tests import support
from tests.test_backfill import row_locked
from tests.test_cli import assert_one_clear_line
from tests.test_cli import clerk_sync as run_cli

UPDATED_AT = 1_700_000_000_000


# --- helpers -----------------------------------------------------------------------------------


def deliver(client: TestClient, key: bytes, body: bytes, svix_id: str) -> Any:
    return client.post(
        WEBHOOK_PATH, content=body, headers=support.signed_headers(key, body, svix_id)
    )


def replay_ids(
    db: str, svix_ids: list[str], *, delete_mode: str = "soft", dry_run: bool = False
) -> list[replay.Replayed]:
    async def go() -> list[replay.Replayed]:
        conn = await asyncpg.connect(db)
        try:
            return [
                r
                async for r in replay.replay(
                    conn, svix_ids, delete_mode=delete_mode, dry_run=dry_run
                )
            ]
        finally:
            await conn.close()

    return list(support.run(go()))


def in_range(db: str, since: dt.datetime | None, until: dt.datetime | None) -> list[str]:
    async def go() -> list[str]:
        conn = await asyncpg.connect(db)
        try:
            return await replay.select_range(conn, since, until)
        finally:
            await conn.close()

    return list(support.run(go()))


def row(db: str, svix_id: str) -> dict[str, Any]:
    (found,) = support.fetch(db, "select * from clerk_sync.inbox where svix_id = $1", svix_id)
    return found


def user(db: str, user_id: str) -> dict[str, Any] | None:
    rows = support.fetch(db, "select * from public.users where id = $1", user_id)
    return rows[0] if rows else None


def snapshot(db: str) -> dict[str, list[dict[str, Any]]]:
    return {
        table: support.fetch(db, f"select * from {table} order by 1")
        for table in (
            "public.users",
            "clerk_sync.inbox",
            "clerk_sync.tombstones",
            "clerk_sync.pending_sign_ins",
        )
    }


def add_dead_letter(db: str, svix_id: str, body: bytes, age: str = "1 hour") -> None:
    """A dead letter as an older constraint or bug left it: kept raw, with its error."""
    support.fetch(
        db,
        """insert into clerk_sync.inbox (svix_id, outcome, error, raw_body, received_at)
           values ($1, 'invalid', 'the database refused it: old constraint', $2,
                   now() - $3::text::interval)""",
        svix_id,
        body,
        age,
    )


# --- dead letters ------------------------------------------------------------------------------


def test_a_dead_letter_that_is_still_not_an_event_stays_one(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    assert deliver(client, secret[1], b"not json at all", "msg_not_json").status_code == 400
    no_data = json.dumps({"type": "user.created", "object": "event"}).encode()
    assert deliver(client, secret[1], no_data, "msg_no_data").status_code == 400

    results = replay_ids(db, ["msg_not_json", "msg_no_data"])

    assert [(r.old_outcome, r.new_outcome) for r in results] == [("invalid", "invalid")] * 2
    assert all(r.failed for r in results)
    assert "json" in (results[0].reason or "")
    assert "not a Clerk event" in (results[1].reason or "")
    for result in results:
        kept = row(db, result.svix_id)
        assert kept["outcome"] == "invalid"
        assert kept["error"] == result.reason
        assert kept["replays"] == 1 and kept["replayed_at"] is None  # still waiting
        assert kept["raw_body"] is not None
    assert support.fetch(db, "select * from public.users") == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"updated_at": 9_000_000_000_000_000}, id="updated-at-past-year-9999"),
        pytest.param({"updated_at": -1}, id="updated-at-before-1970"),
        pytest.param({"updated_at": 1.5}, id="updated-at-not-whole"),
        pytest.param({"created_at": 9_000_000_000_000_000}, id="created-at-past-year-9999"),
        pytest.param({"banned": "yes"}, id="banned-not-boolean"),
        pytest.param({"id": 42}, id="id-not-a-string"),
    ],
)
def test_a_dead_letter_the_webhook_refused_stays_one_and_pins_nothing(
    client: TestClient, secret: tuple[str, bytes], db: str, tmp_path: Path, change: dict[str, Any]
) -> None:
    """Seen in the field: an updated_at of 9e15 ms, refused by the webhook, was applied by
    `replay --dead-letters` and pinned the row's version, so that every genuine update after it
    answered stale. One rule decides, for the webhook and for replay alike."""
    event = support.user_event("user.created", "user_pin", UPDATED_AT)
    event["data"].update(change)
    response = deliver(client, secret[1], support.dumps(event), "msg_pin")
    assert response.status_code == 400
    assert response.headers["webhook-delivery"] == "abort-message"
    assert row(db, "msg_pin")["outcome"] == "invalid"

    result = run_cli(tmp_path, "replay", "--dead-letters", DATABASE_URL=db)
    assert result.returncode == 1, result.stderr
    assert "invalid → invalid" in result.stdout
    kept = row(db, "msg_pin")
    assert kept["outcome"] == "invalid" and kept["replays"] == 1
    assert user(db, "user_pin") is None

    genuine = support.user_event("user.updated", "user_pin", UPDATED_AT + 1, first_name="Real")
    response = deliver(client, secret[1], support.dumps(genuine), "msg_genuine")
    assert response.json() == {"outcome": "applied"}
    pinned = user(db, "user_pin")
    assert pinned is not None and pinned["first_name"] == "Real"


def test_a_dead_letter_holding_a_valid_event_replays_to_applied(db: str) -> None:
    event = support.user_event("user.created", "user_dl", UPDATED_AT, email="dl@example.com")
    add_dead_letter(db, "msg_dl", support.dumps(event), age="3 days")
    received_at = row(db, "msg_dl")["received_at"]

    (result,) = replay_ids(db, ["msg_dl"])

    assert (result.type, result.user_id, result.old_outcome, result.new_outcome) == (
        "user.created",
        "user_dl",
        "invalid",
        "applied",
    )
    assert not result.failed and result.reason is None
    replayed = user(db, "user_dl")
    assert replayed is not None and replayed["email"] == "dl@example.com"
    kept = row(db, "msg_dl")
    assert kept["outcome"] == "applied" and kept["error"] is None
    assert kept["received_at"] == received_at  # retention still counts from the first receipt
    assert kept["replayed_at"] is not None and kept["replays"] == 1
    # Replayed once, it is an ordinary applied event: the next replay finds the row as new.
    assert replay_ids(db, ["msg_dl"])[0].new_outcome == "stale"


def test_replaying_an_applied_event_is_stale_unless_its_row_is_gone(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    event = support.user_event("user.created", "user_a", UPDATED_AT, first_name="Ada")
    assert deliver(client, secret[1], support.dumps(event), "msg_a").json() == {
        "outcome": "applied"
    }
    before = user(db, "user_a")

    (result,) = replay_ids(db, ["msg_a"])
    assert (result.old_outcome, result.new_outcome) == ("applied", "stale")
    assert user(db, "user_a") == before

    support.execute(db, "delete from public.users where id = 'user_a'")
    (result,) = replay_ids(db, ["msg_a"])
    assert (result.old_outcome, result.new_outcome) == ("stale", "applied")
    assert user(db, "user_a") == before


def test_an_older_event_replayed_does_not_overwrite_a_newer_row(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    old = support.user_event("user.updated", "user_o", UPDATED_AT, first_name="Old")
    new = support.user_event("user.updated", "user_o", UPDATED_AT + 1000, first_name="New")
    deliver(client, secret[1], support.dumps(old), "msg_old")
    deliver(client, secret[1], support.dumps(new), "msg_new")
    support.execute(db, "update clerk_sync.inbox set outcome = 'invalid' where svix_id = 'msg_old'")

    (result,) = replay_ids(db, ["msg_old"])

    assert result.new_outcome == "stale"
    replayed = user(db, "user_o")
    assert replayed is not None and replayed["first_name"] == "New"


@pytest.mark.parametrize("delete_mode", ["soft", "hard"])
def test_a_deleted_user_stays_deleted_when_their_events_are_replayed(
    client: TestClient, secret: tuple[str, bytes], db: str, delete_mode: str
) -> None:
    created = support.user_event("user.created", "user_d", UPDATED_AT)
    deliver(client, secret[1], support.dumps(created), "msg_created")
    deliver(client, secret[1], support.dumps(support.deleted_event("user_d")), "msg_deleted")
    if delete_mode == "hard":
        support.execute(db, "delete from public.users where id = 'user_d'")
    before = user(db, "user_d")

    results = replay_ids(db, ["msg_created", "msg_deleted"], delete_mode=delete_mode)

    assert [r.new_outcome for r in results] == ["stale", "stale"]
    assert user(db, "user_d") == before
    if before is not None:
        assert before["deleted_at"] is not None
    assert support.fetch(db, "select user_id from clerk_sync.tombstones") == [{"user_id": "user_d"}]


def test_an_unknown_svix_id_is_missing(db: str) -> None:
    (result,) = replay_ids(db, ["msg_nowhere"])
    assert (result.old_outcome, result.new_outcome) == (None, "missing")
    assert result.failed


def test_an_ignored_event_has_nothing_to_replay(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    body = json.dumps({"type": "email.created", "object": "event", "data": {"id": "e"}}).encode()
    assert deliver(client, secret[1], body, "msg_email").json() == {"outcome": "ignored"}
    (result,) = replay_ids(db, ["msg_email"])
    assert (result.old_outcome, result.new_outcome) == ("ignored", "ignored")
    assert not result.failed and "not kept" in (result.reason or "")
    assert in_range(db, None, None) == []  # a range replay leaves it out


def test_a_time_range_selects_the_events_received_in_it(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    for n in range(4):
        event = support.user_event("user.created", f"user_{n}", UPDATED_AT)
        deliver(client, secret[1], support.dumps(event), f"msg_{n}")
    support.execute(
        db,
        """update clerk_sync.inbox set received_at = now() - case svix_id
               when 'msg_0' then interval '5 days' when 'msg_1' then interval '3 days'
               when 'msg_2' then interval '2 days' else interval '1 minute' end""",
    )
    support.execute(db, "delete from public.users where id in ('user_1', 'user_2', 'user_3')")
    now = dt.datetime.now(dt.UTC)

    chosen = in_range(db, now - dt.timedelta(days=4), now - dt.timedelta(days=1))
    assert chosen == ["msg_1", "msg_2"]  # oldest first
    results = replay_ids(db, chosen)

    assert [r.new_outcome for r in results] == ["applied", "applied"]
    assert [u["id"] for u in support.fetch(db, "select id from public.users order by id")] == [
        "user_0",
        "user_1",
        "user_2",
    ]
    assert in_range(db, now - dt.timedelta(hours=1), None) == ["msg_3"]


def test_a_dry_run_writes_nothing_and_predicts_the_replay(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    created = support.user_event("user.created", "user_x", UPDATED_AT)
    deliver(client, secret[1], support.dumps(created), "msg_x")
    deliver(client, secret[1], support.dumps(support.deleted_event("user_x")), "msg_x_deleted")
    deliver(client, secret[1], b"not json", "msg_junk")
    add_dead_letter(db, "msg_dl", support.dumps(support.user_event("user.created", "u_dl", 1)))
    deliver(client, secret[1], support.dumps(support.session_event("user_s", 5)), "msg_s")
    support.execute(db, "delete from clerk_sync.pending_sign_ins")
    ids = [r["svix_id"] for r in support.fetch(db, "select svix_id from clerk_sync.inbox")]
    before = snapshot(db)

    predicted = replay_ids(db, ids, dry_run=True, delete_mode="hard")

    assert snapshot(db) == before
    assert {r.svix_id: r.new_outcome for r in predicted} == {
        "msg_x": "stale",
        "msg_x_deleted": "stale",
        "msg_junk": "invalid",
        "msg_dl": "applied",
        "msg_s": "applied",
    }
    assert replay_ids(db, ids, delete_mode="hard") == predicted


# --- time parsing ------------------------------------------------------------------------------


def test_times_and_durations() -> None:
    now = dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC)
    assert parse_time("2h", now) == now - dt.timedelta(hours=2)
    assert parse_time("3d", now) == now - dt.timedelta(days=3)
    assert parse_time("2025-05-01T00:00:00Z", now) == dt.datetime(2025, 5, 1, tzinfo=dt.UTC)
    assert parse_time("2025-05-01 10:00", now) == dt.datetime(2025, 5, 1, 10, tzinfo=dt.UTC)
    assert parse_duration("30") == dt.timedelta(days=30)
    assert parse_duration("48h") == dt.timedelta(hours=48)
    for bad in ("soon", "5", "-2h", ""):
        with pytest.raises(BadTime):
            parse_time(bad, now)


# --- the commands ------------------------------------------------------------------------------


def test_replay_command(
    client: TestClient, secret: tuple[str, bytes], db: str, tmp_path: Path
) -> None:
    event = support.user_event("user.created", "user_c", UPDATED_AT, email="c@example.com")
    deliver(client, secret[1], support.dumps(event), "msg_c")
    deliver(client, secret[1], b"still junk", "msg_junk")
    add_dead_letter(db, "msg_dl", support.dumps(support.user_event("user.created", "u_dl", 1)))

    for usage in ([], ["--svix-id", "msg_c", "--dead-letters"], ["--since", "whenever"]):
        result = run_cli(tmp_path, "replay", *usage, DATABASE_URL=db)
        assert result.returncode == 2, result
        assert_one_clear_line(result, ("--svix-id", "--since"))

    before = snapshot(db)
    result = run_cli(tmp_path, "replay", "--dead-letters", "--dry-run", DATABASE_URL=db)
    assert result.returncode == 1, result
    assert snapshot(db) == before
    assert "dry run, nothing written" in result.stdout

    result = run_cli(tmp_path, "replay", "--dead-letters", DATABASE_URL=db)
    assert result.returncode == 1, result  # the junk cannot be applied
    lines = result.stdout.splitlines()  # oldest first
    assert lines[0] == "msg_dl  user.created  u_dl  invalid → applied"
    assert lines[1].startswith("msg_junk  -  -  invalid → invalid  (cannot apply: ")
    assert lines[2] == "replayed 2 events: applied 1, invalid 1"
    assert_one_clear_line(result, ("could not be applied",))

    result = run_cli(
        tmp_path, "replay", "--svix-id", "msg_c", "--svix-id", "msg_dl", DATABASE_URL=db
    )
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        "msg_c  user.created  user_c  applied → stale",
        "msg_dl  user.created  u_dl  applied → stale",
        "replayed 2 events: stale 2",
    ]
    assert "c@example.com" not in result.stdout + result.stderr

    result = run_cli(tmp_path, "replay", "--since", "30m", "--until", "0m", DATABASE_URL=db)
    assert result.returncode == 1, result  # msg_c and msg_junk; msg_dl came an hour ago
    assert result.stdout.splitlines()[-1] == "replayed 2 events: invalid 1, stale 1"


def test_events_command_prints_json_lines_without_payloads(
    client: TestClient, secret: tuple[str, bytes], db: str, tmp_path: Path
) -> None:
    event = support.user_event(
        "user.created", "user_e", UPDATED_AT, email="private@example.com", first_name="Grace"
    )
    deliver(client, secret[1], support.dumps(event), "msg_e1")
    deliver(client, secret[1], support.dumps(support.session_event("user_e", 7)), "msg_e2")
    junk = b'{"type": "user.created", "data": {"email": "leak@example.com"'
    deliver(client, secret[1], junk, "msg_e3")

    result = run_cli(tmp_path, "events", DATABASE_URL=db)

    assert result.returncode == 0, result
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["svix_id"] for line in lines] == ["msg_e3", "msg_e2", "msg_e1"]
    for line in lines:
        assert set(line) == {"received_at", "svix_id", "type", "user_id", "outcome", "error"}
        dt.datetime.fromisoformat(line["received_at"])
    assert (lines[2]["type"], lines[2]["user_id"], lines[2]["outcome"]) == (
        "user.created",
        "user_e",
        "applied",
    )
    assert lines[0]["outcome"] == "invalid" and lines[0]["error"]
    for leak in ("@example.com", "Grace", "Lovelace", "private_metadata", "never in public"):
        assert leak not in result.stdout

    result = run_cli(
        tmp_path, "events", "--json", "--outcome", "applied", "--limit", "1", DATABASE_URL=db
    )
    assert [json.loads(line)["svix_id"] for line in result.stdout.splitlines()] == ["msg_e2"]
    result = run_cli(
        tmp_path, "events", "--type", "user.created", "--user-id", "user_e", DATABASE_URL=db
    )
    assert [json.loads(line)["svix_id"] for line in result.stdout.splitlines()] == ["msg_e1"]
    result = run_cli(tmp_path, "events", "--since", "1h", DATABASE_URL=db)
    assert len(result.stdout.splitlines()) == 3

    result = run_cli(tmp_path, "events", "--outcome", "lost", DATABASE_URL=db)
    assert result.returncode == 2
    assert_one_clear_line(result, ("--outcome",))


def test_a_replay_waits_for_a_user_held_elsewhere(db: str) -> None:
    """The write path answers 'retry' for a user another transaction holds; replay waits for it
    (as it did for the lock before), and is not left with the inbox row removed."""
    event = support.user_event("user.created", "user_held", UPDATED_AT)
    support.execute(db, "insert into public.users (id) values ('user_held')")
    add_dead_letter(db, "msg_held", support.dumps(event))
    started = time.monotonic()
    with row_locked(db, "user_held", most=0.5):
        (result,) = replay_ids(db, ["msg_held"])
    assert time.monotonic() - started >= 0.5
    assert (result.old_outcome, result.new_outcome) == ("invalid", "applied")
    assert row(db, "msg_held")["outcome"] == "applied"
    assert (user(db, "user_held") or {}).get("updated_at") is not None


@pytest.mark.parametrize(
    "cause",
    [
        "alter table public.users add constraint app_no_bobs check (first_name <> 'Bob')",
        """create function public.app_refuse() returns trigger language plpgsql as
           $$ begin raise exception 'no Bobs here'; end $$;
           create trigger app_refuse before insert on public.users
           for each row when (new.first_name = 'Bob') execute function public.app_refuse()""",
    ],
    ids=["check-constraint", "raising-trigger"],
)
def test_a_dead_letter_an_apps_constraint_still_refuses_stays_one(db: str, cause: str) -> None:
    """Replayed before the cause is fixed, the event stays a dead letter (exit 1), and the
    replay of the others goes on."""
    support.execute(db, cause)
    try:
        bob = support.dumps(support.user_event("user.created", "user_bob", 10, first_name="Bob"))
        add_dead_letter(db, "msg_bob", bob)
        results = replay_ids(db, ["msg_bob"])
    finally:
        support.execute(
            db,
            "alter table public.users drop constraint if exists app_no_bobs;"
            "drop trigger if exists app_refuse on public.users;"
            "drop function if exists public.app_refuse()",
        )
    [result] = results
    assert (result.old_outcome, result.new_outcome) == ("invalid", "invalid")
    assert result.failed and "cannot apply" in (result.reason or "")
    assert row(db, "msg_bob")["outcome"] == "invalid"
    assert support.fetch(db, "select id from public.users") == []
    # Once the cause is gone, the same replay applies it.
    [again] = replay_ids(db, ["msg_bob"])
    assert again.new_outcome == "applied"


def test_a_dead_lettered_invitation_replays_once_its_cause_is_fixed(db: str) -> None:
    """An invitation the app's own constraint refused stays a dead letter until it is dropped;
    then the replay applies it, once."""
    support.execute(
        db,
        "alter table public.organization_invitations add constraint app_no_blocked"
        " check (email_address not like '%@blocked.example')",
    )
    event = support.invitation_event(
        "organizationInvitation.created", "orginv_dl", "org_dl", UPDATED_AT,
        email_address="x@blocked.example",
    )  # fmt: skip
    add_dead_letter(db, "msg_inv_dl", support.dumps(event))
    try:
        [result] = replay_ids(db, ["msg_inv_dl"])
        assert (result.old_outcome, result.new_outcome) == ("invalid", "invalid")
    finally:
        support.execute(
            db, "alter table public.organization_invitations drop constraint app_no_blocked"
        )
    [result] = replay_ids(db, ["msg_inv_dl"])
    assert (result.type, result.old_outcome, result.new_outcome) == (
        "organizationInvitation.created",
        "invalid",
        "applied",
    )
    rows = support.fetch(db, "select id, status from public.organization_invitations")
    assert rows == [{"id": "orginv_dl", "status": "pending"}]
    assert replay_ids(db, ["msg_inv_dl"])[0].new_outcome == "stale"


# --- organization and membership deliveries ----------------------------------------------------

T = 1_716_883_200_000


def org_deliveries(client: TestClient, key: bytes) -> None:
    """An organization, a membership of user_o1 in it, and one of user_o2, ended."""
    member = support.membership_event
    for svix_id, event in [
        ("msg_o1", support.organization_event("organization.created", "org_o", T)),
        ("msg_o2", member("organizationMembership.created", "mem_o1", "org_o", "user_o1", T)),
        ("msg_o3", member("organizationMembership.created", "mem_o2", "org_o", "user_o2", T)),
        ("msg_o4", member("organizationMembership.deleted", "mem_o2", "org_o", "user_o2", T + 1)),
    ]:
        response = deliver(client, key, support.dumps(event), svix_id)
        assert response.json() == {"outcome": "applied"}, response.text


def test_events_lists_organization_deliveries_by_type_and_a_membership_by_its_user(
    client: TestClient, secret: tuple[str, bytes], db: str, tmp_path: Path
) -> None:
    """A membership delivery's user is the member's (public_user_data.user_id); an
    organization's own deliveries have none."""
    org_deliveries(client, secret[1])

    def listed(*args: str) -> list[tuple[str, str | None]]:
        result = run_cli(tmp_path, "events", "--json", *args, DATABASE_URL=db)
        assert result.returncode == 0, result
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        return [(line["svix_id"], line["user_id"]) for line in lines]

    assert listed("--type", "organization.created") == [("msg_o1", None)]
    assert listed("--type", "organizationMembership.created") == [
        ("msg_o3", "user_o2"),
        ("msg_o2", "user_o1"),
    ]
    assert listed("--user-id", "user_o2") == [("msg_o4", "user_o2"), ("msg_o3", "user_o2")]
    result = run_cli(tmp_path, "events", "--json", DATABASE_URL=db)
    assert "private_metadata" not in result.stdout and "never in public" not in result.stdout


def test_organization_deliveries_replay_through_the_write_path(
    client: TestClient, secret: tuple[str, bytes], db: str
) -> None:
    org_deliveries(client, secret[1])
    members_sql = (
        "select id, deleted_at is null as live from public.organization_memberships order by id"
    )
    before = support.fetch(db, members_sql)

    # Applied already: every replay is stale, and an ended membership stays ended.
    results = replay_ids(db, ["msg_o1", "msg_o2", "msg_o3", "msg_o4"])
    assert [(r.type, r.user_id, r.new_outcome) for r in results] == [
        ("organization.created", None, "stale"),
        ("organizationMembership.created", "user_o1", "stale"),
        ("organizationMembership.created", "user_o2", "stale"),
        ("organizationMembership.deleted", "user_o2", "stale"),
    ]
    assert support.fetch(db, members_sql) == before

    # Its rows gone (an operator's mistake): the replay writes them again.
    support.execute(db, "delete from public.organization_memberships where id = 'mem_o1'")
    support.execute(db, "delete from public.organizations where id = 'org_o'")
    (org,) = replay_ids(db, ["msg_o1"])
    (membership,) = replay_ids(db, ["msg_o2"])
    assert (org.new_outcome, membership.new_outcome) == ("applied", "applied")
    assert support.fetch(db, members_sql) == before

    # A dead letter of an organization event replays to applied once it is one, and an
    # organization deleted since makes a membership's replay stale.
    broken = support.organization_event("organization.updated", "org_o", T + 5)
    add_dead_letter(db, "msg_o5", support.dumps(broken))
    assert replay_ids(db, ["msg_o5"])[0].new_outcome == "applied"
    gone = support.organization_event("organization.deleted", "org_o", 0)
    assert deliver(client, secret[1], support.dumps(gone), "msg_o6").json() == {
        "outcome": "applied"
    }
    support.execute(db, "delete from public.organization_memberships where id = 'mem_o1'")
    (membership,) = replay_ids(db, ["msg_o2"])
    assert membership.new_outcome == "stale"
    assert support.fetch(db, "select id from public.organization_memberships") == [{"id": "mem_o2"}]
