"""Signed Clerk deliveries for tests: of clerk-sync itself, its benchmarks, or your own app.

    from clerk_sync.testing import make_secret, signed_headers, user_event, dumps

    secret, key = make_secret()            # CLERK_WEBHOOK_SECRET for the server under test
    body = dumps(user_event("user.created", "user_1", updated_at=1_700_000_000_000))
    client.post("/api/webhooks/clerk", content=body, headers=signed_headers(key, body))

The events are shaped as Clerk sends them (see `clerk-sync send-test` for Clerk's own examples).
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from clerk_sync.verify import signed_headers

__all__ = [
    "deleted_event",
    "dumps",
    "invitation_event",
    "make_secret",
    "membership_event",
    "organization",
    "organization_event",
    "session_event",
    "signed_headers",
    "user_event",
]


def make_secret() -> tuple[str, bytes]:
    key = secrets.token_bytes(32)
    return "whsec_" + base64.b64encode(key).decode(), key


def user_event(
    event_type: str,
    user_id: str,
    updated_at: int,
    *,
    email: str | None = None,
    first_name: str | None = "Ada",
    last_sign_in_at: int | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A Clerk user.created/user.updated event, shaped as Clerk sends it."""
    email_id = "idn_" + user_id.removeprefix("user_")
    user = {
        "object": "user",
        "id": user_id,
        "username": None,
        "first_name": first_name,
        "last_name": "Lovelace",
        "image_url": "https://img.clerk.com/x",
        "external_id": None,
        "primary_email_address_id": email_id if email else None,
        "primary_phone_number_id": None,
        "email_addresses": (
            [
                {
                    "object": "email_address",
                    "id": email_id,
                    "email_address": email,
                    "verification": {"status": "verified", "strategy": "email_code"},
                    "linked_to": [],
                }
            ]
            if email
            else []
        ),
        "phone_numbers": [],
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.users"},
        "unsafe_metadata": {},
        "banned": False,
        "created_at": 1_700_000_000_000,
        "updated_at": updated_at,
        "last_sign_in_at": last_sign_in_at,
    }
    user.update(data)
    return {"object": "event", "type": event_type, "timestamp": updated_at, "data": user}


def deleted_event(user_id: str) -> dict[str, Any]:
    return {
        "object": "event",
        "type": "user.deleted",
        "timestamp": 1_700_000_000_000,
        "data": {"object": "user", "id": user_id, "deleted": True},
    }


def session_event(
    user_id: str, created_at: int, last_sign_in_at: int | None = None
) -> dict[str, Any]:
    user = None
    if last_sign_in_at is not None:
        user = {"object": "user", "id": user_id, "last_sign_in_at": last_sign_in_at}
    return {
        "object": "event",
        "type": "session.created",
        "timestamp": created_at,
        "data": {
            "object": "session",
            "id": "sess_" + secrets.token_hex(8),
            "user_id": user_id,
            "status": "active",
            "created_at": created_at,
            "updated_at": created_at,
            "user": user,
        },
    }


def dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def organization(org_id: str, updated_at: int, **data: Any) -> dict[str, Any]:
    """A Clerk organization object, as organization.* events and memberships carry it."""
    org = {
        "object": "organization",
        "id": org_id,
        "name": "Acme",
        "slug": "acme",
        "image_url": "https://img.clerk.com/o",
        "has_image": True,
        "members_count": 1,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.organizations"},
        "created_by": "user_creator",
        "created_at": 1_700_000_000_000,
        "updated_at": updated_at,
    }
    org.update(data)
    return org


def organization_event(
    event_type: str, org_id: str, updated_at: int, **data: Any
) -> dict[str, Any]:
    """organization.created/updated; organization.deleted carries only the id and slug."""
    if event_type == "organization.deleted":
        body = {"object": "organization", "id": org_id, "slug": "acme", "deleted": True}
    else:
        body = organization(org_id, updated_at, **data)
    return {"object": "event", "type": event_type, "timestamp": 1_700_000_000, "data": body}


def membership_event(
    event_type: str,
    membership_id: str,
    org_id: str,
    user_id: str,
    updated_at: int,
    *,
    created_at: int = 1_700_000_000_000,
    role: str = "org:member",
    org_updated_at: int = 1_700_000_000_000,
    **org_data: Any,
) -> dict[str, Any]:
    """An organizationMembership.* event: the full membership, its organization embedded."""
    membership = {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "permissions": ["org:posts:read"],
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.organization_memberships"},
        "organization": organization(org_id, org_updated_at, **org_data),
        "public_user_data": {"user_id": user_id, "first_name": "Ada", "identifier": "a@x.io"},
        "created_at": created_at,
        "updated_at": updated_at,
    }
    return {"object": "event", "type": event_type, "timestamp": 1_700_000_000, "data": membership}


def invitation_event(
    event_type: str,
    invitation_id: str,
    org_id: str,
    updated_at: int,
    *,
    email_address: str = "invitee@example.com",
    role: str = "org:member",
    user_id: str | None = None,
    created_at: int = 1_700_000_000_000,
    expires_at: int = 1_700_000_000_000 + 30 * 86_400_000,
    **data: Any,
) -> dict[str, Any]:
    """An organizationInvitation.created/accepted/revoked event; `accepted` names the user who
    accepted (user_id, default `user_` + the invitation's id)."""
    action = event_type.rpartition(".")[2]
    invitation = {
        "object": "organization_invitation",
        "id": invitation_id,
        "email_address": email_address,
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "organization_id": org_id,
        "inviter_id": "user_inviter",
        "status": "pending" if action == "created" else action,
        "public_metadata": {},
        "private_metadata": {"secret": "never in public.organization_invitations"},
        "url": "https://accounts.example.com/accept-invitation?token=never-stored",
        "expires_at": expires_at,
        "created_at": created_at,
        "updated_at": updated_at,
    }
    if event_type == "organizationInvitation.accepted":
        invitation["user_id"] = (
            user_id if user_id is not None else "user_" + invitation_id.removeprefix("orginv_")
        )
    invitation.update(data)
    return {"object": "event", "type": event_type, "timestamp": 1_700_000_000, "data": invitation}
