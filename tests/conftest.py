"""Session-wide servers and the application under test.

PostgreSQL and Valkey are real servers: embedded ones started once per session in a temporary folder, or the
servers named by ``SUPPORT_TEST_DATABASE_URL`` / ``SUPPORT_TEST_VALKEY_URL``. Tests that use them are marked
``postgres`` / ``valkey`` automatically; each such test starts from empty tables and an empty Valkey database.
"""

import concurrent.futures
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import pytest
import sqlalchemy as sa
from dishka import Provider, Scope
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from valkey.asyncio import Valkey

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.postgres.engine import asyncpg_url
from support.adapters.postgres.models import metadata
from support.cli import migrations
from support.config import LimitSettings, Settings
from support.container import create_app
from support.devservers.postgres import EmbeddedPostgres
from support.devservers.valkey import EmbeddedValkey
from support.ports.knowledge import Embedder

ADMIN_KEY = "test-bootstrap-admin-key"
UNTHROTTLED = LimitSettings(
    per_key=1_000_000,
    per_customer=1_000_000,
    per_ip=1_000_000,
    per_conversation=1_000_000,
    daily_tokens_per_customer=1_000_000_000,
)
POSTGRES_FIXTURES = frozenset({"database_url", "engine", "client", "settings", "app"})
VALKEY_FIXTURES = frozenset({"valkey_url", "valkey", "client", "settings", "app"})
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)
        if fixtures & VALKEY_FIXTURES:
            item.add_marker(pytest.mark.valkey)


def in_thread(function: Callable[[], T]) -> T:
    """Run blocking code that calls ``asyncio.run`` (Alembic's env) away from the test event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server URL (database ``support_test``), migrated to head."""
    external = os.environ.get("SUPPORT_TEST_DATABASE_URL")
    if external:
        in_thread(lambda: migrations.upgrade(external))
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data", durable=False, database="support_test")
    url = server.start()
    try:
        in_thread(lambda: migrations.upgrade(url))
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("SUPPORT_TEST_VALKEY_URL")
    if external:
        yield external
        return
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), durable=False)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def _session_engine(postgres_server: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(asyncpg_url(postgres_server), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def _session_valkey(valkey_server: str) -> AsyncIterator[Valkey]:
    client = Valkey.from_url(valkey_server)
    yield client
    await client.aclose()


async def _reset(engine: AsyncEngine, valkey: Valkey) -> None:
    tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        # The migration seeds the BM25 corpus statistics' single row; without it the lexical ranking is empty.
        await connection.execute(sa.text("INSERT INTO kb_corpus (id, chunks, total_tokens) VALUES (1, 0, 0)"))
    await valkey.flushdb()


@pytest.fixture
async def database_url(postgres_server: str, _session_engine: AsyncEngine, _session_valkey: Valkey) -> str:
    """The test database, emptied before the test."""
    await _reset(_session_engine, _session_valkey)
    return postgres_server


@pytest.fixture
async def engine(database_url: str, _session_engine: AsyncEngine) -> AsyncEngine:
    """An engine on the emptied test database, for asserting on stored rows."""
    return _session_engine


@pytest.fixture
async def valkey_url(valkey_server: str, _session_valkey: Valkey) -> str:
    await _session_valkey.flushdb()
    return valkey_server


@pytest.fixture
async def valkey(valkey_url: str, _session_valkey: Valkey) -> Valkey:
    return _session_valkey


@pytest.fixture
def settings(database_url: str, valkey_url: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        valkey_url=valkey_url,
        bootstrap_admin_key=ADMIN_KEY,
        log_level="warning",
        # Limits stay on (every request goes through them) but far above what any test sends;
        # tests/api/test_rate_limits.py sets its own.
        limits=UNTHROTTLED,
    )


@pytest.fixture(scope="session")
def embedder() -> Iterator[OnnxMiniLMEmbedder]:
    """The real local embedding model, loaded once for the session."""
    model = OnnxMiniLMEmbedder()
    yield model
    model.close()


def shared_embedder_provider(embedder: Embedder) -> Provider:
    """Apps under test reuse the session's model instead of loading their own."""
    provider = Provider(scope=Scope.APP)
    provider.provide(lambda: embedder, provides=Embedder, override=True)
    return provider


@pytest.fixture
def app(settings: Settings, embedder: OnnxMiniLMEmbedder) -> Litestar:
    return create_app(settings, shared_embedder_provider(embedder))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A client of the real application (real container, PostgreSQL and Valkey); no credentials set."""
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}
