"""Vercel entry point: clerk-sync's webhook receiver as a Python Function.

Vercel serves the module-level ASGI `app`, at this file's path: POST /api/webhooks/clerk.
Configure it with the project's Environment Variables (docs/deploy.md):

    CLERK_WEBHOOK_SECRET       the endpoint's Signing Secret (whsec_…)
    DATABASE_URL               Supabase's transaction pooler, port 6543 (prepared statements off)
    or SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY   REST mode: no connection pool to keep warm

Create the schema once beforehand (`clerk-sync migrate`, or `clerk-sync schema` and
`supabase db push`): a function does not migrate.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clerk_sync.app import create_app_from_settings
from clerk_sync.settings import ConfigError, EmbeddedBackend, load_settings
from clerk_sync.webhook import json_response

log = logging.getLogger("clerk_sync.vercel")


def not_configured(problem: str) -> Starlette:
    """Answers every request 503 naming the missing setting: Svix retries for about 27 hours,
    so deliveries go through once the variable is set and the project redeployed."""

    async def answer(request: Request) -> Response:
        return json_response(503, {"error": f"clerk-sync is not configured: {problem}"})

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])


class StartOnFirstRequest:
    """Runs the app's lifespan (which opens the database pool or HTTP client) at the first
    request if the server never sent ASGI lifespan events, as older Vercel Python runtimes did
    not: without it every delivery would be answered 503 "starting"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = False
        self._lock: asyncio.Lock | None = None
        self._lifespan: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.started = True  # the server runs it
        elif not self.started:
            await self._start()
        await self.app(scope, receive, send)

    async def _start(self) -> None:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self.started:
                return
            inbox: asyncio.Queue[Message] = asyncio.Queue()
            answered: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            await inbox.put({"type": "lifespan.startup"})

            async def reply(message: Message) -> None:
                if message["type"].startswith("lifespan.startup") and not answered.done():
                    answered.set_result(message)

            scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

            async def lifespan() -> None:
                await self.app(scope, inbox.get, reply)

            # Kept running: the lifespan waits for a shutdown that a frozen function never gets.
            self._lifespan = asyncio.create_task(lifespan())
            message = await answered
            if message["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"clerk-sync did not start: {message.get('message', '')}")
            self.started = True


def build() -> ASGIApp:
    try:
        settings = load_settings()
        backend = settings.backend
    except ConfigError as exc:
        problem = str(exc)
    else:
        if not settings.signing_secrets:
            problem = "CLERK_WEBHOOK_SECRET: not set (the endpoint's Signing Secret, whsec_…)"
        elif isinstance(backend, EmbeddedBackend):  # a function has nowhere to keep one
            problem = (
                "DATABASE_URL: not set (Supabase's transaction pooler URL, port 6543), nor "
                "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
            )
        else:
            return StartOnFirstRequest(create_app_from_settings(settings))
    log.error("clerk-sync is not configured: %s", problem)
    return not_configured(problem)


app = build()
