"""Conversations over real HTTP: starting, sending, streaming, the live feed, guarantees, authorization."""

import asyncio
import contextlib
import json
import re
import time
from typing import Any

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse
from litestar import Litestar

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.config import Settings
from support.container import create_app
from support.domain.conversations import ReasonCode
from tests.api.conftest import llm_provider, serve
from tests.conftest import ADMIN_KEY, shared_embedder_provider
from tests.fakes.llm import Script, ScriptedLLM
from tests.helpers import assert_problem

REFUNDS = "# Refunds\n\nRefunds go back to the original card within 5 to 10 business days after we receive the return."


async def add_article(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await http.post(
        "/v1/knowledge/documents",
        json={"content": REFUNDS, "external_id": "refunds", "url": "https://help.example.com/refunds"},
        headers=headers,
    )
    assert response.status_code == 201, response.text


async def start(http: httpx.AsyncClient, headers: dict[str, str], external_id: str = "cust-1") -> dict[str, Any]:
    response = await http.post(
        "/v1/conversations", json={"customer": {"external_id": external_id, "name": "Ada"}}, headers=headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def read_events(response_events: Any, *, until: str = "done") -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async for sse in response_events:
        events.append({"id": sse.id, "event": sse.event, "data": json.loads(sse.data)})
        if sse.event in {until, "error"}:
            break
    return events


async def test_a_service_starts_a_conversation_and_the_customer_token_reaches_only_it(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    mine = await start(http, service_headers, "cust-1")
    theirs = await start(http, service_headers, "cust-2")
    again = await start(http, service_headers, "cust-1")
    token = bearer(mine["customer_token"])

    assert mine["status"] == "bot"
    assert again["customer_id"] == mine["customer_id"]
    assert (await http.get(f"/v1/conversations/{mine['id']}", headers=token)).json()["id"] == mine["id"]
    # Another customer's conversation does not exist as far as this token can tell.
    assert_problem(await http.get(f"/v1/conversations/{theirs['id']}", headers=token), 404, "conversation_not_found")
    assert_problem(
        await http.post(f"/v1/conversations/{theirs['id']}/messages", json={"content": "hi"}, headers=token),
        404,
        "conversation_not_found",
    )
    listed = (await http.get("/v1/conversations", headers=token)).json()
    assert {item["id"] for item in listed["items"]} == {mine["id"], again["id"]}
    everyone = (await http.get("/v1/conversations", headers=service_headers)).json()
    assert len(everyone["items"]) == 3
    assert_problem(await http.get("/v1/conversations", headers=bearer("ct_forged.token")), 401, "unauthenticated")


async def test_sending_stores_the_message_then_the_reply_with_citations(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    await add_article(http, service_headers)
    conversation = await start(http, service_headers)
    token = bearer(conversation["customer_token"])

    response = await http.post(
        f"/v1/conversations/{conversation['id']}/messages", json={"content": "How long do refunds take?"}, headers=token
    )

    assert response.status_code == 200, response.text
    body = response.json()
    reply = body["reply"]
    assert body["message"]["role"] == "customer"
    assert reply["content"] == "Here is what I found."
    assert reply["reply_to"] == [body["message"]["id"]]
    assert reply["answer_status"] == "answered"
    assert reply["decision"]["action"] == "answer"
    assert reply["citations"][0]["url"] == "https://help.example.com/refunds"
    assert reply["citations"][0]["version"] == 1
    assert reply["usage"]["input_tokens"] == 100
    assert reply["ttft_ms"] > 0
    assert reply["total_ms"] >= reply["ttft_ms"]
    assert llm.requests[0].question == "How long do refunds take?"
    assert "5 to 10 business days" in llm.requests[0].passages[0].text
    transcript = (await http.get(f"/v1/conversations/{conversation['id']}/messages", headers=token)).json()
    assert [item["role"] for item in transcript["items"]] == ["customer", "assistant"]


async def test_the_stream_follows_the_protocol_and_the_feed_resumes(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    await add_article(http, service_headers)
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])

    async with aconnect_sse(http, "POST", f"{path}/messages/stream", json={"content": "refunds?"}, headers=token) as s:
        assert s.response.headers["content-type"].startswith("text/event-stream")
        events = await read_events(s.aiter_sse())

    names = [event["event"] for event in events]
    assert names == ["message", "delta", "delta", "delta", "citation", "done"]
    ids = [int(event["id"]) for event in events]
    assert ids == list(range(1, 7))
    assert events[0]["data"]["content"] == "refunds?"
    assert "".join(event["data"]["text"] for event in events if event["event"] == "delta") == "Here is what I found."
    done = events[-1]["data"]
    assert done["role"] == "assistant"
    assert done["answer_status"] == "answered"
    assert done["citations"][0]["chunk_id"] == events[4]["data"]["chunk_id"]

    async with aconnect_sse(http, "GET", f"{path}/events", headers={**token, "Last-Event-ID": "0"}) as feed:
        replayed = await read_events(feed.aiter_sse())
    assert [int(event["id"]) for event in replayed] == ids
    async with aconnect_sse(http, "GET", f"{path}/events", headers={**token, "Last-Event-ID": "4"}) as feed:
        resumed = await read_events(feed.aiter_sse())
    assert [event["event"] for event in resumed] == ["citation", "done"]


async def test_the_live_feed_sees_a_turn_sent_elsewhere(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])

    async with aconnect_sse(
        http, "GET", f"{path}/events", params={"access_token": conversation["customer_token"]}
    ) as feed:
        reader = asyncio.create_task(read_events(feed.aiter_sse()))
        await asyncio.sleep(0.2)  # the feed subscribes before the send
        sent = await http.post(f"{path}/messages", json={"content": "hello"}, headers=token)
        events = await asyncio.wait_for(reader, 10)

    assert sent.status_code == 200
    assert events[0]["event"] == "message"
    assert events[-1]["data"]["id"] == sent.json()["reply"]["id"]


async def test_an_idempotency_key_returns_the_original_without_a_second_reply(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}/messages"
    headers = {**service_headers, "Idempotency-Key": "send-1"}

    first = await http.post(path, json={"content": "hello"}, headers=headers)
    retried = await http.post(path, json={"content": "hello"}, headers=headers)

    assert retried.json()["duplicate"] is True
    assert retried.json()["message"]["id"] == first.json()["message"]["id"]
    assert retried.json()["reply"]["id"] == first.json()["reply"]["id"]
    assert len(llm.requests) == 1
    transcript = (await http.get(path, headers=service_headers)).json()["items"]
    assert len(transcript) == 2

    # The retry answers its caller (a stream too) and writes nothing: the feed carries the reply once.
    async with aconnect_sse(http, "POST", f"{path}/stream", json={"content": "hello"}, headers=headers) as stream:
        again = await read_events(stream.aiter_sse())
    assert [(event["event"], event["data"]["id"]) for event in again] == [("done", first.json()["reply"]["id"])]
    feed_path = f"/v1/conversations/{conversation['id']}/events"
    replayed: list[str] = []

    async def replay() -> None:
        async with aconnect_sse(http, "GET", feed_path, headers={**service_headers, "Last-Event-ID": "0"}) as feed:
            async for sse in feed.aiter_sse():
                replayed.append(sse.event)  # noqa: PERF401 - kept as they arrive: the feed never ends

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(replay(), 1.0)  # the feed never ends: what is retained arrives at once
    assert replayed[0] == "message"
    assert replayed.count("done") == 1


async def test_an_idempotency_key_reused_for_another_message_is_refused_and_nothing_is_stored(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}/messages"
    headers = {**service_headers, "Idempotency-Key": "send-1"}
    first = await http.post(path, json={"content": "hello"}, headers=headers)
    assert first.status_code == 200, first.text

    reused = await http.post(path, json={"content": "where is my order?"}, headers=headers)
    with_a_file = await http.post(
        path, data={"content": "hello"}, files={"files": ("note.txt", b"order 42", "text/plain")}, headers=headers
    )

    assert_problem(reused, 422, "idempotency_key_reused")
    assert_problem(with_a_file, 422, "idempotency_key_reused")
    assert len(llm.requests) == 1
    transcript = (await http.get(path, headers=service_headers)).json()["items"]
    assert [item["content"] for item in transcript] == ["hello", transcript[1]["content"]]
    assert transcript[0]["attachments"] == []


async def test_concurrent_sends_get_one_reply_at_a_time_and_none_is_lost(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    llm.script = Script(delay_s=0.05)
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}/messages"

    responses = await asyncio.gather(
        *(http.post(path, json={"content": f"question {n}"}, headers=service_headers) for n in range(4))
    )

    assert all(response.status_code == 200 for response in responses)
    assert llm.max_active == 1
    transcript = (await http.get(path, headers=service_headers)).json()["items"]
    customer_ids = {item["id"] for item in transcript if item["role"] == "customer"}
    replies = [item for item in transcript if item["role"] == "assistant"]
    covered = [answered for reply in replies for answered in reply["reply_to"]]
    assert sorted(covered) == sorted(customer_ids)  # every message answered exactly once
    assert 1 <= len(replies) <= 4
    for response in responses:
        assert response.json()["message"]["id"] in response.json()["reply"]["reply_to"]


async def test_a_client_that_disconnects_mid_stream_still_gets_the_reply_stored(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    llm.script = Script(pieces=("one ", "two ", "three ", "four"), delay_s=0.1)
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"

    async with aconnect_sse(
        http, "POST", f"{path}/messages/stream", json={"content": "hi"}, headers=service_headers
    ) as s:
        async for sse in s.aiter_sse():
            if sse.event == "delta":
                break  # leave after the first delta

    items: list[dict[str, Any]] = []
    for _ in range(100):
        items = (await http.get(f"{path}/messages", headers=service_headers)).json()["items"]
        if len(items) == 2:
            break
        await asyncio.sleep(0.05)
    assert items[1]["content"] == "one two three four"
    assert items[1]["interrupted"] is False


async def test_a_model_outage_gets_a_graceful_reply_and_a_human_offer(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    llm.script = Script(fail_after=0)
    conversation = await start(http, service_headers)

    response = await http.post(
        f"/v1/conversations/{conversation['id']}/messages", json={"content": "hi"}, headers=service_headers
    )

    reply = response.json()["reply"]
    assert response.status_code == 200
    assert "connect you with" in reply["content"]
    assert reply["answer_status"] == "insufficient_evidence"
    assert reply["decision"] == {
        "action": "offer_human",
        "reason_code": "llm_unavailable",
        "evidence": None,
        "rule": "llm_unavailable.offer",
    }


async def test_a_partial_reply_is_kept_and_marked_interrupted(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    llm.script = Script(pieces=("Refunds take ", "5 to 10 days", "."), fail_after=2)
    conversation = await start(http, service_headers)

    reply = (
        await http.post(
            f"/v1/conversations/{conversation['id']}/messages", json={"content": "hi"}, headers=service_headers
        )
    ).json()["reply"]

    assert reply["content"].startswith("Refunds take 5 to 10 days")
    assert reply["interrupted"] is True


async def test_after_a_handoff_the_assistant_stays_silent(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    llm.script = Script(pieces=("Let me get you a person.",), handoff=ReasonCode.CUSTOMER_REQUEST)
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"

    # Nothing in these words hands over by rule: the model's request_human_handoff signal does.
    first = (
        await http.post(f"{path}/messages", json={"content": "my parcel arrived damaged"}, headers=service_headers)
    ).json()
    second = (await http.post(f"{path}/messages", json={"content": "hello?"}, headers=service_headers)).json()

    assert first["reply"]["answer_status"] == "handed_off"
    assert first["conversation_status"] == "pending_human"
    assert second["reply"] is None
    assert second["conversation_status"] == "pending_human"
    assert len(llm.requests) == 1
    async with aconnect_sse(http, "GET", f"{path}/events", headers={**service_headers, "Last-Event-ID": "0"}) as feed:
        events = await read_events(feed.aiter_sse(), until="handoff")
    assert events[-1]["data"] == {"status": "pending_human", "reason_code": "customer_request"}


async def test_feedback_and_closing(http: httpx.AsyncClient, service_headers: dict[str, str]) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])

    rated = await http.post(f"{path}/feedback", json={"rating": 4, "comment": "quick"}, headers=token)
    closed = await http.post(f"{path}/close", headers=token)

    assert rated.json()["feedback"]["rating"] == 4
    assert closed.json()["status"] == "closed"
    assert_problem(
        await http.post(f"{path}/messages", json={"content": "hi"}, headers=token), 409, "conversation_closed"
    )
    assert_problem(await http.post(f"{path}/feedback", json={"rating": 9}, headers=token), 422, "validation_failed")


async def test_attachments_are_checked_stored_listed_and_given_to_the_model(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    log = b"printer says E04 paper jam"
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16

    response = await http.post(
        f"{path}/messages",
        data={"content": "see attached"},
        files=[("files", ("printer.log.txt", log, "text/plain")), ("files", ("shot.png", png, "image/png"))],
        headers=token,
    )

    assert response.status_code == 200, response.text
    attachments = response.json()["message"]["attachments"]
    assert [item["filename"] for item in attachments] == ["printer.log.txt", "shot.png"]
    download = await http.get(attachments[0]["url"], headers=token)
    assert download.content == log
    other = await start(http, service_headers, "cust-2")
    assert (await http.get(attachments[0]["url"], headers=bearer(other["customer_token"]))).status_code == 404
    request = llm.requests[0]
    assert request.attachments[0].text.strip() == log.decode()
    assert request.images[0].media_type == "image/png"

    too_many = [("files", (f"f{n}.txt", b"x", "text/plain")) for n in range(6)]
    assert_problem(
        await http.post(f"{path}/messages", data={"content": "x"}, files=too_many, headers=token),
        413,
        "content_too_large",
    )
    wrong = [("files", ("tool.exe", b"MZ", "application/octet-stream"))]
    assert_problem(
        await http.post(f"{path}/messages", data={"content": "x"}, files=wrong, headers=token),
        415,
        "unsupported_content_type",
    )
    fake_png = [("files", ("fake.png", b"not a png", "image/png"))]
    assert_problem(
        await http.post(f"{path}/messages", data={"content": "x"}, files=fake_png, headers=token), 422, "invalid_input"
    )
    transcript = (await http.get(f"{path}/messages", headers=token)).json()["items"]
    assert len(transcript) == 2  # rejected sends stored nothing


async def test_attachment_names_are_cleaned_and_download_with_an_rfc_6266_header(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    files = [
        ("files", ("日本語.txt", b"konnichiwa", "text/plain")),
        ("files", ("notes\r\nSet-Cookie: a=1\x7f\x85.txt", b"line breaks", "text/plain")),
    ]
    # (httpx sends CR and LF as %0D and %0A, which the server's form parser turns back into CR and LF.)

    response = await http.post(f"{path}/messages", data={"content": "see attached"}, files=files, headers=token)

    assert response.status_code == 200, response.text
    japanese, broken = response.json()["message"]["attachments"]
    assert japanese["filename"] == "日本語.txt"
    download = await http.get(japanese["url"], headers=token)
    assert download.status_code == 200, download.text
    assert download.content == b"konnichiwa"
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"___.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt"
    )
    assert broken["filename"] == "notesSet-Cookie: a=1.txt"  # control characters are not stored
    download = await http.get(broken["url"], headers=token)
    assert download.status_code == 200, download.text
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=\"notesSet-Cookie: a=1.txt\"; filename*=UTF-8''notesSet-Cookie")
    assert all(" " <= char <= "~" for char in disposition)
    assert "set-cookie" not in download.headers


async def test_a_multipart_send_may_be_files_alone_and_is_documented_so(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    document = (await http.get("/schema/openapi.json")).json()
    for path in ("/v1/conversations/{conversation_id}/messages", "/v1/conversations/{conversation_id}/messages/stream"):
        form = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert "content" not in form.get("required", [])
        assert "minLength" not in form["properties"]["content"]
        # Said in words: an anyOf of the two made generated clients send an empty form (test_generated_client.py).
        assert "anyOf" not in form
        assert "neither is refused" in form["description"]
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])

    files_alone = await http.post(
        f"{path}/messages", files=[("files", ("note.txt", b"order NW-1", "text/plain"))], headers=token
    )
    empty_form = b'--x\r\nContent-Disposition: form-data; name="content"\r\n\r\n \r\n--x--\r\n'
    neither = await http.post(
        f"{path}/messages", content=empty_form, headers={**token, "content-type": "multipart/form-data; boundary=x"}
    )

    assert files_alone.status_code == 200, files_alone.text
    message = files_alone.json()["message"]
    assert message["content"] == ""
    assert [item["filename"] for item in message["attachments"]] == ["note.txt"]
    assert_problem(neither, 422, "invalid_input")
    # The body is optional in the document (for the generators, see _SendMessageOperation): none is an empty message.
    nothing = await http.post(f"{path}/messages", headers=token)
    assert_problem(nothing, 422, "invalid_input")


async def test_the_websocket_sends_and_receives_the_same_events(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    conversation = await start(http, service_headers)
    url = live.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"
    token = conversation["customer_token"]

    async with (
        websockets.connect(f"{url}?access_token={token}") as customer,
        websockets.connect(f"{url}?access_token={ADMIN_KEY}") as other,
    ):
        await customer.send(json.dumps({"type": "ping", "data": 7}))
        assert json.loads(await customer.recv()) == {"type": "pong", "data": 7}
        await customer.send(json.dumps({"type": "typing", "active": True}))
        typing = json.loads(await asyncio.wait_for(other.recv(), 5))
        assert typing == {"id": 0, "event": "typing", "data": {"role": "customer", "active": True}}
        await customer.send(json.dumps({"type": "send", "content": "hello over ws"}))
        received: list[dict[str, Any]] = []
        while not received or received[-1]["event"] != "done":
            frame = json.loads(await asyncio.wait_for(customer.recv(), 10))
            if frame.get("event") != "typing":
                received.append(frame)

    assert received[0]["event"] == "message"
    assert received[0]["data"]["content"] == "hello over ws"
    assert received[-1]["data"]["role"] == "assistant"
    assert [frame["id"] for frame in received] == sorted(frame["id"] for frame in received)


async def test_customers_cannot_reach_agent_only_or_others_feeds(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    mine = await start(http, service_headers, "cust-1")
    theirs = await start(http, service_headers, "cust-2")
    token = mine["customer_token"]

    response = await http.get(f"/v1/conversations/{theirs['id']}/events", params={"access_token": token})
    assert_problem(response, 404, "conversation_not_found")
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(
            live.replace("http", "ws") + f"/v1/conversations/{theirs['id']}/ws?access_token={token}"
        ):
            pass
    assert_problem(await http.get("/v1/knowledge/documents", headers=bearer(token)), 403, "forbidden")


async def test_a_refused_websocket_send_answers_an_error_frame_and_does_not_hold_up_shutdown(
    chat_app: Litestar, service_headers: dict[str, str]
) -> None:
    import websockets

    stopping: float | None = None
    async with serve(chat_app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        conversation = await start(http, service_headers)
        ws_url = url.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"
        async with websockets.connect(f"{ws_url}?access_token={conversation['customer_token']}") as customer:
            await customer.send(json.dumps({"type": "send", "content": "x" * 9000}))
            frame = json.loads(await asyncio.wait_for(customer.recv(), 5))
        stopping = time.monotonic()
    # The socket's feed relay stops with it: the server shuts down at once instead of waiting out its grace period.
    assert time.monotonic() - stopping < 10
    assert frame["type"] == "error"
    assert frame["data"]["code"] == "invalid_input"


async def test_page_cursors_go_into_a_url_as_they_are(http: httpx.AsyncClient, service_headers: dict[str, str]) -> None:
    made = {(await start(http, service_headers, f"pager-{n}"))["id"] for n in range(3)}
    first = (await http.get("/v1/conversations?limit=2", headers=service_headers)).json()
    cursor = first["next_cursor"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)

    # Pasted into the query string as it is: no percent-encoding on the way.
    response = await http.get(f"/v1/conversations?limit=2&cursor={cursor}", headers=service_headers)

    assert response.request.url.raw_path.decode().endswith(f"&cursor={cursor}")
    second = response.json()
    assert second["next_cursor"] is None
    listed = [item["id"] for item in first["items"] + second["items"]]
    assert len(listed) == 3
    assert set(listed) == made

    conversation = next(iter(made))
    sent = await http.post(
        f"/v1/conversations/{conversation}/messages", json={"content": "hi"}, headers=service_headers
    )
    assert sent.status_code == 200, sent.text
    messages = f"/v1/conversations/{conversation}/messages"
    page = (await http.get(f"{messages}?limit=1", headers=service_headers)).json()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", page["next_cursor"])
    rest = (await http.get(f"{messages}?limit=1&cursor={page['next_cursor']}", headers=service_headers)).json()
    assert [item["role"] for item in page["items"] + rest["items"]] == ["customer", "assistant"]
    assert rest["next_cursor"] is None


async def test_a_cursor_the_service_did_not_issue_is_an_invalid_input_problem(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    for n in range(2):
        await start(http, service_headers, f"pager-{n}")
    conversations_cursor = (await http.get("/v1/conversations?limit=1", headers=service_headers)).json()["next_cursor"]
    conversation = (await start(http, service_headers))["id"]
    old_form = "2026-12-07T10:00:00.123456+00:00_01890a5d-ac96-774b-bcce-b302099a8057"  # '+' arrives as ' '

    for path in (
        f"/v1/conversations?cursor={old_form}",
        "/v1/conversations?cursor=garbage",
        "/v1/conversations?cursor=%00%FF",
        f"/v1/conversations?cursor={conversations_cursor}x",
        f"/v1/conversations/{conversation}/messages?cursor={conversations_cursor}",  # another list's kind
    ):
        body = assert_problem(await http.get(path, headers=service_headers), 422, "invalid_input")
        assert body["detail"] == "The cursor is not valid.", path


async def test_an_erased_customers_token_starts_nothing_and_is_told_the_customer_is_gone(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    started = await start(http, service_headers, "cust-erased")
    customer = bearer(started["customer_token"])
    erased = await http.delete(f"/v1/customers/{started['customer_id']}", headers=service_headers)
    assert erased.status_code == 200, erased.text

    refused = await http.post("/v1/conversations", json={"customer": {"external_id": "cust-erased"}}, headers=customer)

    assert_problem(refused, 404, "customer_not_found")
    assert (await http.get("/v1/conversations", headers=customer)).json()["items"] == []


async def test_a_failed_turn_is_its_senders_business_and_followers_keep_following(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    import websockets

    # A turn's error went out on the shared feed: every follower's stream ended and every socket closed (1008).
    conversation = await start(http, service_headers)
    base = f"/v1/conversations/{conversation['id']}"
    customer = bearer(conversation["customer_token"])
    url = live.replace("http", "ws") + f"{base}/ws?access_token={conversation['customer_token']}"
    llm.script = Script(crash=True)
    async with (
        aconnect_sse(http, "GET", f"{base}/events", headers=service_headers) as follower,
        websockets.connect(url) as socket,
    ):
        followed = follower.aiter_sse()
        failed = await http.post(f"{base}/messages", json={"content": "How long do refunds take?"}, headers=customer)
        # The JSON send says the reply failed (it answered 200 with `reply: null`, as when a person has it).
        assert_problem(failed, 500, "internal_error")
        await socket.send(json.dumps({"type": "send", "content": "Hello? Refunds?"}))
        # The socket that sent it is told, and stays open.
        while (frame := json.loads(await asyncio.wait_for(socket.recv(), 5))).get("event") != "error":
            assert frame.get("event") == "message", frame
        assert frame["data"]["code"] == "internal_error"
        llm.script = Script()
        answered = await http.post(f"{base}/messages", json={"content": "Refunds, please"}, headers=customer)
        assert answered.json()["reply"] is not None
        # Both followers are still there and hear the next reply.
        while (event := await asyncio.wait_for(anext(followed), 5)).event != "done":
            assert event.event != "error", event.data
        while (frame := json.loads(await asyncio.wait_for(socket.recv(), 5))).get("event") != "done":
            assert frame.get("event") != "error", frame
    transcript = (await http.get(f"{base}/messages", headers=service_headers)).json()["items"]
    assert [item["content"] for item in transcript if item["role"] == "customer"] == [
        "How long do refunds take?",
        "Hello? Refunds?",
        "Refunds, please",
    ]


async def test_model_text_that_valkey_or_postgresql_cannot_take_is_mended_not_a_hung_stream(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    # A surrogate pair split across two pieces (as a gateway may) could not be encoded for the feed: the stream
    # stayed open for good. A NUL failed the store after the words were streamed.
    llm.script = Script(
        pieces=("Hi \ud83d", "\ude00 there", ", lone \udc00 half", " and a NUL\x00."), cite_first_passage=False
    )
    conversation = await start(http, service_headers)
    base = f"/v1/conversations/{conversation['id']}"

    async with aconnect_sse(
        http, "POST", f"{base}/messages/stream", json={"content": "Hello"}, headers=service_headers
    ) as source:
        events = await asyncio.wait_for(read_events(source.aiter_sse()), 10)

    expected = "Hi \U0001f600 there, lone \ufffd half and a NUL."
    assert events[-1]["event"] == "done"
    assert "".join(event["data"]["text"] for event in events if event["event"] == "delta") == expected
    assert events[-1]["data"]["content"] == expected
    stored = (await http.get(f"{base}/messages", headers=service_headers)).json()["items"]
    assert stored[-1]["content"] == expected


async def test_attachments_stay_context_for_the_turns_that_follow(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    # Given to the model only in the turn that carried them, "and what does the screenshot show?" had nothing.
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    log, png = b"printer says E04 paper jam", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    files = [("files", ("printer.log.txt", log, "text/plain")), ("files", ("shot.png", png, "image/png"))]
    await http.post(f"{path}/messages", data={"content": "see attached"}, files=files, headers=token)

    await http.post(f"{path}/messages", json={"content": "and what does the screenshot show?"}, headers=token)

    follow_up = llm.requests[1]
    assert [item.text.strip() for item in follow_up.attachments] == [log.decode()]
    assert [(image.filename, image.data) for image in follow_up.images] == [("shot.png", png)]


async def test_the_newest_five_images_go_with_a_turn_in_the_order_they_were_sent(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    for batch in (("a", "b", "c"), ("d", "e", "f")):
        files = [("files", (f"{name}.png", png, "image/png")) for name in batch]
        await http.post(f"{path}/messages", data={"content": "photos"}, files=files, headers=service_headers)

    await http.post(f"{path}/messages", json={"content": "what do the photos show?"}, headers=service_headers)

    assert [image.filename for image in llm.requests[-1].images] == ["b.png", "c.png", "d.png", "e.png", "f.png"]


async def test_a_send_that_waits_out_a_busy_reply_is_stored_and_answered_with_the_next_one(
    chat_settings: Settings, embedder: OnnxMiniLMEmbedder, service_headers: dict[str, str]
) -> None:
    # Answered as an error (503 with Retry-After), a client would send it again: stored twice.
    settings = msgspec.structs.replace(
        chat_settings, conversations=msgspec.structs.replace(chat_settings.conversations, reply_wait_s=0.2)
    )
    llm = ScriptedLLM(gate=asyncio.Event())
    app = create_app(settings, shared_embedder_provider(embedder), llm_provider(llm))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        conversation = await start(http, service_headers)
        path = f"/v1/conversations/{conversation['id']}/messages"
        first = asyncio.create_task(
            http.post(path, json={"content": "How long do refunds take?"}, headers=service_headers)
        )
        while not llm.active:  # noqa: ASYNC110 - the first reply holds the conversation, waiting at the gate
            await asyncio.sleep(0.01)

        busy = await http.post(path, json={"content": "And for PayPal?"}, headers=service_headers)
        assert llm.gate is not None
        llm.gate.set()
        answered = (await first).json()

    assert busy.status_code == 200, busy.text
    assert (busy.json()["reply"], busy.json()["conversation_status"]) == (None, "bot")
    assert answered["reply"] is not None
