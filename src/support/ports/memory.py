"""Ports of customer memory: remembered facts, and rolling summaries of long conversations.

Two roles, two ports: facts belong to a customer and outlive conversations; a summary belongs to one
conversation and dies with it. They share no method and are read at different moments of a turn.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from support.domain.memory import ConversationSummary, Fact


@dataclass(frozen=True, slots=True)
class ScoredFact:
    """A recall candidate and its embedding similarity to the question (0 when no question was embedded)."""

    fact: Fact
    similarity: float


@dataclass(frozen=True, slots=True)
class FactPage:
    """One page of a customer's facts, newest first, and the cursor of the next (None on the last)."""

    items: list[Fact]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class FactCounts:
    """How many facts a customer has: current ones (recallable now) and all, superseded and expired included."""

    current: int
    total: int


class CustomerMemory(Protocol):
    """Long-term facts about customers, with their embeddings (for recall by similarity).

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def current(self, customer_id: UUID, key: str) -> Fact | None:
        """The fact of ``key`` that nothing superseded (it may have expired)."""
        ...

    async def current_for_update(self, customer_id: UUID, key: str) -> Fact | None:
        """The fact of ``key`` that nothing superseded, read under the key's write lock.

        The lock is held until the unit of work commits or rolls back, so a decision made on what this returns
        still holds when the fact is written: concurrent writers of one customer's key take turns.
        """
        ...

    async def remember(self, fact: Fact, embedding: Sequence[float]) -> None:
        """Store ``fact`` as the current value of its key; the previous current fact is superseded by it.

        Atomic per customer and key: concurrent calls leave exactly one current fact, every other one
        superseded.
        """
        ...

    async def refresh(self, fact_id: UUID, *, expires_at: datetime | None, confidence: float) -> None:
        """The customer said the same again: push the fact's expiry back and raise its confidence."""
        ...

    async def recall(
        self, customer_id: UUID, *, now: datetime, embedding: Sequence[float] | None, limit: int
    ) -> list[ScoredFact]:
        """Current facts (not superseded, not expired at ``now``), most similar to ``embedding`` first.

        Without an embedding, the newest first with similarity 0.
        """
        ...

    async def list_facts(self, customer_id: UUID, *, limit: int, cursor: str | None) -> FactPage:
        """Every fact of the customer, superseded and expired ones included (audit), newest first.

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def get(self, customer_id: UUID, fact_id: UUID) -> Fact | None:
        """The fact with this id, when it belongs to this customer."""
        ...

    async def forget(self, customer_id: UUID, fact_id: UUID) -> bool:
        """Delete one fact; False when the customer has no such fact.

        Facts it superseded stay superseded: forgetting a value never brings back an older one.
        """
        ...

    async def forget_key(self, customer_id: UUID, key: str) -> int:
        """Delete every fact of the customer under ``key``, current and superseded; how many there were."""
        ...

    async def forget_customer(self, customer_id: UUID) -> int:
        """Delete every fact of the customer; how many there were."""
        ...

    async def count(self, customer_id: UUID, *, now: datetime) -> FactCounts:
        """How many facts the customer has, current at ``now`` and in all."""
        ...


class SummaryStore(Protocol):
    """Rolling summaries of conversations that outgrew the history window, one per conversation.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def get(self, conversation_id: UUID) -> ConversationSummary | None:
        """The conversation's summary, if one was folded."""
        ...

    async def save(self, summary: ConversationSummary) -> None:
        """Create or replace the conversation's summary."""
        ...

    async def for_conversations(self, conversation_ids: Sequence[UUID]) -> list[ConversationSummary]:
        """The summaries of these conversations (export)."""
        ...

    async def delete(self, conversation_ids: Sequence[UUID]) -> int:
        """Delete the summaries of these conversations; how many there were."""
        ...
