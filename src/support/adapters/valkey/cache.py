from valkey.asyncio import Valkey

from support.adapters.valkey.errors import cache_errors


class ValkeyCache:
    def __init__(self, client: Valkey, prefix: str) -> None:
        self._client = client
        self._prefix = prefix + "cache:"

    async def get(self, key: str) -> bytes | None:
        async with cache_errors():
            value: bytes | None = await self._client.get(self._prefix + key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        async with cache_errors():
            await self._client.set(self._prefix + key, value, ex=ttl_seconds)
