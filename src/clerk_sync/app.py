"""The ASGI application: the webhook receiver and the health, readiness and metrics routes.

`create_app` is the library entry point (mount it in your own Starlette/FastAPI app, or serve it
with any ASGI server); `clerk-sync serve` builds the same app from settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from clerk_sync import metrics
from clerk_sync.custom_columns import NO_COLUMNS, CustomColumns
from clerk_sync.delivery import (
    FAILED_VERIFICATION_LIMIT,
    MAX_BODY_BYTES,
    RETRY_AFTER_SECONDS,
    DeliveryHandler,
)
from clerk_sync.limits import FailedVerificationLimiter
from clerk_sync.readiness import Readiness
from clerk_sync.settings import PostgresBackend, Settings
from clerk_sync.storage import Store, open_store
from clerk_sync.verify import Verifier
from clerk_sync.webhook import WebhookReceiver, json_response, send_json

if TYPE_CHECKING:
    from clerk_sync.session_sync import SessionSync

WEBHOOK_PATH = "/api/webhooks/clerk"


class _Opened:
    """What the lifespan opens, for routes that are built before it runs."""

    store: Store | None = None
    receiver: WebhookReceiver | None = None
    readiness: Readiness | None = None


class _Webhook:
    """POST /api/webhooks/clerk as a plain ASGI app (Starlette's Route calls an object as an
    app, a function as a request handler): no Request and Response objects on the hot path.
    Answers 503 until the lifespan has opened the store."""

    def __init__(self, opened: _Opened) -> None:
        self.opened = opened

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receiver = self.opened.receiver
        if receiver is None:
            await send_json(send, 503, {"error": "starting"}, {"Retry-After": RETRY_AFTER_SECONDS})
        else:
            await receiver(scope, receive, send)


class ClerkSyncApp(Starlette):
    """A Starlette app that answers POST /api/webhooks/clerk (the hot path: every delivery)
    before its middleware stack and router, which serve every other request. Mounted under a
    prefix, or once middleware of your own is added (`add_middleware`), the webhook goes
    through the stack and the router like the rest."""

    def __init__(self, *, webhook: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and not self.user_middleware
        ):
            scope["app"] = self
            await self._webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def start_draining(app: Starlette) -> None:
    """Say not-ready from now on (the server is shutting down): a load balancer stops sending
    new deliveries while the ones in flight finish."""
    app.state.draining = True


def create_app(
    *,
    verifier: Verifier,
    open_store: Callable[[], Awaitable[Store]],
    max_body_bytes: int = MAX_BODY_BYTES,
    failed_verification_limit: int = FAILED_VERIFICATION_LIMIT,
    background: Sequence[Callable[[], Coroutine[object, object, None]]] = (),
    session_sync: SessionSync | None = None,
    custom_columns: CustomColumns = NO_COLUMNS,
) -> Starlette:
    """The app; `background` are loops (retention, say) run for the app's lifetime;
    `session_sync` adds POST /api/users/sync; `custom_columns` are counted when a value does
    not convert."""
    opened = _Opened()
    limiter = FailedVerificationLimiter(failed_verification_limit)

    webhook = _Webhook(opened)

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        if getattr(request.app.state, "draining", False):
            return json_response(503, {"error": "shutting down"})
        if opened.readiness is None:
            return json_response(503, {"error": "starting"})
        if await opened.readiness.not_ready_reason():  # logged there, never answered
            return json_response(503, {"error": "not ready"})
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
        opened.readiness = Readiness(opened.store.not_ready_reason)
        opened.receiver = WebhookReceiver(
            DeliveryHandler(
                verifier,
                opened.store,
                limiter,
                max_body_bytes=max_body_bytes,
                custom_columns=custom_columns,
            )
        )
        tasks = [asyncio.create_task(loop()) for loop in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await opened.store.close()

    session_routes = []
    if session_sync is not None:  # POST /api/users/sync, on the webhooks' store and write path
        from clerk_sync.session_route import session_sync_route

        session_sync.store = lambda: opened.store
        limiter_for_sync = FailedVerificationLimiter(failed_verification_limit)
        session_routes.append(session_sync_route(session_sync, limiter_for_sync))
        background = (*background, session_sync.run)  # read by the lifespan when it runs

    return ClerkSyncApp(
        webhook=webhook,
        routes=[
            Route(WEBHOOK_PATH, webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            *session_routes,
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def create_app_from_settings(settings: Settings, dsn: str | None = None) -> Starlette:
    """The app `clerk-sync serve` runs, configured by `settings`: direct PostgreSQL at `dsn`
    (default: the backend `settings.backend` chooses, DATABASE_URL or REST mode)."""
    if not settings.signing_keys:
        raise ValueError("a signing secret is required")
    backend = settings.server_backend(dsn)  # the CLI starts an embedded one, and passes its dsn

    background = []
    if isinstance(backend, PostgresBackend):  # REST mode cannot purge from here: see `purge`
        from clerk_sync.retention import retention_loop

        def purge_expired() -> Coroutine[object, object, None]:
            return retention_loop(
                backend.dsn,
                settings.retention_days,
                payload_days=settings.payload_retention_days,
                prepared_statements=settings.prepared_statements,
            )

        background.append(purge_expired)

    session_sync = None
    if settings.clerk_secret_key:  # POST /api/users/sync (it answers 404 without the key)
        from clerk_sync.session_sync import SessionSync

        session_sync = SessionSync.from_settings(settings)

    return create_app(
        verifier=Verifier(settings.signing_keys),
        open_store=lambda: open_store(settings, backend),
        max_body_bytes=settings.max_body_bytes,
        failed_verification_limit=settings.failed_verification_limit,
        background=background,
        session_sync=session_sync,
        custom_columns=settings.custom_columns,
    )
