"""Rate limits and token budgets in process memory: for tests and single-process setups without Valkey."""

from collections.abc import Sequence
from datetime import date
from uuid import UUID

from support.domain.limits import RateCheck, RateDecision, RatePolicy, acquire_all, microseconds
from support.ports.system import Clock


class InMemoryRateLimiter:
    """GCRA over a dict of theoretical arrival times; expired entries are dropped as they are met."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}

    async def acquire(self, key: str, policy: RatePolicy) -> RateDecision:
        return (await self.acquire_all([RateCheck(key, policy)]))[0]

    async def acquire_all(self, checks: Sequence[RateCheck]) -> list[RateDecision]:
        now = microseconds(self._clock.now())
        stored: list[int | None] = []
        for check in checks:
            tat = self._tats.get(check.key)
            if tat is not None and tat <= now:
                # A TAT in the past means a full quota, exactly like no entry (Valkey lets such keys expire).
                del self._tats[check.key]
                tat = None
            stored.append(tat)
        after, decisions = acquire_all(stored, now, [check.policy for check in checks])
        for check, tat in zip(checks, after, strict=True):
            if tat is not None:
                self._tats[check.key] = tat
        return decisions


class InMemoryTokenBudget:
    """Per-customer, per-day counters in a dict."""

    def __init__(self) -> None:
        self._spent: dict[tuple[UUID, date], int] = {}
        self._latest: date | None = None

    async def spent(self, customer_id: UUID, day: date) -> int:
        return self._spent.get((customer_id, day), 0)

    async def spend(self, customer_id: UUID, day: date, tokens: int) -> int:
        if self._latest is None or day > self._latest:
            # Earlier days are never read again: drop them so a long-lived process does not grow without bound.
            self._spent = {entry: count for entry, count in self._spent.items() if entry[1] >= day}
            self._latest = day
        total = self._spent.get((customer_id, day), 0) + tokens
        self._spent[(customer_id, day)] = total
        return total
