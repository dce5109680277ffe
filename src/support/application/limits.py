"""Rate limits per caller and the daily token budget per customer.

Both fail open: when Valkey cannot be reached, requests go through unlimited (a warning is logged at most once a
minute) rather than the whole API failing with the store that only counts them.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from support.domain.conversations import TokenUsage
from support.domain.identity import KEY_ROLES, Principal
from support.domain.limits import (
    RateCheck,
    RateDecision,
    RateLimitedError,
    RatePolicy,
    TokenBudgetExhaustedError,
    admitted,
    conversation_partition,
    customer_partition,
    seconds_until_next_day,
    utc_day,
)
from support.ports.errors import CacheUnavailableError
from support.ports.limits import RateLimiter, TokenBudget
from support.ports.system import Clock

_logger = logging.getLogger(__name__)

# After the store failed, checks skip it for this long: a hung Valkey must not add its timeout to every request.
UNAVAILABLE_PAUSE = timedelta(seconds=5)
# A store that stays down is reported once per this interval, not once per request.
WARNING_INTERVAL = timedelta(seconds=60)


class _Outage:
    """Remembers a failing store: when to try it again, and when the last warning went out."""

    def __init__(self, clock: Clock, what: str) -> None:
        self._clock = clock
        self._what = what
        self._retry_at: datetime | None = None
        self._warned_at: datetime | None = None

    def skipping(self) -> bool:
        return self._retry_at is not None and self._clock.now() < self._retry_at

    def failed(self, error: CacheUnavailableError) -> None:
        now = self._clock.now()
        self._retry_at = now + UNAVAILABLE_PAUSE
        if self._warned_at is None or now - self._warned_at >= WARNING_INTERVAL:
            self._warned_at = now
            _logger.warning("%s not enforced while Valkey is unavailable (failing open): %s", self._what, error)

    def recovered(self) -> None:
        self._retry_at = None


@dataclass(frozen=True, slots=True)
class RateLimitPolicies:
    """The policy of each kind of limit; None switches that kind off."""

    per_key: RatePolicy | None = None
    per_customer: RatePolicy | None = None
    per_ip: RatePolicy | None = None
    per_conversation: RatePolicy | None = None


class EnforceRateLimits:
    """Count a request against every limit that applies to it, in one atomic step.

    - an API key (admin, agent, service) is limited per key;
    - a customer token per customer and per client address (anonymous visitors get a customer each, so the
      address is what ties one abuser's many tokens together);
    - a customer message also per conversation: one count for the API keys that send into it, one for each
      customer's tokens (so a customer refused the conversation cannot spend its owner's).

    All or nothing: a refused request costs no limit anything. Fails open while the limiter's store is unavailable.
    """

    def __init__(self, limiter: RateLimiter, policies: RateLimitPolicies, clock: Clock) -> None:
        self._limiter = limiter
        self._policies = policies
        self._outage = _Outage(clock, "rate limits")

    def checks(
        self, principal: Principal, *, client: str | None = None, conversation_id: UUID | None = None
    ) -> list[RateCheck]:
        """The keys a request is counted against (its partition of each policy)."""
        policies = self._policies
        checks: list[RateCheck] = []
        if principal.role in KEY_ROLES and policies.per_key is not None:
            # The bootstrap admin key has no stored row, hence no id of its own.
            checks.append(RateCheck(f"key:{principal.key_id or 'bootstrap'}", policies.per_key))
        if principal.is_customer and principal.customer_id is not None:
            if policies.per_customer is not None:
                checks.append(RateCheck(customer_partition(principal.customer_id), policies.per_customer))
            if policies.per_ip is not None and client:
                checks.append(RateCheck(f"ip:{client}", policies.per_ip))
        if conversation_id is not None and policies.per_conversation is not None:
            sender = principal.customer_id if principal.is_customer else None
            checks.append(RateCheck(conversation_partition(conversation_id, sender), policies.per_conversation))
        return checks

    async def execute(
        self, principal: Principal, *, client: str | None = None, conversation_id: UUID | None = None
    ) -> list[RateDecision]:
        """Count the request; return the decisions (empty when no limit applies or the store is unavailable).

        Args:
            principal: who is calling.
            client: the client's address, already reduced to its partition (customers only).
            conversation_id: set when the request sends a customer message.

        Raises:
            RateLimitedError: a limit is exhausted; it carries every decision and the time to wait.
        """
        checks = self.checks(principal, client=client, conversation_id=conversation_id)
        if not checks or self._outage.skipping():
            return []
        try:
            decisions = await self._limiter.acquire_all(checks)
        except CacheUnavailableError as error:
            self._outage.failed(error)
            return []
        self._outage.recovered()
        if not admitted(decisions):
            raise RateLimitedError(decisions)
        return decisions


@dataclass(frozen=True, slots=True)
class TokenBudgetPolicy:
    """Model tokens a customer may use per UTC day; 0 means unlimited."""

    daily_tokens: int = 0


def billed_tokens(usage: TokenUsage) -> int:
    """Every token the model read or wrote: cached prompt tokens are reported apart from input, yet were read."""
    return usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens


class CheckTokenBudget:
    """Refuse a turn that would call the model for a customer whose tokens for the UTC day are spent.

    Checked before the customer's message is stored, so a refused message is simply not accepted (the client may
    send it again tomorrow) rather than stored and left unanswered. A turn that started with budget left finishes
    even if it overspends; the next one is refused. Fails open while the store is unavailable.
    """

    def __init__(self, budget: TokenBudget, policy: TokenBudgetPolicy, clock: Clock) -> None:
        self._budget = budget
        self._policy = policy
        self._clock = clock
        self._outage = _Outage(clock, "token budgets")

    async def execute(self, customer_id: UUID) -> None:
        """Return when the customer may have a model reply now.

        Raises:
            TokenBudgetExhaustedError: the day's tokens are spent; ``retry_after_s`` runs to the next UTC midnight.
        """
        limit = self._policy.daily_tokens
        if limit <= 0 or self._outage.skipping():
            return
        now = self._clock.now()
        try:
            spent = await self._budget.spent(customer_id, utc_day(now))
        except CacheUnavailableError as error:
            self._outage.failed(error)
            return
        self._outage.recovered()
        if spent >= limit:
            raise TokenBudgetExhaustedError(retry_after_s=seconds_until_next_day(now))


class SpendTokens:
    """Count a stored reply's tokens against its customer's budget for the UTC day.

    A spend lost while the store is unavailable is logged, not retried: the budget is a guard, not a bill.
    """

    def __init__(self, budget: TokenBudget, policy: TokenBudgetPolicy, clock: Clock) -> None:
        self._budget = budget
        self._policy = policy
        self._clock = clock
        self._outage = _Outage(clock, "token budgets")

    async def execute(self, customer_id: UUID, usage: TokenUsage | None) -> None:
        """Add the reply's tokens to the customer's count (nothing to do when budgets are off or it used none)."""
        tokens = billed_tokens(usage) if usage is not None else 0
        if self._policy.daily_tokens <= 0 or tokens <= 0 or self._outage.skipping():
            return
        try:
            await self._budget.spend(customer_id, utc_day(self._clock.now()), tokens)
        except CacheUnavailableError as error:
            self._outage.failed(error)
            return
        self._outage.recovered()
