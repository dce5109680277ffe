"""Who is calling: API keys with roles, and the principal a request acts as."""

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
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
    # Held by customer tokens only, never by an API key.
    CUSTOMER = "customer"


KEY_ROLES = (Role.ADMIN, Role.AGENT, Role.SERVICE)
CUSTOMER_TOKEN_PREFIX = "ct_"  # noqa: S105 - a public prefix, not a secret


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
    # Set for customer tokens: the only customer whose conversations this principal may use.
    customer_id: UUID | None = None

    @property
    def is_bootstrap(self) -> bool:
        """The configured bootstrap admin key has no stored row."""
        return self.key_id is None and self.role is Role.ADMIN

    @property
    def is_customer(self) -> bool:
        """A customer's browser, limited to that customer's conversations."""
        return self.role is Role.CUSTOMER


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_customer_token(customer_id: UUID, expires_at: datetime, secret: str) -> str:
    """A signed, expiring token that stands for one customer (HMAC-SHA256 over the claims)."""
    claims = json.dumps({"sub": str(customer_id), "exp": int(expires_at.timestamp())}, separators=(",", ":"))
    body = _b64(claims.encode())
    signature = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return f"{CUSTOMER_TOKEN_PREFIX}{body}.{_b64(signature)}"


def read_customer_token(token: str, secret: str, now: datetime) -> UUID | None:
    """The customer a token stands for; None when it is malformed, forged or expired."""
    if not token.startswith(CUSTOMER_TOKEN_PREFIX):
        return None
    body, _, signature = token[len(CUSTOMER_TOKEN_PREFIX) :].partition(".")
    try:
        expected = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(signature)):
            return None
        claims = json.loads(_unb64(body))
        expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
        customer_id = UUID(str(claims["sub"]))
    except (ValueError, KeyError, TypeError):
        return None
    return customer_id if now < expires_at else None
