"""The current user, from your own database: a FastAPI dependency on clerk-sync's session sync.

    DATABASE_URL=postgresql://… CLERK_SECRET_KEY=sk_… uvicorn examples.fastapi_current_user:app

Your frontend sends Clerk's session token (`Authorization: Bearer <token>`, from
`useAuth().getToken()`); a route that takes `user: CurrentUser` gets that user's public.users row,
synced through clerk-sync's write path: fetched from Clerk's Backend API when the webhook has not
brought it yet (a brand-new sign-up), answered from the database when it has. Run
`clerk-sync migrate` once beforehand, and `clerk-sync serve` (or the receiver mounted as in
examples/fastapi_app.py) for the webhooks that keep the rows current.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clerk_sync import load_settings
from clerk_sync.session_sync import InvalidSessionToken, SessionSync, SyncUnavailable, UserGone

settings = load_settings()  # DATABASE_URL (or SUPABASE_URL + key), CLERK_SECRET_KEY, …


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One SessionSync for the process: it holds the database pool, Clerk's keys, and the
    # fetches in flight (concurrent requests of one user share one call to Clerk).
    async with SessionSync.open(settings) as sync:
        app.state.session_sync = sync
        yield


bearer = HTTPBearer(auto_error=False)


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> dict[str, Any]:
    """The signed-in user's row (public.users columns; times as datetimes), or the answer that
    says why there is none: 401 (no or bad token), 410 (deleted), 503 (retry later)."""
    sync: SessionSync = request.app.state.session_sync
    if credentials is None:
        raise HTTPException(401, "expected Authorization: Bearer <Clerk session token>")
    try:
        return await sync.current_user(credentials.credentials)
    except InvalidSessionToken as exc:
        raise HTTPException(401, exc.message) from None
    except UserGone:
        raise HTTPException(410, "this user was deleted") from None
    except SyncUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None


CurrentUser = Annotated[dict[str, Any], Depends(current_user)]

app = FastAPI(lifespan=lifespan)


@app.get("/me")
async def me(user: CurrentUser) -> dict[str, Any]:
    """One of your own routes: it has the caller's row without a query of its own."""
    return {
        "id": user["id"],
        "email": user["email"],
        "name": " ".join(filter(None, (user["first_name"], user["last_name"]))),
        "plan": user["public_metadata"].get("plan", "free"),
        "member_since": user["created_at"],
    }
