"""What a PostgreSQL error means for the caller, by its SQLSTATE, and how to say it without the
row's values: the one mapping that direct mode (`clerk_sync.database`, with asyncpg's errors)
and REST mode (`storage/rest.py`, with PostgREST's JSON `code`) both use. No database driver is
imported here: REST mode loads none.

https://www.postgresql.org/docs/current/errcodes-appendix.html
"""

from __future__ import annotations

from clerk_sync.events import NOT_A_CLERK_EVENT
from clerk_sync.logs import mask

# SQLSTATE classes (the first two characters) by what they mean for the caller.
UNAVAILABLE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback (serialization failure, deadlock): retrying settles it
        "53",  # insufficient resources (too many connections, disk full)
        "55",  # object not in prerequisite state (a lock not available)
        "57",  # operator intervention (query canceled by a timeout, server shutting down)
        "58",  # system error (an I/O error in the server)
    }
)
CONFIGURATION_CLASSES = frozenset(
    {
        "28",  # invalid authorization (a wrong password or user)
        "3D",  # invalid catalog name (no such database)
    }
)
# What refuses this event itself, so that retrying it cannot help: a dead letter, not a 503.
# Everything else (connection loss, read-only after a failover 25006, serialization failures
# 40001, deadlocks 40P01, a missing grant 42501, a lock timeout 55P03, a canceled query or a
# shutdown 57xxx, …) is the database unable to take it now, and a retry may succeed.
REFUSED_CLASSES = frozenset(
    {
        "22",  # data exception: this data, retrying cannot help
        "23",  # integrity constraint violation: a check, unique index or foreign key of the app's
    }
)
REFUSED_CODES = frozenset({"P0001"})  # raise_exception: a trigger of the app's refusing the row
# A violation in clerk-sync's own bookkeeping (the inbox key, say) is a race another delivery
# won, not this event's fault: the retry settles it (as `duplicate`).
OWN_SCHEMA = "clerk_sync"
# A data exception's message may quote the value refused: cut to this, emails masked.
MAX_MESSAGE_CHARS = 160

# SQLSTATE classes by name, for the descriptions of errors (the ones clerk-sync meets).
_CLASS_NAMES = {
    "08": "connection exception",
    "22": "data exception",
    "23": "integrity constraint violation",
    "25": "invalid transaction state",
    "28": "invalid authorization",
    "3D": "invalid catalog name",
    "40": "transaction rollback",
    "42": "syntax error or access rule violation",
    "53": "insufficient resources",
    "55": "object not in prerequisite state",
    "57": "operator intervention",
    "58": "system error",
    "P0": "PL/pgSQL error",
    "XX": "internal error",
}


def refuses_event(sqlstate: str, schema: str | None = None) -> bool:
    """Whether an error with this SQLSTATE (in a table of `schema`, if known) refuses the event
    itself: kept as a dead letter and answered 400, where any other error is answered 503."""
    refused = sqlstate[:2] in REFUSED_CLASSES or sqlstate in REFUSED_CODES
    return refused and not (sqlstate[:2] == "23" and schema == OWN_SCHEMA)


def describe_failure(
    sqlstate: str,
    message: str,
    *,
    condition: str = "",
    constraint: str | None = None,
    column: str | None = None,
    table: str | None = None,
    raised_in: str | None = None,
) -> str:
    """One line for a database error that is safe to log, store and answer: the SQLSTATE, its
    class and the names of the constraint, column and table; never the row's values.

    PostgreSQL puts the row in the error's DETAIL (`Failing row contains (…)`), which is never
    used, and names (never values) in the messages of integrity violations and of the server's
    own states (read-only, deadlock, permission denied), whose first line is kept. A data
    exception's message may quote the input: at most MAX_MESSAGE_CHARS of it, emails masked.
    A raised exception's (P0001) message is the app's own text, which may carry anything: it is
    dropped, and the function and line that raised it (`raised_in`, when known) named instead."""
    text = message.strip().splitlines()[0] if message.strip() else ""
    if sqlstate[:2] == "P0":
        text = f"raised in {raised_in.strip().splitlines()[0]}" if raised_in else ""
    elif sqlstate[:2] == "22":
        text = mask(text)
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    kind = _CLASS_NAMES.get(sqlstate[:2])
    names = [
        f"{name} {value}"
        for name, value in (("constraint", constraint), ("column", column), ("table", table))
        if value
    ]
    where = ", ".join([sqlstate, *([kind] if kind else []), *names])
    if text.startswith(NOT_A_CLERK_EVENT):  # the write path's own check: it says it all
        condition = ""
    said = f"{condition}: {text}" if condition and text else condition or text
    return f"{said} ({where})" if said else f"SQLSTATE {where}"
