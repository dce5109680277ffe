"""Hot conversation state and the reply lease in Valkey."""

import logging
from uuid import UUID

import msgspec
from valkey.asyncio import Valkey

from support.adapters.valkey.errors import cache_errors
from support.ports.conversations import SessionState

_logger = logging.getLogger(__name__)

# msgspec encodes the domain's frozen dataclasses natively (UUID, aware datetime, StrEnum, tuples, mappings).
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SessionState)

# Taking the lease again as its holder refreshes it: a retried SET whose reply was lost must not lock us out.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _milliseconds(ttl_s: float) -> int:
    # PX takes whole milliseconds above zero; sub-millisecond TTLs round up rather than fail.
    return max(1, round(ttl_s * 1000))


class ValkeySessionStore:
    """Session state as msgspec JSON under ``<prefix>session:<id>``; the lease under ``<prefix>reply-lease:<id>``."""

    def __init__(self, client: Valkey, key_prefix: str) -> None:
        self._client = client
        self._state_prefix = key_prefix + "session:"
        self._lease_prefix = key_prefix + "reply-lease:"
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)

    async def load(self, conversation_id: UUID) -> SessionState | None:
        async with cache_errors():
            data: bytes | None = await self._client.get(self._state_prefix + str(conversation_id))
        if data is None:
            return None
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError:
            # Written by another version of the domain types: the state is rebuildable, so treat it as a miss.
            _logger.warning("discarding undecodable session state of conversation %s", conversation_id)
            return None

    async def save(self, state: SessionState, *, ttl_s: float) -> None:
        key = self._state_prefix + str(state.conversation.id)
        async with cache_errors():
            await self._client.set(key, _encoder.encode(state), px=_milliseconds(ttl_s))

    async def drop(self, conversation_id: UUID) -> None:
        async with cache_errors():
            await self._client.delete(self._state_prefix + str(conversation_id))

    async def acquire_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        key = self._lease_prefix + str(conversation_id)
        async with cache_errors():
            taken = await self._acquire(keys=[key], args=[holder, _milliseconds(ttl_s)])
        return bool(taken)

    async def extend_reply_lease(self, conversation_id: UUID, holder: str, *, ttl_s: float) -> bool:
        key = self._lease_prefix + str(conversation_id)
        async with cache_errors():
            extended = await self._extend(keys=[key], args=[holder, _milliseconds(ttl_s)])
        return bool(extended)

    async def release_reply_lease(self, conversation_id: UUID, holder: str) -> None:
        key = self._lease_prefix + str(conversation_id)
        async with cache_errors():
            await self._release(keys=[key], args=[holder])
