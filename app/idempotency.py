"""``Idempotency-Key`` for POST endpoints: the same key and body replay the original response.

The first request with a key reserves it (a placeholder with the body's fingerprint) for a short lease,
``idempotency_lease_s``, renewed while the request runs, then stores its successful response for
``idempotency_ttl_s``. A repeat with the same body gets that response again; with another body,
422 ``idempotency_key_reused``; while the first is still running, 409 ``idempotency_in_progress``.
Error responses are not stored: a client may fix its request and retry under the same key. A request
whose process died leaves its reservation to expire within one lease: a retry then runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, Request
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .auth import tenant_of
from .deps import Services
from .problems import Problem
from .schemas import no_default

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
KEPT_HEADERS = ("Location", "Preference-Applied")
"""Headers of a stored response that its replay carries again."""
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response to an earlier request with the same "
        "Idempotency-Key and body",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
"""The OpenAPI ``headers`` entry of a response that may be a replay."""

_RENEW = """
-- KEYS: slot.  ARGV: reservation, lease (ms).  Extends the lease if the slot still holds this reservation.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
-- KEYS: slot.  ARGV: reservation.  Deletes the slot if it still holds this reservation.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="a repeat with the same key and body gets the stored response again (docs/api.md#idempotency)",
        json_schema_extra=no_default,
    ),
]


async def idempotent(
    request: Request,
    services: Services,
    key: str | None,
    fingerprint: str,
    respond: Callable[[], Awaitable[Response]],
) -> Response:
    """Run ``respond`` at most once per (path, ``key``); ``fingerprint`` identifies the request body."""
    if key is None:
        return await respond()
    redis, ttl = services.redis, services.settings.idempotency_ttl_s
    lease_ms = max(1, round(services.settings.idempotency_lease_s * 1000))
    slot = services.keys.idempotency(f"{tenant_of(request)}:{request.url.path}", key)
    reservation = json.dumps({"fingerprint": fingerprint, "reservation": secrets.token_hex(8)})
    if await redis.set(slot, reservation, nx=True, px=lease_ms):
        holding = asyncio.create_task(_hold(redis, slot, reservation, lease_ms))
        try:
            response = await respond()
        except BaseException:
            holding.cancel()
            await redis.register_script(_RELEASE)(keys=[slot], args=[reservation])
            raise
        holding.cancel()
        if 200 <= response.status_code < 300 and isinstance(response, JSONResponse):
            headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
            body = json.loads(response.body)
            stored = {"fingerprint": fingerprint, "status": response.status_code, "body": body, "headers": headers}
            await redis.set(slot, json.dumps(stored), ex=ttl)
        else:
            await redis.register_script(_RELEASE)(keys=[slot], args=[reservation])
        return response
    stored = json.loads(await redis.get(slot) or "{}")
    if stored.get("fingerprint") != fingerprint:
        raise Problem(
            422,
            "idempotency_key_reused",
            f"{HEADER} {key!r} was already used with a different request body",
        )
    if "status" not in stored:
        raise Problem(
            409,
            "idempotency_in_progress",
            f"a request with {HEADER} {key!r} is still being processed",
            headers={"Retry-After": "1"},
        )
    headers = {**stored.get("headers", {}), "Idempotent-Replayed": "true"}
    return JSONResponse(stored["body"], stored["status"], headers=headers)


async def _hold(redis: Redis, slot: str, reservation: str, lease_ms: int) -> None:
    """Renew the reservation every third of its lease while its request runs (until cancelled, or until
    the slot no longer holds it)."""
    renew = redis.register_script(_RENEW)
    while True:
        await asyncio.sleep(lease_ms / 3000)
        with contextlib.suppress(RedisError):  # try again at the next renewal; the lease covers two misses
            if not await renew(keys=[slot], args=[reservation, lease_ms]):
                return
