"""Scenario 5: a burst of forged deliveries from one client (127.0.0.2) alongside the genuine
stream from another (127.0.0.1). The per-client limit on failed verifications (20 a minute)
answers the forger 401 (or 400) and then 429, whatever X-Forwarded-For it claims; genuine
traffic is never throttled and every genuine delivery applies; nothing forged writes anything,
not even the forgeries that reuse a genuine svix-id (they must not spoil its dedupe)."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.faults import svix_sender as svix

pytestmark = pytest.mark.slow

DELIVERIES = 1_000
FORGED = 200
LIMIT = 20  # failed verifications a minute per client
FORGER_ADDRESS = "127.0.0.2"
FORGE_AFTER = 100  # genuine deliveries answered before the burst


@dataclass
class Forgery:
    kind: str
    svix_id: str
    user_id: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    retry_after: str | None = None
    error: str | None = None
    elapsed: float = 0.0
    sent_at: float = 0.0  # wall clock


def forgeries(rng: random.Random, key: bytes, stream: svix.Stream) -> list[Forgery]:
    """Forged deliveries of several kinds. The genuine deliveries they imitate are taken from the
    end of the stream, so the forgery arrives before the genuine one."""
    other_key = secrets.token_bytes(32)
    targets = stream.deliveries[-FORGED:]
    made = []
    for i in range(FORGED):
        now = int(time.time())
        genuine = targets[i]
        kind = ("random_signature", "other_secret", "tampered_body", "replayed_old", "malformed")[
            i % 5
        ]
        svix_id, user_id = svix.new_svix_id(), f"user_forged{i:04d}"
        data = svix.user_data(rng, 10**6 + i, user_id, 0, svix.BASE_MS + 10**11)
        body = json.dumps(svix.user_event("user.created", data)).encode()
        if kind == "random_signature":
            signature = "v1," + base64.b64encode(secrets.token_bytes(32)).decode()
            headers = svix.svix_headers(key, svix_id, now, body) | {"svix-signature": signature}
        elif kind == "other_secret":
            headers = svix.svix_headers(other_key, svix_id, now, body)
        elif kind == "tampered_body":
            # A captured genuine request with its body changed: its svix-id, its signature.
            svix_id, user_id = genuine.svix_id, genuine.user_id
            headers = svix.svix_headers(key, svix_id, now, genuine.body)
            event = json.loads(genuine.body)
            event["data"]["first_name"] = "Mallory"
            event["data"]["updated_at"] = svix.BASE_MS + 10**12
            body = json.dumps(event).encode()
        elif kind == "replayed_old":
            # A captured genuine request replayed unchanged, six minutes late.
            svix_id, user_id, body = genuine.svix_id, genuine.user_id, genuine.body
            headers = svix.svix_headers(key, svix_id, now - 360, body)
        else:
            headers = svix.svix_headers(key, svix_id, now, body)
            del headers["svix-signature"]
        headers["x-forwarded-for"] = f"203.0.113.{rng.randrange(1, 255)}"
        made.append(Forgery(kind, svix_id, user_id, headers, body))
    rng.shuffle(made)
    return made


def test_forged_burst_alongside_genuine_traffic(tmp_path: Path) -> None:
    seed = svix.run_seed()
    where = f"[scenario 5: forged burst; seed {seed}, CLERK_SYNC_TEST_SEED={seed} repeats it]"
    rng = random.Random(seed)
    stream = svix.make_stream(seed, DELIVERIES, "frg" + secrets.token_hex(3))
    secret, key = support.make_secret()
    forged = forgeries(rng, key, stream)
    with svix.fleet(tmp_path) as f:
        server = f.start_server(
            svix.server_env(secret, CLERK_SYNC_FAILED_VERIFICATION_LIMIT=str(LIMIT))
        )
        sender = svix.SvixSender(
            key, server.webhook_url, local_address="127.0.0.1", rng=random.Random(seed)
        )
        burst: list[float] = []

        async def forger(sender: svix.SvixSender) -> None:
            await sender.wait_answered(FORGE_AFTER)
            burst.append(time.monotonic())
            slots = asyncio.Semaphore(8)
            transport = httpx.AsyncHTTPTransport(local_address=FORGER_ADDRESS)
            async with httpx.AsyncClient(transport=transport, timeout=15) as client:

                async def send(forgery: Forgery) -> None:
                    async with slots:
                        started = time.monotonic()
                        forgery.sent_at = time.time()
                        try:
                            response = await client.post(
                                server.webhook_url, content=forgery.body, headers=forgery.headers
                            )
                        except httpx.HTTPError as exc:
                            forgery.error = repr(exc)
                        else:
                            forgery.status = response.status_code
                            forgery.retry_after = response.headers.get("retry-after")
                            if not response.json().get("error"):
                                forgery.error = f"no JSON error: {response.text[:100]}"
                        forgery.elapsed = time.monotonic() - started

                await asyncio.gather(*(send(x) for x in forged))
            burst.append(time.monotonic())

        elapsed = svix.run_stream(sender, stream, forger)
        first_sent: dict[str, float] = {}
        for d in stream.deliveries:
            first_sent[d.svix_id] = min(first_sent.get(d.svix_id, 1e12), d.first_sent or 0.0)
        ahead = sum(x.svix_id in first_sent and x.sent_at < first_sent[x.svix_id] for x in forged)
        statuses: dict[str, int] = {}
        for x in forged:
            statuses[str(x.status)] = statuses.get(str(x.status), 0) + 1
        print(
            f"{where} {FORGED} forged in {burst[1] - burst[0]:.1f}s ({ahead} with a genuine "
            f"svix-id before the genuine one), answered {statuses}; "
            f"genuine: {svix.summary(stream, sender, elapsed)}"
        )

        wrong = [x for x in forged if x.status not in (400, 401, 429) or x.error]
        assert not wrong, f"{where} forged deliveries answered otherwise: {wrong[:5]}"
        assert all(x.retry_after for x in forged if x.status == 429), (
            f"{where} 429 without Retry-After"
        )
        refused = [x for x in forged if x.status != 429]
        assert burst[1] - burst[0] < 55, f"{where} the burst outlasted the limit's minute"
        assert len(refused) == LIMIT, (
            f"{where} {len(refused)} forged deliveries answered before 429, expected {LIMIT} "
            f"(the limit must count the socket's address, not X-Forwarded-For)"
        )
        # Genuine traffic: never a 4xx (no 429 above all), every delivery applied.
        svix.check(svix.answer_problems(stream, sender), where, "genuine answers")
        svix.check(svix.database_problems(f.pg.dsn, stream), where, "final state")
        assert not support.fetch(
            f.pg.dsn, "select id from public.users where id like 'user_forged%'"
        ), f"{where} a forged user was written"
        forged_ids = [x.svix_id for x in forged if x.svix_id not in stream.svix_ids]
        assert not support.fetch(
            f.pg.dsn, "select svix_id from clerk_sync.inbox where svix_id = any($1)", forged_ids
        ), f"{where} a forged svix-id is in the inbox"
