"""Scenario 2: the server is killed with SIGKILL mid-stream, twice, and started again on the same
port (Svix's endpoint URL does not change; it retries the refused and dropped connections).
The final rows equal the model; a delivery whose answer died with the process was applied
exactly once (its retry answers duplicate)."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from pathlib import Path

import pytest

from tests import support
from tests.faults import svix_sender as svix

pytestmark = pytest.mark.slow

DELIVERIES = 1_500
KILL_AFTER = (400, 1_000)  # deliveries answered before each kill


def test_server_killed_mid_stream_and_restarted(tmp_path: Path) -> None:
    seed = svix.run_seed()
    where = f"[scenario 2: SIGKILL; seed {seed}, CLERK_SYNC_TEST_SEED={seed} repeats it]"
    stream = svix.make_stream(seed, DELIVERIES, "kil" + secrets.token_hex(3))
    secret, key = support.make_secret()
    with svix.fleet(tmp_path) as f:
        env = svix.server_env(secret)
        first = f.start_server(env)
        sender = svix.SvixSender(key, first.webhook_url, rng=random.Random(seed))
        kills: list[tuple[int, float]] = []  # (answered at the kill, seconds until ready again)

        async def kill_and_restart(sender: svix.SvixSender) -> None:
            server = first
            for count in KILL_AFTER:
                await sender.wait_answered(count)
                started = time.monotonic()
                await asyncio.to_thread(server.kill)
                server = await asyncio.to_thread(f.start_server, env, server.port)
                kills.append((count, time.monotonic() - started))

        elapsed = svix.run_stream(sender, stream, kill_and_restart)
        lost = svix.lost_then_duplicate(stream)
        no_answer = sum(a.status is None for d in stream.deliveries for a in d.attempts)
        print(
            f"{where} kills (answered, seconds to ready) {kills}; attempts without an answer "
            f"{no_answer}; commits whose answer was lost, then duplicate: {lost}; "
            f"{svix.summary(stream, sender, elapsed)}"
        )

        assert len(kills) == 2, f"{where} killed {len(kills)} times"
        assert no_answer > 0, f"{where} no attempt met a kill: the test proved nothing"
        svix.check(
            svix.answer_problems(stream, sender, transport_errors_allowed=True),
            where,
            "answers",
        )
        svix.check(svix.database_problems(f.pg.dsn, stream), where, "final state")
