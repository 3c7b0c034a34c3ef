"""Session sync: the signed-in user's row, there the moment their first page asks for it.

Clerk's webhooks can arrive seconds after a new user's first page load (or, Clerk warns, not at
all). `SessionSync.sync_user` closes that gap: it returns the user's public.users row, fetching
the user from the Backend API (`GET /v1/users/{id}`) when the database lacks it or has not
heard about it lately, and writing it through the webhooks' own write path, as a `user.updated`
event. So the write path's guarantees hold here too: a newer webhook's data wins over Clerk's
copy, a deleted user stays deleted, and the same version of a user is written once (the event's
id is `sync:<user id>:<updated_at>:<last_sign_in_at>`, recorded in clerk_sync.inbox like any
delivery and replayable like one).

Clerk's API is used sparingly (100 requests per 10 s on development instances, 1,000 in
production): a row a user event reached within the last minute (a webhook, a backfill, this
sync) is answered from the database; concurrent syncs of one user share one fetch; a user this
process fetched within the last minute is not fetched again; a 429 from Clerk is passed on as
SyncUnavailable with Clerk's Retry-After.

    async with SessionSync.open(load_settings()) as sync:
        claims = await sync.verify(token)          # InvalidSessionToken: answer 401
        row = await sync.sync_user(claims)         # or sync.sync_user("user_…")
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from clerk_sync import metrics
from clerk_sync.clerk_api import (
    ClerkAPIError,
    ClerkAuthError,
    ClerkClient,
    ClerkNotFound,
    ClerkRateLimited,
)
from clerk_sync.events import NotAClerkEvent, parse_event
from clerk_sync.session_tokens import (
    Claims,
    InvalidSessionToken,
    JwksKeys,
    KeySource,
    KeysUnavailable,
    PemKey,
    SessionTokenVerifier,
)
from clerk_sync.single_flight import SingleFlight
from clerk_sync.storage import EventRejected, Store, StoredUser, StoreUnavailable, open_store

if TYPE_CHECKING:
    from clerk_sync.settings import Settings

__all__ = [
    "InvalidSessionToken",
    "SessionSync",
    "SyncUnavailable",
    "UserGone",
]

log = logging.getLogger("clerk_sync.session")

FRESH_SECONDS = 60.0  # a row a user event reached this recently is answered without Clerk
RETRY_AFTER_SECONDS = 5
# Clerk is asked while a browser waits: one attempt, a short timeout, and a 429 passed on at once.
CLERK_TIMEOUT_SECONDS = 5.0
MAX_REMEMBERED_FETCHES = 100_000  # users fetched within FRESH_SECONDS, per process


class UserGone(Exception):
    """The user was deleted (in the database, or Clerk no longer has them): answered 410."""


class SyncUnavailable(Exception):
    """Clerk's API or the database is down, too slow or rate-limited: answered 503, to be
    retried after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = max(int(retry_after), 1)


class SessionSync:
    """Verifies session tokens and syncs their users. One per process: it holds the JWKS, the
    fetches in flight and the users fetched lately.

    `store` gives the store to read and write (the app's, once its lifespan has opened it);
    `clerk` makes the Backend API client, called once per lifetime.
    """

    def __init__(
        self,
        *,
        store: Callable[[], Store | None],
        clerk: Callable[[], ClerkClient],
        keys: KeySource | None = None,
        authorized_parties: tuple[str, ...] | list[str] = (),
        fresh_seconds: float = FRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._make_clerk = clerk
        self._clerk: ClerkClient | None = None
        self.keys = keys if keys is not None else JwksKeys(self._fetch_jwks)
        self.authorized_parties = tuple(authorized_parties)
        self.tokens = SessionTokenVerifier(self.keys, authorized_parties=self.authorized_parties)
        self._fresh_seconds = fresh_seconds
        self._clock = clock
        self._fetched: OrderedDict[str, float] = OrderedDict()  # user id → when, oldest first
        self._flights: SingleFlight[str, StoredUser] = SingleFlight()

    @classmethod
    def from_settings(
        cls, settings: Settings, store: Callable[[], Store | None] = lambda: None
    ) -> SessionSync:
        """Configured as `serve` configures it: CLERK_SECRET_KEY (required), CLERK_API_URL,
        CLERK_JWT_KEY, CLERK_AUTHORIZED_PARTIES."""
        secret_key = settings.clerk_secret_key
        if not secret_key:
            raise ValueError("session sync needs CLERK_SECRET_KEY (Clerk Dashboard → API Keys)")
        api_url = settings.clerk_api_url
        return cls(
            store=store,
            clerk=lambda: ClerkClient(
                secret_key, api_url, timeout=CLERK_TIMEOUT_SECONDS, max_attempts=1
            ),
            keys=PemKey(settings.clerk_jwt_key) if settings.clerk_jwt_key else None,
            authorized_parties=settings.authorized_parties,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[SessionSync]:
        """A SessionSync with a store of its own (DATABASE_URL, or REST mode), closed on exit:
        for apps that run their own backend (see examples/fastapi_current_user.py)."""
        store = await open_store(settings, settings.server_backend())
        sync = cls.from_settings(settings, lambda: store)
        try:
            yield sync
        finally:
            await sync.close()
            await store.close()

    async def run(self) -> None:
        """For the app's lifetime (its lifespan runs this as a background task): closes the
        Backend API client when the app stops."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._clerk is not None:
            clerk, self._clerk = self._clerk, None
            await clerk.close()

    # --- tokens -----------------------------------------------------------------------------

    async def verify(self, token: str) -> Claims:
        """The claims of a genuine, current session token. Raises InvalidSessionToken (401),
        or SyncUnavailable when Clerk's JWKS cannot be fetched."""
        try:
            return await self.tokens.verify(token)
        except KeysUnavailable as exc:
            raise SyncUnavailable(str(exc)) from None

    async def current_user(self, token: str) -> dict[str, Any]:
        """`verify` the token, then `sync_user` its user."""
        return await self.sync_user(await self.verify(token))

    # --- users ------------------------------------------------------------------------------

    async def sync_user(self, user: str | Mapping[str, Any]) -> dict[str, Any]:
        """The user's public.users row as it stands after the sync, as a dict of the
        contract's columns (times as aware datetimes).

        `user` is a user id, or the claims of a session token `verify` accepted (their `sub`).
        Raises UserGone when the user was deleted or Clerk has no such user, SyncUnavailable
        when Clerk's API or the database is unavailable or rate-limited.
        """
        user_id = user if isinstance(user, str) else user.get("sub")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("sync_user needs a user id or a session token's claims (with sub)")
        stored = await self._read(user_id)
        if stored is not None and stored.deleted:
            raise UserGone(f"user {user_id} was deleted")
        if stored is not None and self._fresh(user_id, stored):
            return stored.row
        if stored is None and self._fetched_lately(user_id):
            # Fetched and written within the minute, and gone since (or Clerk had no such user).
            raise UserGone(f"user {user_id} was deleted")
        return (await self._flights.run(user_id, lambda: self._fetch_and_write(user_id))).row

    def _fresh(self, user_id: str, stored: StoredUser) -> bool:
        if self._fetched_lately(user_id):
            return True
        if stored.synced_at is None:
            return False
        age = dt.datetime.now(dt.UTC) - stored.synced_at
        return age.total_seconds() < self._fresh_seconds

    def _fetched_lately(self, user_id: str) -> bool:
        when = self._fetched.get(user_id)
        return when is not None and self._clock() - when < self._fresh_seconds

    def _remember_fetch(self, user_id: str) -> None:
        now = self._clock()
        self._fetched[user_id] = now
        self._fetched.move_to_end(user_id)
        # Oldest first: drop what is no longer fresh, and the oldest past the cap.
        while self._fetched:
            oldest = next(iter(self._fetched.values()))
            if now - oldest < self._fresh_seconds and len(self._fetched) <= MAX_REMEMBERED_FETCHES:
                break
            self._fetched.popitem(last=False)

    async def _fetch_and_write(self, user_id: str) -> StoredUser:
        """One flight per user: fetch from Clerk, write through the webhook path, read back."""
        if not self._fetched_lately(user_id):  # else a flight that just landed did it
            user = await self._fetch_user(user_id)
            await self._write(user_id, user)
            self._remember_fetch(user_id)
        stored = await self._read(user_id)
        if stored is None or stored.deleted:
            # The write was stale: a tombstone (hard delete mode leaves no row) or a deletion
            # that won the race.
            raise UserGone(f"user {user_id} was deleted")
        return stored

    async def _fetch_user(self, user_id: str) -> dict[str, Any]:
        try:
            user = await self._client().get_user(user_id)
        except ClerkNotFound:
            metrics.SESSION_SYNC_FETCHES.labels("not_found").inc()
            self._remember_fetch(user_id)
            raise UserGone(f"Clerk has no user {user_id}") from None
        except ClerkRateLimited as exc:
            metrics.SESSION_SYNC_FETCHES.labels("rate_limited").inc()
            log.warning("session sync: Clerk's Backend API is rate-limiting: %s", exc)
            raise SyncUnavailable(
                "Clerk's API is rate-limited, retry later", exc.retry_after
            ) from None
        except ClerkAuthError as exc:
            metrics.SESSION_SYNC_FETCHES.labels("error").inc()
            log.error("session sync: %s", exc)
            raise SyncUnavailable("Clerk's API refused the server's key") from None
        except ClerkAPIError as exc:
            metrics.SESSION_SYNC_FETCHES.labels("error").inc()
            log.warning("session sync: %s", exc)
            raise SyncUnavailable("Clerk's API is unavailable, retry later") from None
        metrics.SESSION_SYNC_FETCHES.labels("ok").inc()
        return user

    async def _write(self, user_id: str, user: dict[str, Any]) -> None:
        event = {"object": "event", "type": "user.updated", "data": user}
        try:
            parsed = parse_event(orjson.dumps(event))
        except NotAClerkEvent as exc:
            log.error("session sync: Clerk's copy of %s cannot be written: %s", user_id, exc)
            raise SyncUnavailable("Clerk's answer for this user could not be synced") from None
        message_id = f"sync:{user_id}:{user['updated_at']}:{user.get('last_sign_in_at') or 0}"
        try:
            await self._store().apply(message_id, parsed)
        except StoreUnavailable as exc:
            log.warning("session sync: %s", exc)
            raise SyncUnavailable("database unavailable, retry later") from None
        except EventRejected as exc:
            log.error("session sync: the database refused Clerk's copy of %s: %s", user_id, exc)
            raise SyncUnavailable("Clerk's answer for this user could not be synced") from None

    async def _read(self, user_id: str) -> StoredUser | None:
        try:
            return await self._store().read_user(user_id)
        except StoreUnavailable as exc:
            log.warning("session sync: %s", exc)
            raise SyncUnavailable("database unavailable, retry later") from None

    def _store(self) -> Store:
        store = self.store()
        if store is None:
            raise SyncUnavailable("starting")
        return store

    def _client(self) -> ClerkClient:
        if self._clerk is None:
            self._clerk = self._make_clerk()
        return self._clerk

    async def _fetch_jwks(self) -> dict[str, Any]:
        return await self._client().get_jwks()
