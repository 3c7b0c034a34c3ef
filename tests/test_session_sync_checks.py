"""`clerk-sync doctor`'s session-sync checks (session_sync_checks.py)."""

from __future__ import annotations

from pathlib import Path

from clerk_sync import doctor
from clerk_sync.doctor import Sources, Status
from clerk_sync.session_sync_checks import check_session_sync
from tests import clerk_standin, support
from tests.session_keys import KeyPair, jwks

PAIR = KeyPair("ins_doctor1")
SECRET = "sk_test_doctorcheck0123456789"


def check(**environ: str) -> list[tuple[Status, str]]:
    return [(f.status, f.message) for f in check_session_sync(Sources(environ, {}), timeout=2)]


def test_nothing_to_say_when_session_sync_is_not_configured() -> None:
    assert check() == []


def test_settings_that_do_nothing_without_the_secret_key_are_pointed_out() -> None:
    [(status, message)] = check(CLERK_AUTHORIZED_PARTIES="https://app.example.com")
    assert status is Status.WARN
    assert "without CLERK_SECRET_KEY" in message and "404" in message


def test_a_publishable_key_in_place_of_the_secret_key_fails_without_being_printed() -> None:
    [(status, message)] = check(CLERK_SECRET_KEY="pk_test_Y2xlcmsuZXhhbXBsZS5jb20k")
    assert status is Status.FAIL
    assert "starts with 'sk_'" in message
    assert "Y2xlcmsuZXhhbXBsZS5jb20k" not in message


def test_a_pem_key_and_origins_pass() -> None:
    findings = check(
        CLERK_SECRET_KEY=SECRET,
        CLERK_JWT_KEY=PAIR.public_pem.replace("\n", "\\n"),  # one line, as in a .env file
        CLERK_AUTHORIZED_PARTIES="https://app.example.com, http://localhost:3000",
    )
    assert [status for status, _ in findings] == [Status.OK] * 3
    assert SECRET not in " ".join(message for _, message in findings)
    assert "2048 bits" in findings[1][1]
    assert "https://app.example.com, http://localhost:3000" in findings[2][1]


def test_a_pem_that_does_not_parse_fails() -> None:
    findings = check(CLERK_SECRET_KEY=SECRET, CLERK_JWT_KEY="-----BEGIN PUBLIC KEY-----\nx\n")
    assert findings[1][0] is Status.FAIL
    assert "not a PEM public key" in findings[1][1]


def test_an_origin_with_a_path_fails_and_no_origins_warns() -> None:
    pem = PAIR.public_pem
    findings = check(
        CLERK_SECRET_KEY=SECRET,
        CLERK_JWT_KEY=pem,
        CLERK_AUTHORIZED_PARTIES="https://app.example.com/dashboard",
    )
    assert findings[2][0] is Status.FAIL
    assert "no path" in findings[2][1]
    findings = check(CLERK_SECRET_KEY=SECRET, CLERK_JWT_KEY=pem)
    assert findings[2][0] is Status.WARN
    assert "CSRF" in findings[2][1]


def test_the_jwks_is_fetched_with_the_secret_key() -> None:
    standin = clerk_standin.StandIn(jwks=jwks(PAIR, KeyPair("ins_doctor2")))
    with clerk_standin.running(standin):
        good = check(CLERK_SECRET_KEY=standin.secret_key, CLERK_API_URL=standin.url)
        wrong = check(CLERK_SECRET_KEY="sk_test_wrong_key_000", CLERK_API_URL=standin.url)
    assert good[1] == (
        Status.OK,
        f"{standin.url}/jwks answers 2 RSA key(s) for verifying session tokens",
    )
    assert wrong[1][0] is Status.FAIL and "rejected (401)" in wrong[1][1]
    closed = f"http://127.0.0.1:{support.free_port()}/v1"
    down = check(CLERK_SECRET_KEY=SECRET, CLERK_API_URL=closed)
    assert down[1][0] is Status.FAIL and "cannot fetch the JWKS" in down[1][1]


def test_doctor_runs_them(tmp_path: Path) -> None:
    environ = {
        "CLERK_WEBHOOK_SECRET": support.make_secret()[0],
        "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
        "CLERK_SECRET_KEY": SECRET,
        "CLERK_JWT_KEY": PAIR.public_pem,
        "CLERK_AUTHORIZED_PARTIES": "https://app.example.com/",
    }
    findings = doctor.run(environ, dotenv_path=tmp_path / ".env", data_dir=tmp_path)
    topics = [(f.topic, f.status) for f in findings if f.topic == "session sync"]
    assert topics == [("session sync", Status.OK)] * 3
