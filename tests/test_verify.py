"""clerk_sync.verify.Verifier against the published Svix / Standard Webhooks vectors, hostile
headers, and the reference `standardwebhooks` implementation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from clerk_sync.verify import VerificationError, Verifier, sign, verify_webhook

VECTORS_PATH = Path("/work/shared/reference/svix-vectors.json")
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
POSITIVE = VECTORS["positive_vectors"]
NEGATIVE = [v for v in VECTORS["negative_and_multi"] if not v["must_verify"]]
MULTI = [v for v in VECTORS["negative_and_multi"] if v["must_verify"]]

NOW = 1_700_000_000
# 1700000000 in Arabic-Indic digits
ARABIC_INDIC_TIMESTAMP = "\u0661\u0667" + "\u0660" * 8
BODY = b'{"type":"user.created","data":{"id":"user_1"}}'


def key_of(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


KEY = secrets.token_bytes(32)


def at(ts: float) -> Verifier:
    """A verifier for KEY whose clock is frozen at `ts`."""
    return Verifier([KEY], clock=lambda: ts)


def headers_for(
    body: bytes = BODY,
    *,
    key: bytes = KEY,
    message_id: str = "msg_test",
    timestamp: int = NOW,
    prefix: str = "svix",
) -> dict[str, str]:
    return {
        f"{prefix}-id": message_id,
        f"{prefix}-timestamp": str(timestamp),
        f"{prefix}-signature": sign(key, message_id, timestamp, body),
    }


def refused(verifier: Verifier, headers: dict[str, str], body: bytes = BODY) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verifier.verify(headers, body)
    return info.value


# --- published vectors -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_positive_vectors_verify(vector: dict[str, Any]) -> None:
    ts = int(vector["timestamp"])
    verifier = Verifier([key_of(vector["secret"])], clock=lambda: ts)
    headers = {
        "svix-id": vector["msg_id"],
        "svix-timestamp": vector["timestamp"],
        "svix-signature": vector["expected_signature"],
    }
    delivery = verifier.verify(headers, vector["payload"].encode())
    assert delivery.message_id == vector["msg_id"]
    assert delivery.timestamp == ts


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_sign_reproduces_positive_vectors(vector: dict[str, Any]) -> None:
    signature = sign(
        key_of(vector["secret"]),
        vector["msg_id"],
        int(vector["timestamp"]),
        vector["payload"].encode(),
    )
    assert signature == vector["expected_signature"]


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_positive_vectors_fail_with_a_changed_body_or_id(vector: dict[str, Any]) -> None:
    ts = int(vector["timestamp"])
    verifier = Verifier([key_of(vector["secret"])], clock=lambda: ts)
    headers = {
        "svix-id": vector["msg_id"],
        "svix-timestamp": vector["timestamp"],
        "svix-signature": vector["expected_signature"],
    }
    assert refused(verifier, headers, vector["payload"].encode() + b" ").status == 401
    other_id = {**headers, "svix-id": "msg_other"}
    assert refused(verifier, other_id, vector["payload"].encode()).status == 401
    # The signed content is the raw body: re-serialised JSON does not verify.
    reserialised = json.dumps(json.loads(vector["payload"]), separators=(",", ":")).encode()
    if reserialised != vector["payload"].encode():
        assert refused(verifier, headers, reserialised).status == 401


@pytest.mark.parametrize("vector", NEGATIVE, ids=[v["name"] for v in NEGATIVE])
def test_negative_vector_is_refused_401(vector: dict[str, Any]) -> None:
    ts = int(vector["timestamp"])
    verifier = Verifier([key_of(vector["secret"])], clock=lambda: ts)
    headers = {
        "svix-id": vector["msg_id"],
        "svix-timestamp": vector["timestamp"],
        "svix-signature": vector["signature_header"],
    }
    error = refused(verifier, headers, vector["payload"].encode())
    assert error.status == 401
    assert error.reason == "no_matching_signature"


@pytest.mark.parametrize("vector", MULTI, ids=[v["name"] for v in MULTI])
def test_multi_signature_header_verifies(vector: dict[str, Any]) -> None:
    ts = int(vector["timestamp"])
    verifier = Verifier([key_of(vector["secret"])], clock=lambda: ts)
    headers = {
        "svix-id": vector["msg_id"],
        "svix-timestamp": vector["timestamp"],
        "svix-signature": vector["signature_header"],
    }
    assert verifier.verify(headers, vector["payload"].encode()).message_id == vector["msg_id"]


def test_multi_signature_without_the_valid_entry_is_refused() -> None:
    (vector,) = MULTI
    ts = int(vector["timestamp"])
    verifier = Verifier([key_of(vector["secret"])], clock=lambda: ts)
    valid = POSITIVE[0]["expected_signature"]
    entries = [e for e in vector["signature_header"].split() if e != valid]
    headers = {
        "svix-id": vector["msg_id"],
        "svix-timestamp": vector["timestamp"],
        "svix-signature": " ".join(entries),
    }
    assert refused(verifier, headers, vector["payload"].encode()).status == 401


def test_valid_signature_under_a_v2_label_is_not_accepted() -> None:
    headers = headers_for()
    headers["svix-signature"] = headers["svix-signature"].replace("v1,", "v2,")
    assert refused(at(NOW), headers).status == 401


# --- secrets, header names ---------------------------------------------------------------------


def test_any_of_several_secrets_verifies() -> None:
    keys = [secrets.token_bytes(32) for _ in range(3)]
    verifier = Verifier(keys, clock=lambda: NOW)
    for key in keys:
        assert verifier.verify(headers_for(key=key), BODY).message_id == "msg_test"
    outsider = secrets.token_bytes(32)
    assert refused(verifier, headers_for(key=outsider)).status == 401


def test_rotation_header_with_old_and_new_signatures() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    both = sign(old, "msg_test", NOW, BODY) + " " + sign(new, "msg_test", NOW, BODY)
    headers = {"svix-id": "msg_test", "svix-timestamp": str(NOW), "svix-signature": both}
    assert Verifier([new], clock=lambda: NOW).verify(headers, BODY)
    assert Verifier([old], clock=lambda: NOW).verify(headers, BODY)


def test_no_keys_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        Verifier([])


@pytest.mark.parametrize("prefix", ["svix", "webhook"])
def test_both_header_families_work(prefix: str) -> None:
    delivery = at(NOW).verify(headers_for(prefix=prefix), BODY)
    assert delivery.message_id == "msg_test"
    assert delivery.timestamp == NOW


def test_both_families_with_equal_values_work() -> None:
    headers = {**headers_for(prefix="svix"), **headers_for(prefix="webhook")}
    assert at(NOW).verify(headers, BODY).message_id == "msg_test"


def test_mixed_families_work() -> None:
    h = headers_for()
    headers = {
        "svix-id": h["svix-id"],
        "webhook-timestamp": h["svix-timestamp"],
        "svix-signature": h["svix-signature"],
    }
    assert at(NOW).verify(headers, BODY).message_id == "msg_test"


@pytest.mark.parametrize("name", ["id", "timestamp", "signature"])
def test_conflicting_header_families_are_malformed(name: str) -> None:
    svix = headers_for(prefix="svix")
    webhook = headers_for(prefix="webhook")
    other = {
        "id": "msg_other",
        "timestamp": str(NOW + 1),
        "signature": sign(KEY, "msg_test", NOW, BODY + b"x"),
    }[name]
    webhook[f"webhook-{name}"] = other
    error = refused(at(NOW), {**svix, **webhook})
    assert error.status == 400
    assert error.reason == "conflicting_headers"


# --- timestamp tolerance -----------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_tolerance_is_inclusive(offset: int) -> None:
    headers = headers_for(timestamp=NOW + offset)
    assert at(NOW).verify(headers, BODY).timestamp == NOW + offset


@pytest.mark.parametrize("offset", [-301, 301, -100_000, 100_000])
def test_outside_tolerance_is_401(offset: int) -> None:
    error = refused(at(NOW), headers_for(timestamp=NOW + offset))
    assert error.status == 401
    assert error.reason == "timestamp_out_of_tolerance"


def test_tolerance_counts_whole_seconds() -> None:
    # The header has whole seconds: a delivery stamped 300 s ago is accepted however far into
    # the current second it arrives, and one stamped 301 s ago is not.
    assert at(NOW + 0.99).verify(headers_for(timestamp=NOW - 300), BODY)
    assert at(NOW + 0.99).verify(headers_for(timestamp=NOW + 300), BODY)
    assert refused(at(NOW + 0.01), headers_for(timestamp=NOW - 301)).status == 401


def test_custom_tolerance() -> None:
    verifier = Verifier([KEY], tolerance=10, clock=lambda: NOW)
    assert verifier.verify(headers_for(timestamp=NOW - 10), BODY)
    assert refused(verifier, headers_for(timestamp=NOW - 11)).status == 401


def test_real_clock_is_the_default() -> None:
    now = int(time.time())
    assert Verifier([KEY]).verify(headers_for(timestamp=now), BODY).timestamp == now
    assert refused(Verifier([KEY]), headers_for(timestamp=NOW)).status == 401


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "-5",
        "-1700000000",
        "1700000000.0",
        "1.7e9",
        "",
        " ",
        "+1700000000",
        "0x6553f100",
        "1700000000 ",
        ARABIC_INDIC_TIMESTAMP,  # str.isdigit() is True
        "¹²³",
        "9" * 15,
        "9" * 16,
        "9" * 400,
        "0",
        "00000001700000000",
    ],
)
def test_malformed_timestamp_is_400_or_401(timestamp: str) -> None:
    headers = headers_for()
    headers["svix-timestamp"] = timestamp
    error = refused(at(NOW), headers)
    assert error.status in (400, 401)


@pytest.mark.parametrize(
    "timestamp", ["abc", "-5", "1700000000.0", "", ARABIC_INDIC_TIMESTAMP, "9" * 400]
)
def test_non_integer_timestamps_are_malformed_400(timestamp: str) -> None:
    headers = headers_for()
    headers["svix-timestamp"] = timestamp
    assert refused(at(NOW), headers).status == 400


def test_timestamp_with_leading_zeros_is_checked_as_signed() -> None:
    # The signed content carries the header text verbatim.
    ts_text = "0" + str(NOW)
    message_id = "msg_zero"
    digest = hmac.new(KEY, f"{message_id}.{ts_text}.".encode() + BODY, hashlib.sha256).digest()
    headers = {
        "svix-id": message_id,
        "svix-timestamp": ts_text,
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
    }
    try:
        assert at(NOW).verify(headers, BODY).timestamp == NOW
    except VerificationError as exc:  # refusing it as malformed is acceptable too
        assert exc.status == 400


# --- malformed signature headers ---------------------------------------------------------------

VALID_SIG = sign(KEY, "msg_test", NOW, BODY)


@pytest.mark.parametrize(
    "signature",
    [
        "garbage",
        "v1,",
        ",",
        ",abc",
        "v1",
        "v1,a,b",
        "v1,!!!!",
        "v1,not base64 at all",
        "v1,Zm9v",  # valid base64, wrong length
        "v1,====",
        "v1,é",
        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2,abc v1a,def",
        "v1a," + VALID_SIG.removeprefix("v1,"),
        "   ",
        "\t\n",
        "v1," + "A" * 5000,
        "v1,abc " * 1000,
        "v1\u3000" + VALID_SIG.removeprefix("v1,"),
        "\x00",
        "v1,\udcff",
    ],
)
def test_malformed_signatures_only_raise_verification_error(signature: str) -> None:
    headers = headers_for()
    headers["svix-signature"] = signature
    error = refused(at(NOW), headers)
    assert error.status in (400, 401)


@pytest.mark.parametrize("signature", ["garbage", "v1,", "   ", "v1," + "A" * 5000])
def test_structurally_malformed_signature_is_400(signature: str) -> None:
    headers = headers_for()
    headers["svix-signature"] = signature
    assert refused(at(NOW), headers).status == 400


@pytest.mark.parametrize("signature", ["v1,a,b", "v1,!!!!", "v2,abc", "v1,Zm9v"])
def test_well_formed_but_wrong_signature_is_401(signature: str) -> None:
    headers = headers_for()
    headers["svix-signature"] = signature
    assert refused(at(NOW), headers).status == 401


def test_valid_entry_among_garbage_entries_verifies() -> None:
    headers = headers_for()
    headers["svix-signature"] = f"garbage v1,a,b v1,!!!! v2,x {VALID_SIG} v1,"
    assert at(NOW).verify(headers, BODY).message_id == "msg_test"


def test_unpadded_signature_is_refused_not_crashing() -> None:
    headers = headers_for()
    headers["svix-signature"] = VALID_SIG.rstrip("=")
    assert refused(at(NOW), headers).status in (400, 401)


# --- missing and malformed ids -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["id", "timestamp", "signature"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_header_is_400(name: str, how: str) -> None:
    headers = headers_for()
    if how == "absent":
        del headers[f"svix-{name}"]
    else:
        headers[f"svix-{name}"] = ""
    error = refused(at(NOW), headers)
    assert error.status == 400
    assert error.reason == "missing_headers"
    assert f"svix-{name}" in error.message


def test_all_headers_missing_is_400() -> None:
    error = refused(at(NOW), {})
    assert error.status == 400
    assert "svix-id" in error.message and "svix-signature" in error.message


@pytest.mark.parametrize("message_id", ["x" * 256, "msg_é", "msg\x00", "msg\nx", "msg\x7f"])
def test_malformed_message_id_is_400(message_id: str) -> None:
    headers = headers_for()
    headers["svix-id"] = message_id
    assert refused(at(NOW), headers).status == 400


def test_longest_allowed_message_id_verifies() -> None:
    message_id = "m" * 255
    assert at(NOW).verify(headers_for(message_id=message_id), BODY).message_id == message_id


# --- property: nothing but VerificationError ---------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
)
HEADER_VALUES = st.one_of(
    st.text(),
    st.text(alphabet="0123456789", min_size=1, max_size=20),
    st.integers(NOW - 400, NOW + 400).map(str),
    st.lists(
        st.tuples(st.sampled_from(["v1", "v2", "v1a", ""]), st.text(max_size=60)),
        max_size=5,
    ).map(lambda entries: " ".join(f"{v},{s}" for v, s in entries)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.dictionaries(st.one_of(HEADER_NAMES, st.text()), HEADER_VALUES, max_size=8),
    body=st.binary(max_size=512),
)
def test_arbitrary_input_only_raises_verification_error(
    headers: dict[str, str], body: bytes
) -> None:
    try:
        at(NOW).verify(headers, body)
    except VerificationError as exc:
        assert exc.status in (400, 401)
        assert isinstance(exc.message, str) and exc.message
    else:  # pragma: no cover - a random header matching an HMAC would be news
        pytest.fail(f"verified a random delivery: {headers!r}")


# --- cross-check with the reference implementation ---------------------------------------------

MESSAGE_IDS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
)


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=64),
    message_id=MESSAGE_IDS,
    data=st.text(max_size=2000),
    offset=st.integers(-250, 250),
)
def test_standardwebhooks_signatures_verify_with_ours(
    key: bytes, message_id: str, data: str, offset: int
) -> None:
    timestamp = int(time.time()) + offset
    reference = Webhook("whsec_" + base64.b64encode(key).decode())
    signature = reference.sign(message_id, datetime.fromtimestamp(timestamp, tz=UTC), data)
    assert signature == sign(key, message_id, timestamp, data.encode())
    headers = {
        "svix-id": message_id,
        "svix-timestamp": str(timestamp),
        "svix-signature": signature,
    }
    verifier = Verifier([key], clock=lambda: timestamp - offset)
    assert verifier.verify(headers, data.encode()).timestamp == timestamp
    # and the same delivery with a different body does not
    with pytest.raises(VerificationError):
        verifier.verify(headers, data.encode() + b"!")


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=64),
    message_id=MESSAGE_IDS,
    data=st.text(max_size=2000),
    offset=st.integers(-250, 250),
)
def test_our_signatures_verify_with_standardwebhooks(
    key: bytes, message_id: str, data: str, offset: int
) -> None:
    timestamp = int(time.time()) + offset
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, data.encode()),
    }
    reference = Webhook("whsec_" + base64.b64encode(key).decode())
    assert reference.verify(data.encode(), headers, json_parse=False) is None
    ours = Verifier([key])
    assert ours.verify(headers, data.encode()).message_id == message_id


# --- verify_webhook: the public function for handlers of your own --------------------------------


def _signed(secret: bytes, body: bytes) -> dict[str, str]:
    message_id, timestamp = "msg_" + secrets.token_hex(8), int(time.time())
    return {
        "Svix-Id": message_id,
        "Svix-Timestamp": str(timestamp),
        "Svix-Signature": sign(secret, message_id, timestamp, body),
    }


def test_verify_webhook_returns_the_event_of_a_genuine_delivery() -> None:
    key = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"type": "user.created", "data": {"id": "user_1"}}'
    headers = _signed(key, body)  # Title-Case names, as some frameworks hand them over
    assert verify_webhook(headers, body, secret) == {
        "type": "user.created",
        "data": {"id": "user_1"},
    }
    assert verify_webhook(headers, body.decode(), secret)["type"] == "user.created"


def test_verify_webhook_takes_several_secrets_during_a_rotation() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    as_text = [f"whsec_{base64.b64encode(k).decode()}" for k in (old, new)]
    body = b'{"type": "user.updated", "data": {}}'
    assert verify_webhook(_signed(new, body), body, as_text)["type"] == "user.updated"
    assert verify_webhook(_signed(old, body), body, " ".join(as_text))["type"] == "user.updated"


def test_verify_webhook_refuses_what_is_not_genuine() -> None:
    key = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"type": "user.created", "data": {}}'
    with pytest.raises(VerificationError) as forged:
        verify_webhook(_signed(secrets.token_bytes(32), body), body, secret)
    assert forged.value.status == 401
    with pytest.raises(VerificationError) as tampered:
        verify_webhook(_signed(key, body), body + b" ", secret)
    assert tampered.value.status == 401
    with pytest.raises(VerificationError) as missing:
        verify_webhook({}, body, secret)
    assert missing.value.status == 400
    assert "svix-id" in missing.value.message
    with pytest.raises(ValueError, match="whsec_"):
        verify_webhook(_signed(key, body), body, "not-a-secret")
