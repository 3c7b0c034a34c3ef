"""Supabase's REST API (PostgREST) with the service-role key: REST mode.

PostgREST cannot express "update only if newer", so each event is one call of the same SQL
function the direct mode runs, `POST /rest/v1/rpc/clerk_sync_apply`: one transaction on the
server, the same guarantees. Meant for serverless too: nothing to keep warm but one HTTP client
(keep-alive), and no database driver to import.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from clerk_sync.events import ClerkEvent, Outcome
from clerk_sync.migrations import latest_version
from clerk_sync.storage.base import (
    BUSY_USER,
    LOCKED_RETRY_S,
    RETRY,
    USER_COLUMNS,
    EventRejected,
    StoredUser,
    StoreUnavailable,
)

log = logging.getLogger("clerk_sync.storage")

RPC_PATH = "/rest/v1/rpc/"
TABLES_PATH = "/rest/v1/"
_USER_SELECT = ",".join(USER_COLUMNS)
_USER_TIMES = ("created_at", "updated_at", "last_sign_in_at", "deleted_at")
# PostgREST's error code for "no such function in the schema cache".
FUNCTION_NOT_FOUND = "PGRST202"

SCHEMA_HINT = (
    "create it with `clerk-sync schema` saved as a migration and `supabase db push` "
    "(or `clerk-sync migrate` with DATABASE_URL set)"
)
KEY_HINT = (
    "SUPABASE_SERVICE_ROLE_KEY must be the service_role key or a secret key (sb_secret_…), "
    "not the anon or publishable one, and from the project SUPABASE_URL names "
    "(Supabase Dashboard → Project Settings → API Keys)"
)


class FunctionMissing(StoreUnavailable):
    """A clerk-sync function is not in the database: the schema was never applied."""


class RestStore:
    def __init__(
        self,
        url: str,
        key: str,
        *,
        delete_mode: str = "soft",
        timeout: float = 5.0,
        max_connections: int = 10,
    ) -> None:
        self._delete_mode = orjson.dumps(delete_mode)
        # Each phase (waiting for a connection, connecting, sending, reading) is bounded, and so
        # is the whole call, as for direct PostgreSQL: a slow Supabase is answered 503 in time.
        self._deadline = timeout * 2 + 1
        self._host = urlsplit(url).hostname or url
        self._tables_url = url.rstrip("/") + TABLES_PATH
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/") + RPC_PATH,
            headers={
                # The same value in both: how Supabase takes legacy JWT and sb_secret_ keys alike.
                "apikey": key,
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._logged: set[str] = set()

    async def apply(self, message_id: str, event: ClerkEvent) -> Outcome:
        # The verified body goes in as it came (it is one JSON value): no second serialisation.
        body = b"".join(
            (
                b'{"p_svix_id":',
                orjson.dumps(message_id),
                b',"p_event":',
                event.body.encode(),
                b',"p_delete_mode":',
                self._delete_mode,
                b"}",
            )
        )
        result = await self._call("clerk_sync_apply", body)
        if result == RETRY:
            result = await self._apply_busy(body)
        try:
            return Outcome(result)
        except ValueError:
            raise StoreUnavailable(f"unexpected answer from Supabase: {result!r:.100}") from None

    async def _apply_busy(self, body: bytes) -> Any:
        """The event's user is busy in another transaction: the call again, every
        LOCKED_RETRY_S, within one call's deadline."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._deadline
        while loop.time() + LOCKED_RETRY_S < give_up:
            await asyncio.sleep(LOCKED_RETRY_S)
            result = await self._call("clerk_sync_apply", body)
            if result != RETRY:
                return result
        raise StoreUnavailable(BUSY_USER)

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        arguments = {"p_svix_id": message_id, "p_raw_body": "\\x" + body.hex(), "p_error": error}
        await self._call("clerk_sync_record_invalid", orjson.dumps(arguments))

    async def read_user(self, user_id: str) -> StoredUser | None:
        """GET /rest/v1/users?id=eq.… as the service role. The inbox (schema clerk_sync) is not
        exposed through the REST API, so `synced_at` is the row's own version (Clerk's
        updated_at): a row that changed in Clerk within the last minute reached it since."""
        params = {"select": _USER_SELECT, "id": f"eq.{user_id}"}
        rows = await self._call("users", None, params=params)
        if not isinstance(rows, list) or len(rows) > 1:
            raise StoreUnavailable(f"unexpected answer from Supabase: {rows!r:.100}")
        if not rows:
            return None
        row = rows[0]
        try:
            for column in _USER_TIMES:
                if row[column] is not None:
                    row[column] = dt.datetime.fromisoformat(row[column])
        except (KeyError, TypeError, ValueError):
            raise StoreUnavailable(f"unexpected answer from Supabase: {row!r:.100}") from None
        return StoredUser(row, row["updated_at"])

    async def not_ready_reason(self) -> str | None:
        try:
            # The caller reports what is wrong (readyz, `serve` at start): no log line here.
            version = await self._call("clerk_sync_schema_version", b"{}", log_errors=False)
        except FunctionMissing:
            return f"the clerk-sync schema is not in this Supabase database: {SCHEMA_HINT}"
        except StoreUnavailable as exc:
            return str(exc)
        if not isinstance(version, int) or version < latest_version():
            return (
                f"schema at version {version}, expected {latest_version()}: apply the current "
                "`clerk-sync schema` with `supabase db push` (or run `clerk-sync migrate` with "
                "DATABASE_URL set)"
            )
        return None

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(
        self,
        function: str,
        body: bytes | None,
        *,
        params: dict[str, str] | None = None,
        log_errors: bool = True,
    ) -> Any:
        """POST one RPC call; its JSON result (None for a void function). Without a body, GET
        the table of that name (`params` filter it) instead."""
        try:
            async with asyncio.timeout(self._deadline):
                if body is None:
                    response = await self._client.get(self._tables_url + function, params=params)
                else:
                    response = await self._client.post(function, content=body)
        except (TimeoutError, httpx.TimeoutException):
            raise StoreUnavailable(f"Supabase ({self._host}) did not answer in time") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(
                f"cannot reach Supabase ({self._host}): {type(exc).__name__}: {exc}"
            ) from None
        if response.is_success:
            if not response.content:
                return None
            try:
                return orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise StoreUnavailable("Supabase answered with something not JSON") from None
        raise self._failure(function, response, log_errors)

    def _failure(self, function: str, response: httpx.Response, log_errors: bool) -> Exception:
        """What a PostgREST error answer {code, message, details, hint} means for the caller."""
        status = response.status_code
        try:
            error = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            error = None
        if not isinstance(error, dict):
            error = {}
        code = str(error.get("code") or "")
        message = str(error.get("message") or response.reason_phrase or "")
        if status == 403 and code == "42501":  # the key is fine, the role lacks a grant
            return self._configuration_error(
                f"the database refused the service role (HTTP 403: {message}): apply the "
                "current `clerk-sync schema` with `supabase db push`, which grants what it needs",
                log_errors,
            )
        if status in (401, 403):
            return self._configuration_error(
                f"Supabase refused the key (HTTP {status}: {message}): {KEY_HINT}", log_errors
            )
        if code == FUNCTION_NOT_FOUND:
            return self._configuration_error(
                f"public.{function} is not in this Supabase database: {SCHEMA_HINT}",
                log_errors,
                FunctionMissing,
            )
        if code.startswith("22"):  # data exception: this event's data, retrying cannot help
            return EventRejected(f"{message} ({code})")
        if status == 404:
            return self._configuration_error(
                f"HTTP 404 from {self._host}: is SUPABASE_URL the project URL "
                "(https://<project-ref>.supabase.co)?",
                log_errors,
            )
        return StoreUnavailable(f"Supabase answered HTTP {status} {code}: {message}")

    def _configuration_error(
        self, reason: str, log_errors: bool, kind: type[StoreUnavailable] = StoreUnavailable
    ) -> StoreUnavailable:
        """A mistake in the setup, not an outage: logged once, as every delivery would repeat it."""
        if log_errors and reason not in self._logged:
            self._logged.add(reason)
            log.error("configuration error: %s", reason)
        return kind(reason)
