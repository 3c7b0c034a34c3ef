"""Storage backends. Every backend calls the same SQL function, so the guarantees live in one
place (`sql/repeatable/20_write_path.sql`); a backend only carries the call and maps its failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clerk_sync.storage.base import EventRejected, Store, StoreUnavailable

if TYPE_CHECKING:
    from clerk_sync.settings import Settings

__all__ = ["EventRejected", "Store", "StoreUnavailable", "open_store"]


async def open_store(settings: Settings, dsn: str | None = None) -> Store:
    """The backend the settings choose: PostgreSQL at `dsn` (default DATABASE_URL), else
    Supabase's REST API (SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY).

    Each backend is imported only when chosen: REST mode never loads the database driver.
    """
    dsn = dsn or settings.database_url
    if dsn:
        from clerk_sync.storage.postgres import PostgresStore

        return await PostgresStore.open(
            dsn,
            delete_mode=settings.delete_mode,
            timeout=settings.db_timeout,
            pool_size=settings.pool_size,
            prepared_statements=settings.prepared_statements,
        )
    if settings.supabase_url and settings.supabase_service_role_key:
        from clerk_sync.storage.rest import RestStore

        return RestStore(
            settings.supabase_url,
            settings.supabase_service_role_key,
            delete_mode=settings.delete_mode,
            timeout=settings.db_timeout,
            max_connections=settings.pool_size,
        )
    raise ValueError(
        "no database configured: set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
    )
