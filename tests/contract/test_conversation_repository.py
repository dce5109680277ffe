"""The conversation repository and attachment store contracts, checked against PostgreSQL and the fakes."""

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from support.adapters.memory.conversations import InMemoryAttachmentStore, InMemoryConversationRepository
from support.adapters.memory.system import InMemoryUnitOfWork
from support.adapters.postgres.conversations import PostgresAttachmentStore, PostgresConversationRepository
from support.adapters.postgres.engine import create_engine
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.config import DatabaseSettings
from support.domain.conversations import (
    AgentRef,
    AnswerStatus,
    AttachmentInfo,
    AttachmentUpload,
    Citation,
    Conversation,
    ConversationStatus,
    HandoffAction,
    HandoffDecision,
    Message,
    MessageRole,
    ReasonCode,
    TokenUsage,
)
from support.domain.errors import InvalidInputError
from support.domain.ids import new_id
from support.ports.conversations import AttachmentStore, ConversationRepository
from support.ports.system import UnitOfWork

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Backend:
    conversations: ConversationRepository
    attachments: AttachmentStore
    uow: UnitOfWork


@pytest.fixture
async def postgres_backend(engine: AsyncEngine) -> AsyncIterator[Backend]:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield Backend(
            PostgresConversationRepository(session), PostgresAttachmentStore(session), SqlAlchemyUnitOfWork(session)
        )


@pytest.fixture
def memory_backend() -> Backend:
    conversations = InMemoryConversationRepository()
    return Backend(conversations, InMemoryAttachmentStore(conversations), InMemoryUnitOfWork())


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


async def new_conversation(backend: Backend, external_id: str = "c-1", *, at: datetime = NOW) -> Conversation:
    customer = await backend.conversations.get_or_create_customer(external_id, name=None, email=None, now=at)
    conversation = Conversation(
        id=new_id(),
        customer_id=customer.id,
        status=ConversationStatus.BOT,
        metadata={"plan": "plus"},
        created_at=at,
        updated_at=at,
        last_activity_at=at,
    )
    await backend.conversations.add(conversation)
    await backend.uow.commit()
    return conversation


def customer_message(conversation: Conversation, text: str, *, key: str | None = None, minutes: int = 0) -> Message:
    return Message(
        id=new_id(),
        conversation_id=conversation.id,
        role=MessageRole.CUSTOMER,
        content=text,
        created_at=NOW + timedelta(minutes=minutes),
        idempotency_key=key,
    )


async def test_customers_are_created_once_per_external_id_and_updated(backend: Backend) -> None:
    first = await backend.conversations.get_or_create_customer("ext-9", name="Ada", email=None, now=NOW)
    again = await backend.conversations.get_or_create_customer("ext-9", name=None, email="ada@example.com", now=NOW)

    assert again.id == first.id
    assert (again.name, again.email) == ("Ada", "ada@example.com")
    assert await backend.conversations.get_customer(first.id) == again
    assert await backend.conversations.find_customer("ext-9") == again
    assert await backend.conversations.find_customer("ext-10") is None
    assert await backend.conversations.find_customer("EXT-9") is None, "external ids are matched exactly"


async def test_conversations_round_trip_and_update(backend: Backend) -> None:
    conversation = await new_conversation(backend)
    changed = replace(conversation, status=ConversationStatus.PENDING_HUMAN, updated_at=NOW + timedelta(minutes=1))

    assert await backend.conversations.get(conversation.id) == conversation
    await backend.conversations.update(changed)
    await backend.uow.commit()

    assert await backend.conversations.get(conversation.id, for_update=True) == changed
    assert await backend.conversations.get(new_id()) is None


async def test_listing_filters_and_pages_by_latest_activity(backend: Backend) -> None:
    made = [await new_conversation(backend, f"c-{n % 2}", at=NOW + timedelta(minutes=n)) for n in range(5)]
    await backend.conversations.update(replace(made[0], status=ConversationStatus.CLOSED))

    first = await backend.conversations.list_conversations(status=None, customer_id=None, limit=2, cursor=None)
    second = await backend.conversations.list_conversations(
        status=None, customer_id=None, limit=2, cursor=first.next_cursor
    )
    third = await backend.conversations.list_conversations(
        status=None, customer_id=None, limit=2, cursor=second.next_cursor
    )
    closed = await backend.conversations.list_conversations(
        status=ConversationStatus.CLOSED, customer_id=None, limit=10, cursor=None
    )
    of_customer = await backend.conversations.list_conversations(
        status=None, customer_id=made[1].customer_id, limit=10, cursor=None
    )

    assert [c.id for c in first.items + second.items + third.items] == [c.id for c in reversed(made)]
    assert third.next_cursor is None
    assert [c.id for c in closed.items] == [made[0].id]
    assert [c.id for c in of_customer.items] == [made[3].id, made[1].id]
    with pytest.raises(InvalidInputError):
        await backend.conversations.list_conversations(status=None, customer_id=None, limit=2, cursor="nonsense")


async def test_messages_keep_every_field_and_their_order(backend: Backend) -> None:
    conversation = await new_conversation(backend)
    question = customer_message(conversation, "How long do refunds take?")
    reply = Message(
        id=new_id(),
        conversation_id=conversation.id,
        role=MessageRole.ASSISTANT,
        content="Refunds take 5 to 10 business days.",
        created_at=NOW + timedelta(seconds=2),
        reply_to=(question.id,),
        citations=(Citation(new_id(), 3, new_id(), "Refunds", "https://help.example.com/refunds", "5 to 10 days"),),
        answer_status=AnswerStatus.ANSWERED,
        decision=HandoffDecision(HandoffAction.ANSWER, None, "top similarity 0.81", "evidence_threshold"),
        usage=TokenUsage(120, 30, 100, 0),
        ttft_ms=4.5,
        total_ms=80.25,
        author="offline-extractive",
    )
    notice = Message(
        id=new_id(),
        conversation_id=conversation.id,
        role=MessageRole.SYSTEM,
        content="An agent will join shortly.",
        created_at=NOW,  # an earlier timestamp does not reorder: insertion order wins
        decision=HandoffDecision(HandoffAction.ESCALATE, ReasonCode.CUSTOMER_REQUEST),
        interrupted=True,
    )
    for message in (question, reply, notice):
        await backend.conversations.add_message(message)
    await backend.uow.commit()

    page = await backend.conversations.list_messages(conversation.id, limit=10, cursor=None)

    assert page.items == [question, reply, notice]
    assert await backend.conversations.recent_messages(conversation.id, 2) == [reply, notice]
    assert await backend.conversations.find_reply(conversation.id, question.id) == reply
    assert await backend.conversations.find_reply(conversation.id, reply.id) is None
    assert await backend.conversations.get_message(conversation.id, reply.id) == reply
    assert await backend.conversations.get_message(new_id(), reply.id) is None


async def test_message_pages_follow_cursors(backend: Backend) -> None:
    conversation = await new_conversation(backend)
    sent = [customer_message(conversation, f"message {n}", minutes=n) for n in range(5)]
    for message in sent:
        await backend.conversations.add_message(message)
    await backend.uow.commit()

    seen: list[UUID] = []
    cursor = None
    for _ in range(5):
        page = await backend.conversations.list_messages(conversation.id, limit=2, cursor=cursor)
        seen += [message.id for message in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == [message.id for message in sent]
    with pytest.raises(InvalidInputError):
        await backend.conversations.list_messages(conversation.id, limit=2, cursor="x")


async def test_a_reused_idempotency_key_returns_the_original_message(backend: Backend) -> None:
    conversation = await new_conversation(backend)
    other = await new_conversation(backend, "c-2")
    original = await backend.conversations.add_message(customer_message(conversation, "first", key="k-1"))
    await backend.uow.commit()

    retried = await backend.conversations.add_message(customer_message(conversation, "first again", key="k-1"))
    elsewhere = await backend.conversations.add_message(customer_message(other, "same key, other chat", key="k-1"))
    await backend.uow.commit()

    assert retried == original
    assert elsewhere.content == "same key, other chat"
    page = await backend.conversations.list_messages(conversation.id, limit=10, cursor=None)
    assert [message.content for message in page.items] == ["first"]
    # Looked up without writing (a refused retry must not store anything).
    assert await backend.conversations.find_by_idempotency_key(conversation.id, "k-1") == original
    assert await backend.conversations.find_by_idempotency_key(conversation.id, "k-2") is None
    assert (await backend.conversations.find_by_idempotency_key(other.id, "k-1")) == elsewhere


async def test_idle_conversations_are_inactive_ones_neither_closed_nor_waiting_for_a_person(backend: Backend) -> None:
    old = await new_conversation(backend, "a", at=NOW - timedelta(days=2))
    closed = await new_conversation(backend, "b", at=NOW - timedelta(days=3))
    await backend.conversations.update(replace(closed, status=ConversationStatus.CLOSED))
    await new_conversation(backend, "c", at=NOW)
    # Waiting for a person is not idleness: the customer was told the answer will be waiting (docs/conversations.md).
    waiting = await new_conversation(backend, "d", at=NOW - timedelta(days=3))
    await backend.conversations.update(replace(waiting, status=ConversationStatus.PENDING_HUMAN))
    claimed = await new_conversation(backend, "e", at=NOW - timedelta(days=4))
    await backend.conversations.update(replace(claimed, status=ConversationStatus.HUMAN))
    await backend.uow.commit()

    idle = await backend.conversations.idle_conversations(inactive_since=NOW - timedelta(days=1), limit=10)
    assert idle == [claimed.id, old.id]


async def test_attachments_are_listed_on_their_message_and_readable(backend: Backend) -> None:
    conversation = await new_conversation(backend)
    message = await backend.conversations.add_message(customer_message(conversation, "see the log"))
    data = b"E04 paper jam at 10:02"
    info = AttachmentInfo(new_id(), "printer.log", "text/plain", len(data), hashlib.sha256(data).hexdigest())
    image = AttachmentInfo(new_id(), "photo.png", "image/png", 4, hashlib.sha256(b"\x89PNG").hexdigest())
    await backend.attachments.add(conversation.id, message.id, AttachmentUpload(info, data, data.decode()))
    await backend.attachments.add(conversation.id, message.id, AttachmentUpload(image, b"\x89PNG", None))
    await backend.uow.commit()

    stored = await backend.conversations.get_message(conversation.id, message.id)
    assert stored is not None
    assert stored.attachments == (info, image)
    assert await backend.attachments.get(conversation.id, info.id) == (info, data)
    assert await backend.attachments.get(new_id(), info.id) is None
    texts = await backend.attachments.texts(conversation.id, limit_chars=6)
    assert [(text.filename, text.text) for text in texts] == [("printer.log", "E04 pa")]


async def test_the_handoff_queue_lists_waiting_and_claimed_oldest_request_first(backend: Backend) -> None:
    decision = HandoffDecision(HandoffAction.ESCALATE, ReasonCode.CUSTOMER_REQUEST, "a person", "customer_request.x")
    made = [await new_conversation(backend, f"q-{n}") for n in range(4)]
    # Requested in the order 2, 0, 1; conversation 3 stays with the bot.
    queued = {
        index: made[index].request_handoff(decision, NOW + timedelta(minutes=minute))
        for minute, index in enumerate((2, 0, 1))
    }
    queued[0] = queued[0].claim(AgentRef(new_id(), "Ana"), NOW + timedelta(minutes=5))
    for conversation in queued.values():
        await backend.conversations.update(conversation)
    await backend.uow.commit()
    both = (ConversationStatus.PENDING_HUMAN, ConversationStatus.HUMAN)

    first = await backend.conversations.handoff_queue(statuses=both, limit=2, cursor=None)
    rest = await backend.conversations.handoff_queue(statuses=both, limit=2, cursor=first.next_cursor)
    waiting = await backend.conversations.handoff_queue(
        statuses=(ConversationStatus.PENDING_HUMAN,), limit=10, cursor=None
    )

    assert [item.id for item in first.items + rest.items] == [made[2].id, made[0].id, made[1].id]
    assert rest.next_cursor is None
    assert first.items[1] == queued[0]  # decision, times and the agent round-trip
    assert [item.id for item in waiting.items] == [made[2].id, made[1].id]
    assert await backend.conversations.count_waiting(requested_before=NOW + timedelta(minutes=2)) == 1
    assert await backend.conversations.count_waiting(requested_before=NOW + timedelta(hours=1)) == 2
    with pytest.raises(InvalidInputError):
        await backend.conversations.handoff_queue(statuses=both, limit=2, cursor="not-a-cursor")


async def test_the_handoff_queue_lists_what_one_agent_has_claimed(backend: Backend) -> None:
    decision = HandoffDecision(HandoffAction.ESCALATE, ReasonCode.CUSTOMER_REQUEST)
    ana, ben, bootstrap = AgentRef(new_id(), "Ana"), AgentRef(new_id(), "Ben"), AgentRef(None, "bootstrap admin")
    owners = (ana, ben, bootstrap, ana, None)
    made = [await new_conversation(backend, f"mine-{n}") for n in range(len(owners))]
    for minute, (conversation, owner) in enumerate(zip(made, owners, strict=True)):
        queued = conversation.request_handoff(decision, NOW + timedelta(minutes=minute))
        await backend.conversations.update(queued if owner is None else queued.claim(owner, NOW + timedelta(hours=1)))
    await backend.uow.commit()
    both = (ConversationStatus.PENDING_HUMAN, ConversationStatus.HUMAN)

    async def claimed_by(agent: AgentRef) -> list[UUID]:
        page = await backend.conversations.handoff_queue(statuses=both, limit=10, cursor=None, claimed_by=agent)
        return [item.id for item in page.items]

    assert await claimed_by(ana) == [made[0].id, made[3].id]
    assert await claimed_by(AgentRef(ana.id, "Ana, renamed")) == [made[0].id, made[3].id]  # the key decides
    assert await claimed_by(ben) == [made[1].id]
    # A key without an id (the bootstrap admin) is known by its name.
    assert await claimed_by(bootstrap) == [made[2].id]
    assert await claimed_by(AgentRef(None, "someone else")) == []
    assert await claimed_by(AgentRef(new_id(), "bootstrap admin")) == []


async def test_a_summary_is_stored_only_for_the_handoff_it_was_written_for(backend: Backend) -> None:
    decision = HandoffDecision(HandoffAction.ESCALATE, ReasonCode.SENSITIVE_TOPIC)
    conversation = (await new_conversation(backend)).request_handoff(decision, NOW)
    await backend.conversations.update(conversation)
    await backend.uow.commit()

    await backend.conversations.save_handoff_summary(
        conversation.id, requested_at=NOW - timedelta(hours=1), summary="an older handoff"
    )
    await backend.conversations.save_handoff_summary(conversation.id, requested_at=NOW, summary="this one")
    await backend.uow.commit()

    stored = await backend.conversations.get(conversation.id)
    assert stored is not None
    assert stored.handoff_summary == "this one"


# PostgreSQL only: transactions and row locks, which the fakes do not model. The turn's statements run on the
# session's driver connection (adapters/postgres/driver.py); these prove they run inside the session's transaction
# even when they are its first statements.


async def test_a_message_rolled_back_with_its_transaction_is_not_kept(
    postgres_backend: Backend, engine: AsyncEngine
) -> None:
    conversation = await new_conversation(postgres_backend)
    # The lock and the insert are the transaction's first statements, as in a send.
    assert await postgres_backend.conversations.get(conversation.id, for_update=True) is not None
    await postgres_backend.conversations.add_message(customer_message(conversation, "refused by the budget"))
    await postgres_backend.uow.rollback()
    async with engine.connect() as connection:
        count = await connection.scalar(
            sa.text("SELECT count(*) FROM messages WHERE conversation_id = :id"), {"id": conversation.id}
        )
    assert count == 0


async def test_a_conversation_locked_for_update_stays_locked_until_the_commit(
    postgres_backend: Backend, engine: AsyncEngine
) -> None:
    conversation = await new_conversation(postgres_backend)
    assert await postgres_backend.conversations.get(conversation.id, for_update=True) is not None
    lock = sa.text("SELECT id FROM conversations WHERE id = :id FOR UPDATE NOWAIT")
    async with engine.connect() as other:
        with pytest.raises(DBAPIError, match="could not obtain lock"):
            await other.execute(lock, {"id": conversation.id})
        await other.rollback()
        await postgres_backend.uow.commit()
        assert (await other.execute(lock, {"id": conversation.id})).scalar_one() == conversation.id


async def test_plain_reads_after_a_write_see_it_inside_the_transaction(postgres_backend: Backend) -> None:
    # Plain reads begin no transaction of their own (a turn's read scopes then cost no BEGIN/ROLLBACK); once a write
    # has begun one, they run inside it and see what it wrote.
    conversation = await new_conversation(postgres_backend)
    message = customer_message(conversation, "not committed yet")
    await postgres_backend.conversations.add_message(message)
    recent = await postgres_backend.conversations.recent_messages(conversation.id, 5)
    assert [item.id for item in recent] == [message.id]
    await postgres_backend.uow.rollback()
    assert await postgres_backend.conversations.recent_messages(conversation.id, 5) == []


@pytest.mark.postgres
async def test_plain_reads_outside_a_transaction_give_their_connection_back(database_url: str) -> None:
    # A scope that has only read holds no connection afterwards, so it can wait for another scope's connection (or
    # a live feed's next event) without starving the pool; once a write has begun a transaction, reads join it.
    engine = create_engine(database_url, DatabaseSettings(pool_size=1, max_overflow=0, pool_timeout_s=1.0))
    pool: Any = engine.pool
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            backend = Backend(
                PostgresConversationRepository(session), PostgresAttachmentStore(session), SqlAlchemyUnitOfWork(session)
            )
            conversation = await new_conversation(backend)
            await backend.uow.commit()
            assert pool.checkedout() == 0

            assert await backend.conversations.get(conversation.id) is not None
            assert await backend.conversations.recent_messages(conversation.id, 5) == []
            assert await backend.attachments.texts(conversation.id, limit_chars=100) == []
            assert await backend.attachments.get(conversation.id, conversation.id) is None
            assert pool.checkedout() == 0

            await backend.conversations.add_message(customer_message(conversation, "in a transaction"))
            assert len(await backend.conversations.recent_messages(conversation.id, 5)) == 1
            assert pool.checkedout() == 1
            await backend.uow.commit()
            assert pool.checkedout() == 0
    finally:
        await engine.dispose()
