"""``bdia.app.streams.EventHub`` over a real Redis: many followers of several jobs get every event after
their cursor exactly once and in order (also when they join a followed job late, or fall behind past
their queue), while none of them holds a pooled connection."""

from __future__ import annotations

import asyncio
import json
import time

from redis.asyncio import Redis
from support import REDIS_URL

from bdia.app.deps import Services
from bdia.app.streams import QUEUE_SIZE, Subscription, stream_position
from bdia.jobqueue.settings import Settings


async def _append(redis: Redis, key: str, steps: range) -> list[str]:
    return [
        (await redis.xadd(key, {"event": "progress", "data": json.dumps({"step": step})})).decode() for step in steps
    ]


async def _collect(subscription: Subscription, count: int, wait_s: float = 5) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        batch = await subscription.next(wait_s)
        assert batch, f"nothing within {wait_s} s after {len(ids)} of {count} events"
        ids += [event.id for event in batch]
    return ids


def test_followers_get_every_event_once_in_order_and_hold_no_pooled_connection(prefix: str) -> None:
    async def run() -> None:
        services = Services.connect(Settings(redis_url=REDIS_URL, key_prefix=prefix, redis_max_connections=4))
        redis, hub = services.redis, services.streams
        keys = [services.keys.events(job) for job in ("job_a", "job_b")]
        try:
            early = await _append(redis, keys[0], range(3))
            a_all = await hub.subscribe("job_a")  # from the start
            a_late = await hub.subscribe("job_a", early[1])  # a reconnect after the second event
            b = await hub.subscribe("job_b")
            await asyncio.sleep(0.2)
            pool = redis.connection_pool
            assert not pool._in_use_connections, "a waiting follower holds a pooled connection"

            a_ids = early + await _append(redis, keys[0], range(3, 20))
            b_ids = await _append(redis, keys[1], range(10))
            joined = await hub.subscribe("job_a", a_ids[10])  # joins a job the hub already follows
            a_ids += await _append(redis, keys[0], range(20, 30))

            assert await _collect(a_all, 30) == a_ids
            assert await _collect(a_late, 28) == a_ids[2:]
            assert await _collect(joined, 19) == a_ids[11:]
            assert await _collect(b, 10) == b_ids

            behind = await hub.subscribe("job_b", b_ids[-1])  # falls behind past its queue
            assert await behind.next(0.2) == []
            flood = await _append(redis, keys[1], range(10, 10 + QUEUE_SIZE + 50))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            assert await _collect(behind, len(flood), wait_s=3) == flood
            assert time.monotonic() - started < 2, "the overflow was noticed only by waiting out a read"

            for subscription in (a_all, a_late, joined, b, behind):
                subscription.close()
            assert not hub.followers and not hub.cursors
        finally:
            await services.close()

    asyncio.run(run())


def test_stream_positions() -> None:
    assert stream_position("1700000000000-5") == (1700000000000, 5)
    assert stream_position("42") == (42, 0)
    assert stream_position("0-0") < stream_position("0-1") < stream_position("1-0")
    for bad in ("", "-1", "1-", "a-1", "1-2-3", " 1-2", str(2**64) + "-0", "1-" + str(2**64)):
        assert stream_position(bad) is None, bad
