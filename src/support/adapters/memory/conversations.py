"""In-memory conversations and attachments: fakes for fast use-case tests; same contract as PostgreSQL's."""

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from uuid import UUID

from support.adapters.memory.paging import newest_first_page
from support.domain.assistant import AttachedText
from support.domain.conversations import (
    IDLE_CLOSABLE,
    AgentRef,
    AttachmentInfo,
    AttachmentUpload,
    Conversation,
    ConversationStatus,
    Customer,
    Message,
    MessageRole,
    activity_position,
)
from support.domain.ids import new_id
from support.domain.paging import SEQ_CURSOR, TIME_ID_CURSOR
from support.ports.conversations import ConversationPage, MessagePage


def _owned_by(conversation: Conversation, agent: AgentRef) -> bool:
    owner = conversation.agent
    if owner is None:
        return False
    return owner.id == agent.id if agent.id is not None else owner.id is None and owner.name == agent.name


def _queue_key(conversation: Conversation) -> tuple[datetime, UUID]:
    assert conversation.handoff_requested_at is not None  # noqa: S101 - only queued conversations are keyed
    return conversation.handoff_requested_at, conversation.id


class InMemoryConversationRepository:
    """Dictionaries in insertion order; writes are visible at once (the unit of work only counts commits)."""

    def __init__(self) -> None:
        self.customers: dict[UUID, Customer] = {}
        self.conversations: dict[UUID, Conversation] = {}
        self.messages: list[Message] = []
        self.attachments: dict[UUID, list[AttachmentInfo]] = {}

    async def get_or_create_customer(
        self, external_id: str, *, name: str | None, email: str | None, now: datetime
    ) -> Customer:
        for customer in self.customers.values():
            if customer.external_id == external_id:
                updated = replace(
                    customer,
                    name=name if name is not None else customer.name,
                    email=email if email is not None else customer.email,
                )
                self.customers[customer.id] = updated
                return updated
        customer = Customer(id=new_id(), external_id=external_id, name=name, email=email, created_at=now)
        self.customers[customer.id] = customer
        return customer

    async def get_customer(self, customer_id: UUID) -> Customer | None:
        return self.customers.get(customer_id)

    async def find_customer(self, external_id: str) -> Customer | None:
        return next((customer for customer in self.customers.values() if customer.external_id == external_id), None)

    async def add(self, conversation: Conversation) -> None:
        self.conversations[conversation.id] = conversation

    async def get(self, conversation_id: UUID, *, for_update: bool = False) -> Conversation | None:  # noqa: ARG002
        return self.conversations.get(conversation_id)

    async def update(self, conversation: Conversation) -> None:
        self.conversations[conversation.id] = conversation

    async def list_conversations(
        self,
        *,
        status: ConversationStatus | None,
        customer_id: UUID | None,
        limit: int,
        cursor: str | None,
    ) -> ConversationPage:
        matching = (
            conversation
            for conversation in self.conversations.values()
            if (status is None or conversation.status is status)
            and (customer_id is None or conversation.customer_id == customer_id)
        )
        page, next_cursor = newest_first_page(matching, activity_position, limit=limit, cursor=cursor)
        return ConversationPage(items=page, next_cursor=next_cursor)

    async def add_message(self, message: Message) -> Message:
        if message.idempotency_key is not None:
            for stored in self._of(message.conversation_id):
                if stored.idempotency_key == message.idempotency_key:
                    return self._with_attachments(stored)
        self.messages.append(message)
        return message

    async def find_by_idempotency_key(self, conversation_id: UUID, idempotency_key: str) -> Message | None:
        for stored in self._of(conversation_id):
            if stored.idempotency_key == idempotency_key:
                return self._with_attachments(stored)
        return None

    async def get_message(self, conversation_id: UUID, message_id: UUID) -> Message | None:
        for message in self._of(conversation_id):
            if message.id == message_id:
                return self._with_attachments(message)
        return None

    async def find_reply(self, conversation_id: UUID, message_id: UUID) -> Message | None:
        for message in self._of(conversation_id):
            if message_id in message.reply_to:
                return message
        return None

    async def list_messages(self, conversation_id: UUID, *, limit: int, cursor: str | None) -> MessagePage:
        messages = self._of(conversation_id)
        start = SEQ_CURSOR.decode(cursor) if cursor else 0
        page = messages[start : start + limit]
        more = len(messages) > start + limit
        return MessagePage(
            items=[self._with_attachments(message) for message in page],
            next_cursor=SEQ_CURSOR.encode(start + limit) if more else None,
        )

    async def recent_messages(self, conversation_id: UUID, limit: int) -> list[Message]:
        return [self._with_attachments(message) for message in self._of(conversation_id)[-limit:]]

    async def idle_conversations(self, *, inactive_since: datetime, limit: int) -> list[UUID]:
        idle = sorted(
            (
                conversation
                for conversation in self.conversations.values()
                if conversation.status in IDLE_CLOSABLE and conversation.last_activity_at < inactive_since
            ),
            key=lambda conversation: conversation.last_activity_at,
        )
        return [conversation.id for conversation in idle[:limit]]

    async def handoff_queue(
        self,
        *,
        statuses: Sequence[ConversationStatus],
        limit: int,
        cursor: str | None,
        claimed_by: AgentRef | None = None,
    ) -> ConversationPage:
        wanted = set(statuses) & {ConversationStatus.PENDING_HUMAN, ConversationStatus.HUMAN}
        queued = sorted(
            (
                item
                for item in self.conversations.values()
                if item.status in wanted
                and item.handoff_requested_at
                and (claimed_by is None or _owned_by(item, claimed_by))
            ),
            key=_queue_key,
        )
        if cursor:
            after = TIME_ID_CURSOR.decode(cursor)
            queued = [item for item in queued if _queue_key(item) > after]
        page = queued[:limit]
        next_cursor = None
        if len(queued) > limit:
            next_cursor = TIME_ID_CURSOR.encode(_queue_key(page[-1]))
        return ConversationPage(items=page, next_cursor=next_cursor)

    async def count_waiting(self, *, requested_before: datetime) -> int:
        return sum(
            1
            for item in self.conversations.values()
            if item.status is ConversationStatus.PENDING_HUMAN
            and item.handoff_requested_at is not None
            and item.handoff_requested_at < requested_before
        )

    async def save_handoff_summary(self, conversation_id: UUID, *, requested_at: datetime, summary: str) -> None:
        conversation = self.conversations.get(conversation_id)
        if conversation is not None and conversation.handoff_requested_at == requested_at:
            self.conversations[conversation_id] = replace(conversation, handoff_summary=summary)

    def _of(self, conversation_id: UUID) -> list[Message]:
        return [message for message in self.messages if message.conversation_id == conversation_id]

    def _with_attachments(self, message: Message) -> Message:
        if message.role is not MessageRole.CUSTOMER:
            return message
        return replace(message, attachments=tuple(self.attachments.get(message.id, ())))


class InMemoryAttachmentStore:
    """Keeps uploads in a list; shares attachment listings with the conversation fake when given it."""

    def __init__(self, conversations: InMemoryConversationRepository | None = None) -> None:
        self._uploads: list[tuple[UUID, UUID, AttachmentUpload]] = []
        self._conversations = conversations

    async def add(self, conversation_id: UUID, message_id: UUID, upload: AttachmentUpload) -> None:
        self._uploads.append((conversation_id, message_id, upload))
        if self._conversations is not None:
            self._conversations.attachments.setdefault(message_id, []).append(upload.info)

    async def get(self, conversation_id: UUID, attachment_id: UUID) -> tuple[AttachmentInfo, bytes] | None:
        for owner, _, upload in self._uploads:
            if owner == conversation_id and upload.info.id == attachment_id:
                return upload.info, upload.data
        return None

    async def texts(self, conversation_id: UUID, *, limit_chars: int) -> list[AttachedText]:
        result: list[AttachedText] = []
        remaining = limit_chars
        for owner, _, upload in reversed(self._uploads):
            if owner != conversation_id or upload.text is None or remaining <= 0:
                continue
            text = upload.text[:remaining]
            result.append(AttachedText(filename=upload.info.filename, text=text))
            remaining -= len(text)
        return result
