"""`clerk-sync send-test`: the local "Send Example". Builds a realistic event of any Clerk type from
Clerk's published example payloads, signs it as Svix would, and posts it."""

from __future__ import annotations

import copy
import json
import secrets
import string
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import httpx

from clerk_sync.verify import signed_headers

_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id shaped like Clerk's and Svix's (`msg_2g7np7Hrk0SN6kj5EDMLDaKNL0S`)."""
    return prefix + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(27))


@cache
def example_types() -> tuple[str, ...]:
    folder = resources.files("clerk_sync").joinpath("examples")
    return tuple(sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".json")))


def load_example(event_type: str) -> dict[str, Any]:
    if event_type not in example_types():
        raise KeyError(event_type)
    path = resources.files("clerk_sync").joinpath("examples", f"{event_type}.json")
    example: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return example


@dataclass
class Overrides:
    user_id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    updated_at: int | None = None
    org_id: str | None = None


def _fill_organization(org: dict[str, Any], o: Overrides, now_ms: int) -> None:
    """A fresh version of Clerk's example organization, so that sending it again is newer."""
    if o.org_id:
        org["id"] = o.org_id
    if "updated_at" in org:  # organization.deleted carries none
        org["updated_at"] = o.updated_at if o.updated_at is not None else now_ms


def _fill_user(user: dict[str, Any], o: Overrides, now_ms: int) -> None:
    """Make Clerk's spec example look like a real sign-up: it ships with no email address."""
    if o.user_id:
        user["id"] = o.user_id
    email_id = user.get("primary_email_address_id") or new_id("idn")
    user["primary_email_address_id"] = email_id
    user["email_addresses"] = [
        {
            "object": "email_address",
            "id": email_id,
            "email_address": o.email or "john.doe@example.com",
            "verification": {"status": "verified", "strategy": "email_code"},
            "linked_to": [],
        }
    ]
    if o.first_name is not None:
        user["first_name"] = o.first_name
    if o.last_name is not None:
        user["last_name"] = o.last_name
    # A fresh version, so that sending the same example again is newer, not stale.
    user["updated_at"] = o.updated_at if o.updated_at is not None else now_ms


def build_event(event_type: str, overrides: Overrides | None = None) -> dict[str, Any]:
    o = overrides or Overrides()
    event = copy.deepcopy(load_example(event_type))
    now_ms = int(time.time() * 1000)
    event["timestamp"] = now_ms
    data = event["data"]
    if event_type in ("user.created", "user.updated"):
        _fill_user(data, o, now_ms)
        if event_type == "user.created":
            data["created_at"] = data["last_sign_in_at"] = data["updated_at"]
    elif event_type == "user.deleted":
        if o.user_id:
            data["id"] = o.user_id
    elif event_type == "session.created":
        data["created_at"] = data["updated_at"] = now_ms
        if isinstance(data.get("user"), dict):
            _fill_user(data["user"], o, now_ms)
            data["user"]["last_sign_in_at"] = now_ms
            data["user_id"] = data["user"]["id"]
        elif o.user_id:
            data["user_id"] = o.user_id
    elif event_type.startswith("organization."):
        _fill_organization(data, o, now_ms)
    elif event_type.startswith("organizationMembership."):
        _fill_organization(data["organization"], o, now_ms)
        data["updated_at"] = o.updated_at if o.updated_at is not None else now_ms
        if o.user_id:
            data["public_user_data"]["user_id"] = o.user_id
    elif event_type.startswith("organizationInvitation."):
        # A fresh version, so that the example's created, accepted and revoked follow each other.
        data["updated_at"] = o.updated_at if o.updated_at is not None else now_ms
        if o.org_id:
            data["organization_id"] = o.org_id
        if o.email:
            data["email_address"] = o.email
        if o.user_id and "user_id" in data:  # only accepted names the user
            data["user_id"] = o.user_id
    return event


def post_event(
    url: str,
    key: bytes,
    event: dict[str, Any],
    message_id: str | None = None,
    timeout: float = 15.0,
) -> httpx.Response:
    body = json.dumps(event).encode()
    headers = signed_headers(key, body, message_id or new_id("msg"))
    # Svix does not follow redirects, and neither do we: a redirect is a misconfiguration.
    return httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False)
