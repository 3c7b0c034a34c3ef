"""`clerk-sync backfill`: copy every Clerk user into public.users, and repair drift.

Webhooks only carry changes, so users who existed before the endpoint did, and events lost while
it was down for longer than Svix retries, never arrive. A backfill reads every user from the
Backend API (`GET /v1/users?order_by=+created_at`, 500 a page; new sign-ups land at the end, so
pages stay put) and writes each one as a `user.updated` event through `public.clerk_sync_apply`,
the webhooks' own write path. So a row that a webhook has made newer is left alone (`stale`), a
deleted user is not revived, and running it twice, or alongside live webhooks, is safe.

Each page is classified against the database first (created / updated / unchanged / stale), and
only users that need a write are sent: a nightly run over an in-sync table writes nothing but its
progress. A page's writes, the ids it listed and the run's next offset commit in one transaction,
so an interrupted run resumes at the first page it had not committed.

`--prune` deletes (as `user.deleted` does) rows that Clerk no longer lists. Offset pagination
skips a user when another is deleted mid-run, so each candidate is looked up by id before it is
deleted, and users created after the run started are never candidates. A guard refuses when more
than a share of the rows (10% by default) would go, which is what a key for another Clerk
instance would otherwise cause.

Exit statuses, for schedulers: 0 in sync, nothing changed; 3 drift found and repaired; 4 drift
found by --dry-run (nothing written); 1 failure (including users that could not be written);
2 configuration, or --prune refused by its guard.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, TextIO

import asyncpg
import orjson

from clerk_sync import migrations
from clerk_sync.clerk_api import PAGE_LIMIT, ClerkClient, User
from clerk_sync.database import connection, describe_error, refuses
from clerk_sync.errors import ClerkSyncError, Refused
from clerk_sync.settings import Settings

IN_SYNC = 0
FAILED = 1
REFUSED = 2
REPAIRED = 3
DRIFT_FOUND = 4

# Users created in Clerk this long before the run started are never prune candidates: they may
# sit past the last page read, and Clerk's clock is not ours.
PRUNE_GRACE = dt.timedelta(minutes=10)
SAMPLE_SIZE = 5  # user ids shown per kind of change

# --- SQL ------------------------------------------------------------------------------------

# What a page of Clerk users would do to the database, before anything is written: the write
# path's own prediction of its rule (sql/repeatable/20_write_path.sql), one row per event.
CLASSIFY_SQL = """
select status, problem from clerk_sync.classify_batch($1::text[], $2::jsonb[]) order by n
"""

# A page's writes in one statement, through the webhooks' write path.
APPLY_PAGE_SQL = """
select event_outcome
from public.clerk_sync_apply_batch($1::text[], $2::jsonb[], $3)
order by event_index
"""

APPLY_ONE_SQL = "select public.clerk_sync_apply($1, $2::jsonb, $3)"

# The write path never waits for a user's lock or row: a user another transaction is writing
# (a webhook batch, an app's open transaction) is answered 'retry'. The page tries those users
# again this often, for about a second (it holds its other users' locks meanwhile), then counts
# each still busy as an error: the next run writes it.
LOCKED_RETRY_S = 0.02
LOCKED_RETRIES = 50
# A page that deadlocks anyway (on a lock outside the write path's) is written again from the
# start, this many times.
DEADLOCK_RETRIES = 3

RECORD_SEEN_SQL = """
insert into clerk_sync.backfill_seen (run_id, user_id)
select $1, unnest($2::text[])
on conflict do nothing
"""

# Compare-and-set on next_offset: a second process resuming the same run fails here.
SAVE_PROGRESS_SQL = """
update clerk_sync.backfill_runs
set next_offset = $3, counts = $4::jsonb, progress_at = now()
where id = $1 and next_offset = $2 and finished_at is null
"""

ABANDON_OPEN_RUNS_SQL = """
update clerk_sync.backfill_runs set finished_at = now(), outcome = 'abandoned'
where finished_at is null
"""

OPEN_RUN_SQL = """
select id, started_at, next_offset, counts::text as counts
from clerk_sync.backfill_runs where finished_at is null
"""

NEW_RUN_SQL = """
insert into clerk_sync.backfill_runs default values
returning id, started_at, next_offset, counts::text as counts
"""

FINISH_RUN_SQL = """
update clerk_sync.backfill_runs
set finished_at = now(), outcome = $2, counts = $3::jsonb, progress_at = now()
where id = $1
"""

FORGET_SEEN_SQL = "delete from clerk_sync.backfill_seen where run_id = $1"

ACTIVE_USERS_SQL = "select count(*) from public.users where deleted_at is null"

# Rows Clerk did not list in this run (by the ids recorded with each page).
PRUNE_CANDIDATES_SQL = """
select u.id from public.users as u
where u.deleted_at is null
  and coalesce(u.created_at, u.updated_at) < $2
  and not exists (
      select 1 from clerk_sync.backfill_seen as s where s.run_id = $1 and s.user_id = u.id
  )
order by u.id
"""

# The same for --dry-run, which records nothing: the ids it listed come as a parameter.
PRUNE_CANDIDATES_DRY_RUN_SQL = """
select u.id from public.users as u
where u.deleted_at is null
  and coalesce(u.created_at, u.updated_at) < $2
  and u.id <> all($1::text[])
order by u.id
"""


# --- results ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a run did (or, with --dry-run, would do) to public.users."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0
    errors: int = 0

    @property
    def listed(self) -> int:
        return self.created + self.updated + self.unchanged + self.stale + self.errors

    @property
    def drift(self) -> int:
        return self.created + self.updated + self.deleted

    def add(self, other: Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> str:
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)}).decode()

    @classmethod
    def from_json(cls, text: str) -> Tally:
        saved = orjson.loads(text)
        return cls(**{f.name: int(saved.get(f.name, 0)) for f in fields(cls)})

    def describe(self) -> str:
        return (
            f"created {self.created}, updated {self.updated}, unchanged {self.unchanged}, "
            f"stale {self.stale}, deleted {self.deleted}, errors {self.errors}"
        )


@dataclass(frozen=True)
class BackfillOptions:
    dry_run: bool = False
    prune: bool = False
    force: bool = False
    restart: bool = False
    max_prune_ratio: float = 0.10
    delete_mode: str = "soft"


@dataclass
class BackfillResult:
    tally: Tally
    dry_run: bool
    seconds: float
    resumed_from: int = 0  # the offset an unfinished run resumed at (0 for a new run)
    retries: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        if self.tally.errors:
            return FAILED
        if not self.tally.drift:
            return IN_SYNC
        return DRIFT_FOUND if self.dry_run else REPAIRED

    def summary(self) -> str:
        t = self.tally
        if self.dry_run:
            head = f"dry run, nothing written: {t.listed} users listed; would have"
        else:
            resumed = f", resumed at offset {self.resumed_from}" if self.resumed_from else ""
            head = f"backfill complete: {t.listed} users listed in {self.seconds:.1f} s{resumed};"
        verdict = {
            IN_SYNC: "in sync",
            REPAIRED: "drift repaired",
            DRIFT_FOUND: "drift found",
            FAILED: "some users could not be written",
        }[self.exit_status]
        return f"{head} {t.describe()} ({verdict})"


class BackfillError(ClerkSyncError):
    """The run cannot go on; the message is one line a user can act on."""


class PruneRefused(BackfillError, Refused):
    """--prune would remove more than the allowed share of rows."""

    exit_status = REFUSED

    def __init__(self, message: str, result: BackfillResult) -> None:
        super().__init__(message)
        self.result = result


# --- progress ---------------------------------------------------------------------------------


class Reporter(Protocol):
    def start(self, total: int | None, done: int) -> None: ...
    def page(self, done: int, tally: Tally) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


class PlainReporter:
    """One line per page, for logs (cron, Kubernetes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._total: int | None = None
        self._started = time.monotonic()
        self._first = 0

    def _write(self, line: str) -> None:
        self._stream.write(f"clerk-sync: {line}\n")
        self._stream.flush()

    def start(self, total: int | None, done: int) -> None:
        self._total, self._first, self._started = total, done, time.monotonic()
        where = f", resuming at offset {done}" if done else ""
        self._write(f"backfill: Clerk reports {total} users{where}")

    def page(self, done: int, tally: Tally) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = (done - self._first) / elapsed
        of_total = f"/{self._total}" if self._total is not None else ""
        self._write(f"backfill: {done}{of_total} users, {rate:.0f}/s; {tally.describe()}")

    def note(self, message: str) -> None:
        self._write(message)

    def finish(self) -> None:
        pass


class RichReporter:
    """A progress bar with rate and ETA, on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("backfill"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self._console,
        )
        self._task = self._progress.add_task("backfill", total=None, rate="", detail="")
        self._started = time.monotonic()
        self._first = 0

    def start(self, total: int | None, done: int) -> None:
        self._started, self._first = time.monotonic(), done
        self._progress.update(self._task, total=total, completed=done)
        self._progress.start()

    def page(self, done: int, tally: Tally) -> None:
        rate = (done - self._first) / max(time.monotonic() - self._started, 1e-6)
        detail = f"+{tally.created} ~{tally.updated} ={tally.unchanged} stale {tally.stale}"
        self._progress.update(
            self._task, completed=done, rate=f"{rate:,.0f} users/s", detail=detail
        )

    def note(self, message: str) -> None:
        self._console.print(f"clerk-sync: {message}", highlight=False, markup=False)

    def finish(self) -> None:
        self._progress.stop()


# --- the run ----------------------------------------------------------------------------------


@dataclass
class _Run:
    id: int | None  # None for --dry-run, which records nothing
    started_at: dt.datetime
    next_offset: int
    tally: Tally
    seen: list[str] = field(default_factory=list)  # --dry-run only
    samples: dict[str, list[str]] = field(default_factory=dict)


async def run(
    settings: Settings, dsn: str, options: BackfillOptions, reporter: Reporter
) -> BackfillResult:
    """The `backfill` command: Clerk at settings.clerk_api_url, the database at dsn."""
    if not settings.clerk_secret_key:
        raise BackfillError("CLERK_SECRET_KEY: not set")
    async with (
        connection(
            dsn,
            "backfill",
            then="run `clerk-sync backfill` again to resume",
            prepared_statements=settings.prepared_statements,
        ) as conn,
        ClerkClient(settings.clerk_secret_key, settings.clerk_api_url) as clerk,
    ):
        return await backfill(clerk, conn, options, reporter)


async def backfill(
    clerk: ClerkClient, conn: asyncpg.Connection, options: BackfillOptions, reporter: Reporter
) -> BackfillResult:
    """List every Clerk user, write what differs, then prune if asked; see the module doc."""
    clock = time.monotonic()
    await _prepare_schema(conn, options, reporter)
    total = await clerk.count_users()  # also the first check of the key: a 401 stops us here
    run_state = await _open_run(conn, options)
    resumed_from = run_state.next_offset
    reporter.start(total, resumed_from)
    try:
        await _list_and_write(clerk, conn, run_state, options, reporter)
        if options.prune:
            try:
                await _prune(clerk, conn, run_state, options, reporter)
            except PruneRefused as exc:
                exc.result.seconds = time.monotonic() - clock
                await _finish_run(conn, run_state, "prune_refused")
                raise
        await _finish_run(conn, run_state, "completed")
    finally:
        reporter.finish()
    return BackfillResult(
        tally=run_state.tally,
        dry_run=options.dry_run,
        seconds=time.monotonic() - clock,
        resumed_from=resumed_from,
        retries=dict(clerk.retries),
        samples=run_state.samples,
    )


async def _prepare_schema(
    conn: asyncpg.Connection, options: BackfillOptions, reporter: Reporter
) -> None:
    if options.dry_run:
        # Writes nothing, migrations included; what it reads is in sql/repeatable/ since 0006.
        if await migrations.current_version(conn) < migrations.DEFINITIONS_VERSION:
            raise BackfillError(
                "this database has no current clerk-sync schema; run `clerk-sync migrate` first"
            )
        return
    try:
        applied = await migrations.migrate(conn)
    except migrations.AppliedMigrationChanged as exc:
        raise BackfillError(str(exc)) from None
    if applied:
        names = ", ".join(m.label for m in applied)
        reporter.note(f"applied migrations {names}")


async def _open_run(conn: asyncpg.Connection, options: BackfillOptions) -> _Run:
    if options.dry_run:
        now = await conn.fetchval("select now()")
        return _Run(None, now, 0, Tally())
    async with conn.transaction():
        if options.restart:
            await conn.execute(ABANDON_OPEN_RUNS_SQL)
        row = await conn.fetchrow(OPEN_RUN_SQL)
        if row is None:
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(NEW_RUN_SQL)
            except asyncpg.UniqueViolationError:
                raise BackfillError("another backfill started just now; let it finish") from None
    assert row is not None
    return _Run(row["id"], row["started_at"], row["next_offset"], Tally.from_json(row["counts"]))


async def _list_and_write(
    clerk: ClerkClient,
    conn: asyncpg.Connection,
    run_state: _Run,
    options: BackfillOptions,
    reporter: Reporter,
) -> None:
    """Page through Clerk, reading the next page while the current one is written."""
    offset = run_state.next_offset
    fetching: asyncio.Task[list[User]] | None = asyncio.create_task(clerk.list_users(offset))
    try:
        while fetching is not None:
            users = await fetching
            fetching = None
            if len(users) >= PAGE_LIMIT:
                fetching = asyncio.create_task(clerk.list_users(offset + len(users)))
            page = await _again_on_deadlock(
                functools.partial(_write_page, conn, run_state, users, offset, options, reporter),
                offset,
                reporter,
            )
            run_state.tally.add(page)
            offset += len(users)
            if users:
                reporter.page(offset, run_state.tally)
    finally:
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)


@dataclass(frozen=True)
class _Listed:
    """A Clerk user as the write path takes it: a user.updated event."""

    user_id: str
    svix_id: str
    event: str  # {"type": "user.updated", "data": <the user as Clerk sent it>} as JSON


def _listed(user: User) -> _Listed:
    event = {"object": "event", "type": "user.updated", "data": user}
    user_id, updated_at = user.get("id"), user.get("updated_at")
    # The same user at the same version always gets the same id, so a rerun is a duplicate.
    svix_id = f"backfill:{user_id}:{updated_at}:{user.get('last_sign_in_at') or 0}"
    return _Listed(str(user_id), svix_id, orjson.dumps(event).decode())


async def _again_on_deadlock(
    write: Callable[[], Awaitable[Tally]], offset: int, reporter: Reporter
) -> Tally:
    """Write a page (`write`), again from the start when PostgreSQL broke a deadlock by rolling
    it back."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            return await write()
        except asyncpg.DeadlockDetectedError:
            reporter.note(f"the page at offset {offset} deadlocked (attempt {attempt + 1}); again")
    return await write()


async def _write_page(
    conn: asyncpg.Connection,
    run_state: _Run,
    users: Sequence[User],
    offset: int,
    options: BackfillOptions,
    reporter: Reporter,
) -> Tally:
    """Classify one page, apply what differs and record progress, in one transaction."""
    page = Tally()
    if options.dry_run:
        listed, statuses = await _classify(conn, users, offset, page, reporter)
        for user_id, status in statuses.items():
            _count(page, _final_status(status, None), run_state.samples, user_id)
        run_state.seen.extend(listed)
        return page

    async with conn.transaction():
        listed, statuses = await _classify(conn, users, offset, page, reporter)
        writes = [listed[user_id] for user_id, status in statuses.items() if status in _WRITE]
        outcomes = await _apply(conn, writes, options.delete_mode, reporter)
        for user_id, status in statuses.items():
            if user_id in outcomes and outcomes[user_id] is None:
                page.errors += 1
                continue
            _count(page, _final_status(status, outcomes.get(user_id)), run_state.samples, user_id)
        await conn.execute(RECORD_SEEN_SQL, run_state.id, list(listed))
        counts = Tally()
        counts.add(run_state.tally)
        counts.add(page)
        saved = await conn.execute(
            SAVE_PROGRESS_SQL,
            run_state.id,
            offset,
            offset + len(users),
            counts.to_json(),
        )
        if saved != "UPDATE 1":
            raise BackfillError(
                "another backfill process is working on the same run; let it finish"
            )
    return page


_WRITE = frozenset({"created", "updated", "signed_in"})


async def _classify(
    conn: asyncpg.Connection,
    users: Sequence[User],
    offset: int,
    page: Tally,
    reporter: Reporter,
) -> tuple[dict[str, _Listed], dict[str, str]]:
    """The page's users that the write path takes, by id, and what writing each would do
    (created | updated | signed_in | unchanged | stale), against the database now. A user it
    would refuse is counted as an error and said."""
    items = [_listed(user) for user in users]
    if not items:
        return {}, {}
    rows = await conn.fetch(CLASSIFY_SQL, [i.svix_id for i in items], [i.event for i in items])
    listed: dict[str, _Listed] = {}
    statuses: dict[str, str] = {}
    for user, item, row in zip(users, items, rows, strict=True):
        if row["status"] == "invalid":
            page.errors += 1
            reporter.note(
                f"cannot write user {user.get('id')!r} (offset {offset}): {row['problem']}"
            )
            continue
        listed[item.user_id] = item
        statuses[item.user_id] = row["status"]
    return listed, statuses


async def _apply(
    conn: asyncpg.Connection, writes: Sequence[_Listed], delete_mode: str, reporter: Reporter
) -> dict[str, str | None]:
    """Each write's outcome (None: refused, see `database.refuses`, or busy too long), in one statement when all is well;
    users busy in another transaction are tried again for a while (LOCKED_RETRIES)."""
    outcomes = await _apply_once(conn, writes, delete_mode, reporter)
    for _ in range(LOCKED_RETRIES):
        busy = [w for w in writes if outcomes[w.user_id] == "retry"]
        if not busy:
            return outcomes
        await asyncio.sleep(LOCKED_RETRY_S)
        outcomes.update(await _apply_once(conn, busy, delete_mode, reporter))
    for w in writes:
        if outcomes[w.user_id] == "retry":
            reporter.note(f"cannot write user {w.user_id}: another transaction holds it")
            outcomes[w.user_id] = None
    return outcomes


async def _apply_once(
    conn: asyncpg.Connection, writes: Sequence[_Listed], delete_mode: str, reporter: Reporter
) -> dict[str, str | None]:
    """Each write's outcome ('retry': its user is busy), one statement when all is well."""
    if not writes:
        return {}
    svix_ids = [w.svix_id for w in writes]
    try:
        async with conn.transaction():  # a savepoint: one bad user must not sink the page
            rows = await conn.fetch(
                APPLY_PAGE_SQL, svix_ids, [w.event for w in writes], delete_mode
            )
        return {w.user_id: row[0] for w, row in zip(writes, rows, strict=True)}
    except asyncpg.PostgresError as exc:
        if not refuses(exc):  # an outage, not a user's data: the run stops and resumes later
            raise
    outcomes: dict[str, str | None] = {}
    for w in writes:
        try:
            async with conn.transaction():
                outcomes[w.user_id] = await conn.fetchval(
                    APPLY_ONE_SQL, w.svix_id, w.event, delete_mode
                )
        except asyncpg.PostgresError as exc:
            if not refuses(exc):
                raise
            # Its data or an app's constraint or trigger refused it: counted as an error, and
            # the run goes on. Said by SQLSTATE and constraint, never with the row's values.
            reporter.note(f"cannot write user {w.user_id}: {describe_error(exc)}")
            outcomes[w.user_id] = None
    return outcomes


def _final_status(classified: str, outcome: str | None) -> str:
    """The tally bucket for a user, from what we expected and what the write path answered."""
    if classified == "signed_in":
        # An equal updated_at is stale to the write path, which still moves last_sign_in_at on.
        return "unchanged" if outcome == "duplicate" else "updated"
    if outcome is None or outcome == "applied":
        return classified
    # A webhook made the row newer (or deleted it) between our look and our write, or an
    # earlier run already applied this very version.
    return "stale" if outcome == "stale" else "unchanged"


def _count(tally: Tally, status: str, samples: dict[str, list[str]], user_id: str) -> None:
    setattr(tally, status, getattr(tally, status) + 1)
    if status in ("created", "updated", "deleted", "stale"):
        bucket = samples.setdefault(status, [])
        if len(bucket) < SAMPLE_SIZE:
            bucket.append(user_id)


# --- prune ------------------------------------------------------------------------------------


async def _prune(
    clerk: ClerkClient,
    conn: asyncpg.Connection,
    run_state: _Run,
    options: BackfillOptions,
    reporter: Reporter,
) -> None:
    """Delete, as user.deleted does, the rows Clerk no longer has."""
    cutoff = run_state.started_at - PRUNE_GRACE
    if run_state.id is None:
        rows = await conn.fetch(PRUNE_CANDIDATES_DRY_RUN_SQL, run_state.seen, cutoff)
    else:
        rows = await conn.fetch(PRUNE_CANDIDATES_SQL, run_state.id, cutoff)
    candidates = [row["id"] for row in rows]
    if not candidates:
        return
    active = int(await conn.fetchval(ACTIVE_USERS_SQL))
    share = len(candidates) / max(active, 1)
    if share > options.max_prune_ratio and not options.force:
        raise PruneRefused(
            f"--prune refused: {len(candidates)} of {active} users ({share:.1%}) are not in "
            f"Clerk, more than --max-prune-ratio {options.max_prune_ratio:.0%}; check that "
            "CLERK_SECRET_KEY belongs to this database's Clerk instance, then rerun with --force",
            BackfillResult(run_state.tally, options.dry_run, 0.0, samples=run_state.samples),
        )
    # Offset pages shift when a user is deleted mid-run, so an unlisted user may still exist.
    still_there = await clerk.existing_user_ids(candidates)
    if still_there:
        reporter.note(
            f"--prune: {len(still_there)} users missing from the listing are still in Clerk "
            "(pages moved during the run); not deleted"
        )
    gone = [user_id for user_id in candidates if user_id not in still_there]
    if options.dry_run:
        for user_id in gone:
            _count(run_state.tally, "deleted", run_state.samples, user_id)
        return
    for start in range(0, len(gone), PAGE_LIMIT):
        chunk = gone[start : start + PAGE_LIMIT]
        events = [_deleted_event(user_id) for user_id in chunk]
        async with conn.transaction():
            rows = await conn.fetch(
                APPLY_PAGE_SQL,
                [f"backfill-prune:{user_id}" for user_id in chunk],
                events,
                options.delete_mode,
            )
        for user_id, row in zip(chunk, rows, strict=True):
            if row[0] == "applied":
                _count(run_state.tally, "deleted", run_state.samples, user_id)
    reporter.note(f"--prune: deleted {run_state.tally.deleted} users that Clerk no longer has")


def _deleted_event(user_id: str) -> str:
    event = {
        "object": "event",
        "type": "user.deleted",
        "data": {"object": "user", "id": user_id, "deleted": True},
    }
    return orjson.dumps(event).decode()


async def _finish_run(conn: asyncpg.Connection, run_state: _Run, outcome: str) -> None:
    if run_state.id is None:
        return
    async with conn.transaction():
        await conn.execute(FINISH_RUN_SQL, run_state.id, outcome, run_state.tally.to_json())
        await conn.execute(FORGET_SEEN_SQL, run_state.id)
