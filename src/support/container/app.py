import asyncio
import contextlib
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dishka import AsyncContainer, Provider, Scope, make_async_container, provide
from litestar import Litestar
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from valkey.asyncio import Valkey

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.embedding.http_openai import OpenAICompatibleEmbedder
from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.extraction.extractor import StructuredTextExtractor
from support.adapters.http.webhooks import HttpxWebhookSender
from support.adapters.offline.extractive import ExtractiveLLM
from support.adapters.offline.summaries import ExtractiveSummarizer
from support.adapters.postgres.api_keys import PostgresApiKeyRepository
from support.adapters.postgres.conversations import PostgresAttachmentStore, PostgresConversationRepository
from support.adapters.postgres.engine import create_engine, create_session_factory
from support.adapters.postgres.health import PostgresHealthProbe
from support.adapters.postgres.knowledge import PgVectorKnowledgeBase
from support.adapters.postgres.leases import PostgresReplyLeases
from support.adapters.postgres.memory import PostgresCustomerMemory, PostgresCustomerRecords, PostgresSummaryStore
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.postgres.webhooks import (
    PostgresWebhookDeliveryQueue,
    PostgresWebhookOutbox,
    PostgresWebhookRepository,
)
from support.adapters.resilience import LeaseFallbackSessionStore
from support.adapters.system import SystemClock
from support.adapters.valkey.cache import ValkeyCache
from support.adapters.valkey.client import create_client
from support.adapters.valkey.erasure import TOMBSTONE_TTL_S, ValkeyHotStateEraser
from support.adapters.valkey.events import ValkeyEventBus
from support.adapters.valkey.health import ValkeyHealthProbe
from support.adapters.valkey.jobs import SaqJobQueue
from support.adapters.valkey.sessions import ValkeySessionStore
from support.api.app import build_app
from support.application.access import ConfirmFollowerAccess
from support.application.conversations import (
    CachedConversationState,
    CloseConversation,
    ConversationLimits,
    GetAttachment,
    GetConversation,
    IssueCustomerToken,
    ListConversations,
    ListMessages,
    PrepareAttachments,
    SendMessage,
    StartConversation,
    SubmitFeedback,
    SweepIdleConversations,
)
from support.application.customers import (
    EraseCustomer,
    ExportCustomer,
    FindCustomer,
    ForgetMemory,
    GetCustomerProfile,
    ListMemories,
)
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
from support.application.health import CheckReadiness
from support.application.keys import (
    AuthenticateApiKey,
    BootstrapAdminKey,
    ClaimedConversations,
    CreateApiKey,
    CustomerTokenSecret,
    ListApiKeys,
    RevokeApiKey,
)
from support.application.knowledge import (
    INGEST_JOB,
    DeleteDocument,
    GetDocument,
    GetJob,
    IngestDocument,
    IngestDocuments,
    KnowledgeLimits,
    ListDocuments,
    QueryEmbeddings,
    RescanKnowledge,
    RunBulkIngestion,
    SearchKnowledge,
    StartBulkIngestion,
    VerifyKnowledgeIndex,
)
from support.application.limits import SpendTokens
from support.application.memory import (
    FoldConversationHistory,
    MemoryPolicy,
    RecallMemories,
    RememberFacts,
    RememberProposedFact,
)
from support.application.replies import ReplyRunner, ReplySettings
from support.application.services import ConversationServices, ServicesOpener
from support.application.webhooks import (
    CreateWebhook,
    DeleteWebhook,
    DeliveriesInFlight,
    DeliverWebhooks,
    GetWebhook,
    ListWebhookDeliveries,
    ListWebhooks,
    PurgeWebhookDeliveries,
    RedeliverWebhookDelivery,
    WebhookDeliveryPolicy,
    WebhookRetentionPolicy,
    WebhookTargetPolicy,
)
from support.config import Settings, SettingsError, WebhookSettings, load_settings
from support.container.limits import LimitsProvider, trusted_proxies
from support.domain.escalation import BusinessHours, EscalationPolicy, EscalationRules, SensitiveTopic
from support.domain.memory import ExpiryPolicy, FactKind
from support.domain.webhooks import RetrySchedule
from support.observability import configure_logging
from support.ports.assistant import LLM, Summarizer
from support.ports.conversations import AttachmentStore, ConversationRepository, EventBus, SessionStore
from support.ports.customers import CustomerRecords, HotStateEraser
from support.ports.errors import DependencyUnavailableError
from support.ports.identity import ApiKeyRepository
from support.ports.jobs import JobQueue, ProgressReporter
from support.ports.knowledge import Cache, Embedder, KnowledgeBase, TextExtractor
from support.ports.memory import CustomerMemory, SummaryStore
from support.ports.system import Clock, HealthProbe, UnitOfWork
from support.ports.webhooks import WebhookDeliveryQueue, WebhookOutbox, WebhookRepository, WebhookSender

_logger = logging.getLogger(__name__)
_FAILED_ROUND_PAUSE_S = 5.0
# The webhook retention sweep runs this often, not every poll: finished deliveries only age by the day.
_RETENTION_SWEEP_INTERVAL_S = 300.0
# Deliveries deleted per step of the sweep (one short transaction); a full step is followed by another after the
# next delivery round, so a backlog drains without holding up deliveries.
_RETENTION_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class _TurnServices:
    conversations: ConversationRepository
    attachments: AttachmentStore
    uow: UnitOfWork
    search: SearchKnowledge
    outbox: WebhookOutbox
    recall: RecallMemories
    remember: RememberFacts
    remember_proposed: RememberProposedFact
    fold: FoldConversationHistory


def escalation_policy(settings: Settings) -> EscalationPolicy:
    """The built-in escalation policy with what the policy file replaces."""
    given = settings.handoff.policy()
    defaults = EscalationRules()
    topics = (
        tuple(
            SensitiveTopic(topic.name, tuple(topic.patterns), tuple(topic.unless)) for topic in given.sensitive_topics
        )
        if given.sensitive_topics is not None
        else defaults.sensitive_topics
    )
    limit = defaults.refund_amount_limit
    if given.refund_amount_limit is not None:
        limit = Decimal(str(given.refund_amount_limit)) if given.refund_amount_limit > 0 else None

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else (tuple(value) if isinstance(value, list) else value)

    try:
        return EscalationPolicy(
            EscalationRules(
                human_request_patterns=pick(given.human_request_patterns, defaults.human_request_patterns),
                acceptance_pattern=pick(given.acceptance_pattern, defaults.acceptance_pattern),
                frustration_terms=pick(given.frustration_terms, defaults.frustration_terms),
                profanity_terms=pick(given.profanity_terms, defaults.profanity_terms),
                sensitive_topics=topics,
                refund_amount_limit=limit,
                shouting_min_letters=pick(given.shouting_min_letters, defaults.shouting_min_letters),
                shouting_ratio=pick(given.shouting_ratio, defaults.shouting_ratio),
                repetition_similarity=pick(given.repetition_similarity, defaults.repetition_similarity),
                repetition_min_words=pick(given.repetition_min_words, defaults.repetition_min_words),
                repeated_failure_limit=pick(given.repeated_failure_limit, defaults.repeated_failure_limit),
            )
        )
    except re.error as error:
        msg = f"SUPPORT_HANDOFF__POLICY_FILE: a pattern does not compile: {error}"
        raise SettingsError(msg) from error


def _clock_time(variable: str, text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        msg = f"{variable}: {text!r} is not a time of day (HH:MM, 00:00 to 23:59)"
        raise SettingsError(msg) from None


def check_settings(settings: Settings) -> None:
    """What create_app would refuse, checked before anything starts (a bad policy file, hours, time zone, proxies).

    Raises:
        SettingsError: naming the setting.
    """
    escalation_policy(settings)
    handoff_settings(settings)
    trusted_proxies(settings.limits)
    # Checked on the first request that signs a token until 2026-12-07: a prod server without it started, said it
    # was ready, and answered every new conversation with a 500 (found by an exploratory test).
    customer_token_secret(settings)


def customer_token_secret(settings: Settings) -> CustomerTokenSecret:
    """The secret customer tokens are signed with; in development, one for the life of the process.

    Raises:
        SettingsError: none is set in prod.
    """
    secret = settings.conversations.token_secret
    if secret:
        return CustomerTokenSecret(secret)
    if settings.env == "prod":
        msg = "SUPPORT_CONVERSATIONS__TOKEN_SECRET is required in prod (customer tokens are signed with it)"
        raise SettingsError(msg)
    # Development: tokens last as long as the process.
    return CustomerTokenSecret(secrets.token_urlsafe(32))


def handoff_settings(settings: Settings) -> HandoffSettings:
    """Agents' hours and queue pace from the settings."""
    handoff = settings.handoff
    try:
        ZoneInfo(handoff.timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        msg = f"SUPPORT_HANDOFF__TIMEZONE: unknown time zone {handoff.timezone!r}"
        raise SettingsError(msg) from error
    hours = BusinessHours(
        timezone=handoff.timezone,
        days=frozenset(handoff.days),
        opens=_clock_time("SUPPORT_HANDOFF__OPENS", handoff.opens),
        closes=_clock_time("SUPPORT_HANDOFF__CLOSES", handoff.closes),
    )
    return HandoffSettings(
        hours=hours, minutes_per_conversation=handoff.minutes_per_conversation, max_wait_s=handoff.max_wait_s
    )


class InfrastructureProvider(Provider):
    """Process-wide clients: created on first use, closed with the container."""

    scope = Scope.APP

    @provide
    async def engine(self, settings: Settings) -> AsyncIterator[AsyncEngine]:
        engine = create_engine(settings.require_database_url(), settings.db)
        yield engine
        await engine.dispose()

    @provide
    def session_factory(self, engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
        return create_session_factory(engine)

    @provide
    async def valkey(self, settings: Settings) -> AsyncIterator[Valkey]:
        client = create_client(settings.require_valkey_url(), settings.valkey)
        yield client
        await client.aclose()

    @provide
    def clock(self) -> Clock:
        return SystemClock()

    @provide
    def probes(self, engine: AsyncEngine, valkey: Valkey) -> Sequence[HealthProbe]:
        return (PostgresHealthProbe(engine), ValkeyHealthProbe(valkey))

    @provide
    async def embedder(self, settings: Settings) -> AsyncIterator[Embedder]:
        embedding = settings.embedding
        if embedding.provider == "http":
            if not embedding.url:
                msg = "SUPPORT_EMBEDDING__URL is required when SUPPORT_EMBEDDING__PROVIDER=http"
                raise SettingsError(msg)
            remote = OpenAICompatibleEmbedder(
                base_url=embedding.url,
                model=embedding.model,
                dimension=embedding.dimension,
                api_key=embedding.api_key,
                timeout=embedding.timeout_s,
                batch_size=embedding.batch_size,
            )
            yield remote
            await remote.aclose()
        elif embedding.provider == "hashing":
            yield HashingEmbedder(embedding.dimension)
        else:
            local = OnnxMiniLMEmbedder(
                threads=embedding.threads,
                cache_dir=Path(embedding.model_cache_dir) if embedding.model_cache_dir else None,
            )
            yield local
            local.close()

    @provide
    def extractor(self) -> TextExtractor:
        return StructuredTextExtractor()

    @provide
    def cache(self, valkey: Valkey, settings: Settings) -> Cache:
        return ValkeyCache(valkey, settings.valkey.key_prefix)

    @provide
    def knowledge_limits(self, settings: Settings) -> KnowledgeLimits:
        knowledge = settings.knowledge
        return KnowledgeLimits(
            max_document_bytes=knowledge.max_document_bytes,
            chunk_tokens=knowledge.chunk_tokens,
            chunk_overlap_tokens=knowledge.chunk_overlap_tokens,
            query_cache_ttl_s=knowledge.query_cache_ttl_s,
        )

    query_embeddings = provide(QueryEmbeddings)

    @provide
    async def job_queue(self, settings: Settings) -> AsyncIterator[SaqJobQueue]:
        queue = SaqJobQueue(settings.require_valkey_url(), name=settings.valkey.key_prefix + "jobs")
        await queue.connect()
        yield queue
        await queue.close()

    @provide
    def jobs(self, queue: SaqJobQueue) -> JobQueue:
        return queue

    @provide
    async def sessions(self, valkey: Valkey, engine: AsyncEngine, settings: Settings) -> AsyncIterator[SessionStore]:
        # While Valkey is unreachable, reply leases come from PostgreSQL advisory locks (docs/faults.md).
        leases = PostgresReplyLeases(engine)
        yield LeaseFallbackSessionStore(ValkeySessionStore(valkey, settings.valkey.key_prefix), leases)
        await leases.close()

    @provide
    async def event_bus(self, valkey: Valkey, settings: Settings) -> AsyncIterator[EventBus]:
        conversations = settings.conversations
        bus = ValkeyEventBus(
            valkey,
            settings.valkey.key_prefix,
            retention=conversations.feed_retention,
            ttl_s=max(conversations.session_ttl_s, conversations.idle_close_after_s),
        )
        yield bus
        await bus.close()

    @provide
    async def llm(self, settings: Settings) -> AsyncIterator[LLM]:
        llm = settings.llm
        if llm.uses_claude(os.environ):
            # Imported only when used: the SDK is large, and the offline responder doesn't need it.
            from support.adapters.anthropic.claude import AnthropicLLM

            claude = AnthropicLLM(
                model=llm.model,
                max_tokens=llm.max_tokens,
                temperature=llm.temperature,
                company_name=llm.company_name,
                persona=llm.persona,
                api_key=llm.anthropic_key(os.environ),
                base_url=llm.base_url,
                timeout_s=llm.timeout_s,
                start_deadline_s=llm.start_deadline_s,
                max_retries=llm.max_retries,
                history_token_budget=llm.history_token_budget,
                max_tool_rounds=llm.max_tool_rounds,
                remember_facts=settings.memory.enabled and settings.memory.model_tool,
                breaker_failures=llm.breaker_failures,
                breaker_cooldown_s=llm.breaker_cooldown_s,
            )
            yield claude
            await claude.aclose()
        else:
            yield ExtractiveLLM(evidence_threshold=llm.evidence_threshold)

    @provide
    def token_secret(self, settings: Settings) -> CustomerTokenSecret:
        return customer_token_secret(settings)

    @provide
    def conversation_limits(self, settings: Settings) -> ConversationLimits:
        conversations = settings.conversations
        return ConversationLimits(
            token_ttl_s=conversations.token_ttl_s,
            idle_close_after_s=conversations.idle_close_after_s,
            max_message_chars=conversations.max_message_chars,
            max_attachments=conversations.max_attachments,
            max_attachment_bytes=conversations.max_attachment_bytes,
            attachment_context_chars=conversations.attachment_context_chars,
        )

    @provide
    def reply_settings(self, settings: Settings) -> ReplySettings:
        conversations = settings.conversations
        return ReplySettings(
            passages=settings.llm.passages,
            context_chunks=(
                settings.llm.claude_context_chunks
                if settings.llm.uses_claude(os.environ)
                else settings.llm.context_chunks
            ),
            recent_messages=conversations.recent_messages,
            attachment_context_chars=conversations.attachment_context_chars,
            session_ttl_s=conversations.session_ttl_s,
            reply_wait_s=conversations.reply_wait_s,
            exclude_flagged=settings.knowledge.injection_policy == "quarantine",
        )

    @provide
    def services_opener(self, container: AsyncContainer) -> ServicesOpener:
        @asynccontextmanager
        async def open_services() -> AsyncIterator[ConversationServices]:
            async with container() as request:
                yield _TurnServices(
                    await request.get(ConversationRepository),
                    await request.get(AttachmentStore),
                    await request.get(UnitOfWork),
                    await request.get(SearchKnowledge),
                    await request.get(WebhookOutbox),
                    await request.get(RecallMemories),
                    await request.get(RememberFacts),
                    await request.get(RememberProposedFact),
                    await request.get(FoldConversationHistory),
                )

        return open_services

    @provide
    def escalation_policy(self, settings: Settings) -> EscalationPolicy:
        return escalation_policy(settings)

    @provide
    def handoff_settings(self, settings: Settings) -> HandoffSettings:
        return handoff_settings(settings)

    @provide
    async def summarizer(self, settings: Settings) -> AsyncIterator[Summarizer]:
        llm = settings.llm
        if llm.uses_claude(os.environ):
            from support.adapters.anthropic.summaries import AnthropicSummarizer

            claude = AnthropicSummarizer(
                model=llm.model, api_key=llm.anthropic_key(os.environ), base_url=llm.base_url, timeout_s=llm.timeout_s
            )
            yield claude
            await claude.aclose()
        else:
            yield ExtractiveSummarizer()

    @provide
    async def handoff_summaries(
        self, open_services: ServicesOpener, summarizer: Summarizer
    ) -> AsyncIterator[HandoffSummaries]:
        summaries = HandoffSummaries(open_services, summarizer, ExtractiveSummarizer())
        yield summaries
        await summaries.close()

    @provide
    async def reply_runner(
        self,
        open_services: ServicesOpener,
        llm: LLM,
        sessions: SessionStore,
        bus: EventBus,
        clock: Clock,
        settings: ReplySettings,
        embeddings: QueryEmbeddings,
        policy: EscalationPolicy,
        handoffs: HandoffSettings,
        summaries: HandoffSummaries,
        spend: SpendTokens,
    ) -> AsyncIterator[ReplyRunner]:
        runner = ReplyRunner(
            open_services,
            llm,
            sessions,
            bus,
            clock,
            settings,
            holder_prefix=f"{socket.gethostname()}:{os.getpid()}",
            embeddings=embeddings,
            policy=policy,
            handoffs=handoffs,
            summaries=summaries,
            spend=spend,
        )
        yield runner
        await runner.close()

    @provide
    def memory_policy(self, settings: Settings) -> MemoryPolicy:
        memory = settings.memory
        return MemoryPolicy(
            enabled=memory.enabled,
            expiry=ExpiryPolicy({kind: getattr(memory.expiry_days, kind.value) for kind in FactKind}),
            recall_token_budget=memory.recall_token_budget,
            recall_candidates=memory.recall_candidates,
            summary_max_chars=memory.summary_max_chars,
        )

    @provide
    def hot_state_eraser(self, valkey: Valkey, settings: Settings) -> HotStateEraser:
        # An erased feed's tombstone outlasts any turn still running: an hour beyond the longest wait for the lease.
        tombstone_ttl_s = TOMBSTONE_TTL_S + math.ceil(settings.conversations.reply_wait_s)
        return ValkeyHotStateEraser(valkey, settings.valkey.key_prefix, tombstone_ttl_s=tombstone_ttl_s)

    @provide
    def bootstrap_admin_key(self, settings: Settings) -> BootstrapAdminKey | None:
        return BootstrapAdminKey(settings.bootstrap_admin_key) if settings.bootstrap_admin_key else None

    @provide
    async def webhook_sender(self, settings: Settings) -> AsyncIterator[WebhookSender]:
        sender = HttpxWebhookSender(
            timeout_s=settings.webhooks.timeout_s, allow_private_targets=settings.private_webhook_targets_allowed
        )
        yield sender
        await sender.aclose()

    # One per process: the delivery rounds share what is in flight (DeliverWebhooks).
    deliveries_in_flight = provide(DeliveriesInFlight)

    @provide
    def webhook_target_policy(self, settings: Settings) -> WebhookTargetPolicy:
        return WebhookTargetPolicy(allow_private=settings.private_webhook_targets_allowed)

    @provide
    def webhook_delivery_policy(self, settings: Settings) -> WebhookDeliveryPolicy:
        webhooks = settings.webhooks
        return WebhookDeliveryPolicy(
            schedule=RetrySchedule(
                base_s=webhooks.backoff_base_s, cap_s=webhooks.backoff_cap_s, max_attempts=webhooks.max_attempts
            ),
            batch_size=webhooks.batch_size,
            per_endpoint=webhooks.per_endpoint,
            # Every send of a round ends within the timeout; twice that leaves room to record the outcomes.
            lease_s=2 * webhooks.timeout_s,
        )

    @provide
    def webhook_retention_policy(self, settings: Settings) -> WebhookRetentionPolicy:
        days = settings.webhooks.retention_days
        return WebhookRetentionPolicy(
            retention=timedelta(days=days) if days else None, batch_size=_RETENTION_BATCH_SIZE
        )


class PersistenceProvider(Provider):
    """One session per request, shared by its repositories and unit of work."""

    scope = Scope.REQUEST

    @provide
    async def session(self, factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
        session = factory()
        try:
            yield session
        finally:
            try:
                await session.close()
            except (SQLAlchemyError, OSError) as error:
                # The connection died under the request (a server restart): SQLAlchemy has dropped it from the
                # pool, and the request already answered 503. Failing the scope's exit would turn that into a 500.
                _logger.warning("closing a database session failed: %s", error)

    unit_of_work = provide(SqlAlchemyUnitOfWork, provides=UnitOfWork)
    api_keys = provide(PostgresApiKeyRepository, provides=ApiKeyRepository)
    knowledge = provide(PgVectorKnowledgeBase, provides=KnowledgeBase)
    conversations = provide(PostgresConversationRepository, provides=ConversationRepository)
    attachments = provide(PostgresAttachmentStore, provides=AttachmentStore)
    customer_memory = provide(PostgresCustomerMemory, provides=CustomerMemory)
    conversation_summaries = provide(PostgresSummaryStore, provides=SummaryStore)
    customer_records = provide(PostgresCustomerRecords, provides=CustomerRecords)
    # The outbox writes through the request's session: events commit with the use case's change.
    webhook_outbox = provide(PostgresWebhookOutbox, provides=WebhookOutbox)
    webhooks = provide(PostgresWebhookRepository, provides=WebhookRepository)
    webhook_deliveries = provide(PostgresWebhookDeliveryQueue, provides=WebhookDeliveryQueue)


class UseCaseProvider(Provider):
    scope = Scope.REQUEST

    create_api_key = provide(CreateApiKey)
    list_api_keys = provide(ListApiKeys)
    revoke_api_key = provide(RevokeApiKey)
    authenticate_api_key = provide(AuthenticateApiKey)
    ingest_document = provide(IngestDocument)
    ingest_documents = provide(IngestDocuments)
    get_document = provide(GetDocument)
    list_documents = provide(ListDocuments)
    delete_document = provide(DeleteDocument)
    rescan_knowledge = provide(RescanKnowledge)
    search_knowledge = provide(SearchKnowledge)
    verify_knowledge_index = provide(VerifyKnowledgeIndex)
    start_bulk_ingestion = provide(StartBulkIngestion)
    run_bulk_ingestion = provide(RunBulkIngestion)
    get_job = provide(GetJob)
    start_conversation = provide(StartConversation)
    issue_customer_token = provide(IssueCustomerToken)
    get_conversation = provide(GetConversation)
    list_conversations = provide(ListConversations)
    list_messages = provide(ListMessages)
    submit_feedback = provide(SubmitFeedback)
    close_conversation = provide(CloseConversation)
    sweep_idle_conversations = provide(SweepIdleConversations)
    get_attachment = provide(GetAttachment)
    prepare_attachments = provide(PrepareAttachments)
    send_message = provide(SendMessage)
    cached_conversation_state = provide(CachedConversationState)
    confirm_follower_access = provide(ConfirmFollowerAccess)
    remember_facts = provide(RememberFacts)
    remember_proposed_fact = provide(RememberProposedFact)
    recall_memories = provide(RecallMemories)
    fold_conversation_history = provide(FoldConversationHistory)
    get_customer_profile = provide(GetCustomerProfile)
    find_customer = provide(FindCustomer)
    list_memories = provide(ListMemories)
    forget_memory = provide(ForgetMemory)
    export_customer = provide(ExportCustomer)
    erase_customer = provide(EraseCustomer)
    request_handoff = provide(RequestHandoff)
    withdraw_handoff = provide(WithdrawHandoff)
    claim_conversation = provide(ClaimConversation)
    release_conversation = provide(ReleaseConversation)
    resolve_conversation = provide(ResolveConversation)
    send_agent_message = provide(SendAgentMessage)
    list_handoffs = provide(ListHandoffs)
    expire_handoffs = provide(ExpireHandoffs)
    requeue_agent_conversations = provide(RequeueAgentConversations, provides=ClaimedConversations)
    create_webhook = provide(CreateWebhook)
    list_webhooks = provide(ListWebhooks)
    get_webhook = provide(GetWebhook)
    delete_webhook = provide(DeleteWebhook)
    list_webhook_deliveries = provide(ListWebhookDeliveries)
    deliver_webhooks = provide(DeliverWebhooks)
    redeliver_webhook_delivery = provide(RedeliverWebhookDelivery)
    purge_webhook_deliveries = provide(PurgeWebhookDeliveries)

    @provide
    def check_readiness(self, probes: Sequence[HealthProbe]) -> CheckReadiness:
        return CheckReadiness(probes)


def build_container(settings: Settings, *overrides: Provider) -> AsyncContainer:
    """The dependency container for ``settings``; ``overrides`` are applied last and win."""
    return make_async_container(
        InfrastructureProvider(),
        PersistenceProvider(),
        UseCaseProvider(),
        LimitsProvider(),
        *overrides,
        context={Settings: settings},
    )


def create_app(settings: Settings | None = None, *overrides: Provider) -> Litestar:
    """The ASGI application (``uvicorn --factory support.container:create_app``)."""
    settings = settings or load_settings()
    configure_logging(settings)
    # A bad policy file or time zone stops the start, not the first handoff.
    check_settings(settings)
    container = build_container(settings, *overrides)

    async def start_job_worker() -> None:
        # The worker runs in this process (make run, one-box deployments); each job gets its own request scope.
        queue = await container.get(SaqJobQueue)

        async def ingest(payload: Mapping[str, Any], report: ProgressReporter) -> Mapping[str, Any]:
            async with container() as request:
                return await (await request.get(RunBulkIngestion)).execute(payload, report)

        queue.register(INGEST_JOB, ingest)
        queue.start_worker()

    sweeper: list[asyncio.Task[None]] = []

    async def start_idle_sweep() -> None:
        sweeper.append(asyncio.create_task(_sweep_idle(container, settings.conversations.sweep_interval_s)))

    async def stop_idle_sweep() -> None:
        for task in sweeper:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    webhook_worker: list[asyncio.Task[None]] = []

    async def start_webhook_worker() -> None:
        webhook_worker.append(asyncio.create_task(_deliver_webhooks(container, settings.webhooks)))

    async def stop_webhook_worker() -> None:
        # Sends cut short here are sent again when their claims' leases run out (at least once).
        for task in webhook_worker:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return build_app(
        settings,
        container,
        on_startup=[start_job_worker, start_idle_sweep, start_webhook_worker],
        on_shutdown=[stop_idle_sweep, stop_webhook_worker],
    )


async def _sweep_idle(container: AsyncContainer, interval_s: float) -> None:
    """Close idle conversations every ``interval_s``; a failed round is logged and retried next time."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with container() as request:
                closed = await (await request.get(SweepIdleConversations)).execute()
            if closed:
                _logger.info("closed %d idle conversations", closed)
            async with container() as request:
                expired = await (await request.get(ExpireHandoffs)).execute()
            if expired:
                _logger.info("gave %d unclaimed handoffs back to the assistant", expired)
        except Exception:
            _logger.exception("idle sweep failed")


async def _deliver_webhooks(container: AsyncContainer, settings: WebhookSettings) -> None:
    """Deliver due webhooks a round at a time, a new round every poll interval (at once after a full one).

    A round lasts as long as its slowest receiver (up to the send timeout), so rounds overlap: while one waits
    for a slow endpoint the next starts on time, up to ``settings.rounds`` at once, and other endpoints' events
    are not held up (what an endpoint has in flight is capped across rounds: DeliveriesInFlight). A round that
    fails pauses the worker, whenever it ends. Between rounds, every few minutes, old finished deliveries are
    deleted (when retention is on).
    """
    loop = asyncio.get_running_loop()
    next_sweep = loop.time()
    paused_until = loop.time()
    running: set[asyncio.Task[int | None]] = set()

    def ended(task: "asyncio.Task[int | None]") -> None:
        nonlocal paused_until
        running.discard(task)
        if not task.cancelled() and task.result() is None:
            # Claims of a failed round stay leased and are retried; don't spin on a database that is down.
            paused_until = max(paused_until, loop.time() + _FAILED_ROUND_PAUSE_S)

    try:
        while True:
            if len(running) >= settings.rounds:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            if loop.time() < paused_until:
                await asyncio.sleep(paused_until - loop.time())
                continue
            current = asyncio.create_task(_delivery_round(container))
            running.add(current)
            current.add_done_callback(ended)
            done, _ = await asyncio.wait({current}, timeout=settings.poll_interval_s)
            if current in done and (current.result() or 0) < settings.batch_size:
                await asyncio.sleep(settings.poll_interval_s)
            if settings.retention_days and loop.time() >= next_sweep:
                more = await _purge_webhook_deliveries(container)
                next_sweep = loop.time() + (0 if more else _RETENTION_SWEEP_INTERVAL_S)
    finally:
        # Sends cut short here are sent again when their claims' leases run out (at least once).
        rounds = list(running)
        for task in rounds:
            task.cancel()
        await asyncio.gather(*rounds, return_exceptions=True)


async def _delivery_round(container: AsyncContainer) -> int | None:
    """One round of deliveries in its own scope: how many were attempted, None when the round failed."""
    try:
        async with container() as request:
            return await (await request.get(DeliverWebhooks)).execute()
    except DependencyUnavailableError:
        _logger.warning("webhook delivery paused: a dependency is unavailable")
    except Exception:
        _logger.exception("webhook delivery round failed")
    return None


async def _purge_webhook_deliveries(container: AsyncContainer) -> bool:
    """One step of the retention sweep; whether a full batch was deleted (so more may be left)."""
    try:
        async with container() as request:
            deleted = await (await request.get(PurgeWebhookDeliveries)).execute()
    except DependencyUnavailableError:
        _logger.warning("webhook retention sweep skipped: a dependency is unavailable")
        return False
    except Exception:
        _logger.exception("webhook retention sweep failed")
        return False
    if deleted:
        _logger.info("deleted %d webhook deliveries past their retention", deleted)
    return deleted >= _RETENTION_BATCH_SIZE
