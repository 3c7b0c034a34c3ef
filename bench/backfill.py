"""Time `clerk-sync backfill` of users, organizations, memberships and invitations from the
Backend API stand-in, end to end.

    .venv/bin/python -m bench.backfill [--users 10000] [--organizations 10000]
        [--memberships 50000] [--invitations 20000] [--database-url DSN]

Serves realistic users, organizations, memberships (each membership of one of the users in
one of the organizations, its organization embedded) and invitations (spread over the
organizations, pending, accepted and revoked) from the stand-in in tests/clerk_standin.py
(Clerk's wire format, on a real HTTP port, no injected faults), creates a fresh database on
DATABASE_URL's server (default the local PostgreSQL at 127.0.0.1:5432), and runs `python -m
clerk_sync backfill` against both as a user would: first into the empty tables (everything
created), then again (everything unchanged: the nightly drift check). Prints the wall time of
each, process start included, and the per-resource summary lines (each with its own time).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import clerk_standin, support

ROOT = Path(__file__).resolve().parent.parent


def timed_backfill(env: dict[str, str], cwd: str) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "clerk_sync", "backfill"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"backfill failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.returncode, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--organizations", type=int, default=10_000)
    parser.add_argument("--memberships", type=int, default=50_000)
    parser.add_argument("--invitations", type=int, default=20_000)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", support.SHARED_SERVER_DSN)
    )
    args = parser.parse_args()

    organizations = clerk_standin.clerk_organizations(args.organizations)
    standin = clerk_standin.StandIn(
        users=clerk_standin.clerk_users(args.users),
        organizations=organizations,
        memberships=clerk_standin.clerk_memberships(
            args.memberships, organizations, max(args.users, 1)
        )
        if organizations
        else [],
        invitations=clerk_standin.clerk_invitations(args.invitations, organizations)
        if organizations
        else [],
    )
    objects = args.users + args.organizations + len(standin.memberships) + len(standin.invitations)
    dsn = support.create_database(args.database_url, migrate=True)
    try:
        with clerk_standin.running(standin), tempfile.TemporaryDirectory() as cwd:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CLERK_")},
                "CLERK_SECRET_KEY": standin.secret_key,
                "CLERK_API_URL": standin.url,
                "DATABASE_URL": dsn,
            }
            first, status, summary = timed_backfill(env, cwd)
            print(f"first run  (exit {status}): {first:6.2f} s  {objects / first:8.0f} objects/s")
            print("  " + summary.replace("\n", "\n  "))
            second, status, summary = timed_backfill(env, cwd)
            print(f"second run (exit {status}): {second:6.2f} s  {objects / second:8.0f} objects/s")
            print("  " + summary.replace("\n", "\n  "))
            print(f"requests served by the stand-in: {len(standin.log)}")
    finally:
        support.drop_database(args.database_url, dsn)


if __name__ == "__main__":
    main()
