"""Shutting down: deliveries in flight finish, /readyz says not ready, and the process exits
cleanly on SIGTERM (as Docker, systemd and Kubernetes stop it)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import asyncpg
import httpx
import pytest
from starlette.testclient import TestClient

from clerk_sync.app import start_draining
from tests import support


def test_readyz_turns_503_while_draining(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    start_draining(client.app)  # type: ignore[arg-type]
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"error": "shutting down"}


@pytest.mark.slow
def test_sigterm_lets_the_delivery_in_flight_finish(db: str) -> None:
    secret, key = support.make_secret()
    body = support.dumps(support.user_event("user.created", "user_inflight", 1_700_000_000_000))
    locked = threading.Event()

    def hold_lock() -> None:
        async def go() -> None:
            conn = await asyncpg.connect(db)
            try:
                async with conn.transaction():
                    await conn.execute("lock table public.users in access exclusive mode")
                    locked.set()
                    await asyncio.sleep(2)
            finally:
                await conn.close()

        asyncio.run(go())

    server = support.ServerProcess({"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": db})
    try:
        server.wait_ready()
        holder = threading.Thread(target=hold_lock)
        holder.start()
        assert locked.wait(10)
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    server.webhook_url,
                    content=body,
                    headers=support.signed_headers(key, body),
                    timeout=20,
                )
            )
        )
        sender.start()
        time.sleep(0.5)  # the delivery is waiting for the lock
        server.proc.send_signal(signal.SIGTERM)
        sender.join(20)
        holder.join(10)
        assert server.proc.wait(20) == 0
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200]
    assert answers[0].json() == {"outcome": "applied"}
    assert support.fetch(db, "select id from public.users") == [{"id": "user_inflight"}]
