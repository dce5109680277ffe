"""A live server (uvicorn on a free port) with a scripted model, for streaming and WebSocket tests."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from dishka import Provider, Scope
from litestar import Litestar

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.config import Settings
from support.container import create_app
from support.ports.assistant import LLM
from tests.conftest import ADMIN_KEY, shared_embedder_provider
from tests.fakes.anthropic_server import FakeAnthropic, citing_reply
from tests.fakes.llm import ScriptedLLM


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


def llm_provider(llm: LLM) -> Provider:
    provider = Provider(scope=Scope.APP)
    provider.provide(lambda: llm, provides=LLM, override=True)
    return provider


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    return settings


@pytest.fixture
def chat_app(chat_settings: Settings, embedder: OnnxMiniLMEmbedder, llm: ScriptedLLM) -> Litestar:
    return create_app(chat_settings, shared_embedder_provider(embedder), llm_provider(llm))


@asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port, in this event loop; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def live(chat_app: Litestar) -> AsyncIterator[str]:
    """The base URL of the application served over real HTTP."""
    async with serve(chat_app) as url:
        yield url


@pytest.fixture
async def http(live: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live, timeout=30) as client:
        yield client


@pytest.fixture
def service_headers() -> dict[str, str]:
    # The bootstrap admin acts as the company's backend in these tests; service keys are tested separately.
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    """A fake Messages API that answers every request with a reply citing the first passage it was given."""
    async with FakeAnthropic(default=citing_reply) as server:
        yield server
