"""Customers chatting against a served app while a fault is injected: sends, their outcomes, transcripts."""

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
from dishka import Provider, Scope
from httpx_sse import aconnect_sse

from support.domain.assistant import ReplyEvent, ReplyRequest
from support.ports.assistant import LLM, AssistantTools
from tests.fakes.llm import Script, ScriptedLLM

# No request may take longer than this, whatever is down (proves no hang, not a latency: the machine is shared).
REQUEST_BOUND_S = 20.0
REFUNDS = "# Refunds\n\nRefunds go back to the original card within 5 to 10 business days."
_TAG = re.compile(r"\[(c\d+)\]")


@dataclass
class OverlapWatchingLLM:
    """The scripted model, recording when two replies of one conversation (``[cN]`` in the text) overlap."""

    inner: ScriptedLLM = field(default_factory=lambda: ScriptedLLM(Script(delay_s=0.02)))
    active: Counter[str] = field(default_factory=Counter)
    overlaps: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    async def reply(self, request: ReplyRequest, tools: AssistantTools) -> AsyncIterator[ReplyEvent]:
        tags = set(_TAG.findall(request.question))
        for tag in tags:
            self.active[tag] += 1
            if self.active[tag] > 1:
                self.overlaps.append(tag)
        try:
            async for event in self.inner.reply(request, tools):
                yield event
        finally:
            for tag in tags:
                self.active[tag] -= 1


def llm_provider(llm: LLM) -> Provider:
    provider = Provider(scope=Scope.APP)
    provider.provide(lambda: llm, provides=LLM, override=True)
    return provider


@dataclass
class Outcome:
    """One send: what came back and when (``time.monotonic`` clock)."""

    content: str
    kind: str  # "json" or "stream"
    key: str  # its Idempotency-Key
    started: float
    elapsed_s: float = 0.0
    status: int = 0
    code: str | None = None  # the problem code of a refused send, or of an error event that ended its stream
    replied: bool = False
    event_ids: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def check_refusal(outcome: Outcome, response: httpx.Response, codes: set[str]) -> None:
    """A refused send is a 503 problem with Retry-After and one of ``codes``; nothing else may come of a fault."""
    if outcome.accepted:
        return
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    outcome.code = response.json()["code"]
    assert outcome.code in codes, response.text


async def send(
    client: httpx.AsyncClient,
    conversation: dict[str, Any],
    content: str,
    kind: str,
    *,
    key: str | None = None,
    refusals: frozenset[str] = frozenset({"storage_unavailable", "cache_unavailable"}),
) -> Outcome:
    """Send ``content`` as JSON or as a streamed send, and read the answer to its end."""
    path = f"/v1/conversations/{conversation['id']}/messages"
    outcome = Outcome(content, kind, key or str(uuid4()), time.monotonic())
    headers = {"Authorization": f"Bearer {conversation['customer_token']}", "Idempotency-Key": outcome.key}
    if kind == "json":
        response = await client.post(path, json={"content": content}, headers=headers)
        outcome.status = response.status_code
        check_refusal(outcome, response, set(refusals))
        if outcome.accepted:
            reply = response.json()["reply"]
            outcome.replied = reply is not None and bool(reply["content"])
    else:
        async with aconnect_sse(client, "POST", f"{path}/stream", json={"content": content}, headers=headers) as source:
            outcome.status = source.response.status_code
            if not outcome.accepted:
                await source.response.aread()
                check_refusal(outcome, source.response, set(refusals))
            else:
                async for event in source.aiter_sse():
                    if event.id:
                        outcome.event_ids.append(int(event.id))
                    if event.event == "done":
                        outcome.replied = bool(event.json()["content"])
                    elif event.event == "error":
                        outcome.code = event.json()["code"]
                        assert outcome.code in refusals, event.data
    outcome.elapsed_s = time.monotonic() - outcome.started
    return outcome


async def chat(
    client: httpx.AsyncClient,
    conversation: dict[str, Any],
    tag: str,
    stop: asyncio.Event,
    outcomes: list[Outcome],
    **options: Any,
) -> None:
    """One customer sending messages back to back, alternating JSON and streamed sends, until ``stop``."""
    turn = 0
    while not stop.is_set():
        turn += 1
        kind = "json" if turn % 2 else "stream"
        content = f"[{tag}] How long do refunds take? (turn {turn})"
        outcome = await asyncio.wait_for(send(client, conversation, content, kind, **options), REQUEST_BOUND_S)
        outcomes.append(outcome)
        # A refused client backs off (shorter than the Retry-After it was given, to keep tests short).
        await asyncio.sleep(0.02 if outcome.accepted and outcome.code is None else 0.5)


async def start_conversations(client: httpx.AsyncClient, admin: dict[str, str], count: int) -> list[dict[str, Any]]:
    """A help-center article and ``count`` conversations, each with its customer token."""
    added = await client.post("/v1/knowledge/documents", json={"content": REFUNDS}, headers=admin)
    assert added.status_code == 201, added.text
    conversations = []
    for index in range(count):
        started = await client.post(
            "/v1/conversations", json={"customer": {"external_id": f"fault-customer-{index}"}}, headers=admin
        )
        assert started.status_code == 201, started.text
        conversations.append(started.json())
    return conversations


async def transcript(client: httpx.AsyncClient, admin: dict[str, str], conversation_id: str) -> list[dict[str, Any]]:
    """Every message of the conversation, oldest first."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"/v1/conversations/{conversation_id}/messages", params=params, headers=admin)
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return items


def customer_messages(items: list[dict[str, Any]], tag: str) -> list[str]:
    """The texts of the customer messages sent by :func:`chat` under ``tag``."""
    return [item["content"] for item in items if item["role"] == "customer" and item["content"].startswith(f"[{tag}]")]
