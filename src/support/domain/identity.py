"""Who is calling: API keys with roles, and the principal a request acts as."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

SECRET_PREFIX = "sk_"  # noqa: S105 - a public prefix, not a secret
# 32 random bytes: high-entropy secrets make a fast hash (SHA-256) as safe as a slow one, and lookups O(1).
SECRET_BYTES = 32


class Role(StrEnum):
    """What an API key may do."""

    ADMIN = "admin"
    AGENT = "agent"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key; the secret itself is never kept, only its hash."""

    id: UUID
    name: str
    role: Role
    # The first characters of the secret, so people can tell their keys apart in lists.
    hint: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        """A key works until it is revoked."""
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a request."""

    role: Role
    key_id: UUID | None
    name: str

    @property
    def is_bootstrap(self) -> bool:
        """The configured bootstrap admin key has no stored row."""
        return self.key_id is None


def generate_secret() -> str:
    """A new API key secret (shown to its owner once)."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_hint(secret: str) -> str:
    """The displayable beginning of a secret."""
    return secret[: len(SECRET_PREFIX) + 6]


def secrets_match(presented: str, expected: str) -> bool:
    """Constant-time comparison, for secrets compared directly (the bootstrap admin key)."""
    return hmac.compare_digest(presented.encode(), expected.encode())
