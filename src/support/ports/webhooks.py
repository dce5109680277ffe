"""Ports for webhooks: the outbox that use cases write events to in their own transaction."""

from typing import Protocol

from support.domain.webhooks import OutboundEvent


class WebhookOutbox(Protocol):
    """Events written in the same unit of work as the change they describe, delivered later by a worker.

    Because the event commits (or rolls back) with the change, no event is lost when the process dies between
    the commit and the delivery, and none is sent for a change that did not happen.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def enqueue(self, event: OutboundEvent) -> None:
        """Record ``event`` for every active endpoint subscribed to its type (nothing when none is)."""
        ...
