"""The errors clerk-sync raises on purpose: one root, and the few kinds a user tells apart.

Every message is one line saying what happened and what to do; `exit_status` is what the CLI
exits with when one ends a command (2: fix the configuration or the command line, or a refusal
that a flag can override; 1: a failure at run time, worth trying again).

- `ConfigError`: a setting or an option is missing or malformed (`Settings`, the CLI's options).
- `DatabaseUnavailable`: the database is down, too slow or not ready; retrying later can help
  (`storage.StoreUnavailable`, the embedded server not starting).
- `Refused`: the input was understood and refused; retrying the same cannot help
  (`storage.EventRejected`, `backfill.PruneRefused`, a bad signature).

Other failures (Clerk's API down, a backfill that cannot go on) are a plain `ClerkSyncError`.
"""

from __future__ import annotations


class ClerkSyncError(Exception):
    """Something clerk-sync could not do; the message is one line a user can act on."""

    exit_status = 1


class ConfigError(ClerkSyncError):
    """A setting is missing or malformed; the message names the variable and says what to do."""

    exit_status = 2


class DatabaseUnavailable(ClerkSyncError):
    """The database is down, too slow, or not ready: try again later."""


class Refused(ClerkSyncError):
    """The input was refused, and retrying it as it is cannot help."""

    exit_status = 2
