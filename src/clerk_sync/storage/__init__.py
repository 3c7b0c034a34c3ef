"""Storage backends. Every backend calls the same SQL function, so the guarantees live in one
place (`sql/migrations`); a backend only carries the call and maps its failures."""

from clerk_sync.storage.base import EventRejected, Store, StoreUnavailable

__all__ = ["EventRejected", "Store", "StoreUnavailable"]
