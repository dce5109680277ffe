"""Customer use cases on in-memory adapters: profile, memories, export, and erasure (with Valkey failing)."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.conversations import InMemoryConversationRepository
from support.adapters.memory.customer_memory import (
    InMemoryCustomerMemory,
    InMemoryCustomerRecords,
    InMemoryHotStateEraser,
    InMemorySummaryStore,
)
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.customers import (
    EraseCustomer,
    ExportCustomer,
    ForgetMemory,
    GetCustomerProfile,
    ListMemories,
)
from support.application.memory import FoldConversationHistory, MemoryPolicy, RememberFacts
from support.domain.conversations import Conversation, ConversationStatus, Message, MessageRole
from support.domain.ids import new_id
from support.domain.memory import CustomerNotFoundError, MemoryNotFoundError
from support.ports.errors import CacheUnavailableError

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FlakyEraser(InMemoryHotStateEraser):
    """Fails the calls listed in ``failing`` (0 = the first call)."""

    def __init__(self, failing: Sequence[int]) -> None:
        super().__init__()
        self.calls = 0
        self.failing = set(failing)

    async def erase(self, customer_id: UUID, conversation_ids: Sequence[UUID], *, gone: bool = False) -> None:
        call, self.calls = self.calls, self.calls + 1
        if call in self.failing:
            raise CacheUnavailableError
        await super().erase(customer_id, conversation_ids, gone=gone)


class World:
    def __init__(self, eraser: InMemoryHotStateEraser | None = None) -> None:
        self.conversations = InMemoryConversationRepository()
        self.memory = InMemoryCustomerMemory()
        self.summaries = InMemorySummaryStore()
        self.records = InMemoryCustomerRecords(self.conversations, self.memory, self.summaries)
        self.eraser = eraser or InMemoryHotStateEraser()
        self.uow = InMemoryUnitOfWork()
        self.clock = FixedClock(START)
        self.policy = MemoryPolicy()

    async def customer_with_history(self, external_id: str = "user-42") -> tuple[UUID, list[Conversation]]:
        customer = await self.conversations.get_or_create_customer(
            external_id, name="Ada Lovelace", email="ada@example.com", now=START
        )
        made: list[Conversation] = []
        remember = RememberFacts(self.memory, HashingEmbedder(384), self.uow, self.clock, self.policy)
        fold = FoldConversationHistory(self.summaries, self.uow, self.clock, self.policy)
        for number, text in enumerate(["My order number is NW-48213.", "I'm on the Pro plan, order NW-50000 now."]):
            at = START + timedelta(days=number)
            conversation = Conversation(new_id(), customer.id, ConversationStatus.BOT, {"n": str(number)}, at, at, at)
            await self.conversations.add(conversation)
            message = Message(new_id(), conversation.id, MessageRole.CUSTOMER, text, at)
            reply = Message(new_id(), conversation.id, MessageRole.ASSISTANT, "Thanks!", at + timedelta(seconds=1))
            await self.conversations.add_message(message)
            await self.conversations.add_message(reply)
            await remember.execute(customer.id, message)
            await fold.execute(conversation.id, [message, reply])
            made.append(conversation)
        return customer.id, made

    def erase(self) -> EraseCustomer:
        return EraseCustomer(self.conversations, self.records, self.memory, self.summaries, self.eraser, self.uow)


async def test_the_profile_counts_what_is_held() -> None:
    world = World()
    customer_id, _ = await world.customer_with_history()
    world.clock.advance(timedelta(days=1))

    profile = await GetCustomerProfile(world.conversations, world.records, world.memory, world.clock).execute(
        customer_id
    )

    assert profile.customer.email == "ada@example.com"
    assert (profile.counts.conversations, profile.counts.messages) == (2, 4)
    # NW-48213 was superseded by NW-50000: three facts in all, two current.
    assert (profile.memories.current, profile.memories.total) == (2, 3)
    with pytest.raises(CustomerNotFoundError):
        await GetCustomerProfile(world.conversations, world.records, world.memory, world.clock).execute(new_id())


async def test_memories_are_listed_with_superseded_ones_and_can_be_forgotten() -> None:
    world = World()
    customer_id, _ = await world.customer_with_history()
    listing = await ListMemories(world.conversations, world.memory, world.clock).execute(customer_id)
    forget = ForgetMemory(world.conversations, world.memory, world.uow)
    superseded = next(fact for fact in listing.items if fact.superseded_by is not None)

    await forget.execute(customer_id, superseded.id)

    assert superseded.value == "NW-48213"
    assert len(listing.items) == 3
    remaining = await ListMemories(world.conversations, world.memory, world.clock).execute(customer_id)
    assert superseded.id not in {fact.id for fact in remaining.items}
    with pytest.raises(MemoryNotFoundError):
        await forget.execute(customer_id, superseded.id)
    with pytest.raises(CustomerNotFoundError):
        await forget.execute(new_id(), superseded.id)
    with pytest.raises(CustomerNotFoundError):
        await ListMemories(world.conversations, world.memory, world.clock).execute(new_id())


async def test_the_export_holds_everything() -> None:
    world = World()
    customer_id, conversations = await world.customer_with_history()

    export = await ExportCustomer(
        world.conversations, world.records, world.memory, world.summaries, world.clock
    ).execute(customer_id)

    assert export.customer.external_id == "user-42"
    assert [record.conversation.id for record in export.conversations] == [item.id for item in conversations]
    assert [[message.content for message in record.messages] for record in export.conversations] == [
        ["My order number is NW-48213.", "Thanks!"],
        ["I'm on the Pro plan, order NW-50000 now.", "Thanks!"],
    ]
    assert all(record.summary is not None for record in export.conversations)
    assert {fact.value for fact in export.memories} == {"NW-48213", "NW-50000", "Pro"}
    assert export.exported_at == world.clock.now()


async def test_erasure_removes_the_customer_everywhere_and_leaves_others_alone() -> None:
    world = World()
    customer_id, conversations = await world.customer_with_history()
    other_id, others = await world.customer_with_history("someone-else")

    report = await world.erase().execute(customer_id)

    assert (report.conversations, report.messages, report.memories, report.summaries) == (2, 4, 3, 2)
    assert world.uow.commits > 0
    assert await world.conversations.get_customer(customer_id) is None
    assert [await world.conversations.get(item.id) for item in conversations] == [None, None]
    assert (await world.memory.count(customer_id, now=START)).total == 0
    assert [await world.summaries.get(item.id) for item in conversations] == [None, None]
    # Valkey is erased before the database (so a failure leaves something to retry) and again after it.
    assert world.eraser.erased == [item.id for item in conversations] * 2
    assert (await world.records.counts(other_id)).messages == 4
    assert None not in [await world.summaries.get(item.id) for item in others]
    with pytest.raises(CustomerNotFoundError):
        await world.erase().execute(customer_id)


class PassRecorder(InMemoryHotStateEraser):
    """Records, for each pass, whether it was told the records are gone and how many commits preceded it."""

    def __init__(self) -> None:
        super().__init__()
        self.uow: InMemoryUnitOfWork | None = None
        self.passes: list[tuple[bool, int]] = []

    async def erase(self, customer_id: UUID, conversation_ids: Sequence[UUID], *, gone: bool = False) -> None:
        assert self.uow is not None
        self.passes.append((gone, self.uow.commits))
        await super().erase(customer_id, conversation_ids, gone=gone)


async def test_only_the_pass_after_the_commit_leaves_tombstones() -> None:
    # A tombstone refuses the conversation's feed for good: left by the first pass, a deletion that then failed
    # would keep a live conversation from ever publishing again. Left by the last one, it keeps a reply still being
    # written from recreating the erased feed.
    recorder = PassRecorder()
    world = World(recorder)
    recorder.uow = world.uow
    customer_id, _ = await world.customer_with_history()
    commits = world.uow.commits

    await world.erase().execute(customer_id)

    assert recorder.passes == [(False, commits), (True, commits + 1)]


async def test_erasure_with_valkey_down_deletes_nothing_so_a_retry_can_finish() -> None:
    world = World(FlakyEraser(failing=[0]))
    customer_id, _ = await world.customer_with_history()
    commits = world.uow.commits

    with pytest.raises(CacheUnavailableError):
        await world.erase().execute(customer_id)

    assert world.uow.commits == commits
    assert await world.conversations.get_customer(customer_id) is not None
    assert (await world.memory.count(customer_id, now=START)).total == 3
    report = await world.erase().execute(customer_id)
    assert report.conversations == 2


async def test_erasure_is_not_undone_by_valkey_failing_after_the_commit() -> None:
    world = World(FlakyEraser(failing=[1]))
    customer_id, _ = await world.customer_with_history()

    report = await world.erase().execute(customer_id)

    assert report.conversations == 2
    assert await world.conversations.get_customer(customer_id) is None
