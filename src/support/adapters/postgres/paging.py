"""Keyset pages of lists ordered newest first by (a time, the id): one statement shape for every such list."""

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

from support.domain.paging import TIME_ID_CURSOR

Item = TypeVar("Item")
Select = TypeVar("Select", bound=sa.Select[Any])


def newest_first(
    statement: Select,
    stamp: sa.ColumnElement[datetime] | InstrumentedAttribute[datetime],
    identifier: sa.ColumnElement[UUID] | InstrumentedAttribute[UUID],
    *,
    limit: int,
    cursor: str | None,
) -> Select:
    """``statement`` narrowed to the rows after ``cursor``, newest first, one row more than ``limit``.

    The extra row tells whether another page follows (:func:`page_cursor`).

    Raises:
        InvalidInputError: the cursor is not one this service issued.
    """
    if cursor:
        after_stamp, after_id = TIME_ID_CURSOR.decode(cursor)
        statement = statement.where(
            sa.tuple_(stamp, identifier) < sa.tuple_(sa.literal(after_stamp), sa.literal(after_id))
        )
    return statement.order_by(stamp.desc(), identifier.desc()).limit(limit + 1)


def page_cursor(items: Sequence[Item], position: Callable[[Item], tuple[datetime, UUID]], *, more: bool) -> str | None:
    """The cursor of the page after ``items``; None on the last page (``more``: the statement's extra row came)."""
    return TIME_ID_CURSOR.encode(position(items[-1])) if more else None
