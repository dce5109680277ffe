"""Reply leases as PostgreSQL advisory locks: the stand-in for Valkey's leases while Valkey is unreachable.

A session-level advisory lock lives as long as the connection that took it, so a process that dies releases its
locks with its connection, as a Valkey lease expires with its TTL. One dedicated connection per process holds
every lock the process takes (locks are per key, many per connection), outside any transaction, so a long reply
pins no transaction and one pool slot at most; the connection goes back to the pool once no lock is held.
"""

import asyncio
import hashlib
import logging
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from support.adapters.postgres.errors import storage_errors

_logger = logging.getLogger(__name__)

# Mixed into every key so these locks never collide with other advisory locks of the application.
_NAMESPACE = b"support:reply-lease:"


def lock_key(conversation_id: UUID) -> int:
    """The signed 64-bit advisory lock key of a conversation's reply lease."""
    digest = hashlib.blake2b(_NAMESPACE + conversation_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresReplyLeases:
    """Reply leases held as advisory locks on one connection of this process.

    PostgreSQL's session locks are re-entrant within a session, so the holders are tracked here too: a second
    holder in this process is refused like one in another process. The locks don't expire while the connection
    lives; ``holds`` tells a holder whether its lock is still there (it is gone if the connection broke).

    Raises:
        StorageUnavailableError: PostgreSQL cannot be reached.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._holders: dict[UUID, str] = {}
        # One asyncpg connection runs one statement at a time.
        self._lock = asyncio.Lock()

    async def acquire(self, conversation_id: UUID, holder: str) -> bool:
        """Take the conversation's lease unless someone (here or in another process) holds it."""
        async with self._lock:
            current = self._holders.get(conversation_id)
            if current is not None:
                return current == holder
            connection = await self._connect()
            try:
                async with storage_errors():
                    taken = bool(
                        await connection.scalar(sa.select(sa.func.pg_try_advisory_lock(lock_key(conversation_id))))
                    )
            except BaseException:
                await self._discard()
                raise
            if taken:
                self._holders[conversation_id] = holder
            else:
                await self._close_if_idle()
            return taken

    def holds(self, conversation_id: UUID, holder: str) -> bool:
        """True while ``holder`` holds the lease (its connection has not broken)."""
        return self._holders.get(conversation_id) == holder

    async def release(self, conversation_id: UUID, holder: str) -> None:
        """Give the lease up (only when ``holder`` holds it)."""
        async with self._lock:
            if self._holders.get(conversation_id) != holder:
                return
            del self._holders[conversation_id]
            connection = self._connection
            if connection is None:
                return
            try:
                async with storage_errors():
                    await connection.scalar(sa.select(sa.func.pg_advisory_unlock(lock_key(conversation_id))))
            except BaseException:
                # The lock dies with the connection; dropping it is the surest way to let go.
                await self._discard()
                raise
            await self._close_if_idle()

    async def close(self) -> None:
        """Release every lock (by closing the connection)."""
        async with self._lock:
            await self._discard()

    async def _connect(self) -> AsyncConnection:
        if self._connection is None:
            async with storage_errors():
                connection = await self._engine.connect()
                try:
                    # Outside any transaction: the connection idles between statements, pinning nothing.
                    connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                except BaseException:
                    await connection.close()
                    raise
            self._connection = connection
        return self._connection

    async def _close_if_idle(self) -> None:
        if not self._holders and self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                async with storage_errors():
                    await connection.close()
            except Exception:
                _logger.debug("closing the lease connection failed", exc_info=True)

    async def _discard(self) -> None:
        # Every lock of this process went (or goes now) with the connection.
        if self._holders:
            _logger.warning("the reply lease connection broke; %d leases were lost", len(self._holders))
        self._holders.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.invalidate()
                await connection.close()
            except Exception:
                _logger.debug("discarding the lease connection failed", exc_info=True)
