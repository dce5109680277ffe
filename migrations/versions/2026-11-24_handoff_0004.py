"""Handoff: the current handoff decision, queue time, the agent's summary and the owning agent.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("handoff", postgresql.JSONB(), nullable=True))
    op.add_column("conversations", sa.Column("handoff_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("conversations", sa.Column("handoff_summary", sa.Text(), nullable=True))
    op.add_column("conversations", sa.Column("agent_id", sa.Uuid(), nullable=True))
    op.add_column("conversations", sa.Column("agent_name", sa.Text(), nullable=True))
    op.add_column("conversations", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    # The agents' queue: conversations waiting for or owned by a human, oldest request first.
    op.create_index(
        "ix_conversations_handoff_queue",
        "conversations",
        ["handoff_requested_at", "id"],
        postgresql_where=sa.text("status IN ('pending_human', 'human')"),
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_handoff_queue", table_name="conversations")
    for column in ("claimed_at", "agent_name", "agent_id", "handoff_summary", "handoff_requested_at", "handoff"):
        op.drop_column("conversations", column)
