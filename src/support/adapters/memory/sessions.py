"""In-memory session state and reply lease: the same contract as the Valkey store."""

import time
from collections.abc import Callable
from uuid import UUID

from support.ports.conversations import SessionState


class InMemorySessionStore:
    """Entries expire by ``clock`` (seconds, monotonic by default; tests may pass their own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[UUID, tuple[SessionState, float]] = {}
        self._leases: dict[UUID, tuple[str, float]] = {}

    async def load(self, conversation_id: UUID) -> SessionState | None:
        entry = self._states.get(conversation_id)
        if entry is None:
            return None
        state, expires_at = entry
        if self._clock() >= expires_at:
            del self._states[conversation_id]
            return None
        return state

    async def save(self, state: SessionState, *, ttl_s: float) -> None:
        self._states[state.conversation.id] = (state, self._clock() + ttl_s)

    async def drop(self, conversation_id: UUID) -> None:
        self._states.pop(conversation_id, None)

    def _holder(self, conversation_id: UUID) -> str | None:
        lease = self._leases.get(conversation_id)
        if lease is None:
            return None
        holder, expires_at = lease
        if self._clock() >= expires_at:
            del self._leases[conversation_id]
            return None
        return holder

    async def acquire_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        current = self._holder(conversation_id)
        if current is not None and current != holder:
            return False
        # Taking it again as its holder refreshes it, as the Valkey store does.
        self._leases[conversation_id] = (holder, self._clock() + ttl_s)
        return True

    async def extend_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        if self._holder(conversation_id) != holder:
            return False
        self._leases[conversation_id] = (holder, self._clock() + ttl_s)
        return True

    async def release_reply_lease(self, conversation_id: UUID, holder: str) -> None:
        if self._holder(conversation_id) == holder:
            del self._leases[conversation_id]
