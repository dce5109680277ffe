"""Human handoff over real HTTP: the customer's request, the queue, exclusive claims, live agent replies."""

import asyncio
import json
from typing import Any

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.config import Settings
from support.container import create_app
from tests.api.conftest import llm_provider, serve
from tests.api.test_conversations import bearer, start
from tests.conftest import shared_embedder_provider
from tests.fakes.llm import Script, ScriptedLLM
from tests.helpers import assert_problem


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    # One token secret for every app of a test, as for the processes of one deployment.
    conversations = msgspec.structs.replace(settings.conversations, token_secret="handoff-tests-secret")
    return msgspec.structs.replace(settings, conversations=conversations)


async def agent_key(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> dict[str, str]:
    response = await http.post("/v1/keys", json={"name": name, "role": "agent"}, headers=headers)
    assert response.status_code == 201, response.text
    return bearer(response.json()["secret"])


async def collect(events: Any, into: list[dict[str, Any]]) -> None:
    # Appended one by one: the test reads the list while events keep arriving.
    async for sse in events:
        into.append({"id": sse.id, "event": sse.event, "data": json.loads(sse.data)})  # noqa: PERF401


async def wait_for(found: list[dict[str, Any]], predicate: Any, timeout_s: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            for event in found:
                if predicate(event):
                    return event
            await asyncio.sleep(0.02)


async def test_handoff_queue_claim_and_agent_replies_reach_the_customer_live(  # noqa: PLR0915 - one story
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    ana = await agent_key(http, service_headers, "Ana")
    ben = await agent_key(http, service_headers, "Ben")
    conversation = await start(http, service_headers)
    customer = bearer(conversation["customer_token"])
    base = f"/v1/conversations/{conversation['id']}"
    seen: list[dict[str, Any]] = []
    async with aconnect_sse(http, "GET", f"{base}/events", headers=customer) as source:
        follower = asyncio.create_task(collect(source.aiter_sse(), seen))
        try:
            requested = await http.post(f"{base}/handoff", json={"reason": "billing dispute"}, headers=customer)
            assert requested.status_code == 200, requested.text
            assert requested.json()["status"] == "pending_human"
            assert requested.json()["handoff"]["rule"] == "customer_request.endpoint"
            notice = await wait_for(seen, lambda e: e["event"] == "message" and e["data"]["role"] == "system")
            assert (
                "Expected wait" in notice["data"]["content"] or "someone will answer from" in notice["data"]["content"]
            )
            await wait_for(seen, lambda e: e["event"] == "handoff" and e["data"]["status"] == "pending_human")

            # While a person is due, the customer's messages are stored and the model is not called.
            sent = await http.post(f"{base}/messages", json={"content": "It's invoice 42"}, headers=customer)
            assert sent.json()["reply"] is None
            assert sent.json()["conversation_status"] == "pending_human"
            assert llm.requests == []

            queue = (await http.get("/v1/handoffs", headers=ana)).json()
            [entry] = queue["items"]
            assert entry["conversation_id"] == conversation["id"]
            assert entry["reason_code"] == "customer_request"
            assert entry["status"] == "pending_human"
            assert entry["wait_s"] >= 0
            assert "invoice 42" in entry["summary"] or "billing dispute" in entry["summary"]

            claims = await asyncio.gather(
                http.post(f"{base}/claim", headers=ana), http.post(f"{base}/claim", headers=ben)
            )
            statuses = sorted(response.status_code for response in claims)
            assert statuses == [200, 409], [response.text for response in claims]
            loser = next(response for response in claims if response.status_code == 409)
            assert_problem(loser, 409, "claimed_by_another_agent")
            winner = next(response for response in claims if response.status_code == 200).json()
            owner = ana if winner["agent_name"] == "Ana" else ben
            other = ben if owner is ana else ana
            await wait_for(seen, lambda e: e["event"] == "handoff" and e["data"]["status"] == "human")

            reply = await http.post(
                f"{base}/agent-messages", json={"content": "Hi, I'm on it."}, headers={**owner, "Idempotency-Key": "a1"}
            )
            assert reply.status_code == 201, reply.text
            retried = await http.post(
                f"{base}/agent-messages", json={"content": "Hi, I'm on it."}, headers={**owner, "Idempotency-Key": "a1"}
            )
            assert retried.json()["duplicate"] is True
            assert retried.json()["message"]["id"] == reply.json()["message"]["id"]
            assert_problem(
                await http.post(
                    f"{base}/agent-messages", json={"content": "Hi again."}, headers={**owner, "Idempotency-Key": "a1"}
                ),
                422,
                "idempotency_key_reused",
            )
            assert_problem(
                await http.post(f"{base}/agent-messages", json={"content": "me too"}, headers=other),
                409,
                "claimed_by_another_agent",
            )
            live = await wait_for(seen, lambda e: e["event"] == "message" and e["data"]["role"] == "agent")
            assert live["data"]["content"] == "Hi, I'm on it."
            assert live["data"]["author"] == winner["agent_name"]

            resolved = await http.post(f"{base}/resolve", headers=owner)
            assert resolved.json()["status"] == "resolved"
            assert resolved.json()["agent_name"] == winner["agent_name"]
            await wait_for(seen, lambda e: e["event"] == "handoff" and e["data"]["status"] == "resolved")
        finally:
            follower.cancel()
    # Writing again reopens the conversation with the assistant.
    again = await http.post(f"{base}/messages", json={"content": "One more question"}, headers=customer)
    assert again.json()["conversation_status"] == "bot"
    assert again.json()["reply"] is not None
    reopened = (await http.get(base, headers=customer)).json()
    assert reopened["reopened_count"] == 1
    assert reopened["agent_name"] is None  # the bot owns it again
    ids = [int(event["id"]) for event in seen]
    assert ids == sorted(ids)


async def test_only_the_right_roles_reach_each_handoff_endpoint(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    ana = await agent_key(http, service_headers, "Ana")
    conversation = await start(http, service_headers)
    customer = bearer(conversation["customer_token"])
    base = f"/v1/conversations/{conversation['id']}"

    assert_problem(await http.get("/v1/handoffs", headers=customer), 403, "forbidden")
    assert_problem(await http.post(f"{base}/claim", headers=customer), 403, "forbidden")
    assert_problem(await http.post(f"{base}/handoff", headers=ana), 403, "forbidden")
    assert_problem(await http.post(f"{base}/agent-messages", json={"content": "x"}, headers=ana), 409, "not_claimed")
    assert_problem(await http.post(f"{base}/claim", headers=ana), 409, "invalid_transition")
    assert_problem(await http.delete(f"{base}/handoff", headers=customer), 409, "invalid_transition")
    assert_problem(await http.get("/v1/handoffs?status=bot", headers=ana), 422, "validation_failed")
    assert_problem(await http.post(f"{base}/agent-messages", json={}, headers=ana), 422, "validation_failed")
    other = await start(http, service_headers, "cust-2")
    assert_problem(
        await http.post(f"/v1/conversations/{other['id']}/handoff", headers=customer), 404, "conversation_not_found"
    )


async def test_a_sensitive_message_hands_over_in_the_reply_stream(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    conversation = await start(http, service_headers)
    customer = bearer(conversation["customer_token"])
    events: list[dict[str, Any]] = []
    async with aconnect_sse(
        http,
        "POST",
        f"/v1/conversations/{conversation['id']}/messages/stream",
        json={"content": "My account was hacked and someone changed my email"},
        headers=customer,
    ) as source:
        async for sse in source.aiter_sse():
            events.append({"event": sse.event, "data": json.loads(sse.data)})
            if sse.event == "handoff":
                break

    names = [event["event"] for event in events]
    assert names[0] == "message"
    assert names[-2:] == ["done", "handoff"]
    done = events[-2]["data"]
    assert done["answer_status"] == "handed_off"
    assert done["decision"]["rule"] == "sensitive_topic.account_security"
    assert done["author"] == "policy"
    assert events[-1]["data"] == {"status": "pending_human", "reason_code": "sensitive_topic"}
    assert llm.requests == []


async def test_an_agents_websocket_sends_agent_messages_and_typing_to_the_customer(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    ana = await http.post("/v1/keys", json={"name": "Ana", "role": "agent"}, headers=service_headers)
    secret = ana.json()["secret"]
    conversation = await start(http, service_headers)
    base = f"/v1/conversations/{conversation['id']}"
    await http.post(f"{base}/handoff", headers=bearer(conversation["customer_token"]))
    url = live.replace("http", "ws") + f"{base}/ws"

    async with (
        websockets.connect(f"{url}?access_token={conversation['customer_token']}") as customer,
        websockets.connect(f"{url}?access_token={secret}") as agent,
    ):
        await agent.send(json.dumps({"type": "typing", "active": True}))
        typing = json.loads(await asyncio.wait_for(customer.recv(), 5))
        assert typing["data"] == {"role": "agent", "active": True}
        await agent.send(json.dumps({"type": "send", "content": "Ana here, reading your messages"}))
        frames: list[dict[str, Any]] = []
        while not any(frame.get("event") == "message" and frame["data"]["role"] == "agent" for frame in frames):
            frames.append(json.loads(await asyncio.wait_for(customer.recv(), 10)))

    assert [frame["data"]["status"] for frame in frames if frame.get("event") == "handoff"] == ["human"]
    assert frames[-1]["data"]["content"] == "Ana here, reading your messages"
    transcript = (await http.get(f"{base}/messages", headers=service_headers)).json()["items"]
    assert [item["role"] for item in transcript] == ["system", "system", "agent"]


async def test_a_burst_of_typing_frames_reaches_the_other_side_once(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    ana = await http.post("/v1/keys", json={"name": "Ana", "role": "agent"}, headers=service_headers)
    conversation = await start(http, service_headers)
    url = live.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"

    async with (
        websockets.connect(f"{url}?access_token={conversation['customer_token']}") as customer,
        websockets.connect(f"{url}?access_token={ana.json()['secret']}") as agent,
    ):
        await agent.send(json.dumps({"type": "ping"}))  # the agent's socket is live before the customer types
        assert json.loads(await asyncio.wait_for(agent.recv(), 5))["type"] == "pong"
        for _ in range(30):  # one frame per keystroke
            await customer.send(json.dumps({"type": "typing", "active": True}))
        await customer.send(json.dumps({"type": "typing", "active": False}))
        typing: list[dict[str, Any]] = []
        while not typing or typing[-1]["data"]["active"]:
            frame = json.loads(await asyncio.wait_for(agent.recv(), 5))
            if frame.get("event") == "typing":
                typing.append(frame)

    assert [frame["data"] for frame in typing] == [
        {"role": "customer", "active": True},
        {"role": "customer", "active": False},
    ]


async def test_an_agent_whose_socket_closes_while_typing_stops_typing_for_the_customer(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    ana = await http.post("/v1/keys", json={"name": "Ana", "role": "agent"}, headers=service_headers)
    conversation = await start(http, service_headers)
    await http.post(f"/v1/conversations/{conversation['id']}/handoff", headers=bearer(conversation["customer_token"]))
    url = live.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"

    async with websockets.connect(f"{url}?access_token={conversation['customer_token']}") as customer:
        async with websockets.connect(f"{url}?access_token={ana.json()['secret']}") as agent:
            await agent.send(json.dumps({"type": "typing", "active": True}))
            assert json.loads(await asyncio.wait_for(customer.recv(), 5))["data"] == {"role": "agent", "active": True}
        # The agent's console closed mid-sentence: without this the widget shows "typing…" for good.
        stopped = json.loads(await asyncio.wait_for(customer.recv(), 5))

    assert (stopped["event"], stopped["data"]) == ("typing", {"role": "agent", "active": False})


async def test_only_an_agent_who_could_write_is_shown_typing(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    ana = await agent_key(http, service_headers, "Ana")
    ben = await agent_key(http, service_headers, "Ben")
    conversation = await start(http, service_headers)
    base = f"/v1/conversations/{conversation['id']}"
    await http.post(f"{base}/handoff", headers=bearer(conversation["customer_token"]))
    assert (await http.post(f"{base}/claim", headers=ana)).status_code == 200
    url = live.replace("http", "ws") + f"{base}/ws"

    async with (
        websockets.connect(f"{url}?access_token={conversation['customer_token']}") as customer,
        websockets.connect(f"{url}?access_token={ben['Authorization'].split()[1]}") as watching,
        websockets.connect(f"{url}?access_token={ana['Authorization'].split()[1]}") as owner,
    ):
        await watching.send(json.dumps({"type": "typing", "active": True}))  # Ben cannot write here
        await watching.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(watching.recv(), 5))["type"] == "pong"  # his frame was handled
        # Ana's "stopped typing" follows Ben's frame: the first typing event the customer sees must be hers.
        await owner.send(json.dumps({"type": "typing", "active": False}))
        seen: list[dict[str, Any]] = []
        while not seen:
            frame = json.loads(await asyncio.wait_for(customer.recv(), 5))
            if frame.get("event") == "typing":
                seen.append(frame)

    assert seen[0]["data"] == {"role": "agent", "active": False}


async def test_no_word_of_a_reply_follows_a_takeover_made_in_another_process(
    http: httpx.AsyncClient,
    service_headers: dict[str, str],
    llm: ScriptedLLM,
    chat_settings: Settings,
    embedder: OnnxMiniLMEmbedder,
) -> None:
    # Two apps on the same PostgreSQL and Valkey stand for two processes: the reply is written in the first,
    # the agent takes over through the second, whose feed the customer follows.
    llm.script = Script(pieces=tuple(f"word{index} " for index in range(300)), delay_s=0.01)
    other = create_app(chat_settings, shared_embedder_provider(embedder), llm_provider(ScriptedLLM()))
    async with serve(other) as other_url, httpx.AsyncClient(base_url=other_url, timeout=30) as elsewhere:
        ana = await agent_key(http, service_headers, "Ana")
        conversation = await start(http, service_headers)
        customer = bearer(conversation["customer_token"])
        base = f"/v1/conversations/{conversation['id']}"
        feed: list[dict[str, Any]] = []
        stream: list[dict[str, Any]] = []
        async with (
            aconnect_sse(elsewhere, "GET", f"{base}/events", headers=customer) as followed,
            aconnect_sse(http, "POST", f"{base}/messages/stream", json={"content": "hi"}, headers=customer) as sent,
        ):
            follower = asyncio.create_task(collect(followed.aiter_sse(), feed))
            replying = asyncio.create_task(collect(sent.aiter_sse(), stream))
            await wait_for(feed, lambda event: event["event"] == "delta" and event["data"]["text"] == "word4 ")
            requested = await elsewhere.post(f"{base}/handoff", json={"reason": "a person"}, headers=customer)
            claimed = await elsewhere.post(f"{base}/claim", headers=ana)
            await asyncio.wait_for(replying, 10)
            await wait_for(feed, lambda event: event["event"] == "handoff" and event["data"]["status"] == "human")
            await asyncio.sleep(0.2)  # anything still on its way to the feed would arrive now
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    assert (requested.status_code, claimed.status_code) == (200, 200)
    takeover = next(index for index, event in enumerate(feed) if event["event"] == "handoff")
    assert [event["event"] for event in feed[takeover:] if event["event"] in {"delta", "done"}] == []
    assert stream[-1]["event"] == "handoff"
    assert sum(event["event"] == "delta" for event in stream) < 100  # stopped, not run to its 300 words
    transcript = (await http.get(f"{base}/messages", headers=service_headers)).json()["items"]
    assert "assistant" not in {message["role"] for message in transcript}


async def test_an_agent_lists_only_the_conversations_they_claimed(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    ana = await agent_key(http, service_headers, "Ana")
    ben = await agent_key(http, service_headers, "Ben")
    waiting: list[str] = []
    for n in range(3):
        conversation = await start(http, service_headers, f"cust-mine-{n}")
        path = f"/v1/conversations/{conversation['id']}"
        assert (await http.post(f"{path}/handoff", headers=bearer(conversation["customer_token"]))).status_code == 200
        waiting.append(conversation["id"])
    assert (await http.post(f"/v1/conversations/{waiting[1]}/claim", headers=ana)).status_code == 200

    def ids(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [item["conversation_id"] for item in response.json()["items"]]

    assert ids(await http.get("/v1/handoffs", params={"mine": "true"}, headers=ana)) == [waiting[1]]
    assert ids(await http.get("/v1/handoffs", params={"mine": "true"}, headers=ben)) == []
    assert ids(await http.get("/v1/handoffs", headers=ben)) == waiting
    assert_problem(await http.get("/v1/handoffs", params={"mine": "maybe"}, headers=ana), 422, "validation_failed")


async def test_an_agent_resolves_only_what_it_claimed_while_an_admin_resolves_any(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    ana = await agent_key(http, service_headers, "Ana")
    ben = await agent_key(http, service_headers, "Ben")
    admin = service_headers  # the bootstrap admin key

    # The assistant's conversation: not an agent's to resolve; the customer side (an admin too) may.
    bots = await start(http, service_headers, "cust-resolve-bot")
    path = f"/v1/conversations/{bots['id']}"
    assert_problem(await http.post(f"{path}/resolve", headers=ana), 409, "not_claimed")
    assert (await http.get(path, headers=admin)).json()["status"] == "bot"
    resolved = await http.post(f"{path}/resolve", headers=admin)
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["agent_name"]) == ("resolved", None)

    # Waiting for an agent: claim it first, whoever asks on the agent side.
    waiting = await start(http, service_headers, "cust-resolve-waiting")
    path = f"/v1/conversations/{waiting['id']}"
    customer = bearer(waiting["customer_token"])
    assert (await http.post(f"{path}/handoff", headers=customer)).status_code == 200
    assert_problem(await http.post(f"{path}/resolve", headers=ana), 409, "not_claimed")
    assert_problem(await http.post(f"{path}/resolve", headers=admin), 409, "not_claimed")
    assert_problem(await http.post(f"{path}/resolve", headers=customer), 409, "invalid_transition")

    # Ana's conversation: hers (or an admin's) to resolve, not Ben's nor the customer's.
    assert (await http.post(f"{path}/claim", headers=ana)).status_code == 200
    assert_problem(await http.post(f"{path}/resolve", headers=ben), 409, "claimed_by_another_agent")
    assert_problem(await http.post(f"{path}/resolve", headers=customer), 409, "invalid_transition")
    resolved = await http.post(f"{path}/resolve", headers=admin)
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["agent_name"]) == ("resolved", "Ana")


async def test_after_a_release_the_bot_answers_the_newest_message_and_sees_the_earlier_ones(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    ana = await agent_key(http, service_headers, "Ana")
    conversation = await start(http, service_headers)
    customer = bearer(conversation["customer_token"])
    base = f"/v1/conversations/{conversation['id']}"
    assert (await http.post(f"{base}/handoff", headers=customer)).status_code == 200
    assert (await http.post(f"{base}/claim", headers=ana)).status_code == 200
    said = await http.post(f"{base}/agent-messages", json={"content": "Hi, Ana here."}, headers=ana)
    assert said.status_code == 201, said.text
    # Written to the person, who gives the conversation back without answering them.
    for text in ("How long do refunds take?", "Thanks! And shipping times?"):
        sent = await http.post(f"{base}/messages", json={"content": text}, headers=customer)
        assert sent.json()["reply"] is None
    assert (await http.post(f"{base}/release", headers=ana)).status_code == 200

    sent = await http.post(f"{base}/messages", json={"content": "What is the warranty on desks?"}, headers=customer)

    body = sent.json()
    assert body["conversation_status"] == "bot"
    assert body["reply"]["reply_to"] == [body["message"]["id"]]
    [request] = llm.requests
    assert request.question == "What is the warranty on desks?"
    history = [turn.text for turn in request.history]
    assert "How long do refunds take?" in history
    assert "Thanks! And shipping times?" in history


async def test_a_streamed_send_while_a_person_is_due_ends_after_its_echo(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    conversation = await start(http, service_headers)
    customer = bearer(conversation["customer_token"])
    base = f"/v1/conversations/{conversation['id']}"
    assert (await http.post(f"{base}/handoff", headers=customer)).status_code == 200

    events: list[dict[str, Any]] = []
    async with aconnect_sse(
        http, "POST", f"{base}/messages/stream", json={"content": "Anyone there?"}, headers=customer
    ) as source:
        await collect(source.aiter_sse(), events)  # the server ends the stream

    assert [event["event"] for event in events] == ["message"]
    assert events[0]["data"]["content"] == "Anyone there?"
    assert llm.requests == []


async def test_revoking_an_agents_key_puts_its_conversations_back_in_the_queue(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    created = await http.post("/v1/keys", json={"name": "Carl", "role": "agent"}, headers=service_headers)
    carl = bearer(created.json()["secret"])
    ana = await agent_key(http, service_headers, "Ana")
    conversation = await start(http, service_headers)
    base = f"/v1/conversations/{conversation['id']}"
    await http.post(f"{base}/handoff", headers=bearer(conversation["customer_token"]))
    assert (await http.post(f"{base}/claim", headers=carl)).status_code == 200
    assert (await http.post(f"{base}/claim", headers=ana)).status_code == 409

    revoked = await http.delete(f"/v1/keys/{created.json()['id']}", headers=service_headers)

    assert revoked.status_code == 204
    assert (await http.get(base, headers=service_headers)).json()["status"] == "pending_human"
    claimed = await http.post(f"{base}/claim", headers=ana)
    assert claimed.status_code == 200, claimed.text
    transcript = (await http.get(f"{base}/messages", headers=service_headers)).json()["items"]
    assert any(item["content"].startswith("Carl is no longer available") for item in transcript)
