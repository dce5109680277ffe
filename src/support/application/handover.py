"""Handing a conversation to the human queue, shared by the turn (policy decisions) and the handoff use cases."""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from support.application.services import ServicesOpener
from support.domain.conversations import Conversation, HandoffDecision, Message
from support.domain.escalation import BusinessHours, estimate_wait, handoff_notice
from support.domain.feed import FeedPayload
from support.domain.ids import new_id
from support.domain.privacy import redact
from support.domain.webhooks import OutboundEvent, WebhookEventType, event_time
from support.ports.assistant import Summarizer
from support.ports.conversations import ConversationRepository, EventBus, FeedErasedError, SessionStore
from support.ports.errors import CacheUnavailableError, DependencyUnavailableError
from support.ports.webhooks import WebhookOutbox

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HandoffSettings:
    """Agents' hours and pace, and how long a handoff may wait for an agent."""

    hours: BusinessHours = field(default_factory=BusinessHours)
    minutes_per_conversation: float = 5.0
    # No agent within this much of agents' working time (from the request, or the next opening) → back to the bot.
    max_wait_s: float = 30 * 60


def message_event(message: Message) -> OutboundEvent:
    """The ``message.created`` webhook event of an agent-visible message."""
    return OutboundEvent(
        id=new_id(),
        type=WebhookEventType.MESSAGE_CREATED,
        conversation_id=message.conversation_id,
        occurred_at=message.created_at,
        data={
            "message": {
                "id": str(message.id),
                "role": message.role.value,
                "content": message.content,
                "author": message.author,
                "created_at": event_time(message.created_at),
            }
        },
    )


def status_event(kind: WebhookEventType, conversation: Conversation, **extra: object) -> OutboundEvent:
    """A webhook event about the conversation's ownership or state (requested, claimed, expired, resolved, closed)."""
    decision = conversation.handoff
    return OutboundEvent(
        id=new_id(),
        type=kind,
        conversation_id=conversation.id,
        occurred_at=conversation.updated_at,
        data={
            "conversation_id": str(conversation.id),
            "customer_id": str(conversation.customer_id),
            "status": conversation.status.value,
            "reason_code": decision.reason_code.value if decision and decision.reason_code else None,
            "rule": decision.rule if decision else None,
            "evidence": decision.evidence if decision else None,
            "requested_at": event_time(conversation.handoff_requested_at)
            if conversation.handoff_requested_at
            else None,
            "agent": conversation.agent.name if conversation.agent else None,
            **extra,
        },
    )


async def hand_over(
    conversation: Conversation,
    decision: HandoffDecision,
    now: datetime,
    *,
    conversations: ConversationRepository,
    outbox: WebhookOutbox,
    settings: HandoffSettings,
) -> tuple[Conversation, str]:
    """Move a locked conversation to the human queue and write the webhook event.

    Storing the changed conversation and committing are the caller's (with the message that tells the customer).

    Returns the changed conversation and the notice for the customer (who takes over, and when).
    """
    ahead = await conversations.count_waiting(requested_before=now)
    estimate = estimate_wait(
        now,
        queue_ahead=ahead,
        hours=settings.hours,
        minutes_per_conversation=settings.minutes_per_conversation,
        max_wait_minutes=settings.max_wait_s / 60,
    )
    changed = conversation.request_handoff(decision, now)
    await outbox.enqueue(
        status_event(
            WebhookEventType.HANDOFF_REQUESTED,
            changed,
            queue_position=ahead + 1,
            expected_at=event_time(estimate.expected_at),
        )
    )
    return changed, handoff_notice(estimate, settings.hours)


async def announce(
    bus: EventBus, sessions: SessionStore, conversation_id: UUID, payloads: Sequence[FeedPayload]
) -> None:
    """Publish committed changes to every feed; cached session state is dropped and rebuilt from the truth."""
    try:
        await bus.publish(conversation_id, payloads)
        await sessions.drop(conversation_id)
    except FeedErasedError:
        # Its customer was erased since the change was committed: the feed stays gone, nothing to announce.
        _logger.info("changes to %s not announced: the conversation was erased", conversation_id)
    except CacheUnavailableError:
        _logger.warning("changes to %s not announced: Valkey is unavailable", conversation_id)


class HandoffSummaries:
    """Writes the agent's summary of each handoff in the background (a model call must not delay the handoff).

    When the model fails, the extractive summary is stored instead, so every queued conversation gets one.
    """

    def __init__(
        self, open_services: ServicesOpener, summarizer: Summarizer, fallback: Summarizer, recent: int = 40
    ) -> None:
        self._open = open_services
        self._summarizer = summarizer
        self._fallback = fallback
        self._recent = recent
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, conversation: Conversation) -> None:
        """Summarize ``conversation``'s current handoff."""
        if conversation.handoff_requested_at is None:
            return
        task = asyncio.create_task(
            self._write(conversation.id, conversation.handoff_requested_at, conversation.handoff)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def summarize(self, messages: Sequence[Message], reason: HandoffDecision | None) -> str:
        """The model's summary, or the extractive one when the model fails; of redacted text, either way.

        The summary is shown in the agents' queue and the model is another party: neither gets a card number or a
        one-time code the customer typed (the transcript itself keeps them, docs/memory.md).
        """
        messages = [replace(message, content=redact(message.content)) for message in messages]
        if reason is not None and reason.evidence:
            reason = replace(reason, evidence=redact(reason.evidence))
        try:
            summary = await self._summarizer.summarize(messages, reason=reason)
        except DependencyUnavailableError as error:
            _logger.warning("handoff summary by the model failed, using the extractive one: %s", error)
            summary = await self._fallback.summarize(messages, reason=reason)
        return redact(summary)

    async def drain(self) -> None:
        """Wait for the summaries being written (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop writing summaries (the queue falls back to extractive ones on read)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _write(self, conversation_id: UUID, requested_at: datetime, reason: HandoffDecision | None) -> None:
        try:
            async with self._open() as services:
                messages = await services.conversations.recent_messages(conversation_id, self._recent)
            summary = await self.summarize(messages, reason)
            async with self._open() as services:
                await services.conversations.save_handoff_summary(
                    conversation_id, requested_at=requested_at, summary=summary
                )
                await services.uow.commit()
        except Exception:
            _logger.exception("the summary of the handoff in %s was not stored", conversation_id)
