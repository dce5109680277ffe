"""Ports for webhooks: the outbox use cases write events to, endpoints, the delivery queue, the HTTP sender."""

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from support.domain.webhooks import OutboundEvent, Webhook, WebhookDelivery


class WebhookOutbox(Protocol):
    """Events written in the same unit of work as the change they describe, delivered later by a worker.

    Because the event commits (or rolls back) with the change, no event is lost when the process dies between
    the commit and the delivery, and none is sent for a change that did not happen.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def enqueue(self, event: OutboundEvent) -> None:
        """Record ``event`` for every active endpoint subscribed to its type (nothing when none is).

        Enqueueing an event id that is already recorded changes nothing, so a retried use case sends it once.
        """
        ...


@dataclass(frozen=True, slots=True)
class WebhookPage:
    """One page of endpoints, newest first, and the cursor of the next (None on the last)."""

    items: list[Webhook]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """One page of an endpoint's deliveries, newest first, and the cursor of the next (None on the last)."""

    items: list[WebhookDelivery]
    next_cursor: str | None


class WebhookRepository(Protocol):
    """Webhook endpoints, their signing secrets and the history of their deliveries.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def add(self, webhook: Webhook, secret: str) -> None:
        """Store a new endpoint with the secret its deliveries are signed with."""
        ...

    async def get(self, webhook_id: UUID) -> Webhook | None:
        """The endpoint with this id."""
        ...

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> WebhookPage:
        """Endpoints, newest first (by creation time, then id).

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def delete(self, webhook_id: UUID) -> bool:
        """Delete the endpoint and its deliveries (pending ones are not sent); False when there was none."""
        ...

    async def list_deliveries(self, webhook_id: UUID, *, limit: int, cursor: str | None) -> DeliveryPage:
        """The endpoint's deliveries, newest first.

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def delete_finished_deliveries(self, *, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` delivered or failed deliveries whose last attempt began before ``before``.

        The oldest go first, and events no delivery refers to any more after that go with them. Pending deliveries
        (a redelivered one included) are never deleted. Return how many deliveries were deleted: fewer than
        ``limit`` means none was left to delete. Concurrent calls skip each other's deliveries instead of waiting
        for them (they wait only for an event both touch), and an event is deleted even when they split its last
        deliveries.
        """
        ...


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A claimed delivery with what it takes to send it."""

    delivery: WebhookDelivery
    event: OutboundEvent
    url: str
    secret: str


class WebhookDeliveryQueue(Protocol):
    """Pending deliveries, claimed by workers in any number of processes, and put back by redeliveries.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def claim_due(
        self,
        *,
        now: datetime,
        limit: int,
        per_endpoint: int,
        lease_until: datetime,
        busy: Collection[UUID] = (),
    ) -> list[DueDelivery]:
        """Claim up to ``limit`` pending deliveries to active endpoints that are due at ``now``, earliest first.

        At most ``per_endpoint`` of them go to one endpoint, and none to the endpoints in ``busy`` (those with
        their share in flight already), so the backlog of a slow or dead receiver cannot fill the claim while
        other endpoints' deliveries wait.

        Each claimed delivery counts an attempt (``attempts + 1``, ``last_attempt_at = now``) and is leased until
        ``lease_until`` (its ``next_attempt_at``): no other claim returns it before then, and if the worker dies
        before saving an outcome, it is claimed again once the lease runs out. Concurrent claims never return the
        same delivery. The claim is durable once the unit of work commits.
        """
        ...

    async def save(self, delivery: WebhookDelivery) -> None:
        """Record the outcome of an attempt: status, next attempt, last status code and error, delivery time.

        A delivery already recorded as delivered stays delivered (a late report of a slower attempt loses), and the
        outcome of an attempt claimed before the delivery was redelivered is ignored (the redelivery wins).
        """
        ...

    async def requeue(self, webhook_id: UUID, delivery_id: UUID, *, now: datetime) -> WebhookDelivery | None:
        """Put the endpoint's delivery back in the queue, whatever its status (:meth:`WebhookDelivery.redelivered`).

        It is due at ``now`` (the next claim may take it, even while an earlier attempt is still in flight) and its
        retry budget starts again; ``attempts`` keeps counting. Return the delivery as it now is, or None when the
        endpoint has no delivery with this id.
        """
        ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the endpoint answered: a status code, or an error when there was no answer."""

    status_code: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer: the endpoint accepted the event."""
        return self.status_code is not None and 200 <= self.status_code < 300  # noqa: PLR2004


class WebhookSender(Protocol):
    """POSTs a delivery to an endpoint within a time limit."""

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        """POST ``body`` with ``headers``; refused connections, timeouts and non-2xx answers are results, not errors."""
        ...
