from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from dishka import AsyncContainer, Provider, Scope, make_async_container, provide
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from valkey.asyncio import Valkey

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.embedding.http_openai import OpenAICompatibleEmbedder
from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.extraction.extractor import StructuredTextExtractor
from support.adapters.postgres.api_keys import PostgresApiKeyRepository
from support.adapters.postgres.engine import create_engine, create_session_factory
from support.adapters.postgres.health import PostgresHealthProbe
from support.adapters.postgres.knowledge import PgVectorKnowledgeBase
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.system import SystemClock
from support.adapters.valkey.cache import ValkeyCache
from support.adapters.valkey.client import create_client
from support.adapters.valkey.health import ValkeyHealthProbe
from support.adapters.valkey.jobs import SaqJobQueue
from support.api.app import build_app
from support.application.health import CheckReadiness
from support.application.keys import AuthenticateApiKey, BootstrapAdminKey, CreateApiKey, ListApiKeys, RevokeApiKey
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
    RunBulkIngestion,
    SearchKnowledge,
    StartBulkIngestion,
    VerifyKnowledgeIndex,
)
from support.config import Settings, SettingsError, load_settings
from support.observability import configure_logging
from support.ports.identity import ApiKeyRepository
from support.ports.jobs import JobQueue, ProgressReporter
from support.ports.knowledge import Cache, Embedder, KnowledgeBase, TextExtractor
from support.ports.system import Clock, HealthProbe, UnitOfWork


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
            local = OnnxMiniLMEmbedder(batch_size=embedding.batch_size, intra_op_threads=embedding.threads)
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
    def bootstrap_admin_key(self, settings: Settings) -> BootstrapAdminKey | None:
        return BootstrapAdminKey(settings.bootstrap_admin_key) if settings.bootstrap_admin_key else None


class PersistenceProvider(Provider):
    """One session per request, shared by its repositories and unit of work."""

    scope = Scope.REQUEST

    @provide
    async def session(self, factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
        async with factory() as session:
            yield session

    unit_of_work = provide(SqlAlchemyUnitOfWork, provides=UnitOfWork)
    api_keys = provide(PostgresApiKeyRepository, provides=ApiKeyRepository)
    knowledge = provide(PgVectorKnowledgeBase, provides=KnowledgeBase)


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
    search_knowledge = provide(SearchKnowledge)
    verify_knowledge_index = provide(VerifyKnowledgeIndex)
    start_bulk_ingestion = provide(StartBulkIngestion)
    run_bulk_ingestion = provide(RunBulkIngestion)
    get_job = provide(GetJob)

    @provide
    def check_readiness(self, probes: Sequence[HealthProbe]) -> CheckReadiness:
        return CheckReadiness(probes)


def build_container(settings: Settings, *overrides: Provider) -> AsyncContainer:
    """The dependency container for ``settings``; ``overrides`` are applied last and win."""
    return make_async_container(
        InfrastructureProvider(),
        PersistenceProvider(),
        UseCaseProvider(),
        *overrides,
        context={Settings: settings},
    )


def create_app(settings: Settings | None = None, *overrides: Provider) -> Litestar:
    """The ASGI application (``uvicorn --factory support.container:create_app``)."""
    settings = settings or load_settings()
    configure_logging(settings)
    container = build_container(settings, *overrides)

    async def start_job_worker() -> None:
        # The worker runs in this process (make run, one-box deployments); each job gets its own request scope.
        queue = await container.get(SaqJobQueue)

        async def ingest(payload: Mapping[str, Any], report: ProgressReporter) -> Mapping[str, Any]:
            async with container() as request:
                return await (await request.get(RunBulkIngestion)).execute(payload, report)

        queue.register(INGEST_JOB, ingest)
        queue.start_worker()

    return build_app(settings, container, on_startup=[start_job_worker])
