"""The one interface the HTTP layer uses to write; no backend details leak past it.

The CLI writes nothing through it (`serve` only asks a REST-mode store, at start, whether the
schema is there): its operations commands (migrate, replay, backfill, …) need a direct
connection, and take it from `clerk_sync.database`."""

from __future__ import annotations

from typing import Protocol

from clerk_sync.errors import DatabaseUnavailable, Refused
from clerk_sync.events import ClerkEvent, Outcome


class StoreUnavailable(DatabaseUnavailable):
    """The database is down, too slow, or not ready: the delivery should be retried later."""


class EventRejected(Refused):
    """The database refused the event's data: retrying cannot help."""


class Store(Protocol):
    async def apply(self, message_id: str, event: ClerkEvent) -> Outcome:
        """Apply one verified event exactly once; raise StoreUnavailable or EventRejected."""
        ...

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        """Keep a verified delivery that can never be applied, for inspection."""
        ...

    async def not_ready_reason(self) -> str | None:
        """None when the database is reachable and migrated, else what is wrong."""
        ...

    async def close(self) -> None: ...
