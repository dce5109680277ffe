"""Erasing a conversation's hot state from Valkey: session cache, reply lease, event feed."""

from collections.abc import Sequence
from uuid import UUID

from valkey.asyncio import Valkey

from support.adapters.valkey.errors import cache_errors
from support.adapters.valkey.events import feed_keys
from support.adapters.valkey.rate_limits import RATE_KEYS
from support.domain.limits import conversation_partition


def conversation_keys(key_prefix: str, customer_id: UUID, conversation_id: UUID) -> list[str]:
    """Every key a customer's conversation has in Valkey (the session store, event bus and rate limiter name them so).

    The message limits are the API keys' count and the owner's (ValkeyRateLimiter). Another customer's count of
    a conversation they were refused is named by that customer's digest; it links to no one once the
    conversation is gone, and expires within its window.
    """
    return [
        f"{key_prefix}session:{conversation_id}",
        f"{key_prefix}reply-lease:{conversation_id}",
        *feed_keys(key_prefix, conversation_id),
        f"{key_prefix}{RATE_KEYS}{conversation_partition(conversation_id)}",
        f"{key_prefix}{RATE_KEYS}{conversation_partition(conversation_id, customer_id)}",
    ]


class ValkeyHotStateEraser:
    """Deletes the keys of conversations, one pipelined round trip per batch.

    The feed's pub/sub channel holds nothing (a published message is gone once delivered), so there is
    nothing to erase there.
    """

    _BATCH = 100

    def __init__(self, client: Valkey, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix

    async def erase(self, customer_id: UUID, conversation_ids: Sequence[UUID]) -> None:
        ids = list(conversation_ids)
        for start in range(0, len(ids), self._BATCH):
            # One DEL per key: keys of different conversations may live in different cluster slots.
            async with cache_errors(), self._client.pipeline(transaction=False) as pipe:
                for conversation_id in ids[start : start + self._BATCH]:
                    for key in conversation_keys(self._prefix, customer_id, conversation_id):
                        pipe.delete(key)
                await pipe.execute()
