"""Realistic Clerk deliveries, and the signed files wrk sends them from.

A delivery is a Svix message id and a body. The bodies are Clerk events shaped as Clerk sends
them: `user.created` / `user.updated` (email with verification, a Google account, metadata, the
request's attributes: about 3 KB each), and for the mixed stream (`with_organizations`) also
`session.created`, `organization.created` / `.updated` and `organizationMembership.created` /
`.updated` (each membership carrying its organization in full, and its user's public data).
Files are written line by line, so memory stays flat however many deliveries a run needs.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from clerk_sync.testing import signed_headers

Delivery = tuple[str, bytes]

CREATED_AT = 1_700_000_000_000
FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret"]
LAST_NAMES = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]


PLANS = ["free", "pro", "team"]
ROLES_OF_USERS = ["member", "member", "admin", "owner"]


def public_metadata(user_id: str, updated_at: int, plan: str) -> dict[str, Any]:
    """A user's public_metadata: what bench/columns.toml's custom columns take (`--columns`),
    drawn from the user id and version (not from the stream's random numbers, so the stream is
    otherwise as before): `role` (missing for ~1 user version in 5), `plan` (missing for ~1 in
    8: the column's default), `credits` (a number, but for ~1 in 10 a string such as "120",
    which an integer column does not take: it gets its default, null, and the delivery applies)."""
    draw = zlib.crc32(f"{user_id}:{updated_at}".encode())
    metadata: dict[str, Any] = {"onboarded": True}
    if draw % 8:  # independent bits of the draw for each
        metadata["plan"] = plan
    if (draw >> 3) % 5:
        metadata["role"] = ROLES_OF_USERS[(draw >> 6) % 4]
    credits = (draw >> 8) % 1000
    metadata["credits"] = str(credits) if (draw >> 18) % 10 == 0 else credits
    return metadata


def user_event(event_type: str, user_id: str, updated_at: int, rng: random.Random) -> bytes:
    """One Clerk user event as it arrives on the wire."""
    suffix = user_id.removeprefix("user_")
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{first.lower()}.{last.lower()}.{suffix.lower()}@example.com"
    user: dict[str, Any] = {
        "object": "user",
        "id": user_id,
        "external_id": None,
        "primary_email_address_id": f"idn_{suffix}",
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "username": None,
        "first_name": first,
        "last_name": last,
        "profile_image_url": f"https://images.clerk.dev/oauth_google/img_{suffix}",
        "image_url": f"https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJ{suffix}",
        "has_image": True,
        "public_metadata": public_metadata(user_id, updated_at, rng.choice(PLANS)),
        "private_metadata": {"stripe_customer_id": f"cus_{suffix[:14]}"},
        "unsafe_metadata": {
            "theme": "dark",
            "locale": "en-GB",
            "signup": {
                "referrer": "https://news.ycombinator.com/item?id=41234567",
                "utm_source": "newsletter",
                "utm_campaign": "launch-week",
            },
        },
        "email_addresses": [
            {
                "object": "email_address",
                "id": f"idn_{suffix}",
                "email_address": email,
                "reserved": False,
                "verification": {
                    "object": "verification_from_oauth",
                    "status": "verified",
                    "strategy": "from_oauth_google",
                    "attempts": None,
                    "expire_at": None,
                },
                "linked_to": [{"object": "oauth_google", "id": f"idn_g{suffix}"}],
                "matches_sso_connection": False,
                "created_at": CREATED_AT,
                "updated_at": updated_at,
            }
        ],
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": False,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "external_accounts": [
            {
                "object": "google_account",
                "id": f"idn_g{suffix}",
                "provider": "oauth_google",
                "identification_id": f"idn_g{suffix}",
                "provider_user_id": str(rng.randrange(10**20, 10**21)),
                "approved_scopes": (
                    "email https://www.googleapis.com/auth/userinfo.email "
                    "https://www.googleapis.com/auth/userinfo.profile openid profile"
                ),
                "email_address": email,
                "first_name": first,
                "last_name": last,
                "avatar_url": f"https://lh3.googleusercontent.com/a/ACg8ocK{suffix}=s96-c",
                "image_url": f"https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJ{suffix}g",
                "username": "",
                "public_metadata": {},
                "label": None,
                "verification": {
                    "object": "verification_oauth",
                    "status": "verified",
                    "strategy": "oauth_google",
                    "attempts": None,
                    "expire_at": updated_at + 600_000,
                },
                "created_at": CREATED_AT,
                "updated_at": updated_at,
            }
        ],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "last_sign_in_at": updated_at,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "updated_at": updated_at,
        "created_at": CREATED_AT,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "create_organizations_limit": None,
        "last_active_at": updated_at,
        "legal_accepted_at": None,
    }
    event = {
        "data": user,
        "event_attributes": {
            "http_request": {
                "client_ip": f"203.0.113.{rng.randrange(1, 255)}",
                "user_agent": (
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                    "(KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36"
                ),
            }
        },
        "instance_id": "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "object": "event",
        "timestamp": updated_at,
        "type": event_type,
    }
    return orjson.dumps(event)


def mixed(
    count: int, prefix: str = "bench", seed: int = 42, users: list[str] | None = None
) -> Iterator[Delivery]:
    """A live app's stream: ~55% new users, ~35% updates, ~5% duplicate deliveries (a Svix
    retry: same message id and body) and ~5% stale updates (older than what was already sent).
    Each new user's id is appended to `users` (when given) as it is sent."""
    rng = random.Random(seed)
    latest: dict[str, int] = {}
    users = [] if users is None else users
    recent: list[Delivery] = []
    for n in range(count):
        roll = rng.random()
        if roll < 0.05 and recent:
            yield rng.choice(recent)
            continue
        if roll < 0.60 or not users:
            user_id = f"user_{prefix}{n:08d}x{rng.getrandbits(40):010x}"
            users.append(user_id)
            latest[user_id] = CREATED_AT
            event_type, updated_at = "user.created", CREATED_AT
        elif roll < 0.95:
            user_id = rng.choice(users)
            latest[user_id] += rng.randrange(1_000, 60_000)
            event_type, updated_at = "user.updated", latest[user_id]
        else:
            user_id = rng.choice(users)
            event_type, updated_at = "user.updated", latest[user_id] - rng.randrange(1, 60_000)
        delivery = (f"msg_{prefix}{n:010d}", user_event(event_type, user_id, updated_at, rng))
        recent.append(delivery)
        if len(recent) > 1000:  # retries come soon after the first attempt
            recent.pop(0)
        yield delivery


# --- the mixed stream: users, sign-ins, organizations and memberships ---------------------------

# The mixed stream's default shares, in percent: user events (as `mixed`), session.created,
# organization events, membership events.
MIX = (60, 15, 10, 15)
ORG_NAMES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell"]
ROLES = ["org:member", "org:member", "org:member", "org:admin"]
PERMISSIONS = {
    "org:member": ["org:sys_memberships:read", "org:sys_profile:read"],
    "org:admin": [
        "org:sys_profile:manage", "org:sys_profile:delete", "org:sys_memberships:read",
        "org:sys_memberships:manage", "org:sys_domains:read", "org:sys_domains:manage",
    ],
}  # fmt: skip


def _envelope(event_type: str, data: dict[str, Any], at: int, rng: random.Random) -> bytes:
    return orjson.dumps(
        {
            "data": data,
            "event_attributes": {
                "http_request": {
                    "client_ip": f"203.0.113.{rng.randrange(1, 255)}",
                    "user_agent": (
                        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                        "(KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36"
                    ),
                }
            },
            "instance_id": "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            "object": "event",
            "timestamp": at,
            "type": event_type,
        }
    )


def organization(org_id: str, name: str, created_by: str, updated_at: int) -> dict[str, Any]:
    """A Clerk organization object, as organization events and memberships carry it."""
    suffix = org_id.removeprefix("org_")
    return {
        "object": "organization",
        "id": org_id,
        "name": name,
        "slug": f"{name.lower()}-{suffix[-6:].lower()}",
        "image_url": f"https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsImlpZCI6Im{suffix}",
        "has_image": False,
        "members_count": None,
        "pending_invitations_count": None,
        "max_allowed_memberships": 20,
        "admin_delete_enabled": True,
        "public_metadata": {"plan": "team", "seats": 20},
        "private_metadata": {"stripe_customer_id": f"cus_{suffix[:14]}"},
        "created_by": created_by,
        "created_at": CREATED_AT,
        "updated_at": updated_at,
    }


def membership(
    membership_id: str,
    org: dict[str, Any],
    user_id: str,
    role: str,
    created_at: int,
    updated_at: int,
) -> dict[str, Any]:
    """A Clerk organization membership, its organization embedded and its user's public data."""
    suffix = user_id.removeprefix("user_")
    return {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "permissions": PERMISSIONS[role],
        "public_metadata": {},
        "private_metadata": {},
        "organization": org,
        "public_user_data": {
            "user_id": user_id,
            "first_name": "Ada",
            "last_name": "Lovelace",
            "image_url": f"https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJ{suffix}",
            "has_image": True,
            "identifier": f"ada.{suffix.lower()}@example.com",
            "username": None,
            "banned": False,
        },
        "created_at": created_at,
        "updated_at": updated_at,
    }


def session(session_id: str, user_id: str, at: int) -> dict[str, Any]:
    """A session.created's data: the session just started (its created_at the sign-in time)."""
    return {
        "object": "session",
        "id": session_id,
        "user_id": user_id,
        "client_id": "client_" + session_id.removeprefix("sess_"),
        "actor": None,
        "status": "active",
        "last_active_organization_id": None,
        "last_active_at": at,
        "expire_at": at + 7 * 86_400_000,
        "abandon_at": at + 30 * 86_400_000,
        "created_at": at,
        "updated_at": at,
    }


def with_organizations(
    count: int, shares: tuple[int, int, int, int] = MIX, prefix: str = "bench", seed: int = 42
) -> Iterator[Delivery]:
    """A live B2B app's stream, by `shares` (percent): user events (the `mixed` stream, its
    duplicates and stale updates included), sign-ins (session.created of a known user),
    organization events (~30% new organizations, the rest updates, newer each time) and
    membership events (~70% a known user joining a known organization, the rest role changes).
    A membership carries its organization as it stands then; ~5% of the sign-in, organization
    and membership deliveries are Svix retries of a recent one."""
    rng = random.Random(seed)
    users: list[str] = []
    user_stream = mixed(count, prefix, seed, users)
    orgs: dict[str, dict[str, Any]] = {}
    members: dict[str, tuple[str, str, str, int]] = {}  # id: (org, user, role, updated_at)
    recent: list[Delivery] = []
    clock = CREATED_AT
    kinds = ("user", "session", "organization", "membership")
    for n in range(count):
        kind = rng.choices(kinds, weights=shares)[0]
        if kind == "user" or not users:
            yield next(user_stream)
            continue
        if recent and rng.random() < 0.05:
            yield rng.choice(recent)
            continue
        clock += rng.randrange(1, 2_000)
        message_id = f"msg_{prefix}{kind[0]}{n:010d}"
        if kind == "session":
            session_id = f"sess_{prefix}{n:08d}x{rng.getrandbits(40):010x}"
            body = _envelope(
                "session.created", session(session_id, rng.choice(users), clock), clock, rng
            )
        elif kind == "organization" or not orgs:
            if not orgs or rng.random() < 0.3:
                org_id = f"org_{prefix}{n:08d}x{rng.getrandbits(40):010x}"
                org = organization(org_id, rng.choice(ORG_NAMES), rng.choice(users), clock)
                event_type = "organization.created"
            else:
                org = dict(orgs[rng.choice(list(orgs))], updated_at=clock)
                org["public_metadata"] = {"plan": rng.choice(["team", "business"]), "seats": 20}
                event_type = "organization.updated"
            orgs[org["id"]] = org
            body = _envelope(event_type, org, clock, rng)
        else:
            if not members or rng.random() < 0.7:
                member_id = f"orgmem_{prefix}{n:08d}x{rng.getrandbits(40):010x}"
                org_id, user_id, role = rng.choice(list(orgs)), rng.choice(users), rng.choice(ROLES)
                created_at, event_type = clock, "organizationMembership.created"
            else:
                member_id = rng.choice(list(members))
                org_id, user_id, role, created_at = members[member_id]
                role = "org:admin" if role == "org:member" else "org:member"
                event_type = "organizationMembership.updated"
            members[member_id] = (org_id, user_id, role, created_at)
            data = membership(member_id, orgs[org_id], user_id, role, created_at, clock)
            body = _envelope(event_type, data, clock, rng)
        delivery = (message_id, body)
        recent.append(delivery)
        if len(recent) > 1000:
            recent.pop(0)
        yield delivery


def created(count: int, prefix: str = "burst", seed: int = 7) -> Iterator[Delivery]:
    """`count` distinct user.created deliveries, as when an app imports its users into Clerk."""
    rng = random.Random(seed)
    for n in range(count):
        user_id = f"user_{prefix}{n:08d}x{rng.getrandbits(40):010x}"
        yield f"msg_{prefix}{n:010d}", user_event("user.created", user_id, CREATED_AT, rng)


def write_unsigned(path: Path, deliveries: Iterable[Delivery]) -> int:
    """`id<TAB>body` lines; returns the total body bytes."""
    total = 0
    with path.open("wb") as out:
        for message_id, body in deliveries:
            out.write(message_id.encode() + b"\t" + body + b"\n")
            total += len(body)
    return total


def read_unsigned(path: Path) -> Iterator[Delivery]:
    with path.open("rb") as lines:
        for line in lines:
            message_id, body = line.rstrip(b"\n").split(b"\t", 1)
            yield message_id.decode(), body


def write_signed(path: Path, deliveries: Iterable[Delivery], key: bytes, timestamp: int) -> int:
    """`id<TAB>timestamp<TAB>signature<TAB>body` lines, signed now as Svix signs them; returns
    the number of deliveries written."""
    count = 0
    with path.open("wb") as out:
        for message_id, body in deliveries:
            signature = signed_headers(key, body, message_id, timestamp)["svix-signature"]
            out.write(f"{message_id}\t{timestamp}\t{signature}\t".encode() + body + b"\n")
            count += 1
    return count
