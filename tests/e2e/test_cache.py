"""The latent-pair cache: content addressing, checksums (a corrupt entry is recomputed), LRU eviction."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis
from safetensors.numpy import load
from support import REDIS_URL, Deployment, make_png

from bdia.client import BdiaClient
from bdia.jobqueue.cache import InversionCache, InversionSpec
from bdia.jobqueue.settings import Settings


def test_inversion_ids_are_content_addresses() -> None:
    spec = InversionSpec(model="tiny-random", image_sha256="ab" * 32, prompt="a cat")
    assert spec.inversion_id == InversionSpec(**spec.model_dump()).inversion_id
    assert spec.inversion_id.startswith("inv_") and len(spec.inversion_id) == 36
    for change in (
        {"prompt": "a dog"},
        {"steps": 49},
        {"model": "shapes"},
        {"image_sha256": "cd" * 32},
        {"gamma": 0.99},
        {"exact": False},
        {"strength": 0.8},
    ):
        assert InversionSpec(**{**spec.model_dump(), **change}).inversion_id != spec.inversion_id


def test_a_corrupt_entry_is_detected_dropped_and_recomputed(
    client: BdiaClient, deployment: Deployment, redis_client
) -> None:
    submitted = client.invert(make_png(40), "a gradient", steps=5)
    client.wait(submitted.job)
    inversion_id = submitted.inversion_id
    original = load(client.latents(inversion_id))

    key = deployment.keys.inversion(inversion_id)
    data = bytearray(redis_client.hget(key, "data"))
    data[-1] ^= 0x01  # one flipped bit in the stored tensors
    redis_client.hset(key, "data", bytes(data))
    corrupt_before = int(redis_client.hget(deployment.keys.stats, "cache_corrupt_total") or 0)

    # The next edit finds the checksum wrong, drops the entry and inverts again.
    edit = client.wait(client.edit(inversion_id, "a blue gradient"))
    assert edit.metrics["inversion_cached"] is False and edit.metrics["nfe"] == 5 + 4
    assert int(redis_client.hget(deployment.keys.stats, "cache_corrupt_total")) == corrupt_before + 1
    recomputed = load(client.latents(inversion_id))
    assert all((recomputed[name] == original[name]).all() for name in ("z_hi", "z_lo", "z0"))

    # Corrupt again: a repeated inversion request is not answered from the bad entry.
    redis_client.hset(key, "checksum", "0" * 64)
    again = client.invert(make_png(40), "a gradient", steps=5)
    assert not again.cached and again.job is not None
    assert client.wait(again.job).metrics["inversion_cached"] is False


def test_least_recently_used_entries_are_evicted_beyond_the_budget(prefix: str) -> None:
    async def scenario() -> None:
        settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, cache_max_bytes=250)
        cache = InversionCache(Redis.from_url(REDIS_URL), settings)
        meta = {"model": "m", "prompt": "", "params": {}, "image_sha256": "x"}
        a, b, c = ("inv_" + letter * 32 for letter in "abc")
        for name in (a, b):
            await cache.put(name, name.encode()[-1:] * 100, meta)
        assert await cache.get(a) is not None  # a is now the most recently used
        await cache.put(c, b"c" * 100, meta)
        assert await cache.get(b) is None and await cache.get(a) is not None
        assert await cache.usage() == (2, 200)
        entry = await cache.get(c)
        assert entry.meta["size"] == 100 and json.loads(json.dumps(entry.meta))
        await cache.redis.aclose()

    asyncio.run(scenario())
