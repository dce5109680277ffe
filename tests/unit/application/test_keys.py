from datetime import timedelta
from uuid import UUID

import pytest

from support.adapters.memory.api_keys import InMemoryApiKeyRepository
from support.adapters.memory.conversations import InMemoryConversationRepository
from support.adapters.memory.events import InMemoryEventBus
from support.adapters.memory.sessions import InMemorySessionStore
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.handoffs import RequeueAgentConversations
from support.application.keys import (
    AuthenticateApiKey,
    BootstrapAdminKey,
    CreateApiKey,
    CustomerTokenSecret,
    ListApiKeys,
    RevokeApiKey,
)
from support.domain.errors import ApiKeyNotFoundError, AuthenticationError, InvalidInputError
from support.domain.identity import Role, issue_customer_token
from support.domain.ids import new_id
from tests.fakes.outbox import RecordingOutbox

SECRET = CustomerTokenSecret("token-secret")


@pytest.fixture
def keys() -> InMemoryApiKeyRepository:
    return InMemoryApiKeyRepository()


def revoke_with(keys: InMemoryApiKeyRepository, uow: InMemoryUnitOfWork, clock: FixedClock) -> RevokeApiKey:
    """Revocation over an empty conversation store (the requeue of an agent's conversations: test_handoffs)."""
    requeue = RequeueAgentConversations(
        InMemoryConversationRepository(),
        uow,
        clock,
        InMemoryEventBus(retention=100),
        InMemorySessionStore(),
        RecordingOutbox(),
    )
    return RevokeApiKey(keys, uow, clock, requeue)


async def test_created_key_authenticates_as_its_role_and_is_committed(keys: InMemoryApiKeyRepository) -> None:
    uow, clock = InMemoryUnitOfWork(), FixedClock()
    issued = await CreateApiKey(keys, uow, clock).execute("  support bot  ", Role.SERVICE)
    assert uow.commits == 1
    assert issued.key.name == "support bot"
    assert issued.key.created_at == clock.now()
    principal = await AuthenticateApiKey(keys, None, SECRET, FixedClock()).execute(issued.secret)
    assert (principal.role, principal.key_id) == (Role.SERVICE, issued.key.id)


async def test_revoked_key_fails_authentication(keys: InMemoryApiKeyRepository) -> None:
    uow, clock = InMemoryUnitOfWork(), FixedClock()
    issued = await CreateApiKey(keys, uow, clock).execute("temp", Role.AGENT)
    revoked = await revoke_with(keys, uow, clock).execute(issued.key.id)
    assert revoked.revoked_at == clock.now()
    with pytest.raises(AuthenticationError):
        await AuthenticateApiKey(keys, None, SECRET, FixedClock()).execute(issued.secret)
    assert [key.is_active for key in (await ListApiKeys(keys).execute()).items] == [False]


async def test_revoking_twice_keeps_the_first_revocation_time(keys: InMemoryApiKeyRepository) -> None:
    uow, clock = InMemoryUnitOfWork(), FixedClock()
    issued = await CreateApiKey(keys, uow, clock).execute("temp", Role.AGENT)
    first = await revoke_with(keys, uow, clock).execute(issued.key.id)
    clock.advance(timedelta(hours=1))
    second = await revoke_with(keys, uow, clock).execute(issued.key.id)
    assert second.revoked_at == first.revoked_at
    assert uow.commits == 2


async def test_revoking_an_unknown_key_fails(keys: InMemoryApiKeyRepository) -> None:
    with pytest.raises(ApiKeyNotFoundError):
        await revoke_with(keys, InMemoryUnitOfWork(), FixedClock()).execute(
            UUID("01890a5d-ac96-774b-bcce-b302099a8057")
        )


async def test_bootstrap_key_is_an_admin_without_a_stored_row(keys: InMemoryApiKeyRepository) -> None:
    authenticate = AuthenticateApiKey(keys, BootstrapAdminKey("let-me-in"), SECRET, FixedClock())
    principal = await authenticate.execute("let-me-in")
    assert principal.role is Role.ADMIN
    assert principal.is_bootstrap
    with pytest.raises(AuthenticationError):
        await authenticate.execute("let-me-inn")


@pytest.mark.parametrize("name", ["", "   ", "x" * 201], ids=["empty", "blank", "too-long"])
async def test_key_names_are_validated(keys: InMemoryApiKeyRepository, name: str) -> None:
    uow = InMemoryUnitOfWork()
    with pytest.raises(InvalidInputError):
        await CreateApiKey(keys, uow, FixedClock()).execute(name, Role.ADMIN)
    assert uow.commits == 0


async def test_customer_tokens_authenticate_as_their_customer_and_keys_cannot_be_customers(
    keys: InMemoryApiKeyRepository,
) -> None:
    clock = FixedClock()
    customer = new_id()
    token = issue_customer_token(customer, clock.now() + timedelta(minutes=5), SECRET)
    authenticate = AuthenticateApiKey(keys, None, SECRET, clock)

    principal = await authenticate.execute(token)

    assert (principal.role, principal.customer_id) == (Role.CUSTOMER, customer)
    clock.advance(timedelta(minutes=6))
    with pytest.raises(AuthenticationError):
        await authenticate.execute(token)
    with pytest.raises(InvalidInputError):
        await CreateApiKey(keys, InMemoryUnitOfWork(), clock).execute("browser", Role.CUSTOMER)
