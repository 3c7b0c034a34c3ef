"""Prometheus metrics. Labels are bounded sets: event types from Clerk's spec (else "other"),
outcomes, and verification failure reasons; never a user or message id."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

DELIVERIES = Counter(
    "clerk_sync_deliveries",
    "Webhook deliveries answered, by event type and outcome.",
    ["type", "outcome"],
)
VERIFICATION_FAILURES = Counter(
    "clerk_sync_verification_failures",
    "Deliveries refused before verification succeeded, by reason.",
    ["reason"],
)
CUSTOM_COLUMN_UNCONVERTIBLE = Counter(
    "clerk_sync_custom_column_unconvertible",
    "Applied events whose value for a custom column (clerk-sync.toml) did not convert to its "
    "type, so the column got its default.",
    ["table", "column"],
)
DATABASE_ERRORS = Counter(
    "clerk_sync_database_errors",
    "Deliveries answered 503 because the database was unavailable or too slow.",
)


class Live:
    """What every delivery updates, kept as plain attributes (no lock, one event loop) and read
    when /metrics is scraped."""

    in_flight = 0
    last_applied = 0.0


LIVE = Live()

IN_FLIGHT = Gauge(
    "clerk_sync_requests_in_flight",
    "Webhook deliveries being handled right now.",
)
IN_FLIGHT.set_function(lambda: LIVE.in_flight)
DEAD_LETTERS = Counter(
    "clerk_sync_dead_letters",
    "Verified deliveries that can never apply (not a Clerk event), kept in clerk_sync.inbox.",
)
LAST_APPLIED = Gauge(
    "clerk_sync_last_applied_timestamp_seconds",
    "When this process last applied a delivery (alert on time() minus this growing).",
)
LAST_APPLIED.set_function(lambda: LIVE.last_applied)
LATENCY = Histogram(
    "clerk_sync_delivery_duration_seconds",
    "Time from request to answer for verified deliveries.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
# Session sync (POST /api/users/sync).
SESSION_SYNCS = Counter(
    "clerk_sync_session_syncs",
    "POST /api/users/sync answers, by outcome: synced, deleted, unavailable, rate_limited, or "
    "why the token was refused.",
    ["outcome"],
)
SESSION_SYNC_FETCHES = Counter(
    "clerk_sync_session_sync_fetches",
    "Users fetched from Clerk's Backend API by session sync, by result: ok, not_found, "
    "rate_limited, error.",
    ["result"],
)

HTTP_REFUSALS = Counter(
    "clerk_sync_http_refusals",
    "Requests and connections that `serve`'s HTTP server answered or closed itself, before the "
    "app: header_timeout (408), header_too_large (431), too_many_connections (503), "
    "body_budget (503), idle_evicted (closed to make room).",
    ["reason"],
)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
