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
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from clerk_sync.custom_columns import TABLES, CustomColumn, CustomColumns
from clerk_sync.events import ClerkEvent, Outcome
from clerk_sync.migrations import latest_version
from clerk_sync.sqlstate import describe_failure, refuses_event
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
# A selected column that is not there: PostgreSQL's SQLSTATE, or PostgREST's schema cache's code.
UNDEFINED_COLUMN = ("42703", "PGRST204")

SCHEMA_HINT = (
    "create it with `clerk-sync schema` saved as a migration and `supabase db push` "
    "(or `clerk-sync migrate` with DATABASE_URL set)"
)
KEY_HINT = (
    "SUPABASE_SERVICE_ROLE_KEY must be the service_role key or a secret key (sb_secret_…), "
    "not the anon or publishable one, and from the project SUPABASE_URL names "
    "(Supabase Dashboard → Project Settings → API Keys)"
)


# The deadline (event loop time) of the delivery this task is answering, set by `apply`: a dead
# letter recorded after a refused apply shares its budget, so a delivery has one budget in all,
# not one per HTTP call (each ASGI request runs in a task, with a context, of its own).
_delivery_deadline: ContextVar[float] = ContextVar("clerk_sync_rest_deadline", default=0.0)


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
        # One budget for the whole of a delivery's calls (waiting for a connection, connecting,
        # sending, reading: httpx's per-phase timeouts would add up, to 19.5 s with 10 s each),
        # each phase capped by what is left: a slow Supabase is answered 503 within `timeout`
        # (at most 10 s, inside Svix's 15). Over HTTP a call given up on is only abandoned:
        # PostgREST's statement may still commit, and Svix's retry then answers `duplicate`.
        self._timeout = timeout
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
        deadline = asyncio.get_running_loop().time() + self._timeout
        _delivery_deadline.set(deadline)
        result = await self._call("clerk_sync_apply", body, deadline=deadline)
        if result == RETRY:
            result = await self._apply_busy(body, deadline)
        try:
            return Outcome(result)
        except ValueError:
            raise StoreUnavailable(f"unexpected answer from Supabase: {result!r:.100}") from None

    async def _apply_busy(self, body: bytes, deadline: float) -> Any:
        """The event's user is busy in another transaction: the call again, every
        LOCKED_RETRY_S, within the delivery's budget."""
        loop = asyncio.get_running_loop()
        while loop.time() + LOCKED_RETRY_S < deadline:
            await asyncio.sleep(LOCKED_RETRY_S)
            result = await self._call("clerk_sync_apply", body, deadline=deadline)
            if result != RETRY:
                return result
        raise StoreUnavailable(BUSY_USER)

    async def record_invalid(self, message_id: str, body: bytes, error: str) -> None:
        arguments = {"p_svix_id": message_id, "p_raw_body": "\\x" + body.hex(), "p_error": error}
        # What is left of the refused apply's budget, if this delivery had one.
        deadline = _delivery_deadline.get() or None
        await self._call("clerk_sync_record_invalid", orjson.dumps(arguments), deadline=deadline)

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

    async def missing_columns(self, columns: CustomColumns) -> list[CustomColumn]:
        """The declared custom columns that Supabase's REST API does not find (their types are
        out of its sight): one GET per table with custom columns, and one per column of a table
        where some are missing."""
        missing: list[CustomColumn] = []
        for table in TABLES:
            declared = columns.of(table)
            if declared and not await self._selects(table, declared):
                missing += [c for c in declared if not await self._selects(table, (c,))]
        return missing

    async def _selects(self, table: str, declared: tuple[CustomColumn, ...]) -> bool:
        """Whether PostgREST selects these columns of public.<table> (reading no row)."""
        params = {"select": ",".join(c.name for c in declared), "id": "eq.clerk-sync:probe"}
        try:
            response = await self._client.get(
                self._tables_url + table, params=params, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise StoreUnavailable(
                f"cannot reach Supabase ({self._host}): {type(exc).__name__}: {exc}"
            ) from None
        if response.is_success:
            return True
        try:
            code = orjson.loads(response.content).get("code")
        except (orjson.JSONDecodeError, AttributeError):
            code = None
        if response.status_code == 400 and code in UNDEFINED_COLUMN:
            return False
        raise self._failure(table, response, log_errors=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(
        self,
        function: str,
        body: bytes | None,
        *,
        params: dict[str, str] | None = None,
        log_errors: bool = True,
        deadline: float | None = None,
    ) -> Any:
        """POST one RPC call; its JSON result (None for a void function). Without a body, GET
        the table of that name (`params` filter it) instead. All done by `deadline` (event
        loop time; default: the timeout from now)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                timeout = httpx.Timeout(left)  # no phase may outlast the whole
                if body is None:
                    response = await self._client.get(
                        self._tables_url + function, params=params, timeout=timeout
                    )
                else:
                    response = await self._client.post(function, content=body, timeout=timeout)
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
        """What a PostgREST error answer {code, message, details, hint} means for the caller.
        `code` is the SQLSTATE for a database error, mapped as in direct mode; `details`
        (PostgreSQL's DETAIL: the failing row) and `hint` are never used."""
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
        if refuses_event(code):  # this event's data (a constraint, an app's trigger)
            return EventRejected(describe_failure(code, message))
        if status == 404:
            return self._configuration_error(
                f"HTTP 404 from {self._host}: is SUPABASE_URL the project URL "
                "(https://<project-ref>.supabase.co)?",
                log_errors,
            )
        if len(code) == 5 and not code.startswith("PGRST"):  # a SQLSTATE
            return StoreUnavailable(
                f"Supabase answered HTTP {status}: {describe_failure(code, message)}"
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
