"""The local data directory (`CLERK_SYNC_DATA_DIR`, default `.clerk-sync/`): the embedded
PostgreSQL's files and the signing secret that `serve --dev` makes for local trials."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

DEV_SECRET_FILE = "dev-webhook-secret"


def pgdata_path(data_dir: Path) -> Path:
    return data_dir / "pgdata"


def read_dev_secret(data_dir: Path) -> str | None:
    path = data_dir / DEV_SECRET_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def create_dev_secret(data_dir: Path) -> str:
    """Make (once) and keep a signing secret for local trials; returns it."""
    existing = read_dev_secret(data_dir)
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    path = data_dir / DEV_SECRET_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return secret
