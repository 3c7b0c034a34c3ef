"""The logs of a whole run of `clerk-sync serve`, read as an operator's log pipeline would:
one JSON line per delivery, and never a secret, a key, an email address or a name."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import support


@pytest.mark.slow
def test_a_full_run_logs_each_delivery_once_and_nothing_private(db: str) -> None:
    secret, key = support.make_secret()
    emails = [f"private.person{n}@example.com" for n in range(5)]
    deliveries = [
        support.user_event("user.created", f"user_log{n}", 1_700_000_000_000 + n, email=email,
                           first_name="Zebediah", last_name="Quillfeather")
        for n, email in enumerate(emails)
    ]  # fmt: skip
    env = {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": db}
    sent: list[str] = []
    with support.running_server(env, ["--log-level", "info"]) as server:
        for event in deliveries:
            body = support.dumps(event)
            headers = support.signed_headers(key, body)
            sent.append(headers["svix-id"])
            assert httpx.post(server.webhook_url, content=body, headers=headers).status_code == 200
        # A forged delivery, and a genuine one whose body is not a Clerk event but holds an email.
        body = b'{"type": "user.created", "data": {"email": "leak@example.com"}}'
        forged = support.signed_headers(b"not the secret at all", body)
        assert httpx.post(server.webhook_url, content=body, headers=forged).status_code == 401
        genuine = support.signed_headers(key, body)
        assert httpx.post(server.webhook_url, content=body, headers=genuine).status_code == 400
        output = server.stop()

    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    delivered = [line for line in lines if line.get("message") == "delivery"]
    assert [line["svix_id"] for line in delivered if line["outcome"] == "applied"] == sent
    for line in delivered:
        assert {"type", "outcome", "status", "duration_ms"} <= set(line) or line["status"] >= 400
    assert {line["status"] for line in delivered} == {200, 401, 400}
    for private in [*emails, "leak@example.com", "Zebediah", "Quillfeather", secret[6:]]:
        assert private not in output, private
    assert "whsec_" not in output.replace(secret[:8] + "…", "")
