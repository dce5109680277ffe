"""Ports that keep conversations: durable records, hot session state, the live event feed, attachments."""

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from support.domain.assistant import AttachedText
from support.domain.conversations import (
    AgentRef,
    AttachmentInfo,
    AttachmentUpload,
    Conversation,
    ConversationNotFoundError,
    ConversationStatus,
    Customer,
    Message,
)
from support.domain.feed import FeedEvent, FeedPayload
from support.ports.errors import CacheUnavailableError


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """One page of conversations and the cursor of the next (None on the last)."""

    items: list[Conversation]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of messages and the cursor of the next (None on the last)."""

    items: list[Message]
    next_cursor: str | None


class ConversationRepository(Protocol):
    """Durable customers, conversations and messages (the source of truth).

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def get_or_create_customer(
        self, external_id: str, *, name: str | None, email: str | None, now: datetime
    ) -> Customer:
        """The customer with this external id, created on first sight; name and email update when given."""
        ...

    async def get_customer(self, customer_id: UUID) -> Customer | None:
        """The customer with this id."""
        ...

    async def find_customer(self, external_id: str) -> Customer | None:
        """The customer with this external id (the company's own id for them), without creating one."""
        ...

    async def add(self, conversation: Conversation) -> None:
        """Store a new conversation."""
        ...

    async def get(self, conversation_id: UUID, *, for_update: bool = False) -> Conversation | None:
        """The conversation; ``for_update`` locks it until the unit of work ends (serialises transitions)."""
        ...

    async def update(self, conversation: Conversation) -> None:
        """Store a changed conversation (status, activity, feedback)."""
        ...

    async def list_conversations(
        self,
        *,
        status: ConversationStatus | None,
        customer_id: UUID | None,
        limit: int,
        cursor: str | None,
    ) -> ConversationPage:
        """Newest activity first.

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def add_message(self, message: Message) -> Message:
        """Store ``message``, or return the original when its idempotency key was already used.

        Nothing is written when the key was used before in the same conversation.
        """
        ...

    async def get_message(self, conversation_id: UUID, message_id: UUID) -> Message | None:
        """The message with this id in this conversation."""
        ...

    async def find_by_idempotency_key(self, conversation_id: UUID, idempotency_key: str) -> Message | None:
        """The message stored in this conversation under ``idempotency_key``, if any."""
        ...

    async def find_reply(self, conversation_id: UUID, message_id: UUID) -> Message | None:
        """The assistant or agent message that answered customer message ``message_id``, if any."""
        ...

    async def list_messages(self, conversation_id: UUID, *, limit: int, cursor: str | None) -> MessagePage:
        """Oldest first.

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def recent_messages(self, conversation_id: UUID, limit: int) -> list[Message]:
        """The last ``limit`` messages, oldest first."""
        ...

    async def idle_conversations(self, *, inactive_since: datetime, limit: int) -> list[UUID]:
        """Conversations the idle sweep may close, least recently active first: last active before ``inactive_since``.

        Only ``IDLE_CLOSABLE`` ones: not closed, and not waiting for a person.
        """
        ...

    async def handoff_queue(
        self,
        *,
        statuses: Sequence[ConversationStatus],
        limit: int,
        cursor: str | None,
        claimed_by: AgentRef | None = None,
    ) -> ConversationPage:
        """Conversations in ``statuses`` (pending_human, human), oldest handoff request first.

        With ``claimed_by``, only those that agent owns: the same key id, or for an agent without one (the bootstrap
        admin key) no id and the same name.

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def count_waiting(self, *, requested_before: datetime) -> int:
        """How many conversations wait for an agent (pending_human) since before ``requested_before``."""
        ...

    async def save_handoff_summary(self, conversation_id: UUID, *, requested_at: datetime, summary: str) -> None:
        """Store the agent's summary of the handoff requested at ``requested_at`` (a later handoff keeps its own)."""
        ...


class AttachmentStore(Protocol):
    """Files customers attach to messages.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def add(self, conversation_id: UUID, message_id: UUID, upload: AttachmentUpload) -> None:
        """Store an attachment of message ``message_id``."""
        ...

    async def get(self, conversation_id: UUID, attachment_id: UUID) -> tuple[AttachmentInfo, bytes] | None:
        """The attachment and its bytes, when it belongs to this conversation."""
        ...

    async def texts(self, conversation_id: UUID, *, limit_chars: int) -> list[AttachedText]:
        """Extracted text of the conversation's document attachments, newest first, within ``limit_chars``."""
        ...


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a turn needs without reading the database: who owns the conversation and its latest messages."""

    conversation: Conversation
    recent: tuple[Message, ...]


class SessionStore(Protocol):
    """Hot, rebuildable conversation state shared by every API process.

    The reply lease makes one process (and one task) the only writer of assistant replies in a conversation
    at a time; it expires by itself if its holder dies.

    Raises (every method):
        CacheUnavailableError: the store cannot be reached.
    """

    async def load(self, conversation_id: UUID) -> SessionState | None:
        """The cached state, or None when it was never saved, expired or was dropped."""
        ...

    async def save(self, state: SessionState, *, ttl_s: float) -> None:
        """Cache ``state``, replacing what was there, until ``ttl_s`` seconds pass without a save."""
        ...

    async def drop(self, conversation_id: UUID) -> None:
        """Forget the cached state (the next load rebuilds it from the repository)."""
        ...

    async def acquire_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        """Take the lease if nobody holds it; True when ``holder`` now holds it."""
        ...

    async def extend_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        """Push the expiry back; False when ``holder`` no longer holds the lease."""
        ...

    async def release_reply_lease(self, conversation_id: UUID, holder: str) -> None:
        """Give the lease up (only when ``holder`` holds it)."""
        ...


class TakenOverError(Exception):
    """A person took over the conversation after ``owned_since``: the assistant's events were not published."""


class FeedLostError(CacheUnavailableError):
    """The feed lost its keys (expired or evicted) since ``owned_since`` was read: nothing was published.

    A takeover cannot be ruled out among the lost ids, so the assistant's events are not appended.
    """


class FeedErasedError(ConversationNotFoundError):
    """The conversation was erased (with its customer): nothing was published, and its feed stays gone.

    Erasure leaves a tombstone (:class:`~support.ports.customers.HotStateEraser`) that refuses every later publish,
    so a reply still being written cannot bring the erased feed, and the customer's words, back.
    """

    default_message = "The conversation was deleted (or its customer erased)."


class EventBus(Protocol):
    """The per-conversation event feed: a retained, ordered log with live fan-out to every process.

    Raises (every method, and while iterating a subscription):
        CacheUnavailableError: the bus cannot be reached.
    """

    async def publish(
        self, conversation_id: UUID, payloads: Sequence[FeedPayload], *, owned_since: int | None = None
    ) -> list[FeedEvent]:
        """Append ``payloads`` in order; each gets the next sequence number of the conversation (from 1).

        ``owned_since`` is for the assistant's events: the feed's :meth:`head` read before the publisher last saw
        the assistant own the conversation. If an ownership change away from the assistant (a ``handoff`` event
        whose status is not ``bot``) was published after that id, nothing is appended, atomically with respect to
        every other publisher, so no assistant words follow a takeover in the feed in any process.

        Raises:
            TakenOverError: refused for ``owned_since``.
            FeedLostError: refused because the feed lost its keys since ``owned_since`` was read.
            FeedErasedError: refused (whatever ``owned_since``) because the conversation was erased.
        """
        ...

    async def head(self, conversation_id: UUID) -> int:
        """The newest event id of the conversation's feed (0 when it has none)."""
        ...

    async def signal(self, conversation_id: UUID, payload: FeedPayload) -> None:
        """Deliver an ephemeral payload (typing) to live subscribers only: not retained, id 0."""
        ...

    def subscribe(self, conversation_id: UUID, *, after: int | None) -> AsyncGenerator[FeedEvent, None]:
        """Retained events with an id above ``after``, then live ones, in order, without gaps or duplicates.

        ``after=None`` skips what is retained and starts with the next event; iteration runs until the consumer
        stops (``aclose``). An ``after`` above the newest id (the feed expired and restarted) replays what is
        retained.
        """
        ...
