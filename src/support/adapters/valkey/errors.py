from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from valkey.exceptions import ValkeyError

from support.ports.errors import CacheUnavailableError


@asynccontextmanager
async def cache_errors() -> AsyncIterator[None]:
    try:
        yield
    except (ValkeyError, OSError, TimeoutError) as error:
        raise CacheUnavailableError from error
