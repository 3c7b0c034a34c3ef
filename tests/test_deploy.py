"""The deployment entry points, run for real on the test database: the Vercel function as
Vercel's Python runtime imports it, and the FastAPI and Flask examples."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from clerk_sync.app import WEBHOOK_PATH
from tests import support

ROOT = Path(__file__).resolve().parents[1]
VERCEL_ENTRY = ROOT / "api" / "webhooks" / "clerk.py"
CONFIG_PREFIXES = ("CLERK_", "DATABASE_URL", "SUPABASE_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update(extra)
    return env


# Imports the entry by its file path, as Vercel does, in a fresh interpreter, then posts a
# signed user.created through the given ASGI client; prints what came back.
VERCEL_DRIVER = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys, time
    import httpx
    from starlette.testclient import TestClient
    from clerk_sync.verify import sign

    spec = importlib.util.spec_from_file_location("vercel_entry", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    key, user_id, how = bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
    body = json.dumps({"object": "event", "type": "user.created", "timestamp": 1,
                       "data": {"object": "user", "id": user_id, "first_name": "Vera",
                                "email_addresses": [], "updated_at": 1700000000000}}).encode()
    ts = int(time.time())
    headers = {"content-type": "application/json", "svix-id": "msg_" + user_id,
               "svix-timestamp": str(ts), "svix-signature": sign(key, "msg_" + user_id, ts, body)}
    answers = []
    if how == "lifespan":  # a server that sends ASGI lifespan events, as Vercel's does now
        with TestClient(module.app) as client:
            for r in (client.post("/api/webhooks/clerk", content=body, headers=headers),
                      client.get("/readyz")):
                answers.append([r.status_code, r.json()])
    else:  # one that never does, as older Vercel Python runtimes
        async def go():
            transport = httpx.ASGITransport(app=module.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vercel") as c:
                for r in (await c.post("/api/webhooks/clerk", content=body, headers=headers),
                          await c.get("/readyz")):
                    answers.append([r.status_code, r.json()])
        asyncio.run(go())
    print(json.dumps(answers))
    """
)


def run_vercel_entry(
    tmp_path: Path, env: dict[str, str], key: bytes, user_id: str, how: str
) -> list[list[object]]:
    result = subprocess.run(
        [sys.executable, "-c", VERCEL_DRIVER, str(VERCEL_ENTRY), key.hex(), user_id, how],
        cwd=tmp_path,  # a directory without .env: configured by the environment alone
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers: list[list[object]] = json.loads(result.stdout.splitlines()[-1])
    return answers


@pytest.mark.parametrize("how", ["lifespan", "no-lifespan"])
def test_the_vercel_entry_applies_a_signed_event(
    tmp_path: Path, db: str, secret: tuple[str, bytes], how: str
) -> None:
    user_id = f"user_vercel_{how.replace('-', '_')}"
    env = {"DATABASE_URL": db, "CLERK_WEBHOOK_SECRET": secret[0]}
    answers = run_vercel_entry(tmp_path, env, secret[1], user_id, how)
    assert answers == [[200, {"outcome": "applied"}], [200, {"status": "ready"}]]
    rows = support.fetch(db, "select first_name from public.users where id = $1", user_id)
    assert rows == [{"first_name": "Vera"}]


def test_the_vercel_entry_without_a_secret_answers_503_naming_it(
    tmp_path: Path, db: str, secret: tuple[str, bytes]
) -> None:
    answers = run_vercel_entry(tmp_path, {"DATABASE_URL": db}, secret[1], "user_x", "lifespan")
    status, body = answers[0]
    assert status == 503
    assert isinstance(body, dict) and "CLERK_WEBHOOK_SECRET" in body["error"]
    assert support.fetch(db, "select id from public.users") == []


def test_vercel_config_points_at_the_entry() -> None:
    assert (
        VERCEL_ENTRY.relative_to(ROOT).as_posix()
        == "api" + WEBHOOK_PATH.removeprefix("/api") + ".py"
    )
    config = json.loads((ROOT / "vercel.json").read_text())
    assert "api/webhooks/clerk.py" in config["functions"]
    assert config["functions"]["api/webhooks/clerk.py"]["maxDuration"] <= 15  # Svix waits 15 s
    requirements = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert requirements == ["."]  # this project, with pyproject.toml's dependencies


# --- the examples -------------------------------------------------------------------------------


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db: str, secret: tuple[str, bytes]
) -> Iterator[bytes]:
    """The environment an example reads at import: the test database and a signing secret."""
    for name in list(os.environ):
        if name.startswith(CONFIG_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", db)
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", secret[0])
    monkeypatch.chdir(tmp_path)
    yield secret[1]


def test_the_fastapi_example(configured: bytes, db: str) -> None:
    pytest.importorskip("fastapi", reason="fastapi is in the test extra: pip install -e '.[test]'")
    from starlette.testclient import TestClient

    example = load_example("fastapi_app")
    body = support.dumps(support.user_event("user.created", "user_fastapi", 1_700_000_000_001))
    with TestClient(example.app) as client:
        assert client.get("/hello").json() == {"hello": "world"}  # the app's own route
        response = client.post(
            WEBHOOK_PATH, content=body, headers=support.signed_headers(configured, body)
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": "applied"}
        assert client.get("/readyz").status_code == 200
        unsigned = client.post(WEBHOOK_PATH, content=body, headers={"svix-id": "msg_1"})
        assert unsigned.status_code == 400
    assert support.fetch(db, "select id from public.users") == [{"id": "user_fastapi"}]


def test_the_flask_example(configured: bytes, db: str) -> None:
    pytest.importorskip("flask", reason="flask is in the test extra: pip install -e '.[test]'")
    example = load_example("flask_app")
    try:
        client = example.app.test_client()
        body = support.dumps(support.user_event("user.created", "user_flask", 1_700_000_000_001))
        headers = support.signed_headers(configured, body)
        response = client.post(WEBHOOK_PATH, data=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.get_json() == {"outcome": "applied"}
        again = client.post(WEBHOOK_PATH, data=body, headers=headers)
        assert again.get_json() == {"outcome": "duplicate"}

        forged = dict(headers, **{"svix-signature": "v1,AAAA"})
        assert client.post(WEBHOOK_PATH, data=body, headers=forged).status_code == 401

        junk = b"not json"
        response = client.post(
            WEBHOOK_PATH, data=junk, headers=support.signed_headers(configured, junk)
        )
        assert response.status_code == 400
        assert response.headers["webhook-delivery"] == "abort-message"
    finally:
        example.run(example.store.close())
        example.loop.call_soon_threadsafe(example.loop.stop)
    assert support.fetch(db, "select id, first_name from public.users") == [
        {"id": "user_flask", "first_name": "Ada"}
    ]
