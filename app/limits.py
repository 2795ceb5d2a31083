"""Limits on what a client may send: the request body's size (counted as it streams) and its rate.

The cap on a tenant's unfinished jobs and the global queue bound are enforced where jobs are
queued (``JobQueue.submit`` and ``routes.common.enqueue``).
"""

from __future__ import annotations

import time

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bdia.jobqueue.settings import PUBLIC_TENANT

from .auth import tenant_of
from .deps import ServicesDep
from .problems import Problem


def too_large(limit: int) -> Problem:
    return Problem(413, "payload_too_large", f"the request body exceeds {limit} bytes")


class LimitBody:
    """ASGI middleware: 413 ``payload_too_large`` once a body passes ``limit`` bytes, counted while it
    streams in (a missing or false ``Content-Length`` does not get past it). The app's own response
    to the interrupted read is replaced by the 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await too_large(self.limit).response(scope["path"])(scope, receive, send)
            return
        received = 0
        exceeded = started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise too_large(self.limit)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded and not started:  # whatever the app made of the interrupted read: answer 413
                started = True
                await too_large(self.limit).response(scope["path"])(scope, _nothing, send)
            elif not exceeded:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise
            if not started:
                await too_large(self.limit).response(scope["path"])(scope, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


async def rate_limit(request: Request, services: ServicesDep) -> None:
    """429 ``rate_limited`` once a tenant's submissions this minute exceed the configured rate."""
    limit = services.settings.rate_limit_per_minute
    if limit <= 0:
        return
    tenant = tenant_of(request)
    if tenant == PUBLIC_TENANT:  # open deployment: limit per client address
        tenant = f"ip-{request.client.host if request.client else 'unknown'}"
    now = time.time()
    key = services.keys.rate(tenant, int(now // 60))
    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
    if count > limit:
        retry = str(60 - int(now % 60))
        raise Problem(429, "rate_limited", f"more than {limit} submissions a minute", headers={"Retry-After": retry})
