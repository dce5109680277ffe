"""Keeping conversations answered while Valkey is unreachable.

Valkey holds hot, rebuildable state; PostgreSQL holds the truth. The one piece of Valkey state a turn cannot do
without is the reply lease (one writer of replies per conversation), so while Valkey cannot be reached leases are
taken from a stand-in (PostgreSQL advisory locks). Everything else a turn asks of the session store is already
optional to its callers (a cache miss, a state not saved).
"""

import logging
from typing import Protocol
from uuid import UUID

from support.ports.conversations import SessionState, SessionStore
from support.ports.errors import CacheUnavailableError, DependencyUnavailableError

_logger = logging.getLogger(__name__)


class ReplyLeases(Protocol):
    """Leases that don't need Valkey (see PostgresReplyLeases)."""

    async def acquire(self, conversation_id: UUID, holder: str) -> bool: ...

    def holds(self, conversation_id: UUID, holder: str) -> bool: ...

    async def release(self, conversation_id: UUID, holder: str) -> None: ...


class LeaseFallbackSessionStore:
    """A :class:`SessionStore` whose reply leases fall back to ``fallback`` while ``primary`` is unreachable.

    - ``acquire_reply_lease`` asks ``primary``; when it raises CacheUnavailableError the lease comes from
      ``fallback``, and that holder's extend and release go there too.
    - ``extend_reply_lease`` of a ``primary`` lease answers False instead of raising when ``primary`` is
      unreachable: the lease may be gone, but the turn in progress still finishes and stores its reply.
    - State (``load``/``save``/``drop``) goes to ``primary`` and raises like it: callers treat it as optional.

    Mutual exclusion holds among processes that see the same side: while some processes reach Valkey and
    others don't (a partial partition), or in the seconds after Valkey returns, a conversation could get two
    writers. Replies are still stored whole under the conversation's row lock.
    """

    def __init__(self, primary: SessionStore, fallback: ReplyLeases) -> None:
        self._primary = primary
        self._fallback = fallback
        self._fallback_holders: set[tuple[UUID, str]] = set()

    async def load(self, conversation_id: UUID) -> SessionState | None:
        return await self._primary.load(conversation_id)

    async def save(self, state: SessionState, *, ttl_s: float) -> None:
        await self._primary.save(state, ttl_s=ttl_s)

    async def drop(self, conversation_id: UUID) -> None:
        await self._primary.drop(conversation_id)

    async def acquire_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        if (conversation_id, holder) in self._fallback_holders:
            return self._fallback.holds(conversation_id, holder)
        try:
            taken = await self._primary.acquire_reply_lease(conversation_id, holder, ttl_s=ttl_s)
        except CacheUnavailableError:
            _logger.warning("Valkey is unreachable; the reply lease of %s comes from PostgreSQL", conversation_id)
        else:
            if taken and any(held == conversation_id for held, _ in self._fallback_holders):
                # Valkey is back, but a turn of this process still writes under a fallback lease: wait for it.
                await self._primary.release_reply_lease(conversation_id, holder)
                return False
            return taken
        taken = await self._fallback.acquire(conversation_id, holder)
        if taken:
            self._fallback_holders.add((conversation_id, holder))
        return taken

    async def extend_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        if (conversation_id, holder) in self._fallback_holders:
            return self._fallback.holds(conversation_id, holder)
        try:
            return await self._primary.extend_reply_lease(conversation_id, holder, ttl_s=ttl_s)
        except CacheUnavailableError:
            _logger.warning("the reply lease of %s could not be extended: Valkey is unreachable", conversation_id)
            return False

    async def release_reply_lease(self, conversation_id: UUID, holder: str) -> None:
        if (conversation_id, holder) in self._fallback_holders:
            self._fallback_holders.discard((conversation_id, holder))
            try:
                await self._fallback.release(conversation_id, holder)
            except DependencyUnavailableError:
                # The lock went with its broken connection.
                _logger.warning("the fallback reply lease of %s was released by a broken connection", conversation_id)
            return
        await self._primary.release_reply_lease(conversation_id, holder)
