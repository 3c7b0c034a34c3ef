"""clerk_sync.testing: the signed deliveries it makes verify as Svix's would, and parse."""

from __future__ import annotations

from clerk_sync.events import parse_event
from clerk_sync.testing import deleted_event, dumps, make_secret, session_event, user_event
from clerk_sync.verify import VerificationError, Verifier, signed_headers


def test_signed_headers_verify_with_the_secret_they_were_made_for() -> None:
    secret, key = make_secret()
    for event in (
        user_event("user.created", "user_t1", 1_700_000_000_000, email="t@example.com"),
        deleted_event("user_t1"),
        session_event("user_t1", 1_700_000_000_500),
    ):
        body = dumps(event)
        headers = signed_headers(key, body, "msg_t1")
        assert Verifier([key]).verify(headers, body).message_id == "msg_t1"
        assert parse_event(body).type == event["type"]
    # ... and not with another secret.
    _, other_key = make_secret()
    body = dumps(deleted_event("user_t2"))
    try:
        Verifier([other_key]).verify(signed_headers(key, body), body)
    except VerificationError as exc:
        assert exc.status == 401
    else:
        raise AssertionError("a delivery signed with another secret verified")
    assert secret.startswith("whsec_")
