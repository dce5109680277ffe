"""The GCRA arithmetic every rate limiter shares, and the UTC day of the token budget."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.domain.limits import (
    MICROSECONDS,
    RateLimitedError,
    RatePolicy,
    acquire_all,
    admits,
    microseconds,
    retry_after_s,
    seconds_until_next_day,
    utc_day,
)

SECOND = MICROSECONDS
START = microseconds(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


def run(policy: RatePolicy, offsets_us: list[int]) -> list[bool]:
    """Requests at START + each offset (non-decreasing) against one key; which were admitted."""
    tat: int | None = None
    admitted = []
    for offset in offsets_us:
        after, decisions = acquire_all([tat], START + offset, [policy])
        tat = after[0]
        admitted.append(decisions[0].allowed)
    return admitted


def test_a_quiet_key_may_spend_its_whole_quota_at_once_then_waits_one_interval() -> None:
    policy = RatePolicy("customer", limit=5, window_s=10)
    assert run(policy, [0] * 6) == [True] * 5 + [False]
    # One unit accrues every 2 s: just before it the key is still empty, at it one request goes through.
    assert run(policy, [0] * 5 + [2 * SECOND - 1, 2 * SECOND, 2 * SECOND]) == [True] * 5 + [False, True, False]


def test_decisions_count_down_and_say_when_the_next_unit_accrues() -> None:
    policy = RatePolicy("customer", limit=3, window_s=60)
    tat = None
    seen = []
    for _ in range(4):
        after, (result,) = acquire_all([tat], START, [policy])
        tat = after[0]
        seen.append((result.allowed, result.remaining, result.reset_s, result.retry_after_s))
    assert seen == [(True, 2, 20, 0), (True, 1, 20, 0), (True, 0, 20, 0), (False, 0, 20, 20)]


def test_retry_after_is_exactly_when_the_key_admits_again_rounded_up_to_a_second() -> None:
    policy = RatePolicy("ip", limit=2, window_s=3)  # an interval of 1.5 s
    tat = None
    for _ in range(2):
        (tat,), _ = acquire_all([tat], START, [policy])
    later = START + SECOND // 2
    _, (refused,) = acquire_all([tat], later, [policy])
    assert not refused.allowed
    assert refused.retry_after_s == 1  # 1.0 s left
    assert not admits(tat, later + SECOND - 1, policy)
    assert admits(tat, later + SECOND, policy)


def test_a_refused_request_costs_no_key_anything() -> None:
    roomy = RatePolicy("api-key", limit=100, window_s=60)
    tight = RatePolicy("conversation", limit=1, window_s=60)
    (key, conversation), _ = acquire_all([None, None], START, [roomy, tight])
    after, decisions = acquire_all([key, conversation], START + 1, [roomy, tight])
    assert after == [key, conversation]
    assert [item.allowed for item in decisions] == [True, False]
    assert decisions[0].remaining == 99  # unchanged by the refused request
    assert retry_after_s(decisions) == 60
    error = RateLimitedError(decisions)
    assert error.retry_after_s == 60
    assert "conversation" in error.message
    assert "api-key" not in error.message


def test_policies_are_never_faster_than_configured() -> None:
    # 7 per minute does not divide a minute in whole microseconds: the interval rounds up, the burst stays 7.
    policy = RatePolicy("odd", limit=7, window_s=60)
    assert policy.interval_us * 7 >= 60 * SECOND
    assert run(policy, [0] * 8) == [True] * 7 + [False]


def test_a_policy_needs_a_positive_limit_and_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        RatePolicy("none", limit=0, window_s=60)
    with pytest.raises(ValueError, match="positive"):
        RatePolicy("none", limit=1, window_s=0)


policies = st.builds(RatePolicy, name=st.just("p"), limit=st.integers(1, 50), window_s=st.integers(1, 120))
gaps = st.lists(st.integers(0, 5 * SECOND), min_size=1, max_size=120)


@given(policy=policies, steps=gaps)
def test_no_window_admits_more_than_the_burst_plus_the_rate_times_its_length(
    policy: RatePolicy, steps: list[int]
) -> None:
    times = []
    now = 0
    for step in steps:
        now += step
        times.append(now)
    admitted_at = [at for at, ok in zip(times, run(policy, times), strict=True) if ok]
    rate_per_us = policy.limit / (policy.window_s * SECOND)
    for first, start in enumerate(admitted_at):
        for last in range(first, len(admitted_at)):
            count = last - first + 1
            elapsed = admitted_at[last] - start
            assert count <= policy.limit + rate_per_us * elapsed


@given(policy=policies, steps=gaps)
def test_a_caller_within_the_rate_is_never_refused(policy: RatePolicy, steps: list[int]) -> None:
    # Requests spaced at least one interval apart, whatever came before, always go through.
    times = []
    now = 0
    for step in steps:
        now += max(step, policy.interval_us)
        times.append(now)
    assert all(run(policy, times))


def test_budgets_count_per_utc_day_and_reopen_at_utc_midnight() -> None:
    evening_in_new_york = datetime(2026, 3, 1, 20, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert utc_day(evening_in_new_york).isoformat() == "2026-03-02"
    assert seconds_until_next_day(datetime(2026, 3, 1, 23, 59, 59, 500_000, tzinfo=UTC)) == 1
    assert seconds_until_next_day(datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) == 86_400
    assert seconds_until_next_day(datetime(2026, 3, 1, 18, 0, tzinfo=UTC)) == 6 * 3600


def test_microseconds_are_exact() -> None:
    moment = datetime(2026, 3, 1, 12, 0, 0, 123_457, tzinfo=UTC)
    assert microseconds(moment) % SECOND == 123_457
    assert microseconds(moment + timedelta(microseconds=1)) - microseconds(moment) == 1
