"""Fixtures: one real PostgreSQL server for the session and a fresh, migrated database on it.

Which server: CLERK_SYNC_TEST_EMBEDDED=1 forces an embedded one; CLERK_SYNC_TEST_DATABASE_URL
names one; otherwise the shared server at 127.0.0.1:5432 when it answers, else an embedded one.
CI runs the suite both ways.

Every test is also marked with what it needs, so a reader (and `pytest -m`) can tell them apart:
`unit` needs no database, `database` uses one of the fixtures below, `servers` starts processes
or database servers of its own (tests/faults/, the `slow` ones, and any test that starts a
`clerk-sync serve`, a throwaway PostgreSQL or PgBouncer). `pytest -m unit` runs in seconds.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from clerk_sync.app import create_app_from_settings
from clerk_sync.settings import Settings
from tests import support

DATABASE_FIXTURES = frozenset({"pg_server", "database_url", "db"})
# What a test calls to start a server of its own (see tests/support.py and tests/faults/).
_STARTS_SERVERS = (
    "running_server(",
    "ServerProcess(",
    "ThrowawayPostgres(",
    "fleet(",
    "start_server(",
    "pgbouncer",
)


def _starts_servers(item: pytest.Item) -> bool:
    if item.get_closest_marker("slow") or "faults" in item.path.parts:
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function else ""
    except (OSError, TypeError):
        return False
    return any(call in source for call in _STARTS_SERVERS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_servers(item):
            item.add_marker(pytest.mark.servers)
        elif DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.database)
        else:
            item.add_marker(pytest.mark.unit)


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


CUSTOM_COLUMNS_FILE = Path(__file__).parent / "fixtures" / "custom-columns.toml"
# Each custom column of CUSTOM_COLUMNS_FILE agrees with what it is taken from: both come from the
# newest applied event (a row where one does not is a custom column the write path left behind).
CUSTOM_COLUMNS_DISAGREE_SQL = """
select 'users ' || id from public.users
where given_name is distinct from first_name
   or role is distinct from coalesce(clerk_sync.to_text(public_metadata #> '{role}'), 'member')
   or tags is distinct from coalesce(clerk_sync.to_text_array(public_metadata #> '{tags}'), '{}')
union all
select 'organizations ' || id from public.organizations where org_name is distinct from name
union all
select 'organization_memberships ' || id from public.organization_memberships
where member_role is distinct from role
"""


@pytest.fixture(scope="session")
def columns_database_url(pg_server: str) -> Iterator[str]:
    """A migrated database of this session's own, with the custom columns of
    tests/fixtures/custom-columns.toml."""
    from clerk_sync.custom_columns import load_custom_columns

    dsn = support.create_database(pg_server, migrate=False)
    try:
        support.migrate_database(dsn, load_custom_columns(CUSTOM_COLUMNS_FILE))
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


@pytest.fixture
def columns_db(columns_database_url: str) -> Iterator[str]:
    """That database, emptied for this test; afterwards, every custom column agrees with what
    it is taken from."""
    support.execute(columns_database_url, support.CLEAN_SQL)
    yield columns_database_url
    assert support.fetch(columns_database_url, CUSTOM_COLUMNS_DISAGREE_SQL) == []


@pytest.fixture
def secret() -> tuple[str, bytes]:
    return support.make_secret()


@pytest.fixture
def client(db: str, secret: tuple[str, bytes], tmp_path: Path) -> Iterator[TestClient]:
    """The app in-process, on the session's database, with a fresh signing secret."""
    settings = Settings(webhook_secret=secret[0], database_url=db, data_dir=tmp_path)
    with TestClient(create_app_from_settings(settings, db)) as test_client:
        yield test_client
