"""Settings: variables, aliases, `.env`, flag precedence, and one-line errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from clerk_sync.settings import (
    ConfigError,
    EmbeddedBackend,
    PostgresBackend,
    RestBackend,
    decode_signing_secret,
    load_settings,
    split_secrets,
    variables,
)
from tests import support


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "CLERK_WEBHOOK_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET", "DATABASE_URL", "PORT", "HOST",
        "CLERK_SYNC_DATA_DIR", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "CLERK_SYNC_DELETE_MODE",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port, s.delete_mode, s.max_body_bytes) == ("127.0.0.1", 8000, "soft", 1048576)
    assert s.signing_secrets == []
    assert s.database_url is None
    assert s.data_dir == Path(".clerk-sync")


def test_several_secrets_for_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    (a, key_a), (b, key_b), (c, key_c) = (support.make_secret() for _ in range(3))
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", f"{a}, {b} {c}")
    s = load_settings()
    assert s.signing_secrets == [a, b, c]
    assert s.signing_keys == [key_a, key_b, key_c]


def test_clerk_docs_variable_name_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    secret, key = support.make_secret()
    monkeypatch.setenv("CLERK_WEBHOOK_SIGNING_SECRET", secret)
    assert load_settings().signing_keys == [key]


def test_precedence_flags_then_environment_then_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PORT=7001\nHOST=0.0.0.0\n")
    assert load_settings().port == 7001
    monkeypatch.setenv("PORT", "7002")
    s = load_settings()
    assert (s.port, s.host) == (7002, "0.0.0.0")
    assert load_settings(port=7003).port == 7003


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "CLERK_WEBHOOK_SECRET",
            "sk_test_abc",
            "CLERK_WEBHOOK_SECRET: a Svix signing secret starts with 'whsec_'",
        ),
        (
            "CLERK_WEBHOOK_SECRET",
            "whsec_%%%notbase64",
            "CLERK_WEBHOOK_SECRET: the part after 'whsec_' is not valid base64",
        ),
        ("CLERK_WEBHOOK_SECRET", "whsec_YWJj", "CLERK_WEBHOOK_SECRET: the secret is too short"),
        ("PORT", "eighty", "PORT: "),
        ("PORT", "70000", "PORT: "),
        ("DATABASE_URL", "mysql://root@localhost/db", "DATABASE_URL: expected a postgresql://"),
        ("CLERK_SYNC_DELETE_MODE", "purge", "CLERK_SYNC_DELETE_MODE: "),
    ],
)
def test_malformed_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message
    if "SECRET" in variable:
        assert value not in message  # never echo a secret


def test_second_secret_malformed_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    good, _ = support.make_secret()
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", f"{good} whsec_!!")
    with pytest.raises(ConfigError, match="CLERK_WEBHOOK_SECRET"):
        load_settings()


def test_secret_decoding() -> None:
    assert decode_signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")[:4] == bytes.fromhex(
        "31f290f6"
    )
    # Unpadded secrets decode as the reference libraries decode them.
    assert len(decode_signing_secret("whsec_plJ3nmyCDGBKInavdOK15jsl")) == 18
    assert split_secrets(" a, b,,c  d ") == ["a", "b", "c", "d"]


SERVICE_ROLE_JWT = (  # the local `supabase start` service_role key (a public demo value)
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9"
    "sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
)
ANON_JWT = (  # the local `supabase start` anon key
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAi"
    "OjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
)


@pytest.mark.parametrize(
    ("url", "key", "expected_url"),
    [
        ("https://abcd.supabase.co", "sb_secret_abc123", "https://abcd.supabase.co"),
        ("https://abcd.supabase.co/rest/v1/", SERVICE_ROLE_JWT, "https://abcd.supabase.co"),
        ("http://127.0.0.1:54321", SERVICE_ROLE_JWT, "http://127.0.0.1:54321"),
        ("http://localhost:54321/", "sb_secret_abc123", "http://localhost:54321"),
    ],
)
def test_rest_mode_settings(url: str, key: str, expected_url: str) -> None:
    s = load_settings(supabase_url=url, supabase_service_role_key=key)
    assert (s.supabase_url, s.rest_mode) == (expected_url, True)
    # DATABASE_URL, when set too, wins: direct mode.
    assert not load_settings(
        supabase_url=url, supabase_service_role_key=key, database_url="postgresql://x@h/db"
    ).rest_mode


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SUPABASE_URL", "http://abcd.supabase.co", "https is required"),
        ("SUPABASE_URL", "abcd.supabase.co", "expected the project URL"),
        ("SUPABASE_URL", "https://", "expected the project URL"),
        ("SUPABASE_SERVICE_ROLE_KEY", ANON_JWT, "the anon (publishable) key"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_publishable_abc123", "the anon (publishable) key"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sk_live_notsupabase", "expected the service_role key"),
        ("SUPABASE_SERVICE_ROLE_KEY", "eyJhbGciOi.bm90IGpzb24.x", "expected the service_role key"),
    ],
)
def test_rest_mode_mistakes_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ") and expected in message
    assert "\n" not in message
    if variable == "SUPABASE_SERVICE_ROLE_KEY":
        assert value[8:] not in message


# --- the backend, chosen in one place ------------------------------------------------------------


def test_the_backend_database_url_wins_then_rest_then_embedded(tmp_path: Path) -> None:
    dsn = "postgresql://u:hunter2@db.example.com:5432/app"
    both = {
        "supabase_url": "https://abcd.supabase.co",
        "supabase_service_role_key": SERVICE_ROLE_JWT,
    }
    assert load_settings(database_url=dsn, **both).backend == PostgresBackend(dsn)
    assert load_settings(**both).backend == RestBackend(
        "https://abcd.supabase.co", SERVICE_ROLE_JWT
    )
    assert load_settings(data_dir=tmp_path).backend == EmbeddedBackend(tmp_path)
    # What a backend says about itself never includes the password or the key.
    for backend in (
        PostgresBackend(dsn),
        RestBackend("https://abcd.supabase.co", SERVICE_ROLE_JWT),
    ):
        assert "hunter2" not in f"{backend!r} {backend.where}"
        assert SERVICE_ROLE_JWT[8:] not in f"{backend!r} {backend.where}"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"supabase_url": "https://abcd.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY"),
        ({"supabase_service_role_key": "sb_secret_abc123"}, "SUPABASE_URL"),
    ],
)
def test_half_of_rest_mode_names_the_other_half(given: dict[str, str], missing: str) -> None:
    settings = load_settings(**given)
    with pytest.raises(ConfigError) as caught:
        _ = settings.backend
    assert str(caught.value).startswith(f"{missing}: not set") and "DATABASE_URL" in str(
        caught.value
    )
    assert not settings.rest_mode
    # DATABASE_URL set too: direct mode, whatever half of REST mode is there.
    assert isinstance(
        load_settings(database_url="postgresql://x@h/db", **given).backend, PostgresBackend
    )


def test_blank_is_unset_for_every_optional_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("CLERK_WEBHOOK_SECRET", "DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "CLERK_SECRET_KEY"):  # fmt: skip
        monkeypatch.setenv(variable, "  ")
    s = load_settings(data_dir=Path("d"))
    assert (s.webhook_secret, s.database_url, s.supabase_url, s.clerk_secret_key) == (None,) * 4
    assert s.backend == EmbeddedBackend(Path("d"))


def test_variable_names_come_from_the_model() -> None:
    assert variables("webhook_secret") == ("CLERK_WEBHOOK_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET")
    assert variables("db_timeout") == ("CLERK_SYNC_DB_TIMEOUT",)


def test_session_sync_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.session_keys import KeyPair

    pem = KeyPair("ins_settings").public_pem
    monkeypatch.setenv("CLERK_JWT_KEY", pem.replace("\n", "\\n"))  # a one-line .env value
    monkeypatch.setenv("CLERK_AUTHORIZED_PARTIES", "https://App.example.com/ http://localhost:3000")
    settings = load_settings()
    assert settings.clerk_jwt_key == pem.strip()
    assert settings.authorized_parties == ["https://app.example.com", "http://localhost:3000"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CLERK_JWT_KEY", "sk_test_not_a_pem", "CLERK_JWT_KEY: not a PEM public key"),
        (
            "CLERK_AUTHORIZED_PARTIES",
            "https://app.example.com/home",
            "CLERK_AUTHORIZED_PARTIES: 'https://app.example.com/home' is not an origin",
        ),
        ("CLERK_AUTHORIZED_PARTIES", "app.example.com", "is not an origin such as https://"),
    ],
)
def test_session_sync_mistakes_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings()
    assert "sk_test_not_a_pem" not in str(caught.value)
