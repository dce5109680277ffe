"""Use cases of customer memory inside a turn: remember facts, recall them for a question, fold long history.

Each is one short step a turn can call in its own database scope: remembering commits, recalling only reads,
folding commits the summary. None of them ever sees a secret: text is redacted before anything is extracted,
embedded, stored or summarised.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from support.domain.assistant import FactRemembered
from support.domain.conversations import Message, MessageRole
from support.domain.ids import new_id
from support.domain.memory import (
    ExpiryPolicy,
    Fact,
    FactCandidate,
    FactChange,
    FactOrigin,
    RecalledFact,
    Retraction,
    compare,
    extract_facts,
    extract_retractions,
    fold_messages,
    proposed_candidate,
    select_for_recall,
    unfolded,
)
from support.domain.privacy import redact
from support.ports.knowledge import Embedder
from support.ports.memory import CustomerMemory, SummaryStore
from support.ports.system import Clock, UnitOfWork

_logger = logging.getLogger(__name__)

# The question's end is what is embedded for recall (the newest words matter most), as for retrieval.
MAX_RECALL_QUERY_CHARS = 2000


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """Memory settings the use cases apply (from ``SUPPORT_MEMORY__*``)."""

    enabled: bool = True
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    # Tokens of recalled facts given to the assistant per turn (estimated at four characters a token).
    recall_token_budget: int = 120
    # Current facts read per recall before ranking (a customer rarely has more).
    recall_candidates: int = 50
    # Longest rolling summary of a conversation; the oldest lines are dropped beyond it (codes stay).
    summary_max_chars: int = 1500


class _FactWriter:
    """Stores candidates under the supersede rules; shared by pattern and model facts."""

    def __init__(self, memory: CustomerMemory, embedder: Embedder, policy: MemoryPolicy) -> None:
        self._memory = memory
        self._embedder = embedder
        self._policy = policy

    async def store(
        self,
        customer_id: UUID,
        candidates: Sequence[FactCandidate],
        *,
        origin: FactOrigin,
        source_message_id: UUID | None,
        stated_at: datetime,
        retractions: Sequence[Retraction] = (),
    ) -> list[Fact]:
        # Reads and the embedding first, writes last: the writes begin the transaction, so no connection is held
        # while the new facts are embedded (which may be a call to a remote embedding service).
        fresh: list[Fact] = []
        retracted = {retraction.key for retraction in retractions}
        for candidate in candidates:
            # A key the message also takes back starts empty: "Forget my name, call me Ada" stores Ada anew.
            current = None if candidate.key in retracted else await self._memory.current(customer_id, candidate.key)
            decided = self._decide(current, candidate, customer_id, origin, source_message_id, stated_at)
            if decided is not None and decided[1]:
                fresh.append(decided[0])
        vectors = await self._embedder.embed_documents([fact.text for fact in fresh]) if fresh else []
        vector_of = {fact.text: vector for fact, vector in zip(fresh, vectors, strict=True)}
        candidate_of = {candidate.key: candidate for candidate in candidates}
        retraction_of = {retraction.key: retraction for retraction in retractions}
        stored: list[Fact] = []
        # Keys in one order, so two writers of one customer never wait for each other's locks crosswise.
        for key in sorted(candidate_of.keys() | retraction_of.keys()):
            # Decided again under the key's lock: a concurrent turn of the same customer may have written the key
            # since it was read (a newer statement stays current, the same value is not stored twice).
            current = await self._memory.current_for_update(customer_id, key)
            retraction = retraction_of.get(key)
            if (
                retraction is not None
                and current is not None
                and current.created_at <= stated_at
                and retraction.applies_to(current)
            ):
                # Taken back: every value of the key goes, older ones too ("forget my phone number").
                await self._memory.forget_key(customer_id, key)
                current = None
            stated = candidate_of.get(key)
            if stated is None:
                continue
            decided = self._decide(current, stated, customer_id, origin, source_message_id, stated_at)
            if decided is None:
                continue
            fact, is_new = decided
            if not is_new:
                await self._memory.refresh(fact.id, expires_at=fact.expires_at, confidence=fact.confidence)
            else:
                vector = vector_of.get(fact.text)
                if vector is None:  # only when the key changed since it was read (a concurrent turn)
                    vector = (await self._embedder.embed_documents([fact.text]))[0]
                await self._memory.remember(fact, vector)
            stored.append(fact)
        return stored

    def _decide(
        self,
        current: Fact | None,
        candidate: FactCandidate,
        customer_id: UUID,
        origin: FactOrigin,
        source_message_id: UUID | None,
        stated_at: datetime,
    ) -> tuple[Fact, bool] | None:
        """What to write for ``candidate``: the current fact renewed (False), a new fact (True), or nothing."""
        change = compare(current, candidate, now=stated_at)
        expires_at = self._policy.expiry.expires_at(candidate.kind, stated_at)
        if change is FactChange.IGNORE:
            return None
        if change is not FactChange.REPEAT and current is not None and stated_at < current.created_at:
            # Said before what is known now (a retried message read late, or a concurrent turn): it never replaces
            # the newer value.
            return None
        if change is FactChange.REPEAT and current is not None:
            # Said again: it stays the same fact (same provenance), valid for longer.
            confidence = max(current.confidence, candidate.confidence)
            return replace(current, expires_at=expires_at, confidence=confidence), False
        fact = Fact(
            id=new_id(),
            customer_id=customer_id,
            kind=candidate.kind,
            key=candidate.key,
            value=candidate.value,
            confidence=candidate.confidence,
            origin=origin,
            source_message_id=source_message_id,
            created_at=stated_at,
            expires_at=expires_at,
        )
        return fact, True


class RememberFacts:
    """Remember the facts a customer message states (offline patterns), superseding older values."""

    def __init__(
        self, memory: CustomerMemory, embedder: Embedder, uow: UnitOfWork, clock: Clock, policy: MemoryPolicy
    ) -> None:
        self._writer = _FactWriter(memory, embedder, policy)
        self._uow = uow
        self._clock = clock
        self._policy = policy

    async def execute(self, customer_id: UUID, message: Message) -> list[Fact]:
        """Extract facts from ``message`` (a stored customer message) and commit; returns those stored or renewed.

        What the message takes back ("forget my phone number", "I no longer use a@x.com") is forgotten first,
        every value of the key. Empty for other roles, when nothing is found, or when memory is off. The text is
        redacted first: secrets and card numbers are never remembered.

        Raises:
            EmbedderUnavailableError: the facts could not be embedded (nothing is stored).
            StorageUnavailableError: the store cannot be reached.
            ConflictError: the customer no longer exists (erased meanwhile).
        """
        if not self._policy.enabled or message.role is not MessageRole.CUSTOMER:
            return []
        candidates = extract_facts(message.content)
        retractions = extract_retractions(message.content)
        if not candidates and not retractions:
            return []
        facts = await self._writer.store(
            customer_id,
            candidates,
            origin=FactOrigin.PATTERN,
            source_message_id=message.id,
            stated_at=message.created_at,
            retractions=retractions,
        )
        await self._uow.commit()
        return facts


class RememberProposedFact:
    """Remember a fact the model proposed with its ``remember_fact`` tool, after vetting it."""

    def __init__(
        self, memory: CustomerMemory, embedder: Embedder, uow: UnitOfWork, clock: Clock, policy: MemoryPolicy
    ) -> None:
        self._writer = _FactWriter(memory, embedder, policy)
        self._uow = uow
        self._clock = clock
        self._policy = policy

    async def execute(
        self, customer_id: UUID, proposal: FactRemembered, *, source_message_id: UUID | None = None
    ) -> Fact | None:
        """Store the proposal and commit; None when it is refused (unknown kind, empty, too long, or a secret).

        Raises:
            EmbedderUnavailableError: the fact could not be embedded.
            StorageUnavailableError: the store cannot be reached.
            ConflictError: the customer no longer exists.
        """
        candidate = proposed_candidate(proposal.kind, proposal.value, proposal.topic or None)
        if not self._policy.enabled or candidate is None:
            return None
        facts = await self._writer.store(
            customer_id,
            [candidate],
            origin=FactOrigin.MODEL,
            source_message_id=source_message_id,
            stated_at=self._clock.now(),
        )
        await self._uow.commit()
        return facts[0] if facts else None


class RecallMemories:
    """The facts worth giving the assistant for a question: current, relevant, within the token budget."""

    def __init__(self, memory: CustomerMemory, embedder: Embedder, clock: Clock, policy: MemoryPolicy) -> None:
        self._memory = memory
        self._embedder = embedder
        self._clock = clock
        self._policy = policy

    async def execute(
        self, customer_id: UUID, question: str, *, embedding: Sequence[float] | None = None
    ) -> list[RecalledFact]:
        """Recall for ``question`` (what the customer just said; empty at the start of a conversation).

        ``embedding`` is the question's vector when the caller already has one (the turn's retrieval vector);
        otherwise the redacted question is embedded here. Superseded and expired facts are never returned.

        Raises:
            EmbedderUnavailableError: the question could not be embedded.
            StorageUnavailableError: the store cannot be reached.
        """
        if not self._policy.enabled:
            return []
        now = self._clock.now()
        text = redact(question).strip()[-MAX_RECALL_QUERY_CHARS:].strip()
        vector = embedding
        if vector is None and text:
            vector = await self._embedder.embed_query(text)
        candidates = await self._memory.recall(
            customer_id, now=now, embedding=vector, limit=self._policy.recall_candidates
        )
        return select_for_recall(
            [(item.fact, item.similarity) for item in candidates],
            text,
            now,
            token_budget=self._policy.recall_token_budget,
        )


class FoldConversationHistory:
    """Keep a rolling summary of the turns that fell out of the history window, so nothing said is forgotten."""

    def __init__(self, summaries: SummaryStore, uow: UnitOfWork, clock: Clock, policy: MemoryPolicy) -> None:
        self._summaries = summaries
        self._uow = uow
        self._clock = clock
        self._policy = policy

    async def execute(self, conversation_id: UUID, older_messages: Sequence[Message]) -> str | None:
        """Fold ``older_messages`` (oldest first: the messages before the history window) into the stored summary.

        Messages the summary already covers are skipped, so the caller may pass every older message each turn.
        Commits when the summary changed. Returns the summary's text for the prompt, None when there is none.

        Raises:
            StorageUnavailableError: the store cannot be reached.
        """
        previous = await self._summaries.get(conversation_id)
        fresh = unfolded(previous, older_messages)
        if not fresh:
            return previous.text if previous else None
        summary = fold_messages(
            previous, conversation_id, fresh, max_chars=self._policy.summary_max_chars, now=self._clock.now()
        )
        if summary is None:
            return None
        if summary != previous:
            await self._summaries.save(summary)
            await self._uow.commit()
        return summary.text
