"""clerk-sync: keep a Clerk application's users in your own Supabase/PostgreSQL database."""

from clerk_sync.app import WEBHOOK_PATH, create_app, create_app_from_settings
from clerk_sync.delivery import Answer, DeliveryHandler
from clerk_sync.errors import ClerkSyncError, ConfigError, DatabaseUnavailable, Refused
from clerk_sync.events import ClerkEvent, NotAClerkEvent, Outcome, parse_event
from clerk_sync.settings import Settings, load_settings
from clerk_sync.verify import VerificationError, VerifiedDelivery, Verifier, sign, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "WEBHOOK_PATH",
    "Answer",
    "ClerkEvent",
    "ClerkSyncError",
    "ConfigError",
    "DatabaseUnavailable",
    "DeliveryHandler",
    "NotAClerkEvent",
    "Outcome",
    "Refused",
    "Settings",
    "VerificationError",
    "VerifiedDelivery",
    "Verifier",
    "create_app",
    "create_app_from_settings",
    "load_settings",
    "parse_event",
    "sign",
    "verify_webhook",
]
