"""ORM rows. No row crosses a port: adapters map them to domain dataclasses."""

from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from advanced_alchemy.base import DefaultBase
from sqlalchemy.orm import Mapped, mapped_column

metadata = DefaultBase.metadata


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
