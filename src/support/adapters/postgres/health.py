import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support.adapters.postgres.errors import storage_errors


class PostgresHealthProbe:
    name = "postgres"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def check(self) -> None:
        async with storage_errors(), self._engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))
