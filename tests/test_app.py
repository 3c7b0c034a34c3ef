"""The HTTP routes: health, readiness, metrics, and JSON errors for unknown routes and methods."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Mount
from starlette.testclient import TestClient

from clerk_sync.app import create_app_from_settings
from clerk_sync.settings import Settings
from tests import support


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_readyz_when_migrated(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_on_an_unmigrated_database(
    pg_server: str, secret: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    from clerk_sync.app import create_app_from_settings
    from clerk_sync.settings import Settings

    dsn = support.create_database(pg_server, migrate=False)
    try:
        settings = Settings(webhook_secret=secret[0], database_url=dsn)
        with TestClient(create_app_from_settings(settings, dsn)) as c:
            response = c.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"error": "not ready"}  # no internal text in public
            assert "migrate" in support.not_ready_logged(caplog)
    finally:
        support.drop_database(pg_server, dsn)


def test_metrics_count_deliveries(client: TestClient, secret: tuple[str, bytes]) -> None:
    body = support.dumps(support.user_event("user.created", "user_metrics1", 1_700_000_000_001))
    assert (
        client.post(
            "/api/webhooks/clerk", content=body, headers=support.signed_headers(secret[1], body)
        ).status_code
        == 200
    )
    text = client.get("/metrics").text
    assert 'clerk_sync_deliveries_total{outcome="applied",type="user.created"}' in text
    assert "clerk_sync_delivery_duration_seconds_bucket" in text
    assert "clerk_sync_requests_in_flight 0.0" in text
    (last_applied,) = [
        line for line in text.splitlines()
        if line.startswith("clerk_sync_last_applied_timestamp_seconds ")
    ]  # fmt: skip
    assert abs(float(last_applied.split()[1]) - time.time()) < 60
    for name in ("verification_failures", "database_errors", "dead_letters"):
        assert f"# TYPE clerk_sync_{name}_total counter" in text


def test_wrong_method_and_unknown_route_answer_json(client: TestClient) -> None:
    response = client.get("/api/webhooks/clerk")
    assert response.status_code == 405
    assert "error" in response.json()
    response = client.post("/nope")
    assert response.status_code == 404
    assert "error" in response.json()


def test_a_client_that_leaves_mid_body_gets_no_answer_and_nothing_is_written(
    client: TestClient, db: str
) -> None:
    sent: list[Any] = []
    messages = [
        {"type": "http.request", "body": b'{"type": "user.cre', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/webhooks/clerk",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
    }
    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    assert sent == []
    assert support.fetch(db, "select count(*) as n from clerk_sync.inbox") == [{"n": 0}]


def test_mounted_under_a_prefix_the_webhook_goes_through_the_router(
    db: str, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    settings = Settings(webhook_secret=secret[0], database_url=db, data_dir=tmp_path)
    inner = create_app_from_settings(settings, db)
    outer = Starlette(
        routes=[Mount("/clerk", app=inner)],
        lifespan=lambda app: inner.router.lifespan_context(inner),
    )
    body = support.dumps(support.user_event("user.created", "user_mounted", 1))
    with TestClient(outer) as test_client:
        response = test_client.post(
            "/clerk/api/webhooks/clerk",
            content=body,
            headers=support.signed_headers(secret[1], body),
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": "applied"}
        assert test_client.get("/clerk/api/webhooks/clerk").status_code == 405


def test_middleware_that_edits_an_answers_headers_leaves_the_next_answer_alone(
    db: str, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    settings = Settings(webhook_secret=secret[0], database_url=db, data_dir=tmp_path)
    inner = create_app_from_settings(settings, db)

    async def tagging(scope: Any, receive: Any, send: Any) -> None:
        async def tag(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-tag", b"1"))  # in place, as GZip's does
            await send(message)

        await inner(scope, receive, tag)

    with TestClient(cast(Starlette, tagging)) as test_client:
        for _ in range(3):
            response = test_client.post("/api/webhooks/clerk", content=b"{}")
            assert response.status_code == 400
            assert response.headers.get_list("x-tag") == ["1"]


def test_middleware_added_to_the_app_sees_the_webhook_too(
    db: str, secret: tuple[str, bytes], tmp_path: Path
) -> None:
    settings = Settings(webhook_secret=secret[0], database_url=db, data_dir=tmp_path)
    app = create_app_from_settings(settings, db)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["hooks.example.com"])
    body = support.dumps(support.user_event("user.created", "user_hosted", 1))
    with TestClient(app, base_url="http://elsewhere.example.org") as test_client:
        response = test_client.post(
            "/api/webhooks/clerk", content=body, headers=support.signed_headers(secret[1], body)
        )
        assert response.status_code == 400
    assert support.fetch(db, "select count(*) as n from public.users") == [{"n": 0}]


def test_metrics_count_organization_and_membership_deliveries_by_type(
    client: TestClient, secret: tuple[str, bytes]
) -> None:
    """Each organization and membership type is its own label (not "other"), with its outcome."""
    from prometheus_client import REGISTRY

    def count(event_type: str, outcome: str) -> float:
        labels = {"type": event_type, "outcome": outcome}
        return REGISTRY.get_sample_value("clerk_sync_deliveries_total", labels) or 0.0

    t = 1_716_883_200_000
    deliveries = [
        (support.organization_event("organization.created", "org_m1", t), "applied"),
        (support.organization_event("organization.updated", "org_m1", t), "stale"),
        (
            support.membership_event(
                "organizationMembership.created", "orgmem_m1", "org_m1", "user_m1", t
            ),
            "applied",
        ),
        (
            support.membership_event(
                "organizationMembership.deleted", "orgmem_m1", "org_m1", "user_m1", t
            ),
            "applied",
        ),
        (support.organization_event("organization.deleted", "org_m1", 0), "applied"),
    ]
    before = {(e["type"], o): count(e["type"], o) for e, o in deliveries}
    for event, outcome in deliveries:
        body = support.dumps(event)
        headers = support.signed_headers(secret[1], body)
        response = client.post("/api/webhooks/clerk", content=body, headers=headers)
        assert response.json() == {"outcome": outcome}, (event["type"], response.text)
    for (event_type, outcome), was in before.items():
        assert count(event_type, outcome) == was + 1, (event_type, outcome)
    text = client.get("/metrics").text
    assert 'clerk_sync_deliveries_total{outcome="applied",type="organization.deleted"}' in text
