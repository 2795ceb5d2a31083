"""Following jobs' events: one Redis reader per API process, fanned out to every subscriber.

Every SSE stream (``GET /v1/jobs/{id}/events``) and every ``Prefer: wait`` submission follows a job's
event stream (``Keys.events``). If each did so with a blocking XREAD on the pooled client, every
follower would hold a pooled connection, and a hundred idle streams would starve every other request.
Instead one task per process (``EventHub``) reads all followed streams with one XREAD on a connection
of its own and puts what it reads on the followers' queues. A follower reads its backlog with a short
non-blocking read on the pool, and reads again whenever it may have missed something (its queue
overflowed, or it heard nothing for a while), so the hub makes events prompt, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from bdia.jobqueue.jobs import Event, JobQueue
from bdia.jobqueue.settings import Settings

log = logging.getLogger("bdia.api.streams")

READ_BLOCK_S = 2.0
"""How long one read of the hub waits for new events before it reads again (followers added meanwhile
interrupt it with CLIENT UNBLOCK)."""
QUEUE_SIZE = 256
"""Events a follower may have waiting; beyond it the hub drops them and the follower reads them again."""
STREAM_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
LARGEST = 2**64 - 1


def stream_position(event_id: str) -> tuple[int, int] | None:
    """The order of a Redis stream id (``ms-seq``, or ``ms``) as a pair of integers; None when it is not one."""
    match = STREAM_ID.fullmatch(event_id)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2] or 0)
    return (ms, seq) if ms <= LARGEST and seq <= LARGEST else None


class Subscription:
    """One follower of one job's events: ``next`` returns them in order, each once."""

    def __init__(self, hub: EventHub, job_id: str, after: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.key = hub.queue.keys.events(job_id)
        self.cursor = after
        self.position = stream_position(after) or (0, 0)
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self.missed = True
        """Whether the hub may have dropped or not yet read events: ``next`` reads Redis before it waits."""
        self.backlog: list[Event] = []
        self.closed = False

    def offer(self, events: list[Event]) -> None:
        """The hub's delivery; an overflowing queue is dropped and read again from Redis."""
        for event in events:
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.missed = True
                return

    async def next(self, timeout_s: float) -> list[Event]:
        """The events after the last one returned: at once if there are some, else the first to come
        within ``timeout_s`` (with 0, just what Redis holds now); [] when none came."""
        if self.backlog:
            events, self.backlog = self.backlog, []
            return events
        if self.missed or timeout_s <= 0:
            self.missed = False
            events = await self.read()
            if events or timeout_s <= 0:
                return events
        if events := self._newer(self._drain()):
            return events
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout_s)
        except asyncio.TimeoutError:
            return await self.read()  # heard nothing: whatever the hub might have missed (normally nothing)
        return self._newer([first, *self._drain()])

    async def read(self) -> list[Event]:
        """The events after the cursor that Redis holds now, read on the pool without blocking."""
        return self._newer(await self.hub.queue.events(self.job_id, self.cursor))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.unfollow(self)

    def _drain(self) -> list[Event]:
        events = []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events

    def _newer(self, events: list[Event]) -> list[Event]:
        fresh = []
        for event in events:
            position = stream_position(event.id) or (0, 0)
            if position > self.position:
                fresh.append(event)
                self.position, self.cursor = position, event.id
        return fresh


class EventHub:
    """The reader of one API process: one XREAD, on a connection of its own, over every followed job."""

    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self.settings = settings
        self.queue = queue
        self.redis = Redis.from_url(
            settings.redis_url,
            single_connection_client=True,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=READ_BLOCK_S + settings.redis_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        )
        self.followers: dict[str, set[Subscription]] = {}
        """The subscriptions to each followed event stream (by its key)."""
        self.cursors: dict[str, str] = {}
        """Per followed event stream, the last id the hub has read and handed out."""
        self.streams: Counter[str] = Counter()
        """Open SSE streams per tenant."""
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        self._reading: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # --- followers ------------------------------------------------------------------------------

    async def subscribe(self, job_id: str, after: str = "0-0") -> Subscription:
        """Follow the job's events after stream id ``after``: its backlog is read now (so a Redis outage
        raises here, before a response starts), live events come from the hub."""
        subscription = Subscription(self, job_id, after)
        subscription.backlog = await subscription.read()
        key = subscription.key
        self.followers.setdefault(key, set()).add(subscription)
        if key in self.cursors:  # the hub may have handed out events since the backlog was read: reread
            subscription.missed = True
        else:  # nothing can have come between the backlog and here: the hub reads on from its end
            subscription.missed = False
            self.cursors[key] = subscription.cursor
            self._changed.set()
            await self._interrupt(key)
        self._start()
        return subscription

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, after: str = "0-0") -> AsyncIterator[Subscription]:
        subscription = await self.subscribe(job_id, after)
        try:
            yield subscription
        finally:
            subscription.close()

    def unfollow(self, subscription: Subscription) -> None:
        followers = self.followers.get(subscription.key)
        if followers is None:
            return
        followers.discard(subscription)
        if not followers:
            del self.followers[subscription.key]
            self.cursors.pop(subscription.key, None)

    def open_stream(self, tenant: str) -> bool:
        """Count an SSE stream of ``tenant``; False (and nothing counted) when it has ``max_streams_per_tenant``."""
        cap = self.settings.max_streams_per_tenant
        if cap and self.streams[tenant] >= cap:
            return False
        self.streams[tenant] += 1
        return True

    def close_stream(self, tenant: str) -> None:
        self.streams[tenant] -= 1
        if self.streams[tenant] <= 0:
            del self.streams[tenant]

    # --- the reader -----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="bdia-event-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    async def _interrupt(self, key: str) -> None:
        """Wake a read in progress that does not include ``key`` (best effort: else it ends within
        ``READ_BLOCK_S``)."""
        if self._reader_id is None or not self._reading or key in self._reading:
            return
        with contextlib.suppress(RedisError):
            await self.queue.redis.client_unblock(self._reader_id)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            if not self.cursors:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            cursors = dict(self.cursors)
            try:
                if self._reader_id is None:
                    self._reader_id = await self.redis.client_id()
                self._reading = set(cursors)
                reply = await self.redis.xread(cursors, block=int(READ_BLOCK_S * 1000))
            except RedisError as exc:
                self._reader_id = None
                log.warning("reading job events failed (retrying in %g s): %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            finally:
                self._reading = set()
            backoff = 0.5
            for raw_key, entries in reply or []:
                self._hand_out(_text(raw_key), entries)

    def _hand_out(self, key: str, entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        if key not in self.cursors or not entries:  # no longer followed
            return
        events = [_event(mid, fields) for mid, fields in entries]
        if (stream_position(events[-1].id) or (0, 0)) > (stream_position(self.cursors[key]) or (0, 0)):
            self.cursors[key] = events[-1].id
        for subscription in self.followers.get(key, ()):
            subscription.offer(events)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event(mid: bytes | str, fields: dict[bytes, bytes]) -> Event:
    """An entry of a job's event stream, as ``JobQueue.events`` reads it."""
    return Event(id=_text(mid), event=_text(fields[b"event"]), data=json.loads(fields[b"data"]))


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that runs ``on_close`` however it ends (done, client gone, error),
    even if its body was never iterated."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
