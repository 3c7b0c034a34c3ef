"""Fixtures: one real PostgreSQL server for the session and a fresh, migrated database on it.

Which server: CLERK_SYNC_TEST_EMBEDDED=1 forces an embedded one; CLERK_SYNC_TEST_DATABASE_URL
names one; otherwise the shared server at 127.0.0.1:5432 when it answers, else an embedded one.
CI runs the suite both ways.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from clerk_sync.app import create_app_from_settings
from clerk_sync.settings import Settings
from tests import support


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a PostgreSQL server's maintenance database."""
    if os.environ.get("CLERK_SYNC_TEST_EMBEDDED") != "1":
        dsn = os.environ.get("CLERK_SYNC_TEST_DATABASE_URL", support.SHARED_SERVER_DSN)
        if support.server_reachable(dsn):
            yield dsn
            return
    server = support.ThrowawayPostgres(tmp_path_factory.mktemp("embedded"))
    try:
        yield server.dsn
    finally:
        server.close()


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    """A migrated database of this test session's own."""
    dsn = support.create_database(pg_server)
    try:
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


@pytest.fixture
def db(database_url: str) -> str:
    """The session's database, emptied for this test."""
    support.execute(database_url, support.CLEAN_SQL)
    return database_url


@pytest.fixture
def secret() -> tuple[str, bytes]:
    return support.make_secret()


@pytest.fixture
def client(db: str, secret: tuple[str, bytes], tmp_path: Path) -> Iterator[TestClient]:
    """The app in-process, on the session's database, with a fresh signing secret."""
    settings = Settings(webhook_secret=secret[0], database_url=db, data_dir=tmp_path)
    with TestClient(create_app_from_settings(settings, db)) as test_client:
        yield test_client
