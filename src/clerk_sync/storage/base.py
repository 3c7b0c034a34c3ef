"""The one interface the HTTP layer uses to write; no backend details leak past it.

The CLI writes nothing through it (`serve` only asks a REST-mode store, at start, whether the
schema is there): its operations commands (migrate, replay, backfill, …) need a direct
connection, and take it from `clerk_sync.database`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from clerk_sync.errors import DatabaseUnavailable, Refused
from clerk_sync.events import ClerkEvent, Outcome

# The columns of public.users that the contract names, in its order: what a reader gets back.
USER_COLUMNS = (
    "id", "email", "email_verified", "phone", "username", "first_name", "last_name",
    "image_url", "external_id", "public_metadata", "unsafe_metadata", "banned",
    "created_at", "updated_at", "last_sign_in_at", "deleted_at",
)  # fmt: skip

# The write path answers 'retry' for an event whose user another transaction is writing (its
# lock or its row held): it never waits for one, so the rest of a batch goes ahead. The store
# tries that event again on its own, this often, until its own deadline, then answers 503.
RETRY = "retry"
LOCKED_RETRY_S = 0.02
BUSY_USER = (
    "the user's row or lock stayed held by another transaction (a backfill, an open transaction "
    "of the app's?) past the deadline; Svix will retry"
)


class StoreUnavailable(DatabaseUnavailable):
    """The database is down, too slow, or not ready: the delivery should be retried later."""


class EventRejected(Refused):
    """The database refused the event itself (its data, a constraint or trigger of the app's:
    `clerk_sync.sqlstate.refuses_event`): retrying cannot help. The message names the SQLSTATE
    and the constraint, never the row's values."""


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A user's row: `row` holds USER_COLUMNS (times as aware datetimes, metadata as dicts);
    `synced_at` is when a user event last reached the row, as far as the backend can tell."""

    row: dict[str, Any]
    synced_at: dt.datetime | None

    @property
    def deleted(self) -> bool:
        return self.row["deleted_at"] is not None


class Store(Protocol):
    async def apply(self, message_id: str, event: ClerkEvent) -> Outcome:
        """Apply one verified event exactly once; raise StoreUnavailable or EventRejected."""
        ...

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        """Keep a verified delivery that can never be applied, for inspection."""
        ...

    async def read_user(self, user_id: str) -> StoredUser | None:
        """The user's row in public.users, or None; raise StoreUnavailable."""
        ...

    async def not_ready_reason(self) -> str | None:
        """None when the database is reachable and migrated, else what is wrong."""
        ...

    async def close(self) -> None: ...
