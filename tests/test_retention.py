"""Retention of `clerk_sync.inbox` on the real test PostgreSQL: old rows go in chunks, dead letters
and recent rows stay, and nothing under 2 days is accepted."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from clerk_sync import retention
from clerk_sync.settings import ConfigError, load_settings
from tests import support
from tests.test_cli import assert_one_clear_line
from tests.test_cli import clerk_sync as run_cli

# svix-id → (outcome, age)
ROWS = {
    "old_applied": ("applied", "40 days"),
    "old_stale": ("stale", "31 days"),
    "old_ignored": ("ignored", "30 days 1 hour"),
    "old_dead_letter": ("invalid", "90 days"),
    "recent_applied": ("applied", "29 days"),
    "recent_dead_letter": ("invalid", "1 hour"),
    "new": ("applied", "1 minute"),
}


def add_rows(db: str, rows: dict[str, tuple[str, str]]) -> None:
    for svix_id, (outcome, age) in rows.items():
        support.fetch(
            db,
            """insert into clerk_sync.inbox (svix_id, outcome, received_at)
               values ($1, $2, now() - $3::text::interval)""",
            svix_id,
            outcome,
            age,
        )


def remaining(db: str) -> set[str]:
    return {r["svix_id"] for r in support.fetch(db, "select svix_id from clerk_sync.inbox")}


def purge(
    db: str, days: float | dt.timedelta, *, dead_letters: bool = False, batch: int = 5000
) -> int:
    async def go() -> int:
        pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
        try:
            return await retention.purge_expired(pool, days, dead_letters=dead_letters, batch=batch)
        finally:
            await pool.close()

    return int(support.run(go()))


def test_old_rows_go_dead_letters_and_recent_rows_stay(db: str) -> None:
    add_rows(db, ROWS)
    assert purge(db, 30) == 3
    assert remaining(db) == {"old_dead_letter", "recent_applied", "recent_dead_letter", "new"}
    assert purge(db, 30) == 0


def test_dead_letters_are_purged_only_when_asked(db: str) -> None:
    add_rows(db, ROWS)
    assert purge(db, 30, dead_letters=True) == 4
    assert remaining(db) == {"recent_applied", "recent_dead_letter", "new"}


def test_a_replayed_dead_letter_is_an_ordinary_row(db: str) -> None:
    event = support.user_event("user.created", "user_r", 1_700_000_000_000)
    support.fetch(
        db,
        """insert into clerk_sync.inbox (svix_id, outcome, error, raw_body, received_at)
           values ('msg_r', 'invalid', 'old constraint', $1, now() - interval '40 days')""",
        support.dumps(event),
    )
    assert purge(db, 30) == 0
    support.fetch(db, "select * from public.clerk_sync_replay('msg_r', 'soft', false)")
    assert purge(db, 30) == 1
    assert remaining(db) == set()


def test_rows_go_in_chunks(db: str) -> None:
    add_rows(db, {f"old_{n}": ("applied", f"{40 + n} days") for n in range(7)})
    add_rows(db, {"kept": ("applied", "1 day")})
    assert purge(db, 30, batch=3) == 7
    assert remaining(db) == {"kept"}


def test_less_than_two_days_is_refused(db: str) -> None:
    add_rows(db, {"day_old": ("applied", "36 hours")})
    for too_short in (1, 1.9, dt.timedelta(hours=47)):
        with pytest.raises(retention.RetentionTooShort, match="at least 2 days"):
            purge(db, too_short)
    # The SQL function refuses too, for callers that reach it some other way.
    with pytest.raises(asyncpg.InvalidParameterValueError, match="at least 2 days"):
        support.fetch(db, "select public.clerk_sync_purge_inbox(interval '1 day', false, 10)")
    assert remaining(db) == {"day_old"}
    assert purge(db, dt.timedelta(hours=48)) == 0


def test_the_retention_loop_purges_in_the_background(db: str) -> None:
    add_rows(db, ROWS)

    async def go() -> None:
        task = asyncio.create_task(retention.retention_loop(db, 30, interval_s=0.05))
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if "old_applied" not in await _remaining(db):
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert task.cancelled()

    support.run(go())
    assert remaining(db) == {"old_dead_letter", "recent_applied", "recent_dead_letter", "new"}


async def _remaining(db: str) -> set[str]:
    conn = await asyncpg.connect(db)
    try:
        return {r[0] for r in await conn.fetch("select svix_id from clerk_sync.inbox")}
    finally:
        await conn.close()


def test_the_retention_loop_survives_an_unreachable_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> None:
        dsn = f"postgresql://postgres@127.0.0.1:{support.free_port()}/nowhere"
        task = asyncio.create_task(retention.retention_loop(dsn, 30, interval_s=0.05))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level("WARNING", logger="clerk_sync.retention"):
        support.run(go())
    assert "retention: purge failed" in caplog.text


def test_retention_days_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLERK_SYNC_RETENTION_DAYS", raising=False)
    assert load_settings().retention_days == 30
    monkeypatch.setenv("CLERK_SYNC_RETENTION_DAYS", "7")
    assert load_settings().retention_days == 7
    monkeypatch.setenv("CLERK_SYNC_RETENTION_DAYS", "1")
    with pytest.raises(ConfigError, match=r"^CLERK_SYNC_RETENTION_DAYS: "):
        load_settings()


def test_purge_command(db: str, tmp_path: Path) -> None:
    add_rows(db, ROWS)

    result = run_cli(tmp_path, "purge", "--older-than", "1d", DATABASE_URL=db)
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("--older-than",))
    result = run_cli(tmp_path, "purge", DATABASE_URL=db, CLERK_SYNC_RETENTION_DAYS="1")
    assert result.returncode == 2, result
    assert_one_clear_line(result, ("CLERK_SYNC_RETENTION_DAYS",))
    assert len(remaining(db)) == len(ROWS)

    result = run_cli(tmp_path, "purge", DATABASE_URL=db)
    assert result.returncode == 0, result
    assert result.stdout.startswith("purged 3 inbox rows older than 30 days; dead letters kept")

    result = run_cli(tmp_path, "purge", "--older-than", "48h", "--dead-letters", DATABASE_URL=db)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        "purged 2 inbox rows older than 2 days",
        "dropped 0 payloads of deliveries older than 3 days (dead letters keep theirs)",
    ]
    assert remaining(db) == {"recent_dead_letter", "new"}


# --- payload retention ---------------------------------------------------------------------------

# svix-id → (outcome, age): each with its content (a payload, or a dead letter's raw body)
WITH_PAYLOADS = {
    "applied_4d": ("applied", "4 days"),
    "stale_3d": ("stale", "3 days 1 minute"),
    "applied_2d": ("applied", "2 days"),
    "dead_letter_10d": ("invalid", "10 days"),
    "new": ("applied", "1 minute"),
}


def add_deliveries(db: str, rows: dict[str, tuple[str, str]]) -> None:
    """Rows as add_rows makes them, each with its content: a payload, or a dead letter's body."""
    add_rows(db, rows)
    for svix_id in rows:
        event = support.dumps(
            support.user_event("user.updated", f"user_{svix_id}", 1_700_000_000_000)
        )
        support.fetch(
            db,
            """update clerk_sync.inbox
               set event_type = 'user.updated', user_id = 'user_' || svix_id,
                   payload = case when outcome <> 'invalid' then $2::text::jsonb end,
                   raw_body = case when outcome = 'invalid' then convert_to($2, 'UTF8') end
               where svix_id = $1""",
            svix_id,
            event.decode(),
        )


def with_payload(db: str) -> set[str]:
    rows = support.fetch(
        db, "select svix_id from clerk_sync.inbox where payload is not null or raw_body is not null"
    )
    return {r["svix_id"] for r in rows}


def drop_payloads(db: str, days: float, *, batch: int = 5000) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(db)
        try:
            return await retention.drop_expired_payloads(conn, days, batch=batch)
        finally:
            await conn.close()

    return int(support.run(go()))


def test_payloads_go_after_their_days_and_the_rows_stay(db: str) -> None:
    add_deliveries(db, WITH_PAYLOADS)
    before = support.fetch(
        db, "select svix_id, event_type, user_id, outcome, received_at from clerk_sync.inbox"
    )
    assert drop_payloads(db, 3, batch=1) == 2  # in chunks of one
    assert with_payload(db) == {"applied_2d", "dead_letter_10d", "new"}
    # Everything but the payload is kept, for the row's whole retention.
    after = support.fetch(
        db, "select svix_id, event_type, user_id, outcome, received_at from clerk_sync.inbox"
    )
    assert sorted(after, key=str) == sorted(before, key=str)
    assert drop_payloads(db, 3) == 0
    # 0 keeps none: every payload goes but the dead letter's.
    assert drop_payloads(db, 0) == 2
    assert with_payload(db) == {"dead_letter_10d"}
    with pytest.raises(asyncpg.InvalidParameterValueError, match="0 days or more"):
        support.fetch(db, "select public.clerk_sync_drop_payloads(interval '-1 day', 10)")


def test_a_replay_of_a_delivery_whose_payload_is_gone_says_so(db: str, tmp_path: Path) -> None:
    add_deliveries(db, WITH_PAYLOADS)
    assert drop_payloads(db, 3) == 2
    result = run_cli(
        tmp_path, "replay", "--since", "5d", "--until", "1d", "--dry-run", DATABASE_URL=db
    )
    assert result.returncode == 1, result  # some events could not be replayed
    lines = result.stdout.splitlines()
    gone = [line for line in lines if "payload was dropped" in line]
    assert len(gone) == 2 and any("applied_4d" in line for line in gone), result.stdout
    assert any("stale_3d" in line for line in gone), result.stdout
    assert any("applied_2d" in line and "payload" not in line for line in lines), result.stdout
    # Nothing was written: the rows are as they were.
    assert with_payload(db) == {"applied_2d", "dead_letter_10d", "new"}


def test_the_retention_loop_drops_payloads_in_the_background(db: str) -> None:
    add_deliveries(db, WITH_PAYLOADS)

    async def go() -> None:
        task = asyncio.create_task(
            retention.retention_loop(db, 30, interval_s=0.05, payload_days=3)
        )
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if drop_payloads_done(await _with_payload(db)):
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    support.run(go())
    assert with_payload(db) == {"applied_2d", "dead_letter_10d", "new"}


def drop_payloads_done(kept: set[str]) -> bool:
    return "applied_4d" not in kept and "stale_3d" not in kept


async def _with_payload(db: str) -> set[str]:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "select svix_id from clerk_sync.inbox where payload is not null or raw_body is not null"
        )
        return {r[0] for r in rows}
    finally:
        await conn.close()


def test_the_purge_command_drops_payloads_too(db: str, tmp_path: Path) -> None:
    add_deliveries(db, WITH_PAYLOADS)
    result = run_cli(tmp_path, "purge", DATABASE_URL=db, CLERK_SYNC_PAYLOAD_RETENTION_DAYS="1")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[1] == (
        "dropped 3 payloads of deliveries older than 1 days (dead letters keep theirs)"
    )
    assert with_payload(db) == {"dead_letter_10d", "new"}


def test_payload_retention_days_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLERK_SYNC_PAYLOAD_RETENTION_DAYS", raising=False)
    assert load_settings().payload_retention_days == 3
    monkeypatch.setenv("CLERK_SYNC_PAYLOAD_RETENTION_DAYS", "0")
    assert load_settings().payload_retention_days == 0
    monkeypatch.setenv("CLERK_SYNC_PAYLOAD_RETENTION_DAYS", "-1")
    with pytest.raises(ConfigError, match=r"^CLERK_SYNC_PAYLOAD_RETENTION_DAYS: "):
        load_settings()


def test_organization_deliveries_age_out_like_the_rest(db: str) -> None:
    """Organization and membership deliveries keep their payloads (replay needs them) for the
    payload days, their rows for the retention days; the organization rows themselves stay."""
    t = 1_716_883_200_000
    events = {
        "org_old": support.organization_event("organization.created", "org_r", t),
        "mem_mid": support.membership_event(
            "organizationMembership.created", "orgmem_r", "org_r", "user_r", t
        ),
        "org_new": support.organization_event("organization.updated", "org_r", t + 1),
    }
    support.fetch(
        db,
        "select * from public.clerk_sync_apply_batch($1::text[], $2::jsonb[])",
        list(events),
        [support.dumps(event).decode() for event in events.values()],
    )
    for svix_id, age in [("org_old", "31 days"), ("mem_mid", "4 days"), ("org_new", "1 hour")]:
        support.fetch(
            db,
            "update clerk_sync.inbox set received_at = now() - $2::text::interval"
            " where svix_id = $1",
            svix_id,
            age,
        )
    assert with_payload(db) == set(events)

    async def go() -> tuple[int, int]:
        conn = await asyncpg.connect(db)
        try:
            return await retention.retention_pass(conn, 30, 3)
        finally:
            await conn.close()

    assert support.run(go()) == (1, 1)
    assert remaining(db) == {"mem_mid", "org_new"}
    assert with_payload(db) == {"org_new"}
    kept = support.fetch(db, "select event_type, user_id from clerk_sync.inbox order by 1")
    assert kept == [
        {"event_type": "organization.updated", "user_id": None},
        {"event_type": "organizationMembership.created", "user_id": "user_r"},
    ]
    assert [r["id"] for r in support.fetch(db, "select id from public.organizations")] == ["org_r"]
