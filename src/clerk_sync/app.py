"""The ASGI application: the webhook receiver and the health, readiness and metrics routes.

`create_app` is the library entry point (mount it in your own Starlette/FastAPI app, or serve it
with any ASGI server); `clerk-sync serve` builds the same app from settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clerk_sync import metrics
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.settings import Settings
from clerk_sync.storage import Store
from clerk_sync.storage.postgres import PostgresStore
from clerk_sync.verify import Verifier
from clerk_sync.webhook import WebhookReceiver, json_response

WEBHOOK_PATH = "/api/webhooks/clerk"


class _Opened:
    """What the lifespan opens, for routes that are built before it runs."""

    store: Store | None = None
    receiver: WebhookReceiver | None = None


def create_app(
    *,
    verifier: Verifier,
    open_store: Callable[[], Awaitable[Store]],
    max_body_bytes: int = 1024 * 1024,
    failed_verification_limit: int = 20,
) -> Starlette:
    opened = _Opened()
    limiter = FailedVerificationLimiter(failed_verification_limit)

    async def receive(request: Request) -> Response:
        if opened.receiver is None:
            return json_response(503, {"error": "starting"}, {"Retry-After": "5"})
        return await opened.receiver(request)

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        if opened.store is None:
            return json_response(503, {"error": "starting"})
        reason = await opened.store.not_ready_reason()
        if reason:
            return json_response(503, {"error": reason})
        return json_response(200, {"status": "ready"})

    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, 200, media_type=content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response(exc.status_code, {"error": exc.detail}, dict(exc.headers or {}))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        opened.store = await open_store()
        opened.receiver = WebhookReceiver(
            verifier, opened.store, limiter, max_body_bytes=max_body_bytes
        )
        try:
            yield
        finally:
            await opened.store.close()

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def create_app_from_settings(settings: Settings, dsn: str) -> Starlette:
    """The app `clerk-sync serve` runs: direct PostgreSQL at `dsn`, configured by `settings`."""
    if not settings.signing_keys:
        raise ValueError("a signing secret is required")

    async def open_store() -> Store:
        return await PostgresStore.open(
            dsn,
            delete_mode=settings.delete_mode,
            timeout=settings.db_timeout,
            pool_size=settings.pool_size,
            prepared_statements=settings.prepared_statements,
        )

    return create_app(
        verifier=Verifier(settings.signing_keys),
        open_store=open_store,
        max_body_bytes=settings.max_body_bytes,
        failed_verification_limit=settings.failed_verification_limit,
    )
