"""Which limits a request counts against, failing open, and the daily token budget around a send."""

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from support.adapters.memory.conversations import InMemoryAttachmentStore
from support.adapters.memory.rate_limits import InMemoryRateLimiter, InMemoryTokenBudget
from support.adapters.memory.system import FixedClock
from support.application.conversations import SendMessage
from support.application.limits import (
    CheckTokenBudget,
    EnforceRateLimits,
    RateLimitPolicies,
    SpendTokens,
    TokenBudgetPolicy,
)
from support.domain.conversations import ConversationStatus, MessageRole, TokenUsage
from support.domain.identity import Principal, Role
from support.domain.ids import new_id
from support.domain.limits import (
    RateCheck,
    RateDecision,
    RateLimitedError,
    RatePolicy,
    TokenBudgetExhaustedError,
    pseudonym,
)
from support.ports.errors import CacheUnavailableError
from tests.unit.application.conftest import SERVICE, World

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICIES = RateLimitPolicies(
    per_key=RatePolicy("api-key", 100, 60),
    per_customer=RatePolicy("customer", 2, 60),
    per_ip=RatePolicy("ip", 100, 60),
    per_conversation=RatePolicy("conversation", 100, 60),
)
KEY = Principal(role=Role.SERVICE, key_id=new_id(), name="backend")
BOOTSTRAP = Principal(role=Role.ADMIN, key_id=None, name="bootstrap admin")
CUSTOMER = Principal(role=Role.CUSTOMER, key_id=None, name="customer", customer_id=new_id())


class DownLimiter:
    """A limiter whose store is unreachable; counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def acquire(self, key: str, policy: RatePolicy) -> RateDecision:
        return (await self.acquire_all([RateCheck(key, policy)]))[0]

    async def acquire_all(self, checks: Sequence[RateCheck]) -> list[RateDecision]:  # noqa: ARG002
        self.calls += 1
        raise CacheUnavailableError


class DownBudget:
    async def spent(self, customer_id: UUID, day: object) -> int:  # noqa: ARG002
        raise CacheUnavailableError

    async def spend(self, customer_id: UUID, day: object, tokens: int) -> int:  # noqa: ARG002
        raise CacheUnavailableError


def test_each_kind_of_caller_is_counted_against_its_own_partitions() -> None:
    limits = EnforceRateLimits(InMemoryRateLimiter(FixedClock(NOON)), POLICIES, FixedClock(NOON))
    conversation = new_id()

    def keys(principal: Principal, **kwargs: object) -> list[str]:
        return [check.key for check in limits.checks(principal, **kwargs)]  # type: ignore[arg-type]

    assert keys(KEY, client="10.0.0.1") == [f"key:{KEY.key_id}"]  # API keys are not limited per address
    assert keys(BOOTSTRAP) == ["key:bootstrap"]
    assert CUSTOMER.customer_id is not None
    # Customers are keyed by a digest: Valkey never holds their id (erasure deletes what names them).
    assert keys(CUSTOMER, client="10.0.0.1") == [f"customer:{pseudonym(CUSTOMER.customer_id)}", "ip:10.0.0.1"]
    assert str(CUSTOMER.customer_id) not in keys(CUSTOMER)[0]
    # A customer's sends to a conversation count apart from the API keys': a customer refused the conversation
    # (another's) spends only their own count.
    assert (
        keys(CUSTOMER, client="10.0.0.1", conversation_id=conversation)[-1]
        == f"conversation:{conversation}:{pseudonym(CUSTOMER.customer_id)}"
    )
    assert keys(KEY, conversation_id=conversation) == [f"key:{KEY.key_id}", f"conversation:{conversation}"]
    off = EnforceRateLimits(InMemoryRateLimiter(FixedClock(NOON)), RateLimitPolicies(), FixedClock(NOON))
    assert off.checks(CUSTOMER, client="10.0.0.1", conversation_id=conversation) == []


async def test_a_refusal_carries_every_decision() -> None:
    clock = FixedClock(NOON)
    limits = EnforceRateLimits(InMemoryRateLimiter(clock), POLICIES, clock)
    await limits.execute(CUSTOMER, client="10.0.0.1")
    decisions = await limits.execute(CUSTOMER, client="10.0.0.1")
    assert [(item.policy.name, item.remaining) for item in decisions] == [("customer", 0), ("ip", 98)]
    with pytest.raises(RateLimitedError) as refused:
        await limits.execute(CUSTOMER, client="10.0.0.1")
    assert refused.value.retry_after_s == 30
    assert [item.allowed for item in refused.value.decisions] == [False, True]
    clock.advance(timedelta(seconds=30))
    assert await limits.execute(CUSTOMER, client="10.0.0.1")


async def test_limits_fail_open_warn_once_and_spare_a_down_store_for_a_while(caplog: pytest.LogCaptureFixture) -> None:
    clock, limiter = FixedClock(NOON), DownLimiter()
    limits = EnforceRateLimits(limiter, POLICIES, clock)
    with caplog.at_level(logging.WARNING, logger="support.application.limits"):
        assert await limits.execute(KEY) == []
        assert await limits.execute(KEY) == []
        assert limiter.calls == 1  # the second request did not wait on the store
        clock.advance(timedelta(seconds=6))
        assert await limits.execute(KEY) == []
        assert limiter.calls == 2
    assert len([record for record in caplog.records if "failing open" in record.getMessage()]) == 1
    clock.advance(timedelta(minutes=2))
    with caplog.at_level(logging.WARNING, logger="support.application.limits"):
        await limits.execute(KEY)
    assert len([record for record in caplog.records if "failing open" in record.getMessage()]) == 2


async def test_the_budget_refuses_until_utc_midnight_once_the_days_tokens_are_spent() -> None:
    clock, budget = FixedClock(datetime(2026, 3, 1, 23, 0, tzinfo=UTC)), InMemoryTokenBudget()
    policy = TokenBudgetPolicy(daily_tokens=1000)
    check, spend = CheckTokenBudget(budget, policy, clock), SpendTokens(budget, policy, clock)
    customer = new_id()

    await check.execute(customer)
    await spend.execute(customer, TokenUsage(input_tokens=600, output_tokens=300, cache_read_tokens=80))
    await check.execute(customer)  # 980 of 1000: the next turn may still run
    await spend.execute(customer, TokenUsage(input_tokens=10, output_tokens=5, cache_write_tokens=5))
    assert await budget.spent(customer, clock.now().date()) == 1000
    with pytest.raises(TokenBudgetExhaustedError) as refused:
        await check.execute(customer)
    assert refused.value.retry_after_s == 3600
    await check.execute(new_id())  # other customers are unaffected
    clock.advance(timedelta(hours=1))
    await check.execute(customer)  # a new UTC day


async def test_a_budget_of_zero_is_unlimited_and_costs_no_store_call() -> None:
    clock = FixedClock(NOON)
    policy = TokenBudgetPolicy(daily_tokens=0)
    await CheckTokenBudget(DownBudget(), policy, clock).execute(new_id())
    await SpendTokens(DownBudget(), policy, clock).execute(new_id(), TokenUsage(input_tokens=10**9))


async def test_the_budget_fails_open() -> None:
    clock = FixedClock(NOON)
    policy = TokenBudgetPolicy(daily_tokens=1)
    await CheckTokenBudget(DownBudget(), policy, clock).execute(new_id())
    await SpendTokens(DownBudget(), policy, clock).execute(new_id(), TokenUsage(input_tokens=5))


def budgeted_send(world: World, budget: InMemoryTokenBudget, daily_tokens: int) -> SendMessage:
    check = CheckTokenBudget(budget, TokenBudgetPolicy(daily_tokens=daily_tokens), world.clock)
    attachments = InMemoryAttachmentStore(world.repository)
    return SendMessage(
        world.repository,
        attachments,
        world.uow,
        world.clock,
        world.runner,
        world.limits,
        world.outbox,
        world.bus,
        world.sessions,
        check,
    )


async def test_a_message_over_the_budget_is_refused_before_it_is_stored(world: World) -> None:
    budget = InMemoryTokenBudget()
    await budget.spend(world.conversation.customer_id, world.clock.now().date(), 500)
    send = budgeted_send(world, budget, daily_tokens=500)
    commits, rollbacks = world.uow.commits, world.uow.rollbacks

    with pytest.raises(TokenBudgetExhaustedError):
        await send.execute(SERVICE, world.conversation.id, "where is my parcel?")

    # Nothing committed (the fake repository keeps rows regardless; tests/api checks the transcript on PostgreSQL).
    assert (world.uow.commits, world.uow.rollbacks) == (commits, rollbacks + 1)
    assert world.outbox.events == []
    await world.runner.drain()
    assert world.llm.requests == []


async def test_a_person_owned_conversation_takes_messages_whatever_the_budget(world: World) -> None:
    budget = InMemoryTokenBudget()
    await budget.spend(world.conversation.customer_id, world.clock.now().date(), 500)
    await world.request_handoff.execute(SERVICE, world.conversation.id, None)
    send = budgeted_send(world, budget, daily_tokens=500)

    result = await (await send.execute(SERVICE, world.conversation.id, "still there?")).result()

    assert result.conversation_status is ConversationStatus.PENDING_HUMAN
    stored = await world.repository.recent_messages(world.conversation.id, 10)
    assert [item.content for item in stored if item.role is MessageRole.CUSTOMER] == ["still there?"]
