"""clerk_sync.events.parse_event: what a verified body must look like to reach the write path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clerk_sync
from clerk_sync.events import (
    CLERK_EVENT_TYPES,
    USER_EVENT_TYPES,
    ClerkEvent,
    NotAClerkEvent,
    parse_event,
)
from tests import support

EXAMPLES_DIR = Path(clerk_sync.__file__).parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))
MAX_MS = 253_402_300_799_999  # the end of year 9999


def body_of(event: Any) -> bytes:
    return json.dumps(event).encode()


def user(updated_at: Any = 1_700_000_000_000, **data: Any) -> dict[str, Any]:
    return support.user_event("user.created", "user_abc", updated_at, **data)


def not_an_event(body: bytes) -> str:
    with pytest.raises(NotAClerkEvent) as info:
        parse_event(body)
    return str(info.value)


# --- Clerk's own examples ----------------------------------------------------------------------


def test_there_are_examples_for_every_clerk_event_type() -> None:
    assert {p.stem for p in EXAMPLES} == CLERK_EVENT_TYPES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_parses(path: Path) -> None:
    raw = path.read_bytes()
    event = parse_event(raw)
    assert isinstance(event, ClerkEvent)
    assert event.type == path.stem
    assert event.body == raw.decode()  # kept verbatim, not re-serialised
    assert event.metric_type == path.stem
    data = json.loads(raw)["data"]
    if path.stem in USER_EVENT_TYPES:
        assert event.user_id == data["id"]
    elif path.stem == "session.created":
        assert event.user_id == data["user_id"]
    elif path.stem.startswith("organizationMembership."):
        assert event.user_id == data["public_user_data"]["user_id"]
    elif path.stem == "organizationInvitation.accepted":
        assert event.user_id == data["user_id"]
    else:
        assert event.user_id is None


def test_unknown_types_parse_without_a_user_and_count_as_other() -> None:
    event = parse_event(body_of({"type": "something.new", "data": {"id": "user_x"}}))
    assert event.type == "something.new"
    assert event.user_id is None
    assert event.metric_type == "other"


# --- user events -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["user.created", "user.updated"])
def test_user_event_parses(event_type: str) -> None:
    event = parse_event(body_of(support.user_event(event_type, "user_1", 1_700_000_000_000)))
    assert (event.type, event.user_id) == (event_type, "user_1")


# Whether a user event's data can be applied is the write path's rule: tests/test_write_path.py.
# Here: which user the log line names.


def test_user_deleted_names_its_user() -> None:
    event = parse_event(body_of(support.deleted_event("user_gone")))
    assert (event.type, event.user_id) == ("user.deleted", "user_gone")


def test_legacy_user_signed_in_with_a_user_names_it() -> None:
    event = support.user_event("user.signed_in", "user_1", 1_700_000_000_000)
    assert parse_event(body_of(event)).user_id == "user_1"
    # without a user object it is just an unsynced type
    other = {"type": "user.signed_in", "data": {"object": "session", "id": 3}}
    assert parse_event(body_of(other)).user_id is None


def test_a_user_id_that_is_not_a_string_is_not_named() -> None:
    event = support.user_event("user.created", "user_1", 1_700_000_000_000)
    event["data"]["id"] = 42
    assert parse_event(body_of(event)).user_id is None


# --- session.created ---------------------------------------------------------------------------


def test_session_created_user_id_from_data_user_id() -> None:
    event = parse_event(body_of(support.session_event("user_s1", 1_700_000_000_000)))
    assert (event.type, event.user_id) == ("session.created", "user_s1")


def test_session_created_user_id_from_data_user_id_wins() -> None:
    event = support.session_event("user_s1", 1_700_000_000_000, last_sign_in_at=1_700_000_000_001)
    event["data"]["user"]["id"] = "user_other"
    assert parse_event(body_of(event)).user_id == "user_s1"


@pytest.mark.parametrize("how", ["null", "absent"])
def test_session_created_user_id_from_data_user(how: str) -> None:
    event = support.session_event("user_s2", 1_700_000_000_000, last_sign_in_at=1_700_000_000_001)
    if how == "null":
        event["data"]["user_id"] = None
    else:
        del event["data"]["user_id"]
    assert parse_event(body_of(event)).user_id == "user_s2"


# --- not Clerk events --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="text"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b'{"type": "user.created", "data": {}} trailing', id="trailing"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"type": "x", "data": {"a": "\xff"}}', id="not-utf8-in-string"),
        pytest.param(b'{"type": "x", "data": {"a": "\xed\xa0\x80"}}', id="utf8-surrogate"),
        pytest.param(b'{"type": "x", "data": {"a": "\\ud800"}}', id="lone-surrogate-escape"),
        pytest.param(b"\xef\xbb\xbf" + b'{"type": "x", "data": {}}', id="bom"),
        pytest.param(b'{"type": "x", "data": {"a": NaN}}', id="nan"),
        pytest.param(b'{"type": "x", "data": {"a": 1e400}}', id="inf"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b'[{"type": "user.created", "data": {}}]', id="array"),
        pytest.param(b'"user.created"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="true"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"data": {"id": "user_1"}}', id="no-type"),
        pytest.param(b'{"type": null, "data": {}}', id="null-type"),
        pytest.param(b'{"type": "", "data": {}}', id="empty-type"),
        pytest.param(b'{"type": 3, "data": {}}', id="numeric-type"),
        pytest.param(b'{"type": ["user.created"], "data": {}}', id="array-type"),
        pytest.param(b'{"type": "' + b"t" * 101 + b'", "data": {}}', id="long-type"),
        pytest.param(b'{"type": "user.created"}', id="no-data"),
        pytest.param(b'{"type": "user.created", "data": null}', id="null-data"),
        pytest.param(b'{"type": "user.created", "data": []}', id="array-data"),
        pytest.param(b'{"type": "user.created", "data": "user_1"}', id="string-data"),
        pytest.param(b'{"type": "x", "data": {"a": "nul\\u0000"}}', id="nul-escape"),
        pytest.param(b'{"type": "x", "data": {"nul\\u0000": 1}}', id="nul-escape-in-key"),
        pytest.param(b'{"type": "x\\u0000", "data": {}}', id="nul-escape-in-type"),
        pytest.param(b'{"type": "x", "data": {"a": "nul\x00"}}', id="raw-nul"),
        pytest.param(b'{"type": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="deep-5000"),
        pytest.param(
            b'{"type": "x", "data": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001, id="deep-obj"
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-100000"),
    ],
)
def test_not_clerk_events(body: bytes) -> None:
    assert not_an_event(body)


ESCAPED_BACKSLASH_BODIES = [
    b'{"type": "user.deleted", "data": {"id": "user_1", "note": "\\\\u0000"}}',
    b'{"type": "x", "data": {"path": "C:\\\\u0000"}}',
]


@pytest.mark.parametrize("body", ESCAPED_BACKSLASH_BODIES)
def test_escaped_backslash_bodies_hold_no_nul(body: bytes) -> None:
    (value,) = (v for k, v in json.loads(body)["data"].items() if k in ("note", "path"))
    assert "\x00" not in value
    assert value.endswith("\\u0000")


@pytest.mark.parametrize("body", ESCAPED_BACKSLASH_BODIES)
def test_escaped_backslash_then_u0000_is_not_a_nul(body: bytes) -> None:
    assert parse_event(body).body == body.decode()


def test_the_body_is_kept_verbatim() -> None:
    raw = b'{ "type" : "organization.created",\n "data" : {"id": "org_1", "name": "\\u00e9"} }'
    event = parse_event(raw)
    assert event.body == raw.decode()


def test_duplicate_keys_take_the_last_value_like_postgres() -> None:
    raw = b'{"type": "user.created", "type": "organization.created", "data": {}}'
    assert parse_event(raw).type == "organization.created"


def test_modest_nesting_inside_data_is_accepted() -> None:
    raw = b'{"type": "x", "data": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}"
    assert parse_event(raw).type == "x"


# --- property ----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
EVENT_TYPES = st.sampled_from(
    ["user.created", "user.updated", "user.deleted", "session.created", "user.signed_in", "x"]
)
EVENTS = st.fixed_dictionaries(
    {"type": st.one_of(EVENT_TYPES, JSON_VALUES)},
    optional={
        "data": st.one_of(
            JSON_VALUES,
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.one_of(st.text(max_size=5), JSON_VALUES),
                    "user_id": st.one_of(st.text(max_size=5), JSON_VALUES),
                    "object": st.sampled_from(["user", "session"]),
                    "updated_at": st.one_of(st.integers(), JSON_VALUES),
                    "created_at": st.one_of(st.integers(), JSON_VALUES),
                    "last_sign_in_at": st.one_of(st.integers(), JSON_VALUES),
                    "banned": JSON_VALUES,
                    "user": JSON_VALUES,
                },
            ),
        )
    },
)


def check_outcome(body: bytes) -> None:
    try:
        event = parse_event(body)
    except NotAClerkEvent as exc:
        assert str(exc)
        return
    assert isinstance(event, ClerkEvent)
    assert event.body.encode() == body
    assert isinstance(event.type, str) and event.type
    # The user it names, if any, is a string; whether the event needs one (and has a valid one)
    # is the write path's rule: tests/test_write_path.py checks it for the same shapes.
    assert event.user_id is None or isinstance(event.user_id, str)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_yield_an_event_or_not_a_clerk_event(body: bytes) -> None:
    check_outcome(body)


@settings(max_examples=400, deadline=None)
@given(EVENTS)
def test_arbitrary_event_shapes_only_yield_an_event_or_not_a_clerk_event(
    event: dict[str, Any],
) -> None:
    body = json.dumps(event).encode()
    check_outcome(body)
    check_outcome(body[: len(body) // 2])
