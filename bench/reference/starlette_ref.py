"""The Starlette reference: a Clerk webhook handler as its users write it (svix + asyncpg).

    CLERK_WEBHOOK_SECRET=whsec_... DATABASE_URL=postgresql://... \
        uvicorn starlette_ref:app --loop uvloop --http httptools --workers 1

One statement per delivery into its own tables, which it creates at start: an `INSERT … ON
CONFLICT` into `users`, `organizations` or `organization_memberships` (user, organization and
membership events: the naive way, the embedded organization and any one-live-membership rule
left aside), an `UPDATE` of `users.last_sign_in_at` for `session.created`, a `DELETE` for a
delete.
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

CREATE_TABLES = """
create table if not exists users (
    id text primary key,
    email text,
    first_name text,
    last_name text,
    image_url text,
    public_metadata jsonb,
    created_at timestamptz,
    updated_at timestamptz,
    last_sign_in_at timestamptz
);
create table if not exists organizations (
    id text primary key,
    name text,
    slug text,
    image_url text,
    public_metadata jsonb,
    created_at timestamptz,
    updated_at timestamptz
);
create table if not exists organization_memberships (
    id text primary key,
    organization_id text not null,
    user_id text not null,
    role text,
    permissions text[],
    created_at timestamptz,
    updated_at timestamptz
);
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


UPSERT_ORGANIZATION = """
insert into organizations (id, name, slug, image_url, public_metadata, created_at, updated_at)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (id) do update set
    name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
    public_metadata = excluded.public_metadata, updated_at = excluded.updated_at
where organizations.updated_at < excluded.updated_at
"""

UPSERT_MEMBERSHIP = """
insert into organization_memberships (id, organization_id, user_id, role, permissions, created_at, updated_at)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (id) do update set
    role = excluded.role, permissions = excluded.permissions, updated_at = excluded.updated_at
where organization_memberships.updated_at < excluded.updated_at
"""

SIGNED_IN = """
update users set last_sign_in_at = $2
where id = $1 and (last_sign_in_at is null or last_sign_in_at < $2)
"""


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.webhook = Webhook(os.environ["CLERK_WEBHOOK_SECRET"])
    async with asyncpg.create_pool(os.environ["DATABASE_URL"]) as pool:
        await pool.execute(CREATE_TABLES)
        app.state.pool = pool
        yield


async def clerk_webhook(request: Request) -> Response:
    payload = await request.body()
    try:
        request.app.state.webhook.verify(payload, dict(request.headers))
    except WebhookVerificationError:
        return Response("invalid signature", status_code=400)
    event = json.loads(payload)
    user = event["data"]  # a user, or the session, organization or membership of its type
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
    elif event["type"] == "session.created":
        await request.app.state.pool.execute(
            SIGNED_IN, user["user_id"], from_ms(user["created_at"])
        )
    elif event["type"] in ("organization.created", "organization.updated"):
        await request.app.state.pool.execute(
            UPSERT_ORGANIZATION,
            user["id"],
            user["name"],
            user["slug"],
            user["image_url"],
            json.dumps(user["public_metadata"]),
            from_ms(user["created_at"]),
            from_ms(user["updated_at"]),
        )
    elif event["type"] == "organization.deleted":
        await request.app.state.pool.execute("delete from organizations where id = $1", user["id"])
    elif event["type"] in ("organizationMembership.created", "organizationMembership.updated"):
        await request.app.state.pool.execute(
            UPSERT_MEMBERSHIP,
            user["id"],
            user["organization"]["id"],
            user["public_user_data"]["user_id"],
            user["role"],
            user["permissions"],
            from_ms(user["created_at"]),
            from_ms(user["updated_at"]),
        )
    elif event["type"] == "organizationMembership.deleted":
        await request.app.state.pool.execute(
            "delete from organization_memberships where id = $1", user["id"]
        )
    return Response(status_code=200)


async def read_and_answer(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


app = Starlette(
    routes=[Route("/api/webhooks/clerk", clerk_webhook, methods=["POST"])], lifespan=lifespan
)
baseline = Starlette(routes=[Route("/api/webhooks/clerk", read_and_answer, methods=["POST"])])
