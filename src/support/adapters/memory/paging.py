"""Pages of in-memory lists ordered newest first by (a time, the id), as the PostgreSQL stores page them."""

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from support.domain.paging import TIME_ID_CURSOR

Item = TypeVar("Item")


def newest_first_page(
    items: Iterable[Item], position: Callable[[Item], tuple[datetime, UUID]], *, limit: int, cursor: str | None
) -> tuple[list[Item], str | None]:
    """The page of ``items`` after ``cursor``, newest first by ``position``, and the cursor of the next page.

    Raises:
        InvalidInputError: the cursor is not one this service issued.
    """
    ordered = sorted(items, key=position, reverse=True)
    if cursor:
        after = TIME_ID_CURSOR.decode(cursor)
        ordered = [item for item in ordered if position(item) < after]
    page = ordered[:limit]
    return page, TIME_ID_CURSOR.encode(position(page[-1])) if len(ordered) > limit else None
