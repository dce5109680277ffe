"""Use cases for API keys."""

import dataclasses
from dataclasses import dataclass
from typing import NewType, Protocol
from uuid import UUID

from support.domain.conversations import AgentRef
from support.domain.errors import ApiKeyNotFoundError, AuthenticationError, InvalidInputError
from support.domain.identity import (
    CUSTOMER_TOKEN_PREFIX,
    KEY_ROLES,
    ApiKey,
    Principal,
    Role,
    generate_secret,
    hash_secret,
    read_customer_token,
    secret_hint,
    secrets_match,
)
from support.domain.ids import new_id
from support.ports.identity import ApiKeyPage, ApiKeyRepository
from support.ports.system import Clock, UnitOfWork

# The configured bootstrap admin secret, or None; a distinct type so the container can inject it.
BootstrapAdminKey = NewType("BootstrapAdminKey", str)
# The HMAC key customer tokens are signed with.
CustomerTokenSecret = NewType("CustomerTokenSecret", str)

MAX_KEY_NAME_LENGTH = 200
MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A newly created key together with its secret, which is never available again."""

    key: ApiKey
    secret: str


class CreateApiKey:
    """Issue a new API key with a role; only the hash of its secret is stored."""

    def __init__(self, keys: ApiKeyRepository, uow: UnitOfWork, clock: Clock) -> None:
        self._keys = keys
        self._uow = uow
        self._clock = clock

    async def execute(self, name: str, role: Role) -> IssuedApiKey:
        """Create and commit the key; return it with its one-time secret."""
        name = name.strip()
        if not name:
            raise InvalidInputError("A key needs a non-empty name.")
        if len(name) > MAX_KEY_NAME_LENGTH:
            raise InvalidInputError(f"A key name has at most {MAX_KEY_NAME_LENGTH} characters.")
        if role not in KEY_ROLES:
            raise InvalidInputError("API keys have the role admin, agent or service; customers get tokens.")
        secret = generate_secret()
        key = ApiKey(id=new_id(), name=name, role=role, hint=secret_hint(secret), created_at=self._clock.now())
        await self._keys.add(key, hash_secret(secret))
        await self._uow.commit()
        return IssuedApiKey(key=key, secret=secret)


class ListApiKeys:
    """List the keys, revoked ones included, newest first, a page at a time (secrets are never listed)."""

    def __init__(self, keys: ApiKeyRepository) -> None:
        self._keys = keys

    async def execute(self, *, limit: int = 50, cursor: str | None = None) -> ApiKeyPage:
        """Return one page.

        Raises:
            InvalidInputError: the cursor is not valid.
        """
        return await self._keys.list_keys(limit=min(max(limit, 1), MAX_PAGE_SIZE), cursor=cursor)


class ClaimedConversations(Protocol):
    """Gives back the conversations an agent had claimed (``handoffs.RequeueAgentConversations``).

    A protocol here because the handoff use cases already depend on this module (customer tokens).
    """

    async def execute(self, agent: AgentRef, batch: int = ...) -> int:
        """Give back one batch of ``agent``'s claimed conversations; return how many."""
        ...


class RevokeApiKey:
    """Revoke a key: it stops working at once. Revoking twice is harmless.

    An agent's claimed conversations go back to the queue for the other agents (they could not take them over).
    """

    def __init__(self, keys: ApiKeyRepository, uow: UnitOfWork, clock: Clock, requeue: ClaimedConversations) -> None:
        self._keys = keys
        self._uow = uow
        self._clock = clock
        self._requeue = requeue

    async def execute(self, key_id: UUID) -> ApiKey:
        """Revoke and return the key.

        Raises:
            ApiKeyNotFoundError: no key has this id.
        """
        key = await self._keys.get(key_id)
        if key is None:
            raise ApiKeyNotFoundError
        if key.revoked_at is None:
            key = dataclasses.replace(key, revoked_at=self._clock.now())
            await self._keys.save(key)
            await self._uow.commit()
        if key.role in {Role.AGENT, Role.ADMIN}:
            # Also on a repeated revoke: one that failed after its commit left them with the revoked agent.
            agent = AgentRef(key.id, key.name)
            while await self._requeue.execute(agent):
                pass
        return key


class AuthenticateApiKey:
    """Resolve a presented secret to the principal it stands for.

    The configured bootstrap admin key is accepted as an admin without a stored row (first start, demos).
    """

    def __init__(
        self,
        keys: ApiKeyRepository,
        bootstrap_admin_key: BootstrapAdminKey | None,
        token_secret: CustomerTokenSecret,
        clock: Clock,
    ) -> None:
        self._keys = keys
        self._bootstrap = bootstrap_admin_key
        self._token_secret = token_secret
        self._clock = clock

    async def execute(self, secret: str) -> Principal:
        """Return the principal.

        Raises:
            AuthenticationError: the secret is unknown or revoked.
        """
        if self._bootstrap and secrets_match(secret, self._bootstrap):
            return Principal(role=Role.ADMIN, key_id=None, name="bootstrap admin")
        if secret.startswith(CUSTOMER_TOKEN_PREFIX):
            # Stateless: no database read, so a customer's stream starts without a round trip.
            customer_id = read_customer_token(secret, self._token_secret, self._clock.now())
            if customer_id is None:
                raise AuthenticationError("The customer token is invalid or has expired.")
            return Principal(role=Role.CUSTOMER, key_id=None, name="customer", customer_id=customer_id)
        key = await self._keys.find_active_by_hash(hash_secret(secret))
        if key is None:
            raise AuthenticationError("The API key is unknown or has been revoked.")
        return Principal(role=key.role, key_id=key.id, name=key.name)
