"""What the Claude adapter's tests share: the fake Messages API, an adapter factory and the tools a reply calls."""

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from support.adapters.anthropic import AnthropicLLM
from support.domain.assistant import ReplyEvent, ReplyRequest
from support.domain.knowledge import SearchHit
from support.ports.errors import EmbedderUnavailableError
from tests.fakes.anthropic_server import DEFAULT_MODEL, FakeAnthropic


@dataclass
class FakeTools:
    """The tools a reply may call: canned search results per query, or a failing search."""

    results: Mapping[str, Sequence[SearchHit]] = field(default_factory=dict)
    failing: bool = False
    queries: list[str] = field(default_factory=list)

    async def search_knowledge(self, query: str) -> Sequence[SearchHit]:
        self.queries.append(query)
        if self.failing:
            raise EmbedderUnavailableError
        return self.results.get(query, ())


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def make_llm(api: FakeAnthropic) -> AsyncIterator[Callable[..., AnthropicLLM]]:
    """Adapters pointed at the fake API; keyword arguments override the defaults. All are closed afterwards."""
    created: list[AnthropicLLM] = []

    def make(**options: Any) -> AnthropicLLM:
        settings: dict[str, Any] = {
            "model": DEFAULT_MODEL,
            "max_tokens": 512,
            "temperature": 0.2,
            "company_name": "Acme",
            "persona": "a friendly support assistant",
            "api_key": "sk-ant-test",
            "base_url": api.base_url,
            "timeout_s": 5.0,
            "max_retries": 2,
            "history_token_budget": 3000,
            "max_tool_rounds": 2,
            "retry_base_delay_s": 0.01,
            "retry_max_delay_s": 0.2,
        } | options
        llm = AnthropicLLM(**settings)
        created.append(llm)
        return llm

    yield make
    for llm in created:
        await llm.aclose()


async def collect(llm: AnthropicLLM, request: ReplyRequest, tools: FakeTools | None = None) -> list[ReplyEvent]:
    return [event async for event in llm.reply(request, tools or FakeTools())]
