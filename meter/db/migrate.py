"""Running Alembic from meter: `meter db upgrade`, `meter db check`, and at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import meter


def migrations_dir() -> Path:
    """The source tree's migrations/ (editable install), else the copy inside the wheel."""
    package = Path(meter.__file__).parent
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("meter's migrations are not installed")


def alembic_config(url: str, transaction_pooling: bool = False) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # env.py reads the URL from here; it is not put in the ini, where '%' would need escaping.
    config.attributes["database_url"] = url
    config.attributes["transaction_pooling"] = transaction_pooling
    return config


def upgrade(url: str, revision: str = "head", transaction_pooling: bool = False) -> None:
    """Migrate; through a transaction pooler too (every migration runs in one transaction)."""
    command.upgrade(alembic_config(url, transaction_pooling), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str, transaction_pooling: bool = False) -> None:
    """Raise if the models and the migrations differ (alembic's autogenerate finds changes)."""
    command.check(alembic_config(url, transaction_pooling))


def current_heads(url: str) -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
