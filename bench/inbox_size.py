"""Bytes per delivery in `clerk_sync.inbox`, with its payload and after payload retention.

    .venv/bin/python bench/inbox_size.py [--deliveries 20000] [--database-url DSN]

Creates a fresh database on DATABASE_URL's server (default the local PostgreSQL at
127.0.0.1:5432), migrates it, and writes N deliveries of Clerk's example `user.updated`
(src/clerk_sync/examples/user.updated.json, ~1.4 KB; one user each) through
`public.clerk_sync_apply_batch`, 100 per batch. Prints the inbox's size (table, TOAST and every
index: pg_total_relation_size) per delivery with the payloads, then once
`public.clerk_sync_drop_payloads` has dropped them and VACUUM FULL has compacted the table (the
space a row keeps for the rest of CLERK_SYNC_RETENTION_DAYS; in a running database plain VACUUM
makes the freed space reusable for new rows instead).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.apply_batch import BATCH_SQL, EXAMPLE, on_fresh_database, parse_args  # noqa: E402

SIZE_SQL = "select pg_total_relation_size('clerk_sync.inbox')"
BATCH = 100


async def measure(dsn: str, deliveries: int) -> None:
    example = orjson.loads(EXAMPLE.read_bytes())
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, deliveries, BATCH):
            ids, events = [], []
            for n in range(start, min(start + BATCH, deliveries)):
                example["data"]["id"] = f"user_size_{n}"
                ids.append(f"msg_size_{n}")
                events.append(orjson.dumps(example).decode())
            await conn.fetch(BATCH_SQL, ids, events)
        body = len(orjson.dumps(orjson.loads(EXAMPLE.read_bytes())))
        with_payload = await conn.fetchval(SIZE_SQL) / deliveries
        dropped = await conn.fetchval(
            "select public.clerk_sync_drop_payloads(interval '0', $1)", deliveries
        )
        await conn.execute("vacuum full clerk_sync.inbox")
        without = await conn.fetchval(SIZE_SQL) / deliveries
        print(f"{deliveries} deliveries of a {body}-byte user.updated (compact JSON)")
        print(f"inbox bytes per delivery with its payload:   {with_payload:,.0f}")
        print(
            f"inbox bytes per delivery after retention:    {without:,.0f} ({dropped} payloads dropped)"
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    args = parse_args(parser)
    on_fresh_database(args.database_url, lambda dsn: measure(dsn, args.deliveries))


if __name__ == "__main__":
    main()
