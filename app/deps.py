"""What requests need: the services a route uses (one set per API process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bdia.jobqueue.cache import InversionCache
from bdia.jobqueue.jobs import JobQueue
from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import Settings

LONGEST_BLOCK_S = 15
"""The longest blocking Redis read a request makes (an SSE stream's wait between keep-alives)."""


def connect_redis(settings: Settings) -> Redis:
    """A Redis client that fails fast when Redis is unreachable: connecting takes at most
    ``redis_timeout_s``, a reply at most that beyond the longest blocking read; one retry."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s + LONGEST_BLOCK_S,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


@dataclass(frozen=True)
class Services:
    """What one API process holds: its settings and its Redis-backed stores."""

    settings: Settings
    redis: Redis
    keys: Keys
    queue: JobQueue
    cache: InversionCache

    @classmethod
    def connect(cls, settings: Settings) -> Services:
        redis = connect_redis(settings)
        keys = Keys(settings.key_prefix)
        return cls(settings, redis, keys, JobQueue(redis, settings, keys), InversionCache(redis, settings, keys))


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
