"""Clerk events: what a verified body must look like before it goes to the write path.

Which kind of write an event is, and whether its data can be applied, is decided in one place:
the write path in SQL (`sql/repeatable/20_write_path.sql`, `clerk_sync.batch_events`), which
every storage backend, backfill and replay share. Here we only parse the body once and turn
away, with a reason, what cannot even be routed: a body that is not a JSON object with a string
`type` and an object `data`. Either refusal makes the delivery a dead letter, not a retry loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from clerk_sync.errors import Refused

# The event types whose data changes public.users. organization.* and organizationMembership.*
# change public.organizations and public.organization_memberships (a membership names its user in
# public_user_data), organizationInvitation.* public.organization_invitations (an accepted one
# names its user in user_id). Every other type is recorded and ignored.
USER_EVENT_TYPES = frozenset({"user.created", "user.updated", "user.deleted"})
MEMBERSHIP_EVENT_TYPES = frozenset(
    {
        "organizationMembership.created",
        "organizationMembership.updated",
        "organizationMembership.deleted",
    }
)
INVITATION_EVENT_TYPES = frozenset(
    {
        "organizationInvitation.created",
        "organizationInvitation.accepted",
        "organizationInvitation.revoked",
    }
)
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


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"


# How an answer starts for a body that is no Clerk event: Python's shape checks here and the
# write path's data checks (sql/repeatable/20_write_path.sql, which raises it) both say it.
NOT_A_CLERK_EVENT = "not a Clerk event: "


class NotAClerkEvent(Refused):
    """A verified body that can never be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class ClerkEvent:
    type: str
    user_id: str | None  # for the log line: the id the event names, if a string (unchecked)
    body: str  # the verified body, exactly as signed, for the database to parse as jsonb
    # Its data as parsed here, for what the server reads of it afterwards (custom columns'
    # unconvertible values) without parsing the body a second time.
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def metric_type(self) -> str:
        return self.type if self.type in CLERK_EVENT_TYPES else "other"


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

    return ClerkEvent(
        type=event_type, user_id=_named_user(event_type, data), body=body.decode(), data=data
    )


def _named_user(event_type: str, data: dict[str, Any]) -> str | None:
    """The user id an event names, for the log line only: the write path checks it."""
    if event_type == SIGN_IN_EVENT_TYPE:
        user = data.get("user")
        value = data.get("user_id")
        if value is None and isinstance(user, dict):
            value = user.get("id")
    elif event_type in USER_EVENT_TYPES or (
        event_type == LEGACY_SIGN_IN_TYPE and data.get("object") == "user"
    ):
        value = data.get("id")
    elif event_type in MEMBERSHIP_EVENT_TYPES:
        member = data.get("public_user_data")
        value = member.get("user_id") if isinstance(member, dict) else None
    elif event_type in INVITATION_EVENT_TYPES:
        value = data.get("user_id")
    else:
        return None
    return value if isinstance(value, str) else None
