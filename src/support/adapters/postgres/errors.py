"""Translate driver failures into port errors, so nothing from SQLAlchemy or asyncpg escapes an adapter."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from advanced_alchemy.exceptions import AdvancedAlchemyError, DuplicateKeyError, IntegrityError
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import SQLAlchemyError

from support.domain.errors import ConflictError
from support.ports.errors import StorageUnavailableError


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    try:
        yield
    except (DuplicateKeyError, IntegrityError, SAIntegrityError) as error:
        raise ConflictError("The change conflicts with existing data.") from error
    except (SQLAlchemyError, AdvancedAlchemyError, asyncpg.PostgresError, OSError, TimeoutError) as error:
        raise StorageUnavailableError from error
