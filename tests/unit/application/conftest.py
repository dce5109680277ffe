"""A whole conversation service on in-memory adapters: sending, replies, the handoff use cases."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.cache import InMemoryCache
from support.adapters.memory.conversations import InMemoryAttachmentStore, InMemoryConversationRepository
from support.adapters.memory.customer_memory import InMemoryCustomerMemory, InMemorySummaryStore
from support.adapters.memory.events import InMemoryEventBus
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.adapters.memory.sessions import InMemorySessionStore
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.adapters.offline.summaries import ExtractiveSummarizer
from support.application.conversations import ConversationLimits, SendMessage, StartConversation, Turn
from support.application.handoffs import (
    ClaimConversation,
    ExpireHandoffs,
    ListHandoffs,
    ReleaseConversation,
    RequestHandoff,
    RequeueAgentConversations,
    ResolveConversation,
    SendAgentMessage,
    WithdrawHandoff,
)
from support.application.handover import HandoffSettings, HandoffSummaries
from support.application.keys import CustomerTokenSecret
from support.application.knowledge import KnowledgeLimits, QueryEmbeddings, SearchKnowledge
from support.application.memory import (
    FoldConversationHistory,
    MemoryPolicy,
    RecallMemories,
    RememberFacts,
    RememberProposedFact,
)
from support.application.replies import ReplyRunner, ReplySettings
from support.application.services import ConversationServices
from support.domain.conversations import Conversation
from support.domain.escalation import BusinessHours, EscalationPolicy
from support.domain.identity import Principal, Role
from support.domain.knowledge import Chunk, DocumentDraft, EmbeddedChunk
from support.ports.knowledge import Embedder
from tests.fakes.llm import ScriptedLLM
from tests.fakes.outbox import RecordingOutbox

SERVICE = Principal(role=Role.SERVICE, key_id=None, name="backend")
AGENT_ANA = Principal(role=Role.AGENT, key_id=None, name="Ana")
AGENT_BEN = Principal(role=Role.AGENT, key_id=None, name="Ben")
# Agents' hours around the clock, so notices and expiry don't depend on when the tests run.
ALWAYS_OPEN = BusinessHours(days=frozenset(range(7)), opens=time(0), closes=time.max)


@dataclass
class _Services:
    conversations: InMemoryConversationRepository
    attachments: InMemoryAttachmentStore
    uow: InMemoryUnitOfWork
    search: SearchKnowledge
    outbox: RecordingOutbox
    recall: RecallMemories
    remember: RememberFacts
    remember_proposed: RememberProposedFact
    fold: FoldConversationHistory


@dataclass
class World:
    repository: InMemoryConversationRepository
    bus: InMemoryEventBus
    llm: ScriptedLLM
    runner: ReplyRunner
    send_message: SendMessage
    conversation: Conversation
    clock: FixedClock
    outbox: RecordingOutbox
    sessions: InMemorySessionStore
    uow: InMemoryUnitOfWork
    summaries: HandoffSummaries
    handoff_settings: HandoffSettings
    limits: ConversationLimits

    async def send(self, text: str, key: str | None = None) -> Turn:
        return await self.send_message.execute(SERVICE, self.conversation.id, text, idempotency_key=key)

    async def current(self) -> Conversation:
        found = await self.repository.get(self.conversation.id)
        assert found is not None
        return found

    def _common(
        self,
    ) -> tuple[
        InMemoryConversationRepository,
        InMemoryUnitOfWork,
        FixedClock,
        InMemoryEventBus,
        InMemorySessionStore,
        RecordingOutbox,
    ]:
        return self.repository, self.uow, self.clock, self.bus, self.sessions, self.outbox

    @property
    def request_handoff(self) -> RequestHandoff:
        return RequestHandoff(*self._common(), self.handoff_settings, self.summaries)

    @property
    def withdraw(self) -> WithdrawHandoff:
        return WithdrawHandoff(*self._common())

    @property
    def claim(self) -> ClaimConversation:
        return ClaimConversation(*self._common())

    @property
    def release(self) -> ReleaseConversation:
        return ReleaseConversation(*self._common())

    @property
    def resolve(self) -> ResolveConversation:
        return ResolveConversation(*self._common())

    @property
    def agent_message(self) -> SendAgentMessage:
        return SendAgentMessage(*self._common(), self.limits)

    @property
    def queue(self) -> ListHandoffs:
        return ListHandoffs(self.repository, self.clock, self.summaries)

    @property
    def expire(self) -> ExpireHandoffs:
        return ExpireHandoffs(*self._common(), self.handoff_settings)

    @property
    def requeue(self) -> RequeueAgentConversations:
        return RequeueAgentConversations(*self._common())


@pytest.fixture
def handoff_settings() -> HandoffSettings:
    return HandoffSettings(hours=ALWAYS_OPEN)


async def knowledge_base_of(*bodies: str) -> InMemoryKnowledgeBase:
    """A knowledge base holding one document whose chunks are ``bodies``, in order (hashing vectors, 64 dims)."""
    knowledge, embedder = InMemoryKnowledgeBase(), HashingEmbedder(64)
    vectors = await embedder.embed_documents(list(bodies))
    chunks = [
        EmbeddedChunk(Chunk(index, (), body, len(body.split())), body, vector)
        for index, (body, vector) in enumerate(zip(bodies, vectors, strict=True))
    ]
    draft = DocumentDraft(external_id="guide", title="Guide", content_type="text/plain", text_hash="h")
    await knowledge.upsert(draft, chunks, datetime.now(UTC))
    return knowledge


@asynccontextmanager
async def running_world(
    handoff_settings: HandoffSettings | None = None,
    *,
    repository: InMemoryConversationRepository | None = None,
    llm: ScriptedLLM | None = None,
    reply_settings: ReplySettings | None = None,
    query_embedder: Embedder | None = None,
    knowledge: InMemoryKnowledgeBase | None = None,
) -> AsyncIterator[World]:
    """A fresh service with one conversation; turns and summaries are stopped on exit."""
    handoff_settings = handoff_settings or HandoffSettings(hours=ALWAYS_OPEN)
    repository = repository or InMemoryConversationRepository()
    llm = llm or ScriptedLLM()
    attachments = InMemoryAttachmentStore(repository)
    uow, clock, outbox = InMemoryUnitOfWork(), FixedClock(), RecordingOutbox()
    search = SearchKnowledge(
        knowledge or InMemoryKnowledgeBase(),
        QueryEmbeddings(query_embedder or HashingEmbedder(64), InMemoryCache(), KnowledgeLimits()),
    )

    memory, summaries_store, embedder, policy = (
        InMemoryCustomerMemory(),
        InMemorySummaryStore(),
        HashingEmbedder(64),
        MemoryPolicy(),
    )

    @asynccontextmanager
    async def open_services() -> AsyncIterator[ConversationServices]:
        yield _Services(
            repository,
            attachments,
            uow,
            search,
            outbox,
            RecallMemories(memory, embedder, clock, policy),
            RememberFacts(memory, embedder, uow, clock, policy),
            RememberProposedFact(memory, embedder, uow, clock, policy),
            FoldConversationHistory(summaries_store, uow, clock, policy),
        )

    bus, sessions = InMemoryEventBus(retention=100), InMemorySessionStore()
    summaries = HandoffSummaries(open_services, ExtractiveSummarizer(), ExtractiveSummarizer())
    runner = ReplyRunner(
        open_services,
        llm,
        sessions,
        bus,
        clock,
        reply_settings or ReplySettings(),
        "test",
        policy=EscalationPolicy(),
        handoffs=handoff_settings,
        summaries=summaries,
    )
    limits = ConversationLimits()
    started = await StartConversation(repository, uow, clock, CustomerTokenSecret("s"), limits).execute(
        SERVICE, external_id="customer-1"
    )
    try:
        yield World(
            repository,
            bus,
            llm,
            runner,
            SendMessage(repository, attachments, uow, clock, runner, limits, outbox, bus, sessions),
            started.conversation,
            clock,
            outbox,
            sessions,
            uow,
            summaries,
            handoff_settings,
            limits,
        )
    finally:
        await runner.close()
        await summaries.close()


@pytest.fixture
async def world(handoff_settings: HandoffSettings) -> AsyncIterator[World]:
    async with running_world(handoff_settings) as running:
        yield running
