"""`clerk-sync backfill` against the Backend API stand-in, on real PostgreSQL.

The stand-in speaks Clerk's wire format over HTTP (tests/clerk_standin.py); the writes go through
public.clerk_sync_apply like webhooks, so these tests check that the guarantees hold for the
backfill too: a newer webhook wins, a deleted user stays deleted, a rerun changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clerk_sync import backfill as backfilling
from clerk_sync.backfill import BackfillOptions, BackfillResult, PlainReporter, PruneRefused
from clerk_sync.clerk_api import ClerkAPIError, ClerkClient
from clerk_sync.custom_columns import CustomColumns, parse_custom_columns
from tests import clerk_standin, support
from tests.clerk_standin import StandIn, clerk_user, clerk_users

CLEAN_BACKFILL_SQL = "truncate clerk_sync.backfill_runs, clerk_sync.backfill_seen"


@pytest.fixture
def bdb(db: str) -> str:
    """The session's database, emptied, backfill bookkeeping included."""
    support.execute(db, CLEAN_BACKFILL_SQL)
    return db


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with clerk_standin.running(StandIn()) as server:
        yield server


async def _fast_sleep(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.01))


def run_backfill(
    dsn: str,
    standin: StandIn,
    options: BackfillOptions | None = None,
    *,
    real_sleep: bool = False,
    max_attempts: int = 6,
    notes: io.StringIO | None = None,
) -> BackfillResult:
    async def go() -> BackfillResult:
        conn = await asyncpg.connect(dsn)
        clerk = ClerkClient(
            standin.secret_key,
            standin.url,
            max_attempts=max_attempts,
            sleep=asyncio.sleep if real_sleep else _fast_sleep,
        )
        try:
            reporter = PlainReporter(notes if notes is not None else io.StringIO())
            return await backfilling.backfill(clerk, conn, options or BackfillOptions(), reporter)
        finally:
            await clerk.close()
            await conn.close()

    result: BackfillResult = asyncio.run(go())
    return result


def apply_event(dsn: str, svix_id: str, event: dict[str, Any], mode: str = "soft") -> str:
    rows = support.fetch(
        dsn,
        "select public.clerk_sync_apply($1, $2::jsonb, $3) as o",
        svix_id,
        json.dumps(event),
        mode,
    )
    return str(rows[0]["o"])


def scalar(dsn: str, query: str, *args: Any) -> Any:
    return next(iter(support.fetch(dsn, query, *args)[0].values()))


def user_row(dsn: str, user_id: str) -> dict[str, Any]:
    return support.fetch(dsn, "select * from public.users where id = $1", user_id)[0]


def test_10000_users_then_a_rerun_changes_nothing(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(10_000)
    standin.rate_limit_requests = {3}  # Retry-After: 1, waited for for real
    standin.error_requests = {6}  # one 500, retried after a back-off

    started = time.monotonic()
    result = run_backfill(bdb, standin, real_sleep=True)
    seconds = time.monotonic() - started
    print(f"\nbackfilled 10,000 users in {seconds:.2f} s")

    t = result.tally
    assert (t.created, t.updated, t.unchanged, t.stale, t.deleted, t.errors) == (
        10_000,
        0,
        0,
        0,
        0,
        0,
    )
    assert result.exit_status == backfilling.REPAIRED
    assert result.retries == {"rate_limited": 1, "server_error": 1, "network_error": 0}
    assert scalar(bdb, "select count(*) from public.users where deleted_at is null") == 10_000
    row = user_row(bdb, "user_004242bf")
    assert (row["email"], row["email_verified"], row["first_name"]) == (
        "user4242@example.com",
        True,
        "First4242",
    )
    assert row["updated_at"].timestamp() * 1000 == clerk_standin.BASE_CREATED_AT + 4242 * 1000 + 500
    assert "private_metadata" not in row
    inbox = support.fetch(
        bdb,
        "select svix_id, event_type, outcome from clerk_sync.inbox where user_id = 'user_000007bf'",
    )
    assert inbox == [
        {
            "svix_id": f"backfill:user_000007bf:{clerk_standin.BASE_CREATED_AT + 7500}:0",
            "event_type": "user.updated",
            "outcome": "applied",
        }
    ]
    runs = support.fetch(
        bdb, "select resource, next_offset, outcome, counts from clerk_sync.backfill_runs"
    )
    # Users, then organizations, memberships and invitations (none of them): it ended on the
    # last.
    assert [(r["resource"], r["next_offset"], r["outcome"]) for r in runs] == [
        ("invitations", 0, "completed")
    ]
    assert json.loads(runs[0]["counts"])["users"]["created"] == 10_000
    assert scalar(bdb, "select count(*) from clerk_sync.backfill_seen") == 0  # forgotten when done

    inbox_before = scalar(bdb, "select count(*) from clerk_sync.inbox")
    again = run_backfill(bdb, standin)
    assert again.tally.unchanged == 10_000
    assert again.tally.drift == 0 and again.exit_status == backfilling.IN_SYNC
    assert scalar(bdb, "select count(*) from clerk_sync.inbox") == inbox_before  # wrote nothing


def test_an_interrupted_run_resumes_at_its_saved_offset(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(3000)
    standin.broken_from_offset = 1500  # pages 0, 500 and 1000 succeed, then Clerk fails hard
    with pytest.raises(ClerkAPIError, match="kept answering 500"):
        run_backfill(bdb, standin, max_attempts=2)
    assert scalar(bdb, "select count(*) from public.users") == 1500
    assert scalar(bdb, "select next_offset from clerk_sync.backfill_runs") == 1500
    assert scalar(bdb, "select resource from clerk_sync.backfill_runs") == "users"

    # Meanwhile: a row that Clerk no longer has (to prune) and one Clerk changed on a page
    # already read (the resumed run does not go back for it: the next run will).
    apply_event(bdb, "msg_gone", support.user_event("user.created", "user_gone", 1_600_000_000_000))
    standin.users[10] = clerk_user(10, updated_at=1_800_000_000_000, first_name="Changed")
    standin.broken_from_offset = None
    standin.log.clear()
    result = run_backfill(bdb, standin, BackfillOptions(prune=True))

    # The first pages were not read again (3000: the empty page that ends the listing).
    assert standin.page_offsets() == [1500, 2000, 2500, 3000]
    assert result.of("users").resumed_from == 1500
    assert result.tally.created == 3000  # counted across both processes
    assert result.tally.deleted == 1  # the ids listed before the interruption were remembered
    assert scalar(bdb, "select count(*) from public.users where deleted_at is null") == 3000
    assert user_row(bdb, "user_gone")["deleted_at"] is not None
    assert user_row(bdb, "user_000010bf")["first_name"] == "First10"

    # --restart would begin anew; a finished run is never resumed.
    standin.log.clear()
    assert run_backfill(bdb, standin).tally.updated == 1
    assert standin.page_offsets() == [0, 500, 1000, 1500, 2000, 2500, 3000]


def test_a_cancelled_run_keeps_only_whole_pages(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(2500)

    class CancelAfter(PlainReporter):
        def page(self, resource: str, done: int, tally: backfilling.Tally) -> None:
            if done >= 1000:
                raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the run

    async def go() -> None:
        conn = await asyncpg.connect(bdb)
        try:
            async with ClerkClient(standin.secret_key, standin.url) as clerk:
                await backfilling.backfill(
                    clerk, conn, BackfillOptions(), CancelAfter(io.StringIO())
                )
        finally:
            await conn.close()

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(go())
    assert scalar(bdb, "select next_offset from clerk_sync.backfill_runs") == 1000

    standin.log.clear()
    result = run_backfill(bdb, standin)
    assert standin.page_offsets()[0] == 1000
    assert (result.tally.created, result.tally.unchanged) == (2500, 0)
    assert scalar(bdb, "select count(*) from public.users") == 2500

    # --restart begins anew: everything is read again, and is unchanged.
    standin.log.clear()
    support.execute(bdb, "update clerk_sync.backfill_runs set finished_at = null, outcome = null")
    result = run_backfill(bdb, standin, BackfillOptions(restart=True))
    assert standin.page_offsets()[0] == 0 and result.tally.unchanged == 2500
    outcomes = [
        r["outcome"]
        for r in support.fetch(bdb, "select outcome from clerk_sync.backfill_runs order by id")
    ]
    assert outcomes == ["abandoned", "completed"]


def test_a_newer_webhook_wins_over_the_backfill(
    bdb: str, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.users = clerk_users(600)
    user_a, user_b = standin.users[5], standin.users[550]
    newer = user_a["updated_at"] + 60_000

    # A webhook lands before the backfill reads the page ...
    def webhook_first(offset: int) -> None:
        if offset == 0:
            event = support.user_event(
                "user.updated", user_a["id"], newer, first_name="FromWebhook"
            )
            assert apply_event(bdb, "msg_a", event) == "applied"

    standin.before_page = webhook_first

    # ... and another between the backfill's look at the database and its write.
    classify = backfilling._classify

    async def classify_then_webhook(conn: Any, *page: Any) -> tuple[Any, dict[str, str]]:
        listed, statuses = await classify(conn, *page)
        if user_b["id"] in listed:
            event = support.user_event(
                "user.updated", user_b["id"], user_b["updated_at"] + 1, first_name="Racer"
            )
            other = await asyncpg.connect(bdb)
            try:
                await other.fetchval(
                    "select public.clerk_sync_apply('msg_b', $1::jsonb, 'soft')", json.dumps(event)
                )
            finally:
                await other.close()
        return listed, statuses

    monkeypatch.setattr(backfilling, "_classify", classify_then_webhook)
    result = run_backfill(bdb, standin)

    assert (result.tally.created, result.tally.stale) == (598, 2)
    assert user_row(bdb, user_a["id"])["first_name"] == "FromWebhook"
    assert user_row(bdb, user_b["id"])["first_name"] == "Racer"
    assert set(result.of("users").samples["stale"]) == {user_a["id"], user_b["id"]}


def test_a_deleted_user_is_not_revived(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(20)
    soft, hard = standin.users[3]["id"], standin.users[4]["id"]
    apply_event(bdb, "msg_soft", support.user_event("user.created", soft, 1))
    apply_event(bdb, "msg_del_soft", support.deleted_event(soft))
    apply_event(bdb, "msg_del_hard", support.deleted_event(hard), mode="hard")

    result = run_backfill(bdb, standin)
    assert (result.tally.created, result.tally.stale) == (18, 2)
    assert user_row(bdb, soft)["deleted_at"] is not None
    assert support.fetch(bdb, "select 1 from public.users where id = $1", hard) == []
    assert scalar(bdb, "select count(*) from clerk_sync.tombstones") == 2


def test_a_sign_in_newer_than_the_row_is_copied(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(3)
    run_backfill(bdb, standin)
    standin.users[1]["last_sign_in_at"] = 1_750_000_000_000  # updated_at unchanged
    result = run_backfill(bdb, standin)
    assert (result.tally.updated, result.tally.unchanged) == (1, 2)
    assert user_row(bdb, standin.users[1]["id"])["last_sign_in_at"].timestamp() == 1_750_000_000


def test_a_user_that_cannot_be_written_is_counted_and_the_rest_go_on(
    bdb: str, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.users = clerk_users(700)
    del standin.users[3]["updated_at"]  # the webhook path would turn it away too
    notes = io.StringIO()
    result = run_backfill(bdb, standin, notes=notes)
    assert (result.tally.created, result.tally.errors) == (699, 1)
    assert result.exit_status == backfilling.FAILED
    assert (
        "cannot write user 'user_000003bf' (offset 0): user.updated event without a millisecond updated_at"
        in notes.getvalue()
    )

    # When the page's one statement fails, each user is written on its own instead.
    support.execute(bdb, support.CLEAN_SQL + ";" + CLEAN_BACKFILL_SQL)
    standin.users = clerk_users(700)
    monkeypatch.setattr(
        backfilling,
        "APPLY_PAGE_SQL",
        "select 1 / 0 from unnest($1::text[], $2::jsonb[], array[$3::text])",
    )
    result = run_backfill(bdb, standin)
    assert (result.tally.created, result.tally.errors) == (700, 0)
    assert scalar(bdb, "select count(*) from public.users") == 700


def test_a_user_an_apps_constraint_refuses_is_an_error_and_the_run_goes_on(
    bdb: str, standin: StandIn
) -> None:
    """A check constraint the app added refuses one user: the others are written, the run
    completes and reports one error, said by constraint, without the user's values."""
    standin.users = clerk_users(30)
    standin.users[7]["first_name"] = "Bartholomew-jöhn.doe@exämple.de"
    support.execute(
        bdb,
        "alter table public.users add constraint app_first_name_short"
        " check (length(first_name) < 20)",
    )
    notes = io.StringIO()
    try:
        result = run_backfill(bdb, standin, notes=notes)
    finally:
        support.execute(
            bdb, "alter table public.users drop constraint if exists app_first_name_short"
        )
    assert (result.tally.created, result.tally.errors) == (29, 1)
    assert result.exit_status == backfilling.FAILED
    assert scalar(bdb, "select count(*) from public.users") == 29
    said = notes.getvalue()
    assert f"cannot write user {standin.users[7]['id']}" in said and "app_first_name_short" in said
    assert "23514" in said and "jöhn" not in said and "Bartholomew" not in said
    assert "Failing row" not in said
    assert "errors 1 (some users could not be written)" in result.summary()


def test_dry_run_writes_nothing(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(1200)
    run_backfill(bdb, standin, BackfillOptions(max_prune_ratio=1.0))
    support.execute(bdb, CLEAN_BACKFILL_SQL)
    # Drift: one user changed in Clerk, one missing from the table, one gone from Clerk.
    standin.users[7] = clerk_user(7, updated_at=1_800_000_000_000, first_name="Renamed")
    support.execute(bdb, f"delete from public.users where id = '{standin.users[900]['id']}'")
    apply_event(bdb, "msg_gone", support.user_event("user.created", "user_gone", 1_600_000_000_000))

    def snapshot() -> tuple[Any, ...]:
        return (
            support.fetch(bdb, "select * from public.users order by id"),
            scalar(bdb, "select count(*) from clerk_sync.inbox"),
            scalar(bdb, "select count(*) from clerk_sync.tombstones"),
            scalar(bdb, "select count(*) from clerk_sync.backfill_runs"),
        )

    before = snapshot()
    result = run_backfill(bdb, standin, BackfillOptions(dry_run=True, prune=True))
    assert snapshot() == before
    t = result.tally
    assert (t.created, t.updated, t.unchanged, t.deleted) == (1, 1, 1198, 1)
    assert result.exit_status == backfilling.DRIFT_FOUND
    assert result.summary().startswith(
        "dry run, nothing written: 1200 users listed; would have created 1"
    )
    assert result.of("users").samples == {
        "updated": [standin.users[7]["id"]],
        "created": [standin.users[900]["id"]],
        "deleted": ["user_gone"],
    }


def test_prune_and_its_guard(bdb: str, standin: StandIn) -> None:
    standin.users = clerk_users(40)
    run_backfill(bdb, standin)
    # Four users deleted in Clerk while the webhook endpoint was down: 10% is allowed, 4 > 4.0 not.
    gone = [u["id"] for u in standin.users[10:15]]
    standin.users = [u for u in standin.users if u["id"] not in gone]
    # A user who signed up while the run was going is not in its listing, and must stay.
    now_ms = int(time.time() * 1000)
    apply_event(
        bdb, "msg_new", support.user_event("user.created", "user_new", now_ms, created_at=now_ms)
    )
    # A user the listing missed (pages moved under it) but Clerk still has: looked up, kept.
    standin.unlisted = {standin.users[20]["id"]}

    with pytest.raises(
        PruneRefused, match=r"--prune refused: 6 of 41 users \(14\.6%\) are not in Clerk"
    ) as refused:
        run_backfill(bdb, standin, BackfillOptions(prune=True))
    assert refused.value.result.tally.unchanged == 34
    assert scalar(bdb, "select count(*) from public.users where deleted_at is null") == 41
    assert (
        scalar(bdb, "select outcome from clerk_sync.backfill_runs order by id desc limit 1")
        == "prune_refused"
    )

    notes = io.StringIO()
    result = run_backfill(bdb, standin, BackfillOptions(prune=True, force=True), notes=notes)
    assert result.tally.deleted == 5 and result.exit_status == backfilling.REPAIRED
    assert "1 users missing from the listing are still in Clerk" in notes.getvalue()
    deleted = support.fetch(
        bdb, "select id from public.users where deleted_at is not null order by id"
    )
    assert [r["id"] for r in deleted] == gone
    assert (
        scalar(bdb, "select count(*) from clerk_sync.inbox where svix_id like 'backfill-prune:%'")
        == 5
    )

    # Under the ratio, no --force is needed; a rerun finds nothing more to prune.
    standin.unlisted = set()
    apply_event(bdb, "msg_old", support.user_event("user.created", "user_old", 1_600_000_000_000))
    result = run_backfill(bdb, standin, BackfillOptions(prune=True))
    assert result.tally.deleted == 1 and user_row(bdb, "user_old")["deleted_at"] is not None
    assert user_row(bdb, "user_new")["deleted_at"] is None
    assert (
        run_backfill(bdb, standin, BackfillOptions(prune=True)).exit_status == backfilling.IN_SYNC
    )


# --- the command, as a scheduler runs it ------------------------------------------------------


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "clerk_sync", "backfill", *args],
        env={**full_env, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_end_to_end(bdb: str, standin: StandIn, tmp_path: Path) -> None:
    standin.users = clerk_users(1200)
    env = {
        "CLERK_SECRET_KEY": standin.secret_key,
        "CLERK_API_URL": standin.url,
        "DATABASE_URL": bdb,
    }

    first = cli([], env, tmp_path)
    assert first.returncode == 3, first.stderr
    users_line, organizations_line, memberships_line, invitations_line = (
        first.stdout.strip().splitlines()
    )
    assert users_line.startswith("backfill complete: 1200 users listed in ")
    assert users_line.endswith(
        "created 1200, updated 0, unchanged 0, stale 0, deleted 0, errors 0 (drift repaired)"
    )
    assert organizations_line.startswith("backfill complete: 0 organizations listed in ")
    assert memberships_line.endswith("(in sync)") and invitations_line.endswith("(in sync)")
    assert "clerk-sync: backfill: 1200/1200 users" in first.stderr  # plain lines: not a terminal
    assert scalar(bdb, "select count(*) from public.users") == 1200

    again = cli(["--prune"], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("(in sync)")

    standin.users[0] = clerk_user(0, updated_at=1_800_000_000_000)
    dry = cli(["--dry-run"], env, tmp_path)
    assert dry.returncode == 4, dry.stderr
    assert "would have created 0, updated 1" in dry.stdout
    assert f"clerk-sync: users updated (first 1): {standin.users[0]['id']}" in dry.stderr


def test_the_command_fails_fast_on_a_wrong_key(bdb: str, standin: StandIn, tmp_path: Path) -> None:
    env = {
        "CLERK_SECRET_KEY": "sk_test_wrong_key_123",
        "CLERK_API_URL": standin.url,
        "DATABASE_URL": bdb,
    }
    started = time.monotonic()
    result = cli([], env, tmp_path)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "clerk-sync: CLERK_SECRET_KEY was rejected (401): check it is the secret key of the same "
        "Clerk instance (Clerk said: Unable to authenticate the request, you need to supply an "
        "active API key)"
    ]
    assert len(standin.log) == 1  # no retries


def test_the_command_needs_a_secret_key(tmp_path: Path, database_url: str) -> None:
    missing = cli([], {"DATABASE_URL": database_url}, tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("clerk-sync: CLERK_SECRET_KEY: not set")
    assert len(missing.stderr.splitlines()) == 1

    wrong = cli(
        [], {"DATABASE_URL": database_url, "CLERK_SECRET_KEY": "pk_test_c2VjcmV0"}, tmp_path
    )
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(
        "clerk-sync: CLERK_SECRET_KEY: a Clerk secret key starts with 'sk_'"
    )
    assert "c2VjcmV0" not in wrong.stderr


def test_the_command_reports_a_refused_prune(bdb: str, standin: StandIn, tmp_path: Path) -> None:
    apply_event(
        bdb, "msg_x", support.user_event("user.created", "user_elsewhere", 1_600_000_000_000)
    )
    standin.users = clerk_users(3)  # none of them is in the table: another instance's key?
    env = {
        "CLERK_SECRET_KEY": standin.secret_key,
        "CLERK_API_URL": standin.url,
        "DATABASE_URL": bdb,
    }
    result = cli(["--prune"], env, tmp_path)
    assert result.returncode == 2
    assert "--prune refused: 1 of 4 users (25.0%)" in result.stderr.splitlines()[-1]
    assert user_row(bdb, "user_elsewhere")["deleted_at"] is None


@contextlib.contextmanager
def row_locked(dsn: str, user_id: str, most: float = 20.0) -> Iterator[None]:
    """An app's open transaction holding `user_id`'s row (`select … for update`), in a thread
    of its own, for the block (at most `most` seconds)."""
    locked, done = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("select * from public.users where id = $1 for update", user_id)
                locked.set()
                await asyncio.get_running_loop().run_in_executor(None, done.wait, most)
        finally:
            await conn.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        done.set()
        holder.join()


def test_a_user_held_by_another_transaction_is_an_error_and_the_rest_go_on(
    bdb: str, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.users = clerk_users(50)
    held = standin.users[5]["id"]
    support.execute(bdb, f"insert into public.users (id) values ('{held}')")
    monkeypatch.setattr(backfilling, "LOCKED_RETRIES", 3)
    notes = io.StringIO()
    started = time.monotonic()
    with row_locked(bdb, held):
        result = run_backfill(bdb, standin, notes=notes)
        took = time.monotonic() - started
    assert took < 10  # it did not wait for the app's transaction
    assert (result.tally.created, result.tally.errors) == (49, 1)
    assert f"cannot write user {held}: another transaction holds it" in notes.getvalue()
    assert user_row(bdb, held)["updated_at"] is None
    # The next run writes it.
    result = run_backfill(bdb, standin)
    assert (result.tally.updated, result.tally.errors) == (1, 0)


# --- organizations and memberships ------------------------------------------------------------


def org_row(dsn: str, org_id: str) -> dict[str, Any]:
    return support.fetch(dsn, "select * from public.organizations where id = $1", org_id)[0]


def membership_row(dsn: str, membership_id: str) -> dict[str, Any]:
    return support.fetch(
        dsn, "select * from public.organization_memberships where id = $1", membership_id
    )[0]


def one_membership_per_org(standin: StandIn, count: int) -> None:
    """`count` organizations, each with one membership of its own user (user i in org i)."""
    standin.organizations = clerk_standin.clerk_organizations(count)
    standin.memberships = [
        clerk_standin.clerk_membership(i, standin.organizations[i], f"user_{i:06d}bf")
        for i in range(count)
    ]


def event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"object": "event", "type": event_type, "data": data}


def test_organizations_and_memberships_are_copied_one_request_a_page(
    bdb: str, standin: StandIn
) -> None:
    standin.users = clerk_users(30)
    standin.organizations = clerk_standin.clerk_organizations(1200)
    standin.memberships = clerk_standin.clerk_memberships(1300, standin.organizations, 30)
    standin.rate_limit_requests = {3}  # the first page of organizations: waited for, retried

    result = run_backfill(bdb, standin)

    orgs, members = result.of("organizations").tally, result.of("memberships").tally
    assert (orgs.created, orgs.errors, members.created, members.errors) == (1200, 0, 1300, 0)
    assert result.of("users").tally.created == 30
    assert result.retries["rate_limited"] == 1 and result.exit_status == backfilling.REPAIRED
    # One request a page, users first, then organizations, then memberships; nothing per object.
    paths = [r.path for r in standin.log if r.status == 200]
    assert paths == [
        "/v1/users/count",
        "/v1/users",
        *["/v1/organizations"] * 3,
        *["/v1/organization_memberships"] * 3,
        "/v1/organization_invitations",
    ]
    assert standin.page_offsets("/v1/organizations") == [0, 500, 1000]
    assert all(r.query["limit"] == ["500"] for r in standin.log if r.path != "/v1/users/count")
    assert all(r.query["order_by"] == ["+created_at"] for r in standin.log if r.query)

    org = org_row(bdb, "org_000007bf")
    assert (org["name"], org["slug"], org["max_allowed_memberships"]) == ("Org 7", "org-7", 5)
    assert org["public_metadata"] == '{"tier": "free"}' and "private_metadata" not in org
    assert org["updated_at"].timestamp() * 1000 == clerk_standin.BASE_CREATED_AT + 7300
    member = membership_row(bdb, "orgmem_0001234bf")
    assert (member["organization_id"], member["user_id"], member["role"]) == (
        "org_000034bf",
        "user_000001bf",
        "org:member",
    )
    assert member["permissions"] == ["org:sys_profile:read"]
    assert (
        scalar(bdb, "select count(*) from public.organization_memberships where deleted_at is null")
        == 1300
    )
    inbox = support.fetch(
        bdb,
        "select svix_id, event_type from clerk_sync.inbox where svix_id like 'backfill:org\\_0%'",
    )
    assert len(inbox) == 1200 and {r["event_type"] for r in inbox} == {"organization.updated"}

    inbox_before = scalar(bdb, "select count(*) from clerk_sync.inbox")
    again = run_backfill(bdb, standin)
    assert again.tally.unchanged == 30 + 1200 + 1300 and again.tally.drift == 0
    assert again.exit_status == backfilling.IN_SYNC
    assert scalar(bdb, "select count(*) from clerk_sync.inbox") == inbox_before
    assert (
        again.summary()
        .splitlines()[1]
        .startswith("backfill complete: 1200 organizations listed in ")
    )


def test_newer_organization_rows_stay_and_deleted_ones_are_not_revived(
    bdb: str, standin: StandIn
) -> None:
    one_membership_per_org(standin, 10)
    o, m = standin.organizations, standin.memberships
    newer = {**o[2], "name": "From a webhook", "updated_at": o[2]["updated_at"] + 60_000}
    assert apply_event(bdb, "w1", event("organization.updated", newer)) == "applied"
    deleted_org = {"object": "organization", "id": o[3]["id"], "deleted": True}
    assert apply_event(bdb, "w2", event("organization.deleted", deleted_org)) == "applied"
    newer_member = {**m[4], "role": "org:admin", "updated_at": m[4]["updated_at"] + 60_000}
    assert (
        apply_event(bdb, "w3", event("organizationMembership.updated", newer_member)) == "applied"
    )
    assert apply_event(bdb, "w4", event("organizationMembership.deleted", m[5])) == "applied"
    assert apply_event(bdb, "w5", support.deleted_event("user_000006bf")) == "applied"

    result = run_backfill(bdb, standin)

    orgs, members = result.of("organizations"), result.of("memberships")
    # (Organizations 4 and 5 came with the webhooks' memberships: already current.)
    assert (orgs.tally.created, orgs.tally.unchanged, orgs.tally.stale) == (6, 2, 2)
    assert set(orgs.samples["stale"]) == {o[2]["id"], o[3]["id"]}
    assert (members.tally.created, members.tally.stale) == (6, 4)
    assert set(members.samples["stale"]) == {m[i]["id"] for i in (3, 4, 5, 6)}
    assert org_row(bdb, o[2]["id"])["name"] == "From a webhook"
    # Deleted before it was ever seen: a tombstone, and no row brought to life.
    assert support.fetch(bdb, "select 1 from public.organizations where id = $1", o[3]["id"]) == []
    assert scalar(bdb, "select count(*) from clerk_sync.organization_tombstones") == 1
    assert membership_row(bdb, m[4]["id"])["role"] == "org:admin"
    assert scalar(bdb, "select count(*) from clerk_sync.membership_tombstones") == 1  # m[5]
    assert (
        support.fetch(
            bdb,
            "select 1 from public.organization_memberships where id = any($1::text[])",
            [m[3]["id"], m[5]["id"], m[6]["id"]],
        )
        == []
    )
    # A rerun agrees: nothing to write.
    again = run_backfill(bdb, standin)
    assert again.tally.drift == 0 and again.of("memberships").tally.stale == 4


def test_an_interrupted_run_resumes_in_the_middle_of_the_organizations(
    bdb: str, standin: StandIn
) -> None:
    standin.users = clerk_users(20)
    standin.organizations = clerk_standin.clerk_organizations(1600)
    standin.memberships = clerk_standin.clerk_memberships(30, standin.organizations, 20)
    standin.broken_list, standin.broken_from_offset = "/v1/organizations", 1000
    with pytest.raises(ClerkAPIError, match="kept answering 500"):
        run_backfill(bdb, standin, max_attempts=2)
    saved = support.fetch(bdb, "select resource, next_offset from clerk_sync.backfill_runs")
    assert [(r["resource"], r["next_offset"]) for r in saved] == [("organizations", 1000)]
    assert scalar(bdb, "select count(*) from public.organizations") == 1000

    standin.broken_from_offset = None
    standin.log.clear()
    result = run_backfill(bdb, standin)

    assert standin.page_offsets("/v1/users") == []  # done before the interruption
    assert standin.page_offsets("/v1/organizations") == [1000, 1500]
    assert standin.page_offsets("/v1/organization_memberships") == [0]
    orgs = result.of("organizations")
    assert (orgs.tally.created, orgs.resumed_from) == (1600, 1000)  # across both processes
    assert result.of("users").tally.created == 20 and not result.of("users").walked
    assert "20 users listed (by the run this one resumed)" in result.summary()
    assert result.of("memberships").tally.created == 30
    assert scalar(bdb, "select count(*) from public.organizations") == 1600


def broken_at_the_second_page_of_organizations_then_run(
    bdb: str, standin: StandIn, first: BackfillOptions
) -> tuple[BackfillResult, str]:
    """A run with `first` stopped by Clerk at organizations offset 500, then a run of every
    resource once Clerk is well: its result and its notes (the stand-in's log is the second's)."""
    standin.broken_list, standin.broken_from_offset = "/v1/organizations", 500
    with pytest.raises(ClerkAPIError):
        run_backfill(bdb, standin, first, max_attempts=1)
    standin.broken_from_offset = None
    standin.log.clear()
    notes = io.StringIO()
    return run_backfill(bdb, standin, notes=notes), notes.getvalue()


def test_a_run_over_other_resources_does_not_resume_an_unfinished_one(
    bdb: str, standin: StandIn
) -> None:
    one_membership_per_org(standin, 600)
    only_orgs = BackfillOptions(resources=("organizations",))
    result, notes = broken_at_the_second_page_of_organizations_then_run(bdb, standin, only_orgs)
    assert "an unfinished backfill of organizations is abandoned" in notes
    assert standin.page_offsets("/v1/organizations") == [0, 500]
    assert (
        result.of("organizations").tally.unchanged,
        result.of("organizations").tally.created,
    ) == (
        500,
        100,
    )
    outcomes = support.fetch(bdb, "select outcome from clerk_sync.backfill_runs order by id")
    assert [r["outcome"] for r in outcomes] == ["abandoned", "completed"]


def test_dry_run_says_what_would_change_per_resource(bdb: str, standin: StandIn) -> None:
    one_membership_per_org(standin, 30)
    run_backfill(bdb, standin)
    support.execute(bdb, CLEAN_BACKFILL_SQL)
    o, m = standin.organizations, standin.memberships
    o[1] = {**o[1], "name": "Renamed", "updated_at": 1_800_000_000_000}
    support.execute(bdb, f"delete from public.organization_memberships where id = '{m[2]['id']}'")
    old = clerk_standin.clerk_organization(999, created_at=1_600_000_000_000)
    apply_event(bdb, "w_gone", event("organization.updated", old))

    def snapshot() -> tuple[Any, ...]:
        return (
            support.fetch(bdb, "select * from public.organizations order by id"),
            support.fetch(bdb, "select * from public.organization_memberships order by id"),
            scalar(bdb, "select count(*) from clerk_sync.inbox"),
            scalar(bdb, "select count(*) from clerk_sync.backfill_runs"),
        )

    before = snapshot()
    result = run_backfill(
        bdb, standin, BackfillOptions(dry_run=True, prune=True, max_prune_ratio=1.0)
    )
    assert snapshot() == before
    orgs, members = result.of("organizations").tally, result.of("memberships").tally
    assert (orgs.updated, orgs.unchanged, orgs.deleted) == (1, 29, 1)
    assert (members.created, members.unchanged, members.deleted) == (1, 29, 0)
    assert result.exit_status == backfilling.DRIFT_FOUND
    assert result.of("organizations").samples == {"updated": [o[1]["id"]], "deleted": [old["id"]]}
    lines = result.summary().splitlines()
    assert lines[1] == (
        "dry run, nothing written: 30 organizations listed; would have created 0, updated 1, "
        "unchanged 29, stale 0, deleted 1, errors 0 (drift found)"
    )


def test_prune_of_organizations_and_memberships_and_its_guard(bdb: str, standin: StandIn) -> None:
    one_membership_per_org(standin, 20)
    run_backfill(bdb, standin)
    o, m = standin.organizations, standin.memberships
    # Three organizations deleted in Clerk (with their memberships) while the endpoint was down,
    # and one membership ended: 15% of the organizations, more than the 10% allowed.
    gone_orgs = [x["id"] for x in o[:3]]
    standin.organizations = o[3:]
    standin.memberships = [x for x in m[3:] if x["id"] != m[10]["id"]]
    # A membership the listing missed (pages moved under it) but Clerk still has: kept.
    standin.unlisted = {m[11]["id"]}
    # An organization created while the run went is not in its listing, and must stay.
    now_ms = int(time.time() * 1000)
    fresh = clerk_standin.clerk_organization(500, created_at=now_ms, updated_at=now_ms)
    apply_event(bdb, "w_new", event("organization.created", fresh))

    with pytest.raises(PruneRefused) as refused:
        run_backfill(bdb, standin, BackfillOptions(prune=True))
    message = str(refused.value)
    assert message.startswith(
        "--prune refused: 3 of 21 organizations (14.3%) and 5 of 20 memberships (25.0%) are not "
        "in Clerk, more than --max-prune-ratio 10%"
    )
    assert scalar(bdb, "select count(*) from public.organizations where deleted_at is null") == 21

    standin.log.clear()
    notes = io.StringIO()
    result = run_backfill(bdb, standin, BackfillOptions(prune=True, force=True), notes=notes)
    orgs, members = result.of("organizations"), result.of("memberships")
    assert orgs.tally.deleted == 3 and sorted(orgs.samples["deleted"]) == gone_orgs
    # The organizations' deletes ended their memberships; then one is pruned on its own.
    assert members.tally.deleted == 1 and members.samples["deleted"] == [m[10]["id"]]
    assert "--prune: 1 memberships missing from the listing are still in Clerk" in notes.getvalue()
    assert result.exit_status == backfilling.REPAIRED
    # Confirmed by a lookup: each organization by id, each membership among its organization's
    # members (by user id).
    lookups = sorted(r.path for r in standin.log if r.path.startswith("/v1/organizations/"))
    assert lookups == [
        *[f"/v1/organizations/{org_id}" for org_id in gone_orgs],
        f"/v1/organizations/{m[10]['organization']['id']}/memberships",
        f"/v1/organizations/{m[11]['organization']['id']}/memberships",
    ]
    for org_id in gone_orgs:
        assert org_row(bdb, org_id)["deleted_at"] is not None
    assert all(membership_row(bdb, x["id"])["deleted_at"] is not None for x in m[:3])
    assert membership_row(bdb, m[10]["id"])["deleted_at"] is not None
    assert membership_row(bdb, m[11]["id"])["deleted_at"] is None
    assert org_row(bdb, fresh["id"])["deleted_at"] is None
    assert (
        scalar(
            bdb,
            "select count(*) from clerk_sync.membership_tombstones where membership_id = $1",
            m[10]["id"],
        )
        == 1
    )
    assert (
        run_backfill(bdb, standin, BackfillOptions(prune=True)).exit_status == backfilling.IN_SYNC
    )


def test_only_some_resources(bdb: str, standin: StandIn) -> None:
    assert backfilling.select_resources([]) == (
        "users",
        "organizations",
        "memberships",
        "invitations",
    )
    assert backfilling.select_resources(["memberships", "users"]) == ("users", "memberships")
    assert backfilling.select_resources(["invitations, Memberships"]) == (
        "memberships",
        "invitations",
    )
    with pytest.raises(ValueError, match="--only: 'domains' is not one of users, "):
        backfilling.select_resources(["users,domains"])

    standin.users = clerk_users(5)
    one_membership_per_org(standin, 5)
    result = run_backfill(bdb, standin, BackfillOptions(resources=("organizations",)))
    assert [r.resource for r in result.resources] == ["organizations"]
    assert {r.path for r in standin.log} == {"/v1/organizations"}
    assert scalar(bdb, "select count(*) from public.users") == 0
    assert scalar(bdb, "select count(*) from public.organization_memberships") == 0

    result = run_backfill(bdb, standin, BackfillOptions(resources=("memberships",), prune=True))
    assert result.of("memberships").tally.created == 5
    assert scalar(bdb, "select count(*) from public.users") == 0  # members join their users later


def test_the_command_only_and_its_mistakes(bdb: str, standin: StandIn, tmp_path: Path) -> None:
    standin.users = clerk_users(3)
    one_membership_per_org(standin, 4)
    env = {
        "CLERK_SECRET_KEY": standin.secret_key,
        "CLERK_API_URL": standin.url,
        "DATABASE_URL": bdb,
    }
    done = cli(["--only", "organizations", "--only", "memberships"], env, tmp_path)
    assert done.returncode == 3, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["backfill complete"] * 2
    assert "4 organizations listed" in done.stdout and "4 memberships listed" in done.stdout
    assert "clerk-sync: backfill: 4/4 organizations" in done.stderr
    assert not any(r.path.startswith("/v1/users") for r in standin.log)

    wrong = cli(["--only", "users,teams"], env, tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == [
        "clerk-sync: --only: 'teams' is not one of users, organizations, memberships, invitations"
    ]

    standin.log.clear()
    bad_key = cli(
        ["--only", "organizations"], {**env, "CLERK_SECRET_KEY": "sk_test_nope"}, tmp_path
    )
    assert bad_key.returncode == 1
    assert bad_key.stderr.splitlines()[-1].startswith(
        "clerk-sync: CLERK_SECRET_KEY was rejected (401)"
    )
    assert len(standin.log) == 1


def test_a_run_left_open_by_the_release_before_resumes(bdb: str, standin: StandIn) -> None:
    """Before organizations, a run walked users only and kept flat counts: after the upgrade it
    resumes at its users offset, then walks the organizations and memberships too."""
    standin.users = clerk_users(700)
    one_membership_per_org(standin, 3)
    run_backfill(bdb, standin, BackfillOptions(resources=("users",)))
    support.execute(
        bdb,
        "insert into clerk_sync.backfill_runs (next_offset, counts) values "
        """(500, '{"created": 500, "updated": 0, "unchanged": 0, "stale": 0, "errors": 0}')""",
    )
    standin.log.clear()
    result = run_backfill(bdb, standin)
    assert standin.page_offsets() == [500]
    assert result.of("users").resumed_from == 500
    assert (result.of("users").tally.created, result.of("users").tally.unchanged) == (500, 200)
    assert result.of("organizations").tally.created == 3
    assert result.of("memberships").tally.created == 3
    assert result.of("invitations").walked


def test_the_prune_guard_holds_per_resource(bdb: str, standin: StandIn) -> None:
    """Users within the ratio are pruned while the organizations' guard refuses theirs: exit 2,
    naming only what was refused."""
    standin.users = clerk_users(40)
    one_membership_per_org(standin, 10)
    run_backfill(bdb, standin)
    gone_user = standin.users.pop(7)["id"]
    standin.organizations = standin.organizations[2:]  # 20% of them
    standin.memberships = standin.memberships[2:]

    with pytest.raises(PruneRefused) as refused:
        run_backfill(bdb, standin, BackfillOptions(prune=True))
    # The pruned user's membership ended with it (as user.deleted does): 9 are left live, and
    # those of the two organizations are candidates, refused as well.
    assert str(refused.value).startswith(
        "--prune refused: 2 of 10 organizations (20.0%) and 2 of 9 memberships (22.2%) are not "
        "in Clerk"
    )
    result = refused.value.result
    assert result.of("users").tally.deleted == 1 and user_row(bdb, gone_user)["deleted_at"]
    assert result.of("organizations").tally.deleted == 0
    assert scalar(bdb, "select count(*) from public.organizations where deleted_at is null") == 10
    assert membership_row(bdb, standin.memberships[5]["id"])["deleted_at"] is not None  # user 7


# --- invitations ----------------------------------------------------------------------------

DAY_MS = 86_400_000


def invitation_row(dsn: str, invitation_id: str) -> dict[str, Any]:
    return support.fetch(
        dsn, "select * from public.organization_invitations where id = $1", invitation_id
    )[0]


def invitations_per_org(standin: StandIn, organizations: int, count: int) -> None:
    """`count` invitations over `organizations` organizations, open until a year from now
    unless a test says otherwise."""
    standin.organizations = clerk_standin.clerk_organizations(organizations)
    in_a_year = int(time.time() * 1000) + 365 * DAY_MS
    standin.invitations = [
        {**x, "expires_at": in_a_year}
        for x in clerk_standin.clerk_invitations(count, standin.organizations)
    ]


def test_invitations_are_copied_one_request_a_page_as_the_event_of_their_status(
    bdb: str, standin: StandIn
) -> None:
    invitations_per_org(standin, 40, 1200)
    inv = standin.invitations
    past = clerk_standin.BASE_CREATED_AT + 10 * DAY_MS
    inv[12] = {**inv[12], "expires_at": past}  # pending past its expires_at: expired
    inv[20] = {**inv[20], "status": "expired", "expires_at": past}  # the listing may say so
    standin.rate_limit_requests = {4}  # the first page of invitations: waited for, retried

    result = run_backfill(bdb, standin)

    invitations = result.of("invitations").tally
    assert (invitations.created, invitations.errors) == (1200, 0)
    assert result.retries["rate_limited"] == 1 and result.exit_status == backfilling.REPAIRED
    # After the memberships, one request a page: every status (no filter), oldest first.
    assert [r.path for r in standin.log if r.status == 200][-3:] == [
        "/v1/organization_invitations"
    ] * 3
    assert standin.page_offsets("/v1/organization_invitations") == [0, 500, 1000]
    assert all(
        r.query == {"limit": ["500"], "offset": [str(r.offset)], "order_by": ["+created_at"]}
        for r in standin.log
        if r.path == "/v1/organization_invitations"
    )
    statuses = support.fetch(
        bdb, "select status, count(*) as n from public.organization_invitations group by status"
    )
    expected = {"pending": 0, "accepted": 0, "revoked": 0}
    for x in inv:
        expected["pending" if x["status"] == "expired" else x["status"]] += 1
    assert {r["status"]: r["n"] for r in statuses} == expected
    row = invitation_row(bdb, inv[3]["id"])  # accepted
    assert (row["organization_id"], row["email_address"], row["role"], row["inviter_id"]) == (
        "org_000003bf",
        "invitee3@example.com",
        "org:member",
        "user_000000bf",
    )
    assert row["user_id"] is None  # the listing does not say who accepted
    assert row["public_metadata"] == '{"source": "standin"}'
    assert "private_metadata" not in row and "url" not in row
    assert row["updated_at"].timestamp() * 1000 == inv[3]["updated_at"]
    # Expired, by either spelling: pending, its expires_at in the past.
    for x in (inv[12], inv[20]):
        expired = invitation_row(bdb, x["id"])
        assert expired["status"] == "pending"
        assert expired["expires_at"].timestamp() * 1000 == past
    inbox = support.fetch(
        bdb,
        "select svix_id, event_type, payload -> 'data' ->> 'status' as status "
        "from clerk_sync.inbox where svix_id = any($1::text[]) order by svix_id",
        [f"backfill:{inv[i]['id']}:{inv[i]['updated_at']}" for i in (0, 3, 5, 20)],
    )
    assert [(r["event_type"], r["status"]) for r in inbox] == [
        ("organizationInvitation.created", "pending"),
        ("organizationInvitation.accepted", "accepted"),
        ("organizationInvitation.revoked", "revoked"),
        ("organizationInvitation.created", "pending"),
    ]
    # Never pruned, so the ids it listed are not kept.
    assert scalar(bdb, "select count(*) from clerk_sync.inbox") == 40 + 1200
    standin.log.clear()
    again = run_backfill(bdb, standin)
    assert again.of("invitations").tally.unchanged == 1200 and again.tally.drift == 0
    assert again.exit_status == backfilling.IN_SYNC
    assert scalar(bdb, "select count(*) from clerk_sync.inbox") == 40 + 1200
    assert (
        again.summary().splitlines()[3].startswith("backfill complete: 1200 invitations listed in ")
    )


def test_newer_invitation_rows_stay_and_a_deleted_organizations_are_not_revived(
    bdb: str, standin: StandIn
) -> None:
    invitations_per_org(standin, 3, 9)  # invitation i in organization i % 3; 3 accepted, 5 revoked
    inv = standin.invitations
    # A webhook newer than the listing: kept.
    newer = support.invitation_event(
        "organizationInvitation.revoked",
        inv[1]["id"],
        inv[1]["organization_id"],
        inv[1]["updated_at"] + 60_000,
    )
    assert apply_event(bdb, "w1", newer) == "applied"
    # Accepted by webhook (which names the user); Clerk's copy changed since, and its listing
    # does not name the user: the row keeps its user_id.
    accepted = support.invitation_event(
        "organizationInvitation.accepted",
        inv[3]["id"],
        inv[3]["organization_id"],
        inv[3]["updated_at"],
        user_id="user_accepted",
    )
    assert apply_event(bdb, "w2", accepted) == "applied"
    inv[3] = {**inv[3], "role": "org:admin", "updated_at": inv[3]["updated_at"] + 1000}
    # Organization 2 was deleted, and its invitations are still listed: none may come back.
    deleted_org = {"object": "organization", "id": "org_000002bf", "deleted": True}
    assert apply_event(bdb, "w3", event("organization.deleted", deleted_org)) == "applied"

    dry = run_backfill(bdb, standin, BackfillOptions(dry_run=True))
    result = run_backfill(bdb, standin)

    stale = {inv[i]["id"] for i in (1, 2, 5, 8)}
    for run in (dry, result):  # the dry run's prediction is what the write path does
        t = run.of("invitations")
        assert (t.tally.created, t.tally.updated, t.tally.stale, t.tally.errors) == (4, 1, 4, 0)
        assert set(t.samples["stale"]) == stale and t.samples["updated"] == [inv[3]["id"]]
    assert invitation_row(bdb, inv[1]["id"])["status"] == "revoked"
    row = invitation_row(bdb, inv[3]["id"])
    assert (row["role"], row["status"], row["user_id"]) == (
        "org:admin",
        "accepted",
        "user_accepted",
    )
    assert (
        scalar(
            bdb,
            "select count(*) from public.organization_invitations where organization_id = $1",
            "org_000002bf",
        )
        == 0
    )
    again = run_backfill(bdb, standin)
    assert again.tally.drift == 0 and again.of("invitations").tally.stale == 4


def test_dry_run_of_invitations_writes_nothing_and_says_what_would_change(
    bdb: str, standin: StandIn
) -> None:
    invitations_per_org(standin, 4, 20)
    run_backfill(bdb, standin)
    support.execute(bdb, CLEAN_BACKFILL_SQL)
    inv = standin.invitations
    inv[2] = {**inv[2], "status": "revoked", "updated_at": inv[2]["updated_at"] + 5000}
    support.execute(bdb, f"delete from public.organization_invitations where id = '{inv[9]['id']}'")

    def snapshot() -> tuple[Any, ...]:
        return (
            support.fetch(bdb, "select * from public.organization_invitations order by id"),
            scalar(bdb, "select count(*) from clerk_sync.inbox"),
            scalar(bdb, "select count(*) from clerk_sync.backfill_runs"),
        )

    before = snapshot()
    result = run_backfill(bdb, standin, BackfillOptions(dry_run=True, resources=("invitations",)))
    assert snapshot() == before
    assert [r.resource for r in result.resources] == ["invitations"]
    assert result.of("invitations").samples == {
        "updated": [inv[2]["id"]],
        "created": [inv[9]["id"]],
    }
    assert result.exit_status == backfilling.DRIFT_FOUND
    assert result.summary() == (
        "dry run, nothing written: 20 invitations listed; would have created 1, updated 1, "
        "unchanged 18, stale 0, deleted 0, errors 0 (drift found)"
    )


def test_only_invitations_and_prune_leaves_them_alone(bdb: str, standin: StandIn) -> None:
    invitations_per_org(standin, 2, 6)
    result = run_backfill(bdb, standin, BackfillOptions(resources=("invitations",)))
    assert result.of("invitations").tally.created == 6
    assert {r.path for r in standin.log} == {"/v1/organization_invitations"}
    assert scalar(bdb, "select count(*) from public.organizations") == 0  # kept all the same

    # Gone from Clerk's list (its organization lives on): --prune does not cover invitations,
    # whatever the share; there is no invitation delete event to apply.
    gone = standin.invitations.pop(4)["id"]
    standin.log.clear()
    pruned = run_backfill(bdb, standin, BackfillOptions(prune=True, force=True))
    assert pruned.of("invitations").tally.deleted == 0
    assert pruned.of("invitations").tally.unchanged == 5
    assert invitation_row(bdb, gone)["deleted_at"] is None
    assert not any(
        "invitation" in r.path for r in standin.log if r.path != "/v1/organization_invitations"
    )
    # Organizations pruned end their invitations, as organization.deleted does.
    standin.organizations = standin.organizations[:1]
    standin.invitations = [x for x in standin.invitations if x["organization_id"] == "org_000000bf"]
    run_backfill(bdb, standin, BackfillOptions(prune=True, force=True))
    ended = support.fetch(
        bdb,
        "select organization_id, deleted_at is not null as ended "
        "from public.organization_invitations order by id",
    )
    assert {(r["organization_id"], r["ended"]) for r in ended} == {
        ("org_000000bf", False),
        ("org_000001bf", True),
    }


def test_a_run_left_open_before_invitations_takes_them_on_and_resumes(
    bdb: str, standin: StandIn
) -> None:
    """A run of the release before (users, organizations, memberships) resumes where it was and
    walks the invitations after them; one that would skip a resource is abandoned."""
    standin.users = clerk_users(3)
    one_membership_per_org(standin, 700)
    standin.invitations = clerk_standin.clerk_invitations(4, standin.organizations)
    three = BackfillOptions(resources=("users", "organizations", "memberships"))
    result, notes = broken_at_the_second_page_of_organizations_then_run(bdb, standin, three)
    assert "abandoned" not in notes
    assert standin.page_offsets("/v1/users") == []
    assert standin.page_offsets("/v1/organizations") == [500]
    assert (result.of("organizations").tally.created, result.of("invitations").tally.created) == (
        700,
        4,
    )
    runs = support.fetch(bdb, "select resources, outcome from clerk_sync.backfill_runs")
    assert [(list(r["resources"]), r["outcome"]) for r in runs] == [
        (["users", "organizations", "memberships", "invitations"], "completed")
    ]
    assert not backfilling._extends(["organizations"], "organizations", backfilling.RESOURCE_NAMES)
    assert not backfilling._extends(
        ["users", "invitations"], "invitations", backfilling.RESOURCE_NAMES
    )
    assert backfilling._extends(["users"], "users", ["users", "invitations"])


def test_an_invitation_is_written_as_the_webhook_of_its_status() -> None:
    listed = {"id": "orginv_1", "organization_id": "org_1", "status": "pending"}
    event = backfilling.INVITATIONS.event
    assert event(listed) == {
        "object": "event",
        "type": "organizationInvitation.created",
        "data": listed,
    }
    for status in ("accepted", "revoked"):
        assert event({**listed, "status": status})["type"] == f"organizationInvitation.{status}"
    expired = event({**listed, "status": "expired"})
    assert (expired["type"], expired["data"]["status"]) == (
        "organizationInvitation.created",
        "pending",
    )
    # A status Clerk may add one day is kept as sent (the row says it), written as .created.
    assert event({**listed, "status": "declined"})["data"]["status"] == "declined"
    # The instance-wide list names the organization in public_organization_data too.
    bare = {"id": "orginv_2", "status": "pending", "public_organization_data": {"id": "org_2"}}
    assert event(bare)["data"]["organization_id"] == "org_2"
    assert "organization_id" not in bare  # the listed object itself is left as it was


FILLED_COLUMNS = """
[users.columns]
last_active = { path = "last_active_at", type = "timestamptz" }
stripe = { path = "private_metadata.stripe", private = true, default = "none" }

[organizations.columns]
members = { path = "members_count", type = "integer", default = -1 }

[organization_memberships.columns]
role_name = "role_name"
"""


def test_custom_columns_whose_data_was_never_kept_are_filled_from_clerk(
    pg_server: str, standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.users = [
        clerk_user(0, last_active_at=1_750_000_000_000, private_metadata={"stripe": "cus_0"}),
        clerk_user(1, last_active_at="not milliseconds"),
    ]
    standin.organizations = clerk_standin.clerk_organizations(2)
    standin.organizations[0]["members_count"] = 3
    standin.memberships = clerk_standin.clerk_memberships(2, standin.organizations, 1)
    dsn = support.create_database(pg_server, migrate=False)
    try:
        # Synced before the columns were declared, by a release that kept no private_metadata.
        support.migrate_database(dsn, CustomColumns())
        assert run_backfill(dsn, standin).tally.created == 6
        support.execute(dsn, "delete from clerk_sync.private_metadata")
        columns_file = tmp_path / "clerk-sync.toml"
        columns_file.write_text(FILLED_COLUMNS)
        monkeypatch.setenv("CLERK_SYNC_CONFIG", str(columns_file))
        support.migrate_database(dsn, parse_custom_columns(FILLED_COLUMNS, columns_file))

        def held() -> list[tuple[Any, ...]]:
            users = support.fetch(dsn, "select last_active, stripe from public.users order by id")
            orgs = support.fetch(dsn, "select members from public.organizations order by id")
            members = support.fetch(
                dsn, "select role_name from public.organization_memberships order by id"
            )
            return [tuple(r.values()) for r in [*users, *orgs, *members]]

        defaults = [(None, "none"), (None, "none"), (-1,), (-1,), (None,), (None,)]
        assert held() == defaults

        dry = run_backfill(dsn, standin, BackfillOptions(dry_run=True))
        assert held() == defaults
        # user 1's last_active_at does not convert: the default it holds is its value.
        assert [dry.of(r).tally.filled for r in ("users", "organizations", "memberships")] == [
            1,
            2,
            2,
        ]
        assert dry.of("users").tally.unchanged == 2 and dry.exit_status == backfilling.DRIFT_FOUND
        assert (
            dry.summary()
            .splitlines()[1]
            .endswith("errors 0, filled the custom columns of 2 (drift found)")
        )

        inbox_before = scalar(dsn, "select count(*) from clerk_sync.inbox")
        filled = run_backfill(dsn, standin)
        assert filled.tally.filled == 5 and filled.tally.unchanged == 6
        assert filled.exit_status == backfilling.REPAIRED
        last_active = dt.datetime.fromtimestamp(1_750_000_000, dt.UTC)
        assert held() == [
            (last_active, "cus_0"),
            (None, "none"),
            (3,),
            (0,),
            ("Admin",),
            ("Member",),
        ]
        # Written in place, not as events: nothing in the inbox; the private_metadata kept again.
        assert scalar(dsn, "select count(*) from clerk_sync.inbox") == inbox_before
        kept = "select private_metadata ->> 'stripe' from clerk_sync.private_metadata where user_id = $1"
        assert scalar(dsn, kept, standin.users[0]["id"]) == "cus_0"

        again = run_backfill(dsn, standin)
        assert again.tally.filled == 0 and again.exit_status == backfilling.IN_SYNC
    finally:
        support.drop_database(pg_server, dsn)
