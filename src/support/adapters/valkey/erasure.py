"""Erasing a conversation's hot state from Valkey: session cache, reply lease, event feed."""

from collections.abc import Sequence
from uuid import UUID

from valkey.asyncio import Valkey

from support.adapters.valkey.errors import cache_errors
from support.adapters.valkey.events import feed_keys, feed_tombstone
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


# How long an erased conversation's feed refuses publishes: far longer than any turn still running then can last
# (a turn waits at most SUPPORT_CONVERSATIONS__REPLY_WAIT_S for its lease, then streams one reply).
TOMBSTONE_TTL_S = 3600


class ValkeyHotStateEraser:
    """Deletes the keys of conversations, one pipelined round trip per batch.

    The feed's pub/sub channel holds nothing (a published message is gone once delivered), so there is
    nothing to erase there.
    """

    _BATCH = 100

    def __init__(self, client: Valkey, key_prefix: str, *, tombstone_ttl_s: int = TOMBSTONE_TTL_S) -> None:
        self._client = client
        self._prefix = key_prefix
        self._tombstone_ttl_s = tombstone_ttl_s

    async def erase(self, customer_id: UUID, conversation_ids: Sequence[UUID], *, gone: bool = False) -> None:
        ids = list(conversation_ids)
        for start in range(0, len(ids), self._BATCH):
            # One command per key: keys of different conversations may live in different cluster slots. A
            # conversation's tombstone is set before its feed is deleted, on the same connection and slot: a
            # publish that ran before it is deleted here, one that runs after it is refused (the publish script).
            async with cache_errors(), self._client.pipeline(transaction=False) as pipe:
                for conversation_id in ids[start : start + self._BATCH]:
                    if gone:
                        pipe.set(feed_tombstone(self._prefix, conversation_id), b"", ex=self._tombstone_ttl_s)
                    for key in conversation_keys(self._prefix, customer_id, conversation_id):
                        pipe.delete(key)
                await pipe.execute()
