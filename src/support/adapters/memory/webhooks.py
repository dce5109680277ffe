"""In-memory webhooks: endpoints, outbox and delivery queue over one shared state; same contract as PostgreSQL's."""

import json
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime
from uuid import UUID

from support.adapters.memory.paging import newest_first_page
from support.domain.errors import ConflictError
from support.domain.ids import new_id
from support.domain.paging import ID_CURSOR, creation_position
from support.domain.webhooks import DeliveryStatus, OutboundEvent, Webhook, WebhookDelivery, encode_event
from support.ports.webhooks import DeliveryPage, DueDelivery, WebhookPage


class InMemoryWebhookRepository:
    """Dictionaries; writes are visible at once (the unit of work only counts commits)."""

    def __init__(self) -> None:
        self.webhooks: dict[UUID, Webhook] = {}
        self.secrets: dict[UUID, str] = {}
        self.events: dict[UUID, OutboundEvent] = {}
        self.deliveries: dict[UUID, WebhookDelivery] = {}

    async def add(self, webhook: Webhook, secret: str) -> None:
        if webhook.id in self.webhooks:
            raise ConflictError("The change conflicts with existing data.")
        self.webhooks[webhook.id] = webhook
        self.secrets[webhook.id] = secret

    async def get(self, webhook_id: UUID) -> Webhook | None:
        return self.webhooks.get(webhook_id)

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> WebhookPage:
        page, next_cursor = newest_first_page(self.webhooks.values(), creation_position, limit=limit, cursor=cursor)
        return WebhookPage(items=page, next_cursor=next_cursor)

    async def delete(self, webhook_id: UUID) -> bool:
        if self.webhooks.pop(webhook_id, None) is None:
            return False
        del self.secrets[webhook_id]
        self.deliveries = {key: item for key, item in self.deliveries.items() if item.webhook_id != webhook_id}
        return True

    async def list_deliveries(self, webhook_id: UUID, *, limit: int, cursor: str | None) -> DeliveryPage:
        items = sorted(
            (item for item in self.deliveries.values() if item.webhook_id == webhook_id),
            key=lambda item: item.id,
            reverse=True,
        )
        if cursor:
            after = ID_CURSOR.decode(cursor)
            items = [item for item in items if item.id < after]
        page = items[:limit]
        return DeliveryPage(items=page, next_cursor=ID_CURSOR.encode(page[-1].id) if len(items) > limit else None)

    async def delete_finished_deliveries(self, *, before: datetime, limit: int) -> int:
        doomed = sorted(
            (
                item
                for item in self.deliveries.values()
                if item.status is not DeliveryStatus.PENDING
                and item.last_attempt_at is not None
                and item.last_attempt_at < before
            ),
            key=lambda item: (item.last_attempt_at or before, item.id),
        )[:limit]
        for item in doomed:
            del self.deliveries[item.id]
        referenced = {item.event_id for item in self.deliveries.values()}
        for event_id in {item.event_id for item in doomed} - referenced:
            self.events.pop(event_id, None)
        return len(doomed)


class InMemoryWebhookOutbox:
    def __init__(self, store: InMemoryWebhookRepository) -> None:
        self._store = store

    async def enqueue(self, event: OutboundEvent) -> None:
        # Stored as PostgreSQL's JSONB gives it back: non-JSON data fails, tuples come back as lists.
        data = json.loads(encode_event(event))["data"]
        subscribers = [webhook.id for webhook in self._store.webhooks.values() if webhook.subscribes_to(event.type)]
        if not subscribers:
            return
        self._store.events.setdefault(event.id, replace(event, data=data))
        delivered_to = {item.webhook_id for item in self._store.deliveries.values() if item.event_id == event.id}
        for webhook_id in subscribers:
            if webhook_id in delivered_to:
                continue
            delivery = WebhookDelivery(
                id=new_id(),
                event_id=event.id,
                webhook_id=webhook_id,
                event_type=event.type,
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=event.occurred_at,
                created_at=event.occurred_at,
            )
            self._store.deliveries[delivery.id] = delivery


class InMemoryWebhookDeliveryQueue:
    def __init__(self, store: InMemoryWebhookRepository) -> None:
        self._store = store

    async def claim_due(
        self,
        *,
        now: datetime,
        limit: int,
        per_endpoint: int,
        lease_until: datetime,
        busy: Collection[UUID] = (),
    ) -> list[DueDelivery]:
        store = self._store
        candidates = sorted(
            (
                item
                for item in store.deliveries.values()
                if item.status is DeliveryStatus.PENDING
                and item.next_attempt_at <= now
                and store.webhooks[item.webhook_id].active
                and item.webhook_id not in busy
            ),
            key=lambda item: (item.next_attempt_at, item.id),
        )
        taken: Counter[UUID] = Counter()
        due = []
        for item in candidates:
            if taken[item.webhook_id] < per_endpoint:
                taken[item.webhook_id] += 1
                due.append(item)
        due = due[:limit]
        claimed = []
        for item in due:
            leased = replace(item, attempts=item.attempts + 1, last_attempt_at=now, next_attempt_at=lease_until)
            store.deliveries[item.id] = leased
            webhook = store.webhooks[item.webhook_id]
            claimed.append(
                DueDelivery(
                    delivery=leased,
                    event=store.events[item.event_id],
                    url=webhook.url,
                    secret=store.secrets[webhook.id],
                )
            )
        return sorted(claimed, key=lambda due_delivery: due_delivery.delivery.id)

    async def save(self, delivery: WebhookDelivery) -> None:
        current = self._store.deliveries.get(delivery.id)
        if (
            current is None
            or current.status is DeliveryStatus.DELIVERED
            or current.attempts_before_redelivery != delivery.attempts_before_redelivery
        ):
            return
        self._store.deliveries[delivery.id] = replace(
            current,
            status=delivery.status,
            next_attempt_at=delivery.next_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            delivered_at=delivery.delivered_at,
        )

    async def requeue(self, webhook_id: UUID, delivery_id: UUID, *, now: datetime) -> WebhookDelivery | None:
        current = self._store.deliveries.get(delivery_id)
        if current is None or current.webhook_id != webhook_id:
            return None
        requeued = current.redelivered(now)
        self._store.deliveries[delivery_id] = requeued
        return requeued
