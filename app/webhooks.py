"""Webhooks: a job's events POSTed to the URL its request named, signed per Standard Webhooks.

    bdia webhooks [--redis-url URL]        (app.webhooks:main; the API also runs one unless
                                            BDIA_API_WEBHOOKS=false)
    bdia webhooks --secret-for TENANT      print the tenant's signing secret, for its receivers

Workers never deliver anything: the Lua script that moves a job to a final status (or starts it) also
appends ``{job, event}`` to the outbox stream (``keys.webhooks``) when the request's ``webhook_events``
ask for it (``completed``, the default; ``started``; ``progress``, queued by ``JobQueue.progress`` at
most every ``webhook_progress_s``), so an event is recorded exactly when it happens, and a worker pays
one XADD for it. Dispatchers read the outbox through a
consumer group and POST ``{"type": "job.<event>", "timestamp": …, "data": <the job>}`` with the
headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 of
HMAC-SHA256 over ``id.timestamp.body`` keyed by the tenant's ``whsec_`` secret, ``secret_for``). A 2xx
answer acknowledges the entry; anything else (an error status, a refused connection, a timeout, a
malformed URL: any exception) is that delivery's failure, tried again after ``webhook_backoff_s``,
doubling, up to ``webhook_max_attempts`` times (the ``webhook-id`` stays the same, so receivers can
deduplicate); a destination the policy refuses (``app.webhook_urls``) is not tried again. Deliveries
run side by side, at most ``webhook_concurrency`` per dispatcher, each within ``webhook_timeout_s``, so
a slow receiver delays only its own events. An entry whose dispatcher died mid-delivery is reclaimed by
another after ``ORPHAN_S``. Logs name a receiver by its redacted URL (no credentials, no query).
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
import sys
import time

import httpcore
import httpx
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bdia.jobqueue.jobs import Job, is_job_id
from bdia.jobqueue.keys import WEBHOOK_GROUP, Keys
from bdia.jobqueue.settings import Settings, get_settings

from .problems import invalid
from .schemas import JobOut, iso, to_json
from .webhook_urls import (
    MAX_URL_CHARS,
    DestinationRefused,
    PinnedBackend,
    Policy,
    Target,
    WebhookUrlError,
    redact,
    scrub,
)

log = logging.getLogger("bdia.webhooks")

__all__ = ["MAX_URL_CHARS", "Dispatcher", "check_webhook", "new_secret", "secret_for", "sign", "verify"]

MAX_BACKOFF_S = 600.0
ORPHAN_S = 900
"""An outbox entry held this long by a dispatcher that neither delivered nor rescheduled it is reclaimed."""
BATCH = 16
STOP_GRACE_S = 5.0
"""On stop, deliveries still running get this long to finish; the rest are tried again by any dispatcher."""


# --- the signature ------------------------------------------------------------------------------


def secret_for(settings: Settings, tenant: str) -> str | None:
    """The tenant's signing secret: its own from ``webhook_secrets``, else ``derive_secret`` of the
    deployment's; None when neither is set. No tenant can compute another's: that takes the deployment's."""
    for entry in settings.webhook_secrets.split(","):
        name, _, secret = entry.strip().partition(":")
        if name == tenant and secret:
            return secret
    return derive_secret(settings.webhook_secret, tenant) if settings.webhook_secret else None


def derive_secret(deployment_secret: str, tenant: str) -> str:
    """A tenant's secret derived from the deployment's: ``whsec_`` + base64(HMAC-SHA256(key, "bdia webhook
    secret v1:" + tenant)), where key is the deployment secret's bytes."""
    key = base64.b64decode(deployment_secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"bdia webhook secret v1:" + tenant.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(mac).decode()


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
    """The webhook URL of a request, checked (``webhook_urls.Policy.check``): 422 ``invalid_parameter``
    when malformed, ``webhook_url_forbidden`` for a destination that is not public and not allowed,
    ``webhooks_disabled`` when there is no secret to sign with. The detail never repeats the URL."""
    if url is None or url == "":
        return None
    try:
        Policy.from_settings(settings).check(url)
    except WebhookUrlError as exc:
        raise invalid("webhook", str(exc), code=exc.code) from None
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
        self.policy = Policy.from_settings(settings)
        self.http = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=settings.webhook_concurrency,
            keepalive_expiry=30.0,
            network_backend=PinnedBackend(self.policy),
        )
        self.running: dict[str, asyncio.Task[None]] = {}
        """Deliveries in flight, by outbox entry id."""

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; Redis outages are waited out with a doubling pause."""
        pause = 0.5
        try:
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
        finally:
            await self.drain(STOP_GRACE_S)
            await self.http.aclose()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.webhooks, WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self, block_ms: int = 0) -> int:
        """Start deliveries, as many as there are free slots: retries that are due, entries orphaned by a
        dead dispatcher, then new entries (waiting up to ``block_ms`` for some, less when a retry falls due
        sooner). Deliveries run as tasks: none waits for another. Returns how many were started."""
        keys, redis = self.keys, self.redis
        free = min(BATCH, self.settings.webhook_concurrency - len(self.running))
        if free <= 0:
            await asyncio.wait(list(self.running.values()), timeout=block_ms / 1000, return_when="FIRST_COMPLETED")
            return 0
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        for entry_id in await redis.zrangebyscore(keys.webhook_retry, "-inf", time.time(), start=0, num=free):
            if await redis.zrem(keys.webhook_retry, entry_id):  # this dispatcher won it
                entries += await redis.xrange(keys.webhooks, entry_id, entry_id)
        if len(entries) < free:
            _, orphans, *_ = await redis.xautoclaim(
                keys.webhooks, WEBHOOK_GROUP, self.name, ORPHAN_S * 1000, "0-0", count=free - len(entries)
            )
            entries += [(mid, fields) for mid, fields in orphans if fields]
        if not entries:
            block = block_ms
            due = await redis.zrange(keys.webhook_retry, 0, 0, withscores=True)
            if due and block:
                block = max(1, min(block, int((due[0][1] - time.time()) * 1000)))
            reply = await redis.xreadgroup(
                WEBHOOK_GROUP, self.name, {keys.webhooks: ">"}, count=free, block=block or None
            )
            for _, new in reply or []:
                entries += new
        started = 0
        for mid, fields in entries:
            entry_id = mid.decode()
            if entry_id not in self.running:
                task = asyncio.create_task(self._guarded(entry_id, fields))
                self.running[entry_id] = task
                task.add_done_callback(lambda _, entry_id=entry_id: self.running.pop(entry_id, None))
                started += 1
        return started

    async def drain(self, timeout_s: float) -> None:
        """Let the deliveries in flight finish for up to ``timeout_s``; the rest are cancelled and put back
        on the retry schedule, due now."""
        tasks = dict(self.running)
        if not tasks:
            return
        await asyncio.wait(list(tasks.values()), timeout=timeout_s)
        left = [entry_id for entry_id, task in tasks.items() if not task.done()]
        for entry_id in left:
            tasks[entry_id].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if left:
            with contextlib.suppress(RedisError):
                await self.redis.zadd(self.keys.webhook_retry, dict.fromkeys(left, time.time()))

    async def _guarded(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """``deliver``, whose errors never reach the dispatcher: a Redis error leaves the entry pending (it is
        reclaimed), anything else ends the entry, logged."""
        try:
            await self.deliver(entry_id, fields)
        except RedisError as exc:
            log.warning("webhooks: Redis error delivering outbox entry %s (%s); it will be reclaimed", entry_id, exc)
        except Exception:
            log.exception("webhooks: outbox entry %s could not be handled; given up", entry_id)
            with contextlib.suppress(RedisError):
                await self._done(entry_id, "given_up")

    async def deliver(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """One attempt at one event; afterwards the entry is acknowledged or scheduled again. Whatever the
        attempt raises is its failure."""
        keys, redis = self.keys, self.redis
        job_id, event = (fields.get(name, b"").decode(errors="replace") for name in (b"job", b"event"))
        if not is_job_id(job_id) or not event:
            log.warning("webhooks: outbox entry %s names no job; dropped", entry_id)
            return await self._done(entry_id, "given_up")
        raw = await redis.hgetall(keys.job(job_id))
        job = Job.from_hash(raw) if raw else None
        if job is None or not job.webhook:
            return await self._done(entry_id, "expired")
        where = redact(job.webhook)
        attempt = await redis.hincrby(keys.webhook_attempts, entry_id, 1)
        try:
            target = self.policy.check(job.webhook, names=False)  # names: judged once resolved
            data = to_json(JobOut.from_job(job))
            body = json.dumps({"type": f"job.{event}", "timestamp": iso(time.time()), "data": data}).encode()
            error = await asyncio.wait_for(
                self._post(job, target, f"msg_{entry_id}", body), self.settings.webhook_timeout_s
            )
        except (WebhookUrlError, DestinationRefused) as exc:  # not tried again: the policy will not change
            reason = scrub(str(exc), job.webhook)
            log.warning("webhook for job %s (%s) to %s refused: %s", job.id, event, where, reason)
            return await self._done(entry_id, "refused")
        except asyncio.TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g}s"
        except Exception as exc:
            error = _describe(exc, job.webhook)
        if error is None:
            log.info("webhook for job %s (%s) delivered to %s, attempt %d", job.id, event, where, attempt)
            return await self._done(entry_id, "delivered")
        if attempt >= self.settings.webhook_max_attempts:
            log.warning(
                "webhook for job %s (%s) to %s given up after %d attempts: %s", job.id, event, where, attempt, error
            )
            return await self._done(entry_id, "given_up")
        wait = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        log.info(
            "webhook for job %s (%s) to %s attempt %d failed (%s); again in %.1fs",
            job.id,
            event,
            where,
            attempt,
            error,
            wait,
        )
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.webhook_retry, {entry_id: time.time() + wait})
            pipe.xclaim(keys.webhooks, WEBHOOK_GROUP, self.name, 0, [entry_id], justid=True)  # not an orphan
            pipe.hincrby(keys.stats, 'webhooks_total{outcome="retried"}', 1)
            await pipe.execute()

    async def _post(self, job: Job, target: Target, msg_id: str, body: bytes) -> str | None:
        """POST the event to the checked target; None on a 2xx answer, else what went wrong (the answer's
        body is never read)."""
        secret = secret_for(self.settings, job.tenant)
        if secret is None:
            return "no signing secret configured"
        timestamp = int(time.time())
        headers = [
            (b"host", target.authority.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"webhook-id", msg_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(secret, msg_id, timestamp, body).encode()),
            (b"user-agent", b"bdia-webhooks/1"),
        ]
        timeout = self.settings.webhook_timeout_s
        extensions = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)}
        async with self.http.stream("POST", target.url, headers=headers, content=body, extensions=extensions) as answer:
            status = answer.status
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def _done(self, entry_id: str, outcome: str) -> None:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.webhooks, WEBHOOK_GROUP, entry_id)
            pipe.xdel(keys.webhooks, entry_id)
            pipe.hdel(keys.webhook_attempts, entry_id)
            pipe.zrem(keys.webhook_retry, entry_id)
            pipe.hincrby(keys.stats, f'webhooks_total{{outcome="{outcome}"}}', 1)
            await pipe.execute()


def _describe(exc: BaseException, url: str | None) -> str:
    """A failed attempt in one line, without the URL's credentials or query."""
    return scrub(f"{type(exc).__name__}: {exc}", url)[:300]


def main(argv: list[str] | None = None) -> int:
    """``bdia webhooks``: deliver webhook events until SIGTERM or Ctrl-C. Returns the exit code."""
    from bdia.jobqueue.logs import configure_logging

    parser = argparse.ArgumentParser(prog="bdia webhooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="default: $BDIA_REDIS_URL")
    parser.add_argument("--secret-for", metavar="TENANT", help="print TENANT's signing secret and exit")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"BDIA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"bdia webhooks: invalid settings: {problems}", file=sys.stderr)
        return 2
    if args.secret_for is not None:
        secret = secret_for(settings, args.secret_for)
        if secret is None:
            print("bdia webhooks: no webhook secret is configured (BDIA_WEBHOOK_SECRET)", file=sys.stderr)
            return 2
        print(secret)
        return 0
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
