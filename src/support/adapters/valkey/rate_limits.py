"""Rate limits and token budgets in Valkey, shared by every API process.

A rate check is one EVALSHA whatever the number of keys: the script reads each key's theoretical arrival time,
admits the request only if every key has room, and then advances them all, so a refused request costs nothing and
two processes never both take a key's last unit. It returns the TATs it read; the decisions (remaining, reset,
retry) are computed here by ``support.domain.limits``, the same code the in-memory limiter runs, from the same
integers. Keys expire once their TAT has passed (the state then means "full quota", as no key does).

All keys of one check go to one script call, so this needs a standalone Valkey (or keys in one cluster slot).
"""

from collections.abc import Sequence
from datetime import date
from uuid import UUID

from valkey.asyncio import Valkey

from support.adapters.valkey.errors import cache_errors
from support.domain.limits import RateCheck, RateDecision, RatePolicy, acquire_all, microseconds, pseudonym
from support.ports.system import Clock

# KEYS: the limited keys. ARGV[1]: now (µs); then per key i: ARGV[2i] its interval, ARGV[2i+1] its capacity (µs).
# Mirrors support.domain.limits.admits/taken; integers stay below 2**53, where Lua's doubles are exact.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local stored = {}
local admitted = 1
for i = 1, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  local tat = now
  if raw then
    stored[i] = raw
    tat = math.max(tonumber(raw), now)
  else
    stored[i] = '0'
  end
  if tat + tonumber(ARGV[2 * i]) - now > tonumber(ARGV[2 * i + 1]) then
    admitted = 0
  end
end
if admitted == 1 then
  for i = 1, #KEYS do
    local base = now
    if stored[i] ~= '0' then base = math.max(tonumber(stored[i]), now) end
    local tat = base + tonumber(ARGV[2 * i])
    local ttl = math.max(1, math.ceil((tat - now) / 1000))
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
  end
end
table.insert(stored, 1, tostring(admitted))
return stored
"""

# Rate-limit state lives under <prefix>rate:<partition>.
RATE_KEYS = "rate:"
# A day's count is written only during that day, so two days from its last write outlive the day with room to spare
# (and a relative expiry does not depend on Valkey's clock agreeing with ours).
_BUDGET_TTL_S = 2 * 24 * 3600


class ValkeyRateLimiter:
    """GCRA state under ``<prefix>rate:<key>``: the key's theoretical arrival time in µs since the epoch."""

    def __init__(self, client: Valkey, key_prefix: str, clock: Clock) -> None:
        self._client = client
        self._prefix = key_prefix + RATE_KEYS
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)

    async def acquire(self, key: str, policy: RatePolicy) -> RateDecision:
        return (await self.acquire_all([RateCheck(key, policy)]))[0]

    async def acquire_all(self, checks: Sequence[RateCheck]) -> list[RateDecision]:
        if not checks:
            return []
        now = microseconds(self._clock.now())
        args: list[int] = [now]
        for check in checks:
            args += [check.policy.interval_us, check.policy.capacity_us]
        async with cache_errors():
            reply = await self._acquire(keys=[self._prefix + check.key for check in checks], args=args)
        stored = [int(value) or None for value in reply[1:]]
        _, decisions = acquire_all(stored, now, [check.policy for check in checks])
        return decisions


class ValkeyTokenBudget:
    """Tokens per customer and UTC day under ``<prefix>tokens:<pseudonym>:<YYYY-MM-DD>``, expiring after the day.

    The customer is named by a digest (``support.domain.limits.pseudonym``), never by their id.
    """

    def __init__(self, client: Valkey, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix + "tokens:"

    def _key(self, customer_id: UUID, day: date) -> str:
        return f"{self._prefix}{pseudonym(customer_id)}:{day.isoformat()}"

    async def spent(self, customer_id: UUID, day: date) -> int:
        async with cache_errors():
            value = await self._client.get(self._key(customer_id, day))
        return int(value) if value is not None else 0

    async def spend(self, customer_id: UUID, day: date, tokens: int) -> int:
        key = self._key(customer_id, day)
        async with cache_errors(), self._client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, tokens)
            pipe.expire(key, _BUDGET_TTL_S)
            total, _ = await pipe.execute()
        return int(total)
