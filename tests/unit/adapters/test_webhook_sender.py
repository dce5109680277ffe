"""The httpx sender against a real local HTTP server."""

from collections.abc import AsyncIterator

import pytest

from support.adapters.http.webhooks import HttpxWebhookSender
from support.devservers.postgres import free_port
from tests.fakes.webhooks import HOLD, WebhookReceiver


@pytest.fixture
async def sender() -> AsyncIterator[HttpxWebhookSender]:
    sender = HttpxWebhookSender(timeout_s=0.5)
    yield sender
    await sender.aclose()


async def test_posts_the_body_and_headers_and_returns_the_status(sender: HttpxWebhookSender) -> None:
    async with WebhookReceiver(204, 500, 302) as receiver:
        headers = {"Content-Type": "application/json", "Webhook-Id": "e-1"}
        results = [await sender.send(receiver.url, b'{"id":"e-1"}', headers) for _ in range(3)]
        assert [(result.status_code, result.ok) for result in results] == [(204, True), (500, False), (302, False)]
        first = receiver.requests[0]
        assert first.path == "/hooks"
        assert first.body == b'{"id":"e-1"}'
        assert first.headers["webhook-id"] == "e-1"
        assert first.headers["content-type"] == "application/json"
        assert first.headers["user-agent"] == "support-webhooks"
        # The 302 was not followed: three requests, all to the registered URL.
        assert len(receiver.requests) == 3


async def test_an_endpoint_that_does_not_answer_in_time_is_an_error_result(sender: HttpxWebhookSender) -> None:
    async with WebhookReceiver(HOLD) as receiver:
        result = await sender.send(receiver.url, b"{}", {})
        receiver.release()
    assert (result.status_code, result.ok) == (None, False)
    assert result.error == "no answer within 0.5 s"


async def test_a_refused_connection_is_an_error_result(sender: HttpxWebhookSender) -> None:
    result = await sender.send(f"http://127.0.0.1:{free_port()}/hooks", b"{}", {})
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("ConnectError")
