"""Two `clerk-sync serve` replicas on one database, fed the same deliveries at the same moment.

Svix may deliver a message to any replica, more than once, in any order, and retries whatever
is not answered 2xx. Here every delivery goes to both replicas at once with the same svix-id,
in a shuffled order, and is re-sent (fresh timestamp and signature) until it is answered 2xx.
The final rows are compared with a state computed here, from the events alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from clerk_sync import migrations
from tests import support

pytestmark = pytest.mark.slow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BASE_MS = 1_750_000_000_000
USERS = 60
UPDATES_PER_USER = 4  # user.updated events after user.created
SIGN_INS_PER_USER = 2  # session.created events
CONCURRENT_DELIVERIES = 12  # deliveries in flight at once (each to both replicas)
MAX_ATTEMPTS = 30


def new_svix_id() -> str:
    return "msg_" + secrets.token_hex(12)


def ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else EPOCH + timedelta(milliseconds=ms)


@dataclass
class Delivery:
    svix_id: str
    user_id: str
    event: dict[str, Any]
    body: bytes = b""

    def __post_init__(self) -> None:
        self.body = support.dumps(self.event)


@dataclass
class Answers:
    """Every answer the replicas gave, per svix-id and replica."""

    final: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    non_2xx: list[tuple[str, int, int, str]] = field(default_factory=list)
    transport_errors: list[tuple[str, int, str]] = field(default_factory=list)
    gave_up: list[tuple[str, int]] = field(default_factory=list)


async def deliver_once_to(
    client: httpx.AsyncClient, url: str, replica: int, key: bytes, d: Delivery, answers: Answers
) -> None:
    """One replica's side of a delivery, re-sent like Svix until it is answered 2xx."""
    for _attempt in range(MAX_ATTEMPTS):
        headers = support.signed_headers(key, d.body, d.svix_id)  # fresh timestamp and signature
        try:
            response = await client.post(url, content=d.body, headers=headers)
        except httpx.HTTPError as exc:
            answers.transport_errors.append((d.svix_id, replica, repr(exc)))
            await asyncio.sleep(0.2)
            continue
        if response.is_success:
            answers.final[(d.svix_id, replica)] = response.json()
            return
        answers.non_2xx.append((d.svix_id, replica, response.status_code, response.text))
        # Svix waits 5 s, then 5 min; a short pause keeps the test quick.
        await asyncio.sleep(0.2)
    answers.gave_up.append((d.svix_id, replica))


async def deliver_all(
    urls: list[str], key: bytes, deliveries: list[Delivery], answers: Answers
) -> None:
    """Each delivery to every replica at the same moment, a bounded number in flight."""
    limit = asyncio.Semaphore(CONCURRENT_DELIVERIES)
    limits = httpx.Limits(max_connections=4 * CONCURRENT_DELIVERIES)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:

        async def one(d: Delivery) -> None:
            async with limit:
                await asyncio.gather(
                    *(
                        deliver_once_to(client, url, replica, key, d, answers)
                        for replica, url in enumerate(urls)
                    )
                )

        await asyncio.gather(*(one(d) for d in deliveries))


@dataclass
class Expected:
    profile: dict[str, Any] | None = None  # the user event with the greatest updated_at
    updated_at: int = -1
    last_sign_in_at: int | None = None

    def see_profile(self, event: dict[str, Any]) -> None:
        data = event["data"]
        if data["updated_at"] > self.updated_at:
            self.updated_at = data["updated_at"]
            self.profile = data
        self.see_sign_in(data.get("last_sign_in_at"))

    def see_sign_in(self, ms: int | None) -> None:
        if ms is not None and (self.last_sign_in_at is None or ms > self.last_sign_in_at):
            self.last_sign_in_at = ms


def expected_row(user_id: str, e: Expected) -> dict[str, Any]:
    """The public.users row the contract derives from the newest profile event."""
    data = e.profile
    assert data is not None
    primary = next(
        (a for a in data["email_addresses"] if a["id"] == data["primary_email_address_id"]), None
    )
    return {
        "id": user_id,
        "email": primary["email_address"] if primary else None,
        "email_verified": bool(primary and primary["verification"]["status"] == "verified"),
        "phone": None,
        "username": data["username"],
        "first_name": data["first_name"],
        "last_name": data["last_name"],
        "image_url": data["image_url"],
        "external_id": data["external_id"],
        "public_metadata": data["public_metadata"] or {},
        "unsafe_metadata": data["unsafe_metadata"] or {},
        "banned": data["banned"],
        "created_at": ms_to_datetime(data["created_at"]),
        "updated_at": ms_to_datetime(data["updated_at"]),
        "last_sign_in_at": ms_to_datetime(e.last_sign_in_at),
    }


ROW_SQL = """
select id, email, email_verified, phone, username, first_name, last_name, image_url,
       external_id, public_metadata::text as public_metadata,
       unsafe_metadata::text as unsafe_metadata, banned, created_at, updated_at,
       last_sign_in_at, deleted_at
from public.users order by id
"""


def user_events(rng: random.Random, n: int, user_id: str) -> list[dict[str, Any]]:
    """user.created, several user.updated with increasing updated_at, and session.created."""
    events = []
    created = BASE_MS + n * 1000
    for version in range(UPDATES_PER_USER + 1):
        kind = "user.created" if version == 0 else "user.updated"
        sign_in = created + rng.randrange(0, 500_000) if rng.random() < 0.5 else None
        has_email = version % 3 != 2  # now and then the primary address goes away
        events.append(
            support.user_event(
                kind,
                user_id,
                created + version * 10,
                email=f"{user_id}.v{version}@example.com" if has_email else None,
                first_name=f"First{n}v{version}",
                last_sign_in_at=sign_in,
                username=f"u{n}v{version}" if version % 2 else None,
                public_metadata={"n": n, "version": version},
                unsafe_metadata=None if version == 1 else {"v": version},
                banned=version == 3,
                created_at=created,
                external_id=f"ext_{n}" if version >= 2 else None,
            )
        )
    for _ in range(SIGN_INS_PER_USER):
        at = created + rng.randrange(0, 500_000)
        if rng.random() < 0.5:
            events.append(support.session_event(user_id, at, last_sign_in_at=at))
        else:
            events.append(support.session_event(user_id, at))
    return events


def test_two_replicas_same_deliveries_converge(pg_server: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("CLERK_SYNC_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    where = f"(seed {seed}; CLERK_SYNC_TEST_SEED={seed} repeats it)"
    secret, key = support.make_secret()

    # Who does what: most users just live; some are deleted once everything else about them is
    # in (their later events must then be stale); some are deleted before anything arrives
    # (the tombstone must keep them out).
    run_tag = secrets.token_hex(4)
    user_ids = [f"user_mp{run_tag}{n:03d}" for n in range(USERS)]
    deleted_after = set(user_ids[0:10])
    deleted_before = set(user_ids[10:18])

    expected: dict[str, Expected] = {u: Expected() for u in user_ids}
    stream: list[Delivery] = []
    for n, user_id in enumerate(user_ids):
        for event in user_events(rng, n, user_id):
            stream.append(Delivery(new_svix_id(), user_id, event))
            if user_id in deleted_before:
                continue
            if event["type"] == "session.created":
                data = event["data"]
                at = (data["user"] or {}).get("last_sign_in_at") or data["created_at"]
                expected[user_id].see_sign_in(at)
            else:
                expected[user_id].see_profile(event)
    rng.shuffle(stream)
    early_deletes = [Delivery(new_svix_id(), u, support.deleted_event(u)) for u in deleted_before]
    late_deletes = [Delivery(new_svix_id(), u, support.deleted_event(u)) for u in deleted_after]
    # After the delete: newer profiles and sign-ins that must change nothing.
    after_delete = []
    for user_id in sorted(deleted_after | deleted_before):
        later = BASE_MS + 10_000_000
        after_delete.append(
            Delivery(
                new_svix_id(),
                user_id,
                support.user_event(
                    "user.updated", user_id, later, first_name="Revenant", last_sign_in_at=later
                ),
            )
        )
        after_delete.append(
            Delivery(new_svix_id(), user_id, support.session_event(user_id, later + 1))
        )
    rng.shuffle(after_delete)
    phases = [early_deletes, stream, late_deletes, after_delete]
    all_deliveries = [d for phase in phases for d in phase]

    dsn = support.create_database(pg_server, migrate=False)  # the replicas' migrations race
    servers: list[support.ServerProcess] = []
    try:
        env = {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": dsn}
        for i in range(2):  # both at once: their migrations race
            servers.append(support.ServerProcess(env, log_path=tmp_path / f"serve{i}.log"))
        for server in servers:
            server.wait_ready()

        answers = Answers()
        started = time.monotonic()
        for phase in phases:
            asyncio.run(deliver_all([s.webhook_url for s in servers], key, phase, answers))
        elapsed = time.monotonic() - started

        # --- the answers ---------------------------------------------------------------------
        server_errors = [a for a in answers.non_2xx if a[2] >= 500 and a[2] != 503]
        assert not server_errors, f"5xx other than 503 {where}: {server_errors[:5]}"
        client_errors = [a for a in answers.non_2xx if a[2] < 500]
        assert not client_errors, f"4xx for genuine signed deliveries {where}: {client_errors[:5]}"
        for svix_id, replica, status, text in answers.non_2xx:
            assert status == 503, (svix_id, replica, status, text)
        assert not answers.transport_errors, f"no answer {where}: {answers.transport_errors[:5]}"
        assert not answers.gave_up, f"never answered 2xx {where}: {answers.gave_up[:5]}"

        handled_twice = []
        for d in all_deliveries:
            outcomes = [answers.final[(d.svix_id, r)]["outcome"] for r in range(len(servers))]
            assert all(o in {"applied", "duplicate", "stale"} for o in outcomes), (d, outcomes)
            # One replica handles the delivery; the other finds it already handled.
            if sorted(outcomes).count("duplicate") != len(servers) - 1:
                handled_twice.append((d.svix_id, d.event["type"], outcomes))
        assert not handled_twice, f"a svix-id handled other than once {where}: {handled_twice[:5]}"

        for d in early_deletes + late_deletes:
            outcomes = {answers.final[(d.svix_id, r)]["outcome"] for r in range(len(servers))}
            assert outcomes == {"applied", "duplicate"}, (d.user_id, outcomes)
        for d in after_delete + [d for d in stream if d.user_id in deleted_before]:
            outcomes = {answers.final[(d.svix_id, r)]["outcome"] for r in range(len(servers))}
            assert outcomes == {"stale", "duplicate"}, (d.user_id, d.event["type"], outcomes)

        # --- the database ----------------------------------------------------------------------
        rows = {r["id"]: r for r in support.fetch(dsn, ROW_SQL)}
        assert set(rows) == set(user_ids) - deleted_before, (
            f"users in the table {where}: missing {set(user_ids) - deleted_before - set(rows)}, "
            f"unexpected {set(rows) - (set(user_ids) - deleted_before)}"
        )
        mismatches = []
        for user_id, row in rows.items():
            want = expected_row(user_id, expected[user_id])
            got = dict(row)
            deleted_at = got.pop("deleted_at")
            got["public_metadata"] = json.loads(got["public_metadata"])
            got["unsafe_metadata"] = json.loads(got["unsafe_metadata"])
            if got != want:
                diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
                mismatches.append((user_id, diff))
            if (deleted_at is not None) != (user_id in deleted_after):
                mismatches.append((user_id, {"deleted_at": deleted_at}))
        assert not mismatches, f"rows differ from the expected state {where}: {mismatches[:5]}"

        inbox = support.fetch(dsn, "select svix_id from clerk_sync.inbox")
        inbox_ids = [r["svix_id"] for r in inbox]
        assert len(inbox_ids) == len(set(inbox_ids)) == len(all_deliveries)
        assert set(inbox_ids) == {d.svix_id for d in all_deliveries}

        version = support.fetch(dsn, "select max(version) as v from clerk_sync.schema_migrations")
        assert version[0]["v"] == migrations.latest_version()
        print(
            f"{len(all_deliveries)} deliveries x {len(servers)} replicas in {elapsed:.1f}s, "
            f"{len(answers.non_2xx)} answered 503 first {where}"
        )
    finally:
        outputs = [server.stop() for server in servers]
        support.drop_database(pg_server, dsn)

    # Both replicas migrated at once: one applied the migrations, the other found them done.
    applied = [o for o in outputs if "applied migrations" in o]
    current = [o for o in outputs if "schema is current" in o]
    assert len(applied) == 1 and len(current) == 1, outputs
    for output in outputs:
        assert "Traceback" not in output, output
