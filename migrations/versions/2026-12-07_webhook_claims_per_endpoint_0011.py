"""An index of each endpoint's pending deliveries by due time, for claims that take a few per endpoint.

The delivery worker claims at most ``webhooks.per_endpoint`` due deliveries of each endpoint per round, so the
backlog of a slow or dead receiver cannot fill a round. The claim reads each active endpoint's earliest due
deliveries; ``ix_webhook_deliveries_pending_per_webhook`` serves that read without sorting the whole backlog.
Built concurrently, so deliveries keep being written during the upgrade.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_webhook_deliveries_pending_per_webhook"


def upgrade() -> None:
    # CONCURRENTLY cannot run inside a transaction; a build that failed half-way leaves an invalid index behind,
    # which the first statement clears so the migration can simply be run again.
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY {_INDEX} ON webhook_deliveries (webhook_id, next_attempt_at) "
            "WHERE status = 'pending'"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
