"""Reading `clerk_sync.inbox`, the record of every verified delivery: `clerk-sync events`.

What is read here is the delivery's bookkeeping (when, which svix-id, type, user, outcome, error),
never its payload: payloads hold private metadata and email addresses. Errors are masked as the
logs are, since a database error can quote a value from the event.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from clerk_sync.errors import ConfigError
from clerk_sync.logs import mask

if TYPE_CHECKING:
    import asyncpg

OUTCOMES = ("applied", "stale", "ignored", "invalid")

LIST_SQL = """
select received_at, svix_id, event_type, user_id, outcome, error
from clerk_sync.inbox
where ($1::text is null or outcome = $1)
  and ($2::text is null or event_type = $2)
  and ($3::text is null or user_id = $3)
  and ($4::timestamptz is null or received_at >= $4)
order by received_at desc, svix_id desc
limit $5
"""

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# The schema version that brought clerk_sync.inbox.
INBOX_SCHEMA_VERSION = 1


class BadTime(ConfigError, ValueError):
    """A time or duration that cannot be read; the message says what is expected."""


def parse_duration(text: str, *, bare_unit: str = "d") -> dt.timedelta:
    """`90m`, `2h`, `3d`, `1w` (a bare number is in `bare_unit`)."""
    value = text.strip().lower()
    if value.isdigit():
        value += bare_unit
    match = _DURATION.fullmatch(value)
    if not match:
        raise BadTime(f"{text!r} is not a duration such as 90m, 2h, 3d or 1w")
    return dt.timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration ago such as `2h` or `3d`."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        return now - parse_duration(text, bare_unit="")
    except BadTime:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadTime(
            f"{text!r} is neither an ISO time (2025-01-31T12:00:00Z) nor a time ago (2h, 3d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Delivery:
    received_at: dt.datetime
    svix_id: str
    type: str | None
    user_id: str | None
    outcome: str
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at.isoformat(),
            "svix_id": self.svix_id,
            "type": self.type,
            "user_id": self.user_id,
            "outcome": self.outcome,
            "error": self.error,
        }

    def json_line(self) -> str:
        return orjson.dumps(self.to_json()).decode()


async def list_deliveries(
    conn: asyncpg.Connection,
    *,
    limit: int = 50,
    outcome: str | None = None,
    event_type: str | None = None,
    user_id: str | None = None,
    since: dt.datetime | None = None,
) -> list[Delivery]:
    """The most recent deliveries first, filtered by what is given."""
    rows = await conn.fetch(LIST_SQL, outcome, event_type, user_id, since, limit)
    return [
        Delivery(
            received_at=row["received_at"],
            svix_id=row["svix_id"],
            type=row["event_type"],
            user_id=row["user_id"],
            outcome=row["outcome"],
            error=mask(row["error"]) if row["error"] else None,
        )
        for row in rows
    ]
