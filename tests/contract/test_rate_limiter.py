"""The rate limiter and token budget contracts, checked against Valkey and the in-memory fakes.

Time is a fixed clock moved by the tests: no sleeping. The Valkey limiter must decide exactly what the in-memory
one decides (they share the arithmetic in support.domain.limits; the Lua script repeats its admission test).
"""

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from valkey.asyncio import Valkey

from support.adapters.memory.rate_limits import InMemoryRateLimiter, InMemoryTokenBudget
from support.adapters.memory.system import FixedClock
from support.adapters.valkey.rate_limits import ValkeyRateLimiter, ValkeyTokenBudget
from support.domain.ids import new_id
from support.domain.limits import RateCheck, RatePolicy
from support.ports.limits import RateLimiter, TokenBudget

BACKENDS = ["memory", pytest.param("valkey", marks=pytest.mark.valkey)]
PER_MINUTE = RatePolicy("customer", limit=3, window_s=60)
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def memory_limiter(clock: FixedClock) -> RateLimiter:
    return InMemoryRateLimiter(clock)


@pytest.fixture
def valkey_limiter(valkey: Valkey, clock: FixedClock) -> RateLimiter:
    return ValkeyRateLimiter(valkey, "test:", clock)


@pytest.fixture(params=BACKENDS)
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    result: RateLimiter = request.getfixturevalue(f"{request.param}_limiter")
    return result


@pytest.fixture
def memory_budget() -> TokenBudget:
    return InMemoryTokenBudget()


@pytest.fixture
def valkey_budget(valkey: Valkey) -> TokenBudget:
    return ValkeyTokenBudget(valkey, "test:")


@pytest.fixture(params=BACKENDS)
def budget(request: pytest.FixtureRequest) -> TokenBudget:
    result: TokenBudget = request.getfixturevalue(f"{request.param}_budget")
    return result


async def test_a_key_admits_its_quota_then_refuses_with_the_time_to_wait(limiter: RateLimiter) -> None:
    decisions = [await limiter.acquire("customer:a", PER_MINUTE) for _ in range(4)]
    assert [(item.allowed, item.remaining) for item in decisions] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    assert [item.retry_after_s for item in decisions] == [0, 0, 0, 20]
    assert all(item.limit == 3 and item.reset_s == 20 for item in decisions)


async def test_units_accrue_with_time(limiter: RateLimiter, clock: FixedClock) -> None:
    for _ in range(3):
        await limiter.acquire("customer:a", PER_MINUTE)
    clock.advance(timedelta(seconds=19, microseconds=999_999))
    assert not (await limiter.acquire("customer:a", PER_MINUTE)).allowed
    clock.advance(timedelta(microseconds=1))
    assert (await limiter.acquire("customer:a", PER_MINUTE)).allowed
    clock.advance(timedelta(minutes=5))
    # Long quiet: the whole quota again, never more.
    assert [(await limiter.acquire("customer:a", PER_MINUTE)).allowed for _ in range(4)] == [True] * 3 + [False]


async def test_keys_are_counted_apart(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.acquire("customer:a", PER_MINUTE)
    assert not (await limiter.acquire("customer:a", PER_MINUTE)).allowed
    assert (await limiter.acquire("customer:b", PER_MINUTE)).remaining == 2


async def test_several_keys_are_taken_together_or_not_at_all(limiter: RateLimiter) -> None:
    roomy = RatePolicy("ip", limit=10, window_s=60)
    tight = RatePolicy("conversation", limit=1, window_s=60)
    checks = [RateCheck("ip:1", roomy), RateCheck("conversation:c", tight)]
    first = await limiter.acquire_all(checks)
    assert [item.allowed for item in first] == [True, True]
    refused = await limiter.acquire_all(checks)
    assert [item.allowed for item in refused] == [True, False]
    assert refused[0].remaining == 9  # the refused request did not cost the address a unit
    assert refused[1].retry_after_s == 60
    assert (await limiter.acquire("ip:1", roomy)).remaining == 8
    assert await limiter.acquire_all([]) == []


async def test_concurrent_callers_never_share_the_last_unit(limiter: RateLimiter) -> None:
    policy = RatePolicy("api-key", limit=5, window_s=60)
    results = await asyncio.gather(*(limiter.acquire("key:k", policy) for _ in range(20)))
    assert sum(item.allowed for item in results) == 5


async def test_valkey_keys_expire_once_their_quota_is_full_again(valkey: Valkey, clock: FixedClock) -> None:
    limiter = ValkeyRateLimiter(valkey, "test:", clock)
    await limiter.acquire("customer:a", PER_MINUTE)
    ttl_ms = await valkey.pttl("test:rate:customer:a")
    # One request puts the TAT one interval (20 s) ahead: the state is worth keeping that long and no longer.
    assert 19_000 < ttl_ms <= 20_000


async def test_budget_counts_per_customer_and_day(budget: TokenBudget) -> None:
    alice, bob = new_id(), new_id()
    today, tomorrow = date(2026, 3, 1), date(2026, 3, 2)
    assert await budget.spent(alice, today) == 0
    assert await budget.spend(alice, today, 120) == 120
    assert await budget.spend(alice, today, 30) == 150
    assert await budget.spent(alice, today) == 150
    assert await budget.spent(bob, today) == 0
    assert await budget.spent(alice, tomorrow) == 0
    assert await budget.spend(alice, tomorrow, 5) == 5


async def test_concurrent_spends_all_count(budget: TokenBudget) -> None:
    customer, day = new_id(), date(2026, 3, 1)
    await asyncio.gather(*(budget.spend(customer, day, 10) for _ in range(25)))
    assert await budget.spent(customer, day) == 250


async def test_valkey_budget_keys_expire_after_their_day(valkey: Valkey) -> None:
    budget = ValkeyTokenBudget(valkey, "test:")
    customer, day = new_id(), date(2026, 3, 1)
    await budget.spend(customer, day, 10)
    [key] = [key async for key in valkey.scan_iter(match="test:tokens:*")]
    assert str(customer).encode() not in key  # counters name customers by a digest, never by their id
    assert key.endswith(b":2026-03-01")
    ttl_s = await valkey.ttl(key)
    # Written during its day: the count outlives the rest of the day, then goes.
    assert 24 * 3600 < ttl_s <= 2 * 24 * 3600
