"""The HTTP routes: health, readiness, metrics, and JSON errors for unknown routes and methods."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from tests import support


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_readyz_when_migrated(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_on_an_unmigrated_database(pg_server: str, secret: tuple[str, bytes]) -> None:
    from clerk_sync.app import create_app_from_settings
    from clerk_sync.settings import Settings

    dsn = support.create_database(pg_server, migrate=False)
    try:
        settings = Settings(webhook_secret=secret[0], database_url=dsn)
        with TestClient(create_app_from_settings(settings, dsn)) as c:
            response = c.get("/readyz")
            assert response.status_code == 503
            assert "migrate" in response.json()["error"]
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
