import asyncio
import json
from collections.abc import Mapping
from datetime import timedelta
from uuid import UUID

import pytest

from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.adapters.memory.webhooks import (
    InMemoryWebhookDeliveryQueue,
    InMemoryWebhookOutbox,
    InMemoryWebhookRepository,
)
from support.application.webhooks import (
    CreateWebhook,
    DeleteWebhook,
    DeliveriesInFlight,
    DeliverWebhooks,
    GetWebhook,
    ListWebhookDeliveries,
    ListWebhooks,
    PurgeWebhookDeliveries,
    RedeliverWebhookDelivery,
    WebhookDeliveryPolicy,
    WebhookRetentionPolicy,
    WebhookTargetPolicy,
)
from support.domain.errors import InvalidInputError
from support.domain.ids import new_id
from support.domain.webhooks import (
    DeliveryStatus,
    InvalidWebhookUrlError,
    OutboundEvent,
    RetrySchedule,
    WebhookDelivery,
    WebhookDeliveryNotFoundError,
    WebhookEventType,
    WebhookNotFoundError,
    encode_event,
    verify_signature,
)
from support.ports.webhooks import SendResult, WebhookSender
from tests.fakes.webhooks import ScriptedSender

URL = "https://crm.example.com/hooks/support"
POLICY = WebhookDeliveryPolicy(
    schedule=RetrySchedule(base_s=10, cap_s=60, max_attempts=3), batch_size=10, per_endpoint=10, lease_s=30
)
PUBLIC_ONLY = WebhookTargetPolicy(allow_private=False)


class World:
    def __init__(self) -> None:
        self.store = InMemoryWebhookRepository()
        self.outbox = InMemoryWebhookOutbox(self.store)
        self.uow = InMemoryUnitOfWork()
        self.clock = FixedClock()
        self.sender = ScriptedSender()
        self.in_flight = DeliveriesInFlight()

    def deliver(self, sender: WebhookSender | None = None) -> DeliverWebhooks:
        return DeliverWebhooks(
            InMemoryWebhookDeliveryQueue(self.store),
            sender or self.sender,
            self.uow,
            self.clock,
            POLICY,
            self.in_flight,
        )

    async def create(self, *types: WebhookEventType, url: str = URL) -> tuple[UUID, str]:
        issued = await CreateWebhook(self.store, self.uow, self.clock, PUBLIC_ONLY).execute(
            url, types or list(WebhookEventType)
        )
        return issued.webhook.id, issued.secret

    async def emit(self, event_type: WebhookEventType = WebhookEventType.HANDOFF_REQUESTED) -> OutboundEvent:
        event = OutboundEvent(
            id=new_id(),
            type=event_type,
            conversation_id=new_id(),
            occurred_at=self.clock.now(),
            data={"reason_code": "customer_request"},
        )
        await self.outbox.enqueue(event)
        return event

    async def deliveries(self, webhook_id: UUID) -> list[WebhookDelivery]:
        return (await ListWebhookDeliveries(self.store).execute(webhook_id)).items

    def redeliver(self) -> RedeliverWebhookDelivery:
        return RedeliverWebhookDelivery(self.store, InMemoryWebhookDeliveryQueue(self.store), self.uow, self.clock)

    def purge(self, retention: timedelta | None = timedelta(days=30), batch_size: int = 10) -> PurgeWebhookDeliveries:
        return PurgeWebhookDeliveries(self.store, self.uow, self.clock, WebhookRetentionPolicy(retention, batch_size))

    async def fail_for_good(self, webhook_id: UUID) -> WebhookDelivery:
        """Deliver the only pending delivery with every attempt answered 500 until it has failed."""
        self.sender.script(*(SendResult(500) for _ in range(POLICY.schedule.max_attempts)))
        for _ in range(POLICY.schedule.max_attempts):
            assert await self.deliver().execute() == 1
            self.clock.advance(timedelta(minutes=5))
        [delivery] = [item for item in await self.deliveries(webhook_id) if item.status is DeliveryStatus.FAILED]
        return delivery


@pytest.fixture
def world() -> World:
    return World()


async def test_a_created_webhook_shows_its_secret_once_and_lists_only_the_hint(world: World) -> None:
    created = await CreateWebhook(world.store, world.uow, world.clock, PUBLIC_ONLY).execute(
        f"  {URL}  ",
        [WebhookEventType.MESSAGE_CREATED, WebhookEventType.HANDOFF_REQUESTED, WebhookEventType.MESSAGE_CREATED],
        "  CRM  ",
    )
    assert world.uow.commits == 1
    webhook = created.webhook
    assert (webhook.url, webhook.description, webhook.active) == (URL, "CRM", True)
    assert webhook.event_types == (WebhookEventType.HANDOFF_REQUESTED, WebhookEventType.MESSAGE_CREATED)
    assert created.secret.startswith(webhook.secret_hint)
    assert (await ListWebhooks(world.store).execute()).items == [webhook]
    assert await GetWebhook(world.store).execute(webhook.id) == webhook
    assert created.secret not in repr(webhook)


@pytest.mark.parametrize(
    ("url", "types", "description", "error"),
    [
        ("ftp://crm.example.com/", [WebhookEventType.HANDOFF_CLAIMED], "", InvalidWebhookUrlError),
        (URL, [], "", InvalidInputError),
        (URL, [WebhookEventType.HANDOFF_CLAIMED], "x" * 501, InvalidInputError),
    ],
)
async def test_bad_webhooks_are_refused(
    world: World, url: str, types: list[WebhookEventType], description: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await CreateWebhook(world.store, world.uow, world.clock, PUBLIC_ONLY).execute(url, types, description)
    assert world.uow.commits == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hooks", "http://localhost/hooks", "http://[::1]/hooks"])
async def test_private_targets_are_refused_unless_the_policy_allows_them(world: World, url: str) -> None:
    types = [WebhookEventType.HANDOFF_REQUESTED]
    with pytest.raises(InvalidWebhookUrlError, match="only sent to public hosts"):
        await CreateWebhook(world.store, world.uow, world.clock, PUBLIC_ONLY).execute(url, types)
    assert world.uow.commits == 0
    allowed = WebhookTargetPolicy(allow_private=True)
    created = await CreateWebhook(world.store, world.uow, world.clock, allowed).execute(url, types)
    assert created.webhook.url == url


async def test_unknown_webhooks_are_not_found(world: World) -> None:
    for use_case in (
        GetWebhook(world.store),
        DeleteWebhook(world.store, world.uow),
        ListWebhookDeliveries(world.store),
    ):
        with pytest.raises(WebhookNotFoundError):
            await use_case.execute(new_id())
    with pytest.raises(WebhookNotFoundError):
        await world.redeliver().execute(new_id(), new_id())


async def test_an_event_is_posted_signed_and_marked_delivered(world: World) -> None:
    webhook_id, secret = await world.create(WebhookEventType.HANDOFF_REQUESTED)
    event = await world.emit()
    world.clock.advance(timedelta(seconds=2))

    assert await world.deliver().execute() == 1

    [sent] = world.sender.sent
    assert sent.url == URL
    assert sent.body == encode_event(event)
    assert json.loads(sent.body)["id"] == str(event.id)
    timestamp = int(world.clock.now().timestamp())
    assert sent.headers["Webhook-Id"] == str(event.id)
    assert sent.headers["Webhook-Timestamp"] == str(timestamp)
    assert sent.headers["Content-Type"] == "application/json"
    assert verify_signature(secret, timestamp, sent.body, sent.headers["Webhook-Signature"])
    [delivery] = await world.deliveries(webhook_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.DELIVERED, 1, 200)
    assert delivery.delivered_at == world.clock.now()
    assert world.uow.commits == 3  # the webhook, the claim, the outcome
    assert await world.deliver().execute() == 0


async def test_a_failed_attempt_is_retried_with_backoff_and_then_delivered(world: World) -> None:
    webhook_id, _ = await world.create()
    await world.emit()
    world.sender.script(SendResult(500), SendResult(None, "ConnectError: connection refused"))

    await world.deliver().execute()
    [delivery] = await world.deliveries(webhook_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert (delivery.last_status_code, delivery.last_error) == (500, "HTTP 500")
    wait = delivery.next_attempt_at - world.clock.now()
    assert timedelta(seconds=5) <= wait <= timedelta(seconds=10)  # base 10 s, upper half
    assert await world.deliver().execute() == 0  # not due yet

    world.clock.advance(wait)
    await world.deliver().execute()
    [delivery] = await world.deliveries(webhook_id)
    assert (delivery.attempts, delivery.last_status_code) == (2, None)
    assert delivery.last_error == "ConnectError: connection refused"
    assert timedelta(seconds=10) <= delivery.next_attempt_at - world.clock.now() <= timedelta(seconds=20)

    world.clock.advance(timedelta(seconds=20))
    await world.deliver().execute()
    [delivery] = await world.deliveries(webhook_id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == (DeliveryStatus.DELIVERED, 3, None)
    assert len(world.sender.sent) == 3
    assert len({sent.headers["Webhook-Id"] for sent in world.sender.sent}) == 1


async def test_a_delivery_fails_for_good_after_the_last_attempt(world: World) -> None:
    webhook_id, _ = await world.create()
    await world.emit()
    world.sender.default = SendResult(404)
    for _ in range(POLICY.schedule.max_attempts):
        await world.deliver().execute()
        world.clock.advance(timedelta(minutes=5))
    [delivery] = await world.deliveries(webhook_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.FAILED, 3, 404)
    world.clock.advance(timedelta(days=1))
    assert await world.deliver().execute() == 0
    assert len(world.sender.sent) == 3


class CrashingSender(ScriptedSender):
    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        await super().send(url, body, headers)
        raise RuntimeError("the process died mid-send")


async def test_a_round_cut_short_leaves_its_claim_to_be_sent_again_after_the_lease(world: World) -> None:
    webhook_id, _ = await world.create()
    await world.emit()
    with pytest.raises(RuntimeError):
        await world.deliver(CrashingSender()).execute()
    world.clock.advance(timedelta(seconds=POLICY.lease_s - 1))
    assert await world.deliver().execute() == 0
    world.clock.advance(timedelta(seconds=1))
    assert await world.deliver().execute() == 1
    [delivery] = await world.deliveries(webhook_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)


class GatedSender(ScriptedSender):
    """Holds sends to ``slow_url`` until ``gate`` opens."""

    def __init__(self, slow_url: str) -> None:
        super().__init__()
        self.slow_url = slow_url
        self.gate = asyncio.Event()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        if url == self.slow_url:
            await self.gate.wait()
        return await super().send(url, body, headers)


async def test_each_outcome_is_recorded_as_soon_as_it_is_known(world: World) -> None:
    slow_id, _ = await world.create(url="https://slow.example.com/hooks")
    fast_id, _ = await world.create(url="https://fast.example.com/hooks")
    await world.emit()
    sender = GatedSender("https://slow.example.com/hooks")
    round_ = asyncio.create_task(world.deliver(sender).execute())
    for _ in range(100):
        if (await world.deliveries(fast_id))[0].status is DeliveryStatus.DELIVERED:
            break
        await asyncio.sleep(0.01)
    assert (await world.deliveries(fast_id))[0].status is DeliveryStatus.DELIVERED
    assert (await world.deliveries(slow_id))[0].status is DeliveryStatus.PENDING
    sender.gate.set()
    assert await round_ == 2
    assert (await world.deliveries(slow_id))[0].status is DeliveryStatus.DELIVERED


class FirstSlowSender(ScriptedSender):
    """Answers the first send of a round last: sent at once, the second event would arrive first."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[str] = []

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        first = not self.sent
        result = await super().send(url, body, headers)
        await asyncio.sleep(0.05 if first else 0)
        self.arrived.append(headers["Webhook-Id"])
        return result


async def test_one_conversations_events_arrive_in_the_order_they_happened(world: World) -> None:
    await world.create()
    conversation = new_id()
    emitted = []
    for event_type in (WebhookEventType.HANDOFF_REQUESTED, WebhookEventType.MESSAGE_CREATED):
        event = OutboundEvent(new_id(), event_type, conversation, world.clock.now(), {})
        await world.outbox.enqueue(event)
        emitted.append(str(event.id))
        world.clock.advance(timedelta(milliseconds=1))
    sender = FirstSlowSender()

    assert await world.deliver(sender).execute() == 2

    assert sender.arrived == emitted


class SlowReceiver(ScriptedSender):
    """Each send takes the whole claim's lease (the clock moves on as it answers)."""

    def __init__(self, clock: FixedClock) -> None:
        super().__init__()
        self.clock = clock

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        self.clock.advance(timedelta(seconds=POLICY.lease_s))
        return await super().send(url, body, headers)


async def test_a_chain_that_outlives_its_lease_leaves_the_rest_to_a_later_round_in_order(world: World) -> None:
    webhook_id, _ = await world.create()
    conversation = new_id()
    for event_type in (WebhookEventType.HANDOFF_REQUESTED, WebhookEventType.MESSAGE_CREATED):
        await world.outbox.enqueue(OutboundEvent(new_id(), event_type, conversation, world.clock.now(), {}))
        world.clock.advance(timedelta(milliseconds=1))
    slow = SlowReceiver(world.clock)

    assert await world.deliver(slow).execute() == 2
    assert len(slow.sent) == 1  # the second would have run past the lease: another round could claim it meanwhile
    statuses = sorted(delivery.status.value for delivery in await world.deliveries(webhook_id))
    assert statuses == ["delivered", "pending"]

    world.clock.advance(timedelta(seconds=POLICY.lease_s))  # its claim lapses; the next round sends it
    assert await world.deliver(slow).execute() == 1
    assert len(slow.sent) == 2
    assert [delivery.status for delivery in await world.deliveries(webhook_id)] == [DeliveryStatus.DELIVERED] * 2


async def test_a_failed_delivery_redelivered_is_sent_again_with_a_fresh_retry_budget(world: World) -> None:
    webhook_id, secret = await world.create()
    event = await world.emit()
    failed = await world.fail_for_good(webhook_id)
    world.clock.advance(timedelta(hours=1))
    commits = world.uow.commits

    redelivered = await world.redeliver().execute(webhook_id, failed.id)

    assert world.uow.commits == commits + 1
    assert (redelivered.status, redelivered.next_attempt_at) == (DeliveryStatus.PENDING, world.clock.now())
    assert (redelivered.attempts, redelivered.last_status_code) == (3, 500)
    assert await world.deliveries(webhook_id) == [redelivered]
    # The redelivery fails too: it is retried like a new event's first attempt, not given up at once.
    world.sender.script(SendResult(503))
    assert await world.deliver().execute() == 1
    [retrying] = await world.deliveries(webhook_id)
    assert (retrying.status, retrying.attempts, retrying.last_error) == (DeliveryStatus.PENDING, 4, "HTTP 503")
    assert timedelta(seconds=5) <= retrying.next_attempt_at - world.clock.now() <= timedelta(seconds=10)
    world.clock.advance(timedelta(seconds=10))
    assert await world.deliver().execute() == 1
    [delivered] = await world.deliveries(webhook_id)
    assert (delivered.status, delivered.attempts, delivered.last_status_code) == (DeliveryStatus.DELIVERED, 5, 200)

    # The same event, body and id; signed anew with the time of its own attempt.
    first, *_, last = world.sender.sent
    assert last.body == first.body == encode_event(event)
    assert last.headers["Webhook-Id"] == str(event.id)
    assert last.headers["Webhook-Timestamp"] == str(int(world.clock.now().timestamp()))
    assert last.headers["Webhook-Timestamp"] != first.headers["Webhook-Timestamp"]
    assert verify_signature(secret, int(world.clock.now().timestamp()), last.body, last.headers["Webhook-Signature"])


async def test_a_delivered_delivery_can_be_redelivered(world: World) -> None:
    webhook_id, _ = await world.create()
    await world.emit()
    await world.deliver().execute()
    [delivered] = await world.deliveries(webhook_id)
    redelivered = await world.redeliver().execute(webhook_id, delivered.id)
    assert (redelivered.status, redelivered.delivered_at, redelivered.attempts) == (DeliveryStatus.PENDING, None, 1)
    assert await world.deliver().execute() == 1
    assert len(world.sender.sent) == 2
    [again] = await world.deliveries(webhook_id)
    assert (again.status, again.attempts) == (DeliveryStatus.DELIVERED, 2)


async def test_a_delivery_of_another_endpoint_or_none_is_not_found(world: World) -> None:
    webhook_id, _ = await world.create()
    other_id, _ = await world.create()
    await world.emit()
    [theirs] = await world.deliveries(other_id)
    commits = world.uow.commits
    for delivery_id in (theirs.id, new_id()):
        with pytest.raises(WebhookDeliveryNotFoundError) as raised:
            await world.redeliver().execute(webhook_id, delivery_id)
        assert raised.value.code == "webhook_delivery_not_found"
    assert world.uow.commits == commits
    assert await world.deliveries(other_id) == [theirs]


async def test_the_retention_sweep_deletes_finished_deliveries_past_the_retention_a_batch_at_a_time(
    world: World,
) -> None:
    webhook_id, _ = await world.create()
    start = world.clock.now()
    for _ in range(3):
        await world.emit()
    await world.deliver().execute()  # three delivered
    failed_event = await world.emit()
    await world.fail_for_good(webhook_id)
    retrying = await world.emit()
    world.sender.script(SendResult(500))
    await world.deliver().execute()  # pending, its retry due later
    [waiting] = [item for item in await world.deliveries(webhook_id) if item.event_id == retrying.id]
    world.clock.current = start + timedelta(days=30)
    assert await world.purge().execute() == 0  # no last attempt is older than 30 days yet

    world.clock.advance(timedelta(hours=1))
    commits = world.uow.commits
    assert await world.purge(batch_size=2).execute() == 2
    assert await world.purge(batch_size=2).execute() == 2
    assert await world.purge(batch_size=2).execute() == 0
    assert world.uow.commits == commits + 2
    # Pending deliveries stay, whatever their age, and so does the event they need.
    assert await world.deliveries(webhook_id) == [waiting]
    assert set(world.store.events) == {retrying.id}
    assert failed_event.id not in world.store.events


async def test_without_retention_nothing_is_deleted(world: World) -> None:
    webhook_id, _ = await world.create()
    await world.emit()
    await world.deliver().execute()
    world.clock.advance(timedelta(days=10_000))
    assert await world.purge(retention=None).execute() == 0
    assert len(await world.deliveries(webhook_id)) == 1


class _HeldSender:
    """A receiver that answers only when released: its deliveries stay in flight meanwhile."""

    def __init__(self, expected: int) -> None:
        self.release = asyncio.Event()
        self.all_sent = asyncio.Event()
        self._expected = expected
        self.sent = 0

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:  # noqa: ARG002
        self.sent += 1
        if self.sent >= self._expected:
            self.all_sent.set()
        await self.release.wait()
        return SendResult(200)


async def test_rounds_leave_out_an_endpoint_with_its_share_in_flight() -> None:
    # A dead receiver's backlog: every new round would claim another share of it and wait the timeout out.
    world = World()
    await world.create(WebhookEventType.HANDOFF_REQUESTED)
    for _ in range(3 * POLICY.per_endpoint):
        await world.emit(WebhookEventType.HANDOFF_REQUESTED)
    held = _HeldSender(expected=POLICY.per_endpoint)
    first = asyncio.create_task(world.deliver(held).execute())
    await asyncio.wait_for(held.all_sent.wait(), 5)

    # Its share is in flight: nothing more of it this round (a round that took more would wait on them too).
    assert await asyncio.wait_for(world.deliver(held).execute(), 5) == 0

    held.release.set()
    assert await first == POLICY.per_endpoint
    assert await world.deliver().execute() == POLICY.per_endpoint  # free again: the next share goes


def test_what_is_in_flight_is_counted_until_each_delivery_ends() -> None:
    in_flight = DeliveriesInFlight()
    endpoint, other = new_id(), new_id()
    with in_flight.sending([endpoint, endpoint, other]) as done:
        assert in_flight.busy(2) == {endpoint}
        done(endpoint)
        assert in_flight.busy(2) == frozenset()
        assert in_flight.busy(1) == {endpoint, other}
    assert in_flight.busy(1) == frozenset()  # whatever a round left unfinished is released with it
