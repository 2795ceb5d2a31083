"""What requests need: the services a route uses, authentication and rate limiting."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from starlette.types import ASGIApp, Receive, Scope, Send

from .cache import InversionCache
from .jobs import JobQueue
from .keys import Keys
from .problems import Problem
from .settings import Settings


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
        redis = Redis.from_url(settings.redis_url)
        keys = Keys(settings.key_prefix)
        return cls(settings, redis, keys, JobQueue(redis, settings, keys), InversionCache(redis, settings, keys))


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def api_key(request: Request) -> str | None:
    """The bearer token (``Authorization: Bearer …``, or ``X-API-Key``) a request carries."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


class RequireApiKey:
    """ASGI middleware: 401 ``unauthorized`` on ``/v1/`` unless the request carries one of the keys.

    A middleware rather than a dependency, so that status polling pays nothing when auth is off.
    """

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = api_key(Request(scope)) or ""
            if not any(hmac.compare_digest(given, key) for key in self.keys):
                problem = Problem(
                    401, "unauthorized", "a valid API key is required", headers={"WWW-Authenticate": "Bearer"}
                )
                await problem.response(scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def rate_limit(request: Request, services: ServicesDep) -> None:
    """429 ``rate_limited`` once a client's submissions this minute exceed the configured rate."""
    limit = services.settings.rate_limit_per_minute
    if limit <= 0:
        return
    client = api_key(request) or (request.client.host if request.client else "unknown")
    now = time.time()
    key = services.keys.rate(client, int(now // 60))
    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
    if count > limit:
        retry = str(60 - int(now % 60))
        raise Problem(429, "rate_limited", f"more than {limit} submissions a minute", headers={"Retry-After": retry})
