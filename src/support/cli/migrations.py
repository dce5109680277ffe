import sys
from pathlib import Path

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    """Alembic settings for the repository's migrations, aimed at ``database_url``."""
    candidates = [Path.cwd() / "alembic.ini", Path(__file__).resolve().parents[3] / "alembic.ini"]
    ini = next((path for path in candidates if path.exists()), None)
    if ini is None:
        msg = "alembic.ini not found: run from the repository root"
        raise FileNotFoundError(msg)
    # stdout looked up now, not at Alembic's import, so redirected output (tests, pipes) is captured.
    config = Config(str(ini), stdout=sys.stdout)
    config.attributes["sqlalchemy.url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> None:
    command.current(alembic_config(database_url), verbose=False)
