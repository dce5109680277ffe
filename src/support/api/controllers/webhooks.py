"""Webhook endpoints (admin): register, list, read, delete, and each endpoint's deliveries and redeliveries."""

from typing import Annotated
from uuid import UUID

from dishka import FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from support.api.auth import admin_only
from support.api.problems import problem_responses
from support.api.schemas.common import PageCursor
from support.api.schemas.webhooks import (
    CreatedWebhook,
    CreateWebhookRequest,
    WebhookDeliveryList,
    WebhookDeliveryResource,
    WebhookList,
    WebhookResource,
)
from support.application.webhooks import (
    MAX_PAGE_SIZE,
    CreateWebhook,
    DeleteWebhook,
    GetWebhook,
    ListWebhookDeliveries,
    ListWebhooks,
    RedeliverWebhookDelivery,
)

_REDELIVER_DESCRIPTION = """\
Puts the delivery back in the queue, whatever its status, to be sent when the delivery worker next runs: for a
receiver that lost a delivered event, or one fixed after its deliveries failed. The event is sent as it was (same
`Webhook-Id` and body: receivers deduplicate it) with a fresh `Webhook-Timestamp` and signature. The delivery gets
a fresh retry budget (`SUPPORT_WEBHOOKS__MAX_ATTEMPTS` more attempts); `attempts` keeps counting every attempt.
Answers with the delivery as the deliveries listing shows it: `pending`, next attempt now."""

_CREATE_DESCRIPTION = """\
Events are POSTed as JSON `{id, type, created_at, conversation_id, data}` with the headers `Webhook-Id` (the event
id), `Webhook-Timestamp` (Unix seconds) and `Webhook-Signature: v1=<hex>`, the HMAC-SHA256 of
`"{timestamp}.{body}"` keyed with the secret. The secret is in this response only. Delivery is at least once:
deduplicate by `Webhook-Id`. A 2xx answer within the timeout counts as delivered; anything else (a redirect
included: redirects are not followed) is retried with exponential backoff. Unless private targets are allowed
(outside production by default), an endpoint whose name resolves to a non-public address is not sent to."""


class WebhooksController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]  # noqa: RUF012
    guards = [admin_only]  # noqa: RUF012

    @post(
        operation_id="CreateWebhook",
        summary="Register a webhook endpoint",
        description=_CREATE_DESCRIPTION,
        responses=problem_responses(400, 401, 403, 422),
    )
    @inject
    async def create(self, data: JSONBody[CreateWebhookRequest], use_case: FromDishka[CreateWebhook]) -> CreatedWebhook:
        issued = await use_case.execute(data.url, data.events, data.description)
        webhook = WebhookResource.of(issued.webhook)
        return CreatedWebhook(
            id=webhook.id,
            url=webhook.url,
            description=webhook.description,
            events=webhook.events,
            secret_hint=webhook.secret_hint,
            active=webhook.active,
            created_at=webhook.created_at,
            secret=issued.secret,
        )

    @get(
        operation_id="ListWebhooks",
        summary="List webhook endpoints",
        description="Newest first, cursor-paginated; secrets are never listed.",
        responses=problem_responses(401, 403, 422),
    )
    @inject
    async def list_webhooks(
        self,
        use_case: FromDishka[ListWebhooks],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: PageCursor = None,
    ) -> WebhookList:
        page = await use_case.execute(limit=limit, cursor=cursor)
        return WebhookList(items=[WebhookResource.of(item) for item in page.items], next_cursor=page.next_cursor)

    @get(
        "/{webhook_id:uuid}",
        operation_id="GetWebhook",
        summary="Read a webhook endpoint",
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def get_webhook(self, webhook_id: FromPath[UUID], use_case: FromDishka[GetWebhook]) -> WebhookResource:
        return WebhookResource.of(await use_case.execute(webhook_id))

    @delete(
        "/{webhook_id:uuid}",
        operation_id="DeleteWebhook",
        summary="Delete a webhook endpoint",
        description="Nothing more is sent to it, pending deliveries included; its delivery history is deleted too.",
        status_code=204,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def delete_webhook(self, webhook_id: FromPath[UUID], use_case: FromDishka[DeleteWebhook]) -> None:
        await use_case.execute(webhook_id)

    @get(
        "/{webhook_id:uuid}/deliveries",
        operation_id="ListWebhookDeliveries",
        summary="List an endpoint's deliveries",
        description=(
            "Newest first, cursor-paginated: each event's status (pending, delivered, failed), attempts so far, "
            "the last status code or error, and when the next attempt is due."
        ),
        responses=problem_responses(401, 403, 404, 422),
    )
    @inject
    async def list_deliveries(
        self,
        webhook_id: FromPath[UUID],
        use_case: FromDishka[ListWebhookDeliveries],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: PageCursor = None,
    ) -> WebhookDeliveryList:
        page = await use_case.execute(webhook_id, limit=limit, cursor=cursor)
        return WebhookDeliveryList(
            items=[WebhookDeliveryResource.of(item) for item in page.items], next_cursor=page.next_cursor
        )

    @post(
        "/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/redeliver",
        operation_id="RedeliverWebhookDelivery",
        summary="Redeliver a webhook delivery",
        description=_REDELIVER_DESCRIPTION,
        status_code=202,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def redeliver(
        self, webhook_id: FromPath[UUID], delivery_id: FromPath[UUID], use_case: FromDishka[RedeliverWebhookDelivery]
    ) -> WebhookDeliveryResource:
        return WebhookDeliveryResource.of(await use_case.execute(webhook_id, delivery_id))
