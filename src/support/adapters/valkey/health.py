from valkey.asyncio import Valkey

from support.adapters.valkey.errors import cache_errors


class ValkeyHealthProbe:
    name = "valkey"

    def __init__(self, client: Valkey) -> None:
        self._client = client

    async def check(self) -> None:
        async with cache_errors():
            await self._client.ping()
