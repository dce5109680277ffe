from sqlalchemy.ext.asyncio import AsyncSession

from support.adapters.postgres.errors import storage_errors


class SqlAlchemyUnitOfWork:
    """Commits the request's session; repositories of the same request share it."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def commit(self) -> None:
        async with storage_errors():
            await self._session.commit()

    async def rollback(self) -> None:
        async with storage_errors():
            await self._session.rollback()
