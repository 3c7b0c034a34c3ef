"""Svix (Standard Webhooks) signature verification over the raw request body.

The scheme, from Svix's "Verifying Webhooks Manually" and the Standard Webhooks spec:

    signed content = f"{msg_id}.{timestamp}.{raw body}"
    signature      = base64(HMAC-SHA256(key=base64decode(secret without "whsec_"), signed content))
    header         = space-separated "<version>,<signature>" entries; only "v1" is HMAC-SHA256

A delivery is genuine when any `v1` entry matches the signature under any configured secret
(several during a rotation), compared in constant time, and its timestamp is within five minutes
of our clock (inclusive). We write the scheme here rather than wrap `svix`/`standardwebhooks`:
those raise ValueError/binascii.Error on malformed headers (a 500 for whoever sends garbage),
accept one secret at a time, read only one family of header names each, and do not tell a
malformed request (400) from a forged one (401). tests/test_verify.py checks this against the
published vectors and against `standardwebhooks` itself.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from clerk_sync.errors import Refused

TOLERANCE_SECONDS = 5 * 60
MAX_ID_LENGTH = 255
MAX_SIGNATURE_HEADER_LENGTH = 4096


class VerificationError(Refused):
    """A delivery we must refuse. `status` is 400 (malformed) or 401 (not genuine)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # a short fixed label, for metrics
        self.message = message


@dataclass(frozen=True, slots=True)
class VerifiedDelivery:
    message_id: str
    timestamp: int


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The `svix-` header, else its `webhook-` twin; both present and different is malformed."""
    svix = headers.get(f"svix-{name}")
    standard = headers.get(f"webhook-{name}")
    if svix is not None and standard is not None and svix != standard:
        raise VerificationError(
            400, "conflicting_headers", f"svix-{name} and webhook-{name} disagree"
        )
    return svix if svix is not None else standard


class Verifier:
    def __init__(
        self,
        keys: list[bytes],
        *,
        tolerance: int = TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = list(keys)
        self._tolerance = tolerance
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedDelivery:
        """Check a delivery's headers and raw body; raise VerificationError when it fails."""
        message_id, timestamp_text, timestamp, candidates = self.check_headers(headers)
        signed = b"%s.%s.%s" % (message_id.encode(), timestamp_text.encode(), body)
        for key in self._keys:
            expected = hmac.digest(key, signed, "sha256")
            # Check every candidate: how long this takes must not tell which one came close.
            matched = False
            for candidate in candidates:
                if hmac.compare_digest(expected, candidate):
                    matched = True
            if matched:
                return VerifiedDelivery(message_id=message_id, timestamp=timestamp)
        raise VerificationError(401, "no_matching_signature", "no signature matches")

    def check_headers(self, headers: Mapping[str, str]) -> tuple[str, str, int, list[bytes]]:
        """The rules a delivery's headers alone must pass, before its body counts: present and
        well-formed, a timestamp within the tolerance, at least one readable `v1` signature.
        Raise VerificationError; else (message id, timestamp as sent, timestamp, the `v1`
        signatures decoded, b"" for one that is not base64). `verify` starts here; a receiver may call it before reading the
        body (for a client over the failed-verification limit)."""
        message_id = _header(headers, "id")
        timestamp_text = _header(headers, "timestamp")
        signature_header = _header(headers, "signature")
        missing = [
            name
            for name, value in (
                ("svix-id", message_id),
                ("svix-timestamp", timestamp_text),
                ("svix-signature", signature_header),
            )
            if not value
        ]
        if missing:
            raise VerificationError(
                400, "missing_headers", f"missing required header(s): {', '.join(missing)}"
            )
        assert message_id and timestamp_text and signature_header

        if (
            len(message_id) > MAX_ID_LENGTH
            or not message_id.isascii()
            or not message_id.isprintable()
        ):
            raise VerificationError(400, "malformed_id", "svix-id is not a valid message id")
        if not (timestamp_text.isascii() and timestamp_text.isdigit() and len(timestamp_text) < 16):
            raise VerificationError(
                400, "malformed_timestamp", "svix-timestamp must be whole seconds since the epoch"
            )
        if len(signature_header) > MAX_SIGNATURE_HEADER_LENGTH:
            raise VerificationError(400, "malformed_signature", "svix-signature is too long")
        entries = [entry.partition(",") for entry in signature_header.split()]
        if not any(sep and version and value for version, sep, value in entries):
            raise VerificationError(
                400,
                "malformed_signature",
                "svix-signature must be a space-separated list of 'v1,<base64>' entries",
            )

        timestamp = int(timestamp_text)
        # Whole seconds on both sides, as the header carries: a timestamp exactly 300 s off is
        # accepted however far into the current second the request arrives.
        if abs(int(self._clock()) - timestamp) > self._tolerance:
            raise VerificationError(
                401,
                "timestamp_out_of_tolerance",
                "svix-timestamp is more than 5 minutes away from the server's clock",
            )

        candidates = [_b64decode(value) for version, _, value in entries if version == "v1"]
        if not any(candidates):  # nothing an HMAC could match: no need to look at the body
            raise VerificationError(401, "no_matching_signature", "no signature matches")
        return message_id, timestamp_text, timestamp, candidates


def _b64decode(value: str) -> bytes:
    """The signature, or b"" (which matches nothing) when it is not base64."""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return b""


def verify_webhook(
    headers: Mapping[str, str], body: bytes | str, secret: str | Sequence[str]
) -> Any:
    """Verify a Clerk webhook delivery in your own handler; returns the event, parsed.

    `headers` are the request's (any case: `svix-id`, `svix-timestamp`, `svix-signature`, or
    their `webhook-*` twins), `body` the raw body exactly as received (before any JSON parsing),
    `secret` the endpoint's signing secret `whsec_…` (several, as a list or separated by spaces
    or commas, during a rotation). Raises VerificationError when the delivery is not genuine:
    its `status` is 400 (headers missing or malformed) or 401 (no signature matches, or the
    timestamp is more than 5 minutes off), its `message` says which; ValueError for a malformed
    secret; NotAClerkEvent for a genuine body that is not JSON.
    """
    from clerk_sync.events import NotAClerkEvent
    from clerk_sync.settings import decode_signing_secret, split_secrets

    secrets = split_secrets(secret) if isinstance(secret, str) else list(secret)
    verifier = Verifier([decode_signing_secret(s) for s in secrets])
    raw = body.encode() if isinstance(body, str) else body
    verifier.verify({name.lower(): value for name, value in headers.items()}, raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise NotAClerkEvent("the body is not JSON (or not UTF-8)") from None


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature Svix would send: for send-test, tests and benchmarks."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.digest(key, signed, "sha256")
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    key: bytes, body: bytes, message_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Svix would send with `body` (a fresh message id and the current time unless
    given): for send-test, tests and benchmarks."""
    message_id = message_id or "msg_" + secrets.token_hex(12)
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "svix-id": message_id,
        "svix-timestamp": str(ts),
        "svix-signature": sign(key, message_id, ts, body),
    }
