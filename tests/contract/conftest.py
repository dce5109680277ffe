"""Each port's behaviour is specified once and checked against every adapter of it."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from valkey.asyncio import Valkey

from support.adapters.memory.api_keys import InMemoryApiKeyRepository
from support.adapters.memory.cache import InMemoryCache
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.adapters.memory.system import InMemoryUnitOfWork
from support.adapters.postgres.api_keys import PostgresApiKeyRepository
from support.adapters.postgres.knowledge import PgVectorKnowledgeBase
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.valkey.cache import ValkeyCache
from support.ports.identity import ApiKeyRepository
from support.ports.knowledge import Cache, KnowledgeBase
from support.ports.system import UnitOfWork

BACKENDS = ["memory", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Stores:
    """Adapters of one backend sharing one unit of work, plus a way to read with a fresh one."""

    knowledge: KnowledgeBase
    api_keys: ApiKeyRepository
    uow: UnitOfWork
    reader: Any  # () -> async context manager yielding another Stores view, to check what was committed


@pytest.fixture
async def postgres_stores(engine: AsyncEngine) -> AsyncIterator[Stores]:
    factory = async_sessionmaker(engine, expire_on_commit=False)

    def view(session: AsyncSession) -> Stores:
        return Stores(
            PgVectorKnowledgeBase(session), PostgresApiKeyRepository(session), SqlAlchemyUnitOfWork(session), reader
        )

    class reader:  # noqa: N801 - used like a function returning a context manager
        async def __aenter__(self) -> Stores:
            self.session = factory()
            return view(self.session)

        async def __aexit__(self, *_: object) -> None:
            await self.session.close()

    async with factory() as session:
        yield view(session)


@pytest.fixture
async def memory_stores() -> Stores:
    knowledge, keys, uow = InMemoryKnowledgeBase(), InMemoryApiKeyRepository(), InMemoryUnitOfWork()

    class reader:  # noqa: N801
        async def __aenter__(self) -> Stores:
            return Stores(knowledge, keys, uow, reader)

        async def __aexit__(self, *_: object) -> None:
            return None

    return Stores(knowledge, keys, uow, reader)


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> Stores:
    result: Stores = request.getfixturevalue(f"{request.param}_stores")
    return result


@pytest.fixture
async def valkey_cache(valkey: Valkey) -> Cache:
    return ValkeyCache(valkey, "test:")


@pytest.fixture
async def memory_cache() -> Cache:
    return InMemoryCache()


@pytest.fixture(params=["memory", pytest.param("valkey", marks=pytest.mark.valkey)])
def cache(request: pytest.FixtureRequest) -> Cache:
    result: Cache = request.getfixturevalue(f"{request.param}_cache")
    return result
