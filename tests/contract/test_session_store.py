"""The session store contract (hot state and the reply lease), checked against Valkey and the in-memory fake."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from valkey.asyncio import Valkey

from support.adapters.memory.sessions import InMemorySessionStore
from support.adapters.valkey.sessions import ValkeySessionStore
from support.domain.conversations import (
    AnswerStatus,
    AttachmentInfo,
    Citation,
    Conversation,
    ConversationStatus,
    Feedback,
    HandoffAction,
    HandoffDecision,
    Message,
    MessageRole,
    ReasonCode,
    TokenUsage,
)
from support.domain.ids import new_id
from support.ports.conversations import SessionState, SessionStore

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def memory_sessions() -> SessionStore:
    return InMemorySessionStore()


@pytest.fixture
def valkey_sessions(valkey: Valkey) -> SessionStore:
    return ValkeySessionStore(valkey, "test:")


@pytest.fixture(params=["memory", pytest.param("valkey", marks=pytest.mark.valkey)])
def sessions(request: pytest.FixtureRequest) -> SessionStore:
    store: SessionStore = request.getfixturevalue(f"{request.param}_sessions")
    return store


def make_state() -> SessionState:
    """A state using every kind of field the codec must carry: UUIDs, aware datetimes, enums, tuples, mappings."""
    conversation = Conversation(
        id=new_id(),
        customer_id=new_id(),
        status=ConversationStatus.HUMAN,
        metadata={"plan": "pro", "locale": "de"},
        created_at=NOW,
        updated_at=NOW + timedelta(minutes=1),
        last_activity_at=NOW.astimezone(timezone(timedelta(hours=2))),
        reopened_count=2,
        closed_at=None,
        feedback=Feedback(rating=4, comment="quick", submitted_at=NOW),
    )
    question = Message(new_id(), conversation.id, MessageRole.CUSTOMER, "Where is my parcel? 📦", NOW)
    answer = Message(
        id=new_id(),
        conversation_id=conversation.id,
        role=MessageRole.ASSISTANT,
        content="It ships tomorrow [1].",
        created_at=NOW + timedelta(seconds=2),
        reply_to=(question.id,),
        citations=(Citation(new_id(), 3, new_id(), "Shipping", None, "ships within a day"),),
        answer_status=AnswerStatus.ANSWERED,
        decision=HandoffDecision(HandoffAction.OFFER_HUMAN, ReasonCode.FRUSTRATION, "twice asked", "rule-7"),
        usage=TokenUsage(100, 20, 5, 1),
        ttft_ms=12.5,
        total_ms=80.25,
        interrupted=True,
        author="assistant",
        idempotency_key="key-1",
        attachments=(AttachmentInfo(new_id(), "label.pdf", "application/pdf", 1234, "ab" * 32),),
        metadata={"model": "offline"},
    )
    return SessionState(conversation=conversation, recent=(question, answer))


async def test_load_of_unknown_conversation_is_none(sessions: SessionStore) -> None:
    assert await sessions.load(new_id()) is None


async def test_saved_state_loads_equal(sessions: SessionStore) -> None:
    state = make_state()
    await sessions.save(state, ttl_s=60)
    loaded = await sessions.load(state.conversation.id)
    assert loaded == state
    assert loaded is not None
    assert loaded.recent[1].citations[0].url is None
    assert loaded.conversation.status is ConversationStatus.HUMAN


async def test_save_replaces_and_states_are_per_conversation(sessions: SessionStore) -> None:
    first, other = make_state(), make_state()
    await sessions.save(first, ttl_s=60)
    await sessions.save(other, ttl_s=60)
    changed = replace(first, recent=first.recent[:1])
    await sessions.save(changed, ttl_s=60)
    assert await sessions.load(first.conversation.id) == changed
    assert await sessions.load(other.conversation.id) == other


async def test_drop_forgets_the_state(sessions: SessionStore) -> None:
    state = make_state()
    await sessions.save(state, ttl_s=60)
    await sessions.drop(state.conversation.id)
    assert await sessions.load(state.conversation.id) is None
    await sessions.drop(state.conversation.id)  # dropping again is harmless


async def test_state_expires_unless_saved_again(sessions: SessionStore) -> None:
    kept, expiring = make_state(), make_state()
    await sessions.save(kept, ttl_s=0.6)
    await sessions.save(expiring, ttl_s=0.2)
    await asyncio.sleep(0.35)
    assert await sessions.load(expiring.conversation.id) is None
    await sessions.save(kept, ttl_s=0.6)  # a save restarts the clock
    await asyncio.sleep(0.35)
    assert await sessions.load(kept.conversation.id) == kept


async def test_lease_is_exclusive_until_released_by_its_holder(sessions: SessionStore) -> None:
    conversation_id = new_id()
    assert await sessions.acquire_reply_lease(conversation_id, "a", ttl_s=30)
    assert not await sessions.acquire_reply_lease(conversation_id, "b", ttl_s=30)
    assert await sessions.acquire_reply_lease(conversation_id, "a", ttl_s=30)  # its holder may take it again
    await sessions.release_reply_lease(conversation_id, "b")  # not the holder: nothing happens
    assert not await sessions.acquire_reply_lease(conversation_id, "b", ttl_s=30)
    await sessions.release_reply_lease(conversation_id, "a")
    assert await sessions.acquire_reply_lease(conversation_id, "b", ttl_s=30)
    assert not await sessions.acquire_reply_lease(conversation_id, "a", ttl_s=30)


async def test_leases_are_per_conversation_and_apart_from_state(sessions: SessionStore) -> None:
    state = make_state()
    await sessions.save(state, ttl_s=60)
    assert await sessions.acquire_reply_lease(state.conversation.id, "a", ttl_s=30)
    assert await sessions.acquire_reply_lease(new_id(), "b", ttl_s=30)
    await sessions.drop(state.conversation.id)
    assert not await sessions.acquire_reply_lease(state.conversation.id, "b", ttl_s=30)
    await sessions.release_reply_lease(state.conversation.id, "a")
    assert await sessions.load(state.conversation.id) is None


async def test_lease_expires_when_not_extended(sessions: SessionStore) -> None:
    conversation_id = new_id()
    assert await sessions.acquire_reply_lease(conversation_id, "a", ttl_s=0.2)
    await asyncio.sleep(0.3)
    assert not await sessions.extend_reply_lease(conversation_id, "a", ttl_s=30)
    assert await sessions.acquire_reply_lease(conversation_id, "b", ttl_s=30)
    assert not await sessions.extend_reply_lease(conversation_id, "a", ttl_s=30)


async def test_only_the_holder_extends_the_lease(sessions: SessionStore) -> None:
    conversation_id = new_id()
    assert not await sessions.extend_reply_lease(conversation_id, "a", ttl_s=30)  # nobody holds it
    assert await sessions.acquire_reply_lease(conversation_id, "a", ttl_s=0.4)
    assert not await sessions.extend_reply_lease(conversation_id, "b", ttl_s=30)
    await asyncio.sleep(0.25)
    assert await sessions.extend_reply_lease(conversation_id, "a", ttl_s=0.4)
    await asyncio.sleep(0.25)  # past the first expiry, within the extended one
    assert not await sessions.acquire_reply_lease(conversation_id, "b", ttl_s=30)
    await sessions.release_reply_lease(conversation_id, "a")
    assert not await sessions.extend_reply_lease(conversation_id, "a", ttl_s=30)


@pytest.mark.valkey
async def test_valkey_state_written_by_another_version_is_a_miss(valkey: Valkey) -> None:
    store = ValkeySessionStore(valkey, "test:")
    conversation_id = new_id()
    await valkey.set(f"test:session:{conversation_id}", b'{"conversation": {"id": 1}}')
    assert await store.load(conversation_id) is None
