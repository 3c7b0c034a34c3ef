"""Time one call of the batch write, `public.clerk_sync_apply_batch`, in PostgreSQL alone.

    .venv/bin/python bench/apply_batch.py [--sizes 16 100] [--runs 30] [--mix] [--database-url DSN]

Creates a fresh database on DATABASE_URL's server (default the local PostgreSQL at
127.0.0.1:5432), migrates it, and calls the function with N `user.updated` events (Clerk's
example, src/clerk_sync/examples/user.updated.json, one per user, every one newer than the row:
all applied) over and over on one connection, each run with new svix-ids. Prints the minimum and
the median of the runs per size, in milliseconds, measured at the client (one round trip).
With --mix, each batch is instead the next N deliveries of the mixed B2B stream
(bench/deliveries.py `with_organizations`: ~25% organization and membership events, sign-ins,
duplicates and stale updates; whatever their outcomes), and the users-only batch is timed too,
in the same run, for the ratio.
With PYTHONPATH=<another checkout>/src it times that checkout's SQL: a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import deliveries  # noqa: E402
from tests import support  # noqa: E402

import clerk_sync  # noqa: E402

EXAMPLE = Path(clerk_sync.__file__).parent / "examples" / "user.updated.json"
BATCH_SQL = "select * from public.clerk_sync_apply_batch($1::text[], $2::text[]::jsonb[], 'soft')"


def bodies(size: int, run: int) -> tuple[list[str], list[str]]:
    example = orjson.loads(EXAMPLE.read_bytes())
    ids, events = [], []
    for n in range(size):
        example["data"]["id"] = f"user_bench_{size}_{n}"
        example["data"]["updated_at"] = 1_700_000_000_000 + run
        ids.append(f"msg_bench_{size}_{run}_{n}")
        events.append(orjson.dumps(example).decode())
    return ids, events


def mixed_bodies(size: int, runs: int) -> list[tuple[list[str], list[str]]]:
    """`runs` consecutive batches of `size` deliveries of the mixed B2B stream."""
    stream = deliveries.with_organizations(size * runs, prefix=f"mix{size}")
    batches = []
    for _ in range(runs):
        chunk = [next(stream) for _ in range(size)]
        batches.append(
            ([message_id for message_id, _ in chunk], [body.decode() for _, body in chunk])
        )
    return batches


async def time_batches(
    conn: asyncpg.Connection, batches: list[tuple[list[str], list[str]]], all_applied: bool
) -> list[float]:
    """Each batch's time in milliseconds, but the first three's (they warm the plan and caches)."""
    times = []
    for run, (ids, events) in enumerate(batches):
        started = time.perf_counter()
        outcomes = await conn.fetch(BATCH_SQL, ids, events)
        elapsed = time.perf_counter() - started
        assert not all_applied or [row[1] for row in outcomes] == ["applied"] * len(ids), (
            "not all applied"
        )
        if run >= 3:
            times.append(elapsed * 1000)
    return times


def summary(label: str, times: list[float]) -> str:
    return (
        f"{label}: min {min(times):.3f} ms, median {statistics.median(times):.3f} ms "
        f"({len(times)} runs)"
    )


async def measure(dsn: str, sizes: list[int], runs: int, mix: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for size in sizes:
            users = await time_batches(conn, [bodies(size, run) for run in range(runs + 3)], True)
            print(summary(f"{size:4d} user.updated", users))
            if mix:
                mixed = await time_batches(conn, mixed_bodies(size, runs + 3), False)
                ratio = statistics.median(mixed) / statistics.median(users)
                print(summary(f"{size:4d} mixed       ", mixed) + f", {ratio:.2f}x the users'")
    finally:
        await conn.close()


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The command line, with --database-url (the server to create the database on)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    return parser.parse_args()


def on_fresh_database(server_dsn: str, work: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """Run `work(dsn)` on a new, migrated database on that server, dropped afterwards."""
    dsn = support.create_database(server_dsn)
    try:
        asyncio.run(work(dsn))
    finally:
        support.drop_database(server_dsn, dsn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 100])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mix", action="store_true", help="also time batches of the mixed stream")
    args = parse_args(parser)
    on_fresh_database(args.database_url, lambda dsn: measure(dsn, args.sizes, args.runs, args.mix))


if __name__ == "__main__":
    main()
