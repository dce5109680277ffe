"""A webhook outbox that records what use cases enqueue (application tests)."""

from dataclasses import dataclass, field

from support.domain.webhooks import OutboundEvent, WebhookEventType


@dataclass
class RecordingOutbox:
    """Implements the ``WebhookOutbox`` port; events are kept in order (commit is not modelled)."""

    events: list[OutboundEvent] = field(default_factory=list)

    async def enqueue(self, event: OutboundEvent) -> None:
        self.events.append(event)

    def of_type(self, kind: WebhookEventType) -> list[OutboundEvent]:
        return [event for event in self.events if event.type is kind]
