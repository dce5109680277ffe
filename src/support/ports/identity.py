"""Ports for API keys."""

from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from support.domain.identity import ApiKey


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    """One page of keys, newest first, and the cursor of the next (None on the last)."""

    items: list[ApiKey]
    next_cursor: str | None


class ApiKeyRepository(Protocol):
    """Stores API keys by id and by the hash of their secret.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def add(self, key: ApiKey, secret_hash: str) -> None:
        """Store a new key; visible to others once the unit of work commits."""
        ...

    async def get(self, key_id: UUID) -> ApiKey | None:
        """The key with this id, revoked or not."""
        ...

    async def list_keys(self, *, limit: int, cursor: str | None) -> ApiKeyPage:
        """Keys, revoked ones included, newest first (by creation time, then id).

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def find_active_by_hash(self, secret_hash: str) -> ApiKey | None:
        """The unrevoked key whose secret hashes to this value."""
        ...

    async def save(self, key: ApiKey) -> None:
        """Persist changes to an existing key (its revocation)."""
        ...
