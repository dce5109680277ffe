"""Rate limits and the token budget from ``SUPPORT_LIMITS__*`` (docs/limits.md)."""

from dishka import Provider, Scope, provide
from valkey.asyncio import Valkey

from support.adapters.valkey.rate_limits import ValkeyRateLimiter, ValkeyTokenBudget
from support.api.limits import TrustedProxies
from support.application.limits import (
    CheckTokenBudget,
    EnforceRateLimits,
    RateLimitPolicies,
    SpendTokens,
    TokenBudgetPolicy,
)
from support.config import LimitSettings, Settings, SettingsError
from support.domain.limits import RatePolicy
from support.ports.limits import RateLimiter, TokenBudget
from support.ports.system import Clock


def _policy(name: str, limit: int, window_s: int) -> RatePolicy | None:
    return RatePolicy(name, limit, window_s) if limit > 0 else None


def rate_limit_policies(settings: LimitSettings) -> RateLimitPolicies:
    """The rate policies in force; none at all when limits are switched off."""
    if not settings.enabled:
        return RateLimitPolicies()
    return RateLimitPolicies(
        per_key=_policy("api-key", settings.per_key, settings.per_key_window_s),
        per_customer=_policy("customer", settings.per_customer, settings.per_customer_window_s),
        per_ip=_policy("ip", settings.per_ip, settings.per_ip_window_s),
        per_conversation=_policy("conversation", settings.per_conversation, settings.per_conversation_window_s),
    )


def trusted_proxies(settings: LimitSettings) -> TrustedProxies:
    """The proxies whose X-Forwarded-For is believed.

    Raises:
        SettingsError: an entry is not an address or a CIDR network.
    """
    try:
        return TrustedProxies.parse(settings.trusted_proxies)
    except ValueError as error:
        msg = f"SUPPORT_LIMITS__TRUSTED_PROXIES: {error}"
        raise SettingsError(msg) from error


class LimitsProvider(Provider):
    """Process-wide: the limiter and budget adapters, and the use cases that fail open around them."""

    scope = Scope.APP

    @provide
    def rate_limiter(self, valkey: Valkey, settings: Settings, clock: Clock) -> RateLimiter:
        return ValkeyRateLimiter(valkey, settings.valkey.key_prefix, clock)

    @provide
    def token_budget(self, valkey: Valkey, settings: Settings) -> TokenBudget:
        return ValkeyTokenBudget(valkey, settings.valkey.key_prefix)

    @provide
    def policies(self, settings: Settings) -> RateLimitPolicies:
        return rate_limit_policies(settings.limits)

    @provide
    def token_budget_policy(self, settings: Settings) -> TokenBudgetPolicy:
        limits = settings.limits
        return TokenBudgetPolicy(daily_tokens=limits.daily_tokens_per_customer if limits.enabled else 0)

    @provide
    def trusted_proxies(self, settings: Settings) -> TrustedProxies:
        return trusted_proxies(settings.limits)

    enforce_rate_limits = provide(EnforceRateLimits)
    check_token_budget = provide(CheckTokenBudget)
    spend_tokens = provide(SpendTokens)

    @provide
    def optional_check_token_budget(self, check: CheckTokenBudget) -> CheckTokenBudget | None:
        # SendMessage takes the check as optional (unit tests build it without one).
        return check
