"""Customer memory, conversation summaries and customer records: one contract, PostgreSQL and the fakes.

Also the hot-state eraser against a real Valkey: the keys the session store and the event bus write are gone, and
once the records are, a tombstone keeps the event bus from writing the feed again.
"""

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from valkey.asyncio import Valkey

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.conversations import InMemoryConversationRepository
from support.adapters.memory.customer_memory import (
    InMemoryCustomerMemory,
    InMemoryCustomerRecords,
    InMemoryHotStateEraser,
    InMemorySummaryStore,
)
from support.adapters.memory.events import InMemoryEventBus
from support.adapters.memory.sessions import InMemorySessionStore
from support.adapters.memory.system import InMemoryUnitOfWork
from support.adapters.postgres.conversations import PostgresConversationRepository
from support.adapters.postgres.memory import PostgresCustomerMemory, PostgresCustomerRecords, PostgresSummaryStore
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.system import SystemClock
from support.adapters.valkey.erasure import ValkeyHotStateEraser, conversation_keys
from support.adapters.valkey.events import ValkeyEventBus, feed_tombstone
from support.adapters.valkey.rate_limits import ValkeyRateLimiter
from support.adapters.valkey.sessions import ValkeySessionStore
from support.application.memory import MemoryPolicy, RememberFacts
from support.domain.conversations import Conversation, ConversationStatus, Message, MessageRole
from support.domain.errors import InvalidInputError
from support.domain.feed import HandoffChanged, ReplyDelta
from support.domain.ids import new_id
from support.domain.limits import RatePolicy, conversation_partition
from support.domain.memory import ConversationSummary, Fact, FactOrigin, kind_of_key
from support.ports.conversations import ConversationRepository, FeedErasedError, SessionState
from support.ports.customers import CustomerRecords
from support.ports.memory import CustomerMemory, SummaryStore
from support.ports.system import UnitOfWork

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DIMENSION = 384


@dataclass
class Backend:
    conversations: ConversationRepository
    memory: CustomerMemory
    summaries: SummaryStore
    records: CustomerRecords
    uow: UnitOfWork


@pytest.fixture
async def postgres_backend(engine: AsyncEngine) -> AsyncIterator[Backend]:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield Backend(
            PostgresConversationRepository(session),
            PostgresCustomerMemory(session),
            PostgresSummaryStore(session),
            PostgresCustomerRecords(session),
            SqlAlchemyUnitOfWork(session),
        )


@pytest.fixture
def memory_backend() -> Backend:
    conversations, memory, summaries = (
        InMemoryConversationRepository(),
        InMemoryCustomerMemory(),
        InMemorySummaryStore(),
    )
    return Backend(
        conversations,
        memory,
        summaries,
        InMemoryCustomerRecords(conversations, memory, summaries),
        InMemoryUnitOfWork(),
    )


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


def vector(*weights: float) -> list[float]:
    """A unit vector whose first components are ``weights`` (normalised)."""
    norm = math.sqrt(sum(weight * weight for weight in weights))
    return [weight / norm for weight in weights] + [0.0] * (DIMENSION - len(weights))


async def customer(backend: Backend, external_id: str = "c-1") -> UUID:
    created = await backend.conversations.get_or_create_customer(external_id, name="Ada", email=None, now=NOW)
    await backend.uow.commit()
    return created.id


def fact(
    customer_id: UUID,
    key: str = "order_number",
    value: str = "NW-1",
    *,
    at: datetime = NOW,
    days: int = 90,
    confidence: float = 0.9,
) -> Fact:
    kind = kind_of_key(key)
    assert kind is not None
    return Fact(
        id=new_id(),
        customer_id=customer_id,
        kind=kind,
        key=key,
        value=value,
        confidence=confidence,
        origin=FactOrigin.PATTERN,
        source_message_id=new_id(),
        created_at=at,
        expires_at=at + timedelta(days=days),
    )


async def conversation(backend: Backend, customer_id: UUID, *texts: str, at: datetime = NOW) -> Conversation:
    item = Conversation(new_id(), customer_id, ConversationStatus.BOT, {}, at, at, at)
    await backend.conversations.add(item)
    for offset, text in enumerate(texts):
        created = at + timedelta(seconds=offset)
        await backend.conversations.add_message(Message(new_id(), item.id, MessageRole.CUSTOMER, text, created))
    await backend.uow.commit()
    return item


# --- facts ----------------------------------------------------------------------------------------------------


async def test_a_new_value_supersedes_the_old_one_which_stays_for_audit(backend: Backend) -> None:
    owner = await customer(backend)
    old = fact(owner, value="NW-1")
    plan = fact(owner, key="plan", value="Pro", at=NOW + timedelta(minutes=1))
    new = fact(owner, value="NW-2", at=NOW + timedelta(hours=1))

    await backend.memory.remember(old, vector(1, 0))
    await backend.memory.remember(plan, vector(0, 1))
    await backend.memory.remember(new, vector(1, 0))
    await backend.uow.commit()

    assert await backend.memory.current(owner, "order_number") == new
    listed = (await backend.memory.list_facts(owner, limit=10, cursor=None)).items
    assert [item.id for item in listed] == [new.id, plan.id, old.id]
    assert listed[2] == replace(old, superseded_by=new.id)
    recalled = await backend.memory.recall(owner, now=NOW, embedding=vector(1, 0), limit=10)
    assert [item.fact.id for item in recalled] == [new.id, plan.id]
    assert recalled[0].fact == new


async def test_recall_ranks_by_similarity_and_skips_expired_facts_and_other_customers(backend: Backend) -> None:
    owner = await customer(backend)
    stranger = await customer(backend, "c-2")
    close = fact(owner, key="product", value="ErgoDesk Pro")
    far = fact(owner, key="plan", value="Team")
    expired = fact(owner, key="ticket_number", value="T-9", at=NOW - timedelta(days=61), days=60)
    theirs = fact(stranger, key="product", value="Other desk")
    for item, embedding in (
        (close, vector(1, 0)),
        (far, vector(0, 1)),
        (expired, vector(1, 0)),
        (theirs, vector(1, 0)),
    ):
        await backend.memory.remember(item, embedding)
    await backend.uow.commit()

    recalled = await backend.memory.recall(owner, now=NOW, embedding=vector(3, 1), limit=10)
    limited = await backend.memory.recall(owner, now=NOW, embedding=vector(0, 1), limit=1)
    unranked = await backend.memory.recall(owner, now=NOW, embedding=None, limit=10)

    assert [item.fact.id for item in recalled] == [close.id, far.id]
    assert recalled[0].similarity == pytest.approx(3 / math.sqrt(10), abs=1e-5)
    assert recalled[1].similarity == pytest.approx(1 / math.sqrt(10), abs=1e-5)
    assert [item.fact.id for item in limited] == [far.id]
    assert {item.fact.id for item in unranked} == {close.id, far.id}
    assert all(item.similarity == 0.0 for item in unranked)


async def test_refresh_extends_a_repeated_fact(backend: Backend) -> None:
    owner = await customer(backend)
    stated = fact(owner, key="phone", value="+31 6 1234 5678", at=NOW - timedelta(days=700), days=730, confidence=0.7)
    await backend.memory.remember(stated, vector(1))
    await backend.uow.commit()

    later = NOW + timedelta(days=730)
    await backend.memory.refresh(stated.id, expires_at=later, confidence=0.9)
    await backend.memory.refresh(stated.id, expires_at=later, confidence=0.5)
    await backend.uow.commit()

    assert await backend.memory.get(owner, stated.id) == replace(stated, expires_at=later, confidence=0.9)
    recalled = await backend.memory.recall(owner, now=NOW + timedelta(days=100), embedding=None, limit=5)
    assert [item.fact.id for item in recalled] == [stated.id]


async def test_facts_are_listed_newest_first_in_pages(backend: Backend) -> None:
    owner = await customer(backend)
    stored = [
        fact(owner, key=f"note:topic_{n}", value=f"note {n}", at=NOW + timedelta(minutes=n % 3)) for n in range(5)
    ]
    for item in stored:
        await backend.memory.remember(item, vector(1))
    await backend.uow.commit()

    first = await backend.memory.list_facts(owner, limit=2, cursor=None)
    second = await backend.memory.list_facts(owner, limit=2, cursor=first.next_cursor)
    third = await backend.memory.list_facts(owner, limit=2, cursor=second.next_cursor)

    newest_first = sorted(stored, key=lambda item: (item.created_at, item.id), reverse=True)
    assert [item.id for item in first.items + second.items + third.items] == [item.id for item in newest_first]
    assert third.next_cursor is None
    with pytest.raises(InvalidInputError):
        await backend.memory.list_facts(owner, limit=2, cursor="not-a-cursor")


async def test_forgetting_a_fact_never_revives_what_it_superseded(backend: Backend) -> None:
    owner = await customer(backend)
    stranger = await customer(backend, "c-2")
    old, new = fact(owner, value="NW-1"), fact(owner, value="NW-2", at=NOW + timedelta(minutes=1))
    await backend.memory.remember(old, vector(1))
    await backend.memory.remember(new, vector(1))
    await backend.uow.commit()

    assert not await backend.memory.forget(stranger, new.id)
    assert await backend.memory.forget(owner, new.id)
    await backend.uow.commit()

    assert not await backend.memory.forget(owner, new.id)
    assert await backend.memory.get(owner, new.id) is None
    assert await backend.memory.get(stranger, old.id) is None
    assert await backend.memory.current(owner, "order_number") is None
    assert await backend.memory.recall(owner, now=NOW, embedding=vector(1), limit=5) == []
    counts = await backend.memory.count(owner, now=NOW)
    assert (counts.current, counts.total) == (0, 1)


async def test_forgetting_a_key_deletes_its_current_and_superseded_values_only(backend: Backend) -> None:
    owner = await customer(backend)
    stranger = await customer(backend, "c-2")
    for value, minutes in (("+1 415 555 0100", 0), ("+1 415 555 0199", 1)):
        await backend.memory.remember(fact(owner, "phone", value, at=NOW + timedelta(minutes=minutes)), vector(1))
    kept = fact(owner, "email", "ada@example.com")
    await backend.memory.remember(kept, vector(1))
    await backend.memory.remember(fact(stranger, "phone", "+1 415 555 0100"), vector(1))
    await backend.uow.commit()

    assert await backend.memory.forget_key(owner, "phone") == 2
    await backend.uow.commit()

    assert await backend.memory.current(owner, "phone") is None
    assert [item.key for item in (await backend.memory.list_facts(owner, limit=10, cursor=None)).items] == ["email"]
    assert await backend.memory.current(stranger, "phone") is not None
    assert await backend.memory.forget_key(owner, "phone") == 0


async def test_counts_and_forgetting_a_customer(backend: Backend) -> None:
    owner = await customer(backend)
    stranger = await customer(backend, "c-2")
    await backend.memory.remember(fact(owner, value="NW-1"), vector(1))
    await backend.memory.remember(fact(owner, value="NW-2"), vector(1))
    await backend.memory.remember(
        fact(owner, key="plan", value="Pro", at=NOW - timedelta(days=400), days=365), vector(1)
    )
    await backend.memory.remember(fact(stranger, key="plan", value="Team"), vector(1))
    await backend.uow.commit()

    counts = await backend.memory.count(owner, now=NOW)
    assert (counts.current, counts.total) == (1, 3)
    assert await backend.memory.forget_customer(owner) == 3
    await backend.uow.commit()
    assert (await backend.memory.count(owner, now=NOW)).total == 0
    assert (await backend.memory.count(stranger, now=NOW)).total == 1


async def stored_customer(factory: async_sessionmaker[AsyncSession]) -> UUID:
    """A customer in PostgreSQL, committed, for tests that open several sessions of their own."""
    async with factory() as session:
        created = await PostgresConversationRepository(session).get_or_create_customer(
            "c", name=None, email=None, now=NOW
        )
        await session.commit()
        return created.id


@pytest.mark.postgres
async def test_concurrent_writers_of_one_key_leave_one_current_fact(engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    owner = await stored_customer(factory)

    async def write(value: str) -> Fact:
        async with factory() as session:
            item = fact(owner, value=value)
            await PostgresCustomerMemory(session).remember(item, vector(1))
            await asyncio.sleep(0.01)  # hold the transaction open while the others wait
            await session.commit()
            return item

    written = await asyncio.gather(*(write(f"NW-{n}") for n in range(4)))

    async with factory() as session:
        memory = PostgresCustomerMemory(session)
        listed = (await memory.list_facts(owner, limit=10, cursor=None)).items
        current = await memory.current(owner, "order_number")
    assert len(listed) == 4
    assert [item for item in listed if item.superseded_by is None] == [current]
    assert current is not None
    assert current.id in {item.id for item in written}


@pytest.mark.postgres
async def test_a_read_for_update_waits_for_the_writer_of_the_key_and_sees_its_fact(engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    owner = await stored_customer(factory)
    written = fact(owner, value="NW-7")
    locked = asyncio.Event()

    async def second_reader() -> Fact | None:
        await locked.wait()
        async with factory() as session:
            return await PostgresCustomerMemory(session).current_for_update(owner, "order_number")

    async with factory() as first:
        memory = PostgresCustomerMemory(first)
        assert await memory.current_for_update(owner, "order_number") is None
        reader = asyncio.create_task(second_reader())
        locked.set()
        await asyncio.sleep(0.05)  # the second reader is now waiting for the key's lock
        assert not reader.done()
        await memory.remember(written, vector(1))
        await first.commit()
    assert await reader == written


@pytest.mark.postgres
async def test_concurrent_turns_of_one_customer_keep_the_newest_statement_and_store_a_repeat_once(
    engine: AsyncEngine,
) -> None:
    """Six turns at once: the value stated last stays current whatever commits last; one value is stored once."""
    factory = async_sessionmaker(engine, expire_on_commit=False)
    owner = await stored_customer(factory)

    async def say(text: str, at: datetime) -> None:
        async with factory() as session:
            uow = SqlAlchemyUnitOfWork(session)
            remember = RememberFacts(
                PostgresCustomerMemory(session), HashingEmbedder(DIMENSION), uow, SystemClock(), MemoryPolicy()
            )
            message = Message(new_id(), new_id(), MessageRole.CUSTOMER, text, created_at=at)
            await remember.execute(owner, message)

    # Stated in this order, gathered in reverse: the last one to commit is the oldest statement.
    emails = [(f"My email is e{n}@example.com", NOW + timedelta(seconds=n)) for n in range(6)]
    await asyncio.gather(*(say(text, at) for text, at in reversed(emails)))
    phones = [("My phone number is +1 415 555 0100", NOW + timedelta(seconds=10 + n)) for n in range(6)]
    await asyncio.gather(*(say(text, at) for text, at in phones))

    async with factory() as session:
        memory = PostgresCustomerMemory(session)
        listed = (await memory.list_facts(owner, limit=50, cursor=None)).items
        email = await memory.current(owner, "email")
    assert email is not None
    assert email.value == "e5@example.com"
    assert [item.value for item in listed if item.key == "phone"] == ["+1 415 555 0100"]


# --- summaries ------------------------------------------------------------------------------------------------


def summary(conversation_id: UUID, *points: str) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=conversation_id,
        points=points,
        mentions=("NW-48213",),
        through_message_id=new_id(),
        through_at=NOW,
        folded_messages=len(points),
        updated_at=NOW,
    )


async def test_summaries_are_replaced_read_back_and_deleted(backend: Backend) -> None:
    owner = await customer(backend)
    first = await conversation(backend, owner)
    second = await conversation(backend, owner)
    older = summary(first.id, "Customer: where is NW-48213?")
    newer = summary(first.id, "Customer: where is NW-48213?", "Assistant: it ships Monday.")

    await backend.summaries.save(older)
    await backend.summaries.save(newer)
    await backend.summaries.save(summary(second.id, "Customer: hi"))
    await backend.uow.commit()

    assert await backend.summaries.get(first.id) == newer
    assert await backend.summaries.get(new_id()) is None
    assert {item.conversation_id for item in await backend.summaries.for_conversations([first.id, second.id])} == {
        first.id,
        second.id,
    }
    assert await backend.summaries.for_conversations([]) == []
    assert await backend.summaries.delete([first.id]) == 1
    await backend.uow.commit()
    assert await backend.summaries.get(first.id) is None
    assert await backend.summaries.get(second.id) is not None


# --- customer records -----------------------------------------------------------------------------------------


async def test_counts_and_conversations_of_a_customer(backend: Backend) -> None:
    owner = await customer(backend)
    stranger = await customer(backend, "c-2")
    first = await conversation(backend, owner, "hello", "order NW-1?", at=NOW)
    second = await conversation(backend, owner, "again", at=NOW + timedelta(hours=1))
    await conversation(backend, stranger, "mine")

    counts = await backend.records.counts(owner)

    assert (counts.conversations, counts.messages) == (2, 3)
    assert await backend.records.conversation_ids(owner) == [first.id, second.id]
    assert (await backend.records.counts(new_id())).conversations == 0


async def test_deleting_a_customer_takes_everything_that_hangs_off_them(backend: Backend) -> None:
    owner = await customer(backend)
    stranger = await customer(backend, "c-2")
    mine = await conversation(backend, owner, "my order NW-1 is late")
    theirs = await conversation(backend, stranger, "hello")
    await backend.memory.remember(fact(owner), vector(1))
    await backend.memory.remember(fact(stranger), vector(1))
    await backend.summaries.save(summary(mine.id, "Customer: late"))
    await backend.summaries.save(summary(theirs.id, "Customer: hello"))
    await backend.uow.commit()

    assert await backend.records.delete(owner)
    await backend.uow.commit()

    assert not await backend.records.delete(owner)
    assert await backend.conversations.get_customer(owner) is None
    assert await backend.conversations.get(mine.id) is None
    assert (await backend.conversations.list_messages(mine.id, limit=10, cursor=None)).items == []
    assert (await backend.memory.count(owner, now=NOW)).total == 0
    assert await backend.summaries.get(mine.id) is None
    # The other customer keeps everything.
    assert await backend.conversations.get(theirs.id) is not None
    assert (await backend.memory.count(stranger, now=NOW)).total == 1
    assert await backend.summaries.get(theirs.id) is not None
    assert (await backend.records.counts(stranger)).messages == 1


# --- hot state ------------------------------------------------------------------------------------------------


def session_state(conversation_id: UUID) -> SessionState:
    item = Conversation(conversation_id, new_id(), ConversationStatus.BOT, {}, NOW, NOW, NOW)
    return SessionState(item, (Message(new_id(), conversation_id, MessageRole.CUSTOMER, "my order NW-1", NOW),))


async def keys_of(valkey: Valkey, conversation_id: UUID) -> list[bytes]:
    return [key async for key in valkey.scan_iter(match=f"*{conversation_id}*")]


@pytest.mark.valkey
async def test_the_valkey_eraser_removes_session_state_lease_and_feed(valkey: Valkey) -> None:
    sessions = ValkeySessionStore(valkey, "test:")
    bus = ValkeyEventBus(valkey, "test:", retention=100, ttl_s=60)
    eraser = ValkeyHotStateEraser(valkey, "test:")
    limiter = ValkeyRateLimiter(valkey, "test:", SystemClock())
    owner = new_id()
    erased, kept = new_id(), new_id()
    policy = RatePolicy("conversation", 10, 60)
    try:
        for conversation_id in (erased, kept):
            await sessions.save(session_state(conversation_id), ttl_s=60)
            await sessions.acquire_reply_lease(conversation_id, "holder", ttl_s=60)
            # A takeover too: the bus then also keeps the id of the newest one.
            takeover = HandoffChanged(ConversationStatus.HUMAN, None)
            await bus.publish(conversation_id, [ReplyDelta("your order NW-1 ships Monday"), takeover])
            # Messages sent with API keys, and with the owner's token.
            await limiter.acquire(conversation_partition(conversation_id), policy)
            await limiter.acquire(conversation_partition(conversation_id, owner), policy)
        # Every key the session store, the bus and the rate limiter wrote is one the eraser knows about.
        assert sorted(await keys_of(valkey, erased)) == sorted(
            key.encode() for key in conversation_keys("test:", owner, erased)
        )

        await eraser.erase(owner, [erased])
        await eraser.erase(owner, [])

        assert await keys_of(valkey, erased) == []
        assert await sessions.load(erased) is None
        assert len(await keys_of(valkey, kept)) == len(conversation_keys("test:", owner, kept))
        assert await sessions.load(kept) is not None
    finally:
        await bus.close()


async def test_the_in_memory_eraser_drops_session_state() -> None:
    sessions = InMemorySessionStore()
    eraser = InMemoryHotStateEraser(sessions)
    erased, kept = new_id(), new_id()
    for conversation_id in (erased, kept):
        await sessions.save(session_state(conversation_id), ttl_s=60)

    await eraser.erase(new_id(), [erased])

    assert await sessions.load(erased) is None
    assert await sessions.load(kept) is not None
    assert eraser.erased == [erased]


@pytest.mark.valkey
async def test_the_valkey_eraser_leaves_a_bare_tombstone_that_refuses_publishes_once_the_records_are_gone(
    valkey: Valkey,
) -> None:
    sessions = ValkeySessionStore(valkey, "test:")
    bus = ValkeyEventBus(valkey, "test:", retention=100, ttl_s=86_400)
    eraser = ValkeyHotStateEraser(valkey, "test:", tombstone_ttl_s=120)
    owner, erased, kept = new_id(), new_id(), new_id()
    tombstone = feed_tombstone("test:", erased).encode()
    try:
        for conversation_id in (erased, kept):
            await sessions.save(session_state(conversation_id), ttl_s=60)
            await bus.publish(conversation_id, [ReplyDelta("your order NW-1 ships Monday")])

        await eraser.erase(owner, [erased], gone=True)

        # What is left holds nothing (the conversation's id names it) and expires by itself.
        assert await keys_of(valkey, erased) == [tombstone]
        assert await valkey.get(tombstone) == b""
        assert 0 < await valkey.ttl(tombstone) <= 120
        # A reply that was still being written publishes nothing back, guarded or not.
        for owned_since in (None, 0, 1):
            with pytest.raises(FeedErasedError):
                await bus.publish(erased, [ReplyDelta("NW-1, again")], owned_since=owned_since)
        # A retried erasure finds it so.
        await eraser.erase(owner, [erased], gone=True)
        assert await keys_of(valkey, erased) == [tombstone]
        assert len(await keys_of(valkey, kept)) == 3  # session state, feed counter and log
        assert [event.id for event in await bus.publish(kept, [ReplyDelta("still here")])] == [2]
    finally:
        await bus.close()


async def test_the_in_memory_eraser_empties_the_feed_and_refuses_publishes_once_the_records_are_gone() -> None:
    bus = InMemoryEventBus(retention=10)
    eraser = InMemoryHotStateEraser(bus=bus)
    early, erased = new_id(), new_id()
    for conversation_id in (early, erased):
        await bus.publish(conversation_id, [ReplyDelta("your order NW-1 ships Monday")])

    await eraser.erase(new_id(), [early])  # the first pass, before the records are deleted
    await eraser.erase(new_id(), [erased], gone=True)

    assert await bus.head(early) == await bus.head(erased) == 0
    assert [event.id for event in await bus.publish(early, [ReplyDelta("begun again")])] == [1]
    with pytest.raises(FeedErasedError):
        await bus.publish(erased, [ReplyDelta("NW-1, again")])
    assert eraser.erased == [early, erased]
