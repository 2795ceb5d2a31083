"""Every stored byte within a budget: uploads and result images counted and evicted oldest first; DELETE of an
inversion is final (a job still making it stores nothing, its upload goes, a repeat answers 204); the
inversion's metadata is read without its bytes. Real Redis; the DELETE race with real processes."""

from __future__ import annotations

import asyncio
import json
import time

from redis.asyncio import Redis
from support import REDIS_URL, Deployment, make_png

from bdia.client import BdiaClient
from bdia.jobqueue.cache import InversionCache, InversionSpec, sha256
from bdia.jobqueue.jobs import Job, JobQueue
from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import Settings


def _run(scenario) -> None:
    asyncio.run(scenario())


def test_uploads_count_against_their_budget_and_the_least_recently_used_go_first(prefix: str) -> None:
    async def scenario() -> None:
        settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, uploads_max_bytes=250)
        redis = Redis.from_url(REDIS_URL)
        cache = InversionCache(redis, settings)
        a, b, c = (letter.encode() * 100 for letter in "abc")
        for data in (a, b):
            await cache.put_blob(data)
        await cache.put_blob(a)  # a used again: b is now the least recently used
        assert await cache.uploads.usage() == (2, 200)
        await cache.put_blob(c)
        assert await cache.blob(sha256(b)) is None and await cache.blob(sha256(a)) == a
        assert await cache.uploads.usage() == (2, 200)
        assert int(await redis.hget(cache.keys.stats, 'storage_evictions_total{kind="uploads"}')) == 1
        await redis.aclose()

    _run(scenario)


def test_a_submissions_uploads_are_counted_and_evict_older_ones(api, redis_client, prefix: str) -> None:
    """Uploads stored by a submission (in the step that admits its job) count against the budget too."""
    images = [make_png(seed) for seed in range(3)]
    client = api(uploads_max_bytes=2 * max(len(i) for i in images) + 10)
    for image in images:
        response = client.post("/v1/inversions", files={"image": ("a.png", image, "image/png")}, data={"steps": "3"})
        assert response.status_code == 202, response.text
    keys = Keys(prefix)
    held = [redis_client.exists(keys.blob(sha256(image))) for image in images]
    assert held == [0, 1, 1]
    total = int(redis_client.get(keys.budget("uploads").total))
    assert total == len(images[1]) + len(images[2]) <= 2 * max(len(i) for i in images) + 10
    refs = redis_client.zrange(keys.blob_refs(sha256(images[2])), 0, -1)
    assert len(refs) == 1 and refs[0].startswith(b"inv_")  # the inversion made from it


def test_results_count_against_their_budget_and_the_oldest_go_first(prefix: str) -> None:
    async def scenario() -> None:
        settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, results_max_bytes=250, max_jobs_per_tenant=0)
        redis = Redis.from_url(REDIS_URL)
        queue = JobQueue(redis, settings)
        jobs = []
        for n in range(3):
            job = await queue.submit(Job(kind="edit", model="m", inversion_id="inv_" + "0" * 32, params={}))
            await queue.start(job, "w", 1)
            job = await queue.get(job.id)
            assert await queue.finish(job, "succeeded", result={}, output=bytes([n]) * 100)
            jobs.append(job)
        assert await queue.result(jobs[0].id) is None
        assert [await queue.result(j.id) for j in jobs[1:]] == [b"\x01" * 100, b"\x02" * 100]
        assert await queue.results.usage() == (2, 200)
        ttl = await redis.ttl(queue.keys.result(jobs[2].id))
        assert 0 < ttl <= settings.job_ttl_s  # and each still expires with its job
        await redis.aclose()

    _run(scenario)


def test_a_deleted_inversion_is_not_written_back_and_a_second_delete_is_204(prefix: str) -> None:
    async def scenario() -> None:
        settings = Settings(redis_url=REDIS_URL, key_prefix=prefix)
        redis = Redis.from_url(REDIS_URL)
        cache = InversionCache(redis, settings)
        image = b"image bytes"
        spec = InversionSpec(model="m", image_sha256=await cache.put_blob(image), tenant="t")
        await cache.put_spec(spec)
        k, inversion_id = cache.keys, spec.inversion_id
        assert await cache.delete(inversion_id, "other") == (False, None)
        assert await cache.delete(inversion_id, "t") == (True, None)
        # The job that was making it finishes afterwards: its write-back is discarded, atomically.
        assert await cache.put(inversion_id, b"latents", {"image_sha256": spec.image_sha256}) is None
        assert not await redis.exists(
            k.inversion(inversion_id), k.inversion_spec(inversion_id), k.blob(spec.image_sha256)
        )
        assert await cache.uploads.usage() == (0, 0)
        assert await cache.delete(inversion_id, "t") == (True, None)  # idempotent
        assert await cache.delete(inversion_id, "other") == (False, None)
        # Requested again, it is stored again.
        await cache.put_spec(spec)
        assert await cache.put(inversion_id, b"latents", {"image_sha256": spec.image_sha256}) is not None
        await redis.aclose()

    _run(scenario)


def test_an_upload_another_inversion_uses_outlives_a_delete(prefix: str) -> None:
    async def scenario() -> None:
        settings = Settings(redis_url=REDIS_URL, key_prefix=prefix)
        redis = Redis.from_url(REDIS_URL)
        cache = InversionCache(redis, settings)
        digest = await cache.put_blob(b"shared image")
        one, two = (InversionSpec(model="m", image_sha256=digest, prompt=p) for p in ("one", "two"))
        for spec in (one, two):
            await cache.put_spec(spec)
        assert (await cache.delete(one.inversion_id, one.tenant))[0]
        assert await cache.blob(digest) == b"shared image"
        assert (await cache.delete(two.inversion_id, two.tenant))[0]
        assert await cache.blob(digest) is None
        await redis.aclose()

    _run(scenario)


def test_inversion_metadata_is_read_without_the_entry_bytes(api, redis_client, prefix: str) -> None:
    """GET /v1/inversions/{id} reads the metadata alone: it neither reads nor hashes the latents (a corrupt
    value, which any read of them would detect and drop, leaves the answer and the entry alone)."""
    client = api()
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix)

    async def store() -> str:
        redis = Redis.from_url(REDIS_URL)
        cache = InversionCache(redis, settings)
        spec = InversionSpec(model="tiny-random", image_sha256="ab" * 32)
        await cache.put_spec(spec)
        meta = {"model": "tiny-random", "prompt": "", "params": spec.params, "image_sha256": spec.image_sha256}
        await cache.put(spec.inversion_id, b"x" * 1000, {**meta, "nfe": 3, "level": 3})
        await redis.aclose()
        return spec.inversion_id

    inversion_id = asyncio.run(store())
    key = Keys(prefix).inversion(inversion_id)
    redis_client.hset(key, "data", b"not what the checksum says")
    response = client.get(f"/v1/inversions/{inversion_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["size_bytes"] == 1000 and body["nfe"] == 3
    assert redis_client.hget(key, "data") == b"not what the checksum says"  # not read, so not dropped
    assert json.loads(redis_client.hget(key, "meta"))["inversion_id"] == inversion_id


def test_delete_while_the_inversion_is_being_made_sticks(
    client: BdiaClient, http, deployment: Deployment, redis_client
) -> None:
    """DELETE during the invert job: the job is canceled (or, finishing first, stores nothing); afterwards no
    latents, spec or upload of the inversion remain, and a second DELETE answers 204."""
    image = make_png(4242)
    submitted = client.invert(image, "deleted while running", steps=400)
    job_id = submitted.job.id
    deadline = time.monotonic() + 60
    while client.job(job_id).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.job(job_id).status == "running"
    client.delete_inversion(submitted.inversion_id)
    finished = client.wait(job_id, timeout=120, raise_on_failure=False)
    assert finished.status in ("canceled", "succeeded")
    time.sleep(0.3)  # a write-back would come right after the final status
    k, inversion_id = deployment.keys, submitted.inversion_id
    left = [
        key
        for key in (k.inversion(inversion_id), k.inversion_spec(inversion_id), k.blob(sha256(image)), k.result(job_id))
        if redis_client.exists(key)
    ]
    assert left == []
    assert not redis_client.hexists(k.budget("uploads").sizes, k.blob(sha256(image)))
    client.delete_inversion(inversion_id)  # 204 again: no error
    response = http.get(f"/v1/inversions/{inversion_id}")
    assert response.status_code == 404
