"""What the fault tests share: a sender that behaves like Svix, a realistic stream of Clerk
events with the final state it must leave (computed here from the contract alone, not from the
SQL), a comparator for the database, and servers that are cleaned up whatever happens.

The sender, like Svix (docs.svix.com/retries):
- keeps a bounded number of deliveries in flight;
- treats anything but a 2xx within 15 s (a 3xx, 4xx, 5xx, a refused or dropped connection, a
  timeout) as a failure and re-sends on a schedule (Svix waits 5 s, 5 min, 30 min, ...; here
  0.05 s, 0.2 s, 0.5 s, 1 s, then every 2 s, for a bounded total);
- signs every attempt afresh: a new svix-timestamp and signature, the same svix-id and body.
Every attempt's answer is recorded, so a test can check each one, not only the last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests import support

# --- signing, as Svix does it (written here, not taken from clerk_sync) ----------------------


def svix_signature(key: bytes, svix_id: str, timestamp: int, body: bytes) -> str:
    signed = svix_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def svix_headers(key: bytes, svix_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "Svix-Webhooks/1.62.0 (sender-fault-test)",
        "svix-id": svix_id,
        "svix-timestamp": str(timestamp),
        "svix-signature": svix_signature(key, svix_id, timestamp, body),
    }


def new_svix_id() -> str:
    return "msg_" + secrets.token_hex(13)


def run_seed() -> int:
    """CLERK_SYNC_TEST_SEED repeats a run's stream; otherwise a fresh one."""
    return int(os.environ.get("CLERK_SYNC_TEST_SEED", time.time_ns() % 1_000_000_007))


# --- deliveries and the sender ---------------------------------------------------------------

# Svix: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Shortened, and capped.
RETRY_SCHEDULE = (0.05, 0.2, 0.5, 1.0, 2.0)
ATTEMPT_TIMEOUT = 15.0  # Svix counts an answer slower than this as a failure
GIVE_UP_AFTER = 150.0  # a delivery not answered 2xx by then has failed (Svix: ~27 h)


@dataclass
class Attempt:
    number: int
    url: str
    timestamp: int  # the svix-timestamp it was signed with
    started: float  # wall clock
    elapsed: float
    status: int | None = None  # None: no answer (connection error, timeout)
    outcome: str | None = None  # the "outcome" of a 2xx answer
    retry_after: str | None = None
    error: str | None = None  # the transport error, or the body of a non-2xx answer

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(eq=False)
class Delivery:
    """One message Svix sends, with every attempt made for it."""

    svix_id: str
    user_id: str
    event: dict[str, Any]
    kind: str = "event"  # what the stream made it for: see Stream
    after: list[Delivery] = field(default_factory=list)  # sent only once these are answered 2xx
    body: bytes = b""
    attempts: list[Attempt] = field(default_factory=list)
    final: Attempt | None = None
    first_sent: float | None = None  # wall clock
    answered_at: float | None = None  # wall clock

    def __post_init__(self) -> None:
        if not self.body:
            self.body = json.dumps(self.event, ensure_ascii=False).encode()

    @property
    def event_type(self) -> str:
        return str(self.event.get("type"))

    def copy(self, kind: str, after: list[Delivery] | None = None) -> Delivery:
        """The same message again (same svix-id, same body): an at-least-once re-send."""
        return Delivery(self.svix_id, self.user_id, self.event, kind, after or [], self.body)

    def describe(self) -> str:
        tries = ", ".join(
            f"#{a.number}:{a.status or a.error}"
            + (f"/{a.outcome}" if a.outcome else "")
            + f"@{a.started:.2f}+{a.elapsed:.2f}s"
            for a in self.attempts[-6:]
        )
        return f"{self.svix_id} {self.event_type} {self.user_id} ({self.kind}) [{tries}]"


Target = str | Callable[[Delivery, int], str]


class SvixSender:
    """Sends deliveries as Svix does, `concurrency` at a time, until each is answered 2xx (or
    GIVE_UP_AFTER has passed). A delivery's `after` list is respected: it is first sent once
    those are answered 2xx (what makes the expected final state independent of timing)."""

    def __init__(
        self,
        key: bytes,
        target: Target,
        *,
        concurrency: int = 32,
        schedule: tuple[float, ...] = RETRY_SCHEDULE,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        give_up_after: float = GIVE_UP_AFTER,
        local_address: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.key = key
        self.target = target
        self.concurrency = concurrency
        self.schedule = schedule
        self.attempt_timeout = attempt_timeout
        self.give_up_after = give_up_after
        self.local_address = local_address
        self.rng = rng or random.Random(0)
        self.answered = 0  # deliveries answered 2xx so far
        self.gave_up: list[Delivery] = []

    def url_for(self, delivery: Delivery, attempt: int) -> str:
        return self.target if isinstance(self.target, str) else self.target(delivery, attempt)

    async def wait_answered(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.answered < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.answered} of {count} deliveries answered")
            await asyncio.sleep(0.02)

    async def run(self, deliveries: list[Delivery]) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        done = {id(d): asyncio.Event() for d in deliveries}
        transport = httpx.AsyncHTTPTransport(
            local_address=self.local_address,
            limits=httpx.Limits(
                max_connections=2 * self.concurrency,
                max_keepalive_connections=2 * self.concurrency,
            ),
        )
        async with httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(self.attempt_timeout)
        ) as client:

            async def one(d: Delivery) -> None:
                for before in d.after:
                    await done[id(before)].wait()
                async with slots:  # a delivery keeps its slot through its retries
                    await self._deliver(client, d)
                done[id(d)].set()

            async with asyncio.TaskGroup() as group:
                for d in deliveries:
                    group.create_task(one(d))

    async def _deliver(self, client: httpx.AsyncClient, d: Delivery) -> None:
        started = time.monotonic()
        d.first_sent = time.time()
        last_timestamp = 0
        number = 0
        while True:
            number += 1
            # A new timestamp (strictly later than the last) and signature for every attempt.
            timestamp = max(int(time.time()), last_timestamp + 1)
            last_timestamp = timestamp
            url = self.url_for(d, number)
            attempt = Attempt(number, url, timestamp, time.time(), 0.0)
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(self.attempt_timeout):
                    response = await client.post(
                        url,
                        content=d.body,
                        headers=svix_headers(self.key, d.svix_id, timestamp, d.body),
                    )
                attempt.status = response.status_code
                attempt.retry_after = response.headers.get("retry-after")
                if response.is_success:
                    try:
                        attempt.outcome = str(response.json().get("outcome"))
                    except ValueError:
                        attempt.outcome = "<not json>"
                else:
                    attempt.error = response.text[:300]
            except TimeoutError:
                attempt.error = f"no answer within {self.attempt_timeout:.0f}s"
            except httpx.HTTPError as exc:
                attempt.error = f"{type(exc).__name__}: {exc}"
            attempt.elapsed = time.monotonic() - t0
            d.attempts.append(attempt)
            if attempt.ok:
                d.final = attempt
                d.answered_at = time.time()
                self.answered += 1
                return
            if time.monotonic() - started > self.give_up_after:
                self.gave_up.append(d)
                return
            pause = self.schedule[min(number - 1, len(self.schedule) - 1)]
            await asyncio.sleep(pause * self.rng.uniform(0.8, 1.2))


# --- a realistic stream and its expected final state ------------------------------------------

BASE_MS = 1_760_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRIVATE_MARKER = "private-never-in-public-users"
NAMES = ["Ada", "Grace", "Zoë", "José", "Łukasz", "李雷", "Ångström", "O'Brien", "Nnamdi", None]


def ms(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(milliseconds=value)


def user_data(
    rng: random.Random, n: int, user_id: str, version: int, updated_at: int
) -> dict[str, Any]:
    """A Clerk UserJSON (as in `examples/user.created.json`) at one version of its profile."""
    short = user_id.removeprefix("user_")
    emails = [
        {
            "object": "email_address",
            "id": f"idn_{short}_{i}",
            "email_address": f"{short}.v{version}.{i}@example.com",
            "verification": rng.choice(
                [
                    {
                        "status": "verified",
                        "strategy": "email_code",
                        "attempts": 1,
                        "expire_at": None,
                    },
                    {
                        "status": "unverified",
                        "strategy": "email_link",
                        "attempts": None,
                        "expire_at": None,
                    },
                    None,
                ]
            ),
            "linked_to": [],
        }
        for i in range(rng.choice([0, 1, 1, 2]))
    ]
    phones = [
        {
            "object": "phone_number",
            "id": f"idn_ph_{short}_{i}",
            "phone_number": f"+1555{n:06d}{version}{i}",
            "verification": {"status": "verified", "strategy": "phone_code"},
            "linked_to": [],
        }
        for i in range(rng.choice([0, 0, 1]))
    ]
    primary_email = rng.choice([e["id"] for e in emails] + [None]) if emails else None
    if emails and rng.random() < 0.7:
        primary_email = emails[0]["id"]
    return {
        "object": "user",
        "id": user_id,
        "username": rng.choice([None, f"user{n}v{version}", f"ü{n}"]),
        "first_name": rng.choice(NAMES),
        "last_name": rng.choice([None, "Lovelace", f"Hopper-{version}"]),
        "image_url": f"https://img.clerk.com/{short}/{version}",
        "has_image": True,
        "primary_email_address_id": primary_email,
        "primary_phone_number_id": phones[0]["id"] if phones and rng.random() < 0.8 else None,
        "primary_web3_wallet_id": None,
        "password_enabled": True,
        "two_factor_enabled": False,
        "email_addresses": emails,
        "phone_numbers": phones,
        "web3_wallets": [],
        "external_accounts": [],
        "public_metadata": rng.choice(
            [
                {},
                {"plan": rng.choice(["free", "pro"]), "v": version, "tags": ["a", {"b": [1, 2.5]}]},
            ]
        ),
        "private_metadata": rng.choice([None, {"stripe": f"cus_{PRIVATE_MARKER}"}]),
        "unsafe_metadata": rng.choice([None, {}, {"theme": "dark", "v": version}]),
        "external_id": rng.choice([None, f"ext_{n}"]),
        "last_sign_in_at": rng.choice([None, updated_at - rng.randrange(0, 90_000_000)]),
        "banned": rng.random() < 0.1,
        "locked": False,
        "created_at": BASE_MS + n * 1_000,
        "updated_at": updated_at,
        "last_active_at": None,
    }


def user_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "event",
        "type": event_type,
        "timestamp": data["updated_at"],
        "instance_id": "ins_faulttest",
        "data": data,
    }


def session_event(rng: random.Random, user_id: str, at: int) -> dict[str, Any]:
    user = None
    if rng.random() < 0.5:  # newer payloads embed the user; its last_sign_in_at then counts
        user = {"object": "user", "id": user_id, "last_sign_in_at": at + rng.randrange(0, 2_000)}
    return {
        "object": "event",
        "type": "session.created",
        "timestamp": at,
        "data": {
            "object": "session",
            "id": "sess_" + secrets.token_hex(10),
            "user_id": user_id,
            "client_id": "client_x",
            "status": "active",
            "created_at": at,
            "updated_at": at,
            "last_active_at": at,
            "expire_at": at + 604_800_000,
            "abandon_at": at + 2_592_000_000,
            "user": user,
        },
    }


def deleted_event(user_id: str) -> dict[str, Any]:
    return {
        "object": "event",
        "type": "user.deleted",
        "timestamp": BASE_MS,
        "data": {"object": "user", "id": user_id, "deleted": True, "external_id": None},
    }


def ignored_event(rng: random.Random) -> dict[str, Any]:
    org = "org_" + secrets.token_hex(8)
    return rng.choice(
        [
            {
                "object": "event",
                "type": "organizationDomain.created",
                "timestamp": BASE_MS,
                "data": {"object": "organization_domain", "id": org, "name": "acme.io"},
            },
            {
                "object": "event",
                "type": "email.created",
                "timestamp": BASE_MS,
                "data": {
                    "object": "email",
                    "id": "ema_" + secrets.token_hex(6),
                    "status": "queued",
                },
            },
        ]
    )


@dataclass
class Stream:
    """Deliveries for many users, shuffled, with kinds:
    event      user.created / user.updated / session.created, as Clerk emits them
    stale      a user.updated older than one already in the stream (new svix-id)
    tie        a user.updated with the same updated_at as an earlier one, other content, sent
               once that one is answered: stale by the contract ("older or equal")
    resend     an identical copy (same svix-id and body) of another delivery, sent concurrently
    replay     an identical copy sent once the original is answered: must answer duplicate
    delete     user.deleted, sent once every earlier event of the user is answered
    undead     an event for a deleted user, sent once the delete is answered: stale
    predelete  user.deleted before anything else of the user (their events wait for it)
    ignored    an event type clerk-sync does not sync
    """

    seed: int
    deliveries: list[Delivery]
    user_ids: list[str]

    @property
    def svix_ids(self) -> set[str]:
        return {d.svix_id for d in self.deliveries}


def user_deliveries(rng: random.Random, n: int, user_id: str) -> list[Delivery]:
    """Everything one user's life sends, with the dependencies that fix its final state."""
    created = BASE_MS + n * 1_000
    mine: list[Delivery] = []

    def add(event: dict[str, Any], kind: str, after: list[Delivery] | None = None) -> Delivery:
        d = Delivery(new_svix_id(), user_id, event, kind, after or [])
        mine.append(d)
        return d

    fate = rng.random()
    predelete = add(deleted_event(user_id), "predelete") if fate < 0.05 else None
    first = [predelete] if predelete else []
    versions: list[tuple[int, Delivery]] = []
    updated_at = created
    for version in range(rng.randint(2, 6)):
        updated_at += rng.randrange(2_000, 5_000_000)
        kind = "user.created" if version == 0 else "user.updated"
        data = user_data(rng, n, user_id, version, updated_at)
        versions.append((updated_at, add(user_event(kind, data), "event", first)))
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        add(session_event(rng, user_id, created + rng.randrange(0, 200_000_000)), "event", first)
    if rng.random() < 0.25:  # an older version (strictly between two others), arriving whenever
        older = rng.choice(versions[1:])[0] - rng.randrange(1, 1_000)
        add(user_event("user.updated", user_data(rng, n, user_id, 90, older)), "stale", first)
    if rng.random() < 0.2:  # the same updated_at as an earlier event, other content
        at, original = rng.choice(versions)
        data = user_data(rng, n, user_id, 91, at)
        data["first_name"] = "Tie"
        add(user_event("user.updated", data), "tie", [*first, original])
    for original in list(mine):
        if rng.random() < 0.04:
            mine.append(original.copy("resend", original.after))
        if rng.random() < 0.03:
            mine.append(original.copy("replay", [original]))
    if predelete is None and fate < 0.15:
        delete = add(deleted_event(user_id), "delete", list(mine))
        late = BASE_MS + 10**11
        data = user_data(rng, n, user_id, 99, late)
        data["first_name"] = "Revenant"
        data["last_sign_in_at"] = late
        add(user_event("user.updated", data), "undead", [delete])
        add(session_event(rng, user_id, late + 1), "undead", [delete])
        if rng.random() < 0.5:
            add(deleted_event(user_id), "undead", [delete])
    if rng.random() < 0.05:
        add(ignored_event(rng), "ignored")
    return mine


def make_stream(seed: int, size: int, tag: str) -> Stream:
    """At least `size` deliveries (about size/7 users), in a shuffled order that only the
    `after` dependencies constrain. `tag` keeps user ids apart between runs."""
    rng = random.Random(seed)
    deliveries: list[Delivery] = []
    user_ids: list[str] = []
    while len(deliveries) < size:
        user_id = f"user_{tag}{len(user_ids):05d}"
        deliveries.extend(user_deliveries(rng, len(user_ids), user_id))
        user_ids.append(user_id)
    rng.shuffle(deliveries)
    return Stream(seed, deliveries, user_ids)


def run_stream(
    sender: SvixSender, stream: Stream, *alongside: Callable[[SvixSender], Awaitable[None]]
) -> float:
    """Sends the stream while the `alongside` coroutines (faults, forgers) run; the seconds it
    took. A failure in any of them cancels the rest."""

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(sender.run(stream.deliveries))
            for other in alongside:
                group.create_task(other(sender))

    started = time.monotonic()
    asyncio.run(main())
    return time.monotonic() - started


@dataclass
class ExpectedUser:
    profile: dict[str, Any] | None = None
    sign_in: int | None = None
    deleted: bool = False
    delete: Delivery | None = None

    def see_sign_in(self, value: Any) -> None:
        if isinstance(value, int) and (self.sign_in is None or value > self.sign_in):
            self.sign_in = value


def expected_state(stream: Stream) -> dict[str, ExpectedUser]:
    """The final state the contract requires, from the events alone. Deliveries are taken in an
    order that respects `after` (every other order gives the same result: newest updated_at wins,
    ties go to the one that arrived first, a delete is final, sign-ins take the greatest)."""
    users: dict[str, ExpectedUser] = {u: ExpectedUser() for u in stream.user_ids}
    seen: set[str] = set()
    placed: set[int] = set()
    ordered: list[Delivery] = []
    pending = list(stream.deliveries)
    while pending:  # a topological order over `after`
        ready = [d for d in pending if all(id(b) in placed for b in d.after)]
        assert ready, "the stream's dependencies form a cycle"
        for d in ready:
            placed.add(id(d))
        ordered.extend(ready)
        pending = [d for d in pending if id(d) not in placed]
    for d in ordered:
        if d.svix_id in seen or d.kind == "ignored":
            continue  # the same svix-id is applied at most once
        seen.add(d.svix_id)
        user = users[d.user_id]
        if user.deleted:
            continue  # after user.deleted, everything for that id is stale
        data = d.event["data"]
        if d.event_type == "user.deleted":
            user.deleted, user.delete = True, d
        elif d.event_type == "session.created":
            embedded = data.get("user") or {}
            at = embedded.get("last_sign_in_at")
            user.see_sign_in(at if at is not None else data["created_at"])
        else:
            user.see_sign_in(data.get("last_sign_in_at"))
            if user.profile is None or data["updated_at"] > user.profile["updated_at"]:
                user.profile = data
    return users


def _primary(entries: list[dict[str, Any]], primary_id: str | None) -> dict[str, Any] | None:
    return next((e for e in entries if primary_id is not None and e["id"] == primary_id), None)


def expected_row(user_id: str, user: ExpectedUser) -> dict[str, Any]:
    """public.users as the contract's table derives it from the winning profile."""
    data = user.profile
    assert data is not None
    email = _primary(data["email_addresses"], data["primary_email_address_id"])
    phone = _primary(data["phone_numbers"], data["primary_phone_number_id"])
    verification = (email or {}).get("verification") or {}
    return {
        "id": user_id,
        "email": email["email_address"] if email else None,
        "email_verified": verification.get("status") == "verified",
        "phone": phone["phone_number"] if phone else None,
        "username": data["username"],
        "first_name": data["first_name"],
        "last_name": data["last_name"],
        "image_url": data["image_url"],
        "external_id": data["external_id"],
        "public_metadata": data["public_metadata"] or {},
        "unsafe_metadata": data["unsafe_metadata"] or {},
        "banned": data["banned"],
        "created_at": ms(data["created_at"]),
        "updated_at": ms(data["updated_at"]),
        "last_sign_in_at": ms(user.sign_in),
        "deleted": user.deleted,
    }


ROWS_SQL = """
select id, email, email_verified, phone, username, first_name, last_name, image_url,
       external_id, public_metadata::text as public_metadata,
       unsafe_metadata::text as unsafe_metadata, banned, created_at, updated_at,
       last_sign_in_at, deleted_at, u::text as whole
from public.users u
"""


def database_problems(dsn: str, stream: Stream, extra_ids: set[str] | None = None) -> list[str]:
    """Every difference between the database and the expected state, as readable lines.
    `extra_ids`: other svix-ids the inbox may hold (none by default)."""
    problems: list[str] = []
    state = expected_state(stream)
    want = {u: expected_row(u, e) for u, e in state.items() if e.profile is not None}
    rows = {r["id"]: r for r in support.fetch(dsn, ROWS_SQL)}
    for user_id in sorted(set(want) - set(rows)):
        problems.append(f"missing row {user_id}: expected {want[user_id]}")
    for user_id in sorted(set(rows) - set(want)):
        problems.append(f"unexpected row {user_id}: {rows[user_id]['whole']}")
    for user_id in sorted(set(rows) & set(want)):
        got = dict(rows[user_id])
        whole = got.pop("whole")
        deleted_at = got.pop("deleted_at")
        got["public_metadata"] = json.loads(got["public_metadata"])
        got["unsafe_metadata"] = json.loads(got["unsafe_metadata"])
        got["deleted"] = deleted_at is not None
        expected = want[user_id]
        diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
        if diff:
            problems.append(f"row {user_id} differs (got, expected): {diff}")
        delete = state[user_id].delete
        if deleted_at is not None and delete is not None and delete.first_sent:
            # deleted_at is when the delete arrived: between its first attempt and its answer
            low = ms_from_wall(delete.first_sent - 2)
            high = ms_from_wall((delete.answered_at or time.time()) + 2)
            if not low <= deleted_at <= high:
                problems.append(f"row {user_id}: deleted_at {deleted_at} not in [{low}, {high}]")
        if PRIVATE_MARKER in whole:
            problems.append(f"row {user_id} holds private_metadata: {whole}")

    inbox = support.fetch(dsn, "select svix_id, outcome from clerk_sync.inbox")
    ids = [r["svix_id"] for r in inbox]
    if len(ids) != len(set(ids)):
        problems.append(f"an svix-id is in the inbox more than once: {len(ids) - len(set(ids))}")
    allowed = stream.svix_ids | (extra_ids or set())
    for svix_id in sorted(stream.svix_ids - set(ids))[:20]:
        problems.append(f"svix-id {svix_id} missing from clerk_sync.inbox")
    for svix_id in sorted(set(ids) - allowed)[:20]:
        problems.append(f"svix-id {svix_id} in clerk_sync.inbox but never sent validly")
    invalid = [r for r in inbox if r["outcome"] not in ("applied", "stale", "duplicate", "ignored")]
    for r in invalid[:20]:
        problems.append(f"inbox {r['svix_id']} has outcome {r['outcome']}")
    return problems


def ms_from_wall(wall: float) -> datetime:
    return EPOCH + timedelta(seconds=wall)


def answer_problems(
    stream: Stream,
    sender: SvixSender,
    *,
    allowed_failures: frozenset[int] = frozenset({503}),
    transport_errors_allowed: bool = False,
    in_doubt: list[tuple[float, float]] | None = None,
) -> list[str]:
    """Every answer that breaks the contract or Svix's expectations, as readable lines.

    `in_doubt`: wall-clock windows in which the database itself died. A commit whose
    acknowledgement died with it is in doubt to the server too: a 503 attempt that overlaps such
    a window may have committed (its retry then answers duplicate), like a lost answer."""
    problems: list[str] = []
    for d in sender.gave_up:
        problems.append(f"never answered 2xx: {d.describe()}")
    by_id: dict[str, list[Delivery]] = {}
    for d in stream.deliveries:
        by_id.setdefault(d.svix_id, []).append(d)
        if d.final is None and d not in sender.gave_up:
            problems.append(f"never sent to the end: {d.describe()}")
        for a in d.attempts:
            if a.status is None:
                if not transport_errors_allowed:
                    problems.append(f"no answer (attempt {a.number}, {a.error}): {d.describe()}")
            elif not a.ok and a.status not in allowed_failures:
                problems.append(f"answered {a.status} {a.error}: {d.describe()}")
            elif a.status == 503 and not (a.retry_after or "").isdigit():
                problems.append(f"503 without a Retry-After in seconds: {d.describe()}")
            if a.status is not None and a.elapsed >= ATTEMPT_TIMEOUT:
                problems.append(f"answered after {a.elapsed:.1f}s: {d.describe()}")
            if a.ok and a.outcome not in ("applied", "duplicate", "stale", "ignored"):
                problems.append(f"2xx with outcome {a.outcome!r}: {d.describe()}")
        if d.final is None:
            continue
        outcome = d.final.outcome
        if d.kind == "replay" and outcome != "duplicate":
            problems.append(f"a re-send after a 2xx answered {outcome}: {d.describe()}")
        if d.kind == "ignored" and outcome not in ("ignored", "duplicate"):
            problems.append(f"an unsynced event type answered {outcome}: {d.describe()}")
        if d.kind in ("undead", "tie") and outcome not in ("stale", "duplicate"):
            problems.append(f"should be stale, answered {outcome}: {d.describe()}")
        if d.kind in ("delete", "predelete") and outcome not in ("applied", "duplicate"):
            problems.append(f"a first delete answered {outcome}: {d.describe()}")

    # Each svix-id is handled once: one non-duplicate 2xx at most among all its deliveries, and
    # none only when an attempt's answer was lost after its commit (no answer at all: a 503 or
    # other non-2xx has, by the contract, changed nothing).
    for svix_id, group in by_id.items():
        handled = [a for d in group for a in d.attempts if a.ok and a.outcome != "duplicate"]
        if len(handled) > 1:
            problems.append(
                f"{svix_id} handled {len(handled)} times: {[d.describe() for d in group]}"
            )
        if not handled and all(d.final for d in group):
            lost = [
                a
                for d in group
                for a in d.attempts
                if a.status is None or (a.status == 503 and overlaps(a, in_doubt or []))
            ]
            if not lost:
                problems.append(
                    f"{svix_id} only ever answered duplicate, though no answer was lost "
                    f"(a non-2xx changed something): {[d.describe() for d in group]}"
                )
    return problems


def overlaps(attempt: Attempt, windows: list[tuple[float, float]]) -> bool:
    end = attempt.started + attempt.elapsed
    return any(attempt.started <= high and end >= low for low, high in windows)


def lost_then_duplicate(stream: Stream, in_doubt: list[tuple[float, float]] | None = None) -> int:
    """svix-ids whose committing attempt's answer was lost (no answer, or a 503 while the
    database died) and whose retry answered duplicate."""
    by_id: dict[str, list[Delivery]] = {}
    for d in stream.deliveries:
        by_id.setdefault(d.svix_id, []).append(d)
    count = 0
    for group in by_id.values():
        attempts = [a for d in group for a in d.attempts]
        if any(a.outcome == "duplicate" for a in attempts) and all(
            a.outcome in (None, "duplicate") for a in attempts
        ):
            count += 1
    return count


def summary(stream: Stream, sender: SvixSender, elapsed: float) -> str:
    attempts = [a for d in stream.deliveries for a in d.attempts]
    statuses: dict[str, int] = {}
    for a in attempts:
        key = str(a.status) if a.status is not None else "no-answer"
        statuses[key] = statuses.get(key, 0) + 1
    outcomes: dict[str, int] = {}
    for d in stream.deliveries:
        if d.final:
            outcomes[str(d.final.outcome)] = outcomes.get(str(d.final.outcome), 0) + 1
    slowest = max((a.elapsed for a in attempts if a.status is not None), default=0.0)
    return (
        f"{len(stream.deliveries)} deliveries ({len(stream.svix_ids)} svix-ids, "
        f"{len(stream.user_ids)} users), {len(attempts)} attempts in {elapsed:.1f}s; "
        f"attempt statuses {dict(sorted(statuses.items()))}; final outcomes {outcomes}; "
        f"slowest answer {slowest:.2f}s"
    )


def check(problems: list[str], where: str, what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:15])
        raise AssertionError(f"{what} {where}: {len(problems)} problem(s):\n  {shown}")


# --- servers -----------------------------------------------------------------------------------


class FaultServer(support.ServerProcess):
    """`clerk-sync serve` that the fault tests may kill; stopping it never raises."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        super().__init__(env, log_path=log_path, port=port)

    def stop(self) -> str:
        with contextlib.suppress(Exception):
            super().stop()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        return self.output()


class Fleet:
    """The throwaway PostgreSQL and the servers of one scenario; `close` ends them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg = support.ThrowawayPostgres(root / "pg")
        self.servers: list[FaultServer] = []

    def start_server(self, env: dict[str, str], port: int | None = None) -> FaultServer:
        server = FaultServer(
            {"DATABASE_URL": self.pg.dsn, **env},
            self.root / f"serve{len(self.servers)}.log",
            port,
        )
        self.servers.append(server)
        server.wait_ready()
        return server

    def logs(self) -> str:
        return "\n".join(f"--- {s.log_path.name} ---\n{s.output()[-2000:]}" for s in self.servers)

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        self.pg.close()


@contextlib.contextmanager
def fleet(root: Path) -> Iterator[Fleet]:
    f = Fleet(root)
    try:
        yield f
    finally:
        f.close()


def server_env(secret: str, **extra: str) -> dict[str, str]:
    return {"CLERK_WEBHOOK_SECRET": secret, "CLERK_SYNC_DB_TIMEOUT": "2", **extra}
