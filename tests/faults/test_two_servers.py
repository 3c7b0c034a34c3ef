"""Scenario 3: two `clerk-sync serve` processes on one database share the stream; each attempt
goes to either one at random, as behind a load balancer. The final rows equal the model."""

from __future__ import annotations

import random
import secrets
from pathlib import Path

import pytest

from tests import support
from tests.faults import svix_sender as svix

pytestmark = pytest.mark.slow

DELIVERIES = 1_500


def test_two_servers_share_the_stream(tmp_path: Path) -> None:
    seed = svix.run_seed()
    where = f"[scenario 3: two servers; seed {seed}, CLERK_SYNC_TEST_SEED={seed} repeats it]"
    stream = svix.make_stream(seed, DELIVERIES, "two" + secrets.token_hex(3))
    secret, key = support.make_secret()
    with svix.fleet(tmp_path) as f:
        env = svix.server_env(secret)
        servers = [f.start_server(env), f.start_server(env)]
        pick = random.Random(seed)
        sender = svix.SvixSender(
            key, lambda d, attempt: pick.choice(servers).webhook_url, rng=random.Random(seed)
        )
        elapsed = svix.run_stream(sender, stream)
        print(f"{where} {svix.summary(stream, sender, elapsed)}")

        svix.check(svix.answer_problems(stream, sender), where, "answers")
        svix.check(svix.database_problems(f.pg.dsn, stream), where, "final state")
        used = {a.url for d in stream.deliveries for a in d.attempts}
        assert used == {s.webhook_url for s in servers}, f"{where} one server got nothing"
        for server in servers:
            assert server.proc.poll() is None, f"{where} a server died:\n{server.output()}"
