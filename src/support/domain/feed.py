"""The events of a conversation's live feed (ARCHITECTURE section 6), shared by SSE, WebSocket and the bus."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from support.domain.conversations import Citation, ConversationStatus, Message, ReasonCode


@dataclass(frozen=True, slots=True)
class MessagePosted:
    """A stored message: the customer's own (echoed with its id), an agent's, or a system notice."""

    name: ClassVar[str] = "message"
    message: Message


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """The next piece of the assistant's reply."""

    name: ClassVar[str] = "delta"
    text: str


@dataclass(frozen=True, slots=True)
class CitationAdded:
    """A source the reply relies on."""

    name: ClassVar[str] = "citation"
    citation: Citation


@dataclass(frozen=True, slots=True)
class ToolUsed:
    """The assistant used a tool."""

    name: ClassVar[str] = "tool"
    tool: str
    status: str


@dataclass(frozen=True, slots=True)
class HandoffChanged:
    """Sent on every ownership change."""

    name: ClassVar[str] = "handoff"
    status: ConversationStatus
    reason_code: ReasonCode | None

    @property
    def takes_over(self) -> bool:
        """The assistant no longer owns the conversation: no word of a reply it was writing may follow."""
        return self.status is not ConversationStatus.BOT


@dataclass(frozen=True, slots=True)
class ReplyDone:
    """The stored assistant message that ends a reply."""

    name: ClassVar[str] = "done"
    message: Message


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """A problem after the stream began; the stream ends after it."""

    name: ClassVar[str] = "error"
    status: int
    code: str
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class Typing:
    """Someone is typing (WebSocket only; not retained in the feed)."""

    name: ClassVar[str] = "typing"
    role: str
    active: bool


FeedPayload = MessagePosted | ReplyDelta | CitationAdded | ToolUsed | HandoffChanged | ReplyDone | StreamFailed | Typing


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """A payload with its per-conversation sequence number (the SSE ``id``; 0 for ephemeral events)."""

    id: int
    payload: FeedPayload


def last_takeover(payloads: Sequence[FeedPayload]) -> int | None:
    """The position in ``payloads`` of the last ownership change away from the assistant, if any."""
    found = None
    for index, payload in enumerate(payloads):
        if isinstance(payload, HandoffChanged) and payload.takes_over:
            found = index
    return found
