import sys
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError


class DatabaseUnreachableError(Exception):
    """The database could not be reached or logged into; the message is one line, without the password."""


# What connecting fails with: refused or unresolvable hosts, a wrong password, role or database name.
_CONNECTING = (
    OSError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.CannotConnectNowError,
    OperationalError,
    InterfaceError,
)


def _unreachable(database_url: str, error: BaseException) -> DatabaseUnreachableError:
    try:
        where = make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        where = "SUPPORT_DATABASE_URL"
    reason = " ".join(str(error).split()) or type(error).__name__
    return DatabaseUnreachableError(f"Cannot use the database {where} (SUPPORT_DATABASE_URL): {reason}")


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
    """Apply migrations up to ``revision``.

    Raises:
        DatabaseUnreachableError: the database cannot be reached or logged into (an asyncpg traceback until
            2026-12-07, found by an exploratory test).
    """
    try:
        command.upgrade(alembic_config(database_url), revision)
    except _CONNECTING as error:
        raise _unreachable(database_url, error) from error


def downgrade(database_url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> None:
    command.current(alembic_config(database_url), verbose=False)
