"""Session sync in REST mode: the row read through PostgREST (`GET /rest/v1/users`) as the
service role, on a Supabase-like database behind the PostgREST stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from clerk_sync.app import create_app_from_settings
from clerk_sync.events import parse_event
from clerk_sync.session_route import SYNC_PATH
from clerk_sync.settings import Settings
from clerk_sync.storage import StoredUser
from clerk_sync.storage.postgres import PostgresStore
from clerk_sync.storage.rest import RestStore
from tests import clerk_standin, support
from tests.postgrest_standin import SERVICE_ROLE_KEY, PostgrestStandin
from tests.session_keys import KeyPair, jwks
from tests.test_rest import postgrest, supabase_db

__all__ = ["postgrest", "supabase_db"]  # the fixtures, shared with tests/test_rest.py

PAIR = KeyPair("ins_rest1")


@pytest.fixture
def rest_db(supabase_db: str, postgrest: PostgrestStandin) -> str:
    support.execute(supabase_db, support.CLEAN_SQL)
    postgrest.delay, postgrest.down = 0.0, False
    postgrest.requests.clear()
    return supabase_db


def _read_both(dsn: str, url: str, user_id: str) -> tuple[StoredUser | None, StoredUser | None]:
    async def go() -> tuple[StoredUser | None, StoredUser | None]:
        direct = await PostgresStore.open(dsn)
        rest = RestStore(url, SERVICE_ROLE_KEY)
        try:
            return await direct.read_user(user_id), await rest.read_user(user_id)
        finally:
            await direct.close()
            await rest.close()

    result: tuple[StoredUser | None, StoredUser | None] = support.run(go())
    return result


def test_both_backends_read_the_same_row(rest_db: str, postgrest: PostgrestStandin) -> None:
    event = support.user_event(
        "user.created",
        "user_both",
        1_700_000_123_456,
        email="both@example.com",
        last_sign_in_at=1_700_000_100_001,
        public_metadata={"plan": "pro", "n": [1, 2]},
    )

    async def write() -> None:
        store = await PostgresStore.open(rest_db)
        try:
            await store.apply("msg_both", parse_event(support.dumps(event)))
        finally:
            await store.close()

    support.run(write())
    direct, rest = _read_both(rest_db, postgrest.url, "user_both")
    assert direct is not None and rest is not None
    assert rest.row == direct.row
    assert rest.row["public_metadata"] == {"plan": "pro", "n": [1, 2]}
    assert rest.row["updated_at"].timestamp() == 1_700_000_123.456
    # Direct mode also knows when the delivery arrived (the inbox); REST mode, the version.
    assert direct.synced_at is not None and rest.synced_at == rest.row["updated_at"]
    assert direct.synced_at > rest.synced_at
    assert _read_both(rest_db, postgrest.url, "user_nobody") == (None, None)


@pytest.fixture
def clerk() -> Iterator[clerk_standin.StandIn]:
    standin = clerk_standin.StandIn(jwks=jwks(PAIR))
    with clerk_standin.running(standin):
        yield standin


def rest_settings(
    postgrest: PostgrestStandin, clerk: clerk_standin.StandIn, tmp_path: Path, **more: Any
) -> Settings:
    return Settings(
        webhook_secret=support.make_secret()[0],
        supabase_url=postgrest.url,
        supabase_service_role_key=SERVICE_ROLE_KEY,
        data_dir=tmp_path,
        clerk_secret_key=clerk.secret_key,
        clerk_api_url=clerk.url,
        **more,
    )


def test_the_route_in_rest_mode(
    rest_db: str, postgrest: PostgrestStandin, clerk: clerk_standin.StandIn, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    user = support.user_event("user.created", "user_rest", now - 3_600_000, first_name="Rhea")
    clerk.users = [user["data"]]
    with TestClient(create_app_from_settings(rest_settings(postgrest, clerk, tmp_path))) as c:
        headers = {"authorization": f"Bearer {PAIR.token('user_rest')}"}
        first = c.post(SYNC_PATH, headers=headers)
        second = c.post(SYNC_PATH, headers=headers)
        support.execute(rest_db, "update public.users set deleted_at = now()")
        deleted = c.post(SYNC_PATH, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["user"]["first_name"] == "Rhea"
    assert second.json() == first.json()
    assert clerk.user_fetches("user_rest") == 1
    assert deleted.status_code == 410
    users_reads = [path for path, _, _ in postgrest.requests if path == "/rest/v1/users"]
    assert len(users_reads) == 4  # before and after the write, then one per later call


def test_supabase_down_answers_503(
    rest_db: str, postgrest: PostgrestStandin, clerk: clerk_standin.StandIn, tmp_path: Path
) -> None:
    postgrest.down = True
    with TestClient(create_app_from_settings(rest_settings(postgrest, clerk, tmp_path))) as c:
        response = c.post(SYNC_PATH, headers={"authorization": f"Bearer {PAIR.token()}"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
