"""Wire types of customers: profile, memories, export, erasure."""

from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import msgspec

from support.api.schemas.conversations import ConversationResource, MessageResource
from support.application.customers import ConversationRecord, CustomerExport, CustomerProfile, ErasureReport
from support.domain.conversations import Customer, Message
from support.domain.memory import ConversationSummary, Fact, FactKind, FactOrigin, label_for

ExportFormat = Literal["support.customer-export.v1"]
EXPORT_FORMAT: Final[ExportFormat] = "support.customer-export.v1"


class CustomerCountsResource(msgspec.Struct, frozen=True):
    """How much is held: conversations, messages, memories recallable now and memories in all (audit)."""

    conversations: int
    messages: int
    memories: int
    memories_total: int


class CustomerResource(msgspec.Struct, frozen=True):
    id: UUID
    external_id: str
    name: str | None
    email: str | None
    created_at: datetime
    counts: CustomerCountsResource

    @classmethod
    def of(cls, profile: CustomerProfile) -> "CustomerResource":
        customer = profile.customer
        return cls(
            id=customer.id,
            external_id=customer.external_id,
            name=customer.name,
            email=customer.email,
            created_at=customer.created_at,
            counts=CustomerCountsResource(
                conversations=profile.counts.conversations,
                messages=profile.counts.messages,
                memories=profile.memories.current,
                memories_total=profile.memories.total,
            ),
        )


class CustomerTokenResource(msgspec.Struct, frozen=True):
    """A new token for the customer's browser: every conversation of that customer, and only those."""

    customer_id: UUID
    customer_token: str
    customer_token_expires_at: datetime


class MemoryResource(msgspec.Struct, frozen=True):
    """A remembered fact. ``current`` is false once it was superseded (``superseded_by``) or expired."""

    id: UUID
    key: str
    kind: FactKind
    label: str
    value: str
    confidence: float
    origin: FactOrigin
    source_message_id: UUID | None
    created_at: datetime
    expires_at: datetime | None
    superseded_by: UUID | None
    current: bool

    @classmethod
    def of(cls, fact: Fact, now: datetime) -> "MemoryResource":
        return cls(
            id=fact.id,
            key=fact.key,
            kind=fact.kind,
            label=label_for(fact.key),
            value=fact.value,
            confidence=round(fact.confidence, 3),
            origin=fact.origin,
            source_message_id=fact.source_message_id,
            created_at=fact.created_at,
            expires_at=fact.expires_at,
            superseded_by=fact.superseded_by,
            current=fact.is_current(now),
        )


class MemoryList(msgspec.Struct, frozen=True):
    items: list[MemoryResource]
    next_cursor: str | None


class SummaryResource(msgspec.Struct, frozen=True):
    """A conversation's rolling summary of turns older than the history window."""

    text: str
    points: list[str]
    mentions: list[str]
    folded_messages: int
    through_message_id: UUID
    updated_at: datetime

    @classmethod
    def of(cls, summary: ConversationSummary) -> "SummaryResource":
        return cls(
            text=summary.text,
            points=list(summary.points),
            mentions=list(summary.mentions),
            folded_messages=summary.folded_messages,
            through_message_id=summary.through_message_id,
            updated_at=summary.updated_at,
        )


class ExportedMessageResource(MessageResource, frozen=True):
    """A message with everything stored about it (the transcript view leaves these two out)."""

    idempotency_key: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def exported(cls, message: Message) -> "ExportedMessageResource":
        fields = msgspec.structs.asdict(MessageResource.of(message))
        return cls(**fields, idempotency_key=message.idempotency_key, metadata=dict(message.metadata))


class ExportedConversationResource(msgspec.Struct, frozen=True):
    conversation: ConversationResource
    messages: list[ExportedMessageResource]
    summary: SummaryResource | None
    # What the agents were shown about the customer when it was handed over (it quotes what they wrote).
    handoff_summary: str | None = None

    @classmethod
    def of(cls, record: ConversationRecord) -> "ExportedConversationResource":
        return cls(
            conversation=ConversationResource.of(record.conversation),
            messages=[ExportedMessageResource.exported(message) for message in record.messages],
            summary=SummaryResource.of(record.summary) if record.summary else None,
            handoff_summary=record.conversation.handoff_summary,
        )


class ExportedCustomer(msgspec.Struct, frozen=True):
    id: UUID
    external_id: str
    name: str | None
    email: str | None
    created_at: datetime

    @classmethod
    def of(cls, customer: Customer) -> "ExportedCustomer":
        return cls(customer.id, customer.external_id, customer.name, customer.email, customer.created_at)


class CustomerExportResource(msgspec.Struct, frozen=True):
    """Everything held about a customer. Attachments are listed with their download ``url``, not inlined."""

    format: ExportFormat
    exported_at: datetime
    customer: ExportedCustomer
    conversations: list[ExportedConversationResource]
    memories: list[MemoryResource]

    @classmethod
    def of(cls, export: CustomerExport) -> "CustomerExportResource":
        return cls(
            format=EXPORT_FORMAT,
            exported_at=export.exported_at,
            customer=ExportedCustomer.of(export.customer),
            conversations=[ExportedConversationResource.of(record) for record in export.conversations],
            memories=[MemoryResource.of(fact, export.exported_at) for fact in export.memories],
        )


class ErasureResource(msgspec.Struct, frozen=True):
    """What was erased; nothing about the customer remains in PostgreSQL or Valkey."""

    customer_id: UUID
    conversations: int
    messages: int
    memories: int
    summaries: int

    @classmethod
    def of(cls, customer_id: UUID, report: ErasureReport) -> "ErasureResource":
        return cls(customer_id, report.conversations, report.messages, report.memories, report.summaries)
