"""Human handoff: the queue, ownership changes (claim, release, resolve, withdraw), agent replies, summaries.

Every ownership change takes the conversation's row lock, goes through the domain state machine (an illegal
change is a 409), records a customer-visible system notice, writes its webhook event to the outbox in the same
transaction, and is announced on the conversation's feed after the commit, so every process's subscribers see
it at once.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from support.application.conversations import (
    MAX_PAGE_SIZE,
    ConversationLimits,
    checked_message,
    ensure_customer_side,
    ensure_readable,
)
from support.application.handover import (
    HandoffSettings,
    HandoffSummaries,
    announce,
    hand_over,
    message_event,
    status_event,
)
from support.domain.conversations import (
    AgentRef,
    ClaimedByAnotherAgentError,
    Conversation,
    ConversationClosedError,
    ConversationEvent,
    ConversationStatus,
    HandoffAction,
    HandoffDecision,
    InvalidTransitionError,
    Message,
    MessageRole,
    NotClaimedError,
    ReasonCode,
)
from support.domain.errors import InvalidInputError, PermissionDeniedError
from support.domain.feed import FeedPayload, HandoffChanged, MessagePosted
from support.domain.identity import Principal, Role
from support.domain.ids import new_id
from support.domain.webhooks import OutboundEvent, WebhookEventType
from support.ports.conversations import ConversationRepository, EventBus, SessionStore
from support.ports.system import Clock, UnitOfWork
from support.ports.webhooks import WebhookOutbox

_logger = logging.getLogger(__name__)

CLAIM_NOTICE = "{agent} from our support team has joined the conversation."
# The configured bootstrap admin has no name of a person: customers read "bootstrap admin from our support team".
ANONYMOUS_CLAIM_NOTICE = "A member of our support team has joined the conversation."
RELEASE_NOTICE = "You're back with our virtual assistant. Ask anything, or ask for a person again at any time."
WITHDRAW_NOTICE = "OK, I've cancelled the request for a person; you're back with our virtual assistant."
EXPIRED_NOTICE = (
    "I'm sorry: nobody from our team could take this conversation in time. I'm back to help in the meantime; "
    "ask for a person again whenever you like."
)
REQUEUED_NOTICE = (
    "{agent} is no longer available, so your conversation is back in the queue: the next person from our support "
    "team will pick it up here."
)
RESOLVED_NOTICE = "This conversation is marked as resolved. If you need anything else, just write here."
AGENT_ROLES = frozenset({Role.AGENT, Role.ADMIN})


def claim_notice(principal: Principal) -> str:
    """What the customer reads when a person takes the conversation: the agent key's name, if it names one."""
    return ANONYMOUS_CLAIM_NOTICE if principal.is_bootstrap else CLAIM_NOTICE.format(agent=principal.name)


def ensure_agent(principal: Principal) -> None:
    """Only agents (and admins) act on the agent side."""
    if principal.role not in AGENT_ROLES:
        raise PermissionDeniedError("Only agents act on the agent side of a conversation.")


def _agent(principal: Principal) -> AgentRef:
    return AgentRef(principal.key_id, principal.name)


def _owns(principal: Principal, conversation: Conversation) -> bool:
    agent = conversation.agent
    if agent is None:
        return False
    return agent.id == principal.key_id and (agent.id is not None or agent.name == principal.name)


def may_write_as_agent(principal: Principal, conversation: Conversation) -> bool:
    """Whether ``SendAgentMessage`` would take this agent's message now.

    A waiting conversation (replying claims it), or one the agent has claimed (admins: any claimed one).
    """
    if conversation.status is ConversationStatus.PENDING_HUMAN:
        return True
    return conversation.status is ConversationStatus.HUMAN and (
        _owns(principal, conversation) or principal.role is Role.ADMIN
    )


def _ensure_may_act_for_owner(principal: Principal, conversation: Conversation) -> None:
    """A conversation a person owns is acted on by that agent only (admins may act on any)."""
    if (
        conversation.status is ConversationStatus.HUMAN
        and not _owns(principal, conversation)
        and principal.role is not Role.ADMIN
    ):
        raise ClaimedByAnotherAgentError


def _system_notice(
    conversation: Conversation, text: str, now: datetime, decision: HandoffDecision | None = None
) -> Message:
    return Message(
        id=new_id(),
        conversation_id=conversation.id,
        role=MessageRole.SYSTEM,
        content=text,
        created_at=now,
        decision=decision,
    )


@dataclass(frozen=True, slots=True)
class QueuedHandoff:
    """One entry of the agents' queue."""

    conversation: Conversation
    wait_s: float
    summary: str


@dataclass(frozen=True, slots=True)
class HandoffQueuePage:
    """One page of the queue and the cursor of the next (None on the last)."""

    items: list[QueuedHandoff]
    next_cursor: str | None


class ListHandoffs:
    """The agents' queue: waiting and claimed conversations, oldest request first, with wait and summary."""

    def __init__(self, conversations: ConversationRepository, clock: Clock, summaries: HandoffSummaries) -> None:
        self._conversations = conversations
        self._clock = clock
        self._summaries = summaries

    async def execute(
        self,
        principal: Principal,
        *,
        status: ConversationStatus | None = None,
        mine: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> HandoffQueuePage:
        """Return one page; with ``mine``, only the conversations the caller has claimed (an agent's own queue).

        Raises:
            PermissionDeniedError: the caller is not an agent.
            InvalidInputError: the status is not a queue status, or the cursor is not valid.
        """
        ensure_agent(principal)
        queue_statuses = (ConversationStatus.PENDING_HUMAN, ConversationStatus.HUMAN)
        if status is not None and status not in queue_statuses:
            raise InvalidInputError("The queue holds conversations in status pending_human or human.")
        page = await self._conversations.handoff_queue(
            statuses=(status,) if status else queue_statuses,
            limit=min(max(limit, 1), MAX_PAGE_SIZE),
            cursor=cursor,
            claimed_by=_agent(principal) if mine else None,
        )
        now = self._clock.now()
        items: list[QueuedHandoff] = []
        for conversation in page.items:
            requested = conversation.handoff_requested_at or conversation.updated_at
            until = conversation.claimed_at if conversation.status is ConversationStatus.HUMAN else None
            summary = conversation.handoff_summary
            if summary is None:
                # Written in the background; until then (or if it failed) the extractive one is made on read.
                recent = await self._conversations.recent_messages(conversation.id, 40)
                summary = await self._summaries.summarize(recent, conversation.handoff)
            wait = ((until or now) - requested).total_seconds()
            items.append(QueuedHandoff(conversation, max(wait, 0.0), summary))
        return HandoffQueuePage(items, page.next_cursor)


class _OwnershipChange:
    """What the ownership use cases share: lock, change, notice, outbox, commit, announce."""

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        bus: EventBus,
        sessions: SessionStore,
        outbox: WebhookOutbox,
    ) -> None:
        self._conversations = conversations
        self._uow = uow
        self._clock = clock
        self._bus = bus
        self._sessions = sessions
        self._outbox = outbox

    async def _locked(self, principal: Principal, conversation_id: UUID) -> Conversation:
        return ensure_readable(principal, await self._conversations.get(conversation_id, for_update=True))

    async def _commit(
        self,
        before: Conversation,
        after: Conversation,
        notice: Message | None,
        events: Sequence[OutboundEvent] = (),
        posted: Sequence[Message] = (),
        *,
        stored: bool = False,
    ) -> Conversation:
        """Store the change (and the notice, unless ``stored``), write the events, commit, announce."""
        await self._conversations.update(after)
        if notice is not None:
            if not stored:
                await self._conversations.add_message(notice)
            # Webhook order follows the transcript: the status change, its notice, then other messages.
            about_status = [event for event in events if event.type is not WebhookEventType.MESSAGE_CREATED]
            messages = [event for event in events if event.type is WebhookEventType.MESSAGE_CREATED]
            events = [*about_status, message_event(notice), *messages]
        for event in events:
            await self._outbox.enqueue(event)
        await self._uow.commit()
        payloads: list[FeedPayload] = []
        if after.status is not before.status:
            payloads.append(HandoffChanged(after.status, after.handoff.reason_code if after.handoff else None))
        if notice is not None:
            payloads.append(MessagePosted(notice))
        payloads.extend(MessagePosted(message) for message in posted)
        await announce(self._bus, self._sessions, after.id, payloads)
        return after


class RequestHandoff(_OwnershipChange):
    """The customer asks for a person (``POST /handoff``): the bot stops and the conversation joins the queue."""

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        bus: EventBus,
        sessions: SessionStore,
        outbox: WebhookOutbox,
        settings: HandoffSettings,
        summaries: HandoffSummaries,
    ) -> None:
        super().__init__(conversations, uow, clock, bus, sessions, outbox)
        self._settings = settings
        self._summaries = summaries

    async def execute(self, principal: Principal, conversation_id: UUID, reason: str | None = None) -> Conversation:
        """Queue the conversation; asking again while it is queued or owned by a person changes nothing.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
            ConversationClosedError: it is closed.
        """
        conversation = ensure_customer_side(principal, await self._conversations.get(conversation_id, for_update=True))
        if conversation.status in {ConversationStatus.PENDING_HUMAN, ConversationStatus.HUMAN}:
            await self._uow.rollback()
            return conversation
        now = self._clock.now()
        # A resolved conversation is reopened first, as a message would reopen it (a widget's "talk to a person"
        # button stays on after a resolution; it answered 409 until 12-07).
        reopened = (
            conversation.apply(ConversationEvent.CUSTOMER_WRITES, now)
            if conversation.status is ConversationStatus.RESOLVED
            else conversation
        )
        evidence = (reason or "").strip()[:500] or None
        decision = HandoffDecision(
            HandoffAction.ESCALATE, ReasonCode.CUSTOMER_REQUEST, evidence, "customer_request.endpoint"
        )
        changed, text = await hand_over(
            reopened,
            decision,
            now,
            conversations=self._conversations,
            outbox=self._outbox,
            settings=self._settings,
        )
        result = await self._commit(conversation, changed, _system_notice(changed, text, now, decision))
        self._summaries.schedule(result)
        return result


class WithdrawHandoff(_OwnershipChange):
    """The customer no longer wants a person while waiting: back to the bot."""

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """Withdraw the request.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
            InvalidTransitionError: it is not waiting for an agent.
        """
        conversation = ensure_customer_side(principal, await self._conversations.get(conversation_id, for_update=True))
        now = self._clock.now()
        changed = conversation.give_back(ConversationEvent.WITHDRAW, now)
        return await self._commit(
            conversation,
            changed,
            _system_notice(changed, WITHDRAW_NOTICE, now),
            [status_event(WebhookEventType.HANDOFF_WITHDRAWN, changed)],
        )


class ClaimConversation(_OwnershipChange):
    """An agent takes a waiting conversation; exactly one of two agents claiming at once wins."""

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """Claim it (claiming again one's own conversation changes nothing).

        Raises:
            PermissionDeniedError: the caller is not an agent.
            ConversationNotFoundError: it does not exist.
            ClaimedByAnotherAgentError: another agent owns it.
            InvalidTransitionError: it is not waiting for an agent.
        """
        ensure_agent(principal)
        conversation = await self._locked(principal, conversation_id)
        if conversation.status is ConversationStatus.HUMAN:
            await self._uow.rollback()
            if _owns(principal, conversation):
                return conversation
            raise ClaimedByAnotherAgentError
        now = self._clock.now()
        changed = conversation.claim(_agent(principal), now)
        notice = _system_notice(changed, claim_notice(principal), now)
        return await self._commit(
            conversation, changed, notice, [status_event(WebhookEventType.HANDOFF_CLAIMED, changed)]
        )


class ReleaseConversation(_OwnershipChange):
    """The owning agent gives the conversation back to the bot."""

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """Release it.

        Raises:
            PermissionDeniedError: the caller is not an agent.
            ConversationNotFoundError: it does not exist.
            ClaimedByAnotherAgentError: another agent owns it (admins may release any).
            InvalidTransitionError: no agent owns it.
        """
        ensure_agent(principal)
        conversation = await self._locked(principal, conversation_id)
        _ensure_may_act_for_owner(principal, conversation)
        now = self._clock.now()
        changed = conversation.give_back(ConversationEvent.RELEASE, now)
        released_by = conversation.agent.name if conversation.agent else principal.name
        return await self._commit(
            conversation,
            changed,
            _system_notice(changed, RELEASE_NOTICE, now),
            [status_event(WebhookEventType.HANDOFF_RELEASED, changed, released_by=released_by)],
        )


class ResolveConversation(_OwnershipChange):
    """Mark the conversation resolved: by the agent who has it, or by the customer side while the bot has it.

    An admin is both: it may resolve any agent's conversation, and a bot's as the customer side (like a service
    key). An agent acts on the conversations it has claimed only: the bot's are not its to close.
    """

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """Resolve it (resolving twice is harmless); the customer writing again reopens it with the bot.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
            ClaimedByAnotherAgentError: another agent owns it (an agent caller).
            NotClaimedError: it waits for an agent (claim it first), or, for an agent, the bot has it.
            InvalidTransitionError: it waits for or is with an agent (customer side).
            ConversationClosedError: it is closed.
        """
        conversation = await self._locked(principal, conversation_id)
        if conversation.status is ConversationStatus.RESOLVED:
            await self._uow.rollback()
            return conversation
        if principal.role in AGENT_ROLES and conversation.status is ConversationStatus.PENDING_HUMAN:
            raise NotClaimedError
        if principal.role in AGENT_ROLES and conversation.status is ConversationStatus.HUMAN:
            _ensure_may_act_for_owner(principal, conversation)
        elif principal.role is Role.AGENT:
            if conversation.status is ConversationStatus.BOT:
                raise NotClaimedError("The assistant has this conversation; agents resolve the ones they claimed.")
        else:
            ensure_customer_side(principal, conversation)
            if conversation.status is ConversationStatus.HUMAN:
                # The agent who has it decides when it is resolved; the customer side can close it instead.
                raise InvalidTransitionError("An agent has this conversation; only they can resolve it.")
        now = self._clock.now()
        changed = conversation.apply(ConversationEvent.RESOLVE, now)
        return await self._commit(
            conversation,
            changed,
            _system_notice(changed, RESOLVED_NOTICE, now),
            [status_event(WebhookEventType.CONVERSATION_RESOLVED, changed, resolved_by=principal.role.value)],
        )


class SendAgentMessage(_OwnershipChange):
    """A human agent's reply, delivered live to the customer; replying to a waiting conversation claims it."""

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        bus: EventBus,
        sessions: SessionStore,
        outbox: WebhookOutbox,
        limits: ConversationLimits,
    ) -> None:
        super().__init__(conversations, uow, clock, bus, sessions, outbox)
        self._limits = limits

    async def execute(
        self, principal: Principal, conversation_id: UUID, content: str, *, idempotency_key: str | None = None
    ) -> tuple[Message, Conversation, bool]:
        """Store and deliver the message; returns it, the conversation, and whether it was a retry.

        Raises:
            PermissionDeniedError: the caller is not an agent.
            ConversationNotFoundError: it does not exist.
            ClaimedByAnotherAgentError: another agent owns it.
            NotClaimedError: the bot owns it (a handoff comes first), or it is resolved.
            ConversationClosedError: it is closed.
            InvalidInputError: the content is empty or too long.
            IdempotencyKeyReusedError: the idempotency key names a different message of the conversation.
        """
        ensure_agent(principal)
        text = checked_message(content, idempotency_key, self._limits, attached=False)
        conversation = await self._locked(principal, conversation_id)
        now = self._clock.now()
        message = Message(
            id=new_id(),
            conversation_id=conversation.id,
            role=MessageRole.AGENT,
            content=text,
            created_at=now,
            author=principal.name,
            idempotency_key=idempotency_key,
        )
        notice: Message | None = None
        events: list[OutboundEvent] = []
        try:
            if conversation.status is ConversationStatus.CLOSED:
                conversation.apply(ConversationEvent.CUSTOMER_WRITES, now)  # raises ConversationClosedError
            if conversation.status is ConversationStatus.PENDING_HUMAN:
                changed = conversation.claim(_agent(principal), now)
                notice = _system_notice(changed, claim_notice(principal), now)
                events.append(status_event(WebhookEventType.HANDOFF_CLAIMED, changed))
            elif conversation.status is ConversationStatus.HUMAN:
                _ensure_may_act_for_owner(principal, conversation)
                changed = conversation.touch(now)
            else:
                raise NotClaimedError("The assistant owns this conversation; agents reply after a handoff.")
        except (ConversationClosedError, NotClaimedError, ClaimedByAnotherAgentError):
            # A retry of a message stored before the conversation moved on (resolved, closed, another agent's)
            # returns the original, as any retry does; only a new message is refused.
            earlier = await self._earlier_send(message)
            if earlier is None:
                raise
            earlier.ensure_repeated_by(message)
            return earlier, conversation, True
        if notice is not None:
            await self._conversations.add_message(notice)
        stored = await self._conversations.add_message(message)
        if stored.id != message.id:
            # A retry: the original is returned and nothing of this attempt is kept.
            await self._uow.rollback()
            stored.ensure_repeated_by(message)
            return stored, conversation, True
        await self._commit(conversation, changed, notice, [*events, message_event(message)], [message], stored=True)
        return message, changed, False

    async def _earlier_send(self, message: Message) -> Message | None:
        """The message stored under ``message``'s idempotency key, when this send repeats one."""
        if message.idempotency_key is None:
            return None
        return await self._conversations.find_by_idempotency_key(message.conversation_id, message.idempotency_key)


class RequeueAgentConversations(_OwnershipChange):
    """Put back in the queue the conversations an agent had claimed, once that agent's key is revoked.

    Until 2026-12-07 they stayed with the revoked agent: every other agent got 409 on claim, message, release and
    resolve, and only an admin's release freed them, to the bot (found by an exploratory test).
    """

    async def execute(self, agent: AgentRef, batch: int = 200) -> int:
        """Requeue the conversations ``agent`` has claimed (one batch); return how many."""
        page = await self._conversations.handoff_queue(
            statuses=(ConversationStatus.HUMAN,), limit=batch, cursor=None, claimed_by=agent
        )
        requeued = 0
        for claimed in page.items:
            conversation = await self._conversations.get(claimed.id, for_update=True)
            if conversation is None or conversation.status is not ConversationStatus.HUMAN:
                await self._uow.rollback()
                continue
            if conversation.agent is None or conversation.agent.id != agent.id:
                await self._uow.rollback()
                continue
            now = self._clock.now()
            changed = conversation.requeue(now)
            notice = _system_notice(changed, REQUEUED_NOTICE.format(agent=conversation.agent.name), now)
            event = status_event(WebhookEventType.HANDOFF_REQUEUED, changed, previous_agent=conversation.agent.name)
            await self._commit(conversation, changed, notice, [event])
            requeued += 1
        return requeued


class ExpireHandoffs:
    """Give conversations back to the bot when no agent claimed them in time (run periodically).

    Like every ownership change it posts a notice, writes its webhook events (``handoff.expired``, then the
    notice's ``message.created``) in the same transaction, and announces both on the feed after the commit.
    """

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        bus: EventBus,
        sessions: SessionStore,
        outbox: WebhookOutbox,
        settings: HandoffSettings,
    ) -> None:
        self._conversations = conversations
        self._uow = uow
        self._clock = clock
        self._bus = bus
        self._sessions = sessions
        self._outbox = outbox
        self._settings = settings

    async def execute(self, batch: int = 200) -> int:
        """Expire one batch of overdue handoffs; return how many went back to the bot."""
        now = self._clock.now()
        page = await self._conversations.handoff_queue(
            statuses=(ConversationStatus.PENDING_HUMAN,), limit=batch, cursor=None
        )
        wait = timedelta(seconds=self._settings.max_wait_s)
        expired: list[tuple[Conversation, Message]] = []
        for queued in page.items:
            requested = queued.handoff_requested_at
            # Counted in agents' working time: a handoff made just before closing does not lapse overnight.
            if requested is None or now < self._settings.hours.after_working_time(requested, wait):
                continue
            conversation = await self._conversations.get(queued.id, for_update=True)
            if conversation is None or conversation.status is not ConversationStatus.PENDING_HUMAN:
                continue
            changed = conversation.give_back(ConversationEvent.WITHDRAW, now)
            notice = _system_notice(changed, EXPIRED_NOTICE, now)
            await self._conversations.update(changed)
            await self._conversations.add_message(notice)
            # Until 12-07 nothing was written: a CRM that opened a ticket on handoff.requested kept it open.
            await self._outbox.enqueue(status_event(WebhookEventType.HANDOFF_EXPIRED, changed))
            await self._outbox.enqueue(message_event(notice))
            expired.append((changed, notice))
        await self._uow.commit()
        for changed, notice in expired:
            await announce(
                self._bus, self._sessions, changed.id, [HandoffChanged(changed.status, None), MessagePosted(notice)]
            )
        return len(expired)
