"""The webhook repository, outbox and delivery queue contracts, checked against PostgreSQL and the fakes."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from support.adapters.memory.system import InMemoryUnitOfWork
from support.adapters.memory.webhooks import (
    InMemoryWebhookDeliveryQueue,
    InMemoryWebhookOutbox,
    InMemoryWebhookRepository,
)
from support.adapters.postgres.conversations import PostgresConversationRepository
from support.adapters.postgres.models import WebhookEventRow
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.postgres.webhooks import (
    PostgresWebhookDeliveryQueue,
    PostgresWebhookOutbox,
    PostgresWebhookRepository,
)
from support.domain.conversations import Conversation, ConversationStatus
from support.domain.errors import InvalidInputError
from support.domain.ids import new_id
from support.domain.paging import ID_CURSOR
from support.domain.webhooks import DeliveryStatus, OutboundEvent, Webhook, WebhookDelivery, WebhookEventType
from support.ports.system import UnitOfWork
from support.ports.webhooks import WebhookDeliveryQueue, WebhookOutbox, WebhookRepository

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=20)
REQUESTED, CLAIMED, MESSAGE = (
    WebhookEventType.HANDOFF_REQUESTED,
    WebhookEventType.HANDOFF_CLAIMED,
    WebhookEventType.MESSAGE_CREATED,
)


@dataclass
class Backend:
    webhooks: WebhookRepository
    outbox: WebhookOutbox
    queue: WebhookDeliveryQueue
    uow: UnitOfWork
    # The ids of the stored events (no port reads them: only deliveries carry them out).
    event_ids: Callable[[], Awaitable[set[UUID]]]


@pytest.fixture
async def postgres_backend(engine: AsyncEngine) -> AsyncIterator[Backend]:
    async def event_ids() -> set[UUID]:
        async with engine.connect() as connection:
            return set((await connection.execute(sa.select(WebhookEventRow.id))).scalars())

    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield Backend(
            PostgresWebhookRepository(session),
            PostgresWebhookOutbox(session),
            PostgresWebhookDeliveryQueue(session),
            SqlAlchemyUnitOfWork(session),
            event_ids,
        )


@pytest.fixture
def memory_backend() -> Backend:
    store = InMemoryWebhookRepository()

    async def event_ids() -> set[UUID]:
        return set(store.events)

    return Backend(
        store, InMemoryWebhookOutbox(store), InMemoryWebhookDeliveryQueue(store), InMemoryUnitOfWork(), event_ids
    )


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


async def add_webhook(
    backend: Backend,
    *types: WebhookEventType,
    url: str = "https://hooks.example.com/in",
    active: bool = True,
    created_at: datetime = NOW,
) -> Webhook:
    webhook = Webhook(
        id=new_id(),
        url=url,
        description="crm",
        event_types=types or tuple(WebhookEventType),
        secret_hint="whsec_abcd",
        active=active,
        created_at=created_at,
    )
    await backend.webhooks.add(webhook, f"whsec_secret-of-{webhook.id}")
    await backend.uow.commit()
    return webhook


def event(event_type: WebhookEventType = REQUESTED, *, at: datetime = NOW, **data: object) -> OutboundEvent:
    return OutboundEvent(id=new_id(), type=event_type, conversation_id=None, occurred_at=at, data=data)


async def enqueue(backend: Backend, *events: OutboundEvent) -> None:
    for item in events:
        await backend.outbox.enqueue(item)
    await backend.uow.commit()


async def claim(backend: Backend, now: datetime = NOW, limit: int = 10) -> list[tuple[UUID, UUID]]:
    """(event id, webhook id) of what a claim at ``now`` returns, committed."""
    claimed = await backend.queue.claim_due(now=now, limit=limit, per_endpoint=100, lease_until=now + LEASE)
    await backend.uow.commit()
    return [(due.event.id, due.delivery.webhook_id) for due in claimed]


async def test_endpoints_are_stored_listed_newest_first_and_deleted(backend: Backend) -> None:
    older = await add_webhook(backend, REQUESTED, MESSAGE)
    newer = await add_webhook(
        backend, CLAIMED, url="http://10.0.0.5:8080/hooks?x=1", created_at=NOW + timedelta(seconds=1)
    )
    assert await backend.webhooks.get(older.id) == older
    assert await backend.webhooks.get(new_id()) is None
    listed = await backend.webhooks.list_webhooks(limit=10, cursor=None)
    assert [webhook.id for webhook in listed.items] == [newer.id, older.id]
    assert listed.next_cursor is None
    assert await backend.webhooks.delete(older.id) is True
    assert await backend.webhooks.delete(older.id) is False
    await backend.uow.commit()
    assert (await backend.webhooks.list_webhooks(limit=10, cursor=None)).items == [newer]


async def test_endpoints_are_paged_newest_first_and_the_last_page_has_no_cursor(backend: Backend) -> None:
    # Two share a creation time (the id breaks the tie, across a page boundary); microseconds survive the cursor.
    stamps = [NOW, NOW, NOW + timedelta(microseconds=1), NOW + timedelta(seconds=1), NOW - timedelta(days=1)]
    stored = [await add_webhook(backend, created_at=stamp) for stamp in stamps]

    first = await backend.webhooks.list_webhooks(limit=2, cursor=None)
    second = await backend.webhooks.list_webhooks(limit=2, cursor=first.next_cursor)
    third = await backend.webhooks.list_webhooks(limit=2, cursor=second.next_cursor)

    newest_first = sorted(stored, key=lambda webhook: (webhook.created_at, webhook.id), reverse=True)
    assert first.items + second.items + third.items == newest_first
    assert (len(first.items), len(second.items), len(third.items)) == (2, 2, 1)
    assert first.next_cursor is not None
    assert second.next_cursor is not None
    assert third.next_cursor is None
    exact = await backend.webhooks.list_webhooks(limit=5, cursor=None)
    assert (len(exact.items), exact.next_cursor) == (5, None)


async def test_a_bad_endpoint_cursor_is_invalid_input(backend: Backend) -> None:
    await add_webhook(backend)
    with pytest.raises(InvalidInputError):
        await backend.webhooks.list_webhooks(limit=2, cursor="not-a-cursor")
    # A cursor of another kind of list is refused too.
    delivery_cursor = ID_CURSOR.encode(new_id())
    with pytest.raises(InvalidInputError):
        await backend.webhooks.list_webhooks(limit=2, cursor=delivery_cursor)


async def test_an_event_fans_out_to_every_active_endpoint_subscribed_to_its_type(backend: Backend) -> None:
    requested_only = await add_webhook(backend, REQUESTED)
    both = await add_webhook(backend, REQUESTED, MESSAGE)
    await add_webhook(backend, MESSAGE)
    await add_webhook(backend, REQUESTED, active=False)
    requested = event(REQUESTED)
    await enqueue(backend, requested)
    assert sorted(await claim(backend)) == sorted([(requested.id, requested_only.id), (requested.id, both.id)])


async def test_without_subscribers_nothing_is_recorded(backend: Backend) -> None:
    webhook = await add_webhook(backend, CLAIMED)
    await enqueue(backend, event(REQUESTED), event(MESSAGE))
    assert await claim(backend) == []
    assert (await backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)).items == []


async def test_enqueueing_an_event_twice_delivers_it_once(backend: Backend) -> None:
    await add_webhook(backend, REQUESTED)
    once = event(REQUESTED)
    await enqueue(backend, once, once)
    assert [event_id for event_id, _ in await claim(backend)] == [once.id]


async def test_a_claim_carries_the_event_the_url_and_the_secret_and_counts_an_attempt(backend: Backend) -> None:
    webhook = await add_webhook(backend, MESSAGE)
    sent = event(MESSAGE, at=NOW - timedelta(seconds=1), message_id="m-1", roles=("customer", "agent"), n=3)
    await enqueue(backend, sent)
    [due] = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    await backend.uow.commit()
    assert due.url == webhook.url
    assert due.secret == f"whsec_secret-of-{webhook.id}"
    assert due.event == replace(sent, data={"message_id": "m-1", "roles": ["customer", "agent"], "n": 3})
    delivery = due.delivery
    assert (delivery.event_id, delivery.webhook_id, delivery.event_type) == (sent.id, webhook.id, MESSAGE)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert (delivery.last_attempt_at, delivery.next_attempt_at) == (NOW, NOW + LEASE)
    assert delivery.created_at == sent.occurred_at
    [listed] = (await backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)).items
    assert listed == delivery


async def test_a_claimed_delivery_is_hidden_until_its_lease_runs_out(backend: Backend) -> None:
    """A worker that dies mid-send leaves its claim leased; the delivery is claimed again when the lease ends."""
    await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    assert len(await claim(backend)) == 1
    assert await claim(backend, NOW + LEASE - timedelta(milliseconds=1)) == []
    [again] = await backend.queue.claim_due(now=NOW + LEASE, limit=10, per_endpoint=100, lease_until=NOW + 2 * LEASE)
    assert again.delivery.attempts == 2


async def test_claims_take_the_earliest_due_first_up_to_the_limit(backend: Backend) -> None:
    await add_webhook(backend, REQUESTED)
    first, second, third = (event(at=NOW - timedelta(seconds=seconds)) for seconds in (30, 20, 10))
    future = event(at=NOW + timedelta(seconds=5))
    await enqueue(backend, third, future, first, second)
    assert {event_id for event_id, _ in await claim(backend, limit=2)} == {first.id, second.id}
    assert [event_id for event_id, _ in await claim(backend, limit=2)] == [third.id]
    assert await claim(backend) == []
    assert [event_id for event_id, _ in await claim(backend, NOW + timedelta(seconds=5))] == [future.id]


async def test_a_retry_waits_for_its_time_and_shows_the_last_answer(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    [due] = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    retry_at = NOW + timedelta(seconds=7)
    await backend.queue.save(
        replace(due.delivery, next_attempt_at=retry_at, last_status_code=503, last_error="HTTP 503")
    )
    await backend.uow.commit()
    [listed] = (await backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)).items
    assert (listed.status, listed.attempts, listed.last_status_code, listed.last_error) == (
        DeliveryStatus.PENDING,
        1,
        503,
        "HTTP 503",
    )
    assert listed.next_attempt_at == retry_at
    assert await claim(backend, retry_at - timedelta(seconds=1)) == []
    assert len(await claim(backend, retry_at)) == 1


async def test_delivered_and_failed_deliveries_are_never_claimed_again(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event(), event())
    ok, bad = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    delivered = ok.delivery.succeeded(200, NOW + timedelta(seconds=1))
    await backend.queue.save(delivered)
    await backend.queue.save(replace(bad.delivery, status=DeliveryStatus.FAILED, last_error="HTTP 410"))
    await backend.uow.commit()
    assert await claim(backend, NOW + timedelta(days=1)) == []
    statuses = {
        item.id: (item.status, item.delivered_at)
        for item in (await backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)).items
    }
    assert statuses == {
        ok.delivery.id: (DeliveryStatus.DELIVERED, NOW + timedelta(seconds=1)),
        bad.delivery.id: (DeliveryStatus.FAILED, None),
    }


async def test_a_late_failure_report_does_not_reopen_a_delivered_delivery(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    [due] = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    await backend.queue.save(due.delivery.succeeded(200, NOW))
    await backend.queue.save(replace(due.delivery, last_error="no answer", next_attempt_at=NOW))
    await backend.uow.commit()
    [listed] = (await backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)).items
    assert (listed.status, listed.last_error) == (DeliveryStatus.DELIVERED, None)


async def test_deliveries_are_listed_newest_first_a_page_at_a_time(backend: Backend) -> None:
    webhook = await add_webhook(backend, MESSAGE)
    other = await add_webhook(backend, MESSAGE)
    events = [event(MESSAGE, index=index) for index in range(5)]
    for item in events:
        await enqueue(backend, item)
        await asyncio.sleep(0.002)  # ids order by millisecond
    seen: list[UUID] = []
    cursor = None
    for expected in (2, 2, 1):
        page = await backend.webhooks.list_deliveries(webhook.id, limit=2, cursor=cursor)
        assert len(page.items) == expected
        assert {item.webhook_id for item in page.items} == {webhook.id}
        seen += [item.event_id for item in page.items]
        cursor = page.next_cursor
    assert cursor is None
    assert seen == [item.id for item in reversed(events)]
    assert len((await backend.webhooks.list_deliveries(other.id, limit=10, cursor=None)).items) == 5
    with pytest.raises(InvalidInputError):
        await backend.webhooks.list_deliveries(webhook.id, limit=2, cursor="not-a-cursor")


async def test_deleting_an_endpoint_deletes_its_deliveries(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    kept = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    await backend.webhooks.delete(webhook.id)
    await backend.uow.commit()
    assert (await backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)).items == []
    assert [webhook_id for _, webhook_id in await claim(backend)] == [kept.id]


async def test_data_that_is_not_json_is_refused_even_without_subscribers(backend: Backend) -> None:
    with pytest.raises(TypeError):
        await backend.outbox.enqueue(event(data_id=new_id()))


async def listed(backend: Backend, webhook_id: UUID) -> dict[UUID, WebhookDelivery]:
    """The endpoint's deliveries by id, as the listing shows them."""
    page = await backend.webhooks.list_deliveries(webhook_id, limit=100, cursor=None)
    return {item.id: item for item in page.items}


async def finish(backend: Backend, *, at: datetime, status: DeliveryStatus, count: int = 1) -> list[WebhookDelivery]:
    """Claim ``count`` due deliveries at ``at`` and record them delivered or failed, committed."""
    claimed = await backend.queue.claim_due(now=at, limit=count, per_endpoint=100, lease_until=at + LEASE)
    assert len(claimed) == count
    finished = [
        due.delivery.succeeded(200, at)
        if status is DeliveryStatus.DELIVERED
        else replace(due.delivery, status=DeliveryStatus.FAILED, last_status_code=500, last_error="HTTP 500")
        for due in claimed
    ]
    for delivery in finished:
        await backend.queue.save(delivery)
    await backend.uow.commit()
    return finished


@pytest.mark.parametrize("status", [DeliveryStatus.FAILED, DeliveryStatus.DELIVERED])
async def test_a_redelivered_delivery_is_due_at_once_with_a_fresh_retry_budget(
    backend: Backend, status: DeliveryStatus
) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    sent = event()
    await enqueue(backend, sent)
    [done] = await finish(backend, at=NOW, status=status)
    later = NOW + timedelta(hours=3)

    requeued = await backend.queue.requeue(webhook.id, done.id, now=later)
    await backend.uow.commit()

    assert requeued is not None
    assert (requeued.status, requeued.next_attempt_at, requeued.delivered_at) == (DeliveryStatus.PENDING, later, None)
    # Every attempt stays counted; the budget counts from here.
    assert (requeued.attempts, requeued.attempts_before_redelivery, requeued.attempts_since_redelivery) == (1, 1, 0)
    # The last answer describes the last attempt made until the next one replaces it.
    assert (requeued.last_attempt_at, requeued.last_status_code) == (NOW, done.last_status_code)
    assert (await listed(backend, webhook.id))[done.id] == requeued
    assert await claim(backend, later - timedelta(seconds=1)) == []
    [again] = await backend.queue.claim_due(now=later, limit=10, per_endpoint=100, lease_until=later + LEASE)
    assert (again.event, again.delivery.attempts, again.delivery.attempts_since_redelivery) == (sent, 2, 1)
    await backend.queue.save(again.delivery.succeeded(204, later))
    await backend.uow.commit()
    delivered = (await listed(backend, webhook.id))[done.id]
    assert (delivered.status, delivered.attempts, delivered.delivered_at) == (DeliveryStatus.DELIVERED, 2, later)


async def test_a_pending_delivery_redelivered_is_due_at_once(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    [due] = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    await backend.queue.save(replace(due.delivery, next_attempt_at=NOW + timedelta(hours=1), last_error="HTTP 503"))
    await backend.uow.commit()
    requeued = await backend.queue.requeue(webhook.id, due.delivery.id, now=NOW + timedelta(seconds=1))
    await backend.uow.commit()
    assert requeued is not None
    assert (requeued.status, requeued.next_attempt_at) == (DeliveryStatus.PENDING, NOW + timedelta(seconds=1))
    assert len(await claim(backend, NOW + timedelta(seconds=1))) == 1


async def test_the_outcome_of_an_attempt_claimed_before_a_redelivery_is_ignored(backend: Backend) -> None:
    """An attempt in flight when the admin redelivers reports late: the redelivery's state stays."""
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    [in_flight] = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    await backend.uow.commit()
    requeued = await backend.queue.requeue(webhook.id, in_flight.delivery.id, now=NOW + timedelta(seconds=1))
    await backend.uow.commit()
    stale = in_flight.delivery
    for outcome in (
        replace(stale, status=DeliveryStatus.FAILED, last_error="HTTP 500"),
        replace(stale, next_attempt_at=NOW + timedelta(hours=1), last_error="HTTP 500"),
        stale.succeeded(200, NOW + timedelta(seconds=2)),
    ):
        await backend.queue.save(outcome)
        await backend.uow.commit()
        assert (await listed(backend, webhook.id))[stale.id] == requeued


async def test_only_the_endpoints_own_deliveries_are_redelivered(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    other = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event())
    theirs = next(iter(await listed(backend, other.id)))
    assert await backend.queue.requeue(webhook.id, theirs, now=NOW) is None
    assert await backend.queue.requeue(webhook.id, new_id(), now=NOW) is None
    assert await backend.queue.requeue(new_id(), theirs, now=NOW) is None
    await backend.uow.commit()
    [untouched] = (await listed(backend, other.id)).values()
    assert untouched.attempts_before_redelivery == 0


async def test_finished_deliveries_older_than_the_cutoff_are_deleted_oldest_first(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, *(event(at=NOW - timedelta(days=40)) for _ in range(4)))
    oldest = await finish(backend, at=NOW - timedelta(days=40), status=DeliveryStatus.DELIVERED)
    old = await finish(backend, at=NOW - timedelta(days=35), status=DeliveryStatus.FAILED)
    recent = await finish(backend, at=NOW - timedelta(days=1), status=DeliveryStatus.DELIVERED)
    # Pending however old: a retry is still due, and never-claimed ones have no last attempt.
    [retrying] = await backend.queue.claim_due(
        now=NOW - timedelta(days=40), limit=1, per_endpoint=100, lease_until=NOW - timedelta(days=39)
    )
    await backend.uow.commit()
    cutoff = NOW - timedelta(days=30)

    assert await backend.webhooks.delete_finished_deliveries(before=cutoff, limit=1) == 1
    await backend.uow.commit()
    assert set(await listed(backend, webhook.id)) == {old[0].id, recent[0].id, retrying.delivery.id}
    assert await backend.webhooks.delete_finished_deliveries(before=cutoff, limit=10) == 1
    await backend.uow.commit()
    assert await backend.webhooks.delete_finished_deliveries(before=cutoff, limit=10) == 0
    await backend.uow.commit()
    assert set(await listed(backend, webhook.id)) == {recent[0].id, retrying.delivery.id}
    assert oldest[0].event_id not in await backend.event_ids()


async def test_an_event_is_kept_while_a_delivery_still_needs_it(backend: Backend) -> None:
    first = await add_webhook(backend, REQUESTED)
    second = await add_webhook(backend, REQUESTED)
    shared, alone = event(at=NOW - timedelta(days=40)), event(at=NOW - timedelta(days=40))
    await enqueue(backend, shared, alone)
    # Both deliveries of ``alone`` and the first endpoint's of ``shared`` finish; the second's stays pending.
    claimed = await backend.queue.claim_due(now=NOW - timedelta(days=40), limit=10, per_endpoint=100, lease_until=NOW)
    for due in claimed:
        if due.event.id == alone.id or due.delivery.webhook_id == first.id:
            await backend.queue.save(due.delivery.succeeded(200, NOW - timedelta(days=40)))
    await backend.uow.commit()

    assert await backend.webhooks.delete_finished_deliveries(before=NOW, limit=10) == 3
    await backend.uow.commit()

    assert await backend.event_ids() == {shared.id}
    assert await listed(backend, first.id) == {}
    [waiting] = (await listed(backend, second.id)).values()
    assert waiting.event_id == shared.id
    [due] = await backend.queue.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE)
    assert due.event.id == shared.id


async def test_a_redelivered_delivery_is_not_deleted_until_it_finishes_again(backend: Backend) -> None:
    webhook = await add_webhook(backend, REQUESTED)
    await enqueue(backend, event(at=NOW - timedelta(days=40)))
    [failed] = await finish(backend, at=NOW - timedelta(days=40), status=DeliveryStatus.FAILED)
    await backend.queue.requeue(webhook.id, failed.id, now=NOW)
    await backend.uow.commit()
    assert await backend.webhooks.delete_finished_deliveries(before=NOW - timedelta(days=30), limit=10) == 0
    await backend.uow.commit()
    assert set(await listed(backend, webhook.id)) == {failed.id}


# PostgreSQL only: transactions, row locks and foreign keys, which the fakes do not model.


async def test_an_event_rolled_back_with_its_change_is_never_delivered(
    postgres_backend: Backend, engine: AsyncEngine
) -> None:
    await add_webhook(postgres_backend, REQUESTED)
    await postgres_backend.outbox.enqueue(event())
    await postgres_backend.uow.rollback()
    async with engine.connect() as connection:
        assert await connection.scalar(sa.text("SELECT count(*) FROM webhook_events")) == 0
        assert await connection.scalar(sa.text("SELECT count(*) FROM webhook_deliveries")) == 0


async def test_concurrent_sweeps_delete_different_rows_and_leave_no_event_behind(
    postgres_backend: Backend, engine: AsyncEngine
) -> None:
    """Two sweeps that each delete one of an event's two deliveries: the event goes too, whichever commits last."""
    await add_webhook(postgres_backend, REQUESTED)
    await add_webhook(postgres_backend, REQUESTED)
    await enqueue(postgres_backend, event(at=NOW - timedelta(days=40)))
    await finish(postgres_backend, at=NOW - timedelta(days=40), status=DeliveryStatus.DELIVERED, count=2)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as first_session, factory() as second_session:
        first, second = PostgresWebhookRepository(first_session), PostgresWebhookRepository(second_session)
        assert await first.delete_finished_deliveries(before=NOW, limit=1) == 1
        # The second sweep skips the first one's delivery and waits for the event it locked.
        second_sweep = asyncio.create_task(second.delete_finished_deliveries(before=NOW, limit=10))
        await asyncio.sleep(0.2)
        assert not second_sweep.done()
        await first_session.commit()
        assert await asyncio.wait_for(second_sweep, timeout=5) == 1
        await second_session.commit()
    assert await postgres_backend.event_ids() == set()


async def test_the_sweep_uses_the_index_of_finished_deliveries(postgres_backend: Backend, engine: AsyncEngine) -> None:
    """The sweep's own statement, as sent with its parameters, can be served by ix_webhook_deliveries_finished.

    The test table is tiny, so sequential scans are switched off: the question is whether the index fits the
    statement (its predicate implied by the query's), not which plan a tiny table gets.
    """
    sent: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        if "SKIP LOCKED" in statement and "last_attempt_at" in statement:
            sent.append((statement, parameters))

    await add_webhook(postgres_backend, REQUESTED)
    await enqueue(postgres_backend, event(at=NOW - timedelta(days=40)))
    await finish(postgres_backend, at=NOW - timedelta(days=40), status=DeliveryStatus.DELIVERED)
    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await postgres_backend.webhooks.delete_finished_deliveries(before=NOW, limit=10) == 1
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    await postgres_backend.uow.rollback()
    [(statement, parameters)] = sent
    async with engine.connect() as connection:
        await connection.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join((await connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)).scalars())
    assert "ix_webhook_deliveries_finished" in plan, plan


async def test_concurrent_claims_skip_each_others_rows_without_waiting(
    postgres_backend: Backend, engine: AsyncEngine
) -> None:
    await add_webhook(postgres_backend, REQUESTED)
    await enqueue(postgres_backend, *(event() for _ in range(4)))
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as first_session, factory() as second_session:
        first, second = PostgresWebhookDeliveryQueue(first_session), PostgresWebhookDeliveryQueue(second_session)
        # The first claim's transaction stays open, holding its row locks, while the second one claims.
        mine = await first.claim_due(now=NOW, limit=2, per_endpoint=100, lease_until=NOW + LEASE)
        theirs = await asyncio.wait_for(
            second.claim_due(now=NOW, limit=10, per_endpoint=100, lease_until=NOW + LEASE), timeout=5
        )
        assert len(mine) == 2
        assert len(theirs) == 2
        assert {due.delivery.id for due in mine}.isdisjoint(due.delivery.id for due in theirs)
        await first_session.commit()
        await second_session.commit()


async def test_erasing_a_conversation_erases_its_events_and_deliveries(
    postgres_backend: Backend, engine: AsyncEngine
) -> None:
    webhook = await add_webhook(postgres_backend, REQUESTED)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        conversations = PostgresConversationRepository(session)
        customer = await conversations.get_or_create_customer("erase-me", name=None, email=None, now=NOW)
        conversation = Conversation(
            id=new_id(),
            customer_id=customer.id,
            status=ConversationStatus.BOT,
            metadata={},
            created_at=NOW,
            updated_at=NOW,
            last_activity_at=NOW,
        )
        await conversations.add(conversation)
        await session.commit()
    about_it = replace(event(), conversation_id=conversation.id)
    await enqueue(postgres_backend, about_it, event())
    async with engine.begin() as connection:
        await connection.execute(sa.text("DELETE FROM customers WHERE id = :id"), {"id": customer.id})
    page = await postgres_backend.webhooks.list_deliveries(webhook.id, limit=10, cursor=None)
    assert len(page.items) == 1
    assert page.items[0].event_id != about_it.id
    async with engine.connect() as connection:
        assert await connection.scalar(sa.text("SELECT count(*) FROM webhook_events")) == 1


async def test_a_claim_takes_at_most_so_many_deliveries_of_one_endpoint(backend: Backend) -> None:
    # A receiver with a backlog (slow, or down) must not fill a round while another endpoint's deliveries wait.
    stuck = await add_webhook(backend, REQUESTED)
    healthy = await add_webhook(backend, MESSAGE)
    backlog = [event(REQUESTED, at=NOW - timedelta(minutes=10, seconds=index)) for index in range(6)]
    await enqueue(backend, *backlog, event(MESSAGE, at=NOW))

    claimed = await backend.queue.claim_due(now=NOW, limit=4, per_endpoint=2, lease_until=NOW + LEASE)
    await backend.uow.commit()

    by_endpoint = Counter(due.delivery.webhook_id for due in claimed)
    assert by_endpoint == {stuck.id: 2, healthy.id: 1}
    # The two of the backlog that were due first.
    assert {due.event.id for due in claimed if due.delivery.webhook_id == stuck.id} == {
        backlog[5].id,
        backlog[4].id,
    }
    assert len(await claim(backend, limit=10)) == 4  # the rest of the backlog, in the next claim


async def test_a_claim_leaves_out_the_endpoints_it_is_told_are_busy(backend: Backend) -> None:
    busy = await add_webhook(backend, REQUESTED)
    free = await add_webhook(backend, MESSAGE)
    await enqueue(backend, event(REQUESTED), event(MESSAGE))

    claimed = await backend.queue.claim_due(
        now=NOW, limit=10, per_endpoint=10, lease_until=NOW + LEASE, busy=frozenset({busy.id})
    )
    await backend.uow.commit()

    assert [due.delivery.webhook_id for due in claimed] == [free.id]
    assert [webhook for _, webhook in await claim(backend)] == [busy.id]  # not busy any more: it is claimed
