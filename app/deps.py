"""What requests need: the services a route uses (one set per API process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

from bdia.jobqueue.cache import InversionCache
from bdia.jobqueue.jobs import JobQueue
from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import Settings

from .streams import EventHub

LONGEST_BLOCK_S = 15
"""The longest a request waits for a job's events before it looks around (an SSE stream's keep-alive)."""


def connect_redis(settings: Settings) -> Redis:
    """The pooled client of an API process, which fails fast when Redis is unreachable or hung: a request
    waits at most ``redis_timeout_s`` for a free connection (of ``redis_max_connections``), to connect,
    and for each reply; a dropped connection is retried once at once, a timeout is not (it would double
    the wait). Nothing blocks on it: followed event streams are read by ``EventHub``."""
    timeout = settings.redis_timeout_s
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


@dataclass(frozen=True)
class Services:
    """What one API process holds: its settings, its Redis-backed stores and its event-stream reader."""

    settings: Settings
    redis: Redis
    keys: Keys
    queue: JobQueue
    cache: InversionCache
    streams: EventHub

    @classmethod
    def connect(cls, settings: Settings) -> Services:
        redis = connect_redis(settings)
        keys = Keys(settings.key_prefix)
        queue = JobQueue(redis, settings, keys)
        streams = EventHub(settings, queue)
        return cls(settings, redis, keys, queue, InversionCache(redis, settings, keys), streams)

    async def close(self) -> None:
        await self.streams.close()
        await self.redis.aclose()


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
