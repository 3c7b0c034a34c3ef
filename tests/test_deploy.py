"""The deployment entry points, run for real on the test database: the Vercel function as
Vercel's Python runtime imports it, and the FastAPI and Flask examples."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import REGISTRY

from clerk_sync import create_app_from_settings, load_settings
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


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"entry_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> ModuleType:
    return load_module(ROOT / "examples" / f"{name}.py")


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


def test_the_flask_example_keeps_a_dead_letter(configured: bytes, db: str) -> None:
    junk = b"verified, but not a Clerk event"
    with flask_client() as post:
        status, _, headers = post(junk, support.signed_headers(configured, junk, "msg_dead"))
    assert status == 400
    assert headers["webhook-delivery"] == "abort-message"
    rows = support.fetch(db, "select svix_id, outcome, raw_body from clerk_sync.inbox")
    assert rows == [{"svix_id": "msg_dead", "outcome": "invalid", "raw_body": junk}]


# --- every entry point, one table of answers --------------------------------------------------

BODY_LIMIT = 64 * 1024
NEWER = support.dumps(support.user_event("user.created", "user_table", 1_700_000_000_002))
OLDER = support.dumps(support.user_event("user.updated", "user_table", 1_700_000_000_001))
NOT_CLERK = b"verified, but not a Clerk event"
TOO_LARGE = NEWER + b" " * (BODY_LIMIT + 1 - len(NEWER))


@dataclass(frozen=True)
class Case:
    name: str
    deliveries: tuple[tuple[bytes, str], ...]  # (body, svix-id), sent in order, signed
    status: int  # of the answer to the last one
    outcome: str  # in the answer's body (or its log line, for a refusal)
    inbox: tuple[tuple[str, str], ...] = ()  # (svix-id, outcome) afterwards
    headers: tuple[tuple[str, str], ...] = ()  # in the last answer
    forged: bool = False  # the last delivery signed with another key
    database_down: bool = False


CASES = [
    Case("valid", ((NEWER, "msg_1"),), 200, "applied", (("msg_1", "applied"),)),
    Case(
        "duplicate",
        ((NEWER, "msg_1"), (NEWER, "msg_1")),
        200,
        "duplicate",
        (("msg_1", "applied"),),
    ),
    Case(
        "stale",
        ((NEWER, "msg_1"), (OLDER, "msg_2")),
        200,
        "stale",
        (("msg_1", "applied"), ("msg_2", "stale")),
    ),
    Case("bad-signature", ((NEWER, "msg_1"),), 401, "no_matching_signature", forged=True),
    Case(
        "not-a-clerk-event",
        ((NOT_CLERK, "msg_3"),),
        400,
        "invalid",
        (("msg_3", "invalid"),),
        headers=(("webhook-delivery", "abort-message"),),
    ),
    Case("body-too-large", ((TOO_LARGE, "msg_4"),), 413, "too_large"),
    Case(
        "database-down",
        ((NEWER, "msg_1"),),
        503,
        "unavailable",
        headers=(("retry-after", "5"),),
        database_down=True,
    ),
]

# Posts one delivery; returns the answer's status, JSON body and headers.
Post = Callable[[bytes, dict[str, str]], tuple[int, Any, Mapping[str, str]]]


@contextlib.contextmanager
def asgi_client(app: Any) -> Iterator[Post]:
    from starlette.testclient import TestClient

    with TestClient(app) as client:

        def post(body: bytes, headers: dict[str, str]) -> tuple[int, Any, Mapping[str, str]]:
            response = client.post(WEBHOOK_PATH, content=body, headers=headers)
            return response.status_code, response.json(), response.headers

        yield post


@contextlib.contextmanager
def flask_client() -> Iterator[Post]:
    pytest.importorskip("flask", reason="flask is in the test extra: pip install -e '.[test]'")
    example = load_example("flask_app")
    client = example.app.test_client()

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, Any, Mapping[str, str]]:
        response = client.post(WEBHOOK_PATH, data=body, headers=headers)
        return response.status_code, response.get_json(), response.headers

    try:
        yield post
    finally:
        example.run(example.store.close())
        example.loop.call_soon_threadsafe(example.loop.stop)


def fastapi_client() -> contextlib.AbstractContextManager[Post]:
    pytest.importorskip("fastapi", reason="fastapi is in the test extra: pip install -e '.[test]'")
    return asgi_client(load_example("fastapi_app").app)


ENTRY_POINTS: dict[str, Callable[[], contextlib.AbstractContextManager[Post]]] = {
    "serve": lambda: asgi_client(create_app_from_settings(load_settings())),
    "vercel": lambda: asgi_client(load_module(VERCEL_ENTRY).app),
    "fastapi": fastapi_client,
    "flask": flask_client,
}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_answers_the_same(
    entry: str,
    case: Case,
    configured: bytes,
    db: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CLERK_SYNC_MAX_BODY_BYTES", str(BODY_LIMIT))
    if case.database_down:  # nothing listens there
        monkeypatch.setenv(
            "DATABASE_URL", f"postgresql://postgres@127.0.0.1:{support.free_port()}/x"
        )
    caplog.set_level(logging.INFO, logger="clerk_sync.webhook")
    event_type = json.loads(case.deliveries[-1][0])["type"] if case.status == 200 else None
    counted_before = deliveries_counted(event_type, case.outcome)
    with ENTRY_POINTS[entry]() as post:
        for i, (body, svix_id) in enumerate(case.deliveries, 1):
            last = i == len(case.deliveries)
            key = support.make_secret()[1] if case.forged and last else configured
            status, content, headers = post(body, support.signed_headers(key, body, svix_id))
    assert status == case.status, content
    if status == 200:
        assert content == {"outcome": case.outcome}
    else:
        assert isinstance(content, dict) and isinstance(content.get("error"), str)
    for name, value in case.headers:
        assert headers.get(name) == value
    if not case.headers:
        assert "webhook-delivery" not in headers
    rows = support.fetch(db, "select svix_id, outcome from clerk_sync.inbox order by svix_id")
    assert tuple((r["svix_id"], r["outcome"]) for r in rows) == case.inbox
    expected_users = [{"id": "user_table"}] if case.status == 200 else []
    assert support.fetch(db, "select id from public.users") == expected_users
    # Counted and logged in one place: the same log line, whichever entry point.
    lines = [r.delivery for r in caplog.records if r.getMessage() == "delivery"]  # type: ignore[attr-defined]
    assert len(lines) == len(case.deliveries)
    assert (lines[-1]["status"], lines[-1]["outcome"]) == (case.status, case.outcome)
    if event_type:
        assert deliveries_counted(event_type, case.outcome) == counted_before + 1


def deliveries_counted(event_type: str | None, outcome: str) -> float:
    labels = {"type": event_type or "", "outcome": outcome}
    return REGISTRY.get_sample_value("clerk_sync_deliveries_total", labels) or 0.0


def test_the_flask_example_limits_the_body(
    configured: bytes, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flask", reason="flask is in the test extra: pip install -e '.[test]'")
    monkeypatch.setenv("CLERK_SYNC_MAX_BODY_BYTES", "4096")
    at_limit = NEWER + b" " * (4096 - len(NEWER))
    over = at_limit + b" "
    example = load_example("flask_app")
    try:
        assert example.app.config["MAX_CONTENT_LENGTH"] == 4096
        client = example.app.test_client()
        response = client.post(
            WEBHOOK_PATH, data=at_limit, headers=support.signed_headers(configured, at_limit)
        )
        assert (response.status_code, response.get_json()) == (200, {"outcome": "applied"})
        # Refused from its Content-Length, before the body is read.
        response = client.post(
            WEBHOOK_PATH, data=over, headers=support.signed_headers(configured, over)
        )
        assert response.status_code == 413 and "4096 bytes" in response.get_json()["error"]
        # Without a Content-Length (chunked): refused once it grows past the limit.
        response = client.post(
            WEBHOOK_PATH,
            input_stream=io.BytesIO(over),
            headers=support.signed_headers(configured, over),
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert response.status_code == 413 and "4096 bytes" in response.get_json()["error"]
    finally:
        example.run(example.store.close())
        example.loop.call_soon_threadsafe(example.loop.stop)
    assert support.fetch(db, "select count(*) as n from clerk_sync.inbox") == [{"n": 1}]
