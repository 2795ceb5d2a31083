"""Webhooks: a job's events POSTed to the URL its request named, signed per Standard Webhooks.

    bdia webhooks [--redis-url URL]        (app.webhooks:main; the API also runs one unless
                                            BDIA_API_WEBHOOKS=false)

Workers never deliver anything: the Lua script that moves a job to a final status (or starts it) also
appends ``{job, event}`` to the outbox stream (``keys.webhooks``) when the request's ``webhook_events``
ask for it (``completed``, the default; ``started``; ``progress``, queued by ``JobQueue.progress`` at
most every ``webhook_progress_s``), so an event is recorded exactly when it happens, and a worker pays
one XADD for it. Dispatchers read the outbox through a
consumer group and POST ``{"type": "job.<event>", "timestamp": …, "data": <the job>}`` with the
headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 of
HMAC-SHA256 over ``id.timestamp.body`` keyed by the tenant's ``whsec_`` secret). A 2xx answer
acknowledges the entry; anything else is tried again after ``webhook_backoff_s``, doubling, up to
``webhook_max_attempts`` times (the ``webhook-id`` stays the same, so receivers can deduplicate).
An entry whose dispatcher died mid-delivery is reclaimed by another after ``ORPHAN_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import time
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bdia.jobqueue.jobs import Job
from bdia.jobqueue.keys import WEBHOOK_GROUP, Keys
from bdia.jobqueue.settings import Settings, get_settings

from .problems import invalid
from .schemas import JobOut, iso, to_json

log = logging.getLogger("bdia.webhooks")

MAX_URL_CHARS = 2048
MAX_BACKOFF_S = 600.0
ORPHAN_S = 900
"""An outbox entry held this long by a dispatcher that neither delivered nor rescheduled it is reclaimed."""
BATCH = 16


# --- the signature ------------------------------------------------------------------------------


def secret_for(settings: Settings, tenant: str) -> str | None:
    """The signing secret for a tenant's webhooks: its own, else the deployment's; None when neither is set."""
    for entry in settings.webhook_secrets.split(","):
        name, _, secret = entry.strip().partition(":")
        if name == tenant and secret:
            return secret
    return settings.webhook_secret or None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64(HMAC-SHA256(key, ``id.timestamp.body``))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver checks: one of the signatures matches and the timestamp is recent."""
    try:
        msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
        given = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, signature) for signature in given)


def new_secret() -> str:
    """A fresh ``whsec_`` secret (24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_webhook(settings: Settings, tenant: str, url: str | None) -> str | None:
    """The webhook URL of a request, checked: http(s), a host, a length limit, a secret to sign with."""
    if url is None or url == "":
        return None
    parts = urlsplit(url)
    if len(url) > MAX_URL_CHARS or parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("webhook", f"must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    if secret_for(settings, tenant) is None:
        raise invalid(
            "webhook", "webhooks are not enabled on this deployment (no signing secret)", code="webhooks_disabled"
        )
    return url


# --- the dispatcher -----------------------------------------------------------------------------


class Dispatcher:
    """Delivers the outbox's events; any number may run against one Redis."""

    def __init__(self, settings: Settings, redis: Redis | None = None, name: str | None = None) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout_s)
        self.keys = Keys(settings.key_prefix)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.http = httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; Redis outages are waited out with a doubling pause."""
        pause = 0.5
        while not stop.is_set():
            try:
                await self.ensure_group()
                while not stop.is_set():
                    await self.step(block_ms=500)
                    pause = 0.5
            except RedisError as exc:
                log.warning("webhooks: Redis error (%s); retrying in %.1fs", exc, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                pause = min(pause * 2, self.settings.reconnect_max_s)
        await self.http.aclose()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.webhooks, WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self, block_ms: int = 0) -> int:
        """One pass: retries that are due, entries orphaned by a dead dispatcher, then new entries."""
        keys, redis = self.keys, self.redis
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        for entry_id in await redis.zrangebyscore(keys.webhook_retry, "-inf", time.time(), start=0, num=BATCH):
            if await redis.zrem(keys.webhook_retry, entry_id):  # this dispatcher won it
                entries += await redis.xrange(keys.webhooks, entry_id, entry_id)
        _, orphans, *_ = await redis.xautoclaim(
            keys.webhooks, WEBHOOK_GROUP, self.name, min_idle_time=ORPHAN_S * 1000, start_id="0-0", count=BATCH
        )
        entries += [(mid, fields) for mid, fields in orphans if fields]
        if not entries:
            reply = await redis.xreadgroup(
                WEBHOOK_GROUP, self.name, {keys.webhooks: ">"}, count=BATCH, block=block_ms or None
            )
            for _, new in reply or []:
                entries += new
        await asyncio.gather(*(self.deliver(mid.decode(), fields) for mid, fields in entries))
        return len(entries)

    async def deliver(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """One attempt at one event; afterwards the entry is acknowledged or scheduled again."""
        keys, redis = self.keys, self.redis
        job_id, event = fields[b"job"].decode(), fields[b"event"].decode()
        raw = await redis.hgetall(keys.job(job_id))
        job = Job.from_hash(raw) if raw else None
        if job is None or not job.webhook:
            return await self._done(entry_id, "expired")
        attempt = await redis.hincrby(keys.webhook_attempts, entry_id, 1)
        data = to_json(JobOut.from_job(job))
        body = json.dumps({"type": f"job.{event}", "timestamp": iso(time.time()), "data": data}).encode()
        error = await self._post(job, f"msg_{entry_id}", body)
        if error is None:
            log.info("webhook for job %s (%s) delivered, attempt %d", job.id, event, attempt)
            return await self._done(entry_id, "delivered")
        if attempt >= self.settings.webhook_max_attempts:
            log.warning("webhook for job %s (%s) given up after %d attempts: %s", job.id, event, attempt, error)
            return await self._done(entry_id, "given_up")
        wait = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        log.info("webhook for job %s (%s) attempt %d failed (%s); again in %.1fs", job.id, event, attempt, error, wait)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.webhook_retry, {entry_id: time.time() + wait})
            pipe.xclaim(keys.webhooks, WEBHOOK_GROUP, self.name, 0, [entry_id], justid=True)  # not an orphan
            pipe.hincrby(keys.stats, 'webhooks_total{outcome="retried"}', 1)
            await pipe.execute()

    async def _post(self, job: Job, msg_id: str, body: bytes) -> str | None:
        """POST the event; None on a 2xx answer, else what went wrong."""
        secret = secret_for(self.settings, job.tenant)
        if secret is None or job.webhook is None:
            return "no signing secret configured"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
            "user-agent": "bdia-webhooks/1",
        }
        try:
            response = await self.http.post(job.webhook, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

    async def _done(self, entry_id: str, outcome: str) -> None:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.webhooks, WEBHOOK_GROUP, entry_id)
            pipe.xdel(keys.webhooks, entry_id)
            pipe.hdel(keys.webhook_attempts, entry_id)
            pipe.zrem(keys.webhook_retry, entry_id)
            pipe.hincrby(keys.stats, f'webhooks_total{{outcome="{outcome}"}}', 1)
            await pipe.execute()


def main(argv: list[str] | None = None) -> int:
    """``bdia webhooks``: deliver webhook events until SIGTERM or Ctrl-C. Returns the exit code."""
    from bdia.jobqueue.logs import configure_logging

    parser = argparse.ArgumentParser(prog="bdia webhooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="default: $BDIA_REDIS_URL")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.redis_url:
        settings = settings.model_copy(update={"redis_url": args.redis_url})
    configure_logging(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        dispatcher = Dispatcher(settings)
        log.info("webhook dispatcher %s started", dispatcher.name)
        await dispatcher.run(stop)
        await dispatcher.redis.aclose()

    asyncio.run(serve())
    return 0
