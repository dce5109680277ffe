"""Webhook endpoints through the API, and deliveries to a real HTTP receiver by the app's own worker."""

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from dishka import AsyncContainer
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.postgres.webhooks import (
    PostgresWebhookDeliveryQueue,
    PostgresWebhookOutbox,
    PostgresWebhookRepository,
)
from support.config import Settings, WebhookSettings
from support.container import create_app
from support.domain.ids import new_id
from support.domain.webhooks import (
    DeliveryStatus,
    OutboundEvent,
    Webhook,
    WebhookEventType,
    generate_webhook_secret,
)
from support.ports.system import UnitOfWork
from support.ports.webhooks import WebhookOutbox, WebhookRepository
from tests.api.conftest import llm_provider, serve
from tests.api.test_keys import bearer, create_key
from tests.conftest import shared_embedder_provider
from tests.fakes.llm import ScriptedLLM
from tests.fakes.webhooks import HOLD, WebhookReceiver
from tests.helpers import assert_problem

DOCS = Path(__file__).parents[2] / "docs" / "webhooks.md"
HOOK = {"url": "https://crm.example.com/hooks/support", "events": ["handoff.requested", "message.created"]}
Verifier = Callable[[str, Mapping[str, str], bytes], bool]


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    """The served app (``live``/``http``) polls often and retries soon, so deliveries happen within the test."""
    fast = WebhookSettings(timeout_s=5, poll_interval_s=0.05, backoff_base_s=2, backoff_cap_s=2, max_attempts=3)
    return msgspec.structs.replace(settings, webhooks=fast)


@pytest.fixture(scope="module")
def verify_webhook() -> Verifier:
    """The verification snippet of docs/webhooks.md, as published."""
    [snippet] = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102 - our own documentation
    verifier: Verifier = namespace["verify_webhook"]
    return verifier


async def emit(app: Litestar, *events: OutboundEvent, commit: bool = True) -> None:
    """Enqueue events the way use cases do: on the request scope's session, then commit (or not)."""
    container: AsyncContainer = app.state.dishka_container
    async with container() as request:
        outbox, uow = await request.get(WebhookOutbox), await request.get(UnitOfWork)
        for event in events:
            await outbox.enqueue(event)
        if commit:
            await uow.commit()


def event(event_type: WebhookEventType, **data: object) -> OutboundEvent:
    return OutboundEvent(id=new_id(), type=event_type, conversation_id=None, occurred_at=datetime.now(UTC), data=data)


async def register(http: httpx.AsyncClient, headers: dict[str, str], receiver: WebhookReceiver, event_type: str) -> str:
    """Register ``receiver`` for ``event_type``; its webhook id."""
    created = await http.post("/v1/webhooks", json={"url": receiver.url, "events": [event_type]}, headers=headers)
    assert created.status_code == 201, created.text
    webhook_id: str = created.json()["id"]
    return webhook_id


async def wait_for_deliveries(
    http: httpx.AsyncClient, webhook_id: str, headers: dict[str, str], done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        response = await http.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        if done(items):
            return items
        assert time.monotonic() < deadline, items
        await http.get("/health/live")  # yields to the worker and the receiver in this event loop


async def test_a_created_webhook_shows_its_secret_once(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str], engine: AsyncEngine
) -> None:
    response = await client.post("/v1/webhooks", json=HOOK | {"description": "CRM"}, headers=admin_headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["url"] == HOOK["url"]
    assert created["events"] == HOOK["events"]
    assert (created["description"], created["active"]) == ("CRM", True)
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert secret.startswith(created["secret_hint"])

    listed = (await client.get("/v1/webhooks", headers=admin_headers)).json()
    assert listed["next_cursor"] is None
    [item] = listed["items"]
    assert item == {key: value for key, value in created.items() if key != "secret"}
    read = await client.get(f"/v1/webhooks/{created['id']}", headers=admin_headers)
    assert read.json() == item
    assert secret not in read.text + str(listed)
    async with engine.connect() as connection:
        # Kept as is, to sign with; only the creation response ever shows it.
        assert await connection.scalar(sa.text("SELECT secret FROM webhooks")) == secret


async def test_webhooks_are_listed_a_page_at_a_time_newest_first(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    created = []
    for index in range(3):
        response = await client.post(
            "/v1/webhooks", json=HOOK | {"description": f"hook {index}"}, headers=admin_headers
        )
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])

    first = (await client.get("/v1/webhooks?limit=2", headers=admin_headers)).json()
    assert [item["id"] for item in first["items"]] == [created[2], created[1]]
    assert first["next_cursor"]
    second = (await client.get(f"/v1/webhooks?limit=2&cursor={first['next_cursor']}", headers=admin_headers)).json()
    assert [item["id"] for item in second["items"]] == [created[0]]
    assert second["next_cursor"] is None
    for limit in (0, 101):
        response = await client.get(f"/v1/webhooks?limit={limit}", headers=admin_headers)
        assert_problem(response, 422, "validation_failed")
    body = assert_problem(await client.get("/v1/webhooks?cursor=nope", headers=admin_headers), 422, "invalid_input")
    assert body["detail"] == "The cursor is not valid."


async def test_a_deleted_webhook_is_gone(client: AsyncTestClient[Litestar], admin_headers: dict[str, str]) -> None:
    webhook_id = (await client.post("/v1/webhooks", json=HOOK, headers=admin_headers)).json()["id"]
    assert (await client.delete(f"/v1/webhooks/{webhook_id}", headers=admin_headers)).status_code == 204
    assert (await client.get("/v1/webhooks", headers=admin_headers)).json()["items"] == []
    for response in (
        await client.get(f"/v1/webhooks/{webhook_id}", headers=admin_headers),
        await client.delete(f"/v1/webhooks/{webhook_id}", headers=admin_headers),
        await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin_headers),
    ):
        assert_problem(response, 404, "webhook_not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (HOOK | {"url": "ftp://crm.example.com/in"}, 422, "invalid_webhook_url"),
        (HOOK | {"url": "https://user:password@crm.example.com/in"}, 422, "invalid_webhook_url"),
        (HOOK | {"events": ["handoff.exploded"]}, 422, "validation_failed"),
        (HOOK | {"events": []}, 422, "validation_failed"),
        ({"events": HOOK["events"]}, 422, "validation_failed"),
        (HOOK | {"secret": "mine"}, 422, "validation_failed"),
        (HOOK | {"description": "x" * 501}, 422, "validation_failed"),
    ],
)
async def test_bad_webhooks_are_refused_with_a_problem(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str], body: dict[str, Any], status: int, code: str
) -> None:
    assert_problem(await client.post("/v1/webhooks", json=body, headers=admin_headers), status, code)


async def test_a_body_that_is_not_json_is_a_400(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/webhooks", content=b"{not json", headers=admin_headers | {"content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_request")


async def test_only_admins_manage_webhooks(client: AsyncTestClient[Litestar], admin_headers: dict[str, str]) -> None:
    webhook_id = (await client.post("/v1/webhooks", json=HOOK, headers=admin_headers)).json()["id"]
    for role in ("agent", "service"):
        headers = bearer((await create_key(client, admin_headers, role))["secret"])
        assert_problem(await client.post("/v1/webhooks", json=HOOK, headers=headers), 403, "forbidden")
        assert_problem(await client.get("/v1/webhooks", headers=headers), 403, "forbidden")
        assert_problem(await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=headers), 403, "forbidden")
        assert_problem(await client.delete(f"/v1/webhooks/{webhook_id}", headers=headers), 403, "forbidden")
        redeliver = f"/v1/webhooks/{webhook_id}/deliveries/{new_id()}/redeliver"
        assert_problem(await client.post(redeliver, headers=headers), 403, "forbidden")
    assert_problem(await client.get("/v1/webhooks"), 401, "unauthenticated")


async def test_delivery_listing_checks_its_parameters(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    webhook_id = (await client.post("/v1/webhooks", json=HOOK, headers=admin_headers)).json()["id"]
    deliveries = f"/v1/webhooks/{webhook_id}/deliveries"
    assert_problem(await client.get(f"{deliveries}?limit=0", headers=admin_headers), 422, "validation_failed")
    assert_problem(await client.get(f"{deliveries}?cursor=nope", headers=admin_headers), 422, "invalid_input")
    empty = await client.get(deliveries, headers=admin_headers)
    assert empty.json() == {"items": [], "next_cursor": None}


async def test_openapi_documents_the_webhook_operations(client: AsyncTestClient[Litestar]) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    operations = {
        operation["operationId"]: operation
        for path, item in document["paths"].items()
        if path.startswith("/v1/webhooks")
        for operation in item.values()
    }
    assert set(operations) == {
        "CreateWebhook",
        "ListWebhooks",
        "GetWebhook",
        "DeleteWebhook",
        "ListWebhookDeliveries",
        "RedeliverWebhookDelivery",
    }
    assert "Webhook-Signature" in operations["CreateWebhook"]["description"]
    assert {"401", "403", "404"} <= set(operations["ListWebhookDeliveries"]["responses"])
    assert {"202", "401", "403", "404"} <= set(operations["RedeliverWebhookDelivery"]["responses"])


async def test_subscribed_events_arrive_signed_and_show_as_delivered(
    http: httpx.AsyncClient, chat_app: Litestar, admin_headers: dict[str, str], verify_webhook: Verifier
) -> None:
    async with WebhookReceiver() as receiver:
        created = await http.post("/v1/webhooks", json=HOOK | {"url": receiver.url}, headers=admin_headers)
        webhook_id, secret = created.json()["id"], created.json()["secret"]
        requested = event(WebhookEventType.HANDOFF_REQUESTED, reason_code="customer_request")
        message = event(WebhookEventType.MESSAGE_CREATED, message={"role": "customer", "content": "Where is it?"})
        unsubscribed = event(WebhookEventType.CONVERSATION_RESOLVED)
        await emit(chat_app, requested, unsubscribed, message)

        items = await wait_for_deliveries(
            http,
            webhook_id,
            admin_headers,
            lambda items: len(items) == 2 and {item["status"] for item in items} == {"delivered"},
        )

    assert {item["event_id"] for item in items} == {str(requested.id), str(message.id)}
    for item in items:
        assert (item["attempts"], item["last_status_code"], item["last_error"]) == (1, 200, None)
        assert item["delivered_at"] is not None
        assert item["next_attempt_at"] is None
    assert receiver.event_ids() == {str(requested.id): 1, str(message.id): 1}
    for request in receiver.requests:
        assert request.path == "/hooks"
        assert request.headers["content-type"] == "application/json"
        assert verify_webhook(secret, httpx.Headers(request.headers), request.body)
        assert not verify_webhook(secret, httpx.Headers(request.headers), request.body + b" ")
        assert not verify_webhook("whsec_wrong", httpx.Headers(request.headers), request.body)
        body = msgspec.json.decode(request.body)
        assert body["id"] == request.headers["webhook-id"]
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    bodies = {request.headers["webhook-id"]: msgspec.json.decode(request.body) for request in receiver.requests}
    assert bodies[str(requested.id)] == {
        "id": str(requested.id),
        "type": "handoff.requested",
        "created_at": requested.occurred_at.isoformat().replace("+00:00", "Z"),
        "conversation_id": None,
        "data": {"reason_code": "customer_request"},
    }
    assert bodies[str(message.id)]["data"] == {"message": {"role": "customer", "content": "Where is it?"}}


async def test_a_failed_attempt_is_retried_and_the_attempts_are_visible(
    http: httpx.AsyncClient, chat_app: Litestar, admin_headers: dict[str, str]
) -> None:
    async with WebhookReceiver(500) as receiver:
        created = await http.post("/v1/webhooks", json=HOOK | {"url": receiver.url}, headers=admin_headers)
        webhook_id = created.json()["id"]
        requested = event(WebhookEventType.HANDOFF_REQUESTED)
        await emit(chat_app, requested)

        [waiting] = await wait_for_deliveries(
            http, webhook_id, admin_headers, lambda items: bool(items) and items[0]["last_status_code"] == 500
        )
        [delivered] = await wait_for_deliveries(
            http, webhook_id, admin_headers, lambda items: items[0]["status"] == "delivered"
        )

    assert (waiting["status"], waiting["attempts"], waiting["last_error"]) == ("pending", 1, "HTTP 500")
    assert waiting["next_attempt_at"] is not None
    assert (delivered["attempts"], delivered["last_status_code"], delivered["last_error"]) == (2, 200, None)
    first, second = receiver.requests
    assert (first.status, second.status) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(requested.id)
    assert first.body == second.body


async def test_an_event_rolled_back_with_its_change_is_never_sent(
    http: httpx.AsyncClient, chat_app: Litestar, admin_headers: dict[str, str]
) -> None:
    async with WebhookReceiver() as receiver:
        created = await http.post("/v1/webhooks", json=HOOK | {"url": receiver.url}, headers=admin_headers)
        webhook_id = created.json()["id"]
        rolled_back, committed = event(WebhookEventType.HANDOFF_REQUESTED), event(WebhookEventType.MESSAGE_CREATED)
        await emit(chat_app, rolled_back, commit=False)
        await emit(chat_app, committed)
        await wait_for_deliveries(
            http, webhook_id, admin_headers, lambda items: bool(items) and items[0]["status"] == "delivered"
        )
    assert receiver.event_ids() == {str(committed.id): 1}


async def test_the_handoff_use_cases_emit_their_events_through_the_outbox(
    http: httpx.AsyncClient, admin_headers: dict[str, str], verify_webhook: Verifier
) -> None:
    """End to end: the events commit with the handoff use cases' changes and arrive at the endpoint."""
    async with WebhookReceiver() as receiver:
        every_type = [kind.value for kind in WebhookEventType]
        created = await http.post(
            "/v1/webhooks", json={"url": receiver.url, "events": every_type}, headers=admin_headers
        )
        secret = created.json()["secret"]
        started = await http.post("/v1/conversations", json={"customer": {"external_id": "c-1"}}, headers=admin_headers)
        conversation_id = started.json()["id"]
        for action, body in (("handoff", {"reason": "I want a person"}), ("claim", None), ("resolve", None)):
            response = await http.post(
                f"/v1/conversations/{conversation_id}/{action}", json=body, headers=admin_headers
            )
            assert response.status_code in {200, 201}, response.text

        def types() -> set[str]:
            return {msgspec.json.decode(request.body)["type"] for request in receiver.requests}

        await receiver.wait_until(lambda: {"handoff.requested", "handoff.claimed", "conversation.resolved"} <= types())
    for request in receiver.requests:
        body = msgspec.json.decode(request.body)
        assert body["conversation_id"] == conversation_id
        assert verify_webhook(secret, httpx.Headers(request.headers), request.body)


async def test_a_failed_delivery_redelivered_arrives_at_the_fixed_receiver(
    settings: Settings,
    embedder: OnnxMiniLMEmbedder,
    llm: ScriptedLLM,
    admin_headers: dict[str, str],
    verify_webhook: Verifier,
) -> None:
    """The receiver answers 500 (one attempt allowed: failed for good), is fixed, and the admin redelivers."""
    once = WebhookSettings(timeout_s=5, poll_interval_s=0.05, max_attempts=1)
    app = create_app(
        msgspec.structs.replace(settings, webhooks=once), shared_embedder_provider(embedder), llm_provider(llm)
    )
    async with WebhookReceiver(500) as receiver, serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        created = await http.post("/v1/webhooks", json=HOOK | {"url": receiver.url}, headers=admin_headers)
        webhook_id, secret = created.json()["id"], created.json()["secret"]
        requested = event(WebhookEventType.HANDOFF_REQUESTED, reason_code="customer_request")
        await emit(app, requested)
        [failed] = await wait_for_deliveries(
            http, webhook_id, admin_headers, lambda items: bool(items) and items[0]["status"] == "failed"
        )

        before = datetime.now(UTC)
        response = await http.post(
            f"/v1/webhooks/{webhook_id}/deliveries/{failed['id']}/redeliver", headers=admin_headers
        )
        assert response.status_code == 202, response.text
        redelivered = response.json()
        assert redelivered["status"] == "pending"
        assert {key: redelivered[key] for key in ("id", "event_id", "attempts", "last_status_code")} == {
            key: failed[key] for key in ("id", "event_id", "attempts", "last_status_code")
        }
        due = datetime.fromisoformat(redelivered["next_attempt_at"])
        assert before - timedelta(seconds=1) <= due <= datetime.now(UTC)
        [delivered] = await wait_for_deliveries(
            http, webhook_id, admin_headers, lambda items: items[0]["status"] == "delivered"
        )

    assert (delivered["attempts"], delivered["last_status_code"], delivered["last_error"]) == (2, 200, None)
    first, second = receiver.requests
    assert (first.status, second.status) == (500, 200)
    # The original event, so the receiver can deduplicate it; signed anew like any attempt.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(requested.id)
    assert first.body == second.body
    assert verify_webhook(secret, httpx.Headers(second.headers), second.body)


async def test_a_receiver_that_holds_its_request_does_not_hold_up_other_endpoints(
    settings: Settings, embedder: OnnxMiniLMEmbedder, llm: ScriptedLLM, admin_headers: dict[str, str]
) -> None:
    """A round lasts as long as its slowest receiver; the next starts on time beside it (found by a tester).

    The send timeout is far longer than the test, so the held request is still in flight when the other endpoint's
    event arrives; before rounds overlapped, that event waited for the held request to end.
    """
    patient = WebhookSettings(timeout_s=120, poll_interval_s=0.05, max_attempts=1)
    app = create_app(
        msgspec.structs.replace(settings, webhooks=patient), shared_embedder_provider(embedder), llm_provider(llm)
    )
    async with (
        WebhookReceiver(HOLD) as slow,
        WebhookReceiver() as healthy,
        serve(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        slow_id = await register(http, admin_headers, slow, "handoff.requested")
        await register(http, admin_headers, healthy, "message.created")
        await emit(app, event(WebhookEventType.HANDOFF_REQUESTED))
        await slow.wait_until(lambda: len(slow.requests) == 1)  # held, unanswered

        message = event(WebhookEventType.MESSAGE_CREATED, message={"role": "customer", "content": "Hello?"})
        await emit(app, message)
        await healthy.wait_until(lambda: len(healthy.requests) == 1)

        # It arrived while the held request was still open (it is released only now, and times out after 120 s).
        assert healthy.event_ids() == {str(message.id): 1}
        slow.release()
        # Nothing left in flight when the app stops (a send cut short there would leave its socket to the GC).
        await wait_for_deliveries(http, slow_id, admin_headers, lambda items: items[0]["status"] != "pending")


async def test_a_dead_receivers_backlog_does_not_fill_the_rounds(
    settings: Settings, embedder: OnnxMiniLMEmbedder, llm: ScriptedLLM, admin_headers: dict[str, str]
) -> None:
    """Found by review: with rounds overlapping, each new round took another share of the backlog and waited on it.

    More held deliveries than rounds times per endpoint: only one share goes out at a time, so rounds stay free for
    other endpoints.
    """
    patient = WebhookSettings(timeout_s=120, poll_interval_s=0.05, max_attempts=1, per_endpoint=5, rounds=3)
    app = create_app(
        msgspec.structs.replace(settings, webhooks=patient), shared_embedder_provider(embedder), llm_provider(llm)
    )
    async with (
        WebhookReceiver(*[HOLD] * 40) as dead,
        WebhookReceiver() as healthy,
        serve(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        dead_id = await register(http, admin_headers, dead, "handoff.requested")
        await register(http, admin_headers, healthy, "message.created")
        # 40: more than the rounds can hold (3 times 5), and one page of the deliveries list (50) shows them all.
        await emit(app, *(event(WebhookEventType.HANDOFF_REQUESTED) for _ in range(40)))
        await dead.wait_until(lambda: len(dead.requests) >= 5)

        message = event(WebhookEventType.MESSAGE_CREATED, message={"role": "customer", "content": "Hello?"})
        await emit(app, message)
        await healthy.wait_until(lambda: len(healthy.requests) == 1)

        assert healthy.event_ids() == {str(message.id): 1}
        assert len(dead.requests) == 5  # one share in flight, however long it waits
        dead.release()
        # Nothing left in flight when the app stops (a send cut short there would leave its socket to the GC).
        await wait_for_deliveries(
            http, dead_id, admin_headers, lambda items: all(item["status"] != "pending" for item in items)
        )


async def test_redelivering_what_does_not_exist_is_a_404(
    http: httpx.AsyncClient, chat_app: Litestar, admin_headers: dict[str, str]
) -> None:
    async with WebhookReceiver() as receiver:
        hook = HOOK | {"url": receiver.url}
        mine = (await http.post("/v1/webhooks", json=hook, headers=admin_headers)).json()["id"]
        theirs = (await http.post("/v1/webhooks", json=hook, headers=admin_headers)).json()["id"]
        await emit(chat_app, event(WebhookEventType.HANDOFF_REQUESTED))
        deliveries = await http.get(f"/v1/webhooks/{theirs}/deliveries", headers=admin_headers)
        [their_delivery] = deliveries.json()["items"]
        for webhook_id, delivery_id, code in (
            (mine, their_delivery["id"], "webhook_delivery_not_found"),
            (mine, new_id(), "webhook_delivery_not_found"),
            (new_id(), their_delivery["id"], "webhook_not_found"),
        ):
            response = await http.post(
                f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", headers=admin_headers
            )
            assert_problem(response, 404, code)


async def test_the_worker_deletes_finished_deliveries_past_their_retention(
    settings: Settings,
    embedder: OnnxMiniLMEmbedder,
    llm: ScriptedLLM,
    admin_headers: dict[str, str],
    engine: AsyncEngine,
) -> None:
    """Old delivered and failed deliveries (and their events) go at the worker's first sweep; the rest stay."""
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=3), now - timedelta(hours=1)
    webhook = Webhook(
        id=new_id(),
        url="https://crm.example.com/hooks/support",
        description="",
        event_types=(WebhookEventType.HANDOFF_REQUESTED,),
        secret_hint="whsec_test",
        active=True,
        created_at=old,
    )
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        webhooks, queue, uow = (
            PostgresWebhookRepository(session),
            PostgresWebhookDeliveryQueue(session),
            SqlAlchemyUnitOfWork(session),
        )
        await webhooks.add(webhook, generate_webhook_secret())
        outbox = PostgresWebhookOutbox(session)
        kept: set[str] = set()
        for attempted_at, outcome in ((old, "delivered"), (old, "failed"), (old, "retry"), (recent, "delivered")):
            sent = OutboundEvent(
                id=new_id(), type=webhook.event_types[0], conversation_id=None, occurred_at=attempted_at
            )
            await outbox.enqueue(sent)
            [due] = await queue.claim_due(now=attempted_at, limit=1, per_endpoint=100, lease_until=attempted_at)
            if outcome == "delivered":
                await queue.save(due.delivery.succeeded(200, attempted_at))
            elif outcome == "failed":
                await queue.save(replace(due.delivery, status=DeliveryStatus.FAILED, last_error="HTTP 500"))
            else:  # pending: its next attempt is due tomorrow
                await queue.save(replace(due.delivery, next_attempt_at=now + timedelta(days=1), last_error="HTTP 500"))
            if attempted_at == recent or outcome == "retry":
                kept.add(str(due.delivery.id))
        await uow.commit()

    retaining = WebhookSettings(retention_days=1, poll_interval_s=0.05)
    app = create_app(
        msgspec.structs.replace(settings, webhooks=retaining), shared_embedder_provider(embedder), llm_provider(llm)
    )
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        items = await wait_for_deliveries(http, str(webhook.id), admin_headers, lambda items: len(items) == 2)
    assert {item["id"] for item in items} == kept
    async with engine.connect() as connection:
        assert await connection.scalar(sa.text("SELECT count(*) FROM webhook_events")) == 2


def private_targets(settings: Settings, *, allowed: bool, **webhooks: Any) -> Settings:
    """``settings`` with SUPPORT_WEBHOOKS__ALLOW_PRIVATE_TARGETS set (the test environment allows them by default)."""
    return msgspec.structs.replace(settings, webhooks=WebhookSettings(allow_private_targets=allowed, **webhooks))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hooks",
        "http://localhost:8000/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hooks",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://2130706433/hooks",
    ],
)
async def test_private_targets_are_refused_at_registration_when_not_allowed(
    settings: Settings, embedder: OnnxMiniLMEmbedder, admin_headers: dict[str, str], url: str
) -> None:
    refusing = create_app(private_targets(settings, allowed=False), shared_embedder_provider(embedder))
    async with AsyncTestClient(refusing) as client:
        response = await client.post("/v1/webhooks", json=HOOK | {"url": url}, headers=admin_headers)
        problem = assert_problem(response, 422, "invalid_webhook_url")
        assert "only sent to public hosts" in problem["detail"]
        # A public host is still fine.
        assert (await client.post("/v1/webhooks", json=HOOK, headers=admin_headers)).status_code == 201
        assert [item["url"] for item in (await client.get("/v1/webhooks", headers=admin_headers)).json()["items"]] == [
            HOOK["url"]
        ]
    allowing = create_app(private_targets(settings, allowed=True), shared_embedder_provider(embedder))
    async with AsyncTestClient(allowing) as client:
        response = await client.post("/v1/webhooks", json=HOOK | {"url": url}, headers=admin_headers)
        assert response.status_code == 201, response.text
        assert response.json()["url"] == url


async def test_a_private_target_is_not_sent_to_when_not_allowed(
    settings: Settings, embedder: OnnxMiniLMEmbedder, llm: ScriptedLLM, admin_headers: dict[str, str]
) -> None:
    """An endpoint whose name resolves to a loopback address gets nothing; the attempt fails with the reason.

    It was stored before private targets were refused (or its name pointed elsewhere then): the check at delivery
    is what stops it, whatever the registration saw.
    """
    guarded = private_targets(settings, allowed=False, timeout_s=5, poll_interval_s=0.05, max_attempts=1)
    app = create_app(guarded, shared_embedder_provider(embedder), llm_provider(llm))
    async with WebhookReceiver() as receiver, serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        container: AsyncContainer = app.state.dishka_container
        webhook = Webhook(
            id=new_id(),
            url=f"http://localhost:{receiver.port}/hooks",
            description="registered while private targets were allowed",
            event_types=(WebhookEventType.HANDOFF_REQUESTED,),
            secret_hint="whsec_test",
            active=True,
            created_at=datetime.now(UTC),
        )
        async with container() as request:
            await (await request.get(WebhookRepository)).add(webhook, generate_webhook_secret())
            await (await request.get(UnitOfWork)).commit()
        await emit(app, event(WebhookEventType.HANDOFF_REQUESTED))

        [failed] = await wait_for_deliveries(
            http, str(webhook.id), admin_headers, lambda items: bool(items) and items[0]["status"] == "failed"
        )
    assert (failed["attempts"], failed["last_status_code"], failed["delivered_at"]) == (1, None, None)
    assert failed["last_error"].startswith("not sent: localhost resolves to ")
    assert failed["last_error"].endswith("which is not a public address (private targets are not allowed)")
    assert receiver.requests == []
