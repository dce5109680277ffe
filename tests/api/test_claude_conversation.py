"""The whole path with Claude: the app configured with an Anthropic key talks to a fake Messages API over HTTP."""

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.config import Settings
from support.container import create_app
from tests.api.conftest import serve
from tests.conftest import shared_embedder_provider
from tests.fakes.anthropic_server import FakeAnthropic, overloaded

REFUNDS = "# Refunds\n\nRefunds go back to the original card within 5 to 10 business days."


@pytest.fixture
async def claude_client(
    settings: Settings,
    embedder: OnnxMiniLMEmbedder,
    anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[httpx.AsyncClient]:
    # The SDK's own variable switches the service from the offline responder to Claude.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    claude = msgspec.structs.replace(
        settings, llm=type(settings.llm)(base_url=anthropic.base_url, max_retries=1, timeout_s=5)
    )
    # Served over HTTP in this event loop, which also runs the fake Messages API.
    async with (
        serve(create_app(claude, shared_embedder_provider(embedder))) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


async def test_a_turn_with_claude_cites_the_knowledge_base(
    claude_client: httpx.AsyncClient, admin_headers: dict[str, str], anthropic: FakeAnthropic
) -> None:
    added = await claude_client.post(
        "/v1/knowledge/documents",
        json={"content": REFUNDS, "external_id": "refunds", "url": "https://help.example.com/refunds"},
        headers=admin_headers,
    )
    assert added.status_code == 201
    started = (
        await claude_client.post("/v1/conversations", json={"customer": {"external_id": "c"}}, headers=admin_headers)
    ).json()

    response = await claude_client.post(
        f"/v1/conversations/{started['id']}/messages",
        json={"content": "How long do refunds take?"},
        headers={"Authorization": f"Bearer {started['customer_token']}"},
    )

    reply = response.json()["reply"]
    assert reply["author"] == "claude-sonnet-4-6"
    assert "5 to 10 business days" in reply["content"]
    assert reply["citations"][0]["url"] == "https://help.example.com/refunds"
    assert reply["answer_status"] == "answered"
    sent = anthropic.requests[-1]
    assert sent.headers["authorization"] == "Bearer sk-ant-test"
    assert "How long do refunds take?" in str(sent.messages[-1]["content"])


async def test_claude_staying_overloaded_gets_a_graceful_offer(
    claude_client: httpx.AsyncClient, admin_headers: dict[str, str], anthropic: FakeAnthropic
) -> None:
    anthropic.script(*(overloaded() for _ in range(5)))
    started = (
        await claude_client.post("/v1/conversations", json={"customer": {"external_id": "c"}}, headers=admin_headers)
    ).json()

    response = await claude_client.post(
        f"/v1/conversations/{started['id']}/messages", json={"content": "hello"}, headers=admin_headers
    )

    assert response.status_code == 200
    reply = response.json()["reply"]
    assert reply["decision"]["reason_code"] == "llm_unavailable"
    assert reply["answer_status"] == "insufficient_evidence"


GUIDE = """# Refund guide

## Eligibility

Unworn items qualify for a refund within 30 days of delivery.

## Timing

Refunds go back to the original card within 5 to 10 business days.

## Exceptions

Gift cards and final-sale items cannot be refunded.

## Store credit

Store credit never expires and can be used on any order.
"""


async def test_claude_is_given_the_ranked_chunk_with_its_neighbours(
    claude_client: httpx.AsyncClient, admin_headers: dict[str, str], anthropic: FakeAnthropic
) -> None:
    added = await claude_client.post(
        "/v1/knowledge/documents", json={"content": GUIDE, "external_id": "guide"}, headers=admin_headers
    )
    assert added.json()["document"]["chunk_count"] == 4
    started = (
        await claude_client.post("/v1/conversations", json={"customer": {"external_id": "c"}}, headers=admin_headers)
    ).json()

    await claude_client.post(
        f"/v1/conversations/{started['id']}/messages",
        json={"content": "How many business days until the refund reaches my card?"},
        headers={"Authorization": f"Bearer {started['customer_token']}"},
    )

    [result] = [block for block in anthropic.requests[-1].messages[-1]["content"] if block["type"] == "search_result"]
    paragraphs = " ".join(block["text"] for block in result["content"])
    # SUPPORT_LLM__CLAUDE_CONTEXT_CHUNKS (1): the Timing chunk ranked, with one chunk on each side of it.
    assert "5 to 10 business days" in paragraphs
    assert "Unworn items qualify" in paragraphs
    assert "Gift cards and final-sale items" in paragraphs
    assert "Store credit never expires" not in paragraphs
