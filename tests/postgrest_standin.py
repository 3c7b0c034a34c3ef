"""A stand-in for Supabase's REST API (the API gateway's key check and PostgREST's RPC), on the
real test PostgreSQL.

It speaks PostgREST's wire format for functions: `POST /rest/v1/rpc/{fn}` with the arguments as
a JSON object by name, the result as JSON (204 for a void function), and errors as
`{code, message, details, hint}` with PostgREST's HTTP statuses; and for reading a table in
schema public: `GET /rest/v1/{table}?select=a,b&col=eq.value`, a JSON array of rows. The key is checked as Supabase
checks it (`apikey`, and `Authorization: Bearer` equal to it or a valid JWT), and the call runs
as the key's role, inside a transaction, after `set local role` and `request.jwt.claims`: so
grants and row-level security decide what each key may do, as on Supabase.

Also here: the database setup that makes a test database look like Supabase's (its roles and
`auth.jwt()`), and a tiny HS256 JWT encoder/verifier for the legacy keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests import support

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
SECRET_KEY = "sb_secret_standin0000000000000000000000"
PUBLISHABLE_KEY = "sb_publishable_standin000000000000000000"
ROLES = ("anon", "authenticated", "service_role")

# Supabase's roles (cluster-wide: created once, never dropped, as other test sessions share the
# server) and its auth.jwt() (per database), as Supabase defines them.
SUPABASE_ROLES_SQL = """
do $$ begin create role anon nologin noinherit; exception when duplicate_object then null; end $$;
do $$ begin create role authenticated nologin noinherit;
   exception when duplicate_object then null; end $$;
do $$ begin create role service_role nologin noinherit bypassrls;
   exception when duplicate_object then null; end $$;
"""
AUTH_JWT_SQL = """
create schema if not exists auth;
create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;
"""
SUPABASE_AUTH_SQL = (
    AUTH_JWT_SQL
    + """
grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.jwt() to anon, authenticated, service_role;
"""
)


def create_supabase_roles(server_dsn: str) -> None:
    # Two sessions creating a role at the same moment can also collide on the catalog's
    # unique index: try again, the second time the role is simply there.
    for attempt in range(5):
        try:
            support.execute(server_dsn, SUPABASE_ROLES_SQL)
            return
        except asyncpg.UniqueViolationError:
            if attempt == 4:
                raise
            time.sleep(0.1)


def create_supabase_database(server_dsn: str) -> str:
    """A fresh database with Supabase's roles and auth.jwt(), then migrated, as on Supabase."""
    create_supabase_roles(server_dsn)
    dsn = support.create_database(server_dsn, migrate=False)
    support.execute(dsn, SUPABASE_AUTH_SQL)
    support.run(_migrate(dsn))
    return dsn


async def _migrate(dsn: str) -> None:
    from clerk_sync import migrations

    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()


# --- HS256 JWTs, the legacy Supabase keys -----------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_encode(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{_b64url(signature.digest())}"


def jwt_decode(token: str, secret: str = JWT_SECRET) -> dict[str, Any] | None:
    """The claims of a valid, unexpired HS256 token signed with `secret`; None otherwise."""
    try:
        header, payload, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
        if not hmac.compare_digest(_unb64url(signature), expected.digest()):
            return None
        if json.loads(_unb64url(header)).get("alg") != "HS256":
            return None
        claims = json.loads(_unb64url(payload))
    except ValueError:
        return None
    if not isinstance(claims, dict) or claims.get("exp", float("inf")) < time.time():
        return None
    return claims


def legacy_key(role: str, secret: str = JWT_SECRET) -> str:
    """A legacy API key as Supabase issues them: a long-lived JWT with a role claim."""
    now = int(time.time())
    claims = {"iss": "supabase", "role": role, "iat": now, "exp": now + 10 * 365 * 86400}
    return jwt_encode(claims, secret)


SERVICE_ROLE_KEY = legacy_key("service_role")
ANON_KEY = legacy_key("anon")


# --- PostgREST's error answers ------------------------------------------------------------------


def error_status(sqlstate: str, role: str) -> int:
    """PostgREST's HTTP status for a SQLSTATE (docs.postgrest.org, "Errors from PostgreSQL")."""
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    exact = {"23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404, "42P01": 404}
    if sqlstate in exact:
        return exact[sqlstate]
    by_class = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500,
        "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500,
        "F0": 500, "HV": 500, "P0": 500, "XX": 500,
    }  # fmt: skip
    return by_class.get(sqlstate[:2], 400)


def error_response(status: int, code: str | None, message: str, **more: Any) -> Response:
    body = {"code": code, "details": more.get("details"), "hint": more.get("hint")}
    body["message"] = message
    return Response(orjson.dumps(body), status, media_type="application/json")


def gateway_refusal(message: str) -> Response:
    # Supabase's API gateway answers a bad key itself, before PostgREST sees the request.
    body = {
        "message": message,
        "hint": "Double check your Supabase `anon` or `service_role` API key.",
    }
    return Response(orjson.dumps(body), 401, media_type="application/json")


# --- the server ---------------------------------------------------------------------------------

FUNCTION_SQL = """
select p.oid, p.proargnames, p.pronargs, p.pronargdefaults,
       array(select pg_catalog.format_type(t, null) from unnest(p.proargtypes) as t) as argtypes,
       p.prorettype = 'pg_catalog.void'::regtype as returns_void
from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'public' and p.proname = $1
"""


class PostgrestStandin:
    """The REST API of a Supabase project whose database is `dsn`, served on 127.0.0.1."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.port = support.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.delay = 0.0  # seconds to wait before answering: a slow Supabase
        self.dribble = 0.0  # seconds between the bytes of an answer: a trickling network
        self.down = False  # answer as PostgREST does when it cannot reach the database
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections: set[tuple[str, int]] = set()  # the clients' (host, port)
        self._pool: asyncpg.Pool | None = None
        app = Starlette(
            routes=[
                Route("/rest/v1/rpc/{function}", self._rpc, methods=["POST"]),
                Route("/rest/v1/{table}", self._read_table, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the PostgREST stand-in did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(20)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=10)
        try:
            yield
        finally:
            await self._pool.close()

    def _role(self, request: Request) -> str | Response:
        """The database role the request's key acts as, or the gateway's 401."""
        apikey = request.headers.get("apikey")
        if not apikey:
            return gateway_refusal("No API key found in request")
        authorization = request.headers.get("authorization")
        if apikey.startswith("sb_"):
            role = {SECRET_KEY: "service_role", PUBLISHABLE_KEY: "anon"}.get(apikey)
            if role is None:
                return gateway_refusal("Invalid API key")
            # An sb_ key may be sent as a bearer token only when it equals the apikey header.
            if authorization is None or authorization == f"Bearer {apikey}":
                return role
            token = authorization.removeprefix("Bearer ")
        else:
            if jwt_decode(apikey) is None:
                return gateway_refusal("Invalid API key")
            token = (authorization or f"Bearer {apikey}").removeprefix("Bearer ")
        claims = jwt_decode(token)
        if claims is None:
            return error_response(401, "PGRST301", "JWT could not be decoded")
        role = claims.get("role")
        if role not in ROLES:
            return error_response(401, "PGRST301", f"role {role!r} not allowed")
        return str(role)

    async def _admit(self, request: Request, body: bytes) -> str | Response:
        """Log the request and check its key, as the gateway does; the role it acts as, or the
        answer (a refused key, or a database that is down)."""
        self.requests.append((request.url.path, dict(request.headers), body))
        if request.client:
            self.connections.add((request.client.host, request.client.port))
        role = self._role(request)
        if isinstance(role, Response):
            return role
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down or self._pool is None:
            return error_response(503, "PGRST000", "Could not connect with the database")
        return role

    async def _rpc(self, request: Request) -> Response:
        body = await request.body()
        role = await self._admit(request, body)
        if isinstance(role, Response):
            return role
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error_response(415, "PGRST107", "Content-Type not acceptable")
        try:
            arguments = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return error_response(400, "PGRST102", "Empty or invalid json")
        if not isinstance(arguments, dict):
            return error_response(400, "PGRST102", "Empty or invalid json")
        # PostgREST exposes the JWT's claims to SQL; an sb_ key acts as a token with its role.
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        claims = jwt_decode(token) or {"role": role}
        try:
            answer = await self._call(
                request.path_params["function"], body.decode(), arguments, role, claims
            )
            return self._dribbled(answer) if self.dribble and answer.body else answer
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            return error_response(503, "PGRST000", "Could not connect with the database")

    def _dribbled(self, answer: Response) -> Response:
        """`answer`, sent one byte every `dribble` seconds."""
        pause, content = self.dribble, bytes(answer.body)

        async def trickle() -> AsyncIterator[bytes]:
            for byte in content:
                await asyncio.sleep(pause)
                yield bytes([byte])

        return StreamingResponse(trickle(), answer.status_code, media_type=answer.media_type)

    async def _call(
        self,
        function: str,
        raw_body: str,
        arguments: dict[str, Any],
        role: str,
        claims: dict[str, Any],
    ) -> Response:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            candidates = await conn.fetch(FUNCTION_SQL, function)
            match = next((c for c in candidates if _accepts(c, arguments)), None)
            if match is None:
                names = ", ".join(sorted(arguments))
                return error_response(
                    404,
                    "PGRST202",
                    f"Could not find the function public.{function}({names}) in the schema cache",
                    details=f"Searched for the function public.{function} with parameters "
                    f"{names} but no matches were found in the schema cache.",
                )
            # As PostgREST does: the JSON body goes to PostgreSQL whole, which takes each
            # argument out of it by name and reads it as the parameter's type.
            names = list(match["proargnames"] or [])
            types = dict(zip(names, match["argtypes"], strict=False))
            call = ", ".join(
                f'"{name}" => (body {"->" if types[name] in ("json", "jsonb") else "->>"} '
                f"'{name}')::{types[name]}"
                for name in names
                if name in arguments
            )
            select = f'public."{function}"({call})'
            if not match["returns_void"]:
                select = f"pg_catalog.to_json({select})::text"
            try:
                async with conn.transaction():
                    await conn.execute(f'set local role "{role}"')
                    await conn.execute(
                        "select pg_catalog.set_config('request.jwt.claims', $1, true)",
                        json.dumps(claims),
                    )
                    result = await conn.fetchval(
                        f"select {select} from (select $1::json as body) as request", raw_body
                    )
            except asyncpg.PostgresError as exc:
                if isinstance(exc, asyncpg.PostgresConnectionError):
                    raise
                sqlstate = exc.sqlstate or "XX000"
                return error_response(
                    error_status(sqlstate, role),
                    sqlstate,
                    str(getattr(exc, "message", None) or exc),
                    details=getattr(exc, "detail", None),
                    hint=getattr(exc, "hint", None),
                )
        if match["returns_void"]:
            return Response(status_code=204)
        return Response(result or "null", 200, media_type="application/json")

    async def _read_table(self, request: Request) -> Response:
        """GET /rest/v1/{table}: `select` (column names) and `column=eq.value` filters only."""
        role = await self._admit(request, b"")
        if isinstance(role, Response):
            return role
        assert self._pool is not None
        table = request.path_params["table"]
        columns = request.query_params.get("select", "*").split(",")
        filters = [(k, v) for k, v in request.query_params.multi_items() if k != "select"]
        names = [table, *(c for c in columns if c != "*"), *(k for k, _ in filters)]
        if not all(_IDENTIFIER.fullmatch(name) for name in names):
            return error_response(400, "PGRST100", "unsupported query for this stand-in")
        if not all(v.startswith("eq.") for _, v in filters):
            return error_response(400, "PGRST100", "only eq. filters in this stand-in")
        where = " and ".join(f'"{k}"::text = ${n}' for n, (k, _) in enumerate(filters, 1))
        select = ", ".join("*" if c == "*" else f'"{c}"' for c in columns)
        query = (
            f"select coalesce(json_agg(t), '[]')::text from (select {select} "
            f'from public."{table}"{" where " + where if where else ""}) as t'
        )
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        claims = jwt_decode(token) or {"role": role}
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f'set local role "{role}"')
                await conn.execute(
                    "select pg_catalog.set_config('request.jwt.claims', $1, true)",
                    json.dumps(claims),
                )
                result = await conn.fetchval(query, *(v.removeprefix("eq.") for _, v in filters))
        except asyncpg.PostgresError as exc:
            sqlstate = exc.sqlstate or "XX000"
            return error_response(error_status(sqlstate, role), sqlstate, str(exc))
        return Response(result, 200, media_type="application/json")


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def _accepts(candidate: asyncpg.Record, arguments: dict[str, Any]) -> bool:
    """Whether a function takes exactly these named arguments (those without defaults given)."""
    names = list(candidate["proargnames"] or [])
    required = names[: candidate["pronargs"] - candidate["pronargdefaults"]]
    return set(arguments) <= set(names) and set(required) <= set(arguments)


@contextlib.contextmanager
def running_postgrest(dsn: str) -> Iterator[PostgrestStandin]:
    standin = PostgrestStandin(dsn)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
