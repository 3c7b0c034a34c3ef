"""`clerk-sync backfill`: copy every Clerk user, organization, membership and organization
invitation into the synced tables, and repair drift.

Webhooks only carry changes, so what existed before the endpoint did, and events lost while it
was down for longer than Svix retries, never arrive. A backfill reads, from the Backend API,
every user (`GET /v1/users`), then every organization (`GET /v1/organizations`), then every
membership of the instance (`GET /v1/organization_memberships`: one walk, not one per
organization), then every invitation of the instance (`GET /v1/organization_invitations`, every
status), each oldest first (`order_by=+created_at`, 500 a page, one request a page; new ones
land at the end, so pages stay put). It writes each object as its `.updated` event (an
invitation: as the event of its status, see `_invitation_event`) through
`public.clerk_sync_apply_batch`, the webhooks' own write path. So a row that a webhook
has made newer is left alone (`stale`), a deleted user, organization or membership is not
revived (nor an invitation of a deleted organization), and running it twice, or alongside live
webhooks, is safe. Organizations come before
memberships (each membership carries its organization, and writes it when that is newer, but
the organizations' own walk is what keeps them current).

Each resource is one entry of RESOURCES: where it is listed, its event type, the SQL that
classifies a page and finds prune candidates, and how Clerk confirms a candidate is gone. One
more resource is one more entry.

Each page is classified against the database first (created / updated / unchanged / stale), and
only objects that need a write are sent: a nightly run over in-sync tables writes nothing but its
progress. A page's writes, the ids it listed and the run's next position (resource and offset)
commit in one transaction, so an interrupted run resumes at the first page it had not committed,
in the resource it was on (a run left open by a release that walked fewer resources takes on
those after it, and resumes).

Custom columns (clerk-sync.toml) on a path whose data clerk-sync did not keep (`migrate` set
them to their default) are filled here: for the rows a page finds at the object's version
('unchanged', or a sign-in only), one statement a page, only for a table with custom columns,
writes the columns that differ from Clerk's object (Resource.fill_function, from
sql/repeatable/12_custom_columns.sql), counted as `filled` (drift: exit status 3, or 4 with
--dry-run, which counts them with clerk_sync.custom_columns_to_fill).

`--prune` deletes (as `user.deleted`, `organization.deleted` and `organizationMembership.deleted`
do) rows that Clerk no longer lists. Not invitations: there is no event that deletes one (its
list keeps revoked, accepted and expired ones: its status filter names them), and an invitation
ends with its organization (`organization.deleted`, or that organization's prune). Offset
pagination skips an object when another is deleted mid-run, so each candidate is looked up in
Clerk before it is deleted, and objects created after the run started are never candidates. A
guard, per resource, refuses when more than a share of its rows (10% by default) would go,
which is what a key for another Clerk instance would otherwise cause.

Exit statuses, for schedulers: 0 in sync, nothing changed; 3 drift found and repaired; 4 drift
found by --dry-run (nothing written); 1 failure (including objects that could not be written);
2 configuration, or --prune refused by its guard.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TextIO

import asyncpg
import orjson

from clerk_sync import migrations
from clerk_sync.clerk_api import PAGE_LIMIT, ClerkClient, ClerkObject
from clerk_sync.database import connection, describe_error, refuses
from clerk_sync.errors import ClerkSyncError, Refused
from clerk_sync.settings import Settings

IN_SYNC = 0
FAILED = 1
REFUSED = 2
REPAIRED = 3
DRIFT_FOUND = 4

# Objects created in Clerk this long before the run started are never prune candidates: they
# may sit past the last page read, and Clerk's clock is not ours.
PRUNE_GRACE = dt.timedelta(minutes=10)
SAMPLE_SIZE = 5  # ids shown per resource and kind of change

# --- SQL ------------------------------------------------------------------------------------

# What a page of Clerk objects would do to the database, before anything is written: the write
# path's own prediction of its rule, one row per event (users: sql/repeatable/20_write_path.sql;
# organizations, memberships and invitations: sql/repeatable/25_backfill.sql).
CLASSIFY_USERS_SQL = """
select status, problem from clerk_sync.classify_batch($1::text[], $2::jsonb[]) order by n
"""

CLASSIFY_ORGANIZATIONS_SQL = """
select status, problem from clerk_sync.classify_organization_batch($1::text[], $2::jsonb[])
order by n
"""

# A page's writes in one statement, through the webhooks' write path.
APPLY_PAGE_SQL = """
select event_outcome
from public.clerk_sync_apply_batch($1::text[], $2::jsonb[], $3)
order by event_index
"""

APPLY_ONE_SQL = "select public.clerk_sync_apply($1, $2::jsonb, $3)"

# The tables whose custom columns this database has (as `migrate` last rendered the fill
# functions with them: sql/repeatable/12_custom_columns.sql).
CUSTOM_TABLES_SQL = "select distinct table_name from clerk_sync.custom_columns"
# --dry-run: how many rows the fill would change.
COUNT_FILL_SQL = "select clerk_sync.custom_columns_to_fill($1, $2::jsonb[])"
# A fill waits this long for a row another transaction holds (the write path never waits).
FILL_LOCK_TIMEOUT = "1s"

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
insert into clerk_sync.backfill_seen (run_id, resource, object_id)
select $1, $2, unnest($3::text[])
on conflict do nothing
"""

# Compare-and-set on the position: a second process resuming the same run fails here.
SAVE_PROGRESS_SQL = """
update clerk_sync.backfill_runs
set resource = $4, next_offset = $5, counts = $6::jsonb, progress_at = now()
where id = $1 and resource = $2 and next_offset = $3 and finished_at is null
"""

ABANDON_OPEN_RUNS_SQL = """
update clerk_sync.backfill_runs set finished_at = now(), outcome = 'abandoned'
where finished_at is null
"""

OPEN_RUN_SQL = """
select id, started_at, resources, resource, next_offset, counts::text as counts
from clerk_sync.backfill_runs where finished_at is null
"""

NEW_RUN_SQL = """
insert into clerk_sync.backfill_runs (resources, resource) values ($1::text[], $1[1])
returning id, started_at, resources, resource, next_offset, counts::text as counts
"""

EXTEND_RUN_SQL = "update clerk_sync.backfill_runs set resources = $2::text[] where id = $1"

FINISH_RUN_SQL = """
update clerk_sync.backfill_runs
set finished_at = now(), outcome = $2, counts = $3::jsonb, progress_at = now()
where id = $1
"""

FORGET_SEEN_SQL = "delete from clerk_sync.backfill_seen where run_id = $1"

# Prune candidates: live rows Clerk did not list in this run (by the ids recorded with each
# page: $1 the run; --dry-run records nothing and passes the ids it listed as $2: see
# sql/repeatable/25_backfill.sql), created before $3. Each comes with its id, what Clerk is asked to confirm it by, and the delete event
# that removes it, as the webhook would send it.
PRUNE_USERS_SQL = """
select u.id, null::text as organization_id, null::text as user_id,
       jsonb_build_object(
           'object', 'event', 'type', 'user.deleted',
           'data', jsonb_build_object('object', 'user', 'id', u.id, 'deleted', true)
       )::text as event
from public.users as u
where u.deleted_at is null
  and coalesce(u.created_at, u.updated_at) < $3::timestamptz
  and not clerk_sync.backfill_listed($1::bigint, 'users', u.id, $2::text[])
order by u.id
"""

PRUNE_ORGANIZATIONS_SQL = """
select o.id, o.id as organization_id, null::text as user_id,
       jsonb_build_object(
           'object', 'event', 'type', 'organization.deleted',
           'data', jsonb_build_object(
               'object', 'organization', 'id', o.id, 'slug', o.slug, 'deleted', true)
       )::text as event
from public.organizations as o
where o.deleted_at is null
  and coalesce(o.created_at, o.updated_at) < $3::timestamptz
  and not clerk_sync.backfill_listed($1::bigint, 'organizations', o.id, $2::text[])
order by o.id
"""

# organizationMembership.deleted carries the whole membership, its organization included: made
# from the rows (the organization at the version the row holds, so it changes nothing there).
PRUNE_MEMBERSHIPS_SQL = """
select m.id, m.organization_id, m.user_id,
       jsonb_build_object(
           'object', 'event', 'type', 'organizationMembership.deleted',
           'data', jsonb_build_object(
               'object', 'organization_membership', 'id', m.id, 'role', m.role,
               'permissions', to_jsonb(m.permissions), 'public_metadata', m.public_metadata,
               'created_at', (extract(epoch from m.created_at) * 1000)::bigint,
               'updated_at', (extract(epoch from m.updated_at) * 1000)::bigint,
               'public_user_data', jsonb_build_object('user_id', m.user_id),
               'organization', jsonb_build_object(
                   'object', 'organization', 'id', o.id, 'name', o.name, 'slug', o.slug,
                   'image_url', o.image_url, 'created_by', o.created_by,
                   'public_metadata', o.public_metadata,
                   'max_allowed_memberships', o.max_allowed_memberships,
                   'admin_delete_enabled', o.admin_delete_enabled,
                   'created_at', (extract(epoch from o.created_at) * 1000)::bigint,
                   'updated_at', (extract(epoch from o.updated_at) * 1000)::bigint))
       )::text as event
from public.organization_memberships as m
join public.organizations as o on o.id = m.organization_id and o.updated_at is not null
where m.deleted_at is null
  and coalesce(m.created_at, m.updated_at) < $3::timestamptz
  and not clerk_sync.backfill_listed($1::bigint, 'memberships', m.id, $2::text[])
order by m.id
"""


# --- the resources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A live row that Clerk did not list: its id, what Clerk confirms it by, its delete event."""

    id: str
    organization_id: str | None
    user_id: str | None
    event: str


async def _confirm_users(clerk: ClerkClient, candidates: Sequence[Candidate]) -> set[str]:
    return await clerk.existing_user_ids([c.id for c in candidates])


async def _confirm_organizations(clerk: ClerkClient, candidates: Sequence[Candidate]) -> set[str]:
    return await clerk.existing_organization_ids([c.id for c in candidates])


async def _confirm_memberships(clerk: ClerkClient, candidates: Sequence[Candidate]) -> set[str]:
    return await clerk.existing_membership_ids(
        [(c.id, c.organization_id or "", c.user_id or "") for c in candidates]
    )


# An invitation is written as the webhook Clerk sends for its status.
INVITATION_EVENTS = {
    "pending": "organizationInvitation.created",
    "accepted": "organizationInvitation.accepted",
    "revoked": "organizationInvitation.revoked",
}


def _invitation_event(invitation: ClerkObject) -> tuple[str, ClerkObject]:
    """An invitation as listed, as the webhook of its status would carry it.

    Expired is no event: Clerk sends nothing when an invitation expires, so to the webhooks an
    expired invitation is still pending, and the app reads expiry from expires_at. The listing
    may say `expired` (its status filter knows the word): such an invitation is written as
    pending too (.created), so that a row says the same whichever of the two wrote it. The
    instance-wide list also names the organization in public_organization_data, where
    organization_id is taken from when it is missing.
    """
    data = invitation
    if data.get("status") == "expired":
        data = {**data, "status": "pending"}
    organization = data.get("public_organization_data")
    if not data.get("organization_id") and isinstance(organization, dict):
        data = {**data, "organization_id": organization.get("id")}
    status = data.get("status")
    event_type = INVITATION_EVENTS.get(status) if isinstance(status, str) else None
    return event_type or INVITATION_EVENTS["pending"], data


@dataclass(frozen=True)
class Resource:
    """One kind of Clerk object that a backfill walks."""

    name: str  # as --only takes it, and in summaries: "users"
    noun: str  # one of them, in messages: "user"
    list_path: str  # the Backend API list, paged by limit/offset, oldest first
    wrapped: bool  # the list answers {"data": [...], "total_count": n}, not a bare array
    count_path: str | None  # where the total is asked for first (else: the pages' total_count)
    event_type: str  # each object is written as this event (unless `as_event` says otherwise)
    version: tuple[tuple[str, ...], ...]  # the fields whose values make a listed object's svix-id
    classify_sql: str
    table: str  # its rows, for the prune guard's count
    prune_sql: str | None  # None: --prune does not cover it (and its listed ids are not kept)
    confirm: Callable[[ClerkClient, Sequence[Candidate]], Awaitable[set[str]]] | None
    # The event type and data a listed object is written as, when not `event_type` and itself.
    as_event: Callable[[ClerkObject], tuple[str, ClerkObject]] | None = None

    # Its custom columns (clerk-sync.toml): the table they are registered under and the function
    # that fills them, for rows of the same version, from the listed objects (see CustomFill).
    columns_of: str | None = None
    fill_function: str | None = None

    def event(self, obj: ClerkObject) -> dict[str, Any]:
        """The listed object as the webhook event the write path takes."""
        event_type, data = self.as_event(obj) if self.as_event else (self.event_type, obj)
        return {"object": "event", "type": event_type, "data": data}

    def svix_id(self, obj: ClerkObject) -> str:
        """The same object at the same version always gets the same id: a rerun is a duplicate."""
        parts = [str(obj.get("id"))]
        for path in self.version:
            value: Any = obj
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            parts.append(str(value or 0))
        return "backfill:" + ":".join(parts)


USERS = Resource(
    name="users",
    noun="user",
    list_path="/users",
    wrapped=False,
    count_path="/users/count",
    event_type="user.updated",
    version=(("updated_at",), ("last_sign_in_at",)),
    classify_sql=CLASSIFY_USERS_SQL,
    table="public.users",
    prune_sql=PRUNE_USERS_SQL,
    confirm=_confirm_users,
    columns_of="users",
    fill_function="clerk_sync.fill_custom_columns",
)
ORGANIZATIONS = Resource(
    name="organizations",
    noun="organization",
    list_path="/organizations",
    wrapped=True,
    count_path=None,
    event_type="organization.updated",
    version=(("updated_at",),),
    classify_sql=CLASSIFY_ORGANIZATIONS_SQL,
    table="public.organizations",
    prune_sql=PRUNE_ORGANIZATIONS_SQL,
    confirm=_confirm_organizations,
    columns_of="organizations",
    fill_function="clerk_sync.fill_organization_custom_columns",
)
MEMBERSHIPS = Resource(
    name="memberships",
    noun="membership",
    list_path="/organization_memberships",
    wrapped=True,
    count_path=None,
    event_type="organizationMembership.updated",
    version=(("updated_at",), ("organization", "updated_at")),
    classify_sql=CLASSIFY_ORGANIZATIONS_SQL,
    table="public.organization_memberships",
    prune_sql=PRUNE_MEMBERSHIPS_SQL,
    confirm=_confirm_memberships,
    columns_of="organization_memberships",
    fill_function="clerk_sync.fill_membership_custom_columns",
)
INVITATIONS = Resource(
    name="invitations",
    noun="invitation",
    list_path="/organization_invitations",
    wrapped=True,
    count_path=None,
    event_type="organizationInvitation.created",
    version=(("updated_at",),),
    classify_sql=CLASSIFY_ORGANIZATIONS_SQL,
    table="public.organization_invitations",
    prune_sql=None,  # no invitation delete event: they end with their organization
    confirm=None,
    as_event=_invitation_event,
)
# In the order a run walks (and prunes) them: a pruned user or organization ends its
# memberships (and invitations) before the memberships are looked at.
RESOURCES: tuple[Resource, ...] = (USERS, ORGANIZATIONS, MEMBERSHIPS, INVITATIONS)
RESOURCE_NAMES = tuple(r.name for r in RESOURCES)


def select_resources(values: Iterable[str]) -> tuple[str, ...]:
    """The resource names `--only` gives (repeated, or comma-separated), in walking order; all
    of them when none is given. ValueError names one that is not a resource."""
    wanted: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in RESOURCE_NAMES:
                raise ValueError(f"--only: {name!r} is not one of {', '.join(RESOURCE_NAMES)}")
            wanted.add(name)
    return tuple(n for n in RESOURCE_NAMES if n in wanted) if wanted else RESOURCE_NAMES


def _resource(name: str) -> Resource:
    return next(r for r in RESOURCES if r.name == name)


# --- results ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a run did (or, with --dry-run, would do) to one resource's table."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0
    errors: int = 0
    # Rows of the same version (counted as unchanged, or updated for a sign-in) whose custom
    # columns held the default because clerk-sync had not kept their data: filled from Clerk.
    filled: int = 0

    @property
    def listed(self) -> int:
        return self.created + self.updated + self.unchanged + self.stale + self.errors

    @property
    def drift(self) -> int:
        return self.created + self.updated + self.deleted + self.filled

    def add(self, other: Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Tally:
        return cls(**{f.name: int(saved.get(f.name, 0)) for f in fields(cls)})

    def describe(self) -> str:
        filled = f", filled the custom columns of {self.filled}" if self.filled else ""
        return (
            f"created {self.created}, updated {self.updated}, unchanged {self.unchanged}, "
            f"stale {self.stale}, deleted {self.deleted}, errors {self.errors}{filled}"
        )


def _tallies_to_json(tallies: dict[str, Tally]) -> str:
    return orjson.dumps({name: t.to_dict() for name, t in tallies.items()}).decode()


def _tallies_from_json(text: str, names: Sequence[str]) -> dict[str, Tally]:
    saved = orjson.loads(text)
    if any(f.name in saved for f in fields(Tally)):  # a run of a release that walked users only
        saved = {"users": saved}
    return {name: Tally.from_dict(saved.get(name) or {}) for name in names}


@dataclass(frozen=True)
class BackfillOptions:
    dry_run: bool = False
    prune: bool = False
    force: bool = False
    restart: bool = False
    max_prune_ratio: float = 0.10
    delete_mode: str = "soft"
    resources: tuple[str, ...] = RESOURCE_NAMES  # --only


_VERDICTS = {IN_SYNC: "in sync", REPAIRED: "drift repaired", DRIFT_FOUND: "drift found"}


def _exit_status(tally: Tally, dry_run: bool) -> int:
    if tally.errors:
        return FAILED
    if not tally.drift:
        return IN_SYNC
    return DRIFT_FOUND if dry_run else REPAIRED


@dataclass
class ResourceResult:
    """What a run did to one resource."""

    resource: str
    tally: Tally
    dry_run: bool
    seconds: float = 0.0
    walked: bool = False  # listed by this process (else by the interrupted one it resumed)
    resumed_from: int = 0  # the offset an unfinished run resumed this resource at
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        return _exit_status(self.tally, self.dry_run)

    def summary(self) -> str:
        t, name = self.tally, self.resource
        if self.dry_run:
            head = f"dry run, nothing written: {t.listed} {name} listed; would have"
        else:
            if not self.walked:
                took = " (by the run this one resumed)"
            else:
                resumed = f", resumed at offset {self.resumed_from}" if self.resumed_from else ""
                took = f" in {self.seconds:.1f} s{resumed}"
            head = f"backfill complete: {t.listed} {name} listed{took};"
        verdict = _VERDICTS.get(self.exit_status, f"some {name} could not be written")
        return f"{head} {t.describe()} ({verdict})"


@dataclass
class BackfillResult:
    resources: list[ResourceResult]
    dry_run: bool
    seconds: float
    retries: dict[str, int] = field(default_factory=dict)

    @property
    def tally(self) -> Tally:
        """All resources together."""
        total = Tally()
        for r in self.resources:
            total.add(r.tally)
        return total

    def of(self, resource: str) -> ResourceResult:
        return next(r for r in self.resources if r.resource == resource)

    @property
    def exit_status(self) -> int:
        return _exit_status(self.tally, self.dry_run)

    def summary(self) -> str:
        """One line per resource."""
        return "\n".join(r.summary() for r in self.resources)


class BackfillError(ClerkSyncError):
    """The run cannot go on; the message is one line a user can act on."""


class PruneRefused(BackfillError, Refused):
    """--prune would remove more than the allowed share of a resource's rows."""

    exit_status = REFUSED

    def __init__(self, message: str, result: BackfillResult) -> None:
        super().__init__(message)
        self.result = result


# --- progress ---------------------------------------------------------------------------------


class Reporter(Protocol):
    def start(self, resource: str, total: int | None, done: int) -> None: ...
    def page(self, resource: str, done: int, tally: Tally) -> None: ...
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

    def start(self, resource: str, total: int | None, done: int) -> None:
        self._total, self._first, self._started = total, done, time.monotonic()
        where = f", resuming at offset {done}" if done else ""
        self._write(f"backfill: Clerk reports {total} {resource}{where}")

    def page(self, resource: str, done: int, tally: Tally) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = (done - self._first) / elapsed
        of_total = f"/{self._total}" if self._total is not None else ""
        self._write(f"backfill: {done}{of_total} {resource}, {rate:.0f}/s; {tally.describe()}")

    def note(self, message: str) -> None:
        self._write(message)

    def finish(self) -> None:
        pass


class RichReporter:
    """A progress bar per resource with rate and ETA, on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self._console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started = time.monotonic()
        self._first = 0

    def start(self, resource: str, total: int | None, done: int) -> None:
        self._started, self._first = time.monotonic(), done
        if not self._tasks:
            self._progress.start()
        self._tasks[resource] = self._progress.add_task(
            resource, total=total, completed=done, rate="", detail=""
        )

    def page(self, resource: str, done: int, tally: Tally) -> None:
        rate = (done - self._first) / max(time.monotonic() - self._started, 1e-6)
        detail = f"+{tally.created} ~{tally.updated} ={tally.unchanged} stale {tally.stale}"
        self._progress.update(
            self._tasks[resource],
            completed=done,
            rate=f"{rate:,.0f} {resource}/s",
            detail=detail,
        )

    def note(self, message: str) -> None:
        self._console.print(f"clerk-sync: {message}", highlight=False, markup=False)

    def finish(self) -> None:
        if self._tasks:
            self._progress.stop()


# --- the run ----------------------------------------------------------------------------------


@dataclass
class _Run:
    id: int | None  # None for --dry-run, which records nothing
    started_at: dt.datetime
    resources: tuple[Resource, ...]
    resource: str  # the resource the next page belongs to
    next_offset: int
    tallies: dict[str, Tally]
    seen: dict[str, list[str]] = field(default_factory=dict)  # --dry-run only
    custom_tables: frozenset[str] = frozenset()  # the tables with custom columns
    samples: dict[str, dict[str, list[str]]] = field(default_factory=dict)


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
    """List every object of each resource, write what differs, then prune if asked; see the
    module doc."""
    clock = time.monotonic()
    await _prepare_schema(conn, options, reporter)
    run_state = await _open_run(conn, options, reporter)
    run_state.custom_tables = frozenset(r[0] for r in await conn.fetch(CUSTOM_TABLES_SQL))
    results = [
        ResourceResult(
            r.name,
            run_state.tallies[r.name],
            options.dry_run,
            samples=run_state.samples.setdefault(r.name, {}),
        )
        for r in run_state.resources
    ]
    result = BackfillResult(results, options.dry_run, 0.0)
    names = [r.name for r in run_state.resources]
    try:
        first = names.index(run_state.resource)
        for i, resource in enumerate(run_state.resources[first:], first):
            offset = run_state.next_offset if i == first else 0
            following = names[i + 1] if i + 1 < len(names) else None
            started = time.monotonic()
            await _list_and_write(
                clerk, conn, run_state, resource, offset, following, options, reporter
            )
            done = results[i]
            done.seconds, done.walked, done.resumed_from = time.monotonic() - started, True, offset
        if options.prune:
            refusals = []
            for i, resource in enumerate(run_state.resources):
                started = time.monotonic()
                refusal = await _prune(clerk, conn, run_state, resource, options, reporter)
                results[i].seconds += time.monotonic() - started
                if refusal:
                    refusals.append(refusal)
            if refusals:
                result.seconds = time.monotonic() - clock
                await _finish_run(conn, run_state, "prune_refused")
                raise PruneRefused(
                    f"--prune refused: {' and '.join(refusals)} are not in Clerk, more than "
                    f"--max-prune-ratio {options.max_prune_ratio:.0%}; check that "
                    "CLERK_SECRET_KEY belongs to this database's Clerk instance, then rerun "
                    "with --force",
                    result,
                )
        await _finish_run(conn, run_state, "completed")
    finally:
        reporter.finish()
    result.seconds = time.monotonic() - clock
    result.retries = dict(clerk.retries)
    return result


async def _prepare_schema(
    conn: asyncpg.Connection, options: BackfillOptions, reporter: Reporter
) -> None:
    if options.dry_run:
        # Writes nothing, migrations included: what it reads must be there.
        if await migrations.current_version(conn) < migrations.latest_version():
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


def _extends(covered: Sequence[str], on: str, wanted: Sequence[str]) -> bool:
    """Whether an open run over `covered`, on `on`, can resume as a run over `wanted`: it covers
    some of them and no other, and each one it lacks comes after `on` (nothing is skipped)."""
    if list(covered) == list(wanted) or not set(covered) < set(wanted) or on not in wanted:
        return False
    return all(wanted.index(name) > wanted.index(on) for name in wanted if name not in covered)


async def _open_run(conn: asyncpg.Connection, options: BackfillOptions, reporter: Reporter) -> _Run:
    resources = tuple(_resource(name) for name in options.resources)
    names = [r.name for r in resources]
    if options.dry_run:
        now = await conn.fetchval("select now()")
        return _Run(None, now, resources, names[0], 0, {n: Tally() for n in names})
    async with conn.transaction():
        if options.restart:
            await conn.execute(ABANDON_OPEN_RUNS_SQL)
        row = await conn.fetchrow(OPEN_RUN_SQL)
        if row is not None and _extends(list(row["resources"]), row["resource"], names):
            # It lacks only resources it has not reached (a run left open by a release that
            # walked fewer): it takes them on, and resumes.
            await conn.execute(EXTEND_RUN_SQL, row["id"], names)
            row = await conn.fetchrow(OPEN_RUN_SQL)
        elif row is not None and list(row["resources"]) != names:
            # Resuming it would leave out, or add, whole resources: this run begins anew (what
            # the other one wrote stays; writing it again changes nothing).
            await conn.execute(ABANDON_OPEN_RUNS_SQL)
            reporter.note(
                f"an unfinished backfill of {', '.join(row['resources'])} is abandoned; "
                f"this one ({', '.join(names)}) begins from the first page"
            )
            row = None
        if row is None:
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(NEW_RUN_SQL, names)
            except asyncpg.UniqueViolationError:
                raise BackfillError("another backfill started just now; let it finish") from None
    assert row is not None
    return _Run(
        row["id"],
        row["started_at"],
        resources,
        row["resource"],
        row["next_offset"],
        _tallies_from_json(row["counts"], names),
    )


async def _list_and_write(
    clerk: ClerkClient,
    conn: asyncpg.Connection,
    run_state: _Run,
    resource: Resource,
    offset: int,
    following: str | None,
    options: BackfillOptions,
    reporter: Reporter,
) -> None:
    """Page through one resource, reading the next page while the current one is written. The
    last page's transaction moves the run on to the `following` resource."""
    # The first request also checks the key: a 401 stops the run here.
    total = await clerk.count(resource.count_path) if resource.count_path else None

    def fetch(at: int) -> asyncio.Task[Any]:
        return asyncio.create_task(
            clerk.list_page(resource.list_path, at, wrapped=resource.wrapped)
        )

    fetching: asyncio.Task[Any] | None = fetch(offset)
    tally = run_state.tallies[resource.name]
    started = False
    try:
        while fetching is not None:
            page = await fetching
            fetching = None
            if not started:
                reporter.start(resource.name, total if total is not None else page.total, offset)
                started = True
            items: list[ClerkObject] = page.items
            last = len(items) < PAGE_LIMIT
            if not last:
                fetching = fetch(offset + len(items))
            then = (following, 0) if last and following else (resource.name, offset + len(items))
            written = await _again_on_deadlock(
                functools.partial(
                    _write_page, conn, run_state, resource, items, offset, then, options, reporter
                ),
                offset,
                reporter,
            )
            tally.add(written)
            offset += len(items)
            if items:
                reporter.page(resource.name, offset, tally)
    finally:
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)


@dataclass(frozen=True)
class _Listed:
    """A Clerk object as the write path takes it: its resource's event (Resource.event)."""

    object_id: str
    svix_id: str
    event: str  # {"type": "user.updated", "data": <the object as Clerk sent it>} as JSON


def _listed(resource: Resource, obj: ClerkObject) -> _Listed:
    event = resource.event(obj)
    return _Listed(str(obj.get("id")), resource.svix_id(obj), orjson.dumps(event).decode())


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
    resource: Resource,
    items: Sequence[ClerkObject],
    offset: int,
    then: tuple[str, int],
    options: BackfillOptions,
    reporter: Reporter,
) -> Tally:
    """Classify one page, apply what differs and record progress (the run's next position is
    `then`), in one transaction."""
    page = Tally()
    samples = run_state.samples.setdefault(resource.name, {})
    if options.dry_run:
        listed, statuses = await _classify(conn, resource, items, offset, page, reporter)
        for object_id, status in statuses.items():
            _count(page, _final_status(status, None), samples, object_id)
        if resource.prune_sql is not None:
            run_state.seen.setdefault(resource.name, []).extend(listed)
        same = [object_id for object_id, status in statuses.items() if status in _SAME]
        page.filled = await _fill(conn, run_state, resource, items, same, offset, True, reporter)
        return page

    async with conn.transaction():
        listed, statuses = await _classify(conn, resource, items, offset, page, reporter)
        writes = [listed[object_id] for object_id, status in statuses.items() if status in _WRITE]
        outcomes = await _apply(conn, resource, writes, options.delete_mode, reporter)
        for object_id, status in statuses.items():
            if object_id in outcomes and outcomes[object_id] is None:
                page.errors += 1
                continue
            _count(page, _final_status(status, outcomes.get(object_id)), samples, object_id)
        same = [
            object_id
            for object_id, status in statuses.items()
            if status in _SAME and outcomes.get(object_id, "") is not None
        ]
        page.filled = await _fill(conn, run_state, resource, items, same, offset, False, reporter)
        if resource.prune_sql is not None:
            await conn.execute(RECORD_SEEN_SQL, run_state.id, resource.name, list(listed))
        counts = {name: Tally() for name in run_state.tallies}
        for name, tally in run_state.tallies.items():
            counts[name].add(tally)
        counts[resource.name].add(page)
        saved = await conn.execute(
            SAVE_PROGRESS_SQL,
            run_state.id,
            resource.name,
            offset,
            then[0],
            then[1],
            _tallies_to_json(counts),
        )
        if saved != "UPDATE 1":
            raise BackfillError(
                "another backfill process is working on the same run; let it finish"
            )
    return page


_WRITE = frozenset({"created", "updated", "signed_in"})
# Rows at the object's version, whose custom columns the write path does not set again.
_SAME = frozenset({"unchanged", "signed_in"})


async def _fill(
    conn: asyncpg.Connection,
    run_state: _Run,
    resource: Resource,
    items: Sequence[ClerkObject],
    same: Sequence[str],
    offset: int,
    dry_run: bool,
    reporter: Reporter,
) -> int:
    """Fill (or, dry_run, count) the custom columns of the page's rows of the same version
    (`same`, ids) from the listed objects: one statement, only when the resource's table has
    custom columns. A row another transaction holds is left to the next run, and said."""
    if resource.columns_of not in run_state.custom_tables or not same:
        return 0
    by_id = {str(obj.get("id")): obj for obj in items}
    objects = [orjson.dumps(by_id[object_id]).decode() for object_id in same]
    if dry_run:
        return int(await conn.fetchval(COUNT_FILL_SQL, resource.columns_of, objects))
    try:
        async with conn.transaction():  # a savepoint: the page's writes stay
            await conn.execute(f"set local lock_timeout = '{FILL_LOCK_TIMEOUT}'")
            filled = await conn.fetchval(f"select {resource.fill_function}($1::jsonb[])", objects)
            await conn.execute("set local lock_timeout to default")
    except asyncpg.LockNotAvailableError:
        reporter.note(
            f"the custom columns of the {resource.name} at offset {offset} were not filled: "
            "another transaction holds one of them; the next run fills them"
        )
        return 0
    return int(filled)


async def _classify(
    conn: asyncpg.Connection,
    resource: Resource,
    items: Sequence[ClerkObject],
    offset: int,
    page: Tally,
    reporter: Reporter,
) -> tuple[dict[str, _Listed], dict[str, str]]:
    """The page's objects that the write path takes, by id, and what writing each would do
    (created | updated | signed_in | unchanged | stale), against the database now. One it
    would refuse is counted as an error and said."""
    listed_items = [_listed(resource, obj) for obj in items]
    if not listed_items:
        return {}, {}
    rows = await conn.fetch(
        resource.classify_sql,
        [i.svix_id for i in listed_items],
        [i.event for i in listed_items],
    )
    listed: dict[str, _Listed] = {}
    statuses: dict[str, str] = {}
    for obj, item, row in zip(items, listed_items, rows, strict=True):
        if row["status"] == "invalid":
            page.errors += 1
            reporter.note(
                f"cannot write {resource.noun} {obj.get('id')!r} (offset {offset}): "
                f"{row['problem']}"
            )
            continue
        listed[item.object_id] = item
        statuses[item.object_id] = row["status"]
    return listed, statuses


async def _apply(
    conn: asyncpg.Connection,
    resource: Resource,
    writes: Sequence[_Listed],
    delete_mode: str,
    reporter: Reporter,
) -> dict[str, str | None]:
    """Each write's outcome (None: refused, see `database.refuses`, or busy too long), in one statement when all is well;
    users busy in another transaction are tried again for a while (LOCKED_RETRIES)."""
    outcomes = await _apply_once(conn, resource, writes, delete_mode, reporter)
    for _ in range(LOCKED_RETRIES):
        busy = [w for w in writes if outcomes[w.object_id] == "retry"]
        if not busy:
            return outcomes
        await asyncio.sleep(LOCKED_RETRY_S)
        outcomes.update(await _apply_once(conn, resource, busy, delete_mode, reporter))
    for w in writes:
        if outcomes[w.object_id] == "retry":
            reporter.note(
                f"cannot write {resource.noun} {w.object_id}: another transaction holds it"
            )
            outcomes[w.object_id] = None
    return outcomes


async def _apply_once(
    conn: asyncpg.Connection,
    resource: Resource,
    writes: Sequence[_Listed],
    delete_mode: str,
    reporter: Reporter,
) -> dict[str, str | None]:
    """Each write's outcome ('retry': its user is busy), one statement when all is well."""
    if not writes:
        return {}
    svix_ids = [w.svix_id for w in writes]
    try:
        async with conn.transaction():  # a savepoint: one bad object must not sink the page
            rows = await conn.fetch(
                APPLY_PAGE_SQL, svix_ids, [w.event for w in writes], delete_mode
            )
        return {w.object_id: row[0] for w, row in zip(writes, rows, strict=True)}
    except asyncpg.PostgresError as exc:
        if not refuses(exc):  # an outage, not an object's data: the run stops and resumes later
            raise
    outcomes: dict[str, str | None] = {}
    for w in writes:
        try:
            async with conn.transaction():
                outcomes[w.object_id] = await conn.fetchval(
                    APPLY_ONE_SQL, w.svix_id, w.event, delete_mode
                )
        except asyncpg.PostgresError as exc:
            if not refuses(exc):
                raise
            # Its data or an app's constraint or trigger refused it: counted as an error, and
            # the run goes on. Said by SQLSTATE and constraint, never with the row's values.
            reporter.note(f"cannot write {resource.noun} {w.object_id}: {describe_error(exc)}")
            outcomes[w.object_id] = None
    return outcomes


def _final_status(classified: str, outcome: str | None) -> str:
    """The tally bucket for an object, from what we expected and what the write path answered."""
    if classified == "signed_in":
        # An equal updated_at is stale to the write path, which still moves last_sign_in_at on.
        return "unchanged" if outcome == "duplicate" else "updated"
    if outcome is None or outcome == "applied":
        return classified
    # A webhook made the row newer (or deleted it) between our look and our write, or an
    # earlier run already applied this very version.
    return "stale" if outcome == "stale" else "unchanged"


def _count(tally: Tally, status: str, samples: dict[str, list[str]], object_id: str) -> None:
    setattr(tally, status, getattr(tally, status) + 1)
    if status in ("created", "updated", "deleted", "stale"):
        bucket = samples.setdefault(status, [])
        if len(bucket) < SAMPLE_SIZE:
            bucket.append(object_id)


# --- prune ------------------------------------------------------------------------------------


async def _prune(
    clerk: ClerkClient,
    conn: asyncpg.Connection,
    run_state: _Run,
    resource: Resource,
    options: BackfillOptions,
    reporter: Reporter,
) -> str | None:
    """Delete, as the resource's delete event does, the rows Clerk no longer has. Refused by the
    guard: what was refused ("6 of 41 users (14.6%)"), and nothing deleted. A resource without
    prune SQL (invitations) is left alone."""
    if resource.prune_sql is None or resource.confirm is None:
        return None
    cutoff = run_state.started_at - PRUNE_GRACE
    rows = await conn.fetch(
        resource.prune_sql, run_state.id, run_state.seen.get(resource.name, []), cutoff
    )
    candidates = [Candidate(r["id"], r["organization_id"], r["user_id"], r["event"]) for r in rows]
    if not candidates:
        return None
    active = int(
        await conn.fetchval(f"select count(*) from {resource.table} where deleted_at is null")
    )
    share = len(candidates) / max(active, 1)
    if share > options.max_prune_ratio and not options.force:
        return f"{len(candidates)} of {active} {resource.name} ({share:.1%})"
    # Offset pages shift when an object is deleted mid-run, so an unlisted one may still exist.
    still_there = await resource.confirm(clerk, candidates)
    if still_there:
        reporter.note(
            f"--prune: {len(still_there)} {resource.name} missing from the listing are still in "
            "Clerk (pages moved during the run); not deleted"
        )
    gone = [c for c in candidates if c.id not in still_there]
    tally = run_state.tallies[resource.name]
    samples = run_state.samples.setdefault(resource.name, {})
    if options.dry_run:
        for c in gone:
            _count(tally, "deleted", samples, c.id)
        return None
    deleted = 0
    for start in range(0, len(gone), PAGE_LIMIT):
        chunk = gone[start : start + PAGE_LIMIT]
        async with conn.transaction():
            outcomes = await conn.fetch(
                APPLY_PAGE_SQL,
                [f"backfill-prune:{c.id}" for c in chunk],
                [c.event for c in chunk],
                options.delete_mode,
            )
        for c, row in zip(chunk, outcomes, strict=True):
            if row[0] == "applied":
                _count(tally, "deleted", samples, c.id)
                deleted += 1
    reporter.note(f"--prune: deleted {deleted} {resource.name} that Clerk no longer has")
    return None


async def _finish_run(conn: asyncpg.Connection, run_state: _Run, outcome: str) -> None:
    if run_state.id is None:
        return
    async with conn.transaction():
        await conn.execute(
            FINISH_RUN_SQL, run_state.id, outcome, _tallies_to_json(run_state.tallies)
        )
        await conn.execute(FORGET_SEEN_SQL, run_state.id)
