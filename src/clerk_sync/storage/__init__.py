"""Storage backends. Every backend calls the same SQL function, so the guarantees live in one
place (`sql/repeatable/20_write_path.sql`); a backend only carries the call and maps its failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clerk_sync.settings import PostgresBackend, RestBackend
from clerk_sync.storage.base import EventRejected, Store, StoredUser, StoreUnavailable

if TYPE_CHECKING:
    from clerk_sync.settings import Settings

__all__ = ["EventRejected", "Store", "StoreUnavailable", "StoredUser", "open_store"]


async def open_store(settings: Settings, backend: PostgresBackend | RestBackend) -> Store:
    """The `Store` for `backend` (from `settings.backend`, or PostgreSQL at a DSN of the
    caller's, such as the embedded server's), tuned by `settings`.

    Each backend is imported only when chosen: REST mode never loads the database driver.
    """
    if isinstance(backend, PostgresBackend):
        from clerk_sync.storage.postgres import PostgresStore

        return await PostgresStore.open(
            backend.dsn,
            delete_mode=settings.delete_mode,
            timeout=settings.db_timeout,
            pool_size=settings.pool_size,
            prepared_statements=settings.prepared_statements,
        )
    from clerk_sync.storage.rest import RestStore

    return RestStore(
        backend.url,
        backend.key,
        delete_mode=settings.delete_mode,
        timeout=settings.db_timeout,
        max_connections=settings.pool_size,
    )
