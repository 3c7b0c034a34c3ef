"""/readyz's probe: many concurrent or rapid asks cost one probe of the database, the public
answer carries no internal text, and the reason is logged once per change, not per probe."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from clerk_sync.app import create_app
from clerk_sync.readiness import PROBE_EVERY_SECONDS, Readiness
from clerk_sync.settings import PostgresBackend, Settings
from clerk_sync.storage import Store, open_store
from clerk_sync.verify import Verifier
from tests import support


async def ask_readyz(dsn: str, secret: str, tmp_path: Path, asks: list[int]) -> tuple[list, int]:
    """/readyz asked in waves (`asks`: how many at once, each wave after the previous), on the
    app over a real database; the answers, and how many times the database was probed."""
    settings = Settings(webhook_secret=secret, database_url=dsn, data_dir=tmp_path)
    store = await open_store(settings, PostgresBackend(dsn))
    probes = 0
    probe_database = store.not_ready_reason

    async def counted() -> str | None:  # the real probe, counted
        nonlocal probes
        probes += 1
        return await probe_database()

    store.not_ready_reason = counted  # type: ignore[method-assign]

    async def opened() -> Store:
        return store

    app = create_app(verifier=Verifier(settings.signing_keys), open_store=opened)
    answers = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clerk-sync") as c:
            for wave in asks:
                got = await asyncio.gather(*(c.get("/readyz") for _ in range(wave)))
                answers += [(r.status_code, r.json()) for r in got]
    return answers, probes


def test_concurrent_and_rapid_probes_cost_one_database_probe(
    db: str, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    answers, probes = support.run(ask_readyz(db, secret[0], tmp_path, [50, 1, 1, 1, 20]))
    assert answers == [(200, {"status": "ready"})] * 73
    assert probes == 1


def test_not_ready_says_so_without_internal_text_and_logs_why(
    pg_server: str, secret: tuple[str, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        with caplog.at_level(logging.INFO):
            answers, probes = support.run(ask_readyz(dsn, secret[0], tmp_path, [30, 5]))
    finally:
        support.drop_database(pg_server, dsn)
    assert answers == [(503, {"error": "not ready"})] * 35
    assert probes == 1
    [logged] = [r.getMessage() for r in caplog.records if r.name == "clerk_sync.readiness"]
    assert logged.startswith("not ready: schema at version 0") and "migrate" in logged


def test_the_reason_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    findings = iter(["database unreachable: OSError"] * 3 + [None] * 2 + ["schema at version 1"])

    async def probe() -> str | None:
        return next(findings)

    async def go() -> list[str | None]:
        readiness = Readiness(probe, ttl=0)  # every ask probes
        return [await readiness.not_ready_reason() for _ in range(6)]

    with caplog.at_level(logging.INFO, logger="clerk_sync.readiness"):
        said = asyncio.run(go())
    assert said == [*["database unreachable: OSError"] * 3, None, None, "schema at version 1"]
    assert [r.getMessage() for r in caplog.records] == [
        "not ready: database unreachable: OSError",
        "ready again",
        "not ready: schema at version 1",
    ]


def test_a_probe_older_than_its_time_is_made_again() -> None:
    now = [0.0]
    probes = []

    async def probe() -> str | None:
        probes.append(now[0])
        return None

    async def go() -> None:
        readiness = Readiness(probe, clock=lambda: now[0])
        for t in (0.0, 0.5, PROBE_EVERY_SECONDS - 0.01, PROBE_EVERY_SECONDS, 1.5, 2.5):
            now[0] = t
            assert await readiness.not_ready_reason() is None

    asyncio.run(go())
    assert probes == [0.0, PROBE_EVERY_SECONDS, 2.5]
