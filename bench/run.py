"""clerk-sync against the handlers its users would write, side by side, in one command.

    python3 -m venv .venv && .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python -m bench.run

Needs wrk (Debian: apt-get install wrk), Node.js >= 18 with npm (the Express reference's pinned
packages are installed into bench/reference/express/node_modules on first use), and PostgreSQL:
DATABASE_URL's server, default the local one at postgresql://postgres@127.0.0.1:5432/postgres.

In one invocation, one after another against the same PostgreSQL, each on a fresh database of
its own and with the same generated deliveries (~3 KB signed Clerk user.created/user.updated
bodies, fresh timestamps: new users, updates, ~5% duplicate deliveries, ~5% stale updates):

- clerk-sync            `python -m clerk_sync serve --log-level warning` (the references log
                        nothing per delivery either)
- clerk-sync-logged     `python -m clerk_sync serve` at its default level: a JSON log line per
                        delivery, to a file
- express               bench/reference/express: Express + svix + pg, one upsert per delivery
- starlette             bench/reference/starlette_ref.py: Starlette + svix + asyncpg, one upsert
                        (uvicorn, uvloop, httptools, 1 worker)
- baseline              the same Starlette server answering 204 after reading the body

each driven by `wrk -t1 -c32` for 10 s after a 2 s warm-up, three rounds taking turns (the
machine is noisy: the median round of each is reported, every round listed). Reports deliveries/s, p50/p99
latency, non-2xx answers, CPU seconds per 1,000 deliveries of the server's process tree (and of
its PostgreSQL backends), and clerk-sync / each other server. Then the cold start: spawn to
first answered delivery (median of 5, database already migrated), for clerk-sync both on
PostgreSQL directly and in REST mode (through the tests' PostgREST stand-in), and import times. Prints a
markdown table and writes bench/results/latest.json and bench/results/latest.png. About five
minutes on 2 cores.

    .venv/bin/python -m bench.run --burst                      # also the 100,000-delivery burst
    .venv/bin/python -m bench.run --no-throughput --no-cold-start --burst   # the burst alone
    .venv/bin/python -m bench.run --targets clerk-sync,starlette --duration 30
    .venv/bin/python -m bench.run --mix --no-cold-start     # users, sign-ins, organizations

`--mix [U/S/O/M]` measures throughput on a B2B app's stream instead, by percent (default
60/15/10/15): user events (the stream above), session.created of known users, organization
events (new organizations and updates) and membership events (a known user joining a known
organization, role changes), each membership carrying its organization in full, ~5% retries
(bench/deliveries.py, `with_organizations`). The references handle each the naive way, one
statement per delivery into tables of their own (an upsert for an organization or membership,
an update of last_sign_in_at for a sign-in); clerk-sync applies them with every guarantee of
the contract's v2 section (ordering, tombstones, one live membership per pair, the embedded
organization). Same servers, same rounds, same table and ratios as above, plus the
organizations and memberships each stored; written to bench/results/mix.json and mix.png
instead of latest.*.

`--columns` also measures clerk-sync-columns: clerk-sync serve with the three custom columns of
bench/columns.toml (CLERK_SYNC_CONFIG; README "Your own columns"): `role` text, `plan` text with
the default 'free', `credits` integer, all from public_metadata. It runs right after clerk-sync
in each round, on a fresh database that its own `serve` migrates (adding the columns). The user
events carry those values (bench/deliveries.py `public_metadata`, the same stream for every
server): `role` missing in ~1 version of 5, `plan` in ~1 of 8, and `credits` a string in ~1 of
10, which the integer column does not take (it gets its default, null; the delivery applies and
is counted in clerk_sync_custom_column_unconvertible_total). The references are unchanged: they
store public_metadata whole, as before. Reported: the same-run ratio of clerk-sync with the
columns to clerk-sync without (throughput, p99, server CPU per delivery) and how many users hold
each column; written to bench/results/columns.json and columns.png instead of latest.*:

    .venv/bin/python -m bench.run --columns --targets clerk-sync,starlette --no-cold-start

The burst sends 100,000 distinct user.created deliveries to clerk-sync as fast as wrk can,
each once, and reports the time to drain them and the server's resident memory (peak, sampled
every 0.2 s, and after 10k/50k/100k answers) into bench/results/burst.json. latest.json and
latest.png are written only by a run that measured throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from bench import deliveries, load, report, servers
from tests import support

from clerk_sync import testing

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
MB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="clerk-sync against the hand-written reference handlers, side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--targets", default=",".join(servers.DEFAULT_TARGETS),
                        help="servers to measure, in order")  # fmt: skip
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per server")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each server is measured, taking turns; the median round "
                             "(by throughput) is reported, every round listed")  # fmt: skip
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--deliveries", type=int, default=100_000,
                        help="distinct deliveries in the stream (wrk repeats them past the end)")  # fmt: skip
    parser.add_argument("--mix", nargs="?", const="/".join(map(str, deliveries.MIX)),
                        default=None, metavar="U/S/O/M",
                        help="throughput on a stream of user, session.created, organization "
                             "and membership events, by percent (bare --mix: "
                             f"{'/'.join(map(str, deliveries.MIX))})")  # fmt: skip
    parser.add_argument("--columns", action="store_true",
                        help="also measure clerk-sync-columns: clerk-sync with the three custom "
                             "columns of bench/columns.toml, next to clerk-sync")  # fmt: skip
    parser.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-start-runs", type=int, default=5)
    parser.add_argument("--burst", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--burst-deliveries", type=int, default=100_000)
    parser.add_argument("--burst-target", default="clerk-sync", choices=list(servers.TARGETS))
    parser.add_argument("--database-url",
                        default=os.environ.get("DATABASE_URL", support.SHARED_SERVER_DSN),
                        help="PostgreSQL server to create the fresh databases on")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args()
    unknown = set(args.targets.split(",")) - set(servers.TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {list(servers.TARGETS)}")
    if args.columns and "clerk-sync-columns" not in args.targets.split(","):
        names = args.targets.split(",")
        at = names.index("clerk-sync") + 1 if "clerk-sync" in names else 0
        args.targets = ",".join([*names[:at], "clerk-sync-columns", *names[at:]])
    if args.mix is not None:
        try:
            shares = tuple(int(share) for share in args.mix.split("/"))
        except ValueError:
            shares = ()
        if len(shares) != 4 or min(shares) < 0 or sum(shares) != 100:
            parser.error(f"--mix {args.mix}: four percentages that add up to 100, e.g. 60/15/10/15")
        args.mix = shares
    return args


def deliveries_of(
    args: argparse.Namespace, count: int, prefix: str, seed: int
) -> Iterator[deliveries.Delivery]:
    """The run's deliveries: the users' stream, or with --mix the mixed one."""
    if args.mix:
        return deliveries.with_organizations(count, args.mix, prefix, seed)
    return deliveries.mixed(count, prefix, seed)


def describe_mix(args: argparse.Namespace) -> str:
    if not args.mix:
        return "~55% new users, ~35% updates, ~5% duplicates, ~5% stale updates"
    users, sessions, orgs, members = args.mix
    return (
        f"{users}% user events (~55% new, ~35% updates, ~5% duplicates, ~5% stale), "
        f"{sessions}% session.created, {orgs}% organization events (~30% new), "
        f"{members}% membership events (~70% new); ~5% retries of the non-user ones"
    )


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def version_of(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        lines = (done.stdout or done.stderr).strip().splitlines()
        return lines[0] if lines else ""
    return "unavailable"


def machine(args: argparse.Namespace) -> dict[str, Any]:
    commit = version_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    dirty = bool(status.stdout.strip())
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": version_of(["node", "--version"]),
        "wrk": version_of(["wrk", "-v"]).split(" [")[0],
        "postgresql": servers.server_version(args.database_url),
        "load_average_at_start": os.getloadavg(),
        "git_commit": commit + (" (src/ modified)" if dirty else ""),
    }


# --- throughput -------------------------------------------------------------------------------


def measure_throughput(
    target: servers.Target,
    args: argparse.Namespace,
    scratch: Path,
    databases: servers.Databases,
    secret: str,
    key: bytes,
    stream: Path,
    warmup_stream: Path,
) -> dict[str, Any]:
    dsn = databases.create() if target.uses_database else None
    env = {"CLERK_WEBHOOK_SECRET": secret, **({"DATABASE_URL": dsn} if dsn else {})}
    with servers.running(target, env, scratch) as server:
        now = int(time.time())
        warm, signed = scratch / "warmup.signed", scratch / "stream.signed"
        deliveries.write_signed(warm, deliveries.read_unsigned(warmup_stream), key, now)
        count = deliveries.write_signed(signed, deliveries.read_unsigned(stream), key, now)
        if args.warmup:
            load.timed(scratch, server.url, warm, args.threads, args.connections, args.warmup)
        backends = servers.backend_pids(args.database_url, dsn) if dsn else set()
        db_before = servers.cpu_seconds(backends)
        cpu_before = server.cpu_seconds()
        load_average = os.getloadavg()[0]
        result = load.timed(
            scratch, server.url, signed, args.threads, args.connections, args.duration
        )
        cpu_after = server.cpu_seconds()
        db_cpu: float | None = None
        if dsn:
            backends |= servers.backend_pids(args.database_url, dsn)
            db_after = servers.cpu_seconds(backends)
            db_cpu = sum(spent - db_before.get(pid, 0.0) for pid, spent in db_after.items())
        if result.non2xx or result.socket_errors:
            log(f"{target.name}: {result.non2xx} non-2xx answers, {result.socket_errors} socket "
                f"errors; the server's log ends:\n{server.log_tail()}")  # fmt: skip
    per_1k = 1000 / max(result.requests, 1)
    row = {
        "description": target.description,
        "deliveries_per_s": round(result.rate, 1),
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "requests": result.requests,
        "seconds": round(result.seconds, 3),
        "non2xx": result.non2xx,
        "socket_errors": result.socket_errors,
        "server_cpu_s_per_1k": round((cpu_after - cpu_before) * per_1k, 4),
        "db_cpu_s_per_1k": round(db_cpu * per_1k, 4) if db_cpu is not None else None,
        "users_stored": servers.rows_stored(dsn, "users") if dsn else None,
        **(
            {
                "organizations_stored": servers.rows_stored(dsn, "organizations"),
                "memberships_stored": servers.rows_stored(dsn, "organization_memberships"),
            }
            if dsn and args.mix
            else {}
        ),
        **(
            {"custom_columns_held": servers.custom_columns_held(dsn)}
            if dsn and target.name == "clerk-sync-columns"
            else {}
        ),
        "stream_repeated": result.requests > count,
        "load_average_1m_before": round(load_average, 2),
    }
    log(f"{target.name}: {row['deliveries_per_s']:,.0f}/s, p50 {row['p50_ms']:.1f} ms, "
        f"p99 {row['p99_ms']:.1f} ms, non-2xx {row['non2xx']}, "
        f"CPU {row['server_cpu_s_per_1k']:.3f} s/1k")  # fmt: skip
    return row


def throughput(
    args: argparse.Namespace,
    scratch: Path,
    databases: servers.Databases,
    secret: str,
    key: bytes,
) -> tuple[dict[str, dict[str, Any]], int]:
    stream, warmup_stream = scratch / "stream.tsv", scratch / "warmup.tsv"
    log(f"generating {args.deliveries:,} deliveries (and 10,000 for the warm-up)")
    body_bytes = deliveries.write_unsigned(
        stream, deliveries_of(args, args.deliveries, "bench", 42)
    )
    deliveries.write_unsigned(warmup_stream, deliveries_of(args, 10_000, "warm", 1))
    names = args.targets.split(",")
    if "express" in names:
        servers.install_express()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for turn in range(1, args.rounds + 1):
        for name in names:
            target = servers.TARGETS[name]
            log(f"{name}: {target.description} (round {turn} of {args.rounds})")
            runs[name].append(
                measure_throughput(
                    target, args, scratch, databases, secret, key, stream, warmup_stream
                )
            )
    return {name: median_round(measured) for name, measured in runs.items()}, round(
        body_bytes / args.deliveries
    )


def median_round(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, as measured (its p50, p99 and CPU with it), and
    every round's throughput and p99."""
    ordered = sorted(measured, key=lambda row: row["deliveries_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "rounds": [{k: row[k] for k in ("deliveries_per_s", "p99_ms")} for row in measured],
    }


# --- cold start -------------------------------------------------------------------------------


def first_answer(
    target: servers.Target, env: dict[str, str], scratch: Path, key: bytes, attempt: int
) -> float:
    """Seconds from spawning the server to its 2xx answer to a signed delivery."""
    message_id, body = next(deliveries.created(1, prefix=f"cold{attempt}", seed=attempt))
    headers = testing.signed_headers(key, body, message_id, int(time.time()))
    started = time.perf_counter()
    server = servers.Server(target, env, scratch, log_name=f"cold-{target.name}.log")
    try:
        while time.perf_counter() - started < 60:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{target.name} exited:\n{server.log_tail()}")
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("POST", load.WEBHOOK_PATH, body, headers)
                status = conn.getresponse().status
            except ConnectionRefusedError:
                time.sleep(0.002)
                continue
            finally:
                conn.close()
            if 200 <= status < 300:
                return time.perf_counter() - started
            raise RuntimeError(f"{target.name} answered {status}:\n{server.log_tail()}")
        raise TimeoutError(f"{target.name} did not answer within 60 s:\n{server.log_tail()}")
    finally:
        server.stop()


def import_times(runs: int) -> dict[str, Any]:
    def wall(code: str) -> dict[str, Any]:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "bench")
            times.append((time.perf_counter() - started) * 1000)
        return {"median_ms": round(statistics.median(times), 1), "runs_ms": times}

    out = {
        "interpreter": wall("pass"),
        "clerk_sync.app": wall("import clerk_sync.app"),
        "clerk_sync.cli": wall("import clerk_sync.cli"),
    }
    # Where `python -m clerk_sync serve`'s import time goes: self time summed per package.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import clerk_sync.cli, clerk_sync.app"],
        capture_output=True, text=True, check=True, cwd=ROOT / "bench",
    )  # fmt: skip
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)$", line)
        if match:
            package = match[2].split(".")[0]
            per_package[package] = per_package.get(package, 0.0) + int(match[1]) / 1000
    heaviest = sorted(per_package.items(), key=lambda item: -item[1])[:12]
    out["import_self_ms_by_package"] = {name: round(ms, 1) for name, ms in heaviest}
    return out


def cold_start(
    args: argparse.Namespace, scratch: Path, databases: servers.Databases, secret: str, key: bytes
) -> dict[str, Any]:
    results: dict[str, Any] = {"servers": {}}
    skipped = ("baseline", "clerk-sync-logged", "clerk-sync-columns")
    for name in [n for n in args.targets.split(",") if n not in skipped]:
        target = servers.TARGETS[name]
        if name == "clerk-sync":
            # Database migrated beforehand, as a serverless deployment runs it.
            dsn = databases.create(migrate=True)
            target = dataclasses.replace(
                target,
                argv=lambda port: [sys.executable, "-m", "clerk_sync", "serve", "--no-migrate",
                                   "--log-level", "warning"],
            )  # fmt: skip
        else:
            dsn = databases.create()
            if name == "express":
                servers.install_express()
        env = {"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": dsn}
        results["servers"][name] = cold_runs(target, env, scratch, key, args.cold_start_runs)
        if name == "clerk-sync":
            results["servers"]["clerk-sync-rest"] = rest_cold_start(
                target, args, scratch, secret, key
            )
    results["imports"] = import_times(args.cold_start_runs)
    return results


def cold_runs(
    target: servers.Target, env: dict[str, str], scratch: Path, key: bytes, runs: int
) -> dict[str, Any]:
    times = [first_answer(target, env, scratch, key, attempt) * 1000 for attempt in range(runs)]
    log(f"cold start {target.name}: median {statistics.median(times):.0f} ms")
    return {
        "median_ms": round(statistics.median(times), 1),
        "runs_ms": [round(ms, 1) for ms in times],
    }


def rest_cold_start(
    target: servers.Target, args: argparse.Namespace, scratch: Path, secret: str, key: bytes
) -> dict[str, Any]:
    """clerk-sync in REST mode, as on Vercel with Supabase: through the PostgREST stand-in the
    tests use (Supabase's wire format, run in this process) on a Supabase-like database."""
    from tests.postgrest_standin import SECRET_KEY, create_supabase_database, running_postgrest

    dsn = create_supabase_database(args.database_url)
    try:
        with running_postgrest(dsn) as standin:
            env = {
                "CLERK_WEBHOOK_SECRET": secret,
                "SUPABASE_URL": standin.url,
                "SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY,
            }
            rest = dataclasses.replace(target, name="clerk-sync-rest")
            return cold_runs(rest, env, scratch, key, args.cold_start_runs)
    finally:
        support.drop_database(args.database_url, dsn)


# --- burst ------------------------------------------------------------------------------------


def burst(
    args: argparse.Namespace, scratch: Path, databases: servers.Databases, secret: str, key: bytes
) -> dict[str, Any]:
    target = servers.TARGETS[args.burst_target]
    if target.name == "express":
        servers.install_express()
    dsn = databases.create() if target.uses_database else None
    env = {"CLERK_WEBHOOK_SECRET": secret, **({"DATABASE_URL": dsn} if dsn else {})}
    signed = scratch / "burst.signed"
    with servers.running(target, env, scratch) as server:
        log(f"burst: signing {args.burst_deliveries:,} user.created deliveries")
        count = deliveries.write_signed(
            signed, deliveries.created(args.burst_deliveries), key, int(time.time())
        )
        rss_idle = server.rss_bytes()
        samples: list[tuple[float, int]] = []
        at_answers: dict[str, float] = {}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.2):
                samples.append((time.monotonic(), server.rss_bytes()))

        def progress(event: str, now: float) -> None:
            answered = int(event.split("=")[1]) if event.startswith("answered=") else 0
            if answered and answered % 10_000 == 0:
                at_answers[str(answered)] = round(server.rss_bytes() / MB, 1)
                log(f"burst: {answered:,} answered")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = server.cpu_seconds()
        try:
            result = load.burst(scratch, server.url, signed, args.connections, progress)
        finally:
            sampling.set()
            sampler.join()
        cpu = server.cpu_seconds() - cpu_before
        rss_after = server.rss_bytes()
        if result.wrk.non2xx or result.wrk.socket_errors:
            log(f"burst: {result.wrk.non2xx} non-2xx, {result.wrk.socket_errors} socket errors; "
                f"the server's log ends:\n{server.log_tail()}")  # fmt: skip
    signed.unlink()
    peak = max([rss for _, rss in samples] + [rss_idle, rss_after])
    row = {
        "server": target.name,
        "deliveries": count,
        "connections": args.connections,
        "drained": result.drained,
        "drain_seconds": round(result.drain_seconds, 2),
        "deliveries_per_s": round(count / result.drain_seconds, 1),
        "p50_ms": result.wrk.p50_ms,
        "p99_ms": result.wrk.p99_ms,
        "max_ms": result.wrk.max_ms,
        "non2xx": result.wrk.non2xx,
        "socket_errors": result.wrk.socket_errors,
        "users_stored": servers.rows_stored(dsn, "users") if dsn else None,
        "server_cpu_s_per_1k": round(cpu * 1000 / count, 4),
        "rss_mb": {
            "idle_before": round(rss_idle / MB, 1),
            "peak": round(peak / MB, 1),
            "after_answers": at_answers,
            "after_drain": round(rss_after / MB, 1),
        },
        "rss_samples_mb": [round(rss / MB, 1) for _, rss in samples],
    }
    return row


def burst_markdown(row: dict[str, Any]) -> str:
    rss = row["rss_mb"]
    marks = ", ".join(f"{int(k) // 1000}k: {v:.0f} MB" for k, v in rss["after_answers"].items())
    return (
        f"Burst: {row['deliveries']:,} distinct user.created deliveries to {row['server']} "
        f"({row['connections']} connections) "
        f"{'drained in' if row['drained'] else 'did NOT drain; last answer after'} "
        f"{row['drain_seconds']:.1f} s "
        f"({row['deliveries_per_s']:,.0f}/s, p99 {row['p99_ms']:.1f} ms), "
        f"{row['non2xx']} non-2xx, {row['socket_errors']} socket errors, "
        f"{row['users_stored']} users stored.\n"
        f"Server RSS: {rss['idle_before']:.0f} MB idle, peak {rss['peak']:.0f} MB; "
        f"after {marks}; {rss['after_drain']:.0f} MB once drained."
    )


# --- main -------------------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(143)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally below still cleans up
    load.require_wrk()
    secret, key = testing.make_secret()
    scratch = Path(tempfile.mkdtemp(prefix="clerk-sync-bench-"))
    databases = servers.Databases(args.database_url, scratch)
    command = "python -m bench.run" + "".join(f" {a}" for a in sys.argv[1:])
    try:
        results: dict[str, Any] = {
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": command,
            "machine": machine(args),
            "settings": {
                "threads": args.threads,
                "connections": args.connections,
                "duration": args.duration,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "deliveries": args.deliveries,
                "mix": describe_mix(args),
            },
        }
        if args.throughput:
            rows, body_bytes = throughput(args, scratch, databases, secret, key)
            results["settings"]["body_bytes"] = body_bytes
            results["throughput"] = rows
            results["ratios"] = report.ratios(rows)
            results["goals"] = report.goals(rows)
            if "clerk-sync-columns" in rows and "clerk-sync" in rows:
                results["columns_cost"] = report.columns_cost(rows)
        if args.cold_start:
            results["cold_start"] = cold_start(args, scratch, databases, secret, key)
        if args.throughput:
            args.results.mkdir(parents=True, exist_ok=True)
            name = "mix" if args.mix else "columns" if args.columns else "latest"
            report.write_json(args.results / f"{name}.json", results)
            report.chart(args.results / f"{name}.png", results)
            print(report.markdown(results))
            log(f"wrote {args.results / f'{name}.json'} and {args.results / f'{name}.png'}")
        elif args.cold_start:
            print(report.cold_start_markdown(results["cold_start"]))
        if args.burst:
            row = burst(args, scratch, databases, secret, key)
            args.results.mkdir(parents=True, exist_ok=True)
            report.write_json(
                args.results / "burst.json",
                {**{k: results[k] for k in ("generated_at", "command", "machine")}, "burst": row},
            )
            print()
            print(burst_markdown(row))
            log(f"wrote {args.results / 'burst.json'}")
    finally:
        databases.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
