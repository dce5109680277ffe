"""Rate limits and the daily token budget: policies, decisions, and the GCRA arithmetic every limiter shares.

A rate policy allows ``limit`` requests per ``window_s`` seconds, all of them at once if the caller has been quiet
(the burst is the whole quota) and one more every ``window_s / limit`` seconds after that. The state of one limited
key is a single number, its theoretical arrival time (TAT, the generic cell rate algorithm): the moment the key's
quota would be full again. Times are whole microseconds so that the Valkey script, which works on Lua's doubles,
computes exactly what this module computes (integers below 2**53 are exact in both).
"""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import ClassVar
from uuid import UUID

from support.domain.errors import SupportError

MICROSECONDS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pseudonym(customer_id: UUID) -> str:
    """What counters name a customer by: a digest, so Valkey never holds the id itself.

    Erasing a customer deletes what names them; a counter under a digest of an id that no longer exists anywhere
    links to no one, and expires on its own (a rate key within its window, a day's token count after two days).
    """
    return hashlib.blake2b(customer_id.bytes, digest_size=16, person=b"support-limits").hexdigest()


def customer_partition(customer_id: UUID) -> str:
    """The rate-limit key of a customer."""
    return f"customer:{pseudonym(customer_id)}"


def conversation_partition(conversation_id: UUID, customer_id: UUID | None = None) -> str:
    """The rate-limit key of the messages sent to a conversation by API keys, or by one customer's tokens.

    A customer's sends count apart from the keys': the verdict is reached before the conversation is read, so a
    customer who is refused the conversation (it is another's: 404) must spend only a counter of their own, never
    its owner's. Erasing the owner deletes both of the conversation's counters.
    """
    base = f"conversation:{conversation_id}"
    return base if customer_id is None else f"{base}:{pseudonym(customer_id)}"


def microseconds(moment: datetime) -> int:
    """An aware datetime as whole microseconds since the Unix epoch (exact, unlike ``timestamp() * 1e6``)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """``limit`` requests per ``window_s`` seconds; ``name`` is what the ``RateLimit`` headers call it."""

    name: str
    limit: int
    window_s: int

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window_s < 1:
            msg = "a rate policy needs a positive limit and window"
            raise ValueError(msg)

    @property
    def interval_us(self) -> int:
        """Microseconds between two requests at the sustained rate, rounded up (never faster than the policy)."""
        return -(-self.window_s * MICROSECONDS // self.limit)

    @property
    def capacity_us(self) -> int:
        """How far ahead of now the TAT may run: ``limit`` intervals, so a quiet key may spend its whole quota."""
        return self.limit * self.interval_us


@dataclass(frozen=True, slots=True)
class RateCheck:
    """One unit to take from ``key`` under ``policy``."""

    key: str
    policy: RatePolicy


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome for one key: whether it had room, and what the ``RateLimit`` header says about it.

    ``remaining`` is what the key may still spend now; ``reset_s`` is how long until it may spend one more (within
    that time the caller can use no more than ``remaining``); ``retry_after_s`` is the wait before a refused request
    would be admitted (0 when it was).
    """

    policy: RatePolicy
    allowed: bool
    remaining: int
    reset_s: int
    retry_after_s: int

    @property
    def limit(self) -> int:
        """The policy's quota."""
        return self.policy.limit


def admits(tat_us: int | None, now_us: int, policy: RatePolicy) -> bool:
    """Whether a key whose TAT is ``tat_us`` (None: never seen or expired) has room for one more request now."""
    base = now_us if tat_us is None else max(tat_us, now_us)
    return base + policy.interval_us - now_us <= policy.capacity_us


def taken(tat_us: int | None, now_us: int, policy: RatePolicy) -> int:
    """The TAT after one request is counted."""
    base = now_us if tat_us is None else max(tat_us, now_us)
    return base + policy.interval_us


def decision(tat_us: int | None, now_us: int, policy: RatePolicy, *, allowed: bool) -> RateDecision:
    """What to tell the caller about a key whose TAT is now ``tat_us`` (after the request was counted, if it was)."""
    base = now_us if tat_us is None else max(tat_us, now_us)
    interval = policy.interval_us
    slack = policy.capacity_us - (base - now_us)
    remaining = max(0, slack // interval)
    # The next unit accrues when the slack reaches one more interval; for a refused key that is also its retry time.
    wait_us = (remaining + 1) * interval - slack
    wait_s = max(1, math.ceil(wait_us / MICROSECONDS))
    return RateDecision(
        policy=policy,
        allowed=allowed,
        remaining=min(remaining, policy.limit),
        reset_s=wait_s,
        retry_after_s=0 if allowed else wait_s,
    )


def acquire_all(
    tats: Sequence[int | None], now_us: int, policies: Sequence[RatePolicy]
) -> tuple[list[int | None], list[RateDecision]]:
    """Take one unit from every key, or from none when any key is out of room (a refused request costs nothing).

    Returns the keys' new TATs and one decision per key; the request is admitted when every decision allows it.
    """
    room = [admits(tat, now_us, policy) for tat, policy in zip(tats, policies, strict=True)]
    after: list[int | None] = list(tats)
    if all(room):
        after = [taken(tat, now_us, policy) for tat, policy in zip(tats, policies, strict=True)]
    decisions = [
        decision(tat, now_us, policy, allowed=ok) for tat, policy, ok in zip(after, policies, room, strict=True)
    ]
    return after, decisions


def admitted(decisions: Sequence[RateDecision]) -> bool:
    """Whether a request checked against these keys was admitted (all of them had room)."""
    return all(item.allowed for item in decisions)


def retry_after_s(decisions: Sequence[RateDecision]) -> int:
    """How long a refused request must wait: until every key that refused it has room again."""
    return max((item.retry_after_s for item in decisions if not item.allowed), default=0)


def expiry_ms(tat_us: int, now_us: int) -> int:
    """How long a key's state matters: once its TAT has passed it means the same as no state at all."""
    return max(1, -(-(tat_us - now_us) // 1000))


# --- the daily token budget -----------------------------------------------------------------------------------------


def utc_day(moment: datetime) -> date:
    """The UTC calendar day a moment falls on (budgets are counted per UTC day)."""
    return moment.astimezone(UTC).date()


def seconds_until_next_day(moment: datetime) -> int:
    """Whole seconds (at least 1) until the next UTC midnight, when every budget starts afresh."""
    utc = moment.astimezone(UTC)
    midnight = datetime.combine(utc.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return max(1, math.ceil((midnight - utc).total_seconds()))


# --- errors -----------------------------------------------------------------------------------------------------------


class TooManyRequestsError(SupportError):
    """The caller must slow down; ``retry_after_s`` says for how long (the API answers 429 with ``Retry-After``)."""

    code: ClassVar[str] = "too_many_requests"
    default_message: ClassVar[str] = "Too many requests; try again later."

    def __init__(self, message: str | None = None, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


class RateLimitedError(TooManyRequestsError):
    """A rate limit refused the request; nothing was done."""

    code = "rate_limited"
    default_message = "Too many requests; slow down and try again after the time given in Retry-After."

    def __init__(self, decisions: Sequence[RateDecision]) -> None:
        refused = [item.policy.name for item in decisions if not item.allowed]
        wait = retry_after_s(decisions)
        super().__init__(
            f"The {', '.join(refused)} rate limit is exhausted; try again in {wait} s.", retry_after_s=wait
        )
        self.decisions = tuple(decisions)


class TokenBudgetExhaustedError(TooManyRequestsError):
    """The customer's model tokens for the UTC day are spent; the message was not stored."""

    code = "token_budget_exhausted"
    default_message = "Today's assistant budget for this customer is used up; try again tomorrow (UTC)."
