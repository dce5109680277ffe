"""Webhook redeliveries and retention: the attempts made before a redelivery, an index of finished deliveries.

``attempts_before_redelivery`` lets a redelivered delivery have a fresh retry budget while ``attempts`` keeps
counting every attempt. ``ix_webhook_deliveries_finished`` serves the retention sweep, which deletes delivered and
failed deliveries by their last attempt, oldest first, in small batches: without it every batch would scan the
whole table. It is built concurrently, so deliveries keep being written during the upgrade.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_webhook_deliveries_finished"


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "webhook_deliveries",
        sa.Column("attempts_before_redelivery", sa.Integer(), server_default="0", nullable=False),
    )
    # CONCURRENTLY cannot run inside a transaction. A build that failed half-way leaves an invalid index behind,
    # which the first statement clears so the migration can simply be run again.
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY {_INDEX} ON webhook_deliveries (last_attempt_at) WHERE status <> 'pending'"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
    op.drop_column("webhook_deliveries", "attempts_before_redelivery")
