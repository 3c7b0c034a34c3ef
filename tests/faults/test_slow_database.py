"""Scenario 4: the database made slow. Another connection holds an ACCESS EXCLUSIVE lock on
public.users for 20 s while deliveries flow. Svix waits 15 s for an answer: every answer comes
sooner (503 with Retry-After when the write cannot be made), nothing hangs, and everything
applies once the lock is gone."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from pathlib import Path

import asyncpg
import pytest

from tests import support
from tests.faults import svix_sender as svix

pytestmark = pytest.mark.slow

DELIVERIES = 1_000
LOCK_AFTER = 150  # deliveries answered before the lock is taken
LOCK_SECONDS = 20.0


def test_users_table_locked_for_20s(tmp_path: Path) -> None:
    seed = svix.run_seed()
    where = f"[scenario 4: lock held; seed {seed}, CLERK_SYNC_TEST_SEED={seed} repeats it]"
    stream = svix.make_stream(seed, DELIVERIES, "slo" + secrets.token_hex(3))
    secret, key = support.make_secret()
    with svix.fleet(tmp_path) as f:
        server = f.start_server(svix.server_env(secret))
        sender = svix.SvixSender(key, server.webhook_url, rng=random.Random(seed))
        held: list[float] = []  # wall clock: locked, released

        async def hold_lock(sender: svix.SvixSender) -> None:
            await sender.wait_answered(LOCK_AFTER)
            conn = await asyncpg.connect(f.pg.dsn, timeout=10)
            try:
                transaction = conn.transaction()
                await transaction.start()
                await conn.execute("lock table public.users in access exclusive mode")
                held.append(time.time())
                await asyncio.sleep(LOCK_SECONDS)
                await transaction.rollback()
                held.append(time.time())
            finally:
                await conn.close()

        elapsed = svix.run_stream(sender, stream, hold_lock)
        during = [
            a
            for d in stream.deliveries
            for a in d.attempts
            if len(held) == 2 and held[0] <= a.started <= held[1]
        ]
        refused = sum(a.status == 503 for a in during)
        slowest = max((a.elapsed for a in during), default=0.0)
        print(
            f"{where} lock held {held[1] - held[0] if len(held) == 2 else None:.1f}s; "
            f"{len(during)} attempts while it was, {refused} answered 503, slowest "
            f"{slowest:.2f}s; {svix.summary(stream, sender, elapsed)}"
        )

        assert len(held) == 2, f"{where} the lock was not held"
        svix.check(svix.answer_problems(stream, sender), where, "answers")
        assert refused > 0, f"{where} no delivery met the lock: the test proved nothing"
        assert sender.answered == len(stream.deliveries), f"{where} not all answered 2xx"
        svix.check(svix.database_problems(f.pg.dsn, stream), where, "final state")
