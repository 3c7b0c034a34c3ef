"""Clerk session tokens: verified before POST /api/users/sync (or `SessionSync`) trusts a user id.

A session token is an RS256 JWT that lives about a minute (facts.md §10). We verify it with
PyJWT, as Clerk's own Python SDK does, and add what PyJWT leaves to the caller:

- RS256 only, decided from the header before any key is looked up: `alg: none` and an HS256
  token "signed" with the public key as an HMAC secret are refused outright;
- `exp` and `nbf` with 5 s of leeway (Clerk's SDKs' clock skew); `sub`, `sid` and `exp` required
  (PyJWT checks only the claims a token happens to carry);
- `azp` one of CLERK_AUTHORIZED_PARTIES when that is set; a token without `azp` passes, as in
  Clerk's SDKs (requests from other servers carry none);
- `iss` is not compared: no Frontend API URL is configured to compare it with. The keys decide
  instead: they are this instance's own (CLERK_JWT_KEY, or the JWKS fetched with this instance's
  CLERK_SECRET_KEY), held per verifier and never shared across instances, so another instance's
  token cannot match (the mix-up clerk-backend-api had before 7.0, caching keys by `kid` alone).

Keys come from CLERK_JWT_KEY (a PEM, no network) or the Backend API's `GET /v1/jwks`: fetched on
first use, re-read every few minutes, and fetched again for a `kid` not in the set (a rotation),
by one request at a time and at most once per MIN_REFETCH_SECONDS, so that a flood of tokens
with made-up `kid`s costs one fetch, not one per token. A token that passed is remembered until
it expires (a page sends the same one until Clerk refreshes it), so its signature is checked once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from clerk_sync.clerk_api import ClerkAPIError
from clerk_sync.single_flight import SingleFlight

# PyJWT and cryptography are imported where they are first used: a serverless cold start that
# only takes webhooks should not load them.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

log = logging.getLogger("clerk_sync.session")

ALGORITHM = "RS256"
LEEWAY_SECONDS = 5
REQUIRED_CLAIMS = ("exp", "sub", "sid")
# Longer than any header and claims Clerk issues (custom claims included), far shorter than
# what would make parsing it cost anything.
MAX_TOKEN_LENGTH = 16 * 1024
JWKS_MAX_AGE_SECONDS = 300.0  # then re-read, so a key Clerk removed stops being accepted
MIN_REFETCH_SECONDS = 5.0  # between two fetches of the JWKS, whatever the tokens say
MAX_VERIFIED_TOKENS = 10_000  # remembered until they expire (each lives about a minute)

Claims = dict[str, Any]


class InvalidSessionToken(Exception):
    """A token we refuse (answered 401). `reason` is a short fixed label; the message says what
    was wrong and never quotes the token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KeysUnavailable(Exception):
    """No keys to verify with: the JWKS could not be fetched (answered 503)."""


def origin(value: str) -> str:
    """An origin as browsers send it and Clerk puts in `azp` (`https://app.example.com`, with a
    port if any, no path), lower case; ValueError saying what is wrong."""
    expected = f"{value!r} is not an origin such as https://app.example.com"
    try:
        parts = urlsplit(value.strip())
        _ = parts.port
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(expected)
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{expected}: no path (a token's azp is the page's origin only)")
    return f"{parts.scheme}://{parts.netloc}".lower()


def load_pem_key(pem: str) -> RSAPublicKey:
    """The RSA public key in a PEM (Clerk Dashboard → API Keys → JWKS Public Key)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError(
            "not a PEM public key (-----BEGIN PUBLIC KEY----- …): copy the JWKS Public Key "
            "from Clerk Dashboard → API Keys"
        ) from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key: Clerk signs session tokens with RS256")
    return key


class KeySource(Protocol):
    async def key(self, kid: str | None) -> RSAPublicKey:
        """The key a token with this `kid` is verified with; InvalidSessionToken when there is
        none, KeysUnavailable when the keys cannot be had right now."""
        ...


class PemKey:
    """CLERK_JWT_KEY: one key, no network; the token's `kid` does not matter."""

    def __init__(self, pem: str) -> None:
        self._key = load_pem_key(pem)

    async def key(self, kid: str | None) -> RSAPublicKey:
        return self._key


class JwksKeys:
    """The instance's keys from the Backend API (`GET /v1/jwks`), cached."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        max_age: float = JWKS_MAX_AGE_SECONDS,
        min_refetch: float = MIN_REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._max_age = max_age
        self._min_refetch = min_refetch
        self._clock = clock
        self._keys: dict[str, RSAPublicKey] | None = None
        self._fetched_at = 0.0  # when the keys in hand were fetched
        self._attempted_at: float | None = None  # when the last fetch began
        self._flight: SingleFlight[None, None] = SingleFlight()
        self.fetches = 0

    async def key(self, kid: str | None) -> RSAPublicKey:
        if kid is None:
            raise InvalidSessionToken("no_kid", "the session token names no key (kid)")
        if self._keys is None or self._clock() - self._fetched_at > self._max_age:
            await self._refresh()
        key = self._keys.get(kid) if self._keys is not None else None
        if key is None and self._keys is not None:
            await self._refresh()  # a rotation: a key we have not seen yet
            key = self._keys.get(kid)
        if key is not None:
            return key
        if self._keys is None:
            raise KeysUnavailable("Clerk's JWKS (GET /v1/jwks) could not be fetched")
        raise InvalidSessionToken(
            "unknown_key",
            "the session token is signed with a key this Clerk instance does not have",
        )

    async def _refresh(self) -> None:
        """Fetch the keys unless a fetch is running (then wait for it) or began less than
        `min_refetch` seconds ago. A failed fetch keeps the keys in hand."""
        if self._flight.running(None):
            await self._flight.run(None, self._load)
        elif self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refetch:
            self._attempted_at = self._clock()
            await self._flight.run(None, self._load)

    async def _load(self) -> None:
        import jwt
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

        self.fetches += 1
        try:
            jwks = await self._fetch()
        except ClerkAPIError as exc:
            log.warning("session tokens: cannot fetch Clerk's JWKS: %s", exc)
            return
        keys: dict[str, RSAPublicKey] = {}
        for entry in jwks.get("keys") or []:
            try:
                jwk = jwt.PyJWK(entry, ALGORITHM)
            except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError):
                continue  # a key of another type or algorithm: not one session tokens use
            if isinstance(jwk.key, RSAPublicKey) and isinstance(entry.get("kid"), str):
                keys[entry["kid"]] = jwk.key
        self._keys = keys
        self._fetched_at = self._clock()


class SessionTokenVerifier:
    def __init__(self, keys: KeySource, *, authorized_parties: Sequence[str] = ()) -> None:
        self.keys = keys
        self._authorized_parties = frozenset(origin(party) for party in authorized_parties)
        # Tokens verified lately, until they expire: a page sends the same token on every call
        # until Clerk refreshes it (about a minute), and checking its signature again would be
        # most of what such a call costs.
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    async def verify(self, token: str) -> Claims:
        """The claims of a genuine, current session token; InvalidSessionToken otherwise
        (KeysUnavailable when the JWKS cannot be fetched)."""
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() <= claims["exp"] + LEEWAY_SECONDS:
                return dict(claims)
            del self._verified[token]
        claims = await self._verify(token)
        self._verified[token] = claims
        if len(self._verified) > MAX_VERIFIED_TOKENS:
            self._verified.popitem(last=False)  # the one verified longest ago
        return dict(claims)

    async def _verify(self, token: str) -> Claims:
        import jwt

        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidSessionToken("malformed", "the session token is empty or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidSessionToken("malformed", "the session token is not a JWT") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidSessionToken("wrong_algorithm", "the session token is not signed RS256")
        kid = header.get("kid")
        key = await self.keys.key(kid if isinstance(kid, str) else None)
        try:
            claims: Claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                leeway=LEEWAY_SECONDS,
                # Clerk's session tokens have no audience; custom claims may add one, which
                # is theirs to check.
                options={"require": list(REQUIRED_CLAIMS), "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidSessionToken("expired", "the session token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidSessionToken(
                "not_yet_valid", "the session token is not valid yet"
            ) from None
        except jwt.InvalidSignatureError:
            raise InvalidSessionToken(
                "bad_signature", "the session token's signature does not match"
            ) from None
        except jwt.MissingRequiredClaimError:
            raise InvalidSessionToken(
                "missing_claim", "the session token lacks a required claim"
            ) from None
        except jwt.InvalidTokenError:
            raise InvalidSessionToken("malformed", "the session token is malformed") from None
        for claim in ("sub", "sid"):
            if not isinstance(claims.get(claim), str) or not claims[claim]:
                raise InvalidSessionToken("missing_claim", f"the session token has no {claim}")
        if self._authorized_parties and not self._authorized(claims.get("azp")):
            raise InvalidSessionToken(
                "azp_not_allowed",
                "the session token was issued for an origin not in CLERK_AUTHORIZED_PARTIES",
            )
        return claims

    def _authorized(self, azp: Any) -> bool:
        """Whether a token's `azp` is allowed; a token without one passes, as in Clerk's SDKs."""
        if azp is None:
            return True
        return isinstance(azp, str) and azp.rstrip("/").lower() in self._authorized_parties
