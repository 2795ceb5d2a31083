"""Byte budgets: the uploads and the output images (results, edit masks) Redis holds, each kind in its own.

Every stored value of a kind is recorded with its size and the time it expires; the total is kept beside
them and changed only by the Lua scripts here, so it never drifts. Storing a value that would take the
total past the budget first evicts the values of that kind that expire soonest (the least recently used:
every value of a kind has the same retention, restarted on use). Values that expired are forgotten at
the next store. The latent-pair cache keeps its own budget (``InversionCache``); docs/operations.md says
how the budgets and Redis's ``maxmemory`` fit together.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal

from redis.asyncio import Redis

from .keys import Keys

Kind = Literal["uploads", "results"]

LUA_BUDGET = """
-- A byte budget: HASH sizes (key -> bytes), ZSET expiry (key -> expiry time, seconds), STRING total.
local function forget(sizes, expiry, total, key)
  local size = tonumber(redis.call('HGET', sizes, key) or '0')
  redis.call('HDEL', sizes, key)
  redis.call('ZREM', expiry, key)
  if size > 0 then redis.call('DECRBY', total, size) end
  return size
end

-- Delete the value (and the record of what refers to it: an upload's ``:refs``) and forget it.
local function discard(sizes, expiry, total, key)
  redis.call('DEL', key, key .. ':refs')
  return forget(sizes, expiry, total, key)
end

-- Evict the values that expire soonest (never those in ``spare``) while the total exceeds the budget.
local function fit(sizes, expiry, total, budget, spare)
  local evicted, skip = 0, 0
  while tonumber(redis.call('GET', total) or '0') > budget do
    local oldest = redis.call('ZRANGE', expiry, skip, skip)
    if #oldest == 0 then break end
    if spare[oldest[1]] then
      skip = skip + 1
    else
      discard(sizes, expiry, total, oldest[1])
      evicted = evicted + 1
    end
  end
  return evicted
end

-- Forget values whose time is up; one that lives on (its TTL was restarted) is rescheduled.
local function sweep(sizes, expiry, total, now)
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    local left = redis.call('PTTL', key)
    if left > 0 then
      redis.call('ZADD', expiry, now + left / 1000, key)
    else
      forget(sizes, expiry, total, key)
    end
  end
end
"""

_STORE = (
    LUA_BUDGET
    + """
-- KEYS: sizes, expiry, total.  ARGV: key, value, ttl, now, budget.
-- Store the value (one already stored only has its TTL restarted), first evicting the values that expire
-- soonest while the total would exceed the budget. Returns how many were evicted.
local sizes, expiry, total = KEYS[1], KEYS[2], KEYS[3]
local key, value, ttl, now, budget = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
sweep(sizes, expiry, total, now)
if redis.call('HEXISTS', sizes, key) == 1 and redis.call('EXISTS', key) == 1 then
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', expiry, now + ttl, key)
  return 0
end
forget(sizes, expiry, total, key)
local evicted = fit(sizes, expiry, total, budget - #value, {})
redis.call('SET', key, value, 'EX', ttl)
redis.call('HSET', sizes, key, #value)
redis.call('ZADD', expiry, now + ttl, key)
redis.call('INCRBY', total, #value)
return evicted
"""
)

_ADOPT = (
    LUA_BUDGET
    + """
-- KEYS: sizes, expiry, total.  ARGV: now, budget, referrer ('' for none), its expiry, key, ...
-- Record values another script stored (a submission's uploads, ``JobQueue.submit``), note ``referrer``
-- among what refers to each (``key:refs``), then evict the others that expire soonest while the total
-- exceeds the budget. Returns how many were evicted.
local sizes, expiry, total = KEYS[1], KEYS[2], KEYS[3]
local now, budget, referrer, expires = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
sweep(sizes, expiry, total, now)
local spare = {}
for i = 5, #ARGV do
  local key = ARGV[i]
  local left = redis.call('PTTL', key)
  if left > 0 then
    spare[key] = true
    if redis.call('HEXISTS', sizes, key) == 0 then
      local size = redis.call('STRLEN', key)
      redis.call('HSET', sizes, key, size)
      redis.call('INCRBY', total, size)
    end
    redis.call('ZADD', expiry, now + left / 1000, key)
    if referrer ~= '' then
      redis.call('ZADD', key .. ':refs', expires, referrer)
      redis.call('PEXPIRE', key .. ':refs', left)
    end
  end
end
return fit(sizes, expiry, total, budget, spare)
"""
)

_DISCARD = (
    LUA_BUDGET
    + """
-- KEYS: sizes, expiry, total.  ARGV: key.  Delete the value and its record; returns the bytes it held.
return discard(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
"""
)


class Budget:
    """The stored values of one kind (uploads, output images) within ``max_bytes``, recorded by key."""

    def __init__(self, redis: Redis, keys: Keys, kind: Kind, max_bytes: int) -> None:
        self.redis = redis
        self.kind = kind
        self.max_bytes = max_bytes
        self.records = keys.budget(kind)
        self.stats = keys.stats
        self._store = redis.register_script(_STORE)
        self._discard = redis.register_script(_DISCARD)
        self._adopt = redis.register_script(_ADOPT)

    @property
    def _keys(self) -> list[str]:
        return [self.records.sizes, self.records.expiry, self.records.total]

    async def store(self, key: str, value: bytes, ttl: int) -> int:
        """Store ``value`` at ``key`` for ``ttl`` seconds (only restarting the TTL when already stored),
        evicting the values of this kind that expire soonest as the budget needs; returns how many went."""
        args = [key, value, ttl, time.time(), self.max_bytes]
        evicted = int(await self._store(keys=self._keys, args=args))
        await self._count(evicted)
        return evicted

    async def adopt(self, keys: Iterable[str], *, referrer: str | None = None, until: float = 0) -> int:
        """Count the values at ``keys`` that another script stored, noting ``referrer`` (an inversion id,
        until ``until``) among what refers to each; then evict as the budget needs (never these). Returns
        how many were evicted."""
        keys = list(keys)
        if not keys:
            return 0
        args = [time.time(), self.max_bytes, referrer or "", until, *keys]
        evicted = int(await self._adopt(keys=self._keys, args=args))
        await self._count(evicted)
        return evicted

    async def _count(self, evicted: int) -> None:
        if evicted:
            await self.redis.hincrby(self.stats, f'storage_evictions_total{{kind="{self.kind}"}}', evicted)

    async def discard(self, key: str) -> int:
        """Delete a stored value now; returns the bytes it held (0 if none were recorded)."""
        return int(await self._discard(keys=self._keys, args=[key]))

    async def usage(self) -> tuple[int, int]:
        """(values, bytes) recorded."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(self.records.sizes)
            pipe.get(self.records.total)
            count, total = await pipe.execute()
        return int(count), int(total or 0)
