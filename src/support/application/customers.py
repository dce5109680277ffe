"""Use cases on a customer as a whole: profile, memories (inspect, forget), export, erasure."""

import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from support.domain.conversations import Conversation, Customer, Message, customer_external_id
from support.domain.memory import ConversationSummary, CustomerNotFoundError, Fact, MemoryNotFoundError
from support.ports.conversations import ConversationRepository
from support.ports.customers import CustomerCounts, CustomerRecords, HotStateEraser
from support.ports.errors import CacheUnavailableError
from support.ports.memory import CustomerMemory, FactCounts, SummaryStore
from support.ports.system import Clock, UnitOfWork

_logger = logging.getLogger(__name__)

MAX_MEMORY_PAGE = 100
# Pages read while exporting (the export itself is not paginated).
_EXPORT_PAGE = 100


async def _existing(conversations: ConversationRepository, customer_id: UUID) -> Customer:
    customer = await conversations.get_customer(customer_id)
    if customer is None:
        raise CustomerNotFoundError
    return customer


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    """A customer and how much is held about them."""

    customer: Customer
    counts: CustomerCounts
    memories: FactCounts


class GetCustomerProfile:
    """Read a customer's profile and counts."""

    def __init__(
        self, conversations: ConversationRepository, records: CustomerRecords, memory: CustomerMemory, clock: Clock
    ) -> None:
        self._conversations = conversations
        self._records = records
        self._memory = memory
        self._clock = clock

    async def execute(self, customer_id: UUID) -> CustomerProfile:
        """The customer, with counts of conversations, messages and memories (current and in all).

        Raises:
            CustomerNotFoundError: no such customer.
        """
        return await self.of(await _existing(self._conversations, customer_id))

    async def of(self, customer: Customer) -> CustomerProfile:
        """The profile of a customer already read."""
        counts = await self._records.counts(customer.id)
        memories = await self._memory.count(customer.id, now=self._clock.now())
        return CustomerProfile(customer, counts, memories)


class FindCustomer:
    """Look a customer up by the company's own id for them (what a data-subject request names)."""

    def __init__(self, conversations: ConversationRepository, profiles: GetCustomerProfile) -> None:
        self._conversations = conversations
        self._profiles = profiles

    async def execute(self, external_id: str) -> CustomerProfile:
        """The profile of the customer with this external id; nobody is created.

        Read as a conversation's start reads it (surrounding spaces dropped), so the id the company's backend sent
        finds the customer it created.

        Raises:
            InvalidInputError: the id is blank.
            CustomerNotFoundError: no customer has this external id.
        """
        customer = await self._conversations.find_customer(customer_external_id(external_id))
        if customer is None:
            raise CustomerNotFoundError
        return await self._profiles.of(customer)


@dataclass(frozen=True, slots=True)
class MemoryListing:
    """One page of a customer's facts and the time ``is_current`` is judged at."""

    items: list[Fact]
    next_cursor: str | None
    as_of: datetime


class ListMemories:
    """List what is remembered about a customer, superseded and expired facts included (audit)."""

    def __init__(self, conversations: ConversationRepository, memory: CustomerMemory, clock: Clock) -> None:
        self._conversations = conversations
        self._memory = memory
        self._clock = clock

    async def execute(self, customer_id: UUID, *, limit: int = 50, cursor: str | None = None) -> MemoryListing:
        """Newest first.

        Raises:
            CustomerNotFoundError: no such customer.
            InvalidInputError: the cursor is not valid.
        """
        await _existing(self._conversations, customer_id)
        page = await self._memory.list_facts(customer_id, limit=min(max(limit, 1), MAX_MEMORY_PAGE), cursor=cursor)
        return MemoryListing(page.items, page.next_cursor, self._clock.now())


class ForgetMemory:
    """Forget one remembered fact."""

    def __init__(self, conversations: ConversationRepository, memory: CustomerMemory, uow: UnitOfWork) -> None:
        self._conversations = conversations
        self._memory = memory
        self._uow = uow

    async def execute(self, customer_id: UUID, memory_id: UUID) -> None:
        """Delete it and commit; older values it had superseded stay superseded (never recalled again).

        Raises:
            CustomerNotFoundError: no such customer.
            MemoryNotFoundError: the customer has no such memory.
        """
        await _existing(self._conversations, customer_id)
        if not await self._memory.forget(customer_id, memory_id):
            raise MemoryNotFoundError
        await self._uow.commit()


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    """One conversation as exported: its messages, oldest first, and its rolling summary."""

    conversation: Conversation
    messages: list[Message]
    summary: ConversationSummary | None


@dataclass(frozen=True, slots=True)
class CustomerExport:
    """Everything held about a customer."""

    customer: Customer
    conversations: list[ConversationRecord]
    memories: list[Fact]
    exported_at: datetime


class ExportCustomer:
    """Gather everything held about a customer (data portability, access requests)."""

    def __init__(
        self,
        conversations: ConversationRepository,
        records: CustomerRecords,
        memory: CustomerMemory,
        summaries: SummaryStore,
        clock: Clock,
    ) -> None:
        self._conversations = conversations
        self._records = records
        self._memory = memory
        self._summaries = summaries
        self._clock = clock

    async def execute(self, customer_id: UUID) -> CustomerExport:
        """The customer's profile, conversations with every message and summary, and every memory.

        Raises:
            CustomerNotFoundError: no such customer.
        """
        customer = await _existing(self._conversations, customer_id)
        conversations = await self._all_conversations(customer_id)
        summaries = {
            item.conversation_id: item
            for item in await self._summaries.for_conversations([conversation.id for conversation in conversations])
        }
        records = [
            ConversationRecord(conversation, await self._all_messages(conversation.id), summaries.get(conversation.id))
            for conversation in conversations
        ]
        return CustomerExport(customer, records, await self._all_facts(customer_id), self._clock.now())

    async def _all_conversations(self, customer_id: UUID) -> list[Conversation]:
        found: list[Conversation] = []
        cursor: str | None = None
        while True:
            page = await self._conversations.list_conversations(
                status=None, customer_id=customer_id, limit=_EXPORT_PAGE, cursor=cursor
            )
            found += page.items
            if page.next_cursor is None:
                return sorted(found, key=lambda item: (item.created_at, item.id))
            cursor = page.next_cursor

    async def _all_messages(self, conversation_id: UUID) -> list[Message]:
        found: list[Message] = []
        cursor: str | None = None
        while True:
            page = await self._conversations.list_messages(conversation_id, limit=_EXPORT_PAGE, cursor=cursor)
            found += page.items
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    async def _all_facts(self, customer_id: UUID) -> list[Fact]:
        found: list[Fact] = []
        cursor: str | None = None
        while True:
            page = await self._memory.list_facts(customer_id, limit=MAX_MEMORY_PAGE, cursor=cursor)
            found += page.items
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What erasing a customer removed."""

    conversations: int
    messages: int
    memories: int
    summaries: int


class EraseCustomer:
    """Erase a customer: every record in PostgreSQL and every hot key in Valkey of their conversations."""

    def __init__(
        self,
        conversations: ConversationRepository,
        records: CustomerRecords,
        memory: CustomerMemory,
        summaries: SummaryStore,
        hot_state: HotStateEraser,
        uow: UnitOfWork,
    ) -> None:
        self._conversations = conversations
        self._records = records
        self._memory = memory
        self._summaries = summaries
        self._hot_state = hot_state
        self._uow = uow

    async def execute(self, customer_id: UUID) -> ErasureReport:
        """Erase everything about the customer and commit; returns what was removed.

        PostgreSQL: the customer with their conversations, messages, attachments, summaries, memories and webhook
        events. Valkey: their conversations' session state, reply leases and event feeds; each feed is left a
        tombstone so that a reply still being written cannot publish it back into existence.

        Raises:
            CustomerNotFoundError: no such customer (or already erased).
            CacheUnavailableError: Valkey cannot be reached; nothing was deleted, so a retry can finish.
        """
        await _existing(self._conversations, customer_id)
        conversation_ids = await self._records.conversation_ids(customer_id)
        counts = await self._records.counts(customer_id)
        # Valkey first: if it is down the request fails before anything is deleted, and a retry still finds
        # the customer (after PostgreSQL, a retry would answer 404 and leave the hot keys behind).
        await self._hot_state.erase(customer_id, conversation_ids)
        memories = await self._memory.forget_customer(customer_id)
        summaries = await self._summaries.delete(conversation_ids)
        await self._records.delete(customer_id)
        await self._uow.commit()
        try:
            # Again: a reply that was being written meanwhile may have cached state or published events. Now the
            # records are gone, tombstones make every later publish to these feeds fail instead of recreating them.
            await self._hot_state.erase(customer_id, conversation_ids, gone=True)
        except CacheUnavailableError:
            _logger.warning("hot state of an erased customer's conversations is left to expire: Valkey is down")
        return ErasureReport(len(conversation_ids), counts.messages, memories, summaries)
