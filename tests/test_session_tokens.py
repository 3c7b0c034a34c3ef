"""Session token verification (session_tokens.py): RS256 only, the claims Clerk's SDKs check, and
keys from a PEM or the JWKS, fetched sparingly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clerk_sync.clerk_api import ClerkAPIError, ClerkClient
from clerk_sync.session_tokens import (
    InvalidSessionToken,
    JwksKeys,
    KeysUnavailable,
    PemKey,
    SessionTokenVerifier,
    load_pem_key,
    origin,
)
from tests import clerk_standin, support
from tests.session_keys import ORIGIN, KeyPair, jwks

PAIR = KeyPair("ins_key1")
OTHER = KeyPair("ins_key2")


class Jwks:
    """What GET /v1/jwks answers, changed by the test; counts the fetches."""

    def __init__(self, *pairs: KeyPair) -> None:
        self.body: dict[str, Any] = jwks(*pairs)
        self.fetches = 0
        self.fail = False

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise ClerkAPIError("cannot reach the stand-in")
        return self.body


def verify(token: str, verifier: SessionTokenVerifier | None = None) -> dict[str, Any]:
    verifier = verifier or SessionTokenVerifier(PemKey(PAIR.public_pem))
    result: dict[str, Any] = support.run(verifier.verify(token))
    return result


def refused(token: str, verifier: SessionTokenVerifier | None = None) -> InvalidSessionToken:
    with pytest.raises(InvalidSessionToken) as caught:
        verify(token, verifier)
    return caught.value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_valid_token_gives_its_claims() -> None:
    claims = verify(PAIR.token("user_valid"))
    assert claims["sub"] == "user_valid"
    assert claims["sid"] == "sess_valid"


def test_expired_and_not_yet_valid_tokens_are_refused_past_5_s_of_leeway() -> None:
    now = int(time.time())
    assert refused(PAIR.token(exp=now - 10)).reason == "expired"
    assert refused(PAIR.token(nbf=now + 10, iat=now)).reason == "not_yet_valid"
    # Within the leeway: a clock a few seconds apart is not an attack.
    assert verify(PAIR.token(exp=now - 3))["sub"] == "user_session1"
    assert verify(PAIR.token(nbf=now + 3, iat=now))["sub"] == "user_session1"


def test_a_token_signed_with_another_key_is_refused() -> None:
    error = refused(OTHER.token())
    assert error.reason == "bad_signature"
    assert "token" in error.message


def test_alg_none_is_refused() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": PAIR.kid}).encode())
    claims = jwt.decode(PAIR.token(), options={"verify_signature": False})
    payload = b64url(json.dumps(claims).encode())
    assert refused(f"{header}.{payload}.").reason == "wrong_algorithm"


def test_hs256_signed_with_the_public_key_as_secret_is_refused() -> None:
    """The classic key-confusion forgery: the public key is public, so anyone can compute this
    HMAC; a verifier that let the token's header choose the algorithm would accept it."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": PAIR.kid}).encode())
    claims = jwt.decode(PAIR.token(), options={"verify_signature": False})
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(PAIR.public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    forged = f"{header}.{payload}.{b64url(signature.digest())}"
    assert refused(forged).reason == "wrong_algorithm"


@pytest.mark.parametrize("claim", ["sub", "sid", "exp"])
def test_a_token_without_sub_sid_or_exp_is_refused(claim: str) -> None:
    assert refused(PAIR.token(**{claim: None})).reason == "missing_claim"


def test_an_empty_sub_is_refused() -> None:
    assert refused(PAIR.token(sub="")).reason == "missing_claim"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 20_000, "Bearer abc"])
def test_garbage_is_refused_as_malformed(token: str) -> None:
    assert refused(token).reason == "malformed"


def test_azp_must_be_an_authorized_party_when_they_are_set() -> None:
    verifier = SessionTokenVerifier(
        PemKey(PAIR.public_pem), authorized_parties=[ORIGIN, "http://localhost:3000"]
    )
    assert verify(PAIR.token(azp=ORIGIN), verifier)["azp"] == ORIGIN
    assert verify(PAIR.token(azp="http://localhost:3000"), verifier)
    assert refused(PAIR.token(azp="https://evil.example.com"), verifier).reason == (
        "azp_not_allowed"
    )
    assert refused(PAIR.token(azp=["https://app.example.com"]), verifier).reason == (
        "azp_not_allowed"
    )
    # As in Clerk's SDKs: a token without azp (a server-to-server call) passes.
    assert verify(PAIR.token(azp=None), verifier)["sub"] == "user_session1"
    # Without authorized parties, any azp passes.
    assert verify(PAIR.token(azp="https://evil.example.com"))


def test_unknown_kid_refetches_the_jwks_once_so_a_rotation_works() -> None:
    source = Jwks(PAIR)
    verifier = SessionTokenVerifier(JwksKeys(source, min_refetch=0.2))
    assert verify(PAIR.token(), verifier)
    assert source.fetches == 1
    assert verify(PAIR.token(), verifier) and source.fetches == 1  # cached

    source.body = jwks(PAIR, OTHER)  # Clerk rotates: a new key appears in the set
    time.sleep(0.25)
    assert verify(OTHER.token(), verifier)["sub"] == "user_session1"
    assert source.fetches == 2


def test_a_flood_of_made_up_kids_costs_one_jwks_fetch() -> None:
    source = Jwks(PAIR)
    keys = JwksKeys(source, min_refetch=60)
    verifier = SessionTokenVerifier(keys)

    async def flood() -> list[BaseException | dict[str, Any]]:
        tokens = [KeyPair(f"ins_madeup{i}", PAIR.private).token() for i in range(200)]
        return await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)

    results = support.run(flood())
    assert all(isinstance(r, InvalidSessionToken) for r in results)
    assert {r.reason for r in results if isinstance(r, InvalidSessionToken)} == {"unknown_key"}
    assert source.fetches == 1


def test_jwks_unreachable_at_first_is_unavailable_then_recovers() -> None:
    source = Jwks(PAIR)
    source.fail = True
    verifier = SessionTokenVerifier(JwksKeys(source, min_refetch=0.1))
    with pytest.raises(KeysUnavailable):
        verify(PAIR.token(), verifier)
    with pytest.raises(KeysUnavailable):  # within min_refetch: not fetched again
        verify(PAIR.token(), verifier)
    assert source.fetches == 1
    source.fail = False
    time.sleep(0.15)
    assert verify(PAIR.token(), verifier)
    assert source.fetches == 2


def test_keys_are_reread_after_max_age_and_kept_when_the_reread_fails() -> None:
    now = [0.0]
    source = Jwks(PAIR)
    verifier = SessionTokenVerifier(JwksKeys(source, max_age=300, clock=lambda: now[0]))
    assert verify(PAIR.token(), verifier)
    now[0] = 301
    source.fail = True
    assert verify(PAIR.token(), verifier)  # Clerk down: the keys in hand still serve
    assert source.fetches == 2
    now[0] = 400
    source.fail = False
    source.body = jwks(OTHER)  # PAIR was removed from the set
    assert refused(PAIR.token(), verifier).reason == "unknown_key"


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    verifier = SessionTokenVerifier(PemKey(PAIR.public_pem))
    token = PAIR.token(exp=int(time.time()) - 4)  # expired, but within the leeway
    assert verify(token, verifier)["sub"] == "user_session1"
    verifier.keys = PemKey(OTHER.public_pem)  # its signature would not match any more
    assert verify(token, verifier)["sub"] == "user_session1"  # remembered: not checked again
    assert refused(PAIR.token(), verifier).reason == "bad_signature"  # a new token is
    time.sleep(1.5)
    verifier.keys = PemKey(PAIR.public_pem)
    assert refused(token, verifier).reason == "expired"  # past its leeway: checked, refused


def test_rotation_through_the_backend_api_stand_in() -> None:
    standin = clerk_standin.StandIn(jwks=jwks(PAIR))

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with ClerkClient(standin.secret_key, standin.url, max_attempts=1) as clerk:
            verifier = SessionTokenVerifier(JwksKeys(clerk.get_jwks, min_refetch=0))
            first = await verifier.verify(PAIR.token("user_first"))
            standin.jwks = jwks(OTHER)
            return first, await verifier.verify(OTHER.token("user_second"))

    with clerk_standin.running(standin):
        first, second = support.run(go())
    assert (first["sub"], second["sub"]) == ("user_first", "user_second")
    assert standin.jwks_fetches() == 2


def test_pem_and_origin_helpers_say_what_is_wrong() -> None:
    assert load_pem_key(PAIR.public_pem)
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_pem_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    assert origin("https://App.example.com/") == "https://app.example.com"
    assert origin("http://localhost:3000") == "http://localhost:3000"
    for bad in ("app.example.com", "https://app.example.com/dashboard", "ftp://x", "https://"):
        with pytest.raises(ValueError, match="not an origin"):
            origin(bad)


@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "jku"]),
        st.one_of(st.text(max_size=8), st.integers(), st.none(), st.just("RS256")),
    ),
    payload=st.binary(max_size=64),
    signature=st.binary(max_size=300),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_arrives_is_refused_with_a_reason_never_an_exception(
    header: dict[str, Any], payload: bytes, signature: bytes
) -> None:
    token = ".".join((b64url(json.dumps(header).encode()), b64url(payload), b64url(signature)))
    verifier = SessionTokenVerifier(PemKey(PAIR.public_pem), authorized_parties=[ORIGIN])
    with pytest.raises(InvalidSessionToken):
        support.run(verifier.verify(token))


@pytest.mark.parametrize(
    "claims",
    [{"sub": 123}, {"sid": 123}, {"sid": ""}, {"exp": "soon"}, {"nbf": "later"}, {"iat": "x"}],
)
def test_genuine_tokens_with_claims_of_the_wrong_type_are_refused(claims: dict[str, Any]) -> None:
    assert refused(PAIR.token(**claims)).reason in ("malformed", "missing_claim")
