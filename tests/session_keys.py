"""RSA key pairs and Clerk-shaped session tokens of the tests' own, signed with PyJWT."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ORIGIN = "https://app.example.com"
ISSUER = "https://clerk.app.example.com"


@dataclass
class KeyPair:
    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as Clerk's JWKS lists it."""
        key: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**key, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(self, user_id: str = "user_session1", **claims: Any) -> str:
        """A session token as Clerk issues them (v2 claims), valid for a minute; `claims`
        override or, set to None, remove a claim."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "azp": ORIGIN,
            "exp": now + 60,
            "fva": [0, -1],
            "iat": now,
            "iss": ISSUER,
            "jti": secrets.token_hex(10),  # each token its own, as Clerk's
            "nbf": now - 5,
            "sid": "sess_" + user_id.removeprefix("user_"),
            "sts": "active",
            "sub": user_id,
            "v": 2,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, self.private, algorithm="RS256", headers={"kid": self.kid})


def jwks(*pairs: KeyPair) -> dict[str, Any]:
    return {"keys": [pair.jwk() for pair in pairs]}
