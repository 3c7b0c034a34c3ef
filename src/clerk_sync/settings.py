"""Settings: environment variables, a `.env` file in the working directory, and CLI flags.

Precedence is flags, then real environment variables, then `.env` (pydantic-settings gives init
arguments, then the environment, then the dotenv file). A value that is missing or malformed
stops the command with one line naming the variable; a secret is never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_PREFIX = "whsec_"
CLERK_SECRET_KEY_PREFIX = "sk_"
DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
DEFAULT_DATA_DIR = Path(".clerk-sync")
SUPABASE_SECRET_KEY_PREFIX = "sb_secret_"
SUPABASE_PUBLISHABLE_KEY_PREFIX = "sb_publishable_"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable and says what to do."""


def decode_signing_secret(secret: str) -> bytes:
    """The HMAC key inside a Svix signing secret `whsec_<base64>`."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            "a Svix signing secret starts with 'whsec_' (copy it from Clerk Dashboard → Webhooks → "
            "your endpoint → Signing Secret)"
        )
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        # The reference libraries pad before decoding, so unpadded secrets work too.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise ValueError("the secret is too short to be a Svix signing secret")
    return key


def supabase_key_role(key: str) -> str:
    """The database role a Supabase API key acts as: `service_role` for a secret key
    (`sb_secret_…`), `anon` for a publishable one, else the legacy JWT's `role` claim (the
    signature is Supabase's to check). ValueError when the key is neither."""
    if key.startswith(SUPABASE_SECRET_KEY_PREFIX):
        return "service_role"
    if key.startswith(SUPABASE_PUBLISHABLE_KEY_PREFIX):
        return "anon"
    parts = key.split(".")
    if len(parts) != 3:
        raise ValueError("not a Supabase API key")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("not a Supabase API key") from None
    role = claims.get("role") if isinstance(claims, dict) else None
    if not isinstance(role, str):
        raise ValueError("not a Supabase API key")
    return role


def split_secrets(value: str) -> list[str]:
    """Several secrets during a rotation, separated by spaces or commas."""
    return [part for part in re.split(r"[\s,]+", value.strip()) if part]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
    )

    webhook_secret: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CLERK_WEBHOOK_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET"),
    )
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    supabase_url: str | None = Field(default=None, validation_alias="SUPABASE_URL")
    supabase_service_role_key: str | None = Field(
        default=None, validation_alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, validation_alias="CLERK_SYNC_DATA_DIR")
    host: str = Field(default="127.0.0.1", validation_alias="HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="PORT")

    delete_mode: Literal["soft", "hard"] = Field(
        default="soft", validation_alias="CLERK_SYNC_DELETE_MODE"
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, validation_alias="CLERK_SYNC_MAX_BODY_BYTES"
    )
    failed_verification_limit: int = Field(
        default=20, ge=1, validation_alias="CLERK_SYNC_FAILED_VERIFICATION_LIMIT"
    )
    # Svix waits 15 s for an answer: a delivery waits at most this long for the database, pool
    # and write together, so a slow or dead database is answered 503 well inside that.
    db_timeout: float = Field(default=5.0, gt=0, le=10, validation_alias="CLERK_SYNC_DB_TIMEOUT")
    pool_size: int = Field(default=10, ge=1, le=200, validation_alias="CLERK_SYNC_POOL_SIZE")
    prepared_statements: Literal["auto", "on", "off"] = Field(
        default="auto", validation_alias="CLERK_SYNC_PREPARED_STATEMENTS"
    )
    # For `backfill`: the Backend API secret key and where the API is (tests use a stand-in).
    clerk_secret_key: str | None = Field(default=None, validation_alias="CLERK_SECRET_KEY")
    clerk_api_url: str = Field(default=DEFAULT_CLERK_API_URL, validation_alias="CLERK_API_URL")
    # Inbox rows (the dedupe record) are purged after this many days; never under 2, since
    # dedupe must outlast Svix's ~27 h of retries. Dead letters are kept until replayed.
    retention_days: int = Field(default=30, ge=2, validation_alias="CLERK_SYNC_RETENTION_DAYS")
    # `serve`'s own limits on what clients hold before a request reaches the app (server.py).
    max_connections: int = Field(default=2048, ge=16, validation_alias="CLERK_SYNC_MAX_CONNECTIONS")
    header_timeout: float = Field(
        default=5.0, gt=0, le=60, validation_alias="CLERK_SYNC_HEADER_TIMEOUT"
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, validation_alias="CLERK_SYNC_MAX_HEADER_BYTES"
    )
    max_body_bytes_in_flight: int = Field(
        default=16 * 1024 * 1024, ge=1024, validation_alias="CLERK_SYNC_MAX_BODY_BYTES_IN_FLIGHT"
    )

    @field_validator("webhook_secret")
    @classmethod
    def _check_secrets(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for secret in split_secrets(value):
            decode_signing_secret(secret)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        expected = "expected a postgresql://user:password@host:port/dbname connection string"
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(expected)
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            # Never echo the value: the usual cause is a password with '#', '/' or '@' in it.
            raise ValueError(
                f"{expected}; its port is not a number (percent-encode special characters "
                "in the password, e.g. '#' as %23)"
            ) from None
        if not (parts.hostname or "host=" in parts.query) or port == 0:
            raise ValueError(f"{expected}; it names no host")
        return value.strip()

    @field_validator("supabase_url")
    @classmethod
    def _check_supabase_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        expected = "expected the project URL, such as https://<project-ref>.supabase.co"
        try:
            parts = urlsplit(value.strip())
            host, _ = parts.hostname, parts.port
        except ValueError:
            raise ValueError(expected) from None
        if not host or parts.scheme not in ("https", "http") or parts.query or parts.fragment:
            raise ValueError(expected)
        if parts.scheme == "http" and host not in LOCAL_HOSTS:
            raise ValueError(f"{expected}: https is required (plain http only for localhost)")
        # The REST API's own path, pasted from the dashboard, is the same project.
        path = parts.path.rstrip("/").removesuffix("/rest/v1")
        return f"{parts.scheme}://{parts.netloc}{path}"

    @field_validator("supabase_service_role_key")
    @classmethod
    def _check_supabase_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        where = "Supabase Dashboard → Project Settings → API Keys"
        try:
            role = supabase_key_role(value)
        except ValueError:
            raise ValueError(
                f"expected the service_role key (eyJ…) or a secret key (sb_secret_…) from {where}"
            ) from None
        if role != "service_role":
            # Never echo the key: name what kind of key it is instead.
            kind = {"anon": "the anon (publishable) key", "authenticated": "a user's token"}
            raise ValueError(
                f"this is {kind.get(role, 'not a service-role key')}, which row-level security "
                f"stops from writing; use the service_role key or a secret key (sb_secret_…) "
                f"from {where}"
            )
        return value

    @field_validator("clerk_secret_key")
    @classmethod
    def _check_clerk_secret_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.strip().startswith(CLERK_SECRET_KEY_PREFIX):
            # Never echo the value: a publishable key (pk_…) pasted here is harmless, but a
            # mangled secret key is still a secret.
            raise ValueError(
                "a Clerk secret key starts with 'sk_' (copy it from Clerk Dashboard → API Keys → "
                "Secret keys; the 'pk_' publishable key will not do)"
            )
        return value.strip()

    @field_validator("clerk_api_url")
    @classmethod
    def _check_clerk_api_url(cls, value: str) -> str:
        value = value.strip() or DEFAULT_CLERK_API_URL
        if not value.startswith(("https://", "http://")):
            raise ValueError("expected an http(s):// URL such as https://api.clerk.com/v1")
        return value.rstrip("/")

    @property
    def rest_mode(self) -> bool:
        """Writes go through Supabase's REST API: SUPABASE_URL and its key set, DATABASE_URL not."""
        return not self.database_url and bool(self.supabase_url and self.supabase_service_role_key)

    @property
    def signing_secrets(self) -> list[str]:
        return split_secrets(self.webhook_secret) if self.webhook_secret else []

    @property
    def signing_keys(self) -> list[bytes]:
        return [decode_signing_secret(s) for s in self.signing_secrets]


# The variable a user sets for each field, for error messages.
_VARIABLES = {
    "webhook_secret": "CLERK_WEBHOOK_SECRET",
    "database_url": "DATABASE_URL",
    "supabase_url": "SUPABASE_URL",
    "supabase_service_role_key": "SUPABASE_SERVICE_ROLE_KEY",
    "data_dir": "CLERK_SYNC_DATA_DIR",
    "host": "HOST",
    "port": "PORT",
    "delete_mode": "CLERK_SYNC_DELETE_MODE",
    "max_body_bytes": "CLERK_SYNC_MAX_BODY_BYTES",
    "failed_verification_limit": "CLERK_SYNC_FAILED_VERIFICATION_LIMIT",
    "db_timeout": "CLERK_SYNC_DB_TIMEOUT",
    "pool_size": "CLERK_SYNC_POOL_SIZE",
    "prepared_statements": "CLERK_SYNC_PREPARED_STATEMENTS",
    "clerk_secret_key": "CLERK_SECRET_KEY",
    "clerk_api_url": "CLERK_API_URL",
    "retention_days": "CLERK_SYNC_RETENTION_DAYS",
    "max_connections": "CLERK_SYNC_MAX_CONNECTIONS",
    "header_timeout": "CLERK_SYNC_HEADER_TIMEOUT",
    "max_header_bytes": "CLERK_SYNC_MAX_HEADER_BYTES",
    "max_body_bytes_in_flight": "CLERK_SYNC_MAX_BODY_BYTES_IN_FLIGHT",
}


def load_settings(**flags: Any) -> Settings:
    """Settings from flags (those given), the environment and `.env`; ConfigError if invalid."""
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = _VARIABLES.get(field, field)
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{variable}: {message}") from None
