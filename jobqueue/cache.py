"""The latent-pair cache and its key: content-addressed inversions, checksummed on every read.

An inversion is named by what determines it (``InversionSpec``): the tenant it belongs to, the
image bytes' sha256, the model, the source prompt and the inversion parameters with defaults filled
in. The tenant is part of the name, so one tenant's requests never hit (or time) another's entries. The entry holds
the engine's safetensors bytes, their sha256 (a mismatch drops the entry, so a corrupt one is
recomputed and never used) and metadata that records the numerics fingerprint. Entries and the
uploads they were made from expire ``inversion_ttl_s`` after their last use, and the least
recently used go first once the cache holds more than ``cache_max_bytes`` (uploads: beyond
``uploads_max_bytes``, ``bdia.jobqueue.storage``). ``DELETE`` is final: a job still making the inversion
stores nothing, and the upload goes with the last inversion that refers to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bdia.params import InversionParams

from .jobs import Keep
from .keys import Keys
from .settings import PUBLIC_TENANT, Settings
from .storage import LUA_BUDGET, Budget

log = logging.getLogger(__name__)


INVERSION_ID = re.compile(r"inv_[0-9a-f]{32}")
"""What ``InversionSpec.inversion_id`` makes; anything else names no inversion and is never used in a key."""


def is_inversion_id(value: str) -> bool:
    return INVERSION_ID.fullmatch(value) is not None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class InversionSpec(InversionParams):
    """What an inversion is of: the engine's parameters, the image's sha256 and the tenant.

    Equal specs name the same inversion; the worker recomputes it from the spec.
    """

    image_sha256: str
    tenant: str = PUBLIC_TENANT

    @property
    def params(self) -> dict[str, Any]:
        """The inversion parameters, as a job or an inversion shows them."""
        return self.model_dump(exclude={"model", "image_sha256", "tenant"})

    def inversion_params(self) -> InversionParams:
        """The engine's parameters of this inversion."""
        return InversionParams(**self.model_dump(exclude={"image_sha256", "tenant"}))

    @property
    def inversion_id(self) -> str:
        """``inv_`` + the first 128 bits of the sha256 of the canonical JSON of the spec."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return "inv_" + sha256(canonical.encode())[:32]


@dataclass(frozen=True)
class CachedInversion:
    """A verified cache entry: the safetensors bytes and their metadata."""

    data: bytes
    meta: dict[str, Any]
    expires_at: float

    @property
    def checksum(self) -> str:
        return sha256(self.data)


_PUT = """
-- KEYS: entry, lru, sizes, deleted, spec.  ARGV: data, checksum, meta, ttl, now, inversion id.
-- Store an entry, unless its inversion was deleted and not requested again since (a job that was
-- making it when it was deleted writes back nothing). Returns 1 when stored, 0 when discarded.
if redis.call('EXISTS', KEYS[4]) == 1 and redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'checksum', ARGV[2], 'meta', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[6])
redis.call('HSET', KEYS[3], ARGV[6], #ARGV[1])
return 1
"""

_DELETE = (
    LUA_BUDGET
    + """
-- KEYS: entry, spec, tenant index, lru, sizes, deleted, inflight, upload refs, then the uploads budget's
-- sizes, expiry, total.  ARGV: inversion id, tenant, now, tombstone ttl, upload key.
-- Forget the tenant's inversion (entry, spec, index entry) and mark it deleted, so that no job stores it
-- again; its upload goes too when no other live inversion refers to it. Returns {1, id of the job making
-- it or ''}; {1, ''} again for an inversion this tenant deleted before (while the mark lasts); else {0, ''}.
local id, tenant, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[2])
if not raw or cjson.decode(raw)['tenant'] ~= tenant then
  return {redis.call('GET', KEYS[6]) == tenant and 1 or 0, ''}
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
redis.call('SET', KEYS[6], tenant, 'EX', tonumber(ARGV[4]))
redis.call('ZREM', KEYS[8], id)
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
if redis.call('ZCARD', KEYS[8]) == 0 then discard(KEYS[9], KEYS[10], KEYS[11], ARGV[5]) end
return {1, redis.call('GET', KEYS[7]) or ''}
"""
)


class InversionCache:
    """Inversions, their specs and the uploads they came from, in Redis."""

    def __init__(self, redis: Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys(settings.key_prefix)
        self.uploads = Budget(redis, self.keys, "uploads", settings.uploads_max_bytes)
        self._put = redis.register_script(_PUT)
        self._delete = redis.register_script(_DELETE)

    @property
    def ttl(self) -> int:
        return self.settings.inversion_ttl_s

    # --- entries --------------------------------------------------------------------------------

    async def get(self, inversion_id: str) -> CachedInversion | None:
        """The entry if present and intact (and then its TTL restarts); a corrupt one is dropped."""
        if not is_inversion_id(inversion_id):
            return None
        key = self.keys.inversion(inversion_id)
        data, checksum, meta = await self.redis.hmget(key, ["data", "checksum", "meta"])
        if data is None or checksum is None or meta is None:
            return None
        if sha256(data) != checksum.decode():
            log.warning("cache entry %s failed its checksum: dropped", inversion_id)
            await self.drop(inversion_id)
            await self.redis.hincrby(self.keys.stats, "cache_corrupt_total", 1)
            return None
        meta = json.loads(meta)
        await self._touch(inversion_id, meta.get("image_sha256"))
        return CachedInversion(data, meta, time.time() + self.ttl)

    async def info(self, inversion_id: str) -> tuple[dict[str, Any], float] | None:
        """The entry's metadata and when it expires, reading neither its bytes nor their checksum (``GET
        /v1/inversions/{id}``); its TTL restarts, as on any use. None when there is no entry."""
        if not is_inversion_id(inversion_id):
            return None
        key = self.keys.inversion(inversion_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, "meta")
            pipe.hexists(key, "data")
            meta, present = await pipe.execute()
        if meta is None or not present:
            return None
        meta = json.loads(meta)
        await self._touch(inversion_id, meta.get("image_sha256"))
        return meta, time.time() + self.ttl

    async def put(self, inversion_id: str, data: bytes, meta: dict[str, Any]) -> CachedInversion | None:
        """Store an entry (with its checksum), then evict what the budget no longer holds. None (and nothing
        stored) when the inversion was deleted while it was being made, and not requested again since."""
        meta = {**meta, "inversion_id": inversion_id, "size": len(data), "created_at": time.time()}
        k = self.keys
        keys = [
            k.inversion(inversion_id),
            k.cache_lru,
            k.cache_sizes,
            k.inversion_deleted(inversion_id),
            k.inversion_spec(inversion_id),
        ]
        args = [data, sha256(data), json.dumps(meta), self.ttl, time.time(), inversion_id]
        if not await self._put(keys=keys, args=args):
            log.info("inversion %s was deleted while it was being made: not stored", inversion_id)
            return None
        await self._touch(inversion_id, meta.get("image_sha256"))
        await self._evict()
        return CachedInversion(data, meta, time.time() + self.ttl)

    async def drop(self, inversion_id: str) -> None:
        """Remove the entry, keeping its spec so that it can be recomputed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.inversion(inversion_id))
            pipe.zrem(self.keys.cache_lru, inversion_id)
            pipe.hdel(self.keys.cache_sizes, inversion_id)
            await pipe.execute()

    async def delete(self, inversion_id: str, tenant: str) -> tuple[bool, str | None]:
        """Forget ``tenant``'s inversion entirely, atomically: entry, spec, index entry, and its upload unless
        another live inversion refers to it; mark it deleted, so that a job making it stores nothing (``put``).

        Returns (whether the tenant's inversion existed or was deleted before while the mark lasts, the id
        of the job making it, to be canceled)."""
        spec = await self.spec(inversion_id)
        if spec is None:  # gone already: only the mark can tell whether it was this tenant's
            if not is_inversion_id(inversion_id):
                return False, None
            mark = await self.redis.get(self.keys.inversion_deleted(inversion_id))
            return mark == tenant.encode(), None
        k, uploads = self.keys, self.uploads
        keys = [
            k.inversion(inversion_id),
            k.inversion_spec(inversion_id),
            k.tenant_inversions(spec.tenant),
            k.cache_lru,
            k.cache_sizes,
            k.inversion_deleted(inversion_id),
            k.inversion_job(inversion_id),
            k.blob_refs(spec.image_sha256),
            uploads.records.sizes,
            uploads.records.expiry,
            uploads.records.total,
        ]
        mark_s = max(self.settings.job_ttl_s, int(self.settings.job_timeout_s) + 1)
        args = [inversion_id, tenant, time.time(), mark_s, k.blob(spec.image_sha256)]
        existed, maker = await self._delete(keys=keys, args=args)
        return bool(existed), maker.decode() if maker else None

    async def usage(self) -> tuple[int, int]:
        """(entries, bytes) the cache holds."""
        sizes = await self.redis.hvals(self.keys.cache_sizes)
        return len(sizes), sum(int(s) for s in sizes)

    async def _touch(self, inversion_id: str, image_sha256: str | None) -> None:
        spec = await self.spec(inversion_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(self.keys.inversion(inversion_id), self.ttl)
            pipe.expire(self.keys.inversion_spec(inversion_id), self.ttl)
            if spec is not None:  # the index outlives every spec it lists
                pipe.expire(self.keys.tenant_inversions(spec.tenant), self.ttl)
            if image_sha256:  # the upload, its budget's record and its reference from this inversion
                pipe.expire(self.keys.blob(image_sha256), self.ttl)
                pipe.zadd(self.uploads.records.expiry, {self.keys.blob(image_sha256): time.time() + self.ttl}, xx=True)
                pipe.zadd(self.keys.blob_refs(image_sha256), {inversion_id: time.time() + self.ttl}, xx=True)
                pipe.expire(self.keys.blob_refs(image_sha256), self.ttl)
            pipe.zadd(self.keys.cache_lru, {inversion_id: time.time()})
            await pipe.execute()

    async def _evict(self) -> None:
        """Forget entries that expired; then drop least recently used ones until within budget."""
        lru, sizes = self.keys.cache_lru, self.keys.cache_sizes
        expired = await self.redis.zrangebyscore(lru, "-inf", time.time() - self.ttl)
        if expired:
            await self.redis.zrem(lru, *expired)
            await self.redis.hdel(sizes, *expired)
        _, total = await self.usage()
        while total > self.settings.cache_max_bytes:
            oldest = await self.redis.zpopmin(lru, 1)
            if not oldest:
                break
            victim = oldest[0][0].decode()
            total -= int(await self.redis.hget(sizes, victim) or 0)
            await self.drop(victim)
            await self.redis.hincrby(self.keys.stats, "cache_evictions_total", 1)

    # --- what an inversion is of ---------------------------------------------------------------

    async def put_spec(self, spec: InversionSpec) -> None:
        """Store the spec and list the inversion in its tenant's index (``GET /v1/inversions``), atomically;
        the index expires with the last spec it lists (readers drop entries whose spec expired)."""
        index = self.keys.tenant_inversions(spec.tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.inversion_spec(spec.inversion_id), spec.model_dump_json(), ex=self.ttl)
            pipe.zadd(index, {spec.inversion_id: time.time()}, nx=True)
            pipe.expire(index, self.ttl)
            refs = self.keys.blob_refs(spec.image_sha256)  # the upload is kept while an inversion refers to it
            pipe.zadd(refs, {spec.inversion_id: time.time() + self.ttl})
            pipe.expire(refs, self.ttl)
            await pipe.execute()

    async def spec(self, inversion_id: str) -> InversionSpec | None:
        if not is_inversion_id(inversion_id):
            return None
        raw = await self.redis.get(self.keys.inversion_spec(inversion_id))
        return InversionSpec.model_validate_json(raw) if raw else None

    async def put_blob(self, data: bytes) -> str:
        """Keep uploaded bytes under their sha256 (stored once however often uploaded), within the uploads'
        budget (``BDIA_UPLOADS_MAX_BYTES``: the least recently used go first)."""
        digest = sha256(data)
        await self.uploads.store(self.keys.blob(digest), data, self.ttl)
        return digest

    async def blob(self, digest: str) -> bytes | None:
        data = await self.redis.get(self.keys.blob(digest))
        return data if data is not None and sha256(data) == digest else None

    def keep(self, spec: InversionSpec, *uploads: bytes) -> Keep:
        """What a request for ``spec`` stores, and only once its job is admitted (``JobQueue.submit``): the
        uploads under their sha256 (kept once however often uploaded), the spec, its tenant's index entry
        (as ``put_blob`` and ``put_spec`` store them). A refused request thus stores nothing."""
        values = [(self.keys.blob(sha256(data)), data) for data in uploads]
        values.append((self.keys.inversion_spec(spec.inversion_id), spec.model_dump_json()))
        return Keep(self.ttl, tuple(values), (self.keys.tenant_inversions(spec.tenant), spec.inversion_id))

    # --- the job making an inversion -----------------------------------------------------------

    async def maker(self, inversion_id: str) -> str | None:
        """The id of the job making the inversion, if one was recorded (``JobQueue.submit`` records it, and
        clears it when that job finishes: it may have finished since)."""
        current = await self.redis.get(self.keys.inversion_job(inversion_id))
        return current.decode() if current else None
