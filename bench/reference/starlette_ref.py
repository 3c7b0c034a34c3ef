"""The Starlette reference: a Clerk webhook handler as its users write it (svix + asyncpg).

    CLERK_WEBHOOK_SECRET=whsec_... DATABASE_URL=postgresql://... \
        uvicorn starlette_ref:app --loop uvloop --http httptools --workers 1

One `INSERT … ON CONFLICT` per delivery into its own `users` table, which it creates at start.
`starlette_ref:baseline` is the same server answering 204 once it has read the body, with no
verification and no database: the HTTP ceiling of this stack on this machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svix.webhooks import Webhook, WebhookVerificationError

CREATE_TABLE = """
create table if not exists users (
    id text primary key,
    email text,
    first_name text,
    last_name text,
    image_url text,
    public_metadata jsonb,
    created_at timestamptz,
    updated_at timestamptz
)
"""

# The only ordering guard: an older update never overwrites a newer row.
UPSERT = """
insert into users (id, email, first_name, last_name, image_url, public_metadata, created_at, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, $8)
on conflict (id) do update set
    email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name,
    image_url = excluded.image_url, public_metadata = excluded.public_metadata,
    updated_at = excluded.updated_at
where users.updated_at < excluded.updated_at
"""


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.webhook = Webhook(os.environ["CLERK_WEBHOOK_SECRET"])
    async with asyncpg.create_pool(os.environ["DATABASE_URL"]) as pool:
        await pool.execute(CREATE_TABLE)
        app.state.pool = pool
        yield


async def clerk_webhook(request: Request) -> Response:
    payload = await request.body()
    try:
        request.app.state.webhook.verify(payload, dict(request.headers))
    except WebhookVerificationError:
        return Response("invalid signature", status_code=400)
    event = json.loads(payload)
    user = event["data"]
    if event["type"] in ("user.created", "user.updated"):
        primary = next(
            (e["email_address"] for e in user["email_addresses"]
             if e["id"] == user["primary_email_address_id"]),
            None,
        )  # fmt: skip
        await request.app.state.pool.execute(
            UPSERT,
            user["id"],
            primary,
            user["first_name"],
            user["last_name"],
            user["image_url"],
            json.dumps(user["public_metadata"]),
            from_ms(user["created_at"]),
            from_ms(user["updated_at"]),
        )
    elif event["type"] == "user.deleted":
        await request.app.state.pool.execute("delete from users where id = $1", user["id"])
    return Response(status_code=200)


async def read_and_answer(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


app = Starlette(
    routes=[Route("/api/webhooks/clerk", clerk_webhook, methods=["POST"])], lifespan=lifespan
)
baseline = Starlette(routes=[Route("/api/webhooks/clerk", read_and_answer, methods=["POST"])])
