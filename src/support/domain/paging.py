"""Page cursors: a list's position as an opaque, URL-safe token (unpadded base64url of a small binary record).

Clients are told not to parse cursors, so the record may change. A cursor is a position, not a credential: every list
applies the caller's filters first, so a forged but well-formed one only starts the page somewhere else.
"""

import base64
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from support.domain.errors import InvalidInputError
from support.domain.limits import microseconds

P = TypeVar("P")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Every cursor is at most a few dozen characters: anything longer is refused before it is decoded.
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class CursorCodec(Generic[P]):
    """Turns one kind of list position into a cursor and back.

    The record is ``tag`` then ``layout``'s fields; the tag keeps a cursor of one kind from being read as another.
    """

    tag: int
    layout: struct.Struct
    pack: Callable[[P], tuple[Any, ...]]
    unpack: Callable[..., P]

    def encode(self, position: P) -> str:
        """The cursor of ``position``: only ``A-Z a-z 0-9 _ -``, so it goes into a URL as it is."""
        return _text(self.layout.pack(self.tag, *self.pack(position)))

    def decode(self, cursor: str) -> P:
        """The position ``cursor`` stands for.

        Raises:
            InvalidInputError: the cursor is not one this codec issued (wrong alphabet, length, kind or values).
        """
        try:
            if not _CURSOR_TEXT.fullmatch(cursor):
                raise ValueError(cursor)
            record = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            tag, *fields = self.layout.unpack(record)
            # Only the one spelling we issue: base64 lets several texts decode to the same bytes.
            if tag != self.tag or _text(record) != cursor:
                raise ValueError(cursor)
            return self.unpack(*fields)
        except (ValueError, OverflowError, struct.error):
            raise InvalidInputError("The cursor is not valid.") from None


def _text(record: bytes) -> str:
    return base64.urlsafe_b64encode(record).rstrip(b"=").decode("ascii")


def _stamp(micros: int) -> datetime:
    """The inverse of :func:`support.domain.limits.microseconds`."""
    return _EPOCH + micros * _MICROSECOND


def _natural(value: int) -> int:
    if value < 0:
        raise ValueError(value)
    return value


TIME_ID_CURSOR: CursorCodec[tuple[datetime, UUID]] = CursorCodec(
    1,
    struct.Struct(">Bq16s"),
    lambda position: (microseconds(position[0]), position[1].bytes),
    lambda micros, raw: (_stamp(micros), UUID(bytes=raw)),
)
"""Lists ordered by (time, id): conversations, the handoff queue, customer memory, API keys, webhook endpoints."""

ID_CURSOR: CursorCodec[UUID] = CursorCodec(
    2, struct.Struct(">B16s"), lambda identifier: (identifier.bytes,), lambda raw: UUID(bytes=raw)
)
"""Lists ordered by a time-ordered (UUIDv7) id: knowledge documents, webhook deliveries."""

SEQ_CURSOR: CursorCodec[int] = CursorCodec(3, struct.Struct(">Bq"), lambda number: (number,), _natural)
"""Lists ordered by a non-negative sequence number: a conversation's messages."""


class Created(Protocol):
    """Anything listed by when it was created: API keys, webhook endpoints, memory facts."""

    @property
    def created_at(self) -> datetime:
        """When it was created."""
        ...

    @property
    def id(self) -> UUID:
        """Its id, which orders items created at the same time."""
        ...


def creation_position(item: Created) -> tuple[datetime, UUID]:
    """An item's place in a list ordered by creation, as ``TIME_ID_CURSOR`` encodes it."""
    return item.created_at, item.id
