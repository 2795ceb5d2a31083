"""The latent-pair cache and its key: content-addressed inversions, checksummed on every read.

An inversion is named by what determines it (``InversionSpec``): the tenant it belongs to, the
image bytes' sha256, the model, the source prompt and the inversion parameters with defaults filled
in. The tenant is part of the name, so one tenant's requests never hit (or time) another's entries. The entry holds
the engine's safetensors bytes, their sha256 (a mismatch drops the entry, so a corrupt one is
recomputed and never used) and metadata that records the numerics fingerprint. Entries and the
uploads they were made from expire ``inversion_ttl_s`` after their last use, and the least
recently used go first once the cache holds more than ``cache_max_bytes``.
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

from .keys import Keys
from .settings import PUBLIC_TENANT, Settings

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


class InversionCache:
    """Inversions, their specs and the uploads they came from, in Redis."""

    def __init__(self, redis: Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys(settings.key_prefix)

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

    async def put(self, inversion_id: str, data: bytes, meta: dict[str, Any]) -> CachedInversion:
        """Store an entry (with its checksum), then evict what the budget no longer holds."""
        meta = {**meta, "inversion_id": inversion_id, "size": len(data), "created_at": time.time()}
        key = self.keys.inversion(inversion_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"data": data, "checksum": sha256(data), "meta": json.dumps(meta)})
            pipe.expire(key, self.ttl)
            pipe.zadd(self.keys.cache_lru, {inversion_id: time.time()})
            pipe.hset(self.keys.cache_sizes, inversion_id, len(data))
            await pipe.execute()
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

    async def delete(self, inversion_id: str) -> bool:
        """Forget the inversion entirely (entry, spec, its tenant's index entry); False if there was nothing."""
        spec = await self.spec(inversion_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.inversion(inversion_id), self.keys.inversion_spec(inversion_id))
            if spec is not None:
                pipe.zrem(self.keys.tenant_inversions(spec.tenant), inversion_id)
            existed, *_ = await pipe.execute()
        await self.drop(inversion_id)
        return bool(existed)

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
            if image_sha256:
                pipe.expire(self.keys.blob(image_sha256), self.ttl)
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
            await pipe.execute()

    async def spec(self, inversion_id: str) -> InversionSpec | None:
        if not is_inversion_id(inversion_id):
            return None
        raw = await self.redis.get(self.keys.inversion_spec(inversion_id))
        return InversionSpec.model_validate_json(raw) if raw else None

    async def put_blob(self, data: bytes) -> str:
        """Keep uploaded bytes under their sha256 (stored once however often uploaded)."""
        digest = sha256(data)
        key = self.keys.blob(digest)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, data, ex=self.ttl, nx=True)
            pipe.expire(key, self.ttl)
            await pipe.execute()
        return digest

    async def blob(self, digest: str) -> bytes | None:
        data = await self.redis.get(self.keys.blob(digest))
        return data if data is not None and sha256(data) == digest else None

    # --- the job making an inversion -----------------------------------------------------------

    async def set_maker(self, inversion_id: str, job_id: str) -> None:
        """Record ``job_id`` as the job now making the inversion (identical requests then join it)."""
        await self.redis.set(self.keys.inversion_job(inversion_id), job_id, ex=self.settings.job_ttl_s)

    async def maker(self, inversion_id: str) -> str | None:
        current = await self.redis.get(self.keys.inversion_job(inversion_id))
        return current.decode() if current else None

    async def release_maker(self, inversion_id: str, job_id: str) -> None:
        key = self.keys.inversion_job(inversion_id)
        if await self.redis.get(key) == job_id.encode():
            await self.redis.delete(key)
