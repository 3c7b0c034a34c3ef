"""Clerk events: what a verified body must look like before it goes to the write path.

The write logic itself lives in SQL (`public.clerk_sync_apply`), so that every storage backend
shares it. Here we only parse the body once and turn away, with a reason, anything that is not a
Clerk event, so a verified-but-unusable delivery becomes a dead letter instead of a retry loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from clerk_sync.errors import Refused

# The event types whose data changes public.users. Every other type is recorded and ignored.
USER_EVENT_TYPES = frozenset({"user.created", "user.updated", "user.deleted"})
SIGN_IN_EVENT_TYPE = "session.created"
# Not a Clerk event (the sign-in signal is session.created), but old setup guides subscribe to
# it; handled as user.updated when its data is a user.
LEGACY_SIGN_IN_TYPE = "user.signed_in"

# The 45 event types of Clerk's webhook OpenAPI spec (webhooks/2025-04-15.yml): a bounded set for
# metric labels. Anything else is counted as "other".
CLERK_EVENT_TYPES = frozenset(
    {
        "user.created", "user.updated", "user.deleted",
        "session.created", "session.pending", "session.ended", "session.removed",
        "session.revoked",
        "email.created", "sms.created",
        "organization.created", "organization.updated", "organization.deleted",
        "organizationDomain.created", "organizationDomain.updated", "organizationDomain.deleted",
        "organizationInvitation.created", "organizationInvitation.accepted",
        "organizationInvitation.revoked",
        "organizationMembership.created", "organizationMembership.updated",
        "organizationMembership.deleted",
        "role.created", "role.updated", "role.deleted",
        "permission.created", "permission.updated", "permission.deleted",
        "waitlistEntry.created", "waitlistEntry.updated",
        "paymentAttempt.created", "paymentAttempt.updated",
        "subscription.created", "subscription.updated", "subscription.active",
        "subscription.pastDue",
        "subscriptionItem.updated", "subscriptionItem.active", "subscriptionItem.canceled",
        "subscriptionItem.upcoming", "subscriptionItem.ended", "subscriptionItem.abandoned",
        "subscriptionItem.incomplete", "subscriptionItem.pastDue",
        "subscriptionItem.freeTrialEnding",
    }
)  # fmt: skip

# Millisecond times Clerk can send: from the epoch to the end of year 9999 (past that, most
# clients of the table could not read the value back).
_MAX_MS = 253_402_300_799_999


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"


class NotAClerkEvent(Refused):
    """A verified body that can never be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class ClerkEvent:
    type: str
    user_id: str | None
    body: str  # the verified body, exactly as signed, for the database to parse as jsonb

    @property
    def metric_type(self) -> str:
        return self.type if self.type in CLERK_EVENT_TYPES else "other"


def _is_ms(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_MS


def _user_id(value: Any, event_type: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise NotAClerkEvent(f"{event_type} event without a user id")
    return value


def _contains_nul(value: Any) -> bool:
    """Whether any string (key or value) in parsed JSON holds a NUL character."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_event(body: bytes) -> ClerkEvent:
    """Parse a verified body; NotAClerkEvent if it is not JSON, or not shaped as Clerk sends."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotAClerkEvent("the body is not JSON (or not UTF-8)") from None
    if b"\\u0000" in body and _contains_nul(event):
        # JSON allows it; PostgreSQL's jsonb cannot store it, and Clerk never sends it.
        raise NotAClerkEvent("the body contains a \\u0000 character")
    if not isinstance(event, dict):
        raise NotAClerkEvent("the body is not a JSON object")
    event_type = event.get("type")
    data = event.get("data")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 100:
        raise NotAClerkEvent('the event has no string "type"')
    if not isinstance(data, dict):
        raise NotAClerkEvent(f'the {event_type} event has no object "data"')

    user_id: str | None = None
    if event_type in ("user.created", "user.updated") or (
        event_type == LEGACY_SIGN_IN_TYPE and data.get("object") == "user"
    ):
        user_id = _user_id(data.get("id"), event_type)
        if not _is_ms(data.get("updated_at")):
            raise NotAClerkEvent(f"{event_type} event without a millisecond updated_at")
        for field in ("created_at", "last_sign_in_at"):
            if data.get(field) is not None and not _is_ms(data[field]):
                raise NotAClerkEvent(f"{event_type} event with a malformed {field}")
        if data.get("banned") is not None and not isinstance(data["banned"], bool):
            raise NotAClerkEvent(f"{event_type} event with a malformed banned")
    elif event_type == "user.deleted":
        user_id = _user_id(data.get("id"), event_type)
    elif event_type == SIGN_IN_EVENT_TYPE:
        user: dict[str, Any] = data["user"] if isinstance(data.get("user"), dict) else {}
        session_user = data.get("user_id")
        user_id = _user_id(session_user if session_user is not None else user.get("id"), event_type)
        sign_in = user.get("last_sign_in_at")
        if not (_is_ms(sign_in) or (sign_in is None and _is_ms(data.get("created_at")))):
            raise NotAClerkEvent("session.created event without a millisecond sign-in time")
    return ClerkEvent(type=event_type, user_id=user_id, body=body.decode())
