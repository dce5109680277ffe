"""Wire types of conversations, messages and the event stream (SSE and WebSocket share them)."""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

from support.api.problems import ProblemDetails, problem_type
from support.api.schemas.common import Metadata
from support.domain.conversations import (
    AnswerStatus,
    AttachmentInfo,
    Citation,
    Conversation,
    ConversationStatus,
    HandoffAction,
    HandoffDecision,
    Message,
    MessageRole,
    ReasonCode,
)
from support.domain.feed import (
    CitationAdded,
    FeedEvent,
    FeedPayload,
    HandoffChanged,
    MessagePosted,
    ReplyDelta,
    ReplyDone,
    StreamFailed,
    ToolUsed,
    Typing,
)


class CustomerInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who the conversation is with: your id for them, and optionally how to address them."""

    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    # Loose on purpose (one @, no spaces): full address validation rejects real addresses, and none is ever mailed.
    email: Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None


class StartConversationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Service keys name the customer; a customer token may omit it (the token says who)."""

    customer: CustomerInput | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class FeedbackResource(msgspec.Struct, frozen=True):
    rating: int
    comment: str | None
    submitted_at: datetime


class DecisionResource(msgspec.Struct, frozen=True):
    """Why the assistant answered, offered a human, or handed over."""

    action: HandoffAction
    reason_code: ReasonCode | None
    evidence: str | None
    rule: str | None

    @classmethod
    def of(cls, decision: HandoffDecision | None) -> "DecisionResource | None":
        if decision is None:
            return None
        return cls(decision.action, decision.reason_code, decision.evidence, decision.rule)


class ConversationResource(msgspec.Struct, frozen=True):
    id: UUID
    status: ConversationStatus
    customer_id: UUID
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    reopened_count: int
    closed_at: datetime | None
    feedback: FeedbackResource | None
    # The decision that last asked for a human, when it was made, and the agent who owns the conversation.
    handoff: DecisionResource | None = None
    handoff_requested_at: datetime | None = None
    agent_name: str | None = None
    claimed_at: datetime | None = None

    @classmethod
    def of(cls, conversation: Conversation) -> "ConversationResource":
        feedback = conversation.feedback
        return cls(
            id=conversation.id,
            status=conversation.status,
            customer_id=conversation.customer_id,
            metadata=dict(conversation.metadata),
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
            last_activity_at=conversation.last_activity_at,
            reopened_count=conversation.reopened_count,
            closed_at=conversation.closed_at,
            feedback=None
            if feedback is None
            else FeedbackResource(rating=feedback.rating, comment=feedback.comment, submitted_at=feedback.submitted_at),
            handoff=DecisionResource.of(conversation.handoff),
            handoff_requested_at=conversation.handoff_requested_at,
            agent_name=conversation.agent.name if conversation.agent else None,
            claimed_at=conversation.claimed_at,
        )


class StartedConversationResource(msgspec.Struct, frozen=True):
    """The conversation, plus the token that lets the customer's browser use it (and only its customer's)."""

    id: UUID
    status: ConversationStatus
    customer_id: UUID
    customer_external_id: str
    customer_token: str
    customer_token_expires_at: datetime
    metadata: dict[str, str]
    created_at: datetime


class ConversationList(msgspec.Struct, frozen=True):
    items: list[ConversationResource]
    next_cursor: str | None


class CitationResource(msgspec.Struct, frozen=True):
    """A source of an assistant message: the document version and chunk, and the quoted text."""

    document_id: UUID
    version: int
    chunk_id: UUID
    title: str
    url: str | None
    quote: str

    @classmethod
    def of(cls, citation: Citation) -> "CitationResource":
        return cls(
            document_id=citation.document_id,
            version=citation.version,
            chunk_id=citation.chunk_id,
            title=citation.title,
            url=citation.url,
            quote=citation.quote,
        )


class UsageResource(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class AttachmentResource(msgspec.Struct, frozen=True):
    id: UUID
    filename: str
    content_type: str
    size: int
    sha256: str
    url: str

    @classmethod
    def of(cls, conversation_id: UUID, info: AttachmentInfo) -> "AttachmentResource":
        return cls(
            id=info.id,
            filename=info.filename,
            content_type=info.content_type,
            size=info.size,
            sha256=info.sha256,
            url=f"/v1/conversations/{conversation_id}/attachments/{info.id}",
        )


class MessageResource(msgspec.Struct, frozen=True):
    id: UUID
    conversation_id: UUID
    role: MessageRole
    content: str
    created_at: datetime
    reply_to: list[UUID]
    citations: list[CitationResource]
    answer_status: AnswerStatus | None
    decision: DecisionResource | None
    usage: UsageResource | None
    ttft_ms: float | None
    total_ms: float | None
    interrupted: bool
    author: str | None
    attachments: list[AttachmentResource]

    @classmethod
    def of(cls, message: Message) -> "MessageResource":
        usage, decision = message.usage, message.decision
        return cls(
            id=message.id,
            conversation_id=message.conversation_id,
            role=message.role,
            content=message.content,
            created_at=message.created_at,
            reply_to=list(message.reply_to),
            citations=[CitationResource.of(citation) for citation in message.citations],
            answer_status=message.answer_status,
            decision=DecisionResource.of(decision),
            usage=None
            if usage is None
            else UsageResource(
                usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens
            ),
            ttft_ms=message.ttft_ms,
            total_ms=message.total_ms,
            interrupted=message.interrupted,
            author=message.author,
            attachments=[AttachmentResource.of(message.conversation_id, info) for info in message.attachments],
        )


class MessageList(msgspec.Struct, frozen=True):
    items: list[MessageResource]
    next_cursor: str | None


class SendMessageRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]


class TurnResource(msgspec.Struct, frozen=True):
    """The stored customer message and the reply; ``reply`` is null while a human owns the conversation."""

    message: MessageResource
    reply: MessageResource | None
    conversation_status: ConversationStatus
    duplicate: bool


class FeedbackRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    comment: Annotated[str, msgspec.Meta(max_length=4000)] | None = None


# Event payloads (the `data` of each SSE event).


class DeltaData(msgspec.Struct, frozen=True):
    """The next piece of the assistant's reply."""

    text: str


class ToolData(msgspec.Struct, frozen=True):
    name: str
    status: str


class HandoffData(msgspec.Struct, frozen=True):
    status: ConversationStatus
    reason_code: ReasonCode | None


class TypingData(msgspec.Struct, frozen=True):
    role: str
    active: bool


class _Event(msgspec.Struct, frozen=True, tag_field="event"):
    """Base of the documented events: `id` is the conversation's event sequence number (0: not retained)."""

    id: int


class MessageEvent(_Event, frozen=True, tag="message"):
    """A stored message: the customer's own (echoed with its id), an agent's, or a system notice."""

    data: MessageResource


class DeltaEvent(_Event, frozen=True, tag="delta"):
    """The next piece of the assistant's reply."""

    data: DeltaData


class CitationEvent(_Event, frozen=True, tag="citation"):
    """A source the reply relies on."""

    data: CitationResource


class ToolEvent(_Event, frozen=True, tag="tool"):
    """The assistant used a tool."""

    data: ToolData


class HandoffEvent(_Event, frozen=True, tag="handoff"):
    """The conversation's owner changed."""

    data: HandoffData


class DoneEvent(_Event, frozen=True, tag="done"):
    """The stored assistant message that ends a reply."""

    data: MessageResource


class ErrorEvent(_Event, frozen=True, tag="error"):
    """A problem after the stream began; the stream ends."""

    data: ProblemDetails


class TypingEvent(_Event, frozen=True, tag="typing"):
    """Someone is typing (WebSocket only)."""

    data: TypingData


StreamEvent = (
    MessageEvent | DeltaEvent | CitationEvent | ToolEvent | HandoffEvent | DoneEvent | ErrorEvent | TypingEvent
)


def event_data(payload: FeedPayload) -> Any:  # noqa: PLR0911 - one case per event
    """The wire struct of a feed payload."""
    if isinstance(payload, ReplyDelta):
        return DeltaData(payload.text)
    if isinstance(payload, MessagePosted | ReplyDone):
        return MessageResource.of(payload.message)
    if isinstance(payload, CitationAdded):
        return CitationResource.of(payload.citation)
    if isinstance(payload, ToolUsed):
        return ToolData(payload.tool, payload.status)
    if isinstance(payload, HandoffChanged):
        return HandoffData(payload.status, payload.reason_code)
    if isinstance(payload, Typing):
        return TypingData(payload.role, payload.active)
    if isinstance(payload, StreamFailed):
        return ProblemDetails(
            type=problem_type(payload.code),
            title=payload.title,
            status=payload.status,
            code=payload.code,
            detail=payload.detail,
        )
    raise TypeError(f"unknown payload {payload!r}")


_ENCODER = msgspec.json.Encoder()


def encode_data(event: FeedEvent) -> str:
    """The JSON ``data`` of an event."""
    return _ENCODER.encode(event_data(event.payload)).decode()


def encode_ws(event: FeedEvent) -> str:
    """An event as a WebSocket text frame."""
    name = event.payload.name
    return _ENCODER.encode({"id": event.id, "event": name, "data": event_data(event.payload)}).decode()
