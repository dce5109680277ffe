"""Open feeds and sockets outlive the request that authorized them: a revoked key or an erased customer ends them."""

import asyncio
import json
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from httpx_sse import aconnect_sse
from litestar import Litestar

from support.api.streaming import live_feeds
from support.config import Settings
from tests.api.test_conversations import bearer, read_events, start
from tests.fakes.llm import ScriptedLLM

RECHECK_S = 0.3


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    conversations = msgspec.structs.replace(settings.conversations, access_recheck_s=RECHECK_S)
    return msgspec.structs.replace(settings, conversations=conversations)


async def agent(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> tuple[str, str]:
    created = await http.post("/v1/keys", json={"name": name, "role": "agent"}, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["secret"]


async def next_frame(socket: Any) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), 5))
        if frame.get("event") != "typing":
            return frame  # type: ignore[no-any-return]


async def test_a_revoked_key_ends_the_feeds_and_sockets_it_opened(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    key_id, secret = await agent(http, service_headers, "Temp")
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    ws_url = live.replace("http", "ws") + f"{path}/ws?access_token={secret}"

    async with (
        aconnect_sse(http, "GET", f"{path}/events", headers=bearer(secret)) as feed,
        websockets.connect(ws_url) as sending,
        websockets.connect(ws_url) as quiet,
    ):
        reader = asyncio.create_task(read_events(feed.aiter_sse(), until="error"))
        await sending.send(json.dumps({"type": "ping"}))
        assert await next_frame(sending) == {"type": "pong", "data": None}
        assert not reader.done()

        revoked = await http.delete(f"/v1/keys/{key_id}", headers=service_headers)
        assert revoked.status_code == 204

        # The socket asks again before the message it sends: refused and closed, nothing stored.
        await sending.send(json.dumps({"type": "send", "content": "after the revocation"}))
        refusal = await next_frame(sending)
        assert refusal == {"type": "error", "data": {"code": "unauthenticated", "detail": refusal["data"]["detail"]}}
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await next_frame(sending)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008

        # The feed and the quiet socket find out at their next check.
        events = await asyncio.wait_for(reader, 5)
        assert events[-1]["event"] == "error"
        assert events[-1]["data"]["code"] == "unauthenticated"
        frame = await next_frame(quiet)
        assert frame["event"] == "error"
        assert frame["data"]["code"] == "unauthenticated"
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await next_frame(quiet)

    transcript = await http.get(f"{path}/messages", headers=service_headers)
    assert all(item["content"] != "after the revocation" for item in transcript.json()["items"])


async def test_an_erased_customers_open_feed_ends(http: httpx.AsyncClient, service_headers: dict[str, str]) -> None:
    conversation = await start(http, service_headers, "to-be-erased")
    path = f"/v1/conversations/{conversation['id']}"
    token = conversation["customer_token"]

    async with aconnect_sse(http, "GET", f"{path}/events", params={"access_token": token}) as feed:
        reader = asyncio.create_task(read_events(feed.aiter_sse(), until="error"))
        await asyncio.sleep(RECHECK_S * 2)
        assert not reader.done()  # still allowed: the checks so far said yes
        erased = await http.delete(f"/v1/customers/{conversation['customer_id']}", headers=service_headers)
        assert erased.status_code == 200, erased.text
        events = await asyncio.wait_for(reader, 5)

    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["code"] == "conversation_not_found"


async def test_socket_frames_and_resume_points_of_the_wrong_type_are_refused(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    conversation = await start(http, service_headers)
    ws_url = live.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"
    token = conversation["customer_token"]

    for bad in ("abc", "-1", "1_0"):
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(f"{ws_url}?access_token={token}&last_event_id={bad}"):
                pass
    # The feed reads its Last-Event-ID header the same way (it took "-1" as 0 and "1_0" as 10, and 5,000 digits
    # were a 500: Python refuses to convert more than 4,300).
    for bad in ("-1", "1_0", "abc", "9" * 5000):
        refused = await http.get(
            f"/v1/conversations/{conversation['id']}/events", headers={**service_headers, "Last-Event-ID": bad}
        )
        assert refused.status_code == 422
        assert refused.json()["detail"] == "Last-Event-ID is the id of an event (a whole number)."
    # The query is read the same way: Litestar's int would have taken 1e3 as 1000 and refused 007.
    for bad in ("1e3", "-1", "3.0"):
        refused = await http.get(
            f"/v1/conversations/{conversation['id']}/events?last_event_id={bad}", headers=service_headers
        )
        assert refused.status_code in {400, 422}, refused.text
    async with websockets.connect(f"{ws_url}?access_token={token}&last_event_id=0") as socket:
        await socket.send(json.dumps({"type": "typing", "active": "false"}))
        assert (await next_frame(socket))["data"]["code"] == "invalid_frame"
        # A retry key that is not a string would be dropped, and a retried send stored twice: refused instead.
        await socket.send(json.dumps({"type": "send", "content": "hello", "idempotency_key": 12345}))
        assert (await next_frame(socket))["data"]["code"] == "invalid_input"
        # A field the socket would drop is refused, as REST refuses it.
        await socket.send(json.dumps({"type": "send", "content": "hello", "metadata": {"order": "1"}}))
        refused = (await next_frame(socket))["data"]
        assert (refused["code"], refused["detail"]) == (
            "invalid_input",
            "A send frame: Object contains unknown field `metadata`.",
        )

    transcript = await http.get(f"/v1/conversations/{conversation['id']}/messages", headers=service_headers)
    assert transcript.json()["items"] == []


async def test_ending_the_live_feeds_ends_feeds_but_not_a_reply_being_streamed(
    chat_app: Litestar, llm: ScriptedLLM, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    # What a stopping server does first (support.cli.server): feeds end so their clients reconnect elsewhere; a
    # reply being written is finished and streamed to its requester.
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    llm.gate = asyncio.Event()

    async with (
        aconnect_sse(http, "GET", f"{path}/events", headers=service_headers) as feed,
        aconnect_sse(
            http,
            "POST",
            f"{path}/messages/stream",
            json={"content": "How long do refunds take?"},
            headers=service_headers,
        ) as reply,
    ):
        following = asyncio.create_task(read_events(feed.aiter_sse(), until="never"))
        replying = asyncio.create_task(read_events(reply.aiter_sse()))
        async with asyncio.timeout(10):
            while not llm.requests:  # noqa: ASYNC110 - the scripted model has no event for "called"; it waits at the gate
                await asyncio.sleep(0.01)

        live_feeds(chat_app).end_all()

        followed = await asyncio.wait_for(following, 5)  # ended as a finished response, no error event
        assert [event["event"] for event in followed] == ["message"]
        assert not replying.done()
        llm.gate.set()
        streamed = await asyncio.wait_for(replying, 10)
        assert streamed[-1]["event"] == "done"
