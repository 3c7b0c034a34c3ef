"""A small async client for the parts of Clerk's Backend API that clerk-sync reads: the lists of
users, organizations, memberships and organization invitations (`backfill`), one user and the
instance's JWKS (session sync).

Why not Clerk's SDK (`clerk-backend-api`)? It parses every user into its pydantic models, and
`backfill` needs each user as raw JSON, exactly as a webhook's `data` carries it, to feed the same
SQL write path: re-serializing the models would rename, drop or add fields. What we need is a few
GETs, a bearer key and a retry policy, which is what this module is.

Retries: a 429 waits for its `Retry-After` (capped); a 5xx, a timeout or a dropped connection is
retried with exponential back-off and jitter, a few times, before `ClerkAPIError` is raised. A
rejected key (401/403) and any other 4xx are raised at once: retrying cannot fix them.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from clerk_sync import __version__
from clerk_sync.errors import ClerkSyncError

PAGE_LIMIT = 500  # the API's maximum `limit` for its lists (users, organizations, ...)
FILTER_LIMIT = 100  # the API's maximum number of user_id filters in one request
MAX_ATTEMPTS = 6
MAX_RETRY_AFTER = 60.0  # seconds: never sleep longer than this on one 429
BACKOFF_BASE = 0.5  # seconds: first back-off, doubled per attempt
BACKOFF_MAX = 20.0

User = dict[str, Any]
ClerkObject = dict[str, Any]  # a user, organization, membership, ... as the API answers it
Sleep = Callable[[float], Awaitable[None]]


class ClerkAPIError(ClerkSyncError):
    """The Backend API could not be read; the message is one line a user can act on."""


class ClerkAuthError(ClerkAPIError):
    """The secret key was rejected (401/403): retrying cannot help."""


class ClerkNotFound(ClerkAPIError):
    """404: no such resource (a user Clerk does not have, say)."""


class ClerkRateLimited(ClerkAPIError):
    """429 on the last attempt; `retry_after` is Clerk's Retry-After, in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Page:
    """One page of a list: its objects and, for lists that answer `{data, total_count}`, the
    total (GET /users answers a bare array: None)."""

    items: list[ClerkObject]
    total: int | None


class ClerkClient:
    """GET /users, /users/count, /users?user_id=…, /users/{id}, /organizations,
    /organizations/{id}, /organizations/{id}/memberships, /organization_memberships,
    /organization_invitations and /jwks, with a bearer key and retries."""

    def __init__(
        self,
        secret_key: str,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {secret_key}",
                "Accept": "application/json",
                "User-Agent": f"clerk-sync/{__version__}",
            },
            timeout=timeout,
            transport=transport,
        )
        # How often each kind of trouble was retried, for the summary.
        self.retries = {"rate_limited": 0, "server_error": 0, "network_error": 0}

    async def __aenter__(self) -> ClerkClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def list_users(self, offset: int, limit: int = PAGE_LIMIT) -> list[User]:
        """One page of users, oldest first: new sign-ups land at the end, so pages stay put."""
        return (await self.list_page("/users", offset, limit, wrapped=False)).items

    async def list_page(
        self, path: str, offset: int, limit: int = PAGE_LIMIT, *, wrapped: bool = True
    ) -> Page:
        """One page of a list (`/users`, `/organizations`, `/organization_memberships`,
        `/organization_invitations`: every status, as no `status` filter is sent), oldest first.
        `wrapped`: the list answers `{"data": [...], "total_count": n}` (all but users), else a
        bare array (users)."""
        params = {"limit": limit, "offset": offset, "order_by": "+created_at"}
        body = await self._get_json(path, params)
        if not wrapped:
            return Page(_user_list(body), None)
        return _page(path, body)

    async def existing_organization_ids(self, organization_ids: Sequence[str]) -> set[str]:
        """Which of these organizations Clerk still has (GET /organizations/{id} each: 404 is
        gone)."""
        found: set[str] = set()
        for organization_id in organization_ids:
            try:
                await self._get_json(f"/organizations/{quote(organization_id, safe='')}", {})
            except ClerkNotFound:
                continue
            found.add(organization_id)
        return found

    async def existing_membership_ids(
        self, memberships: Sequence[tuple[str, str, str]]
    ) -> set[str]:
        """Which of these memberships (membership id, organization id, user id) Clerk still has.
        There is no lookup of a membership by id: each organization's members are asked for by
        user id (GET /organizations/{id}/memberships?user_id=…, FILTER_LIMIT at a time), and a
        membership is there when its id is among the answers; an organization Clerk answers 404
        for has none."""
        by_organization: dict[str, list[tuple[str, str]]] = {}
        for membership_id, organization_id, user_id in memberships:
            by_organization.setdefault(organization_id, []).append((membership_id, user_id))
        found: set[str] = set()
        for organization_id, members in by_organization.items():
            path = f"/organizations/{quote(organization_id, safe='')}/memberships"
            for start in range(0, len(members), FILTER_LIMIT):
                chunk = members[start : start + FILTER_LIMIT]
                params = [("user_id", user_id) for _, user_id in chunk]
                params += [("limit", str(PAGE_LIMIT)), ("offset", "0")]
                try:
                    page = _page(path, await self._get_json(path, params))
                except ClerkNotFound:
                    break
                listed = {str(m.get("id")) for m in page.items}
                found.update(m_id for m_id, _ in chunk if m_id in listed)
        return found

    async def count_users(self) -> int:
        return await self.count("/users/count")

    async def count(self, path: str) -> int:
        """The `total_count` a count endpoint (`/users/count`) answers."""
        body = await self._get_json(path, {})
        total = body.get("total_count") if isinstance(body, dict) else None
        if not isinstance(total, int):
            raise ClerkAPIError(f"{self.base_url}{path} did not answer a total_count")
        return total

    async def existing_user_ids(self, user_ids: Sequence[str]) -> set[str]:
        """Which of these users Clerk still has (asked by id, FILTER_LIMIT at a time)."""
        found: set[str] = set()
        for start in range(0, len(user_ids), FILTER_LIMIT):
            chunk = list(user_ids[start : start + FILTER_LIMIT])
            params = [("user_id", user_id) for user_id in chunk]
            params += [("limit", str(FILTER_LIMIT)), ("offset", "0")]
            users = _user_list(await self._get_json("/users", params))
            found.update(str(user["id"]) for user in users)
        return found

    async def get_user(self, user_id: str) -> User:
        """One user, as GET /v1/users/{id} answers it; ClerkNotFound when Clerk has none."""
        user = await self._get_json(f"/users/{quote(user_id, safe='')}", {})
        if not isinstance(user, dict) or user.get("id") != user_id:
            raise ClerkAPIError(f"GET /users/{{id}} did not answer the user {user_id}")
        return user

    async def get_jwks(self) -> dict[str, Any]:
        """The instance's JSON Web Key Set, the keys its session tokens are signed with."""
        jwks = await self._get_json("/jwks", {})
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ClerkAPIError("GET /jwks did not answer a JSON Web Key Set")
        return jwks

    async def _get_json(self, path: str, params: Any) -> Any:
        url = self.base_url + path
        for attempt in range(1, self._max_attempts + 1):
            last = attempt == self._max_attempts
            try:
                response = await self._http.get(path, params=params)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if last:
                    raise ClerkAPIError(
                        f"cannot reach {url}: {type(exc).__name__} after {attempt} attempts"
                    ) from None
                self.retries["network_error"] += 1
                await self._sleep(backoff(attempt))
                continue

            status = response.status_code
            if status == 200:
                try:
                    return response.json()
                except ValueError:
                    raise ClerkAPIError(
                        f"{url} answered 200 but not JSON (is CLERK_API_URL right?)"
                    ) from None
            if status in (401, 403):
                raise ClerkAuthError(
                    f"CLERK_SECRET_KEY was rejected ({status}): check it is the secret key of the "
                    f"same Clerk instance{_clerk_message(response, ' (Clerk said: {})')}"
                )
            if status == 429 and not last:
                self.retries["rate_limited"] += 1
                await self._sleep(retry_after(response.headers.get("retry-after")))
                continue
            if status >= 500 and not last:
                self.retries["server_error"] += 1
                await self._sleep(backoff(attempt))
                continue
            if status == 429:
                raise ClerkRateLimited(
                    f"{url} kept answering 429, {attempt} attempts",
                    math.ceil(retry_after(response.headers.get("retry-after"))),
                )
            if status >= 500:
                raise ClerkAPIError(f"{url} kept answering {status}, {attempt} attempts")
            error = ClerkNotFound if status == 404 else ClerkAPIError
            raise error(f"{url} answered {status}{_clerk_message(response, ': {}')}")
        raise AssertionError("unreachable")


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, …): exponential, full jitter."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not cryptography)


def retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped."""
    if value is None:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _user_list(body: Any) -> list[User]:
    if not isinstance(body, list) or not all(isinstance(user, dict) for user in body):
        raise ClerkAPIError(
            "GET /users did not answer a JSON array of users (is CLERK_API_URL the Backend API, "
            "https://api.clerk.com/v1?)"
        )
    return body


def _page(path: str, body: Any) -> Page:
    data = body.get("data") if isinstance(body, dict) else None
    total = body.get("total_count") if isinstance(body, dict) else None
    if (
        not isinstance(data, list)
        or not all(isinstance(item, dict) for item in data)
        or not isinstance(total, int)
    ):
        raise ClerkAPIError(
            f"GET {path} did not answer {{data: [...], total_count: n}} (is CLERK_API_URL the "
            "Backend API, https://api.clerk.com/v1?)"
        )
    return Page(data, total)


def _clerk_message(response: httpx.Response, template: str) -> str:
    """Clerk's own words from an error body {"errors": [{"message", "long_message", "code"}]},
    put into `template`; empty when the body has none."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        text = first.get("long_message") or first.get("message") or first.get("code")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
    return template.format(" ".join(str(text).split())) if text else ""
