"""Measure POST /api/users/sync: calls per second for users whose rows are fresh (no Clerk call),
and the latency a first call adds (one fetch from the Backend API stand-in and the write).

    .venv/bin/python -m bench.session_sync [--users 500] [--seconds 10] [--database-url DSN]

Runs `clerk-sync serve` (as a user runs it, `--log-level warning`) on a fresh database of the
local PostgreSQL, with Clerk's Backend API played by tests/clerk_standin.py (the JWKS and the
users, on a real HTTP port). Each user's session token is signed with a key pair made here.
1. First calls: each user's first sync, one after another (row missing: fetch, write, read back),
   then a second call for each (answered from the database): medians and p99s of both.
2. Throughput: wrk (`-t1 -c32`, as bench/run.py) posts the users' tokens round-robin for
   `--seconds`; every row is fresh, so no call reaches the stand-in (checked).
Prints the figures and writes them to bench/results/session_sync.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench.load import REPORT, parse, require_wrk
from tests import clerk_standin, support
from tests.session_keys import ORIGIN, KeyPair, jwks

ROOT = Path(__file__).resolve().parent.parent

SYNC_PATH = "/api/users/sync"

# Each wrk thread reads the tokens in init(); request() cycles through them.
WRK_SCRIPT = (
    r"""
local requests, count = {}, 0
function init(args)
  for token in io.lines(args[1]) do
    count = count + 1
    requests[count] = wrk.format("POST", args[2], {["Authorization"] = "Bearer " .. token})
  end
end
"""
    + REPORT
    + r"""
local i = 0
function request() i = i % count + 1; return requests[i] end
function response(status) if status ~= 200 then non2xx = non2xx + 1 end end
function done(summary, latency, requests) report(summary, latency) end
"""
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def timed_calls(url: str, tokens: list[str]) -> list[float]:
    """Milliseconds of each call, one after another on one keep-alive connection."""
    took = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for token in tokens:
            started = time.perf_counter()
            response = client.post(SYNC_PATH, headers={"authorization": f"Bearer {token}"})
            took.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                sys.exit(f"sync answered {response.status_code}: {response.text}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", support.SHARED_SERVER_DSN)
    )
    args = parser.parse_args()
    require_wrk()

    pair = KeyPair("ins_bench")
    standin = clerk_standin.StandIn(users=clerk_standin.clerk_users(args.users), jwks=jwks(pair))
    exp = int(time.time()) + 3600  # outlives the run (Clerk's own live a minute)
    tokens = [pair.token(user["id"], exp=exp) for user in standin.users]
    dsn = support.create_database(args.database_url, migrate=True)
    try:
        with clerk_standin.running(standin), tempfile.TemporaryDirectory() as work:
            env = {
                "CLERK_WEBHOOK_SECRET": support.make_secret()[0],
                "DATABASE_URL": dsn,
                "CLERK_SECRET_KEY": standin.secret_key,
                "CLERK_API_URL": standin.url,
                "CLERK_AUTHORIZED_PARTIES": ORIGIN,
            }
            with support.running_server(env, cwd=Path(work)) as server:
                first = timed_calls(server.url, tokens)
                fresh = timed_calls(server.url, tokens)
                fetched = len(standin.log)

                token_file = Path(work) / "tokens.txt"
                token_file.write_text("\n".join(tokens) + "\n")
                script = Path(work) / "sync.lua"
                script.write_text(WRK_SCRIPT)
                wrk = [
                    require_wrk(), "-t1", "-c32", f"-d{args.seconds}s", "--timeout", "30s",
                    "-s", str(script), server.url, "--", str(token_file), SYNC_PATH,
                ]  # fmt: skip
                done = subprocess.run(wrk, capture_output=True, text=True, check=True)
                result = parse(done.stdout)
                calls_to_clerk = len(standin.log) - fetched
    finally:
        support.drop_database(args.database_url, dsn)

    figures = {
        "users": args.users,
        "first_call_ms": {"p50": statistics.median(first), "p99": percentile(first, 0.99)},
        "fresh_call_ms": {"p50": statistics.median(fresh), "p99": percentile(fresh, 0.99)},
        "added_by_first_call_ms": statistics.median(first) - statistics.median(fresh),
        "backend_api_requests_for_first_calls": fetched,
        "fresh_calls_per_second": round(result.rate),
        "fresh_calls": {
            "requests": result.requests,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "non200": result.non2xx,
            "socket_errors": result.socket_errors,
            "backend_api_requests": calls_to_clerk,
        },
    }
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "session_sync.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
