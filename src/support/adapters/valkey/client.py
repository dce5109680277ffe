from valkey.asyncio import Valkey
from valkey.backoff import ExponentialBackoff
from valkey.retry import Retry

from support.config import ValkeySettings


def create_client(url: str, settings: ValkeySettings) -> Valkey:
    client: Valkey = Valkey.from_url(
        url,
        max_connections=settings.max_connections,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        # A dropped connection (server restart) is retried briefly, then surfaces as an error we translate.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        health_check_interval=30,
    )
    return client
