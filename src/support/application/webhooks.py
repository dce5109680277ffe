"""Use cases for webhooks: endpoints, their delivery history and redeliveries (admin), and the worker's steps."""

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from support.domain.errors import InvalidInputError
from support.domain.ids import new_id
from support.domain.webhooks import (
    MAX_WEBHOOK_DESCRIPTION_LENGTH,
    RetrySchedule,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryNotFoundError,
    WebhookEventType,
    WebhookNotFoundError,
    delivery_headers,
    encode_event,
    generate_webhook_secret,
    validate_webhook_url,
    webhook_secret_hint,
)
from support.ports.system import Clock, UnitOfWork
from support.ports.webhooks import (
    DeliveryPage,
    DueDelivery,
    SendResult,
    WebhookDeliveryQueue,
    WebhookPage,
    WebhookRepository,
    WebhookSender,
)

_logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class IssuedWebhook:
    """A newly created endpoint together with its signing secret, which is never shown again."""

    webhook: Webhook
    secret: str


@dataclass(frozen=True, slots=True)
class WebhookDeliveryPolicy:
    """How the worker delivers: retries, how many deliveries per round, how long a claim is held."""

    schedule: RetrySchedule
    batch_size: int
    # Of a round's deliveries, at most this many go to one endpoint.
    per_endpoint: int
    # Longer than a send may take (the sender's timeout): a claim held past it is taken to be a dead worker's.
    lease_s: float


class DeliveriesInFlight:
    """The deliveries this process is sending, per endpoint; one instance per process, shared by its rounds.

    A round lasts as long as its slowest send, and rounds overlap: without this, each new round would claim another
    share of a dead receiver's backlog until every round in flight waited on it.
    """

    def __init__(self) -> None:
        self._sending: Counter[UUID] = Counter()

    def busy(self, per_endpoint: int) -> frozenset[UUID]:
        """Endpoints with ``per_endpoint`` or more deliveries in flight: the next claim leaves them out."""
        return frozenset(webhook for webhook, count in self._sending.items() if count >= per_endpoint)

    @contextlib.contextmanager
    def sending(self, webhook_ids: Sequence[UUID]) -> Iterator[Callable[[UUID], None]]:
        """Count ``webhook_ids`` (one per claimed delivery) in flight; call the yielded function as each ends."""
        self._sending.update(webhook_ids)
        left = Counter(webhook_ids)

        def done(webhook_id: UUID) -> None:
            if left[webhook_id] > 0:
                left[webhook_id] -= 1
                self._release(webhook_id, 1)

        try:
            yield done
        finally:
            for webhook_id, count in left.items():
                self._release(webhook_id, count)

    def _release(self, webhook_id: UUID, count: int) -> None:
        self._sending[webhook_id] -= count
        if self._sending[webhook_id] <= 0:
            del self._sending[webhook_id]


@dataclass(frozen=True, slots=True)
class WebhookRetentionPolicy:
    """How long finished deliveries are kept, and how many one step of the sweep deletes.

    ``retention``: delivered and failed deliveries whose last attempt is older are deleted; None keeps them forever.
    ``batch_size`` bounds each step's transaction, so a large backlog never holds locks for long.
    """

    retention: timedelta | None
    batch_size: int


@dataclass(frozen=True, slots=True)
class WebhookTargetPolicy:
    """Which endpoints may be registered.

    ``allow_private``: loopback, private, link-local and other non-public addresses too (development, a receiver
    on the same machine). Off in production, so that an admin key cannot point signed requests at the service's
    own network (the cloud metadata service, databases, admin ports).
    """

    allow_private: bool


class CreateWebhook:
    """Register an endpoint for some event types; its signing secret is returned once."""

    def __init__(
        self, webhooks: WebhookRepository, uow: UnitOfWork, clock: Clock, targets: WebhookTargetPolicy
    ) -> None:
        self._webhooks = webhooks
        self._uow = uow
        self._clock = clock
        self._targets = targets

    async def execute(self, url: str, event_types: Iterable[WebhookEventType], description: str = "") -> IssuedWebhook:
        """Create and commit the endpoint; return it with its one-time secret.

        Raises:
            InvalidWebhookUrlError: the URL is not an absolute http(s) URL, or (unless the policy allows private
                targets) its host is ``localhost`` or an address that is not public.
            InvalidInputError: no event type, or the description is too long.
        """
        url = validate_webhook_url(url, allow_private_targets=self._targets.allow_private)
        wanted = set(event_types)
        if not wanted:
            raise InvalidInputError("A webhook subscribes to at least one event type.")
        description = description.strip()
        if len(description) > MAX_WEBHOOK_DESCRIPTION_LENGTH:
            raise InvalidInputError(f"A description has at most {MAX_WEBHOOK_DESCRIPTION_LENGTH} characters.")
        secret = generate_webhook_secret()
        webhook = Webhook(
            id=new_id(),
            url=url,
            description=description,
            # Declaration order, so equal subscriptions look the same however they were asked for.
            event_types=tuple(event_type for event_type in WebhookEventType if event_type in wanted),
            secret_hint=webhook_secret_hint(secret),
            active=True,
            created_at=self._clock.now(),
        )
        await self._webhooks.add(webhook, secret)
        await self._uow.commit()
        return IssuedWebhook(webhook=webhook, secret=secret)


class ListWebhooks:
    """List the endpoints, newest first, a page at a time (secrets are never listed)."""

    def __init__(self, webhooks: WebhookRepository) -> None:
        self._webhooks = webhooks

    async def execute(self, *, limit: int = 50, cursor: str | None = None) -> WebhookPage:
        """Return one page.

        Raises:
            InvalidInputError: the cursor is not valid.
        """
        return await self._webhooks.list_webhooks(limit=min(max(limit, 1), MAX_PAGE_SIZE), cursor=cursor)


class GetWebhook:
    """Read one endpoint."""

    def __init__(self, webhooks: WebhookRepository) -> None:
        self._webhooks = webhooks

    async def execute(self, webhook_id: UUID) -> Webhook:
        """Return the endpoint.

        Raises:
            WebhookNotFoundError: no endpoint has this id.
        """
        webhook = await self._webhooks.get(webhook_id)
        if webhook is None:
            raise WebhookNotFoundError
        return webhook


class DeleteWebhook:
    """Delete an endpoint: nothing more is sent to it, pending deliveries included, and its history goes too."""

    def __init__(self, webhooks: WebhookRepository, uow: UnitOfWork) -> None:
        self._webhooks = webhooks
        self._uow = uow

    async def execute(self, webhook_id: UUID) -> None:
        """Delete and commit.

        Raises:
            WebhookNotFoundError: no endpoint has this id.
        """
        if not await self._webhooks.delete(webhook_id):
            raise WebhookNotFoundError
        await self._uow.commit()


class ListWebhookDeliveries:
    """An endpoint's deliveries, newest first: status, attempts, the last answer or error."""

    def __init__(self, webhooks: WebhookRepository) -> None:
        self._webhooks = webhooks

    async def execute(self, webhook_id: UUID, *, limit: int = 50, cursor: str | None = None) -> DeliveryPage:
        """Return one page.

        Raises:
            WebhookNotFoundError: no endpoint has this id.
            InvalidInputError: the cursor is not valid.
        """
        if await self._webhooks.get(webhook_id) is None:
            raise WebhookNotFoundError
        return await self._webhooks.list_deliveries(webhook_id, limit=min(max(limit, 1), MAX_PAGE_SIZE), cursor=cursor)


class RedeliverWebhookDelivery:
    """Put one delivery back in the queue, whatever its status, to be sent when the worker next runs.

    For a receiver that lost a delivered event, or one fixed after its deliveries failed. The event is sent as it
    was (same id and body, so receivers deduplicate it), signed with a fresh timestamp like every attempt. The
    delivery gets a fresh retry budget; ``attempts`` keeps counting every attempt.
    """

    def __init__(self, webhooks: WebhookRepository, queue: WebhookDeliveryQueue, uow: UnitOfWork, clock: Clock) -> None:
        self._webhooks = webhooks
        self._queue = queue
        self._uow = uow
        self._clock = clock

    async def execute(self, webhook_id: UUID, delivery_id: UUID) -> WebhookDelivery:
        """Requeue and commit; return the delivery as the deliveries listing now shows it (pending, due now).

        Raises:
            WebhookNotFoundError: no endpoint has this id.
            WebhookDeliveryNotFoundError: the endpoint has no delivery with this id (another's included).
        """
        if await self._webhooks.get(webhook_id) is None:
            raise WebhookNotFoundError
        delivery = await self._queue.requeue(webhook_id, delivery_id, now=self._clock.now())
        if delivery is None:
            raise WebhookDeliveryNotFoundError
        await self._uow.commit()
        return delivery


class PurgeWebhookDeliveries:
    """One step of the retention sweep: delete a batch of finished deliveries older than the retention period.

    Delivered and failed deliveries go once their last attempt is older than the retention, with the events no
    delivery needs any more; pending ones stay, however old. The worker calls it every few minutes, and again
    after each full batch until one comes back short.
    """

    def __init__(
        self, webhooks: WebhookRepository, uow: UnitOfWork, clock: Clock, policy: WebhookRetentionPolicy
    ) -> None:
        self._webhooks = webhooks
        self._uow = uow
        self._clock = clock
        self._policy = policy

    async def execute(self) -> int:
        """Delete and commit one batch; return how many deliveries were deleted (0 when retention is off)."""
        if self._policy.retention is None:
            return 0
        deleted = await self._webhooks.delete_finished_deliveries(
            before=self._clock.now() - self._policy.retention, limit=self._policy.batch_size
        )
        if deleted:
            await self._uow.commit()
        return deleted


# A delivery's result, None when it was left unsent for its claim to lapse, or what a send raised.
_Outcome = tuple[WebhookDelivery, SendResult | None] | BaseException


def _chains(claimed: Sequence[DueDelivery]) -> list[list[DueDelivery]]:
    """The claimed deliveries by endpoint and conversation, oldest event first.

    One conversation's events go to one endpoint one after the other, so a receiver whose first attempts succeed
    sees them in order (handoff.requested before the message written while waiting); other conversations and
    endpoints go at the same time. Sent all at once, 36 of 157 arrived out of order (found by an exploratory test).
    """
    chains: dict[tuple[UUID, UUID], list[DueDelivery]] = {}
    for due in sorted(claimed, key=lambda item: (item.event.occurred_at, item.event.id)):
        chains.setdefault((due.delivery.webhook_id, due.event.conversation_id or due.event.id), []).append(due)
    return list(chains.values())


class DeliverWebhooks:
    """One round of the delivery worker: claim due deliveries, POST each signed, record every outcome.

    The claim commits before anything is sent and each outcome commits as soon as it is known, so no transaction
    stays open while an endpoint answers. A worker that dies in between leaves its claims leased; they are sent
    again when the lease runs out. Delivery is therefore at least once: receivers deduplicate by event id.
    """

    def __init__(
        self,
        queue: WebhookDeliveryQueue,
        sender: WebhookSender,
        uow: UnitOfWork,
        clock: Clock,
        policy: WebhookDeliveryPolicy,
        in_flight: DeliveriesInFlight,
    ) -> None:
        self._queue = queue
        self._sender = sender
        self._uow = uow
        self._clock = clock
        self._policy = policy
        self._in_flight = in_flight

    async def execute(self) -> int:
        """Deliver one batch; return how many deliveries were attempted."""
        now = self._clock.now()
        per_endpoint = self._policy.per_endpoint
        claimed = await self._queue.claim_due(
            now=now,
            limit=self._policy.batch_size,
            per_endpoint=per_endpoint,
            lease_until=now + timedelta(seconds=self._policy.lease_s),
            busy=self._in_flight.busy(per_endpoint),
        )
        if not claimed:
            return 0
        outcomes: asyncio.Queue[_Outcome] = asyncio.Queue()
        # A chain is sent one after the other, so a slow receiver could keep it past the claim's lease, when another
        # round (here or in another process) would claim its rest and send it twice, out of order (found by a
        # review). Past half the lease the rest of a chain is not sent: its claims lapse and a later round sends
        # them, still oldest first.
        stop_at = now + timedelta(seconds=self._policy.lease_s / 2)
        with self._in_flight.sending([due.delivery.webhook_id for due in claimed]) as done:
            await self._uow.commit()
            senders = [asyncio.create_task(self._send_in_order(chain, outcomes, stop_at)) for chain in _chains(claimed)]
            try:
                # One session serves the round, so outcomes are saved one after the other, as they arrive.
                for _ in claimed:
                    outcome = await outcomes.get()
                    if isinstance(outcome, BaseException):
                        raise outcome
                    delivery, result = outcome
                    done(delivery.webhook_id)
                    if result is not None:  # None: left for its lease to lapse (above)
                        await self._queue.save(self._outcome(delivery, result))
                        await self._uow.commit()
            finally:
                for sender in senders:
                    sender.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
        return len(claimed)

    async def _send_in_order(
        self, chain: Sequence[DueDelivery], outcomes: "asyncio.Queue[_Outcome]", stop_at: datetime
    ) -> None:
        for index, due in enumerate(chain):
            if index and self._clock.now() >= stop_at:
                for left in chain[index:]:
                    await outcomes.put((left.delivery, None))
                return
            try:
                outcome: _Outcome = await self._attempt(due)
            except Exception as error:  # noqa: BLE001 - handed to the round, which raises it
                outcome = error
            await outcomes.put(outcome)
            if isinstance(outcome, BaseException):
                return

    async def _attempt(self, due: DueDelivery) -> tuple[WebhookDelivery, SendResult]:
        body = encode_event(due.event)
        timestamp = int(self._clock.now().timestamp())
        headers = delivery_headers(due.event.id, due.secret, timestamp, body)
        return due.delivery, await self._sender.send(due.url, body, headers)

    def _outcome(self, delivery: WebhookDelivery, result: SendResult) -> WebhookDelivery:
        now = self._clock.now()
        if result.ok and result.status_code is not None:
            return delivery.succeeded(result.status_code, now)
        error = result.error or f"HTTP {result.status_code}"
        jitter = random.random()  # noqa: S311 - spreads retries; nothing secret depends on it
        outcome = delivery.failed(result.status_code, error, now, self._policy.schedule, jitter)
        if outcome.status is delivery.status:
            _logger.info("webhook delivery %s attempt %d failed: %s", delivery.id, delivery.attempts, error)
        else:
            _logger.warning("webhook delivery %s failed for good after %d attempts", delivery.id, delivery.attempts)
        return outcome
