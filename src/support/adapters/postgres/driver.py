"""Statements on a chat turn's path, run on the session's asyncpg connection instead of through SQLAlchemy.

SQLAlchemy's execution and result machinery costs 0.3-0.8 ms of event-loop CPU per statement (more for the
dialect's ``INSERT``, which it never caches and so compiles on every call), against ~0.1 ms for the round trip.
A turn runs a handful of such statements on the event loop that also tokenizes, streams and serves every other
request, so they are compiled to SQL once, from the same Core tables, and executed on the driver connection of
the session: same transaction, same error translation, the connection invalidated when it broke.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from support.adapters.postgres.errors import storage_errors

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


class Row(Protocol):
    """A result row read by column name: a SQLAlchemy row mapping or an asyncpg record (one mapper serves both)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled once to the driver's SQL, with the names of its positional parameters in order."""

    sql: str
    names: tuple[str, ...]

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        return [parameters[name] for name in self.names]


def compile_for_driver(statement: ClauseElement, column_keys: Sequence[str] | None = None) -> DriverStatement:
    """Compile ``statement`` for asyncpg (``$n`` parameters with casts); ``column_keys`` for an INSERT's values."""
    compiled = statement.compile(dialect=_DIALECT, column_keys=list(column_keys) if column_keys else None)
    assert isinstance(compiled, SQLCompiler)  # noqa: S101 - a Core statement compiles with the SQL compiler
    names = tuple(compiled.positiontup or ())
    # A Python constant in the statement (``1 - distance``) compiles to an anonymous parameter that no caller
    # would pass: fail when the module loads, not on the first turn. Write constants as literal columns.
    anonymous = [name for name in names if compiled.binds[name].unique]
    if anonymous:
        msg = f"constants compiled to anonymous parameters {anonymous}: use sa.literal_column"
        raise ValueError(msg)
    return DriverStatement(compiled.string, names)


@asynccontextmanager
async def driver_connection(session: AsyncSession, *, begin: bool = True) -> AsyncIterator[asyncpg.Connection]:
    """The session's asyncpg connection, in the session's transaction (begun if need be).

    ``begin=False`` is for a lone read that needs no transaction: it joins one already begun, or else borrows a
    pooled connection for its statements alone and gives it back at once. A scope that has only read then holds
    no connection while it waits for anything else (another scope's connection, a model, a live feed's next
    event), so a bounded pool cannot deadlock on turns that each hold one connection and wait for a second, and a
    feed open for hours does not keep one (tests/api/test_connection_pool.py).
    Driver and SQLAlchemy failures become port errors; a connection that broke is invalidated, as SQLAlchemy
    does for its own statements, so it never goes back to the pool.
    """
    async with storage_errors():
        engine = session.bind
        if not begin and isinstance(engine, AsyncEngine) and not session.in_transaction():
            async with engine.connect() as borrowed, _driver_of(borrowed, begin=False) as driver:
                yield driver
        else:
            async with _driver_of(await session.connection(), begin=begin) as driver:
                yield driver


@asynccontextmanager
async def _driver_of(connection: AsyncConnection, *, begin: bool) -> AsyncIterator[asyncpg.Connection]:
    try:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:  # only after invalidation, which ends the connection's use
            raise asyncpg.ConnectionDoesNotExistError
        # SQLAlchemy's asyncpg adapter sends BEGIN lazily, before the first statement it runs itself, so a
        # statement run here first would run outside the transaction (autocommitted, its row locks gone at
        # once). Start it the way the adapter would; tests/contract/test_conversation_repository.py proves
        # that a rollback undoes what ran here and that a lock taken here holds until the commit.
        adapter: Any = raw.dbapi_connection
        if begin and not adapter._started:  # noqa: SLF001 - see above; SQLAlchemy is pinned by uv.lock
            try:
                await adapter._start_transaction()  # noqa: SLF001
            except adapter.dbapi.Error as error:  # the adapter's form of a driver failure
                raise asyncpg.ConnectionDoesNotExistError(str(error)) from error
        yield driver
    except (asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError, OSError):
        await connection.invalidate()
        raise
