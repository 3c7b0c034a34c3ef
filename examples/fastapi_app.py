"""clerk-sync inside an existing FastAPI (or Starlette) app.

    DATABASE_URL=postgresql://… CLERK_WEBHOOK_SECRET=whsec_… uvicorn examples.fastapi_app:app

The receiver is a complete ASGI app (POST /api/webhooks/clerk, /healthz, /readyz, /metrics):
mount it. It reads each body within the size limit and answers through the same delivery core
as `clerk-sync serve` (`clerk_sync.DeliveryHandler`). Run `clerk-sync migrate` once beforehand;
the receiver does not migrate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from clerk_sync import create_app_from_settings, load_settings

settings = load_settings()
clerk_app = create_app_from_settings(settings, settings.database_url)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI does not run a mounted app's lifespan, and the receiver's opens its database pool:
    # run it inside ours, so the pool opens at startup and closes at shutdown.
    async with clerk_app.router.lifespan_context(clerk_app):
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/hello")
async def hello() -> dict[str, str]:
    """One of your own routes."""
    return {"hello": "world"}


# Mounted last, at the root: your routes match first, and clerk-sync answers the rest
# (POST /api/webhooks/clerk among them). Mounted at a prefix instead, e.g. app.mount("/clerk",
# clerk_app), the webhook URL to give Clerk is https://your.app/clerk/api/webhooks/clerk.
app.mount("/", clerk_app)
