"""Scenario 1: PostgreSQL restarted twice (stopped in immediate mode, down for about a second,
started again) during a stream of 5,000 deliveries. Every delivery is eventually answered 2xx,
the only failure ever answered is 503 (with Retry-After), and the final rows equal the model."""

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

DELIVERIES = 5_000
RESTART_AFTER = (1_500, 3_500)  # deliveries answered before each restart
DOWN_FOR = 1.0


def test_postgres_restarted_twice_mid_stream(tmp_path: Path) -> None:
    seed = svix.run_seed()
    where = (
        f"[scenario 1: PostgreSQL restarts; seed {seed}, CLERK_SYNC_TEST_SEED={seed} repeats it]"
    )
    stream = svix.make_stream(seed, DELIVERIES, "pgr" + secrets.token_hex(3))
    secret, key = support.make_secret()
    with svix.fleet(tmp_path) as f:
        server = f.start_server(svix.server_env(secret))
        sender = svix.SvixSender(key, server.webhook_url, rng=random.Random(seed))
        restarts: list[tuple[int, float]] = []
        dying: list[tuple[float, float]] = []  # wall clock: while PostgreSQL was being killed

        async def restart_postgres(sender: svix.SvixSender) -> None:
            for count in RESTART_AFTER:
                await sender.wait_answered(count)
                started = time.monotonic()
                stopping = time.time()
                await asyncio.to_thread(f.pg.stop)
                dying.append((stopping, time.time()))
                await asyncio.sleep(DOWN_FOR)
                await asyncio.to_thread(f.pg.start)
                restarts.append((sender.answered, time.monotonic() - started))

        elapsed = svix.run_stream(sender, stream, restart_postgres)

        assert len(restarts) == 2, f"{where} restarted {len(restarts)} times"
        print(
            f"{where} restarts (answered, seconds) {restarts}; commits whose answer died with "
            f"the database: {svix.lost_then_duplicate(stream)}; "
            f"{svix.summary(stream, sender, elapsed)}"
        )
        svix.check(svix.answer_problems(stream, sender, in_doubt=dying), where, "answers")
        svix.check(svix.database_problems(f.pg.dsn, stream), where, "final state")
        unavailable = sum(a.status == 503 for d in stream.deliveries for a in d.attempts)
        assert unavailable > 0, f"{where} no delivery met the outage: the test proved nothing"
        assert server.proc.poll() is None, f"{where} the server died:\n{server.output()}"
