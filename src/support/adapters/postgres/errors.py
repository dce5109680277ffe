"""Translate driver failures into port errors, so nothing from SQLAlchemy or asyncpg escapes an adapter."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
from advanced_alchemy.exceptions import AdvancedAlchemyError
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import SQLAlchemyError

from support.domain.errors import ConflictError, InvalidInputError
from support.ports.errors import StorageUnavailableError


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_conflict(error: BaseException) -> bool:
    # advanced-alchemy reports some driver failures (a closed connection among them) as its IntegrityError, so
    # the driver's own error decides: only a violated constraint is a conflict.
    return any(
        isinstance(cause, SAIntegrityError | asyncpg.IntegrityConstraintViolationError) for cause in _chain(error)
    )


def _is_unstorable_text(error: BaseException) -> bool:
    # PostgreSQL text cannot hold NUL (U+0000): the input is at fault, and retrying it can never succeed.
    unstorable = asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
    return any(isinstance(cause, unstorable) for cause in _chain(error))


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    try:
        yield
    except (SQLAlchemyError, AdvancedAlchemyError, asyncpg.PostgresError) as error:
        if _is_conflict(error):
            raise ConflictError("The change conflicts with existing data.") from error
        if _is_unstorable_text(error):
            raise InvalidInputError("Text must not contain NUL characters (U+0000).") from error
        raise StorageUnavailableError from error
    except (asyncpg.InterfaceError, OSError, TimeoutError) as error:
        raise StorageUnavailableError from error
