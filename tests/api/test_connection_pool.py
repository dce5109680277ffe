"""The service on a pool of one database connection: nothing holds a connection while it waits for another.

A turn reads its context while its recall and last look run beside the search, and a live feed stays open for
hours. If either kept the connection of a scope that has only read, a bounded pool would deadlock under load
(every turn holding one connection and waiting for a second) or run dry (one connection per open feed), and
requests would fail with 503 once the pool's wait ran out. With one connection any such hold shows at once.
"""

import asyncio
from typing import Any

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse
from valkey.asyncio import Valkey

from support.config import DatabaseSettings, Settings
from tests.api.test_conversations import add_article, bearer, read_events, start
from tests.api.test_handoffs import agent_key


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    # One connection and a short wait for it: a hold-and-wait fails within two seconds instead of hanging.
    return msgspec.structs.replace(settings, db=DatabaseSettings(pool_size=1, max_overflow=0, pool_timeout_s=2.0))


async def stream_turn(http: httpx.AsyncClient, conversation: dict[str, Any], content: str) -> list[dict[str, Any]]:
    path = f"/v1/conversations/{conversation['id']}/messages/stream"
    headers = bearer(conversation["customer_token"])
    async with aconnect_sse(http, "POST", path, json={"content": content}, headers=headers) as events:
        return await read_events(events.aiter_sse())


async def test_concurrent_turns_all_finish_on_one_connection(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    await add_article(http, service_headers)
    conversations = [await start(http, service_headers, f"pool-{index}") for index in range(4)]

    turns = await asyncio.gather(
        *(stream_turn(http, conversation, "How long do refunds take?") for conversation in conversations)
    )

    for events in turns:
        assert [event["event"] for event in events if event["event"] in {"error", "done"}] == ["done"]
        assert events[-1]["data"]["answer_status"] == "answered"
        assert events[-1]["data"]["citations"], "the turn searched and cited the knowledge base"


async def test_a_turn_with_an_attachment_and_a_folded_history_finishes_on_one_connection(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}/messages"
    token = bearer(conversation["customer_token"])
    # More turns than the history window (12 messages) holds, so the next turn reads the rolling summary too.
    for index in range(8):
        sent = await http.post(path, json={"content": f"Question number {index} about my order"}, headers=token)
        assert sent.status_code == 200, sent.text

    sent = await http.post(
        path,
        data={"content": "What does this log say?"},
        files=[("files", ("printer.log.txt", b"error 42: paper jam in tray 2", "text/plain"))],
        headers=token,
    )

    assert sent.status_code == 200, sent.text
    assert sent.json()["reply"]["answer_status"] == "answered"


async def test_open_live_feeds_leave_the_connection_to_turns(
    http: httpx.AsyncClient, service_headers: dict[str, str], valkey: Valkey
) -> None:
    agent = await agent_key(http, service_headers, "agent desk")
    conversations = [await start(http, service_headers, f"feed-{index}") for index in range(2)]
    # A cold session cache: opening each feed reads the conversation from the database.
    await valkey.flushdb()

    feeds = [
        aconnect_sse(http, "GET", f"/v1/conversations/{conversations[0]['id']}/events", headers=agent),
        *(
            aconnect_sse(
                http,
                "GET",
                f"/v1/conversations/{conversation['id']}/events",
                params={"access_token": conversation["customer_token"]},
            )
            for conversation in conversations
        ),
    ]
    async with feeds[0] as by_agent, feeds[1] as first, feeds[2] as second:
        readers = [asyncio.create_task(read_events(feed.aiter_sse())) for feed in (by_agent, first, second)]
        await asyncio.sleep(0.2)  # the feeds subscribe before the sends
        replies = [
            await http.post(
                f"/v1/conversations/{conversation['id']}/messages",
                json={"content": "hello"},
                headers=bearer(conversation["customer_token"]),
            )
            for conversation in conversations
        ]
        seen = await asyncio.wait_for(asyncio.gather(*readers), 20)

    assert [reply.status_code for reply in replies] == [200, 200]
    by_agent_events, first_events, second_events = seen
    assert by_agent_events[-1]["data"]["id"] == replies[0].json()["reply"]["id"]
    assert first_events[-1]["data"]["id"] == replies[0].json()["reply"]["id"]
    assert second_events[-1]["data"]["id"] == replies[1].json()["reply"]["id"]
