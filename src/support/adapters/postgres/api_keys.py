from typing import cast
from uuid import UUID

import sqlalchemy as sa
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy.ext.asyncio import AsyncSession

from support.adapters.postgres.driver import Row, compile_for_driver, driver_connection
from support.adapters.postgres.errors import storage_errors
from support.adapters.postgres.models import ApiKeyRow
from support.adapters.postgres.paging import newest_first, page_cursor
from support.domain.identity import ApiKey, Role
from support.domain.paging import creation_position
from support.ports.identity import ApiKeyPage

_KEYS = cast("sa.Table", ApiKeyRow.__table__)
# What an ApiKey is read from: every read maps these columns by name with _api_key (no secret hash).
_COLUMNS = (_KEYS.c.id, _KEYS.c.name, _KEYS.c.role, _KEYS.c.hint, _KEYS.c.created_at, _KEYS.c.revoked_at)
# Every request made with an API key reads its key: on the driver, outside a transaction, so the lookup holds
# no connection afterwards (an agent's live feed lasts for hours) and skips the ORM's per-statement cost.
_DRIVER_FIND_ACTIVE = compile_for_driver(
    sa.select(*_COLUMNS).where(_KEYS.c.secret_hash == sa.bindparam("secret_hash"), _KEYS.c.revoked_at.is_(None))
)


class _ApiKeyRows(SQLAlchemyAsyncRepository[ApiKeyRow]):
    model_type = ApiKeyRow


def _api_key(row: Row) -> ApiKey:
    """A key from a row by column name (a SQLAlchemy row's mapping or an asyncpg record)."""
    return ApiKey(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        hint=row["hint"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class PostgresApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._rows = _ApiKeyRows(session=session)

    async def add(self, key: ApiKey, secret_hash: str) -> None:
        row = ApiKeyRow(
            id=key.id,
            name=key.name,
            role=key.role.value,
            secret_hash=secret_hash,
            hint=key.hint,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )
        async with storage_errors():
            await self._rows.add(row)

    async def get(self, key_id: UUID) -> ApiKey | None:
        async with storage_errors():
            row = (await self._session.execute(sa.select(*_COLUMNS).where(_KEYS.c.id == key_id))).mappings().first()
        return None if row is None else _api_key(row)

    async def list_keys(self, *, limit: int, cursor: str | None) -> ApiKeyPage:
        statement = newest_first(sa.select(*_COLUMNS), _KEYS.c.created_at, _KEYS.c.id, limit=limit, cursor=cursor)
        async with storage_errors():
            rows = (await self._session.execute(statement)).mappings().all()
        items = [_api_key(row) for row in rows[:limit]]
        return ApiKeyPage(items=items, next_cursor=page_cursor(items, creation_position, more=len(rows) > limit))

    async def find_active_by_hash(self, secret_hash: str) -> ApiKey | None:
        async with driver_connection(self._session, begin=False) as driver:
            row = await driver.fetchrow(_DRIVER_FIND_ACTIVE.sql, secret_hash)
        return None if row is None else _api_key(row)

    async def save(self, key: ApiKey) -> None:
        async with storage_errors():
            row = await self._rows.get_one(id=key.id)
            row.name = key.name
            row.revoked_at = key.revoked_at
            await self._rows.update(row)
