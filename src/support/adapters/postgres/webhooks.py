"""Webhook endpoints, the outbox and the delivery queue in PostgreSQL."""

from collections.abc import Collection
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from support.adapters.postgres.errors import storage_errors
from support.adapters.postgres.models import WebhookDeliveryRow, WebhookEventRow, WebhookRow
from support.adapters.postgres.paging import newest_first, page_cursor
from support.domain.ids import new_id
from support.domain.paging import ID_CURSOR, creation_position
from support.domain.webhooks import (
    DeliveryStatus,
    OutboundEvent,
    Webhook,
    WebhookDelivery,
    WebhookEventType,
    encode_event,
)
from support.ports.webhooks import DeliveryPage, DueDelivery, WebhookPage

_DELIVERY_COLUMNS = (
    WebhookDeliveryRow.id,
    WebhookDeliveryRow.event_id,
    WebhookDeliveryRow.webhook_id,
    WebhookDeliveryRow.event_type,
    WebhookDeliveryRow.status,
    WebhookDeliveryRow.attempts,
    WebhookDeliveryRow.next_attempt_at,
    WebhookDeliveryRow.created_at,
    WebhookDeliveryRow.last_attempt_at,
    WebhookDeliveryRow.last_status_code,
    WebhookDeliveryRow.last_error,
    WebhookDeliveryRow.delivered_at,
    WebhookDeliveryRow.attempts_before_redelivery,
)


class _WebhookRows(SQLAlchemyAsyncRepository[WebhookRow]):
    model_type = WebhookRow


def _webhook(row: WebhookRow) -> Webhook:
    return Webhook(
        id=row.id,
        url=row.url,
        description=row.description,
        event_types=tuple(WebhookEventType(value) for value in row.event_types),
        secret_hint=row.secret_hint,
        active=row.active,
        created_at=row.created_at,
    )


def _delivery(row: sa.Row[Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        event_id=row.event_id,
        webhook_id=row.webhook_id,
        event_type=WebhookEventType(row.event_type),
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        last_attempt_at=row.last_attempt_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        attempts_before_redelivery=row.attempts_before_redelivery,
    )


class PostgresWebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._rows = _WebhookRows(session=session)

    async def add(self, webhook: Webhook, secret: str) -> None:
        row = WebhookRow(
            id=webhook.id,
            url=webhook.url,
            description=webhook.description,
            event_types=[event_type.value for event_type in webhook.event_types],
            secret=secret,
            secret_hint=webhook.secret_hint,
            active=webhook.active,
            created_at=webhook.created_at,
        )
        async with storage_errors():
            await self._rows.add(row, auto_refresh=False)

    async def get(self, webhook_id: UUID) -> Webhook | None:
        async with storage_errors():
            row = await self._rows.get_one_or_none(id=webhook_id)
        return None if row is None else _webhook(row)

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> WebhookPage:
        statement = newest_first(
            sa.select(WebhookRow), WebhookRow.created_at, WebhookRow.id, limit=limit, cursor=cursor
        )
        async with storage_errors():
            rows = (await self._session.execute(statement)).scalars().all()
        items = [_webhook(row) for row in rows[:limit]]
        return WebhookPage(items=items, next_cursor=page_cursor(items, creation_position, more=len(rows) > limit))

    async def delete(self, webhook_id: UUID) -> bool:
        statement = sa.delete(WebhookRow).where(WebhookRow.id == webhook_id).returning(WebhookRow.id)
        async with storage_errors():
            deleted = (await self._session.execute(statement)).scalar()
        return deleted is not None

    async def list_deliveries(self, webhook_id: UUID, *, limit: int, cursor: str | None) -> DeliveryPage:
        statement = sa.select(*_DELIVERY_COLUMNS).where(WebhookDeliveryRow.webhook_id == webhook_id)
        if cursor:
            statement = statement.where(WebhookDeliveryRow.id < ID_CURSOR.decode(cursor))
        statement = statement.order_by(WebhookDeliveryRow.id.desc()).limit(limit + 1)
        async with storage_errors():
            rows = (await self._session.execute(statement)).all()
        items = [_delivery(row) for row in rows[:limit]]
        return DeliveryPage(items=items, next_cursor=ID_CURSOR.encode(items[-1].id) if len(rows) > limit else None)

    async def delete_finished_deliveries(self, *, before: datetime, limit: int) -> int:
        delivery, event = WebhookDeliveryRow, WebhookEventRow
        # Served by ix_webhook_deliveries_finished: the status is written into the SQL, so that even a generic
        # plan of the prepared statement sees the index's predicate. SKIP LOCKED so that the sweeps of several
        # processes take different rows and never wait for each other.
        pending = sa.literal(DeliveryStatus.PENDING.value, literal_execute=True)
        doomed = (
            sa.select(delivery.id, delivery.event_id)
            .where(delivery.status != pending, delivery.last_attempt_at < before)
            .order_by(delivery.last_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with storage_errors():
            rows = (await self._session.execute(doomed)).all()
            if not rows:
                return 0
            event_ids = sorted({row.event_id for row in rows})
            # Two sweeps deleting the last deliveries of one event would each still see the other's and keep the
            # event forever: locking the events first (in id order, no deadlock) makes the second one wait, then
            # see the first one's deletions.
            await self._session.execute(
                sa.select(event.id).where(event.id.in_(event_ids)).order_by(event.id).with_for_update()
            )
            await self._session.execute(sa.delete(delivery).where(delivery.id.in_([row.id for row in rows])))
            unreferenced = ~sa.exists().where(delivery.event_id == event.id)
            await self._session.execute(sa.delete(event).where(event.id.in_(event_ids), unreferenced))
        return len(rows)


class PostgresWebhookOutbox:
    """Writes through the request's session, so events commit or roll back with the use case's change."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def enqueue(self, event: OutboundEvent) -> None:
        # Data that is not JSON fails here, in every caller's tests, not only where an endpoint is subscribed.
        encode_event(event)
        # KEY SHARE: an endpoint deleted meanwhile waits for this transaction instead of failing its foreign key.
        subscribers = (
            sa.select(WebhookRow.id)
            .where(WebhookRow.active, WebhookRow.event_types.contains([event.type.value]))
            .with_for_update(read=True, key_share=True)
        )
        async with storage_errors():
            webhook_ids = list((await self._session.execute(subscribers)).scalars())
            if not webhook_ids:
                return
            await self._session.execute(
                pg_insert(WebhookEventRow)
                .values(
                    id=event.id,
                    type=event.type.value,
                    conversation_id=event.conversation_id,
                    occurred_at=event.occurred_at,
                    data=dict(event.data),
                )
                .on_conflict_do_nothing(index_elements=[WebhookEventRow.id])
            )
            deliveries = [
                {
                    "id": new_id(),
                    "event_id": event.id,
                    "webhook_id": webhook_id,
                    "event_type": event.type.value,
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    # Due at once; the worker's clock decides when "now" is.
                    "next_attempt_at": event.occurred_at,
                    "created_at": event.occurred_at,
                }
                for webhook_id in webhook_ids
            ]
            await self._session.execute(
                pg_insert(WebhookDeliveryRow)
                .values(deliveries)
                .on_conflict_do_nothing(index_elements=[WebhookDeliveryRow.event_id, WebhookDeliveryRow.webhook_id])
            )


class PostgresWebhookDeliveryQueue:
    """Claims with ``FOR UPDATE SKIP LOCKED``: workers in several processes share the queue without waiting."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim_due(
        self,
        *,
        now: datetime,
        limit: int,
        per_endpoint: int,
        lease_until: datetime,
        busy: Collection[UUID] = (),
    ) -> list[DueDelivery]:
        delivery, event, webhook = WebhookDeliveryRow, WebhookEventRow, WebhookRow
        deliveries, webhooks = WebhookDeliveryRow.__table__, WebhookRow.__table__
        # Each active endpoint's earliest due deliveries, at most per_endpoint of them, read without locks. A claim
        # running at the same moment reads the same ones, finds them locked below, and gets none of that endpoint
        # this time (they are leased by the next round anyway): no delivery goes out twice...
        of_endpoint = (
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.webhook_id == webhooks.c.id,
                deliveries.c.status == DeliveryStatus.PENDING.value,
                deliveries.c.next_attempt_at <= now,
            )
            .order_by(deliveries.c.next_attempt_at)
            .limit(per_endpoint)
            .lateral("of_endpoint")
        )
        candidates = (
            sa.select(of_endpoint.c.id)
            .select_from(webhooks)
            .join(of_endpoint, sa.true())
            .where(webhooks.c.active, webhooks.c.id.not_in(list(busy)))
        )
        # ...then the earliest of them, the conditions checked again on the locked rows.
        due_now = (delivery.status == DeliveryStatus.PENDING.value, delivery.next_attempt_at <= now)
        due = (
            sa.select(delivery.id)
            .where(delivery.id.in_(candidates), *due_now)
            .order_by(delivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")
        )
        statement = (
            sa.update(delivery)
            .where(delivery.id == due.c.id, event.id == delivery.event_id, webhook.id == delivery.webhook_id)
            .values(attempts=delivery.attempts + 1, last_attempt_at=now, next_attempt_at=lease_until)
            # The claimed rows come back as rows; objects of the session need no update. (SQLAlchemy's default
            # tries to apply the WHERE clause to them in Python, which fails on this one when the session holds
            # some: KeyError 'parentmapper', seen now and then in a test whose session had added rows.)
            .execution_options(synchronize_session=False)
            .returning(
                *_DELIVERY_COLUMNS,
                event.conversation_id,
                event.occurred_at,
                event.data,
                webhook.url,
                webhook.secret,
            )
        )
        async with storage_errors():
            rows = (await self._session.execute(statement)).all()
        claimed = [
            DueDelivery(
                delivery=_delivery(row),
                event=OutboundEvent(
                    id=row.event_id,
                    type=WebhookEventType(row.event_type),
                    conversation_id=row.conversation_id,
                    occurred_at=row.occurred_at,
                    data=row.data,
                ),
                url=row.url,
                secret=row.secret,
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda due_delivery: due_delivery.delivery.id)

    async def save(self, delivery: WebhookDelivery) -> None:
        statement = (
            sa.update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == delivery.id,
                WebhookDeliveryRow.status != DeliveryStatus.DELIVERED.value,
                # Redelivered since this attempt was claimed: the redelivery's own attempts decide.
                WebhookDeliveryRow.attempts_before_redelivery == delivery.attempts_before_redelivery,
            )
            .values(
                status=delivery.status.value,
                next_attempt_at=delivery.next_attempt_at,
                last_status_code=delivery.last_status_code,
                last_error=delivery.last_error,
                delivered_at=delivery.delivered_at,
            )
        )
        async with storage_errors():
            await self._session.execute(statement)

    async def requeue(self, webhook_id: UUID, delivery_id: UUID, *, now: datetime) -> WebhookDelivery | None:
        # One statement, so a claim or an outcome saved meanwhile is never overwritten with stale values.
        statement = (
            sa.update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id == delivery_id, WebhookDeliveryRow.webhook_id == webhook_id)
            .values(
                status=DeliveryStatus.PENDING.value,
                next_attempt_at=now,
                delivered_at=None,
                attempts_before_redelivery=WebhookDeliveryRow.attempts,
            )
            .returning(*_DELIVERY_COLUMNS)
        )
        async with storage_errors():
            row = (await self._session.execute(statement)).one_or_none()
        return None if row is None else _delivery(row)
