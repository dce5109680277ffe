"""Reply leases while Valkey is unreachable: LeaseFallbackSessionStore over a failing primary."""

from dataclasses import dataclass, field
from uuid import UUID

import pytest

from support.adapters.memory.sessions import InMemorySessionStore
from support.adapters.resilience import LeaseFallbackSessionStore
from support.domain.ids import new_id
from support.ports.conversations import SessionState
from support.ports.errors import CacheUnavailableError, StorageUnavailableError

TTL = 30.0


class SwitchableStore(InMemorySessionStore):
    """The in-memory session store, unreachable while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise CacheUnavailableError

    async def load(self, conversation_id: UUID) -> SessionState | None:
        self._check()
        return await super().load(conversation_id)

    async def acquire_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        self._check()
        return await super().acquire_reply_lease(conversation_id, holder, ttl_s=ttl_s)

    async def extend_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        self._check()
        return await super().extend_reply_lease(conversation_id, holder, ttl_s=ttl_s)

    async def release_reply_lease(self, conversation_id: UUID, holder: str) -> None:
        self._check()
        await super().release_reply_lease(conversation_id, holder)


@dataclass
class FakeLeases:
    held: dict[UUID, str] = field(default_factory=dict)
    fail_release: bool = False

    async def acquire(self, conversation_id: UUID, holder: str) -> bool:
        current = self.held.setdefault(conversation_id, holder)
        return current == holder

    def holds(self, conversation_id: UUID, holder: str) -> bool:
        return self.held.get(conversation_id) == holder

    async def release(self, conversation_id: UUID, holder: str) -> None:
        if self.held.get(conversation_id) == holder:
            del self.held[conversation_id]
        if self.fail_release:
            raise StorageUnavailableError


@pytest.fixture
def primary() -> SwitchableStore:
    return SwitchableStore()


@pytest.fixture
def fallback() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def store(primary: SwitchableStore, fallback: FakeLeases) -> LeaseFallbackSessionStore:
    return LeaseFallbackSessionStore(primary, fallback)


async def test_leases_come_from_the_primary_while_it_is_up(
    store: LeaseFallbackSessionStore, fallback: FakeLeases
) -> None:
    conversation = new_id()
    assert await store.acquire_reply_lease(conversation, "a", ttl_s=TTL)
    assert not await store.acquire_reply_lease(conversation, "b", ttl_s=TTL)
    assert fallback.held == {}
    await store.release_reply_lease(conversation, "a")
    assert await store.acquire_reply_lease(conversation, "b", ttl_s=TTL)


async def test_leases_come_from_the_fallback_while_the_primary_is_down(
    store: LeaseFallbackSessionStore, primary: SwitchableStore, fallback: FakeLeases
) -> None:
    conversation = new_id()
    primary.down = True

    assert await store.acquire_reply_lease(conversation, "a", ttl_s=TTL)
    assert not await store.acquire_reply_lease(conversation, "b", ttl_s=TTL)
    assert fallback.held == {conversation: "a"}
    assert await store.extend_reply_lease(conversation, "a", ttl_s=TTL)

    await store.release_reply_lease(conversation, "a")
    assert fallback.held == {}
    assert await store.acquire_reply_lease(conversation, "b", ttl_s=TTL)


async def test_a_fallback_lease_keeps_its_holder_when_the_primary_returns(
    store: LeaseFallbackSessionStore, primary: SwitchableStore, fallback: FakeLeases
) -> None:
    conversation = new_id()
    primary.down = True
    assert await store.acquire_reply_lease(conversation, "a", ttl_s=TTL)
    primary.down = False

    # Another turn of this process must wait for the one still writing under the fallback lease.
    assert not await store.acquire_reply_lease(conversation, "b", ttl_s=TTL)
    assert await store.extend_reply_lease(conversation, "a", ttl_s=TTL)
    await store.release_reply_lease(conversation, "a")
    assert fallback.held == {}
    assert await store.acquire_reply_lease(conversation, "b", ttl_s=TTL)


async def test_extending_a_primary_lease_while_the_primary_is_down_answers_false(
    store: LeaseFallbackSessionStore, primary: SwitchableStore
) -> None:
    conversation = new_id()
    assert await store.acquire_reply_lease(conversation, "a", ttl_s=TTL)
    primary.down = True

    assert not await store.extend_reply_lease(conversation, "a", ttl_s=TTL)
    with pytest.raises(CacheUnavailableError):
        await store.release_reply_lease(conversation, "a")


async def test_a_failed_fallback_release_is_not_raised(
    store: LeaseFallbackSessionStore, primary: SwitchableStore, fallback: FakeLeases
) -> None:
    conversation = new_id()
    primary.down = True
    assert await store.acquire_reply_lease(conversation, "a", ttl_s=TTL)
    fallback.fail_release = True

    await store.release_reply_lease(conversation, "a")

    assert fallback.held == {}


async def test_state_goes_to_the_primary_and_its_failures_reach_the_caller(
    store: LeaseFallbackSessionStore, primary: SwitchableStore
) -> None:
    assert await store.load(new_id()) is None
    primary.down = True
    with pytest.raises(CacheUnavailableError):
        await store.load(new_id())
