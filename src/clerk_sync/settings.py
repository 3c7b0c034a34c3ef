"""Settings: environment variables, a `.env` file in the working directory, and CLI flags.

Precedence is flags, then real environment variables, then `.env` (pydantic-settings gives init
arguments, then the environment, then the dotenv file). A value that is missing or malformed
stops the command with one line naming the variable; a secret is never echoed back.

`Settings.backend` is the one place that chooses where writes go (direct PostgreSQL, Supabase's
REST API, or the embedded server); `doctor` reads the same rules and decoders from here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clerk_sync.custom_columns import CustomColumns, load_custom_columns
from clerk_sync.errors import ConfigError

SECRET_PREFIX = "whsec_"
CLERK_SECRET_KEY_PREFIX = "sk_"
DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
DEFAULT_DATA_DIR = Path(".clerk-sync")
SUPABASE_SECRET_KEY_PREFIX = "sb_secret_"
SUPABASE_PUBLISHABLE_KEY_PREFIX = "sb_publishable_"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# Below this a key is refused: no Svix secret is this short (theirs are 24 or 32 bytes).
MIN_SIGNING_KEY_BYTES = 16


def blank_is_unset(value: str | None) -> str | None:
    """A variable set to nothing (or only whitespace) counts as not set, for every setting."""
    return None if value is None or not value.strip() else value


def signing_key(secret: str) -> bytes:
    """The bytes inside a Svix signing secret `whsec_<base64>`, however many there are."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            "a Svix signing secret starts with 'whsec_' (copy it from Clerk Dashboard → Webhooks → "
            "your endpoint → Signing Secret)"
        )
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        # The reference libraries pad before decoding, so unpadded secrets work too.
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not valid base64") from None


def decode_signing_secret(secret: str) -> bytes:
    """The HMAC key inside a Svix signing secret, as `serve` accepts it."""
    key = signing_key(secret)
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError("the secret is too short to be a Svix signing secret")
    return key


def supabase_jwt_claims(key: str) -> dict[str, Any] | None:
    """The claims of a legacy Supabase key (a JWT), unverified: only Supabase can check its
    signature, we only read which key it is. None when it is not a JWT."""
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def supabase_key_role(key: str) -> str:
    """The database role a Supabase API key acts as: `service_role` for a secret key
    (`sb_secret_…`), `anon` for a publishable one, else the legacy JWT's `role` claim.
    ValueError when the key is neither."""
    if key.startswith(SUPABASE_SECRET_KEY_PREFIX):
        return "service_role"
    if key.startswith(SUPABASE_PUBLISHABLE_KEY_PREFIX):
        return "anon"
    role = (supabase_jwt_claims(key) or {}).get("role")
    if not isinstance(role, str):
        raise ValueError("not a Supabase API key")
    return role


def check_database_url(value: str) -> str:
    """A `postgresql://` DSN as asyncpg will read it; ValueError, never echoing the value (it
    holds the password), when it cannot be."""
    value = value.strip()
    expected = "expected a postgresql://user:password@host:port/dbname connection string"
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError(expected)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        # The usual cause is a password with '#', '/' or '@' in it.
        raise ValueError(
            f"{expected}; its port is not a number (percent-encode special characters "
            "in the password, e.g. '#' as %23)"
        ) from None
    if not (parts.hostname or "host=" in parts.query) or port == 0:
        raise ValueError(f"{expected}; it names no host")
    return value


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, without its password: for messages."""
    try:
        parts = urlsplit(dsn)
        where = parts.hostname or "local socket"
        return f"{where}:{parts.port or 5432}{parts.path}"
    except ValueError:
        return "the configured database"


# --- where writes go ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostgresBackend:
    """Direct PostgreSQL (DATABASE_URL): writes, migrations and every operations command."""

    dsn: str = field(repr=False)  # it holds the password
    kind: ClassVar[str] = "postgres"

    @property
    def where(self) -> str:
        return describe_dsn(self.dsn)


@dataclass(frozen=True, slots=True)
class RestBackend:
    """Supabase's REST API (SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY): writes only; it cannot
    migrate, and the operations commands need a direct connection."""

    url: str
    key: str = field(repr=False)
    kind: ClassVar[str] = "rest"

    @property
    def where(self) -> str:
        return f"Supabase's REST API at {urlsplit(self.url).hostname}"


@dataclass(frozen=True, slots=True)
class EmbeddedBackend:
    """Neither is set: an embedded PostgreSQL kept in the data directory, started by the CLI."""

    data_dir: Path
    kind: ClassVar[str] = "embedded"

    @property
    def where(self) -> str:
        return "embedded PostgreSQL"


Backend = PostgresBackend | RestBackend | EmbeddedBackend


def choose_backend(
    database_url: str | None,
    supabase_url: str | None,
    supabase_service_role_key: str | None,
    data_dir: Path,
) -> Backend:
    """DATABASE_URL wins; else REST mode when both Supabase settings are set; else embedded.
    ConfigError when only one of the Supabase pair is set (REST mode was meant, half of it is
    missing)."""
    if database_url:
        return PostgresBackend(database_url)
    if supabase_url and supabase_service_role_key:
        return RestBackend(supabase_url, supabase_service_role_key)
    if supabase_url:
        raise ConfigError(
            "SUPABASE_SERVICE_ROLE_KEY: not set; REST mode needs it with SUPABASE_URL (the "
            "service_role or sb_secret_… key from Supabase Dashboard → Project Settings → API "
            "Keys), or set DATABASE_URL instead"
        )
    if supabase_service_role_key:
        raise ConfigError(
            "SUPABASE_URL: not set; REST mode needs it with SUPABASE_SERVICE_ROLE_KEY "
            "(https://<project-ref>.supabase.co), or set DATABASE_URL instead"
        )
    return EmbeddedBackend(data_dir)


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
    # Session sync (POST /api/users/sync): the instance's PEM public key for verifying session
    # tokens without a network call (else its JWKS is fetched with CLERK_SECRET_KEY), and the
    # origins allowed as a token's `azp` (comma-separated), which also get CORS headers.
    clerk_jwt_key: str | None = Field(default=None, validation_alias="CLERK_JWT_KEY")
    clerk_authorized_parties: str | None = Field(
        default=None, validation_alias="CLERK_AUTHORIZED_PARTIES"
    )

    @field_validator("clerk_jwt_key")
    @classmethod
    def _check_clerk_jwt_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from clerk_sync.session_tokens import load_pem_key  # cryptography only when set

        # A PEM given on one line (a .env file, a platform's variable) spells newlines as \n.
        pem = value.replace("\\n", "\n").strip()
        load_pem_key(pem)
        return pem

    @field_validator("clerk_authorized_parties")
    @classmethod
    def _check_clerk_authorized_parties(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from clerk_sync.session_tokens import origin

        return ",".join(origin(part) for part in split_secrets(value))

    @property
    def authorized_parties(self) -> list[str]:
        return self.clerk_authorized_parties.split(",") if self.clerk_authorized_parties else []

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
    # Payloads of handled deliveries are dropped from their inbox row after this many days (0:
    # at the next retention pass); dead letters keep theirs.
    payload_retention_days: int = Field(
        default=3, ge=0, validation_alias="CLERK_SYNC_PAYLOAD_RETENTION_DAYS"
    )

    # The columns file (clerk-sync.toml in the working directory when not set): custom_columns.py.
    config_file: Path | None = Field(default=None, validation_alias="CLERK_SYNC_CONFIG")

    @cached_property
    def custom_columns(self) -> CustomColumns:
        """The columns the file declares (ConfigError naming the file and the entry)."""
        return load_custom_columns(self.config_file)

    @field_validator(
        "config_file",
        "webhook_secret",
        "database_url",
        "supabase_url",
        "supabase_service_role_key",
        "clerk_secret_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return blank_is_unset(value) if isinstance(value, str) else value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secrets(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for secret in split_secrets(value):
            decode_signing_secret(secret)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        return None if value is None else check_database_url(value)

    @field_validator("supabase_url")
    @classmethod
    def _check_supabase_url(cls, value: str | None) -> str | None:
        if value is None:
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
        if value is None:
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
        if value is None:
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
    def backend(self) -> Backend:
        """Where writes go (see `choose_backend`); ConfigError when REST mode is half set."""
        return choose_backend(
            self.database_url, self.supabase_url, self.supabase_service_role_key, self.data_dir
        )

    def server_backend(self, dsn: str | None = None) -> PostgresBackend | RestBackend:
        """Where a server in this process writes: PostgreSQL at `dsn` (an embedded server's, say)
        or `backend`, which must not be the embedded one (only the CLI starts that)."""
        backend = PostgresBackend(dsn) if dsn else self.backend
        if isinstance(backend, EmbeddedBackend):
            raise ValueError(
                "no database configured: set DATABASE_URL, or SUPABASE_URL and "
                "SUPABASE_SERVICE_ROLE_KEY"
            )
        return backend

    @property
    def rest_mode(self) -> bool:
        """Writes go through Supabase's REST API: SUPABASE_URL and its key set, DATABASE_URL not."""
        try:
            return isinstance(self.backend, RestBackend)
        except ConfigError:
            return False

    @property
    def signing_secrets(self) -> list[str]:
        return split_secrets(self.webhook_secret) if self.webhook_secret else []

    @property
    def signing_keys(self) -> list[bytes]:
        return [decode_signing_secret(s) for s in self.signing_secrets]


def variables(field: str) -> tuple[str, ...]:
    """The variables a field is read from, in the order pydantic-settings tries them (the
    first is the one to name in messages)."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(choice for choice in alias.choices if isinstance(choice, str))
    return (alias,) if isinstance(alias, str) else (field.upper(),)


def load_settings(**flags: Any) -> Settings:
    """Settings from flags (those given), the environment and `.env`; ConfigError if invalid."""
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = variables(field)[0] if field in Settings.model_fields else field
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{variable}: {message}") from None
    settings.custom_columns  # noqa: B018 (read at start: a malformed file stops the command now)
    return settings
