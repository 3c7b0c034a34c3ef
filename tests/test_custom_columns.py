"""clerk-sync.toml: the loader's one-line refusals, the conversion rules (Python and SQL agree),
and the columns as the write path, `migrate` and `clerk-sync schema` make them."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clerk_sync import migrations
from clerk_sync.custom_columns import (
    CONVERTERS,
    TYPES,
    CustomColumn,
    CustomColumns,
    convert,
    load_custom_columns,
    lookup,
    parse_custom_columns,
    unconvertible,
)
from clerk_sync.errors import ConfigError
from clerk_sync.settings import load_settings
from tests import support

CONTRACT_EXAMPLE = """\
[users.columns]
role = "public_metadata.role"                                    # text unless a type is given
plan = { path = "public_metadata.plan", type = "text", default = "free" }
credits = { path = "public_metadata.credits", type = "integer" }
stripe_customer_id = { path = "private_metadata.stripe_customer_id", private = true }

[organizations.columns]
tier = "public_metadata.tier"
"""

FILE = Path("clerk-sync.toml")


def parse(text: str) -> CustomColumns:
    return parse_custom_columns(text, FILE)


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("clerk-sync.toml: "), message
    return message


# --- the file ------------------------------------------------------------------------------------


def test_the_contract_example() -> None:
    columns = parse(CONTRACT_EXAMPLE)
    assert [(c.label, c.path, c.type, c.default, c.private) for c in columns.columns] == [
        ("users.role", ("public_metadata", "role"), "text", None, False),
        ("users.plan", ("public_metadata", "plan"), "text", "free", False),
        ("users.credits", ("public_metadata", "credits"), "integer", None, False),
        (
            "users.stripe_customer_id",
            ("private_metadata", "stripe_customer_id"),
            "text",
            None,
            True,
        ),
        ("organizations.tier", ("public_metadata", "tier"), "text", None, False),
    ]
    assert [c.name for c in columns.of("organization_memberships")] == []


@pytest.mark.parametrize(
    ("text", "naming"),
    [
        ("[user.columns]\na = 'public_metadata.a'", "[user]: unknown section"),
        ("[users.columns]\na = 'public_metadata..a'", "[users.columns] a: path"),
        ("[users.columns]\na = ''", "[users.columns] a: path"),
        ("[users.columns]\na = 'public_metadata.{a}'", "[users.columns] a: path"),
        ("[users.columns]\na = 'publicmetadata.a'", "does not start with a field of Clerk's user"),
        ("[users.columns]\na = { path = 'public_metadata.a', type = 'int' }", "unknown type 'int'"),
        ("[users.columns]\nemail = 'public_metadata.email'", "already writes a column email"),
        ("[organizations.columns]\nslug = 'public_metadata.s'", "already writes a column slug"),
        ("[users.columns]\nRole = 'public_metadata.role'", "Role: not a valid column name"),
        ('[users.columns]\n"my col" = "public_metadata.a"', "my col: not a valid column name"),
        ("[users.columns]\n1a = 'public_metadata.a'", "1a: not a valid column name"),
        ("[users.columns]\nsecret = 'private_metadata.s'", "secret: a path into private_metadata"),
        ("[users.columns]\na = { path = 'public_metadata.a', kind = 'x' }", "unknown key 'kind'"),
        ("[users.columns]\na = { type = 'text' }", "a: path"),
        ("[users.columns]\na = 5", "a: expected a path"),
        ("[users.columns]\na = { path = 'public_metadata.a', private = 'yes' }", "private"),
        (
            "[users.columns]\na = { path = 'public_metadata.a', type = 'integer', default = 'x' }",
            "default 'x' is not a value of type integer",
        ),
        (
            "[users.columns]\na = { path = 'public_metadata.a', type = 'integer', default = 1.5 }",
            "default 1.5 is not a value of type integer",
        ),
        (
            "[users.columns]\na = { path = 'public_metadata.a', type = 'text[]', default = [1] }",
            "default [1] is not a value of type text[]",
        ),
        (
            "[users.columns]\na = { path = 'public_metadata.a', type = 'timestamptz', "
            "default = 1979-05-27T07:32:00Z }",
            "milliseconds",
        ),
        ("[users]\nextra = 1", "[users]: expected only a [users.columns] table"),
        ("[users]\ncolumns = 1", "[users.columns]: expected a table"),
        ("[users.columns\n", "not valid TOML"),
    ],
)
def test_a_mistake_is_one_line_naming_the_file_and_the_entry(text: str, naming: str) -> None:
    assert naming in refusal(text)


def test_a_private_metadata_path_is_refused_then_allowed_with_private_true() -> None:
    refused = refusal("[users.columns]\nsecret = 'private_metadata.stripe'")
    assert "private = true" in refused and "read-own-row" in refused
    allowed = parse(
        "[users.columns]\nsecret = { path = 'private_metadata.stripe', private = true }"
    )
    assert allowed.columns[0].private


def test_defaults_are_held_as_the_column_holds_them() -> None:
    columns = parse(
        "[users.columns]\n"
        "a = { path = 'public_metadata.a', type = 'numeric', default = 1.5 }\n"
        "b = { path = 'public_metadata.b', type = 'timestamptz', default = 0 }\n"
        "c = { path = 'public_metadata.c', type = 'jsonb', default = { x = [1, 'y'] } }\n"
        "d = { path = 'public_metadata.d', type = 'text[]', default = [\"it's\"] }\n"
        "e = { path = 'public_metadata.e', type = 'boolean', default = false }\n"
    )
    a, b, c, d, e = columns.columns
    assert a.default_value == Decimal("1.5") and a.default_sql == "1.5::numeric"
    assert b.default_value == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert c.default_value == {"x": [1, "y"]} and c.default_sql == """'{"x": [1, "y"]}'::jsonb"""
    assert d.default_sql == "array['it''s']::text[]"
    assert e.default_sql == "false"


def test_no_file_means_no_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLERK_SYNC_CONFIG", raising=False)
    assert not load_custom_columns()
    assert not load_settings().custom_columns


def test_the_file_in_the_working_directory_or_the_one_clerk_sync_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLERK_SYNC_CONFIG", raising=False)
    (tmp_path / "clerk-sync.toml").write_text(CONTRACT_EXAMPLE)
    assert len(load_settings().custom_columns.columns) == 5
    (tmp_path / "other.toml").write_text("[users.columns]\nx = 'public_metadata.x'\n")
    monkeypatch.setenv("CLERK_SYNC_CONFIG", str(tmp_path / "other.toml"))
    assert [c.label for c in load_settings().custom_columns.columns] == ["users.x"]


def test_a_clerk_sync_config_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SYNC_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"^CLERK_SYNC_CONFIG: cannot read .*nope.toml"):
        load_settings()


def test_a_malformed_file_stops_settings_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[users.columns]\ncredits = { path = 'public_metadata.c', type = 'int' }\n")
    monkeypatch.setenv("CLERK_SYNC_CONFIG", str(path))
    with pytest.raises(ConfigError, match=r"bad.toml: \[users.columns\] credits: unknown type"):
        load_settings()


# --- the conversion rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column_type", "good", "held", "bad"),
    [
        ("text", "pro", "pro", [5, True, ["pro"], {"a": 1}]),
        ("integer", 7, 7, ["7", 1.5, 2**31, True, [7]]),
        ("bigint", 2**40, 2**40, ["1", 2**63, 0.5, False]),
        ("numeric", 1.25, Decimal("1.25"), ["1.25", True, {}]),
        ("boolean", True, True, ["true", 1, 0, None]),
        ("jsonb", {"a": [1]}, {"a": [1]}, []),
        ("text[]", ["a", "b"], ["a", "b"], [["a", 1], "a", {"a": "b"}]),
        ("timestamptz", 86_400_000, dt.datetime(1970, 1, 2, tzinfo=dt.UTC), ["1", 1.5, -1]),
    ],
)
def test_each_type_converts_what_fits_and_nothing_else(
    column_type: Any, good: Any, held: Any, bad: list[Any]
) -> None:
    assert convert(column_type, good) == held
    for value in bad:
        assert convert(column_type, value) is None, value
    assert convert(column_type, None) is None


def test_a_missing_value_is_not_unconvertible_but_a_wrong_one_is() -> None:
    column = CustomColumn("users", "credits", ("public_metadata", "credits"), "integer", 3)
    assert column.value({"public_metadata": {"credits": 5}}) == (5, False)
    assert column.value({"public_metadata": {}}) == (3, False)
    assert column.value({"public_metadata": None}) == (3, False)
    assert column.value({"public_metadata": {"credits": None}}) == (3, False)
    assert column.value({"public_metadata": {"credits": "5"}}) == (3, True)
    assert unconvertible((column,), {"public_metadata": {"credits": "5"}}) == [column]
    assert lookup({"a": [{"b": 1}]}, ("a", "0", "b")) == 1


# jsonb holds no \u0000, nor a lone surrogate.
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            0,
            -1,
            1.0,
            1e3,
            2**31 - 1,
            2**31,
            -(2**31),
            2**63 - 1,
            2**63,
            253402300799999,
            253402300800000,
            1.5e300,
        ]
    )
    | st.text(TEXT, max_size=5),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(TEXT, max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def sql_conn(database_url: str) -> Iterator[tuple[Any, asyncpg.Connection]]:
    import asyncio

    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(database_url))
    yield loop, conn
    loop.run_until_complete(conn.close())
    loop.close()


def _from_sql(column_type: str, value: Any) -> Any:
    if value is None:
        return None
    if column_type == "jsonb":
        return json.loads(value, parse_float=Decimal)
    return value


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=20))
def test_python_and_sql_give_the_same_verdicts(
    sql_conn: tuple[Any, asyncpg.Connection], values: list[Any]
) -> None:
    loop, conn = sql_conn
    texts = [json.dumps(value) for value in values]
    for column_type in TYPES:
        rows = loop.run_until_complete(
            conn.fetch(
                f"select clerk_sync.{CONVERTERS[column_type]}(v) as held "
                "from unnest($1::jsonb[]) with ordinality as u(v, n) order by n",
                texts,
            )
        )
        for text, row in zip(texts, rows, strict=True):
            parsed = json.loads(text, parse_float=Decimal)
            expected = convert(column_type, parsed)
            held = _from_sql(column_type, row["held"])
            if column_type == "jsonb" and expected is not None:
                expected = json.loads(text, parse_float=Decimal)
            assert held == expected, (column_type, text, held, expected)


# --- the columns in the database -----------------------------------------------------------------

COLUMNS = """\
[users.columns]
role = "public_metadata.role"
plan = { path = "public_metadata.plan", type = "text", default = "free" }
credits = { path = "public_metadata.credits", type = "integer", default = 0 }
views = { path = "public_metadata.views", type = "bigint" }
score = { path = "public_metadata.score", type = "numeric" }
beta = { path = "unsafe_metadata.beta", type = "boolean", default = false }
prefs = { path = "public_metadata.prefs", type = "jsonb" }
tags = { path = "public_metadata.tags", type = "text[]", default = [] }
trial_ends_at = { path = "public_metadata.trial_ends", type = "timestamptz" }
stripe_customer_id = { path = "private_metadata.stripe_customer_id", private = true }

[organizations.columns]
tier = { path = "public_metadata.tier", default = "basic" }

[organization_memberships.columns]
seats = { path = "public_metadata.seats", type = "integer" }
"""
DECLARED = parse(COLUMNS)
T0 = 1_700_000_000_000


async def _migrate(
    dsn: str, columns: CustomColumns, retype: frozenset[str] = frozenset()
) -> list[str]:
    conn = await asyncpg.connect(dsn)
    said: list[str] = []
    conn.add_log_listener(lambda _, message: said.append(str(message.message)))
    try:
        await migrations.migrate(conn, columns, retype)
    finally:
        await conn.close()
    return [line for line in said if line.startswith("clerk-sync: custom column")]


def migrate(dsn: str, columns: CustomColumns, retype: frozenset[str] = frozenset()) -> list[str]:
    """Migrate with these columns; what it said of them."""
    return list(support.run(_migrate(dsn, columns, retype)))


async def _apply(dsn: str, events: list[dict[str, Any]]) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select event_outcome from public.clerk_sync_apply_batch($1, $2::jsonb[])",
            [f"msg_{uuid.uuid4().hex}" for _ in events],  # id(e) may be an earlier event's
            [json.dumps(e) for e in events],
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


def apply(dsn: str, *events: dict[str, Any]) -> list[str]:
    return list(support.run(_apply(dsn, list(events))))


def user(dsn: str, user_id: str = "user_1") -> dict[str, Any]:
    [row] = support.fetch(dsn, "select * from public.users where id = $1", user_id)
    return row


@pytest.fixture
def cc_db(pg_server: str) -> Iterator[str]:
    """A database of its own, migrated with DECLARED."""
    dsn = support.create_database(pg_server, migrate=False)
    try:
        migrate(dsn, DECLARED)
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


GOOD = {
    "role": "admin",
    "plan": "pro",
    "credits": 12,
    "views": 2**40,
    "score": 4.5,
    "prefs": {"theme": "dark"},
    "tags": ["a", "b"],
    "trial_ends": T0,
}
BAD = {
    "role": 1,
    "plan": ["pro"],
    "credits": "12",
    "views": 1.5,
    "score": "4.5",
    "tags": ["a", 1],
    "trial_ends": "2024-01-01",
}


def test_each_type_with_good_missing_and_unconvertible_values(cc_db: str) -> None:
    event = support.user_event(
        "user.created",
        "user_1",
        T0,
        public_metadata=GOOD,
        unsafe_metadata={"beta": True},
        private_metadata={"stripe_customer_id": "cus_1"},
    )
    assert apply(cc_db, event) == ["applied"]
    row = user(cc_db)
    assert (row["role"], row["plan"], row["credits"], row["views"], row["score"]) == (
        "admin",
        "pro",
        12,
        2**40,
        Decimal("4.5"),
    )
    assert row["beta"] is True and json.loads(row["prefs"]) == {"theme": "dark"}
    assert row["tags"] == ["a", "b"] and row["stripe_customer_id"] == "cus_1"
    assert row["trial_ends_at"] == dt.datetime.fromtimestamp(T0 / 1000, dt.UTC)

    # A newer event without the values sets the defaults (null unless given).
    missing = support.user_event("user.updated", "user_1", T0 + 1, private_metadata=None)
    assert apply(cc_db, missing) == ["applied"]
    row = user(cc_db)
    assert (row["role"], row["plan"], row["credits"], row["beta"], row["tags"]) == (
        None,
        "free",
        0,
        False,
        [],
    )
    assert row["views"] is None and row["prefs"] is None and row["stripe_customer_id"] is None

    # Values that do not convert leave the defaults, and the delivery still applies.
    bad = support.user_event(
        "user.updated",
        "user_1",
        T0 + 2,
        public_metadata=BAD,
        unsafe_metadata={"beta": "yes"},
        private_metadata={"stripe_customer_id": 42},
    )
    assert apply(cc_db, bad) == ["applied"]
    row = user(cc_db)
    assert (row["role"], row["plan"], row["credits"], row["beta"], row["tags"]) == (
        None,
        "free",
        0,
        False,
        [],
    )
    assert row["views"] is None and row["score"] is None and row["trial_ends_at"] is None
    assert row["public_metadata"] == json.dumps(BAD) or json.loads(row["public_metadata"]) == BAD
    # The Python rules agree on which those were.
    assert {c.name for c in unconvertible(DECLARED.of("users"), bad["data"])} == {
        "role",
        "plan",
        "credits",
        "views",
        "score",
        "beta",
        "tags",
        "trial_ends_at",
        "stripe_customer_id",
    }


def test_an_older_event_never_changes_them(cc_db: str) -> None:
    newer = support.user_event("user.updated", "user_1", T0 + 10, public_metadata={"credits": 5})
    older = support.user_event("user.updated", "user_1", T0 + 5, public_metadata={"credits": 9})
    assert apply(cc_db, newer) == ["applied"]
    assert apply(cc_db, older) == ["stale"]
    assert user(cc_db)["credits"] == 5
    # In one batch, in either order, the newest wins; a sign-in alone keeps them.
    later = support.user_event("user.updated", "user_1", T0 + 30, public_metadata={"credits": 7})
    middle = support.user_event("user.updated", "user_1", T0 + 20, public_metadata={"credits": 6})
    assert apply(cc_db, later, middle) == ["applied", "stale"]
    assert apply(cc_db, support.session_event("user_1", T0 + 40)) == ["applied"]
    row = user(cc_db)
    assert row["credits"] == 7 and row["last_sign_in_at"] is not None


def test_private_metadata_is_kept_only_when_not_empty_and_dropped_on_delete(cc_db: str) -> None:
    kept = "select user_id, private_metadata from clerk_sync.private_metadata"
    apply(cc_db, support.user_event("user.created", "user_1", T0, private_metadata={}))
    assert support.fetch(cc_db, kept) == []
    apply(cc_db, support.user_event("user.updated", "user_1", T0 + 1, private_metadata={"a": 1}))
    assert [json.loads(r["private_metadata"]) for r in support.fetch(cc_db, kept)] == [{"a": 1}]
    apply(cc_db, support.user_event("user.updated", "user_1", T0 + 2, private_metadata=None))
    assert support.fetch(cc_db, kept) == []
    apply(cc_db, support.user_event("user.updated", "user_1", T0 + 3, private_metadata={"a": 2}))
    apply(cc_db, support.deleted_event("user_1"))
    assert support.fetch(cc_db, kept) == []


def test_organizations_and_memberships_columns(cc_db: str) -> None:
    created = support.organization_event(
        "organization.created", "org_1", T0, public_metadata={"tier": "gold"}
    )
    assert apply(cc_db, created) == ["applied"]
    [org] = support.fetch(cc_db, "select tier from public.organizations")
    assert org["tier"] == "gold"
    stale = support.organization_event("organization.updated", "org_1", T0 - 1, public_metadata={})
    assert apply(cc_db, stale) == ["stale"]
    assert support.fetch(cc_db, "select tier from public.organizations") == [{"tier": "gold"}]
    member = support.membership_event(
        "organizationMembership.created",
        "orgmem_1",
        "org_1",
        "user_1",
        T0,
        org_updated_at=T0 + 1,
        public_metadata={"tier": 3},
    )
    member["data"]["public_metadata"] = {"seats": 4}
    assert apply(cc_db, member) == ["applied"]
    assert support.fetch(cc_db, "select seats from public.organization_memberships") == [
        {"seats": 4}
    ]
    # The membership's newer organization (a tier that does not convert) sets the default.
    assert support.fetch(cc_db, "select tier from public.organizations") == [{"tier": "basic"}]


def test_organizations_and_memberships_private_metadata_is_kept_as_users_is(
    pg_server: str,
) -> None:
    """Kept only when not empty, from the newest applied version, dropped when it empties or
    its row ends; and a column on it added later is filled from it, without Clerk."""
    org_kept = (
        "select organization_id as id, private_metadata"
        " from clerk_sync.organization_private_metadata"
    )
    member_kept = (
        "select membership_id as id, private_metadata from clerk_sync.membership_private_metadata"
    )

    def kept(sql: str) -> dict[str, Any]:
        return {r["id"]: json.loads(r["private_metadata"]) for r in support.fetch(dsn, sql)}

    def member(member_id: str, org_id: str, user_id: str, at: int, private: Any) -> dict[str, Any]:
        event = support.membership_event(
            "organizationMembership.updated", member_id, org_id, user_id, at, org_updated_at=T0
        )
        event["data"]["private_metadata"] = private
        return event

    dsn = support.create_database(pg_server, migrate=False)
    try:
        assert migrate(dsn, CustomColumns()) == []
        # One batch, set-based: two organizations (one sent twice), two memberships.
        assert (
            apply(
                dsn,
                support.organization_event(
                    "organization.created", "org_1", T0, private_metadata={"stripe": "cus_0"}
                ),
                support.organization_event(
                    "organization.updated", "org_1", T0 + 1, private_metadata={"stripe": "cus_1"}
                ),
                support.organization_event(
                    "organization.created", "org_2", T0, private_metadata={}
                ),
                member("orgmem_1", "org_1", "user_1", T0, {"seats": 3}),
                member("orgmem_2", "org_2", "user_1", T0, None),
            )
            == ["applied"] * 5
        )
        assert kept(org_kept) == {"org_1": {"stripe": "cus_1"}}
        assert kept(member_kept) == {"orgmem_1": {"seats": 3}}

        columns = parse(
            "[organizations.columns]\n"
            "stripe = { path = 'private_metadata.stripe', private = true }\n"
            "[organization_memberships.columns]\n"
            "seats = { path = 'private_metadata.seats', type = 'integer', private = true }\n"
        )
        said = migrate(dsn, columns)
        assert all("from private_metadata." in line for line in said), said
        assert support.fetch(dsn, "select id, stripe from public.organizations order by id") == [
            {"id": "org_1", "stripe": "cus_1"},
            {"id": "org_2", "stripe": None},
        ]
        assert support.fetch(
            dsn, "select id, seats from public.organization_memberships order by id"
        ) == [
            {"id": "orgmem_1", "seats": 3},
            {"id": "orgmem_2", "seats": None},
        ]

        # An older version changes nothing; a newer empty one drops it (one event at a time, too).
        assert apply(
            dsn,
            support.organization_event(
                "organization.updated", "org_1", T0, private_metadata={"stripe": "cus_old"}
            ),
        ) == ["stale"]
        assert kept(org_kept) == {"org_1": {"stripe": "cus_1"}}
        assert (
            apply(
                dsn,
                member("orgmem_2", "org_2", "user_1", T0 + 1, {"seats": 5}),
                member("orgmem_1", "org_1", "user_1", T0 + 1, {}),
                support.deleted_event("user_2"),  # one by one
            )
            == ["applied"] * 3
        )
        assert kept(member_kept) == {"orgmem_2": {"seats": 5}}
        # An ended membership's and a deleted organization's are dropped.
        assert (
            apply(
                dsn,
                support.organization_event("organization.deleted", "org_2", 0),
                support.organization_event(
                    "organization.updated", "org_1", T0 + 2, private_metadata={"stripe": "cus_2"}
                ),
            )
            == ["applied"] * 2
        )
        assert kept(org_kept) == {"org_1": {"stripe": "cus_2"}}
        assert kept(member_kept) == {}
        assert apply(dsn, member("orgmem_3", "org_1", "user_3", T0 + 1, {"seats": 1})) == [
            "applied"
        ]
        assert apply(dsn, support.deleted_event("user_3")) == ["applied"]
        assert kept(member_kept) == {}
    finally:
        support.drop_database(pg_server, dsn)


def test_columns_are_filled_for_rows_already_synced_without_clerk(pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        assert migrate(dsn, CustomColumns()) == []
        apply(
            dsn,
            support.user_event(
                "user.created",
                "user_1",
                T0,
                public_metadata=GOOD,
                private_metadata={"stripe_customer_id": "cus_1"},
            ),
            support.user_event("user.created", "user_2", T0, public_metadata=BAD),
            support.organization_event(
                "organization.created", "org_1", T0, public_metadata={"tier": "gold"}
            ),
        )
        # No Clerk anywhere: what is filled comes from the rows and clerk_sync.
        with_path = parse(
            COLUMNS.replace(
                "[users.columns]\n",
                '[users.columns]\nwallet = { path = "web3_wallets.0.web3_wallet", default = "-" }\n',
            )
        )
        said = migrate(dsn, with_path)
        assert len(said) == len(with_path.columns)
        assert any(
            "users.role (text) added, from public_metadata.role for the 2 rows" in s for s in said
        )
        [unfilled] = [s for s in said if "wallet" in s]
        assert "in no data clerk-sync keeps" in unfilled and "clerk-sync backfill" in unfilled
        one, two = user(dsn, "user_1"), user(dsn, "user_2")
        assert (one["role"], one["credits"], one["tags"], one["stripe_customer_id"]) == (
            "admin",
            12,
            ["a", "b"],
            "cus_1",
        )
        assert (two["role"], two["credits"], two["tags"], two["plan"]) == (None, 0, [], "free")
        assert one["wallet"] == "-"
        assert support.fetch(dsn, "select tier from public.organizations") == [{"tier": "gold"}]
        # Again: nothing to do, nothing said.
        assert migrate(dsn, with_path) == []
    finally:
        support.drop_database(pg_server, dsn)


# --- the commands --------------------------------------------------------------------------------


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    from tests.test_cli import clerk_sync

    return clerk_sync(cwd, *args, **env)


def test_a_malformed_file_stops_a_command_with_one_line_and_status_2(tmp_path: Path) -> None:
    from tests.test_cli import assert_one_clear_line

    (tmp_path / "clerk-sync.toml").write_text(
        "[users.columns]\ncredits = { path = 'private_metadata.credits', type = 'integer' }\n"
    )
    for command in ("migrate", "serve", "schema"):
        result = cli(tmp_path, command, DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
        assert result.returncode == 2, result.stderr
        line = assert_one_clear_line(result, ("clerk-sync.toml: [users.columns] credits: ",))
        assert "private = true" in line


def test_removing_a_column_leaves_it_and_says_so_and_a_retype_is_refused_until_asked(
    tmp_path: Path, pg_server: str
) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        (tmp_path / "clerk-sync.toml").write_text(
            "[users.columns]\ncredits = { path = 'public_metadata.credits', type = 'integer' }\n"
            "plan = 'public_metadata.plan'\n"
        )
        # Rows synced before the file: filled by `migrate`, with Clerk unreachable.
        support.migrate_database(dsn, CustomColumns())
        apply(
            dsn,
            support.user_event(
                "user.created", "user_1", T0, public_metadata={"credits": 5, "plan": "pro"}
            ),
        )
        unreachable = {"CLERK_SECRET_KEY": "sk_test_unused", "CLERK_API_URL": "http://127.0.0.1:9"}
        first = cli(tmp_path, "migrate", DATABASE_URL=dsn, **unreachable)
        assert first.returncode == 0, first.stderr
        assert (
            "custom column public.users.credits (integer) added, from public_metadata.credits "
            "for the 1 rows already synced" in first.stderr
        )
        assert (user(dsn)["credits"], user(dsn)["plan"]) == (5, "pro")

        (tmp_path / "clerk-sync.toml").write_text(
            "[users.columns]\ncredits = 'public_metadata.credits'\n"
        )
        refused = cli(tmp_path, "migrate", DATABASE_URL=dsn)
        assert refused.returncode == 2
        [line] = [line for line in refused.stderr.splitlines() if line.strip()]
        assert "public.users.credits is integer" in line
        assert "`clerk-sync migrate --retype users.credits`" in line
        assert user(dsn)["credits"] == 5  # nothing changed: one transaction

        retyped = cli(tmp_path, "migrate", "--retype", "users.credits", DATABASE_URL=dsn)
        assert retyped.returncode == 0, retyped.stderr
        assert "custom column public.users.credits (text) added" in retyped.stderr
        assert "public.users.plan is no longer in the columns file" in retyped.stderr
        row = user(dsn)
        assert row["credits"] is None  # 5 is a number, not a text
        assert row["plan"] == "pro"  # left alone, no longer written
        apply(
            dsn,
            support.user_event(
                "user.updated", "user_1", T0 + 1, public_metadata={"credits": "lots", "plan": "max"}
            ),
        )
        row = user(dsn)
        assert (row["credits"], row["plan"]) == ("lots", "pro")

        again = cli(tmp_path, "migrate", DATABASE_URL=dsn)
        assert again.returncode == 0 and "custom column" not in again.stderr, again.stderr
        unknown = cli(tmp_path, "migrate", "--retype", "users.nope", DATABASE_URL=dsn)
        assert unknown.returncode == 2 and "--retype users.nope: no such column" in unknown.stderr
    finally:
        support.drop_database(pg_server, dsn)


def test_rest_mode_creates_them_through_the_schema_script(tmp_path: Path, pg_server: str) -> None:
    (tmp_path / "clerk-sync.toml").write_text(COLUMNS)
    result = cli(
        tmp_path,
        "schema",
        SUPABASE_URL="https://abc.supabase.co",
        SUPABASE_SERVICE_ROLE_KEY="sb_secret_" + "x" * 30,
    )
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert "clerk_sync.apply_custom_column('users', 'credits', 'integer'" in script
    dsn = support.create_database(pg_server, migrate=False)
    try:
        support.execute(dsn, script)
        apply(dsn, support.user_event("user.created", "user_1", T0, public_metadata=GOOD))
        support.execute(dsn, script)  # again: nothing changes
        row = user(dsn)
        assert (row["role"], row["credits"], row["tags"]) == ("admin", 12, ["a", "b"])
        # The same schema `migrate` makes: nothing left to do.
        assert migrate(dsn, DECLARED) == []
        assert support.migrate_database(dsn, DECLARED) == []
    finally:
        support.drop_database(pg_server, dsn)


def test_an_unconvertible_value_is_counted_and_logged_without_the_value(
    cc_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from clerk_sync import metrics
    from clerk_sync.app import create_app_from_settings

    (tmp_path / "columns.toml").write_text(COLUMNS)
    monkeypatch.setenv("CLERK_SYNC_CONFIG", str(tmp_path / "columns.toml"))
    secret, key = support.make_secret()
    app_settings = load_settings(webhook_secret=secret, database_url=cc_db, data_dir=tmp_path)
    counter = metrics.CUSTOM_COLUMN_UNCONVERTIBLE.labels("users", "credits")
    before = counter._value.get()
    event = support.user_event(
        "user.created", "user_9", T0, public_metadata={"credits": "secret-ish-value"}
    )
    body = support.dumps(event)
    with TestClient(create_app_from_settings(app_settings)) as client, caplog.at_level("INFO"):
        answer = client.post(
            "/api/webhooks/clerk", content=body, headers=support.signed_headers(key, body)
        )
    assert answer.json() == {"outcome": "applied"}
    assert counter._value.get() == before + 1
    [line] = [r for r in caplog.records if getattr(r, "delivery", None)]
    assert line.delivery["unconvertible"] == "users.credits"  # type: ignore[attr-defined]
    assert "secret-ish-value" not in caplog.text
    assert user(cc_db, "user_9")["credits"] == 0


def test_backfill_fills_them_from_clerk_for_rows_of_the_same_version(pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        migrate(dsn, CustomColumns())
        same = support.user_event("user.created", "user_1", T0, public_metadata=GOOD)
        newer = support.user_event("user.created", "user_2", T0 + 5)
        apply(dsn, same, newer)
        wallet = parse(
            "[users.columns]\n"
            'wallet = { path = "web3_wallets.0.web3_wallet", default = "-" }\n'
            "role = 'public_metadata.role'\n"
        )
        said = migrate(dsn, wallet)
        assert any("in no data clerk-sync keeps" in line for line in said)
        assert user(dsn, "user_1")["wallet"] == "-"

        # What the Backend API returns: user_1 at the row's version, user_2 older than its row.
        from_clerk = [
            {**same["data"], "web3_wallets": [{"web3_wallet": "0xabc"}]},
            {
                **support.user_event("user.created", "user_2", T0)["data"],
                "web3_wallets": [{"web3_wallet": "0xdef"}],
            },
        ]
        fill = "select clerk_sync.fill_custom_columns($1::jsonb[]) as n"
        texts = [json.dumps(u) for u in from_clerk]
        assert support.fetch(dsn, fill, texts) == [{"n": 1}]
        assert (user(dsn, "user_1")["wallet"], user(dsn, "user_1")["role"]) == ("0xabc", "admin")
        assert user(dsn, "user_2")["wallet"] == "-"
        assert support.fetch(dsn, fill, texts) == [{"n": 0}]  # holds them already
    finally:
        support.drop_database(pg_server, dsn)


def test_quotes_in_a_default_stay_in_the_default(cc_db: str) -> None:
    quoted = parse(
        "[users.columns]\n"
        """motto = { path = "public_metadata.motto", default = "it's $$ $x$ \\\\ done" }\n"""
    )
    migrate(cc_db, quoted)
    apply(cc_db, support.user_event("user.created", "user_1", T0))
    assert user(cc_db)["motto"] == "it's $$ $x$ \\ done"
