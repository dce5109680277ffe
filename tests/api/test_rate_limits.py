"""Rate limits and the token budget over real HTTP: 429 problems, Retry-After and the RateLimit headers.

Each test serves the app with its own limits (the ``limits`` fixture, parametrized); the window is a minute, so a
test that takes seconds sees no unit accrue.
"""

import json
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from dishka import Provider, Scope
from httpx_sse import aconnect_sse
from litestar import Litestar
from litestar.testing import AsyncTestClient

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.config import LimitSettings, Settings
from support.container import create_app
from support.domain.limits import RateCheck, RateDecision, RatePolicy
from support.ports.errors import CacheUnavailableError
from support.ports.limits import RateLimiter, TokenBudget
from tests.api.test_conversations import bearer, start
from tests.conftest import ADMIN_KEY, shared_embedder_provider
from tests.helpers import assert_problem

ROOMY = 10_000


def limits_of(**given: Any) -> LimitSettings:
    """Everything roomy but what the test sets."""
    roomy: dict[str, Any] = {
        "per_key": ROOMY,
        "per_customer": ROOMY,
        "per_ip": ROOMY,
        "per_conversation": ROOMY,
        "daily_tokens_per_customer": 0,
    }
    return LimitSettings(**(roomy | given))


@pytest.fixture
def limits() -> LimitSettings:
    return limits_of()


@pytest.fixture
def chat_settings(settings: Settings, limits: LimitSettings) -> Settings:
    return msgspec.structs.replace(settings, limits=limits)


def items(header: str) -> dict[str, dict[str, int]]:
    """A RateLimit or RateLimit-Policy field as {policy: {parameter: value}}."""
    parsed: dict[str, dict[str, int]] = {}
    for item in header.split(","):
        name, *parameters = item.strip().split(";")
        assert re.fullmatch(r'"[a-z-]+"', name), header
        parsed[name.strip('"')] = {key: int(value) for key, value in (part.split("=") for part in parameters)}
    return parsed


def remaining(response: httpx.Response) -> dict[str, int]:
    return {name: values["r"] for name, values in items(response.headers["ratelimit"]).items()}


def assert_limited(response: httpx.Response, *, refused_by: str, wait_at_most: int) -> int:
    body = assert_problem(response, 429, "rate_limited")
    assert refused_by in body["detail"]
    retry = int(response.headers["retry-after"])
    assert 1 <= retry <= wait_at_most
    limit = items(response.headers["ratelimit"])
    assert limit[refused_by]["r"] == 0
    assert limit[refused_by]["t"] <= retry  # Retry-After never points before the end of the effective window
    return retry


@pytest.mark.parametrize("limits", [limits_of(per_key=3)], ids=["per_key=3"])
async def test_each_api_key_has_its_own_quota(http: httpx.AsyncClient, service_headers: dict[str, str]) -> None:
    created = await http.post("/v1/keys", json={"name": "backend", "role": "service"}, headers=service_headers)
    key = bearer(created.json()["secret"])

    answers = [await http.get("/v1/conversations", headers=key) for _ in range(3)]
    assert [response.status_code for response in answers] == [200, 200, 200]
    assert items(answers[0].headers["ratelimit-policy"]) == {"api-key": {"q": 3, "w": 60}}
    assert [remaining(response) for response in answers] == [{"api-key": 2}, {"api-key": 1}, {"api-key": 0}]
    assert all(items(response.headers["ratelimit"])["api-key"]["t"] == 20 for response in answers)

    refused = await http.get("/v1/conversations", headers=key)
    assert_limited(refused, refused_by="api-key", wait_at_most=20)
    # The bootstrap admin key is a key of its own: it has spent one request (creating the key).
    other = await http.get("/v1/keys", headers=service_headers)
    assert other.status_code == 200
    assert remaining(other) == {"api-key": 1}
    # Endpoints without credentials are not limited and say nothing about limits.
    health = await http.get("/health/live")
    assert health.status_code == 200
    assert "ratelimit" not in health.headers


@pytest.mark.parametrize("limits", [limits_of(per_customer=2, per_ip=10)], ids=["per_customer=2"])
async def test_a_customer_token_is_limited_per_customer_and_per_address(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    mine = await start(http, service_headers, "cust-1")
    theirs = await start(http, service_headers, "cust-2")
    token = bearer(mine["customer_token"])
    path = f"/v1/conversations/{mine['id']}"

    first = await http.get(path, headers=token)
    assert items(first.headers["ratelimit-policy"]) == {"customer": {"q": 2, "w": 60}, "ip": {"q": 10, "w": 60}}
    assert remaining(first) == {"customer": 1, "ip": 9}
    assert remaining(await http.get(f"{path}/messages", headers=token)) == {"customer": 0, "ip": 8}
    refused = await http.get(path, headers=token)
    assert_limited(refused, refused_by="customer", wait_at_most=30)
    assert remaining(refused) == {"customer": 0, "ip": 8}  # the refused request cost the address nothing

    other = await http.get(f"/v1/conversations/{theirs['id']}", headers=bearer(theirs["customer_token"]))
    assert other.status_code == 200
    assert remaining(other) == {"customer": 1, "ip": 7}


@pytest.mark.parametrize(
    "limits", [limits_of(per_ip=2, trusted_proxies=("127.0.0.1",))], ids=["per_ip=2 behind a trusted proxy"]
)
async def test_the_address_limit_spans_customers_and_believes_only_trusted_proxies(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    customers = [await start(http, service_headers, f"visitor-{n}") for n in range(3)]

    def get(n: int, forwarded: str | None = None) -> Any:
        headers = bearer(customers[n]["customer_token"])
        if forwarded:
            headers["X-Forwarded-For"] = forwarded
        return http.get(f"/v1/conversations/{customers[n]['id']}", headers=headers)

    # The test client is the trusted proxy itself here: without the header, its own address is the client's.
    assert (await get(0)).status_code == 200
    assert (await get(1)).status_code == 200
    assert_limited(await get(2), refused_by="ip", wait_at_most=30)

    # Visitors behind the proxy each count under their own address ...
    assert remaining(await get(0, "203.0.113.7"))["ip"] == 1
    assert remaining(await get(1, "203.0.113.7"))["ip"] == 0
    assert (await get(2, "198.51.100.4")).status_code == 200
    # ... and one cannot escape its quota by writing another address before the proxy's.
    assert_limited(await get(2, "192.0.2.1, 203.0.113.7"), refused_by="ip", wait_at_most=30)


@pytest.mark.parametrize("limits", [limits_of(per_conversation=2)], ids=["per_conversation=2"])
async def test_customer_messages_are_limited_per_conversation_on_every_way_of_sending(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    conversation = await start(http, service_headers, "cust-1")
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])

    sent = await http.post(f"{path}/messages", json={"content": "Where is my parcel?"}, headers=token)
    assert sent.status_code == 200, sent.text
    assert remaining(sent)["conversation"] == 1
    async with aconnect_sse(
        http, "POST", f"{path}/messages/stream", json={"content": "Any news?"}, headers=token
    ) as source:
        assert remaining(source.response)["conversation"] == 0
        async for event in source.aiter_sse():
            if event.event in {"done", "error"}:
                break
    refused = await http.post(f"{path}/messages", json={"content": "Hello??"}, headers=token)
    assert_limited(refused, refused_by="conversation", wait_at_most=30)
    # API keys sending into the conversation have a count of their own (the customer's is not theirs to spend).
    on_behalf = await http.post(f"{path}/messages", json={"content": "Hello??"}, headers=service_headers)
    assert on_behalf.status_code == 200, on_behalf.text
    assert remaining(on_behalf)["conversation"] == 1
    # Reading is not sending.
    transcript = await http.get(f"{path}/messages", headers=token)
    assert transcript.status_code == 200
    assert "conversation" not in remaining(transcript)
    contents = [item["content"] for item in transcript.json()["items"] if item["role"] == "customer"]
    assert contents == ["Where is my parcel?", "Any news?", "Hello??"]

    url = live.replace("http", "ws") + f"{path}/ws?access_token={conversation['customer_token']}"
    async with websockets.connect(url) as socket:
        assert socket.response is not None
        assert items(socket.response.headers["ratelimit-policy"])["customer"]["q"] == ROOMY
        await socket.send(json.dumps({"type": "send", "content": "and over the socket?"}))
        frame = json.loads(await socket.recv())
        assert frame["type"] == "error"
        assert frame["data"]["code"] == "rate_limited"
        assert 1 <= frame["data"]["retry_after_s"] <= 30

    other = await start(http, service_headers, "cust-2")
    elsewhere = await http.post(
        f"/v1/conversations/{other['id']}/messages", json={"content": "Hi"}, headers=service_headers
    )
    assert elsewhere.status_code == 200


@pytest.mark.parametrize("limits", [limits_of(daily_tokens_per_customer=150)], ids=["150 tokens a day"])
async def test_a_spent_token_budget_refuses_messages_before_they_are_stored_until_utc_midnight(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    # The scripted model reports 103 tokens a reply: the first turn leaves 47, the second overspends.
    conversation = await start(http, service_headers, "cust-1")
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    for text in ("Where is my parcel?", "And the invoice?"):
        answered = await http.post(f"{path}/messages", json={"content": text}, headers=token)
        assert answered.status_code == 200, answered.text
        assert answered.json()["reply"]["usage"]["input_tokens"] == 100

    refused = await http.post(f"{path}/messages", json={"content": "One more thing"}, headers=token)
    body = assert_problem(refused, 429, "token_budget_exhausted")
    assert "tomorrow" in body["detail"]
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    assert abs(int(refused.headers["retry-after"]) - (midnight - now).total_seconds()) <= 5
    on_behalf = await http.post(f"{path}/messages", json={"content": "One more thing"}, headers=service_headers)
    assert_problem(on_behalf, 429, "token_budget_exhausted")

    transcript = (await http.get(f"{path}/messages", headers=token)).json()["items"]
    assert [item["content"] for item in transcript if item["role"] == "customer"] == [
        "Where is my parcel?",
        "And the invoice?",
    ]
    # The customer can still ask for a person, and other customers are unaffected.
    assert (await http.post(f"{path}/handoff", json={}, headers=token)).status_code == 200
    other = await start(http, service_headers, "cust-2")
    answered = await http.post(
        f"/v1/conversations/{other['id']}/messages",
        json={"content": "Hi"},
        headers=bearer(other["customer_token"]),
    )
    assert answered.status_code == 200


class DownLimiter:
    async def acquire(self, key: str, policy: RatePolicy) -> RateDecision:  # noqa: ARG002
        raise CacheUnavailableError

    async def acquire_all(self, checks: Sequence[RateCheck]) -> list[RateDecision]:  # noqa: ARG002
        raise CacheUnavailableError


class DownBudget:
    async def spent(self, customer_id: UUID, day: date) -> int:  # noqa: ARG002
        raise CacheUnavailableError

    async def spend(self, customer_id: UUID, day: date, tokens: int) -> int:  # noqa: ARG002
        raise CacheUnavailableError


@pytest.fixture
async def store_down_client(
    settings: Settings, embedder: OnnxMiniLMEmbedder
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    down = Provider(scope=Scope.APP)
    down.provide(DownLimiter, provides=RateLimiter, override=True)
    down.provide(DownBudget, provides=TokenBudget, override=True)
    tight = msgspec.structs.replace(
        settings, limits=LimitSettings(per_key=1, per_conversation=1, daily_tokens_per_customer=1)
    )
    async with AsyncTestClient(create_app(tight, shared_embedder_provider(embedder), down)) as client:
        yield client


async def test_limits_fail_open_without_headers_while_their_store_is_down(
    store_down_client: AsyncTestClient[Litestar],
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    started = await store_down_client.post("/v1/conversations", json={"customer": {"external_id": "c"}}, headers=admin)
    assert started.status_code == 201
    path = f"/v1/conversations/{started.json()['id']}/messages"
    for text in ("first", "second"):  # over every limit, were they counted
        sent = await store_down_client.post(path, json={"content": text}, headers=admin)
        assert sent.status_code == 200, sent.text
        assert "ratelimit" not in sent.headers
        assert "ratelimit-policy" not in sent.headers


@pytest.mark.parametrize("limits", [limits_of(per_conversation=2)], ids=["per_conversation=2"])
async def test_a_customer_refused_a_conversation_does_not_spend_its_owners_limit(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    theirs = await start(http, service_headers, "cust-1")
    path = f"/v1/conversations/{theirs['id']}/messages"
    intruder = bearer((await start(http, service_headers, "cust-2"))["customer_token"])

    attempts = [await http.post(path, json={"content": "let me in"}, headers=intruder) for _ in range(3)]

    # The intruder spends a count of their own: 404 while it lasts, then 429 ...
    assert [attempt.status_code for attempt in attempts] == [404, 404, 429]
    assert_limited(attempts[-1], refused_by="conversation", wait_at_most=60)

    # ... and the owner still has the whole limit.
    sent = await http.post(path, json={"content": "Where is my parcel?"}, headers=bearer(theirs["customer_token"]))
    assert sent.status_code == 200, sent.text
    assert remaining(sent)["conversation"] == 1


@pytest.mark.parametrize("limits", [limits_of(per_conversation=1)], ids=["per_conversation=1"])
async def test_a_spent_send_limit_answers_429_before_any_problem_with_the_body(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    # A send's limit is counted while its body is read (api/limits.py): the verdict still comes first.
    conversation = await start(http, service_headers, "cust-1")
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    assert (await http.post(f"{path}/messages", json={"content": "Hi"}, headers=token)).status_code == 200

    empty = await http.post(f"{path}/messages", json={"content": "  "}, headers=token)
    assert_limited(empty, refused_by="conversation", wait_at_most=60)
    broken = await http.post(
        f"{path}/messages/stream", content=b"{not json", headers={**token, "content-type": "application/json"}
    )
    assert_limited(broken, refused_by="conversation", wait_at_most=60)
    unknown = await http.post(f"/v1/conversations/{conversation['customer_id']}/messages", json={"content": "x"})
    assert unknown.status_code == 401  # no caller, nothing counted: authentication still comes first
    transcript = (await http.get(f"{path}/messages", headers=token)).json()["items"]
    assert [item["content"] for item in transcript if item["role"] == "customer"] == ["Hi"]


@pytest.mark.parametrize("limits", [limits_of(per_conversation=1)], ids=["per_conversation=1"])
async def test_a_retry_over_the_limit_gets_its_original_but_nothing_new_gets_through(
    live: str, http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    import websockets

    conversation = await start(http, service_headers, "cust-1")
    path = f"/v1/conversations/{conversation['id']}"
    token = bearer(conversation["customer_token"])
    first = await http.post(
        f"{path}/messages", json={"content": "Where is my parcel?"}, headers={**token, "Idempotency-Key": "k-1"}
    )
    assert first.status_code == 200, first.text

    # The response was lost; the client retries with the same key once the limit is spent: the retry writes
    # nothing, so it gets the original (it got a 429, and a client could think its message was dropped).
    retried = await http.post(
        f"{path}/messages", json={"content": "Where is my parcel?"}, headers={**token, "Idempotency-Key": "k-1"}
    )
    assert retried.status_code == 200, retried.text
    assert retried.json()["duplicate"] is True
    assert retried.json()["message"]["id"] == first.json()["message"]["id"]
    assert retried.json()["reply"]["id"] == first.json()["reply"]["id"]
    # A new key, no key, or the key with another message: still refused, as any send over the limit.
    for headers, content in (({"Idempotency-Key": "k-2"}, "Hello?"), ({}, "Hello?"), ({"Idempotency-Key": "k-1"}, "x")):
        refused = await http.post(f"{path}/messages", json={"content": content}, headers={**token, **headers})
        assert_limited(refused, refused_by="conversation", wait_at_most=60)
    # The socket the same: a retried send frame is echoed (its reply is in the feed), a new one refused.
    url = live.replace("http", "ws") + f"{path}/ws?access_token={conversation['customer_token']}"
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps({"type": "send", "content": "Where is my parcel?", "idempotency_key": "k-1"}))
        echo = json.loads(await socket.recv())
        assert (echo["event"], echo["data"]["id"]) == ("message", first.json()["message"]["id"])
        await socket.send(json.dumps({"type": "send", "content": "Hello?", "idempotency_key": "k-3"}))
        frame = json.loads(await socket.recv())
        assert (frame["type"], frame["data"]["code"]) == ("error", "rate_limited")
    transcript = (await http.get(f"{path}/messages", headers=token)).json()["items"]
    assert [item["content"] for item in transcript if item["role"] == "customer"] == ["Where is my parcel?"]
