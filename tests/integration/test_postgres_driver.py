"""The turn's driver statements (``driver_connection``) when the server ends their connection mid-statement.

An administrator or a managed failover ends backends with ``pg_terminate_backend`` or a fast shutdown: the client
gets ``AdminShutdownError`` (SQLSTATE 57P01), a server error rather than a broken socket. The connection is gone
all the same: the statement fails as ``StorageUnavailableError`` (a 503 to the caller), and the connection must not
go back to the pool for the next request to fail on.
"""

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support.adapters.postgres.driver import driver_connection
from support.adapters.postgres.engine import create_engine, create_session_factory
from support.config import DatabaseSettings
from support.ports.errors import StorageUnavailableError


async def _terminate(admin: AsyncEngine, pid: int) -> None:
    """End backend ``pid`` the way an administrator would, once it is running the statement."""
    async with admin.connect() as connection:
        for _ in range(200):
            result = await connection.exec_driver_sql(
                f"SELECT state FROM pg_stat_activity WHERE pid = {pid}"  # noqa: S608 - an int from the server
            )
            if result.scalar() == "active":
                break
            await asyncio.sleep(0.01)
        await connection.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")


@pytest.mark.parametrize("begin", [True, False], ids=["in-transaction", "lone-read"])
async def test_a_connection_the_server_ends_mid_statement_never_goes_back_to_the_pool(
    database_url: str, engine: AsyncEngine, begin: bool
) -> None:
    served = create_engine(database_url, DatabaseSettings(pool_size=1, max_overflow=0))
    sessions = create_session_factory(served)
    try:
        async with sessions() as session:
            async with driver_connection(session, begin=begin) as driver:
                pid = await driver.fetchval("SELECT pg_backend_pid()")
            with pytest.raises(StorageUnavailableError):
                async with driver_connection(session, begin=begin) as driver:
                    await asyncio.gather(driver.fetchval("SELECT pg_sleep(5)"), _terminate(engine, pid))
            await session.rollback()

        # The pool holds one connection: the next unit of work gets a new one and succeeds.
        async with sessions() as session, driver_connection(session, begin=begin) as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") != pid
            assert await driver.fetchval("SELECT 1") == 1
    finally:
        await served.dispose()
