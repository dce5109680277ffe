"""Events the service tells the company's systems about, through signed webhooks."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID


class WebhookEventType(StrEnum):
    """What a webhook endpoint can subscribe to."""

    HANDOFF_REQUESTED = "handoff.requested"
    HANDOFF_CLAIMED = "handoff.claimed"
    CONVERSATION_RESOLVED = "conversation.resolved"
    # Messages an agent should see: the customer's, an agent's, system notices (not every reply delta).
    MESSAGE_CREATED = "message.created"


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """One event to deliver; ``id`` is stable across retries, so receivers deduplicate by it."""

    id: UUID
    type: WebhookEventType
    conversation_id: UUID | None
    occurred_at: datetime
    # JSON-ready data (strings, numbers, booleans, None, lists and mappings of them).
    data: Mapping[str, object] = field(default_factory=dict)
