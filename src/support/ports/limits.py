"""Ports for rate limits and the daily token budget, both kept where every API process sees the same counts."""

from collections.abc import Sequence
from datetime import date
from typing import Protocol
from uuid import UUID

from support.domain.limits import RateCheck, RateDecision, RatePolicy


class RateLimiter(Protocol):
    """Counts requests per key under GCRA policies (``support.domain.limits`` holds the arithmetic).

    Time comes from the adapter's clock, so tests move it instead of sleeping.

    Raises (every method):
        CacheUnavailableError: the store cannot be reached (callers decide whether to fail open).
    """

    async def acquire(self, key: str, policy: RatePolicy) -> RateDecision:
        """Take one unit from ``key`` if it has room; the decision says whether it had."""
        ...

    async def acquire_all(self, checks: Sequence[RateCheck]) -> list[RateDecision]:
        """Take one unit from every key at once, or from none when any of them is out of room.

        One decision per check, in order; a refused request leaves every key as it was. Atomic: concurrent callers
        never both take the last unit.
        """
        ...


class TokenBudget(Protocol):
    """Model tokens spent per customer and UTC day (the limit itself is the caller's policy).

    Raises (every method):
        CacheUnavailableError: the store cannot be reached.
    """

    async def spent(self, customer_id: UUID, day: date) -> int:
        """Tokens spent by the customer on ``day`` (0 when nothing was)."""
        ...

    async def spend(self, customer_id: UUID, day: date, tokens: int) -> int:
        """Add ``tokens`` (> 0) to the customer's count for ``day``; return the new total.

        A day's count is kept at least until that day is over, then forgotten.
        """
        ...
