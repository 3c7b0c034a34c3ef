"""Throughput of `clerk-sync serve` under wrk: realistic signed Clerk deliveries, 32 connections.

    .venv/bin/python bench/run.py [--duration 10] [--connections 32] [--database-url DSN]

Starts its own server on a fresh database (on DATABASE_URL's server, default the local
PostgreSQL at 127.0.0.1:5432), generates signed deliveries (new users, updates, duplicates and
stale events, ~3 KB each, fresh timestamps), drives them with wrk, and prints deliveries per
second and latency. Needs `wrk` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import support  # noqa: E402

LUA = r"""
local requests = {}
local count = 0
for line in io.lines(os.getenv("BENCH_REQUESTS")) do
  local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  count = count + 1
  requests[count] = wrk.format("POST", "/api/webhooks/clerk", {
    ["Content-Type"] = "application/json",
    ["svix-id"] = id, ["svix-timestamp"] = ts, ["svix-signature"] = sig,
  }, body)
end
local i = 0
request = function()
  i = i + 1
  if i > count then i = 1 end
  return requests[i]
end
local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH p50_ms=%.3f p99_ms=%.3f requests=%d seconds=%.3f errors=%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests,
    summary.duration / 1e6, summary.errors.status + summary.errors.connect + summary.errors.timeout))
end
"""


def make_deliveries(key: bytes, count: int) -> list[str]:
    """A stream like a live app's: mostly new users and their updates, some duplicates and
    some stale (older) updates, padded to ~3 KB like a real Clerk user payload."""
    lines: list[str] = []
    now = int(time.time())
    padding = {"bio": "x" * 1800, "plan": "pro"}
    version: dict[str, int] = {}
    sent: list[tuple[str, bytes]] = []
    rng = random.Random(42)
    for n in range(count):
        roll = rng.random()
        if roll < 0.05 and sent:
            message_id, body = rng.choice(sent)  # a duplicate delivery
        else:
            if roll < 0.55 or not version:
                user_id = f"user_bench{n:08d}"
                version[user_id] = 1_700_000_000_000
                event_type = "user.created"
            else:
                user_id = rng.choice(list(version))
                event_type = "user.updated"
                version[user_id] += 1000
            updated_at = version[user_id] - (5000 if roll > 0.95 else 0)  # some stale
            event = support.user_event(
                event_type, user_id, updated_at, email=f"{user_id}@example.com",
                public_metadata=padding,
            )  # fmt: skip
            body = json.dumps(event, separators=(",", ":")).encode()
            message_id = f"msg_bench{n:010d}"
            sent.append((message_id, body))
        headers = support.signed_headers(key, body, message_id, now)
        lines.append(f"{message_id}\t{now}\t{headers['svix-signature']}\t{body.decode()}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--deliveries", type=int, default=60_000)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", support.SHARED_SERVER_DSN)
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is not installed (Debian: apt-get install wrk)")

    secret, key = support.make_secret()
    dsn = support.create_database(args.database_url)
    work = Path(tempfile.mkdtemp(prefix="clerk-sync-bench-"))
    try:
        requests_file = work / "requests.tsv"
        requests_file.write_text("\n".join(make_deliveries(key, args.deliveries)) + "\n")
        (work / "bench.lua").write_text(LUA)
        env = {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": dsn}
        with support.running_server(env) as server:
            result = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                 "-s", str(work / "bench.lua"), server.url],
                env={**os.environ, "BENCH_REQUESTS": str(requests_file)},
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        match = re.search(r"BENCH (.*)", result.stdout)
        if not match:
            sys.exit(f"bench: wrk printed no result:\n{result.stdout}\n{result.stderr}")
        figures = dict(item.split("=") for item in match[1].split())
        rate = float(figures["requests"]) / float(figures["seconds"])
        applied = support.fetch(dsn, "select count(*) as n from clerk_sync.inbox")[0]["n"]
        print(
            f"clerk-sync: {rate:,.0f} deliveries/s, p50 {float(figures['p50_ms']):.1f} ms, "
            f"p99 {float(figures['p99_ms']):.1f} ms, non-2xx/errors {figures['errors']}, "
            f"{applied} distinct deliveries stored ({args.connections} connections, {args.duration} s)"
        )
    finally:
        support.drop_database(args.database_url, dsn)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
