"""Fault injection: PostgreSQL crashes while customers chat, and restarts on the same port and data folder.

PostgreSQL holds the truth, so nothing can be answered without it: sends during the outage get 503
``storage_unavailable`` with ``Retry-After`` (or, for a stream that had already begun, an ``error`` event with
that code), never a 500 and never a hang. A send that was answered 2xx was committed, and the cluster is durable
(fsync on), so it survives the crash. Once the server is back the app recovers by itself, with or without
``pool_pre_ping``: without it, the first statement on a dead pooled connection fails as a disconnect, and
SQLAlchemy then invalidates every connection pooled before that moment, so the next requests connect afresh.
A refused send retried with its Idempotency-Key is stored exactly once.

These tests crash servers, so they use their own embedded servers, never the session ones.
"""

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.postgres import engine as engine_module
from support.config import LimitSettings, Settings
from support.container import create_app
from support.devservers.postgres import EmbeddedPostgres
from tests.api.conftest import serve
from tests.conftest import shared_embedder_provider
from tests.integration.chat_traffic import (
    REQUEST_BOUND_S,
    Outcome,
    OverlapWatchingLLM,
    chat,
    customer_messages,
    llm_provider,
    send,
    start_conversations,
    transcript,
)
from tests.integration.servers import Servers, own_servers

pytestmark = pytest.mark.slow

ADMIN_KEY = "postgres-fault-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CONVERSATIONS = 4
DOWN_S = 2.0
RECOVER_WITHIN_S = 20.0
# Sends in a row that must all succeed once recovered: more than the pool holds, so no stale connection hides.
AFTER_RECOVERY = 30
REFUSALS = frozenset({"storage_unavailable"})


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    # Durable: an acknowledged commit must survive the crash (throwaway test clusters run with fsync off).
    with own_servers(tmp_path_factory.mktemp("postgres-faults"), durable_postgres=True) as started:
        yield started


async def _recovered(client: httpx.AsyncClient, conversation: dict[str, Any]) -> float:
    """Seconds until a send is answered again."""
    started = time.monotonic()
    while True:
        outcome = await send(client, conversation, "[probe] Are you back?", "json", refusals=REFUSALS)
        if outcome.accepted and outcome.replied:
            return time.monotonic() - started
        assert time.monotonic() - started < RECOVER_WITHIN_S, "the app did not recover by itself"
        await asyncio.sleep(0.2)


async def _chat_through_a_crash(
    client: httpx.AsyncClient, conversations: list[dict[str, Any]], postgres: EmbeddedPostgres
) -> tuple[list[Outcome], float, float]:
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    chatting = [
        asyncio.create_task(chat(client, conversation, f"c{index}", stop, outcomes, refusals=REFUSALS))
        for index, conversation in enumerate(conversations)
    ]
    try:
        await asyncio.sleep(1.0)
        crashed = time.monotonic()
        await asyncio.to_thread(postgres.kill)
        try:
            await asyncio.sleep(DOWN_S)
        finally:
            restarted = time.monotonic()
            await asyncio.to_thread(postgres.restart)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*chatting)
    return outcomes, crashed, restarted


@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "no-pre-ping"])
async def test_sends_are_refused_cleanly_while_postgres_restarts_and_nothing_accepted_is_lost(
    servers: Servers, embedder: OnnxMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch, pre_ping: bool
) -> None:
    # The production engine with pre-ping set either way: without it, recovery comes from disconnect handling.
    monkeypatch.setattr(
        engine_module,
        "create_async_engine",
        lambda *args, **kwargs: create_async_engine(*args, **{**kwargs, "pool_pre_ping": pre_ping}),
    )
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
        outcomes, crashed, restarted = await _chat_through_a_crash(client, conversations, servers.postgres)

        during = [item for item in outcomes if crashed <= item.started < restarted]
        assert any(item.code == "storage_unavailable" for item in during), during
        for item in outcomes:
            # Accepted, or refused as storage_unavailable (a 503 problem, or the error event of a begun stream).
            assert item.accepted or item.code == "storage_unavailable", item
            assert item.elapsed_s < REQUEST_BOUND_S, item

        # Recovered by itself, and for good: every send in a row succeeds, concurrently too.
        await _recovered(client, conversations[0])
        again = await asyncio.gather(
            *(
                send(client, conversations[index % CONVERSATIONS], f"[after] question {index}", "json")
                for index in range(AFTER_RECOVERY)
            )
        )
        assert all(item.accepted and item.replied for item in again), [(item.status, item.code) for item in again]
        assert (await client.get("/health/ready")).status_code == 200

        # A refused send, retried with its Idempotency-Key, is stored once (whether or not its commit landed).
        refused = [item for item in outcomes if not item.accepted]
        retried = await asyncio.gather(
            *(
                send(
                    client,
                    conversations[int(item.content[2 : item.content.index("]")])],
                    item.content,
                    "json",
                    key=item.key,
                )
                for item in refused
            )
        )
        assert all(item.accepted for item in retried), retried

        # Every accepted message is in the transcript exactly once: none lost to the crash, none doubled.
        for index, conversation in enumerate(conversations):
            items = await transcript(client, ADMIN, conversation["id"])
            sent = [item.content for item in outcomes if item.content.startswith(f"[c{index}]")]
            assert sorted(customer_messages(items, f"c{index}")) == sorted(sent)
        assert llm.overlaps == []
