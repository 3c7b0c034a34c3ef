"""clerk-sync.toml: the loader's one-line refusals, the conversion rules (Python and SQL agree),
and the columns as the write path, `migrate` and `clerk-sync schema` make them."""

from __future__ import annotations

import datetime as dt
import json
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
            "default 'x' is not a integer value",
        ),
        (
            "[users.columns]\na = { path = 'public_metadata.a', type = 'integer', default = 1.5 }",
            "default 1.5 is not a integer value",
        ),
        (
            "[users.columns]\na = { path = 'public_metadata.a', type = 'text[]', default = [1] }",
            "default [1] is not a text[] value",
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
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
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
