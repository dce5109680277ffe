"""Wire types of webhook endpoints and their deliveries."""

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec

from support.domain.webhooks import (
    MAX_WEBHOOK_DESCRIPTION_LENGTH,
    MAX_WEBHOOK_URL_LENGTH,
    DeliveryStatus,
    Webhook,
    WebhookDelivery,
    WebhookEventType,
)

EVENT_TYPE_COUNT = len(WebhookEventType)


class CreateWebhookRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An http(s) URL and the event types it receives."""

    url: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_WEBHOOK_URL_LENGTH,
            description=(
                "An absolute http:// or https:// URL, without credentials or a #fragment. In production its host "
                "must be public: `localhost` and loopback, private or link-local addresses are refused "
                "(`invalid_webhook_url`; SUPPORT_WEBHOOKS__ALLOW_PRIVATE_TARGETS)."
            ),
            examples=["https://hooks.example.com/support"],
        ),
    ]
    events: Annotated[list[WebhookEventType], msgspec.Meta(min_length=1, max_length=EVENT_TYPE_COUNT)]
    description: Annotated[str, msgspec.Meta(max_length=MAX_WEBHOOK_DESCRIPTION_LENGTH)] = ""


class WebhookResource(msgspec.Struct, frozen=True):
    id: UUID
    url: str
    description: str
    events: list[WebhookEventType]
    # The beginning of the signing secret, to tell which secret this endpoint has.
    secret_hint: str
    active: bool
    created_at: datetime

    @classmethod
    def of(cls, webhook: Webhook) -> "WebhookResource":
        return cls(
            id=webhook.id,
            url=webhook.url,
            description=webhook.description,
            events=list(webhook.event_types),
            secret_hint=webhook.secret_hint,
            active=webhook.active,
            created_at=webhook.created_at,
        )


class CreatedWebhook(msgspec.Struct, frozen=True):
    id: UUID
    url: str
    description: str
    events: list[WebhookEventType]
    secret_hint: str
    active: bool
    created_at: datetime
    # The signing secret: in this response only.
    secret: str


class WebhookList(msgspec.Struct, frozen=True):
    items: list[WebhookResource]
    next_cursor: str | None


class WebhookDeliveryResource(msgspec.Struct, frozen=True):
    id: UUID
    # The id receivers see in `Webhook-Id` and the body's `id`: the same on every attempt.
    event_id: UUID
    webhook_id: UUID
    event_type: WebhookEventType
    status: DeliveryStatus
    attempts: int
    # When the next attempt is due (pending only).
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> "WebhookDeliveryResource":
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            webhook_id=delivery.webhook_id,
            event_type=delivery.event_type,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at if delivery.status is DeliveryStatus.PENDING else None,
            last_attempt_at=delivery.last_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            delivered_at=delivery.delivered_at,
            created_at=delivery.created_at,
        )


class WebhookDeliveryList(msgspec.Struct, frozen=True):
    items: list[WebhookDeliveryResource]
    next_cursor: str | None
