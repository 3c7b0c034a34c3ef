"""`clerk-sync replay`: apply stored events again, through the webhooks' own write path.

Every verified delivery is kept in `clerk_sync.inbox`. A dead letter (outcome `invalid`) is one
the write path could not take: not JSON, not a Clerk event, or data the database refused. Once
the cause is fixed (a constraint relaxed, a bug in clerk-sync fixed), `replay` applies it again.

Each event is one call of `public.clerk_sync_replay`, one transaction: it takes the stored event,
removes its inbox row (else the write path would answer `duplicate`) and calls
`public.clerk_sync_apply` with the same svix-id. So every guarantee holds: an old event finds a
newer row and is `stale`, a deleted user stays deleted. A dry run does the same and rolls it
back. Payloads never leave the database.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clerk_sync.logs import mask

if TYPE_CHECKING:
    import asyncpg

REPLAY_SQL = "select * from public.clerk_sync_replay($1, $2, $3)"

# Events received in a time range, oldest first; events clerk-sync ignores are kept without
# their content, so there is nothing to replay for them. Those whose payload retention dropped
# are chosen, and each says so.
IN_RANGE_SQL = """
select svix_id from clerk_sync.inbox
where ($1::timestamptz is null or received_at >= $1)
  and ($2::timestamptz is null or received_at < $2)
  and (payload is not null or raw_body is not null or outcome <> 'ignored')
order by received_at, svix_id
"""

DEAD_LETTERS_SQL = """
select svix_id from clerk_sync.inbox where outcome = 'invalid' order by received_at, svix_id
"""

# The outcomes that mean the event is not in the database as it should be.
NOT_APPLIED = frozenset({"invalid", "missing"})


@dataclass(frozen=True, slots=True)
class Replayed:
    svix_id: str
    type: str | None
    user_id: str | None
    old_outcome: str | None  # None: no such svix-id
    new_outcome: str  # applied | stale | ignored | invalid | missing (or its payload dropped)
    reason: str | None  # why it is invalid, missing, or was not replayed

    @property
    def failed(self) -> bool:
        return self.new_outcome in NOT_APPLIED

    def line(self) -> str:
        arrow = f"{self.old_outcome or '-'} → {self.new_outcome}"
        text = f"{self.svix_id}  {self.type or '-'}  {self.user_id or '-'}  {arrow}"
        return f"{text}  ({mask(self.reason)})" if self.reason else text


@dataclass
class ReplaySummary:
    dry_run: bool
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, result: Replayed) -> None:
        self.outcomes[result.new_outcome] += 1

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome in NOT_APPLIED)

    def text(self) -> str:
        total = sum(self.outcomes.values())
        counts = ", ".join(f"{outcome} {n}" for outcome, n in sorted(self.outcomes.items()))
        if self.dry_run:
            return f"dry run, nothing written: {total} events would replay as: {counts or 'none'}"
        return f"replayed {total} events: {counts or 'none'}"


async def select_range(
    conn: asyncpg.Connection, since: dt.datetime | None, until: dt.datetime | None
) -> list[str]:
    """The svix-ids received in [since, until), oldest first."""
    return [row[0] for row in await conn.fetch(IN_RANGE_SQL, since, until)]


async def select_dead_letters(conn: asyncpg.Connection) -> list[str]:
    """Every dead letter waiting, oldest first."""
    return [row[0] for row in await conn.fetch(DEAD_LETTERS_SQL)]


async def replay_one(
    conn: asyncpg.Connection, svix_id: str, *, delete_mode: str = "soft", dry_run: bool = False
) -> Replayed:
    row = await conn.fetchrow(REPLAY_SQL, svix_id, delete_mode, dry_run)
    assert row is not None  # the function always answers one row
    return Replayed(
        svix_id=svix_id,
        type=row["event_type"],
        user_id=row["user_id"],
        old_outcome=row["old_outcome"],
        new_outcome=row["new_outcome"],
        reason=row["reason"],
    )


async def replay(
    conn: asyncpg.Connection,
    svix_ids: Sequence[str],
    *,
    delete_mode: str = "soft",
    dry_run: bool = False,
) -> AsyncIterator[Replayed]:
    """Replay each svix-id in order, one transaction each; yields each result as it comes."""
    for svix_id in svix_ids:
        yield await replay_one(conn, svix_id, delete_mode=delete_mode, dry_run=dry_run)
