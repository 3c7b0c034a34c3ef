"""POST /api/users/sync: the caller's row, for the app's first page load.

read the bearer token → verify it → sync the user (session_sync.py) → answer the row.

| case                                                    | status              |
|---------------------------------------------------------|---------------------|
| verified token, user synced                             | 200 {"user": {…}}   |
| no token, malformed, bad signature, expired, not yet valid, azp not allowed | 401 |
| more failed verifications from one client than the limit | 429                |
| the user was deleted (or Clerk has no such user)        | 410                 |
| Clerk's API or the database unavailable or rate-limited | 503 + Retry-After   |

The route is public, so a refusal costs little: no database or Clerk call before the token is
verified, and nothing of the token is logged. Browsers calling from the origins in
CLERK_AUTHORIZED_PARTIES get CORS headers (preflight included) from Starlette's CORSMiddleware,
wrapped around this route only: the webhook's fast path stays free of middleware.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from clerk_sync import metrics
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.session_sync import SessionSync, SyncUnavailable, UserGone
from clerk_sync.session_tokens import InvalidSessionToken
from clerk_sync.webhook import send_json

SYNC_PATH = "/api/users/sync"
# How long a browser may reuse a preflight answer.
PREFLIGHT_MAX_AGE_SECONDS = 600

log = logging.getLogger("clerk_sync.session")

Answer = tuple[int, dict[str, Any], dict[str, str] | None, str]


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer …` header, else None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class SessionSyncRoute:
    """The ASGI app for POST /api/users/sync."""

    def __init__(self, sync: SessionSync, limiter: FailedVerificationLimiter) -> None:
        self.sync = sync
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            status, content, headers, outcome = await self._handle(scope)
        except Exception:
            # A failure nobody foresaw (a bug, or an HTTP client error of an unexpected kind):
            # the contract allows 503 and nothing else, and the log keeps the traceback.
            log.exception("session sync: unexpected failure")
            status, content, headers, outcome = _unavailable(SyncUnavailable("unexpected error"))
        await send_json(send, status, content, headers)
        metrics.SESSION_SYNCS.labels(outcome).inc()
        log.info(
            "session sync: %s (%d) in %.1f ms",
            outcome,
            status,
            (time.perf_counter() - started) * 1000,
        )

    async def _handle(self, scope: Scope) -> Answer:
        if scope["method"] != "POST":  # an OPTIONS that is not a CORS preflight
            return 405, {"error": "use POST"}, {"Allow": "POST"}, "wrong_method"
        token = bearer_token(scope)
        if token is None:
            return self._refuse(
                scope, InvalidSessionToken("no_token", "expected Authorization: Bearer <token>")
            )
        try:
            claims = await self.sync.verify(token)
        except InvalidSessionToken as exc:
            return self._refuse(scope, exc)
        except SyncUnavailable as exc:
            return _unavailable(exc)
        try:
            row = await self.sync.sync_user(claims)
        except UserGone:
            return 410, {"error": "this user was deleted"}, None, "deleted"
        except SyncUnavailable as exc:
            return _unavailable(exc)
        # orjson writes the row's datetimes as ISO 8601.
        return 200, {"user": row}, {"Cache-Control": "no-store"}, "synced"

    def _refuse(self, scope: Scope, exc: InvalidSessionToken) -> Answer:
        client = scope.get("client")
        if self.limiter.record_failure(client[0] if client else "unknown"):
            error = "too many failed verifications from this client"
            return 429, {"error": error}, {"Retry-After": "60"}, "rate_limited"
        return 401, {"error": exc.message}, None, exc.reason


def _unavailable(exc: SyncUnavailable) -> Answer:
    return 503, {"error": str(exc)}, {"Retry-After": str(exc.retry_after)}, "unavailable"


class _JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORSMiddleware, whose refused preflight (400, plain text) says so in JSON,
    as every other error of clerk-sync's does."""

    def preflight_response(self, request_headers: Any) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        headers = {
            name: value for name, value in response.headers.items() if name != "content-length"
        }
        headers.pop("content-type", None)
        return Response(
            orjson.dumps({"error": bytes(response.body).decode()}),
            response.status_code,
            headers,
            media_type="application/json",
        )


def session_sync_route(sync: SessionSync, limiter: FailedVerificationLimiter) -> Route:
    """The route, with CORS for the sync's authorized parties when there are any."""
    app: ASGIApp = SessionSyncRoute(sync, limiter)
    if sync.authorized_parties:
        app = _JsonCORSMiddleware(
            app,
            allow_origins=list(sync.authorized_parties),
            allow_methods=["POST"],
            allow_headers=["authorization", "content-type"],
            max_age=PREFLIGHT_MAX_AGE_SECONDS,
        )
    return Route(SYNC_PATH, app, methods=["POST", "OPTIONS"])
