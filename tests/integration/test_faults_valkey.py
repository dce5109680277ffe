"""Fault injection: Valkey dies while customers chat, then comes back on the same port.

What each endpoint does meanwhile (docs/faults.md):

- ``POST …/messages`` and ``POST …/messages/stream`` keep answering: the message is committed in PostgreSQL, the
  reply lease comes from a PostgreSQL advisory lock, the query embedding is computed without its cache, and the
  reply streams to the sender (its events carry no resumable id) and is stored. Nothing is published to other
  feeds.
- ``GET …/events`` can't follow a feed without Valkey: the stream ends with an ``error`` event
  (``cache_unavailable``, status 503) within the event bus's reconnect grace.
- Once Valkey is back, new connections work again without a restart: the live feed delivers new events.

These tests kill servers, so they use their own embedded servers, never the session ones.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any
from uuid import uuid4

import httpx
import pytest
from httpx_sse import aconnect_sse

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.valkey.jobs import SaqJobQueue
from support.config import LimitSettings, Settings
from support.container import create_app
from support.devservers.valkey import EmbeddedValkey
from support.ports.errors import CacheUnavailableError
from support.ports.jobs import ProgressReporter
from tests.api.conftest import serve
from tests.conftest import shared_embedder_provider
from tests.integration.chat_traffic import (
    REQUEST_BOUND_S,
    Outcome,
    OverlapWatchingLLM,
    chat,
    check_refusal,
    customer_messages,
    llm_provider,
    send,
    start_conversations,
    transcript,
)
from tests.integration.servers import Servers, own_servers

pytestmark = pytest.mark.slow

ADMIN_KEY = "valkey-fault-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CONVERSATIONS = 4
OUTAGE_S = 3.0
RECOVER_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with own_servers(tmp_path_factory.mktemp("valkey-faults"), durable_postgres=False) as started:
        yield started


async def _feed_works(client: httpx.AsyncClient, conversation: dict[str, Any]) -> bool:
    """The feed replays a stored event with its id, then delivers a new one live.

    A message is sent first and the feed is read from ``Last-Event-ID: 0``: once its echo is replayed the
    subscription is surely in place, so the second message must arrive live.
    """
    headers = {"Authorization": f"Bearer {conversation['customer_token']}"}
    path = f"/v1/conversations/{conversation['id']}"
    first, second = f"feed check {uuid4()}", f"feed check {uuid4()}"
    seen: dict[str, int] = {}
    sent = await client.post(f"{path}/messages", json={"content": first}, headers=headers)
    async with aconnect_sse(client, "GET", f"{path}/events", headers={**headers, "Last-Event-ID": "0"}) as source:
        if sent.status_code != 200 or source.response.status_code != 200:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                async for event in source.aiter_sse():
                    if event.event == "error":
                        break
                    if event.event != "message":
                        continue
                    content = event.json()["content"]
                    seen[content] = int(event.id or 0)
                    if content == second:
                        break
                    if content == first:
                        await client.post(f"{path}/messages", json={"content": second}, headers=headers)
    return second in seen and all(event_id > 0 for event_id in seen.values())


async def _assert_feed_refused(client: httpx.AsyncClient, conversation: dict[str, Any]) -> None:
    """Following a feed without Valkey ends in bounded time with ``cache_unavailable``, never a 500."""
    headers = {"Authorization": f"Bearer {conversation['customer_token']}"}
    started = time.monotonic()
    async with aconnect_sse(client, "GET", f"/v1/conversations/{conversation['id']}/events", headers=headers) as source:
        if source.response.status_code == 200:
            failures = [event async for event in source.aiter_sse() if event.event == "error"]
            assert [failure.json()["code"] for failure in failures] == ["cache_unavailable"]
            assert failures[0].json()["status"] == 503
        else:
            await source.response.aread()
            check_refusal(Outcome("", "feed", "", 0, status=source.response.status_code), source.response, set())
    assert time.monotonic() - started < REQUEST_BOUND_S


async def _chat_through_an_outage(
    client: httpx.AsyncClient, conversations: list[dict[str, Any]], valkey: EmbeddedValkey
) -> tuple[list[Outcome], float, float]:
    """Customers chat; Valkey is killed for ``OUTAGE_S`` and restarted. Every send's outcome, and the outage."""
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    chatting = [
        asyncio.create_task(chat(client, conversation, f"c{index}", stop, outcomes))
        for index, conversation in enumerate(conversations)
    ]
    try:
        await asyncio.sleep(1.0)
        outage_started = time.monotonic()
        await asyncio.to_thread(valkey.kill)
        try:
            await _assert_feed_refused(client, conversations[0])
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        finally:
            outage_ended = time.monotonic()
            await asyncio.to_thread(valkey.restart)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*chatting)
    return outcomes, outage_started, outage_ended


async def _assert_nothing_lost(
    client: httpx.AsyncClient, conversations: list[dict[str, Any]], outcomes: list[Outcome]
) -> None:
    """Every accepted message is in the transcript, once, and every customer message was answered."""
    for index, conversation in enumerate(conversations):
        items = await transcript(client, ADMIN, conversation["id"])
        sent = [item.content for item in outcomes if item.accepted and item.content.startswith(f"[c{index}]")]
        assert sorted(customer_messages(items, f"c{index}")) == sorted(sent)
        answered = {message_id for item in items if item["role"] == "assistant" for message_id in item["reply_to"]}
        assert {item["id"] for item in items if item["role"] == "customer"} <= answered


async def test_chat_keeps_answering_while_valkey_is_down_and_the_feed_recovers(
    servers: Servers, embedder: OnnxMiniLMEmbedder
) -> None:
    settings = Settings(
        env="test",
        database_url=servers.database_url,
        valkey_url=servers.valkey_url,
        bootstrap_admin_key=ADMIN_KEY,
        log_level="error",
        # These customers send far faster than the rate limits allow (they fail open without Valkey anyway).
        limits=LimitSettings(enabled=False),
    )
    llm = OverlapWatchingLLM()
    app = create_app(settings, shared_embedder_provider(embedder), llm_provider(llm))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=REQUEST_BOUND_S) as client:
        conversations = await start_conversations(client, ADMIN, CONVERSATIONS)
        assert await _feed_works(client, conversations[0])

        outcomes, outage_started, outage_ended = await _chat_through_an_outage(client, conversations, servers.valkey)

        during = [item for item in outcomes if outage_started <= item.started < outage_ended]
        assert during, "no send went out while Valkey was down"
        # Degraded, not down: sends during the outage were stored and answered, both ways.
        answered = [item for item in during if item.accepted and item.replied]
        assert {item.kind for item in answered} == {"json", "stream"}, [(item.status, item.code) for item in during]
        for item in outcomes:
            assert item.accepted or item.code is not None, item
            assert item.elapsed_s < REQUEST_BOUND_S, item
        # One writer of replies per conversation, Valkey or not (the lease came from PostgreSQL meanwhile).
        assert llm.overlaps == []
        await _assert_nothing_lost(client, conversations, outcomes)

        # Valkey is back: new connections work again, and the live feed delivers new events (with ids).
        deadline = time.monotonic() + RECOVER_WITHIN_S
        while not await _feed_works(client, conversations[1]):
            assert time.monotonic() < deadline, "the live feed did not recover"
            await asyncio.sleep(0.5)
        recovered = await send(client, conversations[2], "[c2] And for PayPal?", "stream")
        assert recovered.replied
        assert recovered.event_ids
        assert all(event_id > 0 for event_id in recovered.event_ids)
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text


async def test_the_job_worker_waits_out_an_outage_without_spinning_and_then_runs_jobs(servers: Servers) -> None:
    queue = SaqJobQueue(servers.valkey_url, name=f"faults-{uuid4()}")
    await queue.connect()
    ran = asyncio.Event()

    async def job(payload: Mapping[str, Any], report: ProgressReporter) -> Mapping[str, Any]:
        ran.set()
        return {}

    queue.register("fault-check", job)
    queue.start_worker()
    dequeues = 0
    original = queue._queue.dequeue

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal dequeues
        dequeues += 1
        return await original(*args, **kwargs)

    queue._queue.dequeue = counted  # type: ignore[method-assign]
    try:
        await asyncio.to_thread(servers.valkey.kill)
        try:
            await asyncio.sleep(2.0)
        finally:
            await asyncio.to_thread(servers.valkey.restart)
        # SAQ polls again as soon as a dequeue fails; the queue backs off instead (0.1 s, doubling, up to 5 s).
        assert dequeues < 20
        deadline = time.monotonic() + RECOVER_WITHIN_S
        while True:
            try:
                await queue.enqueue("fault-check", {}, timeout_s=10)
                break
            except CacheUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await asyncio.wait_for(ran.wait(), RECOVER_WITHIN_S)
    finally:
        await queue.close()


async def test_the_job_queue_reports_valkey_down_as_cache_unavailable(servers: Servers) -> None:
    # SAQ talks to Valkey through redis-py: its errors were neither Valkey's nor OSError, and a bulk upload or a
    # job's status during an outage answered 500 (found by an exploratory test).
    queue = SaqJobQueue(servers.valkey_url, name=f"faults-{uuid4()}")
    await queue.connect()
    try:
        await asyncio.to_thread(servers.valkey.kill)
        try:
            with pytest.raises(CacheUnavailableError):
                await queue.enqueue("fault-check", {}, timeout_s=10)
            with pytest.raises(CacheUnavailableError):
                await queue.get("no-such-job")
        finally:
            await asyncio.to_thread(servers.valkey.restart)
    finally:
        with contextlib.suppress(Exception):
            await queue.close()
