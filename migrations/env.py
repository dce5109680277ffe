"""Alembic environment (async). The URL comes from ``config.attributes["sqlalchemy.url"]`` or the settings."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import support.adapters.postgres.models  # noqa: F401  (registers every table on the metadata)
from support.adapters.postgres.engine import asyncpg_url
from support.adapters.postgres.models import metadata
from support.config import load_settings

config = context.config


def _url() -> str:
    url = config.attributes.get("sqlalchemy.url") or load_settings().require_database_url()
    return asyncpg_url(str(url))


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url(), poolclass=NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
