"""`clerk-sync doctor`'s checks of the session-sync settings (POST /api/users/sync).

CLERK_SECRET_KEY turns the route on; session tokens are verified with CLERK_JWT_KEY (a PEM, no
network) or the JWKS fetched with the secret key; CLERK_AUTHORIZED_PARTIES lists the origins
allowed as a token's `azp` (and given CORS headers). Each check is one finding, in doctor's
words; no more of a key is shown than its first 8 characters.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clerk_sync.clerk_api import ClerkAPIError, ClerkAuthError, ClerkClient
from clerk_sync.session_tokens import load_pem_key, origin
from clerk_sync.settings import CLERK_SECRET_KEY_PREFIX, DEFAULT_CLERK_API_URL

if TYPE_CHECKING:
    from clerk_sync.doctor import Finding, Sources

TOPIC = "session sync"


def check_session_sync(sources: Sources, *, timeout: float = 5.0) -> list[Finding]:
    """The secret key's format, the keys tokens are verified with (the PEM parses, or the JWKS
    can be fetched), and the authorized parties (origins, no path)."""
    from clerk_sync import doctor  # which imports this module

    secret = sources.lookup("clerk_secret_key")
    pem = sources.lookup("clerk_jwt_key")
    parties = sources.lookup("clerk_authorized_parties")

    if secret is None or not secret.value.strip():
        also = [s.variable for s in (pem, parties) if s is not None and s.value.strip()]
        if also:
            return [
                doctor.warn(
                    TOPIC,
                    f"{' and '.join(also)} set, but without CLERK_SECRET_KEY POST /api/users/sync "
                    "is off (it answers 404)",
                )
            ]
        return []  # session sync is optional, and off: nothing to say

    key = secret.value.strip()
    if not key.startswith(CLERK_SECRET_KEY_PREFIX):
        return [
            doctor.fail(
                TOPIC,
                f"{secret.where} ({doctor.shown(key)}) is not a Clerk secret key: it starts with 'sk_' "
                "(Clerk Dashboard → API Keys → Secret keys)",
            )
        ]
    findings = [
        doctor.ok(TOPIC, f"{secret.where} is a secret key ({doctor.shown(key)}): the route is on")
    ]
    if pem is not None and pem.value.strip():
        findings.append(_check_pem(pem.where, pem.value))
    else:
        api = sources.lookup("clerk_api_url")
        api_url = api.value.strip().rstrip("/") if api and api.value.strip() else None
        findings.append(asyncio.run(_check_jwks(key, api_url or DEFAULT_CLERK_API_URL, timeout)))
    findings.append(
        _check_parties(parties.where if parties else None, parties.value if parties else "")
    )
    return findings


def _check_pem(where: str, value: str) -> Finding:
    from clerk_sync import doctor  # which imports this module

    try:
        key = load_pem_key(value.replace("\\n", "\n").strip())
    except ValueError as exc:
        return doctor.fail(TOPIC, f"{where}: {exc}")
    return doctor.ok(
        TOPIC,
        f"{where} is an RSA public key ({key.key_size} bits): tokens are verified without a "
        "network call",
    )


async def _check_jwks(secret_key: str, api_url: str, timeout: float) -> Finding:
    from clerk_sync import doctor  # which imports this module

    try:
        async with ClerkClient(secret_key, api_url, timeout=timeout, max_attempts=1) as clerk:
            jwks = await clerk.get_jwks()
    except ClerkAuthError as exc:
        return doctor.fail(TOPIC, str(exc))
    except ClerkAPIError as exc:
        return doctor.fail(
            TOPIC, f"cannot fetch the JWKS that session tokens are verified with: {exc}"
        )
    keys = [k for k in jwks["keys"] if isinstance(k, dict) and k.get("kty") == "RSA"]
    if not keys:
        return doctor.fail(
            TOPIC, f"{api_url}/jwks lists no RSA key: is CLERK_API_URL Clerk's Backend API?"
        )
    return doctor.ok(
        TOPIC, f"{api_url}/jwks answers {len(keys)} RSA key(s) for verifying session tokens"
    )


def _check_parties(where: str | None, value: str) -> Finding:
    from clerk_sync import doctor  # which imports this module

    entries = [part for part in value.replace(",", " ").split() if part]
    if where is None or not entries:
        return doctor.warn(
            TOPIC,
            "CLERK_AUTHORIZED_PARTIES not set: a token's azp is not checked (Clerk warns this can "
            "open the app to CSRF) and browsers on other origins get no CORS headers; set it to "
            "your app's origins, e.g. https://app.example.com",
        )
    for entry in entries:
        try:
            origin(entry)
        except ValueError as exc:
            return doctor.fail(TOPIC, f"{where}: {exc}")
    return doctor.ok(
        TOPIC, f"{where}: azp and CORS allowed for {', '.join(origin(e) for e in entries)}"
    )
