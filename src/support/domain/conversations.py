"""Customers, conversations and messages, and the state machine that owns a conversation's status."""

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from support.domain.errors import ConflictError, InvalidInputError, NotFoundError
from support.domain.privacy import redact

# Activity timestamps serve the idle sweep only: rewriting the row at most this often saves a write per turn.
ACTIVITY_GRANULARITY = timedelta(seconds=60)


class ConversationStatus(StrEnum):
    """Who owns the conversation: the assistant, the queue, a human agent, or nobody any more."""

    BOT = "bot"
    PENDING_HUMAN = "pending_human"
    HUMAN = "human"
    RESOLVED = "resolved"
    CLOSED = "closed"


# What the idle sweep closes after a quiet spell: not a conversation waiting for a person, whose customer was told
# the answer will be waiting (outside business hours for days); handoff expiry gives it back to the bot first.
IDLE_CLOSABLE = frozenset({ConversationStatus.BOT, ConversationStatus.HUMAN, ConversationStatus.RESOLVED})


class MessageRole(StrEnum):
    """Who wrote a message."""

    CUSTOMER = "customer"
    ASSISTANT = "assistant"
    AGENT = "agent"
    SYSTEM = "system"


class AnswerStatus(StrEnum):
    """How an assistant message relates to the evidence behind it."""

    ANSWERED = "answered"
    INSUFFICIENT_EVIDENCE = "insufficient_evidence"
    HANDED_OFF = "handed_off"


class HandoffAction(StrEnum):
    """What a turn decided about human help: answer, offer a human, or hand over now."""

    ANSWER = "answer"
    OFFER_HUMAN = "offer_human"
    ESCALATE = "escalate"


class ReasonCode(StrEnum):
    """Why a conversation was (or was offered to be) handed to a human."""

    CUSTOMER_REQUEST = "customer_request"
    FRUSTRATION = "frustration"
    REPEATED_FAILURE = "repeated_failure"
    INSUFFICIENT_EVIDENCE = "insufficient_evidence"
    SENSITIVE_TOPIC = "sensitive_topic"
    LLM_UNAVAILABLE = "llm_unavailable"


class ConversationEvent(StrEnum):
    """What can happen to a conversation's ownership (ARCHITECTURE section 4)."""

    HANDOFF = "handoff"
    CLAIM = "claim"
    WITHDRAW = "withdraw"
    RELEASE = "release"
    RESOLVE = "resolve"
    # The agent who had it left (its key was revoked): back to the queue for the next person, not to the bot.
    REQUEUE = "requeue"
    CUSTOMER_WRITES = "customer_writes"
    CLOSE = "close"


_TRANSITIONS: Mapping[tuple[ConversationStatus, ConversationEvent], ConversationStatus] = {
    (ConversationStatus.BOT, ConversationEvent.HANDOFF): ConversationStatus.PENDING_HUMAN,
    (ConversationStatus.PENDING_HUMAN, ConversationEvent.CLAIM): ConversationStatus.HUMAN,
    (ConversationStatus.PENDING_HUMAN, ConversationEvent.WITHDRAW): ConversationStatus.BOT,
    (ConversationStatus.HUMAN, ConversationEvent.RELEASE): ConversationStatus.BOT,
    (ConversationStatus.HUMAN, ConversationEvent.REQUEUE): ConversationStatus.PENDING_HUMAN,
    (ConversationStatus.HUMAN, ConversationEvent.RESOLVE): ConversationStatus.RESOLVED,
    (ConversationStatus.BOT, ConversationEvent.RESOLVE): ConversationStatus.RESOLVED,
    (ConversationStatus.RESOLVED, ConversationEvent.CUSTOMER_WRITES): ConversationStatus.BOT,
    **{(status, ConversationEvent.CLOSE): ConversationStatus.CLOSED for status in ConversationStatus},
}
# Writing to a conversation that is already owned by someone changes nothing.
_NO_CHANGE = frozenset(
    (status, ConversationEvent.CUSTOMER_WRITES)
    for status in (ConversationStatus.BOT, ConversationStatus.PENDING_HUMAN, ConversationStatus.HUMAN)
)


class InvalidTransitionError(ConflictError):
    """The conversation's status does not allow this event."""

    code = "invalid_transition"


class ConversationClosedError(ConflictError):
    """Closed conversations take no new messages."""

    code = "conversation_closed"
    default_message = "The conversation is closed; start a new one."


class ClaimedByAnotherAgentError(ConflictError):
    """Another agent owns the conversation."""

    code = "claimed_by_another_agent"
    default_message = "Another agent has already claimed this conversation."


class NotClaimedError(ConflictError):
    """Agents act on conversations they have claimed."""

    code = "not_claimed"
    default_message = "Claim the conversation before acting on it."


class IdempotencyKeyReusedError(InvalidInputError):
    """An ``Idempotency-Key`` already names a different message of the conversation."""

    code = "idempotency_key_reused"
    default_message = (
        "This Idempotency-Key was already used for a different message in this conversation; "
        "use a new key for a new message."
    )


class ConversationNotFoundError(NotFoundError):
    """No conversation with this id is visible to the caller."""

    code = "conversation_not_found"
    default_message = "The conversation was not found."


class AttachmentNotFoundError(NotFoundError):
    """No attachment with this id in the conversation."""

    code = "attachment_not_found"
    default_message = "The attachment was not found."


def next_status(status: ConversationStatus, event: ConversationEvent) -> ConversationStatus:
    """The status after ``event``.

    Raises:
        ConversationClosedError: the conversation is closed (only closing again is allowed).
        InvalidTransitionError: the event is not allowed from ``status``.
    """
    if (status, event) in _NO_CHANGE:
        return status
    target = _TRANSITIONS.get((status, event))
    if target is not None:
        return target
    if status is ConversationStatus.CLOSED:
        raise ConversationClosedError
    raise InvalidTransitionError(f"A conversation in status {status.value!r} cannot take the event {event.value!r}.")


@dataclass(frozen=True, slots=True)
class Customer:
    """Someone the company's backend identifies by its own ``external_id``."""

    id: UUID
    external_id: str
    name: str | None
    email: str | None
    created_at: datetime


def customer_external_id(text: str | None) -> str:
    """The company's id for a customer as stored and looked up: surrounding spaces dropped.

    Raises:
        InvalidInputError: it is blank.
    """
    external_id = (text or "").strip()
    if not external_id:
        raise InvalidInputError("Name the customer: its external_id is missing or blank.")
    return external_id


@dataclass(frozen=True, slots=True)
class AgentRef:
    """The human agent who owns a conversation (their API key and its name)."""

    id: UUID | None
    name: str


@dataclass(frozen=True, slots=True)
class Feedback:
    """The customer's rating (1 to 5) of a conversation."""

    rating: int
    comment: str | None
    submitted_at: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    """One support conversation between a customer and the assistant or an agent."""

    id: UUID
    customer_id: UUID
    status: ConversationStatus
    metadata: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    reopened_count: int = 0
    closed_at: datetime | None = None
    feedback: Feedback | None = None
    # The decision that last asked for a human (kept after the handoff ends, for audit and analytics).
    handoff: "HandoffDecision | None" = None
    handoff_requested_at: datetime | None = None
    # A short account of the conversation for the agent who picks it up.
    handoff_summary: str | None = None
    agent: "AgentRef | None" = None
    claimed_at: datetime | None = None

    @property
    def assistant_may_reply(self) -> bool:
        """Only while the bot owns the conversation: never over a human or a pending handoff."""
        return self.status is ConversationStatus.BOT

    def request_handoff(self, decision: "HandoffDecision", now: datetime) -> "Conversation":
        """To the human queue, recording why.

        Raises:
            InvalidTransitionError: the bot does not own the conversation.
        """
        moved = self.apply(ConversationEvent.HANDOFF, now)
        return replace(moved, handoff=decision, handoff_requested_at=now, handoff_summary=None, agent=None)

    def claim(self, agent: "AgentRef", now: datetime) -> "Conversation":
        """An agent takes the conversation over; only one can (the second sees status ``human``: 409)."""
        return replace(self.apply(ConversationEvent.CLAIM, now), agent=agent, claimed_at=now)

    def requeue(self, now: datetime) -> "Conversation":
        """Back to the human queue, unclaimed; the wait counts from now (its agent can no longer answer)."""
        return replace(
            self.apply(ConversationEvent.REQUEUE, now), agent=None, claimed_at=None, handoff_requested_at=now
        )

    def give_back(self, event: ConversationEvent, now: datetime) -> "Conversation":
        """Back to the bot: the agent releases it, or the customer withdraws / nobody answered in time."""
        if event not in {ConversationEvent.RELEASE, ConversationEvent.WITHDRAW}:
            raise InvalidTransitionError(f"{event.value!r} does not give a conversation back to the bot.")
        return replace(self.apply(event, now), agent=None, claimed_at=None)

    def touch(self, now: datetime) -> "Conversation":
        """This conversation with activity at ``now``."""
        return replace(self, updated_at=now, last_activity_at=now)

    def apply(self, event: ConversationEvent, now: datetime) -> "Conversation":
        """This conversation after ``event`` (see :func:`next_status`).

        A resolved conversation keeps the agent who resolved it; reopening it gives it to the bot, so the agent
        no longer owns it.
        """
        status = next_status(self.status, event)
        reopened = self.status is ConversationStatus.RESOLVED and status is ConversationStatus.BOT
        return replace(
            self,
            status=status,
            updated_at=now,
            last_activity_at=now,
            reopened_count=self.reopened_count + reopened,
            closed_at=now if status is ConversationStatus.CLOSED and self.closed_at is None else self.closed_at,
            agent=None if reopened else self.agent,
            claimed_at=None if reopened else self.claimed_at,
        )


def activity_position(conversation: Conversation) -> tuple[datetime, UUID]:
    """A conversation's place in listings, most recently active first (as a page cursor encodes it)."""
    return conversation.last_activity_at, conversation.id


@dataclass(frozen=True, slots=True)
class Citation:
    """Where a statement of an assistant message comes from."""

    document_id: UUID
    version: int
    chunk_id: UUID
    title: str
    url: str | None
    quote: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Model tokens a reply consumed (cache reads and writes counted apart)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


@dataclass(frozen=True, slots=True)
class HandoffDecision:
    """Recorded on every assistant turn: what was decided, why, on what evidence, by which rule."""

    action: HandoffAction
    reason_code: ReasonCode | None = None
    # The words that decided it: redacted, as it is shown in the agents' queue and sent to webhooks (a customer's
    # "MY CARD 4111 … WAS CHARGED TWICE" is frustration whose evidence must not carry the card number).
    evidence: str | None = None
    rule: str | None = None

    def __post_init__(self) -> None:
        if self.evidence:
            object.__setattr__(self, "evidence", redact(self.evidence))


MAX_FILENAME_LENGTH = 255


def clean_filename(name: str) -> str:
    """An attachment's file name fit to store and to send back in a header.

    Control characters (CR, LF, NUL, the rest of C0 and C1) are removed: in a ``Content-Disposition`` header
    they split it or make the server drop the connection. So are invisible format characters (bidi overrides,
    zero-width characters): ``invoice\u202efdp.exe`` would show an agent ``invoiceexe.pdf``. Trimmed, at most
    255 characters, ``file`` when nothing is left.
    """
    kept = "".join(char for char in name if unicodedata.category(char) not in {"Cc", "Cf"})
    return kept.strip()[:MAX_FILENAME_LENGTH].strip() or "file"


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """A file attached to a customer message (the bytes live in the attachment store)."""

    id: UUID
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message of a conversation."""

    id: UUID
    conversation_id: UUID
    role: MessageRole
    content: str
    created_at: datetime
    # Assistant replies: the customer messages they answer, and how they were produced.
    reply_to: tuple[UUID, ...] = ()
    citations: tuple[Citation, ...] = ()
    answer_status: AnswerStatus | None = None
    decision: HandoffDecision | None = None
    usage: TokenUsage | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    # A reply cut short (the model failed mid-stream or the service stopped) keeps what was said.
    interrupted: bool = False
    author: str | None = None
    idempotency_key: str | None = None
    attachments: tuple[AttachmentInfo, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def ensure_repeated_by(self, attempt: "Message") -> None:
        """Check that ``attempt``, sent with this stored message's idempotency key, is the same message again.

        A retry carries the same text and files from the same sender; anything else is a client reusing a key,
        which must not be answered with an unrelated message (or another sender's).

        Raises:
            IdempotencyKeyReusedError: the attempt differs from the stored message.
        """
        if (
            attempt.role is not self.role
            or attempt.author != self.author
            or attempt.content != self.content
            or _file_identities(attempt.attachments) != _file_identities(self.attachments)
        ):
            raise IdempotencyKeyReusedError


def _file_identities(attachments: Sequence[AttachmentInfo]) -> list[tuple[str, str, str]]:
    # Each attempt's files get new ids; a file is the same file by its name, type and bytes, in any order.
    return sorted((info.filename, info.content_type, info.sha256) for info in attachments)


@dataclass(frozen=True, slots=True)
class AttachmentUpload:
    """A file sent with a customer message, checked and with its text extracted, before anything is stored."""

    info: AttachmentInfo
    data: bytes
    # Extracted text for documents; None for images, which go to the model as image blocks.
    text: str | None


def unanswered(messages: Sequence[Message]) -> list[Message]:
    """Customer messages no reply has covered yet, oldest first: what the assistant's next reply answers.

    An assistant reply covers the messages it names in ``reply_to`` (a message that arrived while a reply was
    being written is not among them); a human agent's message covers everything the customer said before it, and
    so does a system notice of an ownership change (a handoff, claim, release, withdrawal, expiry, resolution).
    What the customer wrote to the people, or before the conversation changed hands, was theirs to answer: when
    the bot has it again, it answers what the customer writes from then on, and sees the earlier messages as
    history, not as the question.
    """
    covered = {answered for message in messages for answered in message.reply_to}
    pending: list[Message] = []
    for message in messages:
        if message.role is MessageRole.CUSTOMER and message.id not in covered:
            pending.append(message)
        elif message.role in {MessageRole.AGENT, MessageRole.SYSTEM}:
            pending.clear()
    return pending
