"""The queue's delivery guarantees, on a real Redis, with consumers standing in for workers:
leases keep live jobs, expired leases are reclaimed, too many deliveries dead-letter a job."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis
from support import REDIS_URL

from bdia.jobqueue.jobs import Job, JobQueue
from bdia.jobqueue.settings import Settings

MODEL = "tiny-random"


def _queue(prefix: str, **overrides: object) -> JobQueue:
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, **overrides)
    return JobQueue(Redis.from_url(REDIS_URL), settings)


def _job(n: int = 0) -> Job:
    return Job(kind="invert", model=MODEL, inversion_id=f"inv_{n}", params={"steps": 4})


def test_a_renewed_lease_is_never_reclaimed_and_an_expired_one_is(prefix: str) -> None:
    async def scenario() -> None:
        queue = _queue(prefix, lease_s=0.3)
        await queue.ensure_group(MODEL)
        job = await queue.submit(_job())
        first = await queue.claim(MODEL, "alive", block_ms=100)
        assert first is not None and first.job_id == job.id and first.deliveries == 1
        for _ in range(8):  # 0.8 s of renewals: far past the 0.3 s lease
            await asyncio.sleep(0.1)
            assert await queue.renew(MODEL, first.message_id, "alive")
            assert await queue.claim(MODEL, "thief", block_ms=10) is None
        assert not await queue.renew(MODEL, first.message_id, "thief")  # not its job

        await asyncio.sleep(0.4)  # "alive" died: no renewals
        second = await queue.claim(MODEL, "rescuer", block_ms=10)
        assert second is not None and second.message_id == first.message_id and second.deliveries == 2
        assert not await queue.renew(MODEL, first.message_id, "alive")  # the dead worker lost it
        assert await queue.renew(MODEL, first.message_id, "rescuer")
        await queue.redis.aclose()

    asyncio.run(scenario())


def test_too_many_deliveries_dead_letter_the_job(prefix: str) -> None:
    async def scenario() -> None:
        queue = _queue(prefix, lease_s=0.1, max_deliveries=2)
        await queue.ensure_group(MODEL)
        job = await queue.submit(_job())
        deliveries = []
        for consumer in ("a", "b", "c"):
            delivery = await queue.claim(MODEL, consumer, block_ms=10)
            assert delivery is not None
            deliveries.append(delivery.deliveries)
            await asyncio.sleep(0.15)
        assert deliveries == [1, 2, 3]
        assert deliveries[-1] > queue.settings.max_deliveries
        await queue.dead_letter(job, delivery)

        failed = await queue.get(job.id)
        assert failed.status == "failed" and failed.error["code"] == "max_deliveries_exceeded"
        (entry,) = await queue.redis.xrange(queue.keys.dead_letter)
        assert entry[1][b"job"].decode() == job.id
        assert json.loads(entry[1][b"error"])["code"] == "max_deliveries_exceeded"
        assert await queue.claim(MODEL, "d", block_ms=10) is None  # acknowledged: gone for good
        assert [e.event for e in await queue.events(job.id)] == ["queued", "failed"]
        await queue.redis.aclose()

    asyncio.run(scenario())


def test_queue_positions_and_depth(prefix: str) -> None:
    async def scenario() -> None:
        queue = _queue(prefix)
        await queue.ensure_group(MODEL)
        jobs = [await queue.submit(_job(n)) for n in range(3)]
        assert [await queue.position(j) for j in jobs] == [1, 2, 3]
        assert await queue.depth(MODEL) == 3
        assert await queue.claim(MODEL, "w", block_ms=10) is not None
        assert await queue.position(jobs[1]) == 1 and await queue.depth(MODEL) == 2
        assert await queue.cancel(jobs[1].id) == "canceled"
        assert await queue.depth(MODEL) == 1 and await queue.position(jobs[2]) == 1
        await queue.redis.aclose()

    asyncio.run(scenario())
