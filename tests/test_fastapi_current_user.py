"""examples/fastapi_current_user.py, run for real: the FastAPI dependency "the current user,
from my database" on the test database and the Backend API stand-in."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import clerk_standin, support
from tests.session_keys import KeyPair, jwks
from tests.test_deploy import CONFIG_PREFIXES, load_example

PAIR = KeyPair("ins_fastapi1")


@pytest.fixture
def clerk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db: str
) -> Iterator[clerk_standin.StandIn]:
    """The environment the example reads at import, pointing at the stand-in."""
    standin = clerk_standin.StandIn(jwks=jwks(PAIR))
    with clerk_standin.running(standin):
        for name in list(os.environ):
            if name.startswith(CONFIG_PREFIXES):
                monkeypatch.delenv(name)
        monkeypatch.setenv("DATABASE_URL", db)
        monkeypatch.setenv("CLERK_SECRET_KEY", standin.secret_key)
        monkeypatch.setenv("CLERK_API_URL", standin.url)
        monkeypatch.chdir(tmp_path)
        yield standin


def test_the_current_user_dependency(clerk: clerk_standin.StandIn, db: str) -> None:
    pytest.importorskip("fastapi", reason="fastapi is in the test extra: pip install -e '.[test]'")
    from starlette.testclient import TestClient

    now = int(time.time() * 1000)
    user = support.user_event(
        "user.created",
        "user_fastapi_me",
        now - 600_000,
        email="me@example.com",
        first_name="Fay",
        public_metadata={"plan": "pro"},
    )["data"]
    clerk.users = [user]
    example = load_example("fastapi_current_user")
    with TestClient(example.app) as client:
        token = PAIR.token("user_fastapi_me")
        me = client.get("/me", headers={"authorization": f"Bearer {token}"})
        again = client.get("/me", headers={"authorization": f"Bearer {token}"})
        anonymous = client.get("/me")
        forged = client.get("/me", headers={"authorization": f"Bearer {KeyPair('x').token()}"})
        expired = PAIR.token("user_fastapi_me", exp=int(time.time()) - 60)
        late = client.get("/me", headers={"authorization": f"Bearer {expired}"})
        unknown = client.get(
            "/me", headers={"authorization": f"Bearer {PAIR.token('user_nobody')}"}
        )
        clerk.rate_limit_requests = {len(clerk.log) + 1}
        clerk.retry_after = "9"
        limited = client.get(
            "/me", headers={"authorization": f"Bearer {PAIR.token('user_limited')}"}
        )

    assert me.status_code == 200, me.text
    assert me.json()["id"] == "user_fastapi_me"
    assert me.json()["email"] == "me@example.com"
    assert me.json()["name"] == "Fay Lovelace"
    assert me.json()["plan"] == "pro"
    assert again.json() == me.json()
    assert clerk.user_fetches("user_fastapi_me") == 1
    assert support.fetch(db, "select id from public.users") == [{"id": "user_fastapi_me"}]
    assert (anonymous.status_code, forged.status_code, late.status_code) == (401, 401, 401)
    assert late.json() == {"detail": "the session token has expired"}
    assert unknown.status_code == 410
    assert limited.status_code == 503
    assert limited.headers["retry-after"] == "9"
