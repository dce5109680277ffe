from uuid import UUID

from support.adapters.memory.paging import newest_first_page
from support.domain.errors import ConflictError
from support.domain.identity import ApiKey
from support.domain.paging import creation_position
from support.ports.identity import ApiKeyPage


class InMemoryApiKeyRepository:
    def __init__(self) -> None:
        self._keys: dict[UUID, ApiKey] = {}
        self._hashes: dict[str, UUID] = {}

    async def add(self, key: ApiKey, secret_hash: str) -> None:
        if key.id in self._keys or secret_hash in self._hashes:
            raise ConflictError("The change conflicts with existing data.")
        self._keys[key.id] = key
        self._hashes[secret_hash] = key.id

    async def get(self, key_id: UUID) -> ApiKey | None:
        return self._keys.get(key_id)

    async def list_keys(self, *, limit: int, cursor: str | None) -> ApiKeyPage:
        page, next_cursor = newest_first_page(self._keys.values(), creation_position, limit=limit, cursor=cursor)
        return ApiKeyPage(items=page, next_cursor=next_cursor)

    async def find_active_by_hash(self, secret_hash: str) -> ApiKey | None:
        key_id = self._hashes.get(secret_hash)
        key = None if key_id is None else self._keys[key_id]
        return key if key is not None and key.is_active else None

    async def save(self, key: ApiKey) -> None:
        self._keys[key.id] = key
