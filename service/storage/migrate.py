"""Run the Alembic migrations from code: `upgrade(url)` brings any database to head.

No alembic.ini: the Config is built here, so `opsd serve`, the worker and tests all
migrate the same way. From a shell: `python -m service.storage.migrate [URL]`
(default: the URL from `Settings`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from service.storage.db import normalize_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


if __name__ == "__main__":
    from service.settings import Settings

    url = sys.argv[1] if len(sys.argv) > 1 else Settings().database_url
    upgrade(url)
