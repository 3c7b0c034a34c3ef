"""Settings: environment variables, a `.env` file in the working directory, and CLI flags.

Precedence is flags, then real environment variables, then `.env` (pydantic-settings gives init
arguments, then the environment, then the dotenv file). A value that is missing or malformed
stops the command with one line naming the variable; a secret is never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_PREFIX = "whsec_"
CLERK_SECRET_KEY_PREFIX = "sk_"
DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
DEFAULT_DATA_DIR = Path(".clerk-sync")


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
    # Svix waits 15 s for an answer: waiting for a pool connection and running the write each
    # get at most this long, so a slow or dead database is answered 503 well inside that.
    db_timeout: float = Field(default=5.0, gt=0, le=7, validation_alias="CLERK_SYNC_DB_TIMEOUT")
    pool_size: int = Field(default=10, ge=1, le=200, validation_alias="CLERK_SYNC_POOL_SIZE")
    prepared_statements: Literal["auto", "on", "off"] = Field(
        default="auto", validation_alias="CLERK_SYNC_PREPARED_STATEMENTS"
    )
    # For `backfill`: the Backend API secret key and where the API is (tests use a stand-in).
    clerk_secret_key: str | None = Field(default=None, validation_alias="CLERK_SECRET_KEY")
    clerk_api_url: str = Field(default=DEFAULT_CLERK_API_URL, validation_alias="CLERK_API_URL")

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
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "expected a postgresql://user:password@host:port/dbname connection string"
            )
        return value.strip()

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
