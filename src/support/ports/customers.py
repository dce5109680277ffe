"""Ports for what is held about a customer as a whole: counts, erasure of records and of hot state."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID


@dataclass(frozen=True, slots=True)
class CustomerCounts:
    """How much of a customer's history is stored."""

    conversations: int
    messages: int


class CustomerRecords(Protocol):
    """Customers as a whole in the source of truth (PostgreSQL): their footprint, and erasing them.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def counts(self, customer_id: UUID) -> CustomerCounts:
        """The customer's conversations and messages."""
        ...

    async def conversation_ids(self, customer_id: UUID) -> list[UUID]:
        """Every conversation of the customer, oldest first."""
        ...

    async def delete(self, customer_id: UUID) -> bool:
        """Delete the customer and everything that hangs off them; False when there was no such customer.

        That is their conversations, messages, attachments, conversation summaries, memories, and the webhook
        events of their conversations.
        """
        ...


class HotStateEraser(Protocol):
    """Removes what the hot store (Valkey) holds about conversations.

    That is the cached session state, the reply lease, and the event feed (its stream and its counter). The
    store is rebuildable from PostgreSQL, so erasing it loses nothing but the data itself.

    Raises (every method):
        CacheUnavailableError: the store cannot be reached.
    """

    async def erase(self, customer_id: UUID, conversation_ids: Sequence[UUID], *, gone: bool = False) -> None:
        """Delete every key of these conversations of the customer (keys that do not exist are fine).

        ``gone``: the conversations are deleted from the source of truth. Each then also gets a tombstone, set
        before its keys are deleted, that makes the event bus refuse every later publish to its feed
        (:class:`~support.ports.conversations.FeedErasedError`): a reply still being written would otherwise
        recreate the feed, with the customer's words, after this pass. A publish that ran before the tombstone
        is deleted with the keys. The tombstone holds no data and expires once no turn can still be running.
        """
        ...
