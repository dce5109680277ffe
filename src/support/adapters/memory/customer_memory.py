"""In-memory customer memory, summaries, customer records and hot-state eraser: the same contracts, in dicts."""

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from uuid import UUID

from support.adapters.memory.conversations import InMemoryConversationRepository
from support.adapters.memory.events import InMemoryEventBus
from support.adapters.memory.paging import newest_first_page
from support.adapters.memory.sessions import InMemorySessionStore
from support.domain.memory import ConversationSummary, Fact, similarity
from support.domain.paging import creation_position
from support.ports.customers import CustomerCounts
from support.ports.memory import FactCounts, FactPage, ScoredFact


class InMemoryCustomerMemory:
    """Facts and their vectors in insertion order; writes are visible at once (no transactions)."""

    def __init__(self) -> None:
        self.facts: dict[UUID, Fact] = {}
        self.embeddings: dict[UUID, list[float]] = {}

    async def current(self, customer_id: UUID, key: str) -> Fact | None:
        found = [
            fact
            for fact in self.facts.values()
            if fact.customer_id == customer_id and fact.key == key and fact.superseded_by is None
        ]
        return found[-1] if found else None

    async def current_for_update(self, customer_id: UUID, key: str) -> Fact | None:
        # A fake for one writer at a time (unit tests): there is no lock to take; the contract's concurrency tests run
        # against PostgreSQL.
        return await self.current(customer_id, key)

    async def remember(self, fact: Fact, embedding: Sequence[float]) -> None:
        for other in list(self.facts.values()):
            if (
                other.customer_id == fact.customer_id
                and other.key == fact.key
                and other.superseded_by is None
                and other.id != fact.id
            ):
                self.facts[other.id] = replace(other, superseded_by=fact.id)
        self.facts[fact.id] = fact
        self.embeddings[fact.id] = list(embedding)

    async def refresh(self, fact_id: UUID, *, expires_at: datetime | None, confidence: float) -> None:
        fact = self.facts.get(fact_id)
        if fact is not None:
            self.facts[fact_id] = replace(fact, expires_at=expires_at, confidence=max(fact.confidence, confidence))

    async def recall(
        self, customer_id: UUID, *, now: datetime, embedding: Sequence[float] | None, limit: int
    ) -> list[ScoredFact]:
        current = [fact for fact in self.facts.values() if fact.customer_id == customer_id and fact.is_current(now)]
        if embedding is None:
            ordered = sorted(current, key=lambda fact: (fact.created_at, fact.id), reverse=True)
            return [ScoredFact(fact, 0.0) for fact in ordered[:limit]]
        scored = [ScoredFact(fact, similarity(embedding, self.embeddings[fact.id])) for fact in current]
        scored.sort(key=lambda item: (-item.similarity, -item.fact.id.int))
        return scored[:limit]

    async def list_facts(self, customer_id: UUID, *, limit: int, cursor: str | None) -> FactPage:
        owned = (fact for fact in self.facts.values() if fact.customer_id == customer_id)
        page, next_cursor = newest_first_page(owned, creation_position, limit=limit, cursor=cursor)
        return FactPage(items=page, next_cursor=next_cursor)

    async def get(self, customer_id: UUID, fact_id: UUID) -> Fact | None:
        fact = self.facts.get(fact_id)
        return fact if fact is not None and fact.customer_id == customer_id else None

    async def forget(self, customer_id: UUID, fact_id: UUID) -> bool:
        if await self.get(customer_id, fact_id) is None:
            return False
        del self.facts[fact_id]
        self.embeddings.pop(fact_id, None)
        return True

    async def forget_key(self, customer_id: UUID, key: str) -> int:
        owned = [fact.id for fact in self.facts.values() if fact.customer_id == customer_id and fact.key == key]
        for fact_id in owned:
            del self.facts[fact_id]
            self.embeddings.pop(fact_id, None)
        return len(owned)

    async def forget_customer(self, customer_id: UUID) -> int:
        owned = [fact.id for fact in self.facts.values() if fact.customer_id == customer_id]
        for fact_id in owned:
            del self.facts[fact_id]
            self.embeddings.pop(fact_id, None)
        return len(owned)

    async def count(self, customer_id: UUID, *, now: datetime) -> FactCounts:
        owned = [fact for fact in self.facts.values() if fact.customer_id == customer_id]
        return FactCounts(current=sum(fact.is_current(now) for fact in owned), total=len(owned))


class InMemorySummaryStore:
    """Summaries by conversation id."""

    def __init__(self) -> None:
        self.summaries: dict[UUID, ConversationSummary] = {}

    async def get(self, conversation_id: UUID) -> ConversationSummary | None:
        return self.summaries.get(conversation_id)

    async def save(self, summary: ConversationSummary) -> None:
        self.summaries[summary.conversation_id] = summary

    async def for_conversations(self, conversation_ids: Sequence[UUID]) -> list[ConversationSummary]:
        return [self.summaries[item] for item in conversation_ids if item in self.summaries]

    async def delete(self, conversation_ids: Sequence[UUID]) -> int:
        return sum(self.summaries.pop(item, None) is not None for item in conversation_ids)


class InMemoryCustomerRecords:
    """Reads and erases through the conversation fake's dictionaries; cascades by hand what PostgreSQL would.

    ``memory`` and ``summaries`` stand for the foreign keys that make PostgreSQL delete a customer's facts and
    their conversations' summaries with them.
    """

    def __init__(
        self,
        conversations: InMemoryConversationRepository,
        memory: InMemoryCustomerMemory | None = None,
        summaries: InMemorySummaryStore | None = None,
    ) -> None:
        self._conversations = conversations
        self._memory = memory
        self._summaries = summaries

    async def counts(self, customer_id: UUID) -> CustomerCounts:
        owned = set(await self.conversation_ids(customer_id))
        messages = sum(1 for message in self._conversations.messages if message.conversation_id in owned)
        return CustomerCounts(conversations=len(owned), messages=messages)

    async def conversation_ids(self, customer_id: UUID) -> list[UUID]:
        owned = [item for item in self._conversations.conversations.values() if item.customer_id == customer_id]
        return [item.id for item in sorted(owned, key=lambda item: (item.created_at, item.id))]

    async def delete(self, customer_id: UUID) -> bool:
        store = self._conversations
        if store.customers.pop(customer_id, None) is None:
            return False
        owned = set(await self.conversation_ids(customer_id))
        removed = [message.id for message in store.messages if message.conversation_id in owned]
        store.messages[:] = [message for message in store.messages if message.conversation_id not in owned]
        for message_id in removed:
            store.attachments.pop(message_id, None)
        for conversation_id in owned:
            del store.conversations[conversation_id]
        if self._memory is not None:
            await self._memory.forget_customer(customer_id)
        if self._summaries is not None:
            await self._summaries.delete(list(owned))
        return True


class InMemoryHotStateEraser:
    """Drops the session state and the feed of the in-memory stores it is given; records what it erased."""

    def __init__(self, sessions: InMemorySessionStore | None = None, bus: InMemoryEventBus | None = None) -> None:
        self._sessions = sessions
        self._bus = bus
        self.erased: list[UUID] = []

    async def erase(self, customer_id: UUID, conversation_ids: Sequence[UUID], *, gone: bool = False) -> None:  # noqa: ARG002 - no rate counters here
        for conversation_id in conversation_ids:
            if self._sessions is not None:
                await self._sessions.drop(conversation_id)
            if self._bus is not None:
                self._bus.erase(conversation_id, gone=gone)
            self.erased.append(conversation_id)
