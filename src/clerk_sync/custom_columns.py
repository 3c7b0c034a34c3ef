"""Your own columns: `clerk-sync.toml` (or the file `CLERK_SYNC_CONFIG` names) adds columns to the
synced tables, each taken from a path in the Clerk object (the contract's "v2: Your own columns").

```toml
[users.columns]
role = "public_metadata.role"                                    # text unless a type is given
credits = { path = "public_metadata.credits", type = "integer", default = 0 }
stripe_customer_id = { path = "private_metadata.stripe_customer_id", private = true }
```

This module is the model (`CustomColumn`, `CustomColumns`), the loader (`load_custom_columns`,
`configured`: one `ConfigError` line naming the file and the entry for any mistake) and the
conversion rules in Python (`convert`): the same verdicts as the SQL functions in
sql/repeatable/10_helpers.sql that the write path uses (tests/test_custom_columns.py compares them),
for the metric and log line of a value that does not convert. The SQL the columns need is rendered
by `migrations.py`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from clerk_sync.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("clerk-sync.toml")
CONFIG_VARIABLE = "CLERK_SYNC_CONFIG"

Table = Literal["users", "organizations", "organization_memberships"]
ColumnType = Literal[
    "text", "integer", "bigint", "numeric", "boolean", "jsonb", "text[]", "timestamptz"
]
TABLES: tuple[Table, ...] = get_args(Table)
TYPES: tuple[ColumnType, ...] = get_args(ColumnType)

# The columns clerk-sync writes itself (sql/migrations/0001_initial.sql, 0008_organizations.sql):
# a custom column may not take one of these names.
SYNCED_COLUMNS: dict[Table, frozenset[str]] = {
    "users": frozenset(
        [
            "id",
            "email",
            "email_verified",
            "phone",
            "username",
            "first_name",
            "last_name",
            "image_url",
            "external_id",
            "public_metadata",
            "unsafe_metadata",
            "banned",
            "created_at",
            "updated_at",
            "last_sign_in_at",
            "deleted_at",
        ]
    ),
    "organizations": frozenset(
        [
            "id",
            "name",
            "slug",
            "image_url",
            "created_by",
            "public_metadata",
            "max_allowed_memberships",
            "admin_delete_enabled",
            "created_at",
            "updated_at",
            "deleted_at",
        ]
    ),
    "organization_memberships": frozenset(
        [
            "id",
            "organization_id",
            "user_id",
            "role",
            "permissions",
            "public_metadata",
            "created_at",
            "updated_at",
            "deleted_at",
        ]
    ),
}

# Where each table's Clerk object is: the example payloads (Clerk's documented format) name its
# fields, which a path must start with.
OBJECTS: dict[Table, tuple[str, str]] = {
    "users": ("user", "user.created.json"),
    "organizations": ("organization", "organization.created.json"),
    "organization_memberships": ("organization membership", "organizationMembership.created.json"),
}

PRIVATE_ROOT = "private_metadata"
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
INTEGER_RANGE = {"integer": 2**31, "bigint": 2**63}
# Milliseconds up to the end of year 9999, as clerk_sync.is_ms has it.
MAX_MS = 253402300799999

Json = None | bool | int | float | Decimal | str | list[Any] | dict[str, Any]


@dataclass(frozen=True, slots=True)
class CustomColumn:
    """One declared column: `table.name`, filled from `path` in the Clerk object, as `type`."""

    table: Table
    name: str
    path: tuple[str, ...]
    type: ColumnType = "text"
    default: Json = None  # a JSON value that converts to `type` (checked), or None
    private: bool = False

    @property
    def label(self) -> str:
        return f"{self.table}.{self.name}"

    @property
    def dotted_path(self) -> str:
        return ".".join(self.path)

    @property
    def default_value(self) -> Any:
        """The default as the column holds it (None: null)."""
        return None if self.default is None else convert(self.type, self.default)

    @property
    def quoted(self) -> str:
        """The column's name in SQL (quoted, so that a keyword such as `order` is a name too)."""
        return f'"{self.name}"'

    @property
    def default_sql(self) -> str:
        """The default as an SQL literal of the column's type ('null' when there is none)."""
        return sql_literal(self.type, self.default_value)

    def value_sql(self, source: str, path: tuple[str, ...] | None = None) -> str:
        """The SQL expression for this column's value from `source` (the jsonb of a Clerk
        object, or of `path` within it): the value at its path, converted, else the default."""
        path = self.path if path is None else path
        found = f"{source} #> '{{{','.join(path)}}}'" if path else source
        converted = f"clerk_sync.{CONVERTERS[self.type]}({found})"
        return converted if self.default is None else f"coalesce({converted}, {self.default_sql})"

    def value(self, data: object) -> tuple[Any, bool]:
        """What this column gets from a Clerk object (an event's `data`), and whether its value
        was there and did not convert (then the column gets its default)."""
        found = lookup(data, self.path)
        converted = None if found is None else convert(self.type, found)
        if converted is None:
            return self.default_value, found is not None
        return converted, False


@dataclass(frozen=True, slots=True)
class CustomColumns:
    """Every column a configuration declares, in file order, and the file it came from (None:
    no file)."""

    columns: tuple[CustomColumn, ...] = ()
    source: Path | None = None

    def of(self, table: Table) -> tuple[CustomColumn, ...]:
        return tuple(column for column in self.columns if column.table == table)

    def find(self, label: str) -> CustomColumn | None:
        """The column `table.name`, or None."""
        return next((column for column in self.columns if column.label == label), None)

    def __bool__(self) -> bool:
        return bool(self.columns)

    def unconvertible_in(self, event_type: str, data: dict[str, Any]) -> list[CustomColumn]:
        """The columns an applied event of this type set to their default because its value
        did not convert (for the metric and the log line; never the value)."""
        found: list[CustomColumn] = []
        for table, where in EVENT_WRITES.get(event_type, ()):
            columns = self.of(table)
            if columns:
                found += unconvertible(columns, data if not where else lookup(data, where))
        return found


NO_COLUMNS = CustomColumns()


# --- conversion: the contract's rules ----------------------------------------------------------


def lookup(data: object, path: tuple[str, ...]) -> Json:
    """The JSON value at `path` (object keys; a whole-number segment also indexes an array, as
    PostgreSQL's #> does), or None when it is missing or JSON null."""
    value: Any = data
    for segment in path:
        if isinstance(value, dict):
            value = value.get(segment)
        elif isinstance(value, list) and re.fullmatch(r"-?\d+", segment):
            index = int(segment)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            return None
    return value  # type: ignore[no-any-return]


def _number(value: object) -> Decimal | None:
    """A JSON number as an exact decimal (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    number = Decimal(value) if isinstance(value, int) else Decimal(str(value))
    return number if number.is_finite() else None


def convert(column_type: ColumnType, value: object) -> Any:
    """`value` (parsed JSON; numbers best parsed as Decimal, `parse_float=Decimal`) as the column
    holds it, or None when its JSON type does not fit: string → text; integral number in range
    → integer/bigint; number → numeric; true/false → boolean; any value → jsonb; array of
    strings → text[]; whole milliseconds (years 1970 to 9999) → timestamptz. JSON null is None."""
    if value is None:
        return None
    if column_type == "text":
        return value if isinstance(value, str) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "jsonb":
        return value
    if column_type == "text[]":
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        return None
    number = _number(value)
    if number is None:
        return None
    if column_type == "numeric":
        return number
    if column_type in INTEGER_RANGE:
        bound = INTEGER_RANGE[column_type]
        integral = number == number.to_integral_value()
        return int(number) if integral and -bound <= number < bound else None
    # timestamptz: as clerk_sync.is_ms, a number written without a fraction.
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0 and 0 <= number <= MAX_MS:
        milliseconds = int(number)
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=milliseconds)
    return None


# The SQL function that converts a JSON value to each type (sql/repeatable/10_helpers.sql).
CONVERTERS: dict[ColumnType, str] = {
    "text": "to_text",
    "integer": "to_integer",
    "bigint": "to_bigint",
    "numeric": "to_numeric",
    "boolean": "to_boolean",
    "jsonb": "to_jsonb",
    "text[]": "to_text_array",
    "timestamptz": "to_timestamptz",
}


def _quote(text: str) -> str:
    """An SQL string literal. A `$` is written as an escape, so that the literal can go inside
    a dollar-quoted function body (sql/repeatable/ files are)."""
    if "$" not in text:
        return "'" + text.replace("'", "''") + "'"
    escaped = text.replace("\\", "\\\\").replace("'", "''").replace("$", "\\0024")
    return "U&'" + escaped + "'"


def _json_text(value: object) -> str:
    return json.dumps(value, default=lambda number: float(number), ensure_ascii=False)


def sql_literal(column_type: ColumnType, value: Any) -> str:
    """A converted value (see `convert`) as an SQL literal of the type."""
    if value is None:
        return "null"
    if column_type == "text":
        return _quote(value)
    if column_type == "boolean":
        return "true" if value else "false"
    if column_type in ("integer", "bigint"):
        return str(value)
    if column_type == "numeric":
        return f"{value}::numeric"
    if column_type == "jsonb":
        return f"{_quote(_json_text(value))}::jsonb"
    if column_type == "text[]":
        return f"array[{', '.join(_quote(item) for item in value)}]::text[]"
    return f"{_quote(value.isoformat())}::timestamptz"


def unconvertible(columns: tuple[CustomColumn, ...], data: object) -> list[CustomColumn]:
    """The columns whose value is in `data` but does not convert (they get their default)."""
    return [column for column in columns if column.value(data)[1]]


# The Clerk objects an event writes, by table (as the write path takes them).
EVENT_WRITES: dict[str, tuple[tuple[Table, tuple[str, ...]], ...]] = {
    "user.created": (("users", ()),),
    "user.updated": (("users", ()),),
    "organization.created": (("organizations", ()),),
    "organization.updated": (("organizations", ()),),
    "organizationMembership.created": (
        ("organization_memberships", ()),
        ("organizations", ("organization",)),
    ),
    "organizationMembership.updated": (
        ("organization_memberships", ()),
        ("organizations", ("organization",)),
    ),
}


# --- the database's columns --------------------------------------------------------------------

# Each declared column as the database has it: its type there (null: no such column) and
# whether that is the declared type. $1..$3: table, column, declared type of each.
HELD_SQL = """
select d.n, pg_catalog.format_type(a.atttypid, a.atttypmod) as held,
       a.atttypid = d.type::pg_catalog.regtype as same
from unnest($1::text[], $2::text[], $3::text[]) with ordinality as d(tbl, col, type, n)
left join pg_catalog.pg_attribute as a
    on a.attrelid = pg_catalog.to_regclass('public.' || pg_catalog.quote_ident(d.tbl))
   and a.attname = d.col and a.attnum > 0 and not a.attisdropped
order by d.n
"""


@dataclass(frozen=True, slots=True)
class HeldColumn:
    """A declared column as the database holds it: `held` its type there (None: missing)."""

    column: CustomColumn
    held: str | None
    same: bool


async def held_columns(conn: Any, columns: CustomColumns) -> list[HeldColumn]:
    """Each declared column as the database at `conn` (an asyncpg connection) has it."""
    if not columns:
        return []
    rows = await conn.fetch(
        HELD_SQL,
        [c.table for c in columns.columns],
        [c.name for c in columns.columns],
        [c.type for c in columns.columns],
    )
    return [
        HeldColumn(column, row["held"], bool(row["same"]))
        for column, row in zip(columns.columns, rows, strict=True)
    ]


def lacking_warning(columns: CustomColumns, lacking: list[CustomColumn], how: str) -> str:
    """The one line `serve` says at start when the database lacks declared columns (`how`:
    what creates them)."""
    names = ", ".join(f"public.{c.label}" for c in lacking)
    where = columns.source or DEFAULT_CONFIG_FILE
    return (
        f"{where} declares {'a column' if len(lacking) == 1 else 'columns'} this database lacks "
        f"({names}): deliveries apply without {'it' if len(lacking) == 1 else 'them'} until "
        f"{how}"
    )


# --- the file ----------------------------------------------------------------------------------


class _Entry(BaseModel):
    """A column given as a table: `{ path = "...", type = "...", default = ..., private = ... }`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str
    type: ColumnType = "text"
    default: Any = None
    private: bool = False


@cache
def object_fields(table: Table) -> frozenset[str]:
    """The fields of the table's Clerk object, as the example payloads have them."""
    _, example = OBJECTS[table]
    text = resources.files("clerk_sync").joinpath("examples", example).read_text(encoding="utf-8")
    return frozenset(json.loads(text)["data"])


def _path(table: Table, path: str) -> tuple[str, ...]:
    segments = tuple(path.split("."))
    if not all(SEGMENT.fullmatch(segment) for segment in segments):
        raise ValueError(
            f"path {path!r} is not field names separated by dots (letters, digits, _ and -), "
            "such as 'public_metadata.plan'"
        )
    if segments[0] not in object_fields(table):
        name, _ = OBJECTS[table]
        metadata = sorted(f for f in object_fields(table) if f.endswith("_metadata"))
        raise ValueError(
            f"path {path!r} does not start with a field of Clerk's {name} object (such as "
            f"{', '.join(metadata)})"
        )
    return segments


def _default(column_type: ColumnType, default: Any) -> Json:
    if default is None:
        return None
    if isinstance(default, dt.date | dt.time):
        raise ValueError(
            "a default is a TOML string, number, boolean, array or table (for timestamptz: "
            "milliseconds since the epoch)"
        )
    plain = json.loads(json.dumps(default), parse_float=Decimal)
    if convert(column_type, plain) is None:
        raise ValueError(f"default {default!r} is not a value of type {column_type}")
    return plain  # type: ignore[no-any-return]


def _column(table: Table, name: str, entry: object) -> CustomColumn:
    if not NAME.fullmatch(name):
        raise ValueError(
            "not a valid column name (lower-case letters, digits and _, starting with a letter "
            "or _, at most 63 characters)"
        )
    if name in SYNCED_COLUMNS[table] or name.startswith("clerk_sync"):
        raise ValueError(f"clerk-sync already writes a column {name} in public.{table}")
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        raise ValueError('expected a path ("public_metadata.plan") or a table { path = "…", … }')
    try:
        spec = _Entry.model_validate(entry)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            raise ValueError(f"unknown key {where!r} (path, type, default, private)") from None
        if where == "type":
            raise ValueError(
                f"unknown type {entry.get('type')!r} (one of {', '.join(TYPES)})"
            ) from None
        raise ValueError(f"{where}: {error['msg']}") from None
    path = _path(table, spec.path)
    if path[0] == PRIVATE_ROOT and not spec.private:
        raise ValueError(
            "a path into private_metadata needs private = true: the column is readable where "
            f"public.{table} is (each user reads their own row under the read-own-row policy)"
        )
    return CustomColumn(
        table, name, path, spec.type, _default(spec.type, spec.default), spec.private
    )


def parse_custom_columns(text: str, source: Path) -> CustomColumns:
    """The columns a file's text declares; ConfigError naming the file and the entry."""
    where = source.name if source.parent == Path() else str(source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    columns: list[CustomColumn] = []
    for section, body in document.items():
        if section not in TABLES:
            raise ConfigError(f"{where}: [{section}]: unknown section (one of {', '.join(TABLES)})")
        if not isinstance(body, dict) or set(body) - {"columns"}:
            raise ConfigError(f"{where}: [{section}]: expected only a [{section}.columns] table")
        declared = body.get("columns", {})
        if not isinstance(declared, dict):
            raise ConfigError(f"{where}: [{section}.columns]: expected a table of columns")
        table: Table = section
        for name, entry in declared.items():
            try:
                columns.append(_column(table, name, entry))
            except ValueError as exc:
                raise ConfigError(f"{where}: [{section}.columns] {name}: {exc}") from None
    return CustomColumns(tuple(columns), source)


def load_custom_columns(path: Path | None = None) -> CustomColumns:
    """The columns of the file at `path` (ConfigError when it cannot be read), or with no path,
    of ./clerk-sync.toml when there is one (else none)."""
    if path is None:
        if not DEFAULT_CONFIG_FILE.is_file():
            return NO_COLUMNS
        path = DEFAULT_CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{CONFIG_VARIABLE}: cannot read {path}: {reason} (it names the columns file; "
            "unset it to use ./clerk-sync.toml)"
        ) from None
    return parse_custom_columns(text, path)


def configured() -> CustomColumns:
    """The columns this process is configured with: the file CLERK_SYNC_CONFIG names (from the
    environment or `.env`, as Settings reads it), else ./clerk-sync.toml when there is one."""
    from clerk_sync.settings import load_settings

    return load_settings().custom_columns
