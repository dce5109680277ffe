"""ORM rows. No row crosses a port: adapters map them to domain dataclasses."""

from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from advanced_alchemy.base import DefaultBase
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

metadata = DefaultBase.metadata
# The vector column's dimension; the service checks at start that its embedder produces vectors of this length.
EMBEDDING_DIMENSION = 384
TSVECTOR_EXPRESSION = "to_tsvector('english'::regconfig, context || E'\\n\\n' || text)"


class ApiKeyRow(DefaultBase):
    __tablename__ = "api_keys"
    __table_args__ = (sa.CheckConstraint("role IN ('admin', 'agent', 'service')", name="role_known"),)

    id: Mapped[UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    role: Mapped[str] = mapped_column(sa.String(16))
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    hint: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class DocumentRow(DefaultBase):
    __tablename__ = "kb_documents"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(sa.String(300), unique=True)
    title: Mapped[str] = mapped_column(sa.Text)
    content_type: Mapped[str] = mapped_column(sa.String(100))
    url: Mapped[str | None] = mapped_column(sa.Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), server_default="{}")
    audience: Mapped[str] = mapped_column(sa.String(16))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONB, server_default="{}")
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int] = mapped_column(sa.Integer)
    chunk_count: Mapped[int] = mapped_column(sa.Integer)
    # Flagged passages ({reason, start, end, excerpt, chunk}): prompt-injection review (support.domain.injection).
    flags: Mapped[list[dict[str, object]]] = mapped_column(JSONB, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        sa.Index("ix_kb_documents_tags", "tags", postgresql_using="gin"),
        sa.CheckConstraint("audience IN ('public', 'internal')", name="audience_known"),
    )


class ChunkRow(DefaultBase):
    __tablename__ = "kb_chunks"
    # The migration sets toast_tuple_target=4080: rows are ~3 KB (a 1.5 KB vector, text, tsvector) and are
    # kept whole in the heap instead of TOASTing text and tsvector at 2 KB, so ranking reads one relation.

    id: Mapped[UUID] = mapped_column(primary_key=True)
    document_id: Mapped[UUID] = mapped_column(sa.ForeignKey("kb_documents.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(sa.Integer)
    ordinal: Mapped[int] = mapped_column(sa.Integer)
    heading_path: Mapped[list[str]] = mapped_column(ARRAY(sa.Text))
    text: Mapped[str] = mapped_column(sa.Text)
    # "Title > Section > Subsection": embedded and indexed with the text, shown as the citation's place.
    context: Mapped[str] = mapped_column(sa.Text)
    token_count: Mapped[int] = mapped_column(sa.Integer)
    # Denormalised from the document so filters apply inside the index scans.
    tags: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), server_default="{}")
    audience: Mapped[str] = mapped_column(sa.String(16))
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIMENSION))
    tsv: Mapped[str] = mapped_column(TSVECTOR, sa.Computed(TSVECTOR_EXPRESSION, persisted=True))
    # Why the chunk's text was flagged as instruction-like; the quarantine policy leaves flagged chunks out.
    flags: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), server_default="{}")

    __table_args__ = (
        sa.Index(
            "ix_kb_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            # ef_construction 400 (migration 0008): a better-connected graph for clustered help-center text.
            postgresql_with={"m": 16, "ef_construction": 400},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
        sa.Index("ix_kb_chunks_tsv", "tsv", postgresql_using="gin"),
        sa.Index("ix_kb_chunks_tags", "tags", postgresql_using="gin"),
    )


class LexemeRow(DefaultBase):
    """Document frequency of a lexeme over all chunks (BM25's idf)."""

    __tablename__ = "kb_lexemes"

    lexeme: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    df: Mapped[int] = mapped_column(sa.Integer)


class CorpusRow(DefaultBase):
    """The one row of corpus-wide BM25 statistics."""

    __tablename__ = "kb_corpus"
    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    chunks: Mapped[int] = mapped_column(sa.BigInteger)
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger)


class CustomerRow(DefaultBase):
    __tablename__ = "customers"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(sa.String(300), unique=True)
    name: Mapped[str | None] = mapped_column(sa.Text)
    email: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


CONVERSATION_STATUSES = "'bot', 'pending_human', 'human', 'resolved', 'closed'"


class ConversationRow(DefaultBase):
    __tablename__ = "conversations"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    customer_id: Mapped[UUID] = mapped_column(sa.ForeignKey("customers.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(sa.String(16))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONB, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    last_activity_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    reopened_count: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    closed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    feedback_rating: Mapped[int | None] = mapped_column(sa.SmallInteger)
    feedback_comment: Mapped[str | None] = mapped_column(sa.Text)
    feedback_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The decision that asked for a human ({action, reason_code, evidence, rule}); kept after the handoff ends.
    handoff: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    handoff_requested_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    handoff_summary: Mapped[str | None] = mapped_column(sa.Text)
    agent_id: Mapped[UUID | None] = mapped_column(sa.Uuid)
    agent_name: Mapped[str | None] = mapped_column(sa.Text)
    claimed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        sa.CheckConstraint(f"status IN ({CONVERSATION_STATUSES})", name="status_known"),
        sa.CheckConstraint("feedback_rating BETWEEN 1 AND 5", name="rating_range"),
        sa.Index("ix_conversations_customer_activity", "customer_id", sa.text("last_activity_at DESC")),
        sa.Index("ix_conversations_status_activity", "status", sa.text("last_activity_at DESC")),
        sa.Index("ix_conversations_activity", sa.text("last_activity_at DESC"), "id"),
        sa.Index(
            "ix_conversations_handoff_queue",
            "handoff_requested_at",
            "id",
            postgresql_where=sa.text("status IN ('pending_human', 'human')"),
        ),
    )


class MessageRow(DefaultBase):
    __tablename__ = "messages"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    # Insertion order: UUIDv7s made in the same millisecond don't sort by time, this does.
    seq: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(always=True), unique=True)
    conversation_id: Mapped[UUID] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(sa.String(16))
    content: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    reply_to: Mapped[list[UUID]] = mapped_column(ARRAY(sa.Uuid), server_default="{}")
    citations: Mapped[list[dict[str, object]]] = mapped_column(JSONB, server_default="[]")
    answer_status: Mapped[str | None] = mapped_column(sa.String(32))
    decision: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    usage: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    ttft_ms: Mapped[float | None] = mapped_column(sa.Float)
    total_ms: Mapped[float | None] = mapped_column(sa.Float)
    interrupted: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    author: Mapped[str | None] = mapped_column(sa.Text)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONB, server_default="{}")

    __table_args__ = (
        sa.CheckConstraint("role IN ('customer', 'assistant', 'agent', 'system')", name="role_known"),
        sa.Index("ix_messages_conversation_seq", "conversation_id", "seq"),
        sa.Index(
            "ux_messages_idempotency",
            "conversation_id",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
    )


class AttachmentRow(DefaultBase):
    __tablename__ = "attachments"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    conversation_id: Mapped[UUID] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    message_id: Mapped[UUID] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(sa.Text)
    content_type: Mapped[str] = mapped_column(sa.String(100))
    size: Mapped[int] = mapped_column(sa.Integer)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    text: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (sa.Index("ix_attachments_conversation", "conversation_id", sa.text("created_at DESC")),)


class WebhookRow(DefaultBase):
    __tablename__ = "webhooks"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    description: Mapped[str] = mapped_column(sa.Text, server_default="")
    event_types: Mapped[list[str]] = mapped_column(ARRAY(sa.Text))
    # Kept as is, not hashed: every delivery is signed with it (shown once; lists show the hint).
    secret: Mapped[str] = mapped_column(sa.Text)
    secret_hint: Mapped[str] = mapped_column(sa.String(16))
    active: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class WebhookEventRow(DefaultBase):
    """The outbox: events written in the transaction of the change they describe."""

    __tablename__ = "webhook_events"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(64))
    # Erasing a conversation (or its customer) erases its events, sent or not.
    conversation_id: Mapped[UUID | None] = mapped_column(
        sa.ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    data: Mapped[dict[str, object]] = mapped_column(JSONB, server_default="{}")


class WebhookDeliveryRow(DefaultBase):
    """One event for one endpoint: what the worker claims, and the history the API shows."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    event_id: Mapped[UUID] = mapped_column(sa.ForeignKey("webhook_events.id", ondelete="CASCADE"))
    webhook_id: Mapped[UUID] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(sa.SmallInteger)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # Attempts made before the latest redelivery: the retry budget counts the ones after it.
    attempts_before_redelivery: Mapped[int] = mapped_column(sa.Integer, server_default="0")

    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status_known"),
        # One delivery per event and endpoint (enqueueing twice is a no-op); also serves the cascade from events.
        sa.UniqueConstraint("event_id", "webhook_id"),
        sa.Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
        # What the worker scans: pending deliveries by due time.
        sa.Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=sa.text("status = 'pending'")),
        # What the retention sweep deletes: finished deliveries by their last attempt, oldest first.
        sa.Index("ix_webhook_deliveries_finished", "last_attempt_at", postgresql_where=sa.text("status <> 'pending'")),
        # What a claim reads per endpoint: its earliest pending deliveries (a few per endpoint and round).
        sa.Index(
            "ix_webhook_deliveries_pending_per_webhook",
            "webhook_id",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )


class MemoryRow(DefaultBase):
    """A remembered fact about a customer; superseded facts stay (audit) with ``superseded_by`` set."""

    __tablename__ = "customer_memories"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    customer_id: Mapped[UUID] = mapped_column(sa.ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(32))
    key: Mapped[str] = mapped_column(sa.String(100))
    value: Mapped[str] = mapped_column(sa.Text)
    confidence: Mapped[float] = mapped_column(sa.Float)
    origin: Mapped[str] = mapped_column(sa.String(16))
    # Provenance only: no foreign key, a fact outlives nothing of its customer (they are erased together).
    source_message_id: Mapped[UUID | None] = mapped_column(sa.Uuid)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The fact that replaced this one. No foreign key: forgetting the newer fact must not revive this one.
    superseded_by: Mapped[UUID | None] = mapped_column(sa.Uuid)
    # Recall ranks a customer's few current facts exactly (no ANN index needed for dozens of rows).
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIMENSION))

    __table_args__ = (
        sa.CheckConstraint("confidence BETWEEN 0 AND 1", name="confidence_range"),
        sa.CheckConstraint("origin IN ('pattern', 'model')", name="origin_known"),
        sa.Index("ix_customer_memories_customer", "customer_id", sa.text("created_at DESC"), sa.text("id DESC")),
        # One current value per key; the partial index also serves recall's filter.
        sa.Index(
            "ux_customer_memories_current",
            "customer_id",
            "key",
            unique=True,
            postgresql_where=sa.text("superseded_by IS NULL"),
        ),
    )


class SummaryRow(DefaultBase):
    """The rolling summary of a conversation's turns older than the history window."""

    __tablename__ = "conversation_summaries"

    conversation_id: Mapped[UUID] = mapped_column(
        sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    points: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), server_default="{}")
    mentions: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), server_default="{}")
    through_message_id: Mapped[UUID] = mapped_column(sa.Uuid)
    through_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    folded_messages: Mapped[int] = mapped_column(sa.Integer)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
