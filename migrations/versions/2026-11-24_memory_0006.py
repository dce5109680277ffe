"""Customer memory: remembered facts (with embeddings, superseded kept for audit) and conversation summaries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDING_DIMENSION = 384


def upgrade() -> None:
    op.create_table(
        "customer_memories",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("source_message_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.Uuid(), nullable=True),
        sa.Column("embedding", VECTOR(EMBEDDING_DIMENSION), nullable=False),
        sa.CheckConstraint("confidence BETWEEN 0 AND 1", name=op.f("ck_customer_memories_confidence_range")),
        sa.CheckConstraint("origin IN ('pattern', 'model')", name=op.f("ck_customer_memories_origin_known")),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_memories_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_memories")),
    )
    op.create_index(
        "ix_customer_memories_customer",
        "customer_memories",
        ["customer_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ux_customer_memories_current",
        "customer_memories",
        ["customer_id", "key"],
        unique=True,
        postgresql_where=sa.text("superseded_by IS NULL"),
    )
    op.create_table(
        "conversation_summaries",
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("points", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("mentions", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("through_message_id", sa.Uuid(), nullable=False),
        sa.Column("through_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("folded_messages", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_summaries_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_conversation_summaries")),
    )


def downgrade() -> None:
    op.drop_table("conversation_summaries")
    op.drop_index("ux_customer_memories_current", table_name="customer_memories")
    op.drop_index("ix_customer_memories_customer", table_name="customer_memories")
    op.drop_table("customer_memories")
