from valkey.asyncio import BlockingConnectionPool, Valkey
from valkey.backoff import ExponentialBackoff
from valkey.retry import Retry

from support.config import ValkeySettings


def create_client(url: str, settings: ValkeySettings) -> Valkey:
    """A client whose pool makes callers wait for a free connection under bursts instead of failing at once."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        # A dropped connection (server restart) is retried briefly, then surfaces as an error we translate.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        health_check_interval=30,
    )
    # from_pool: closing the client closes the pool too.
    return Valkey.from_pool(pool)
