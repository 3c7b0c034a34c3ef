"""Time one call of the batch write, `public.clerk_sync_apply_batch`, in PostgreSQL alone.

    .venv/bin/python bench/apply_batch.py [--sizes 16 100] [--runs 30] [--database-url DSN]

Creates a fresh database on DATABASE_URL's server (default the local PostgreSQL at
127.0.0.1:5432), migrates it, and calls the function with N `user.updated` events (Clerk's
example, src/clerk_sync/examples/user.updated.json, one per user, every one newer than the row:
all applied) over and over on one connection, each run with new svix-ids. Prints the minimum and
the median of the runs per size, in milliseconds, measured at the client (one round trip).
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


async def measure(dsn: str, sizes: list[int], runs: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for size in sizes:
            times = []
            for run in range(runs + 3):  # the first three warm the plan and the caches
                ids, events = bodies(size, run)
                started = time.perf_counter()
                outcomes = await conn.fetch(BATCH_SQL, ids, events)
                elapsed = time.perf_counter() - started
                assert [row[1] for row in outcomes] == ["applied"] * size, "not all applied"
                if run >= 3:
                    times.append(elapsed * 1000)
            print(
                f"{size:4d} events: min {min(times):.3f} ms, median "
                f"{statistics.median(times):.3f} ms ({runs} runs)"
            )
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
    args = parse_args(parser)
    on_fresh_database(args.database_url, lambda dsn: measure(dsn, args.sizes, args.runs))


if __name__ == "__main__":
    main()
