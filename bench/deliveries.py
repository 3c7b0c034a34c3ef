"""Realistic Clerk user deliveries, and the signed files wrk sends them from.

A delivery is a Svix message id and a body. The bodies are Clerk `user.created` / `user.updated`
events shaped as Clerk sends them (email with verification, a Google account, metadata, the
request's attributes): about 3 KB each. Files are written line by line, so memory stays flat
however many deliveries a run needs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from clerk_sync.testing import signed_headers

Delivery = tuple[str, bytes]

CREATED_AT = 1_700_000_000_000
FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret"]
LAST_NAMES = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]


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
        "public_metadata": {"plan": rng.choice(["free", "pro", "team"]), "onboarded": True},
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


def mixed(count: int, prefix: str = "bench", seed: int = 42) -> Iterator[Delivery]:
    """A live app's stream: ~55% new users, ~35% updates, ~5% duplicate deliveries (a Svix
    retry: same message id and body) and ~5% stale updates (older than what was already sent)."""
    rng = random.Random(seed)
    latest: dict[str, int] = {}
    users: list[str] = []
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
