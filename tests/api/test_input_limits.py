"""Every way in has a size limit, and going over it is a 413 or 422 problem (a close code on a WebSocket).

The app here is configured small (4 KiB request bodies, 2 KiB documents, 200-character messages) so the limits can
be crossed cheaply; docs/limits.md lists them with their defaults.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from support.config import HttpSettings, Settings
from tests.api.test_conversations import bearer, start
from tests.conftest import ADMIN_KEY
from tests.helpers import assert_problem

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MAX_BODY = 4096


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        http=HttpSettings(max_body_bytes=MAX_BODY),
        knowledge=msgspec.structs.replace(settings.knowledge, max_document_bytes=2048),
        conversations=msgspec.structs.replace(settings.conversations, max_message_chars=200),
    )


def fields_in_error(body: dict[str, Any]) -> list[str]:
    return [error["location"] for error in body["errors"]]


async def test_a_body_over_the_limit_is_a_413_problem_with_or_without_a_length(http: httpx.AsyncClient) -> None:
    oversized = json.dumps({"query": "x" * MAX_BODY}).encode()
    headers = {**ADMIN, "content-type": "application/json"}
    declared = await http.post("/v1/knowledge/search", content=oversized, headers=headers)
    assert_problem(declared, 413, "content_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(oversized), 1000):
            yield oversized[offset : offset + 1000]

    streamed = await http.post("/v1/knowledge/search", content=chunks(), headers=headers)
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413, "content_too_large")


@pytest.mark.parametrize("path", ["messages", "messages/stream"])
async def test_a_send_without_files_is_held_to_the_body_limit(http: httpx.AsyncClient, path: str) -> None:
    # The send's route admits five attachments' worth; a JSON body of 40 MB was read whole and answered 422.
    conversation = await start(http, ADMIN)
    url = f"/v1/conversations/{conversation['id']}/{path}"
    oversized = json.dumps({"content": "x" * MAX_BODY}).encode()
    headers = {**ADMIN, "content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(oversized), 1000):
            yield oversized[offset : offset + 1000]

    for body in (oversized, chunks()):
        refused = await http.post(url, content=body, headers=headers)
        assert_problem(refused, 413, "content_too_large")
    transcript = await http.get(f"/v1/conversations/{conversation['id']}/messages", headers=ADMIN)
    assert transcript.json()["items"] == []
    within = await http.post(url, json={"content": "How long do refunds take?"}, headers=ADMIN)
    assert within.status_code == 200


async def test_documents_over_the_size_limit_are_413_and_their_fields_are_bounded(
    client: AsyncTestClient[Litestar],
) -> None:
    big = await client.post("/v1/knowledge/documents", json={"content": "# T\n\n" + "word " * 600}, headers=ADMIN)
    assert_problem(big, 413, "content_too_large")
    upload = await client.post(
        "/v1/knowledge/uploads", files={"file": ("big.md", b"# T\n\n" + b"word " * 600, "text/markdown")}, headers=ADMIN
    )
    assert_problem(upload, 413, "content_too_large")

    too_many = {f"k{n}": "v" for n in range(51)}
    for metadata in (too_many, {"k" * 101: "v"}, {"": "v"}, {"k": "v" * 1001}):
        response = await client.post(
            "/v1/knowledge/documents", json={"content": "# T\n\nbody", "metadata": metadata}, headers=ADMIN
        )
        [location] = fields_in_error(assert_problem(response, 422, "validation_failed"))
        assert location.startswith("$.metadata")
    long_title = await client.post(
        "/v1/knowledge/uploads",
        files={"file": ("a.md", b"# T\n\nbody", "text/markdown")},
        data={"title": "t" * 501},
        headers=ADMIN,
    )
    assert_problem(long_title, 422, "validation_failed")
    long_url = await client.post(
        "/v1/knowledge/uploads",
        files={"file": ("a.md", b"# T\n\nbody", "text/markdown")},
        data={"url": "https://example.com/" + "a" * 2000},
        headers=ADMIN,
    )
    assert_problem(long_url, 422, "validation_failed")
    query = await client.post("/v1/knowledge/search", json={"query": "q" * 2001}, headers=ADMIN)
    assert fields_in_error(assert_problem(query, 422, "validation_failed")) == ["$.query"]
    documents = await client.get("/v1/knowledge/documents", headers=ADMIN)
    assert documents.json()["items"] == []  # nothing refused was stored


async def test_conversation_fields_are_bounded(http: httpx.AsyncClient, service_headers: dict[str, str]) -> None:
    for metadata in ({f"k{n}": "v" for n in range(51)}, {"k" * 101: "v"}, {"plan": "p" * 1001}):
        response = await http.post(
            "/v1/conversations", json={"customer": {"external_id": "c"}, "metadata": metadata}, headers=service_headers
        )
        [location] = fields_in_error(assert_problem(response, 422, "validation_failed"))
        assert location.startswith("$.metadata")
    long_id = await http.post(
        "/v1/conversations", json={"customer": {"external_id": "c" * 301}}, headers=service_headers
    )
    assert_problem(long_id, 422, "validation_failed")
    not_an_email = await http.post(
        "/v1/conversations",
        json={"customer": {"external_id": "c1", "email": "ada at example"}},
        headers=service_headers,
    )
    assert_problem(not_an_email, 422, "validation_failed")
    assert [error["location"] for error in not_an_email.json()["errors"]] == ["$.customer.email"]

    conversation = await start(http, service_headers)
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    too_long = {"content": "x" * 201}
    assert_problem(await http.post(f"{path}/messages", json=too_long, headers=token), 422, "invalid_input")
    assert_problem(await http.post(f"{path}/messages/stream", json=too_long, headers=token), 422, "invalid_input")
    attached = [("files", ("note.txt", b"see above", "text/plain"))]
    multipart = await http.post(f"{path}/messages", data=too_long, files=attached, headers=token)
    assert_problem(multipart, 422, "invalid_input")
    key = {**token, "Idempotency-Key": "k" * 201}
    long_key = await http.post(f"{path}/messages", json={"content": "hi"}, headers=key)
    assert_problem(long_key, 422, "validation_failed")
    assert [error["location"] for error in long_key.json()["errors"]] == ["header.idempotency-key"]
    empty_key = {**token, "Idempotency-Key": ""}
    assert_problem(
        await http.post(f"{path}/messages", json={"content": "hi"}, headers=empty_key), 422, "validation_failed"
    )
    feedback = await http.post(f"{path}/feedback", json={"rating": 5, "comment": "c" * 4001}, headers=token)
    assert_problem(feedback, 422, "validation_failed")
    handoff = await http.post(f"{path}/handoff", json={"reason": "r" * 501}, headers=token)
    assert_problem(handoff, 422, "validation_failed")
    transcript = (await http.get(f"{path}/messages", headers=token)).json()["items"]
    assert transcript == []


async def test_websocket_frames_are_bounded(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    conversation = await start(http, service_headers)
    url = live.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"
    async with websockets.connect(f"{url}?access_token={conversation['customer_token']}") as socket:
        # A frame that is not JSON is answered, and the socket stays open.
        await socket.send("not json")
        assert json.loads(await socket.recv())["data"]["code"] == "invalid_frame"
        await socket.send(json.dumps({"type": "ping", "data": 1}))
        assert json.loads(await socket.recv()) == {"type": "pong", "data": 1}
        # A frame no valid message fits in: closed with 1009 (Message Too Big).
        await socket.send(json.dumps({"type": "send", "content": "x" * (12 * 200 + 5000)}))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
