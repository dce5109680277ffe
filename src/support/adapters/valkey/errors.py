from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from valkey.exceptions import ValkeyError

from support.ports.errors import CacheUnavailableError


@asynccontextmanager
async def cache_errors() -> AsyncIterator[None]:
    try:
        yield
    # RedisError: the job queue (SAQ) speaks to Valkey through redis-py, whose errors are neither Valkey's nor
    # OSError: a bulk upload or a job's status while Valkey was down answered 500 (found by an exploratory test).
    except (ValkeyError, RedisError, OSError, TimeoutError) as error:
        raise CacheUnavailableError from error
