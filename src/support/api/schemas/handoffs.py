"""Wire types of the handoff queue and the agent side."""

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec

from support.api.schemas.conversations import ConversationResource, DecisionResource, MessageResource
from support.application.handoffs import QueuedHandoff
from support.domain.conversations import ConversationStatus


class HandoffRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The customer asks for a person; ``reason`` is shown to the agent."""

    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class AgentMessageRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]


class AgentMessageResource(msgspec.Struct, frozen=True):
    """The stored agent message and the conversation after it (an agent replying to a waiting one claims it)."""

    message: MessageResource
    conversation: ConversationResource
    duplicate: bool


class HandoffResource(msgspec.Struct, frozen=True):
    """One conversation in the agents' queue."""

    conversation_id: UUID
    customer_id: UUID
    status: ConversationStatus
    reason_code: str | None
    decision: DecisionResource | None
    requested_at: datetime | None
    # Seconds waited for an agent: until now while pending, until the claim once claimed.
    wait_s: float
    summary: str
    agent_name: str | None
    claimed_at: datetime | None
    last_activity_at: datetime

    @classmethod
    def of(cls, queued: QueuedHandoff) -> "HandoffResource":
        conversation = queued.conversation
        decision = conversation.handoff
        return cls(
            conversation_id=conversation.id,
            customer_id=conversation.customer_id,
            status=conversation.status,
            reason_code=decision.reason_code.value if decision and decision.reason_code else None,
            decision=DecisionResource.of(decision),
            requested_at=conversation.handoff_requested_at,
            wait_s=round(queued.wait_s, 3),
            summary=queued.summary,
            agent_name=conversation.agent.name if conversation.agent else None,
            claimed_at=conversation.claimed_at,
            last_activity_at=conversation.last_activity_at,
        )


class HandoffList(msgspec.Struct, frozen=True):
    items: list[HandoffResource]
    next_cursor: str | None
