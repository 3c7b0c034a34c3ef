"""The servers under test, each started as its users run it on a fresh database of its own, and
what its process tree spends: CPU seconds and resident memory."""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from tests import support

BENCH = Path(__file__).resolve().parent
REFERENCE = BENCH / "reference"
EXPRESS = REFERENCE / "express"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    argv: Callable[[int], list[str]]
    cwd: Path | None  # None: a scratch directory, so no stray .env is read
    uses_database: bool
    ready_path: str  # ready once a GET here answers below 500
    env: tuple[tuple[str, str], ...] = ()  # set for it besides the run's own


def _uvicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        sys.executable, "-m", "uvicorn", app, "--app-dir", str(REFERENCE),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


TARGETS = {
    "clerk-sync": Target(
        "clerk-sync",
        "clerk-sync serve (inbox, ordering and delete guards)",
        lambda port: [sys.executable, "-m", "clerk_sync", "serve", "--log-level", "warning"],
        None,
        True,
        "/readyz",
    ),
    "clerk-sync-logged": Target(
        "clerk-sync-logged",
        "clerk-sync serve at its default log level: one JSON line per delivery, to a file",
        lambda port: [sys.executable, "-m", "clerk_sync", "serve"],
        None,
        True,
        "/readyz",
    ),
    # `--columns`: the same, with the three custom columns of bench/columns.toml.
    "clerk-sync-columns": Target(
        "clerk-sync-columns",
        "clerk-sync serve with 3 custom columns (bench/columns.toml)",
        lambda port: [sys.executable, "-m", "clerk_sync", "serve", "--log-level", "warning"],
        None,
        True,
        "/readyz",
        (("CLERK_SYNC_CONFIG", str(BENCH / "columns.toml")),),
    ),
    "express": Target(
        "express",
        "Express + svix + pg, one upsert",
        lambda port: ["node", "server.js"],
        EXPRESS,
        True,
        "/api/webhooks/clerk",
    ),
    "starlette": Target(
        "starlette",
        "Starlette + svix + asyncpg, one upsert (uvicorn, uvloop, httptools)",
        _uvicorn("starlette_ref:app"),
        None,
        True,
        "/api/webhooks/clerk",
    ),
    "baseline": Target(
        "baseline",
        "the same Starlette server, 204 after reading the body (no verify, no database)",
        _uvicorn("starlette_ref:baseline"),
        None,
        False,
        "/api/webhooks/clerk",
    ),
}
REFERENCES = ("express", "starlette")
# What a run measures unless told otherwise (--columns adds clerk-sync-columns).
DEFAULT_TARGETS = tuple(name for name in TARGETS if name != "clerk-sync-columns")


def install_express() -> None:
    """`npm ci` the Express reference's pinned dependencies unless they are installed."""
    if (EXPRESS / "node_modules" / ".package-lock.json").exists():
        return
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise SystemExit("bench: the Express reference needs Node.js and npm (node >= 18)")
    print("bench: npm ci in bench/reference/express", file=sys.stderr)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXPRESS, check=True)


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without settings that would change what a server does."""
    prefixes = ("CLERK_", "DATABASE_URL", "SUPABASE_", "PORT", "HOST", "NODE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, **extra}


# --- databases --------------------------------------------------------------------------------


class Databases:
    """Fresh databases on one PostgreSQL server, all dropped by close()."""

    def __init__(self, server_dsn: str, scratch: Path) -> None:
        self.server_dsn = server_dsn
        self.scratch = scratch
        self.created: list[str] = []

    def create(self, *, migrate: bool = False) -> str:
        name = "clerk_sync_bench_" + secrets.token_hex(5)
        support.execute(self.server_dsn, f"create database {name}")
        dsn = support.with_database(self.server_dsn, name)
        self.created.append(dsn)
        if migrate:
            subprocess.run(
                [sys.executable, "-m", "clerk_sync", "migrate", "--database-url", dsn],
                cwd=self.scratch, env=clean_environment(), check=True, capture_output=True,
            )  # fmt: skip
        return dsn

    def close(self) -> None:
        for dsn in self.created:
            with contextlib.suppress(Exception):
                support.drop_database(self.server_dsn, dsn)
        self.created.clear()


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def backend_pids(server_dsn: str, dsn: str) -> set[int]:
    rows = support.fetch(
        server_dsn, "select pid from pg_stat_activity where datname = $1", database_name(dsn)
    )
    return {row["pid"] for row in rows}


def cpu_seconds(pids: set[int]) -> dict[int, float]:
    spent: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            spent[pid] = times.user + times.system
    return spent


def rows_stored(dsn: str, table: str) -> int:
    """Rows in `table` (users, organizations, organization_memberships: clerk-sync's in schema
    public, a reference's its own of the same name)."""
    return int(support.fetch(dsn, f"select count(*) as n from {table}")[0]["n"])


def custom_columns_held(dsn: str) -> dict[str, int]:
    """How many users hold a value in each custom column of bench/columns.toml (plan: other
    than its default), of how many."""
    [row] = support.fetch(
        dsn,
        "select count(*) as users, count(role) as role, "
        "count(*) filter (where plan <> 'free') as plan, count(credits) as credits "
        "from public.users",
    )
    return {k: int(v) for k, v in row.items()}


def server_version(server_dsn: str) -> str:
    return str(support.fetch(server_dsn, "show server_version")[0]["server_version"])


# --- processes --------------------------------------------------------------------------------


class Server:
    """One server process (and whatever it forks) in a session of its own, output to a log."""

    def __init__(
        self, target: Target, env: dict[str, str], scratch: Path, log_name: str | None = None
    ) -> None:
        self.target = target
        self.port = support.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / (log_name or f"{target.name}.log")
        full_env = clean_environment(
            **dict(target.env), **env, HOST="127.0.0.1", PORT=str(self.port)
        )
        if target.name == "express":
            full_env["NODE_ENV"] = "production"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                target.argv(self.port), cwd=target.cwd or scratch, env=full_env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.target.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    conn.request("GET", self.target.ready_path)
                    if conn.getresponse().status < 500:
                        return
                finally:
                    conn.close()
            time.sleep(0.05)
        raise TimeoutError(f"{self.target.name} was not ready in {timeout} s:\n{self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds({p.pid for p in self.processes()}).values())

    def rss_bytes(self) -> int:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it is still there after 15 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # anything it forked that outlived it


@contextlib.contextmanager
def running(target: Target, env: dict[str, str], scratch: Path) -> Iterator[Server]:
    server = Server(target, env, scratch)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
