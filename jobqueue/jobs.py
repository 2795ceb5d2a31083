"""The job schema and ``JobQueue``: jobs as Redis hashes, queued on Redis Streams with a consumer group.

One stream per model holds the ids of jobs waiting for that model's workers. Delivery is
at-least-once: a worker reads a job with XREADGROUP, holds it as long as it keeps renewing its
lease (the entry's idle time in the group's pending list, reset by an ownership-checked XCLAIM),
and acknowledges it only after the job's outcome is stored. A job whose worker stopped renewing
is reclaimed with XAUTOCLAIM; after ``max_deliveries`` deliveries it goes to the dead-letter
stream. Every status change is one Lua script, so it is atomic with the event it publishes, and
every one is checked against the transition table of ``states``, which the scripts embed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .keys import GROUP, Keys
from .settings import PUBLIC_TENANT, Settings
from .states import TERMINAL, EventName, IllegalTransition, JobKind, JobStatus, lua_tables
from .stats import observe
from .storage import Budget

__all__ = [
    "TERMINAL",
    "WEBHOOK_EVENTS",
    "Delivery",
    "Event",
    "EventName",
    "Job",
    "JobKind",
    "JobQueue",
    "JobStatus",
    "Keep",
    "TooManyJobs",
    "WebhookEvent",
    "newest_first",
]

WebhookEvent = Literal["started", "progress", "completed"]
"""What a request's webhook may receive: ``started`` (each start of an attempt), ``progress`` (throttled to one
every ``webhook_progress_s``) and ``completed`` (the final event: succeeded, failed or canceled)."""
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)


class TooManyJobs(Exception):
    """The tenant already has as many unfinished jobs as ``max_jobs_per_tenant`` allows."""


@dataclass(frozen=True)
class Keep:
    """What a submission stores only when its job is admitted (``JobQueue.submit``), in the same step: each
    of ``values`` under its key (a value already there stays) and, with ``index``, a (sorted set, member)
    entry; all expire after ``ttl``. A refused submission stores none of it."""

    ttl: int
    values: tuple[tuple[str, bytes | str], ...] = ()
    index: tuple[str, str] | None = None


JOB_ID = re.compile(r"job_[0-9a-f]{24}")
"""What ``new_job_id`` makes. Anything else names no job: it is never used in a key (a suffix such as
``:events`` would name another record)."""


def new_job_id() -> str:
    return f"job_{secrets.token_hex(12)}"


def is_job_id(value: str) -> bool:
    return JOB_ID.fullmatch(value) is not None


class Job(BaseModel):
    """The stored job record. ``app.schemas.JobOut`` is what clients see of it."""

    id: str = Field(default_factory=new_job_id)
    kind: JobKind
    status: JobStatus = "queued"
    model: str
    tenant: str = PUBLIC_TENANT
    webhook: str | None = None
    """Where the job's events are POSTed (Standard Webhooks), if anywhere."""
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: ["completed"])
    """Which events go to ``webhook``."""
    inversion_id: str
    params: dict[str, Any]
    """The request's parameters as validated, defaults filled in."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """What the worker needs beyond ``params`` (e.g. the mask's blob hash); not shown to clients."""
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    message_id: str | None = None
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def to_hash(self) -> dict[str, str]:
        """Each field JSON-encoded, so a hash round-trips every type (and Lua can decode any field)."""
        return {name: json.dumps(value) for name, value in self.model_dump().items()}

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Job:
        """Read back ``to_hash`` output. Not re-validated: only this module writes job hashes, and
        status polling reads one per request."""
        known = cls.model_fields
        return cls.model_construct(**{name: json.loads(v) for k, v in fields.items() if (name := _text(k)) in known})


class Event(BaseModel):
    """One entry of a job's event stream; ``id`` is the stream id (SSE ``id:``, for ``Last-Event-ID``)."""

    id: str
    event: EventName
    data: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """A job handed to a worker: its stream entry and how many times it has been delivered."""

    job_id: str
    message_id: str
    deliveries: int


# --- Lua: every status change is atomic with its event, and checked against the table -------

_WANTS = """
-- Whether the job's request asked for webhook events of ``kind`` (started, progress, completed).
local function wants(job, kind)
  local hook = redis.call('HGET', job, 'webhook')
  if not hook or hook == 'null' then return false end
  local raw = redis.call('HGET', job, 'webhook_events')
  if not raw then return kind == 'completed' end
  for _, name in ipairs(cjson.decode(raw)) do
    if name == kind then return true end
  end
  return false
end
"""

_MOVE = (
    lua_tables()
    + _WANTS
    + """
-- Move a job to status ``target`` if the table allows it from its stored status: set ``fields``
-- (name, JSON value, ...), publish the table's event with ``data``, expire the job's keys after
-- ``ttl`` (if > 0), on a final status take it off its tenant's count, and queue a webhook for the
-- event when the request asked for it (``started``, or ``completed`` for a final status).
-- Returns 1 when moved, 0 when the table refuses, -1 when there is no such job.
local function move(job, events, result, tenant_jobs, outbox, job_id, target, data, ttl, fields)
  local raw = redis.call('HGET', job, 'status')
  if not raw then return -1 end
  local event = (TRANSITIONS[cjson.decode(raw)] or {})[target]
  if not event then return 0 end
  redis.call('HSET', job, 'status', cjson.encode(target))
  for i = 1, #fields, 2 do redis.call('HSET', job, fields[i], fields[i + 1]) end
  redis.call('XADD', events, '*', 'event', event, 'data', data)
  if ttl > 0 then
    for _, key in ipairs({job, events, result}) do redis.call('EXPIRE', key, ttl) end
  end
  if TERMINAL[target] then redis.call('ZREM', tenant_jobs, job_id) end
  local kind = TERMINAL[target] and 'completed' or (event == 'started' and 'started' or nil)
  if kind and wants(job, kind) then redis.call('XADD', outbox, '*', 'job', job_id, 'event', event) end
  return 1
end
"""
)

_RELEASE = """
-- Once job ``job_id`` (whose key is ``job_key``) has finished: if it was making its inversion (``inflight``
-- holds its id), it no longer is, and the jobs waiting behind it (``waiting``) that are still queued go on
-- ``queue``. If it did not succeed, only the first of them goes: it makes the inversion now, and the
-- others wait behind it instead.
local function release(job_key, job_id, succeeded, inflight, waiting, queue)
  if redis.call('GET', inflight) ~= job_id then return end
  local ttl = redis.call('PTTL', inflight)
  redis.call('DEL', inflight)
  local prefix = string.sub(job_key, 1, #job_key - #job_id)  -- a job's key is this prefix and its id
  local ids = redis.call('LRANGE', waiting, 0, -1)
  redis.call('DEL', waiting)
  local maker = nil
  for _, id in ipairs(ids) do
    local key = prefix .. id
    if redis.call('HGET', key, 'status') == cjson.encode('queued') then
      if succeeded or not maker then
        local mid = redis.call('XADD', queue, '*', 'job', id)
        redis.call('HSET', key, 'message_id', cjson.encode(mid))
        if not succeeded then
          maker = id
          if ttl > 0 then redis.call('SET', inflight, id, 'PX', ttl) else redis.call('SET', inflight, id) end
        end
      else
        redis.call('RPUSH', waiting, id)
      end
    end
  end
  if maker and ttl > 0 then redis.call('PEXPIRE', waiting, ttl) end
end
"""

_TRANSITION = (
    _MOVE
    + _RELEASE
    + """
-- KEYS: job, events, result, tenant jobs, outbox, inflight, waiting, queue (of its inversion, its model).
-- ARGV: job id, target, event data, ttl, field, value, ...
local moved = move(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
                   {unpack(ARGV, 5)})
if moved == 1 and TERMINAL[ARGV[2]] then
  release(KEYS[1], ARGV[1], ARGV[2] == 'succeeded', KEYS[6], KEYS[7], KEYS[8])
end
return moved
"""
)

_ENQUEUE = (
    lua_tables()
    + """
-- KEYS: job, events, queue, tenant jobs, tenant history, and of its inversion: inflight (the id of the job
-- making it), waiting (jobs queued behind that one), entry (the cached inversion); then the keys of the
-- ``Keep`` values, and its index (if any).
-- ARGV: job id, ttl, event data, cap, now, join (1: an invert job), keep ttl, number of keep values,
-- index member ('' for none), the keep values, then field, value, ...
-- Returns {'joined', id} when an invert job ``join``s the unfinished invert job ``id`` that makes its
-- inversion (and that no one asked to cancel), and {'full', ''} when the tenant has ``cap`` unfinished
-- jobs already: both store nothing.
-- Else the job and the kept values are stored, and it returns {'waiting', id} when the unfinished job ``id``
-- makes its inversion (this one goes on the queue when that one finishes: ``release``), or
-- {'queued', stream entry id}; a queued job whose inversion is not cached is recorded as its maker.
-- A record lives at most 2 × ttl after its job was created (ttl to finish, then ttl after), so the
-- history forgets entries older than that; younger ones whose record expired are dropped by readers.
local cap, now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[2])
local keep_ttl, kept, member = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local maker = redis.call('GET', KEYS[6])
if maker then  -- the maker is the job it names only while that job is unfinished
  local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])  -- a job's key is this prefix and its id
  local status, kind, cancel = unpack(redis.call('HMGET', prefix .. maker, 'status', 'kind', 'cancel_requested'))
  if not status or TERMINAL[cjson.decode(status)] then
    maker = nil
  elseif ARGV[6] == '1' and cjson.decode(kind) == 'invert' and cancel ~= 'true' then
    return {'joined', maker}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)  -- expired without finishing
if cap > 0 and redis.call('ZCARD', KEYS[4]) >= cap then return {'full', ''} end
for i = 1, kept do
  redis.call('SET', KEYS[8 + i], ARGV[9 + i], 'NX', 'EX', keep_ttl)
  redis.call('EXPIRE', KEYS[8 + i], keep_ttl)
end
if member ~= '' then
  redis.call('ZADD', KEYS[9 + kept], 'NX', now, member)
  redis.call('EXPIRE', KEYS[9 + kept], keep_ttl)
end
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 2 * ttl)
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('EXPIRE', KEYS[5], 2 * ttl)
for i = 10 + kept, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], '*', 'event', 'queued', 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
if maker then
  redis.call('RPUSH', KEYS[7], ARGV[1])
  redis.call('EXPIRE', KEYS[7], ttl)
  return {'waiting', maker}
end
if redis.call('EXISTS', KEYS[8]) == 0 then redis.call('SET', KEYS[6], ARGV[1], 'EX', ttl) end
local mid = redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'message_id', cjson.encode(mid))
return {'queued', mid}
"""
)

_CANCEL = (
    _MOVE
    + _RELEASE
    + """
-- KEYS: job, events, result, tenant jobs, outbox, queue, inflight, waiting.  ARGV: job id, ttl, now.
-- A running job is only asked to stop (its worker makes the move); any other is canceled here if the
-- table allows it, and its stream entry deleted. Returns the status afterwards, or false when there
-- is no such job.
local raw = redis.call('HGET', KEYS[1], 'status')
if not raw then return false end
local status = cjson.decode(raw)
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
  return status
end
local mid = cjson.decode(redis.call('HGET', KEYS[1], 'message_id') or 'null')
local moved = move(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], 'canceled',
                   '{"reason":"canceled while queued"}', tonumber(ARGV[2]),
                   {'finished_at', ARGV[3], 'cancel_requested', 'true', 'progress', 'null'})
if moved ~= 1 then return status end
if mid and mid ~= cjson.null then redis.call('XDEL', KEYS[6], mid) end
release(KEYS[1], ARGV[1], false, KEYS[7], KEYS[8], KEYS[6])
return 'canceled'
"""
)

_PROGRESS = (
    _WANTS
    + """
-- KEYS: job, events, outbox.  ARGV: job id, progress (JSON), now, webhook interval (seconds).
-- Record the progress and publish its event; queue a ``progress`` webhook when the request asked for
-- one and none was queued in the last ``interval`` seconds. Returns 1 when a cancel was requested.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'event', 'progress', 'data', ARGV[2])
local now = tonumber(ARGV[3])
if wants(KEYS[1], 'progress') then
  local last = tonumber(redis.call('HGET', KEYS[1], 'webhook_progress_at') or '0')
  if now - last >= tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], 'webhook_progress_at', ARGV[3])
    redis.call('XADD', KEYS[3], '*', 'job', ARGV[1], 'event', 'progress')
  end
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == 'true' then return 1 end
return 0
"""
)

_RENEW = """
-- KEYS: queue.  ARGV: group, message id, consumer.  Renews the lease only if the consumer still holds it.
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or entry[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, member]).encode()).decode().rstrip("=")


async def newest_first(
    redis: Redis, index: str, cursor: str | None = None, chunk: int = 50
) -> AsyncIterator[tuple[str, str]]:
    """The members of sorted set ``index``, highest score first, each with the cursor that resumes after
    it; ``cursor`` resumes after the member it was made for. ``ValueError`` for a cursor not made here."""
    high: float | str = "+inf"
    after: tuple[float, str] | None = None
    if cursor:
        try:
            score, member = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            after = (float(score), str(member))
        except (ValueError, TypeError, binascii.Error):
            raise ValueError("not a cursor this API made") from None
        high = after[0]
    start = 0
    while True:
        batch = await redis.zrevrangebyscore(index, high, "-inf", start=start, num=chunk, withscores=True)
        if not batch:
            return
        start += len(batch)
        for raw, score in batch:
            member = _text(raw)
            if after is not None and score == after[0] and member >= after[1]:
                continue  # equal scores come in descending member order: these were before the cursor
            yield member, _cursor(score, member)


class JobQueue:
    """Jobs of one deployment: the API submits, reads and cancels; workers claim, run and finish."""

    def __init__(self, redis: Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys(settings.key_prefix)
        self._transition = redis.register_script(_TRANSITION)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._cancel = redis.register_script(_CANCEL)
        self._renew = redis.register_script(_RENEW)
        self._progress = redis.register_script(_PROGRESS)
        self.uploads = Budget(redis, self.keys, "uploads", settings.uploads_max_bytes)
        self.results = Budget(redis, self.keys, "results", settings.results_max_bytes)

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_s * 1000)

    # --- both sides -----------------------------------------------------------------------------

    async def ensure_group(self, model: str) -> None:
        """Create the model's stream and consumer group if they do not exist yet."""
        try:
            await self.redis.xgroup_create(self.keys.queue(model), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        fields = await self.redis.hgetall(self.keys.job(job_id))
        return Job.from_hash(fields) if fields else None

    async def events(self, job_id: str, after: str = "0", block_ms: int | None = None) -> list[Event]:
        """The job's events after stream id ``after``; with ``block_ms``, wait that long for a first one."""
        reply = await self.redis.xread({self.keys.events(job_id): after}, block=block_ms)
        if not reply:
            return []
        _, entries = reply[0]
        return [Event(id=_text(mid), event=_text(f[b"event"]), data=json.loads(f[b"data"])) for mid, f in entries]

    async def result(self, job_id: str) -> bytes | None:
        return await self.redis.get(self.keys.result(job_id))

    # --- the API's side -------------------------------------------------------------------------

    async def submit(self, job: Job, keep: Keep | None = None) -> Job:
        """Store the job (and ``keep``) and queue it, atomically; returns it with its stream entry id.

        One job at a time makes an inversion (its maker: a queued job whose inversion is not cached). An
        ``invert`` job whose inversion an unfinished invert job makes is not stored: that job is returned.
        Any other job whose inversion an unfinished job makes waits behind it, queued without a stream
        entry (``message_id`` None), and is put on the queue when that job finishes, in the same step.

        Raises ``TooManyJobs`` (and stores nothing) when its tenant is at ``max_jobs_per_tenant``.
        """
        fields = job.to_hash()
        fields.pop("message_id")
        keep = keep or Keep(0)
        cap = self.settings.max_jobs_per_tenant
        args: list[Any] = [job.id, self.settings.job_ttl_s, json.dumps({"kind": job.kind}), cap, job.created_at]
        args += [int(job.kind == "invert"), keep.ttl, len(keep.values), keep.index[1] if keep.index else ""]
        args += [value for _, value in keep.values]
        for name, value in fields.items():
            args += [name, value]
        k = self.keys
        keys = [
            k.job(job.id),
            k.events(job.id),
            k.queue(job.model),
            k.tenant_jobs(job.tenant),
            k.tenant_history(job.tenant),
            k.inversion_job(job.inversion_id),
            k.inversion_waiting(job.inversion_id),
            k.inversion(job.inversion_id),
            *(key for key, _ in keep.values),
            *([keep.index[0]] if keep.index else []),
        ]
        outcome, value = (_text(part) for part in await self._enqueue(keys=keys, args=args))
        if outcome == "full":
            raise TooManyJobs(f"tenant {job.tenant!r} already has {cap} unfinished jobs")
        if outcome == "joined":
            maker = await self.get(value)
            return maker if maker is not None else await self.submit(job, keep)  # it expired just now
        if keep.values:  # the uploads it stored count against BDIA_UPLOADS_MAX_BYTES; the inversion refers to them
            referrer = keep.index[1] if keep.index else None
            uploads = [key for key, _ in keep.values if self.keys.is_blob(key)]
            await self.uploads.adopt(uploads, referrer=referrer, until=time.time() + keep.ttl)
        await self.redis.hincrby(self.keys.stats, f'jobs_submitted_total{{kind="{job.kind}"}}', 1)
        return job.model_copy(update={"message_id": value if outcome == "queued" else None})

    async def depth(self, model: str) -> int:
        """Jobs in the model's queue that no worker has picked up yet."""
        queue = self.keys.queue(model)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(queue)
            pipe.xpending(queue, GROUP)
            try:
                length, pending = await pipe.execute()
            except ResponseError:  # no group yet: nothing was ever queued
                return 0
        return max(0, length - pending["pending"])

    async def position(self, job: Job) -> int | None:
        """1 for the next job a worker will take, 2 for the one after, …; None unless queued."""
        if job.status != "queued" or not job.message_id:
            return None
        queue = self.keys.queue(job.model)
        groups = await self.redis.xinfo_groups(queue)
        last = next((_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0")
        if _stream_id(job.message_id) <= _stream_id(last):
            return 1  # delivered and waiting to (re)start
        ahead = await self.redis.xrange(queue, min=f"({last}", max=job.message_id, count=self.settings.max_queue)
        return max(1, len(ahead))

    async def positions(self, jobs: list[Job]) -> dict[str, int]:
        """``position`` of each queued job among ``jobs``, reading each model's queue once."""
        positions: dict[str, int] = {}
        for model in {job.model for job in jobs if job.status == "queued" and job.message_id}:
            queue = self.keys.queue(model)
            try:
                groups = await self.redis.xinfo_groups(queue)
            except ResponseError:  # no such stream
                continue
            last = next((_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0")
            waiting = await self.redis.xrange(queue, min=f"({last}", count=self.settings.max_queue)
            order = {_text(mid): n for n, (mid, _) in enumerate(waiting, 1)}
            for job in jobs:
                if job.model == model and job.status == "queued" and job.message_id:
                    delivered = _stream_id(job.message_id) <= _stream_id(last)
                    positions[job.id] = 1 if delivered else order.get(job.message_id, len(order) or 1)
        return positions

    async def history(
        self,
        tenant: str,
        *,
        statuses: set[str] | None = None,
        kinds: set[str] | None = None,
        limit: int = 20,
        cursor: str | None = None,
        scan: int = 1000,
    ) -> tuple[list[Job], str | None]:
        """A page of ``tenant``'s jobs, newest first, of the given statuses and kinds, and the cursor of the
        next page (None at the end). At most ``scan`` entries are examined, so with filters a page may be
        short while a cursor is still given. Entries whose job expired are dropped from the index."""
        index = self.keys.tenant_history(tenant)
        entries = newest_first(self.redis, index, cursor, chunk=min(max(2 * limit, 20), 200))
        page: list[Job] = []
        gone: list[str] = []
        resume: str | None = None
        examined, exhausted = 0, False
        try:
            while len(page) < limit and examined < scan and not exhausted:
                batch: list[tuple[str, str]] = []
                while len(batch) < limit - len(page) and examined < scan:  # no more than could fill the page
                    entry = await anext(entries, None)
                    if entry is None:
                        exhausted = True
                        break
                    batch.append(entry)
                    examined += 1
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id, _ in batch:
                        pipe.hgetall(self.keys.job(job_id))
                    records = await pipe.execute() if batch else []
                for (job_id, position), fields in zip(batch, records, strict=True):
                    resume = position
                    if not fields:
                        gone.append(job_id)
                        continue
                    job = Job.from_hash(fields)
                    if (statuses is None or job.status in statuses) and (kinds is None or job.kind in kinds):
                        page.append(job)
            if not exhausted and await anext(entries, None) is None:
                exhausted = True  # nothing after the last one examined
        finally:
            await entries.aclose()
        if gone:
            await self.redis.zrem(index, *gone)
        return page, None if exhausted else resume

    async def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job now, or ask a running one to stop at its next step. Idempotent.

        Returns the job's status afterwards (None when there is no such job).
        """
        if not is_job_id(job_id):
            return None
        job_key = self.keys.job(job_id)
        model, tenant, inversion_id = await self.redis.hmget(job_key, ["model", "tenant", "inversion_id"])
        if model is None:
            return None
        tenant_jobs = self.keys.tenant_jobs(json.loads(tenant) if tenant else PUBLIC_TENANT)
        k, inversion = self.keys, json.loads(inversion_id or '""')
        keys = [job_key, k.events(job_id), k.result(job_id), tenant_jobs, k.webhooks, k.queue(json.loads(model))]
        keys += [k.inversion_job(inversion), k.inversion_waiting(inversion)]
        status = await self._cancel(keys=keys, args=[job_id, self.settings.job_ttl_s, json.dumps(time.time())])
        if status == b"canceled":
            await self.redis.hincrby(self.keys.stats, 'jobs_finished_total{status="canceled"}', 1)
        return None if status is None else _text(status)

    # --- the workers' side ----------------------------------------------------------------------

    async def claim(self, model: str, consumer: str, block_ms: int) -> Delivery | None:
        """The next job for ``consumer``: first one whose worker's lease expired, else a new one."""
        queue = self.keys.queue(model)
        _, reclaimed, *_ = await self.redis.xautoclaim(
            queue, GROUP, consumer, min_idle_time=self.lease_ms, start_id="0-0", count=1
        )
        for mid, fields in reclaimed:
            if not fields:  # deleted (a job canceled while queued): nothing to run
                await self.ack(model, _text(mid))
                continue
            info = await self.redis.xpending_range(queue, GROUP, mid, mid, 1)
            deliveries = info[0]["times_delivered"] if info else 1
            return Delivery(_text(fields[b"job"]), _text(mid), deliveries)
        reply = await self.redis.xreadgroup(GROUP, consumer, {queue: ">"}, count=1, block=block_ms)
        for _, entries in reply or []:
            for mid, fields in entries:
                return Delivery(_text(fields[b"job"]), _text(mid), 1)
        return None

    async def renew(self, model: str, message_id: str, consumer: str) -> bool:
        """Renew ``consumer``'s lease on a job; False when the job is no longer its own."""
        renewed = await self._renew(keys=[self.keys.queue(model)], args=[GROUP, message_id, consumer])
        return bool(renewed)

    async def release(self, model: str, message_id: str, consumer: str) -> None:
        """Give a job back without finishing it: mark its lease expired so any worker reclaims it now."""
        await self.redis.xclaim(
            self.keys.queue(model), GROUP, consumer, 0, [message_id], idle=self.lease_ms * 10, justid=True
        )

    async def ack(self, model: str, message_id: str) -> None:
        """Done with a stream entry: acknowledge it and drop it from the stream."""
        queue = self.keys.queue(model)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(queue, GROUP, message_id)
            pipe.xdel(queue, message_id)
            await pipe.execute()

    async def start(self, job: Job, worker: str, attempt: int) -> bool:
        """queued (or running, when reclaimed) → running; False if the job finished meanwhile."""
        fields = {"started_at": time.time(), "worker": worker, "attempts": attempt, "error": None}
        return await self._move(job, "running", {"worker": worker, "attempt": attempt}, **fields)

    async def progress(self, job_id: str, step: int, total: int, stage: str) -> bool:
        """Publish a progress event; returns whether the job's cancellation was requested."""
        progress = json.dumps({"step": step, "total": total, "stage": stage})
        k = self.keys
        keys = [k.job(job_id), k.events(job_id), k.webhooks]
        args = [job_id, progress, time.time(), self.settings.webhook_progress_s]
        return await self._progress(keys=keys, args=args) == 1

    async def publish(self, job_id: str, event: EventName, data: dict[str, Any]) -> None:
        """An informational event (e.g. ``cache_hit``) that changes nothing in the record."""
        await self.redis.xadd(self.keys.events(job_id), {"event": event, "data": json.dumps(data)})

    async def finish(
        self,
        job: Job,
        status: Literal["succeeded", "failed", "canceled"],
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        output: bytes | None = None,
    ) -> bool:
        """running (or queued, when dead-lettered) → a final status, after storing the output image; then
        the job expires after its TTL. False when the table refuses the move from the stored status."""
        if status not in TERMINAL:
            raise IllegalTransition(job.status, status)
        if output is not None:
            await self.results.store(self.keys.result(job.id), output, self.settings.job_ttl_s)  # within its budget
        data: dict[str, Any] = {"result": result, "metrics": metrics} if status == "succeeded" else {}
        if error:
            data["error"] = error
        fields: dict[str, Any] = {"finished_at": time.time(), "result": result, "error": error}
        fields["metrics"] = metrics or {}
        if status == "canceled":
            fields["cancel_requested"] = True
        moved = await self._move(job, status, data, ttl=self.settings.job_ttl_s, **fields)
        if moved:
            await self._record(job, status, metrics or {})
        return moved

    async def _record(self, job: Job, status: str, metrics: dict[str, Any]) -> None:
        """Count a finished job: its latencies, the NFE it spent and the NFE its cached inversion saved."""
        now, keys = time.time(), self.keys
        saved = 0
        if metrics.get("inversion_cached"):
            meta = await self.redis.hget(keys.inversion(job.inversion_id), "meta")
            saved = int(json.loads(meta).get("nfe") or 0) if meta else 0
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.stats, f'jobs_finished_total{{status="{status}"}}', 1)
            pipe.hincrby(keys.stats, f'nfe_spent_total{{kind="{job.kind}"}}', int(metrics.get("nfe") or 0))
            pipe.hincrby(keys.stats, f'nfe_saved_total{{kind="{job.kind}"}}', saved)
            observe(pipe, keys.histograms, "job_seconds", now - job.created_at, kind=job.kind, status=status)
            if job.started_at is not None:
                observe(pipe, keys.histograms, "job_queue_seconds", job.started_at - job.created_at, kind=job.kind)
                observe(pipe, keys.histograms, "job_run_seconds", now - job.started_at, kind=job.kind)
            await pipe.execute()

    async def requeue(self, job: Job, error: dict[str, Any]) -> bool:
        """running → queued after a failed attempt; the job is delivered again (or dead-lettered)."""
        data = {"reason": error.get("detail", ""), "retry": True}
        return await self._move(job, "queued", data, worker=None, progress=None, error=error)

    async def dead_letter(self, job: Job, delivery: Delivery) -> None:
        """Fail a job that was delivered too often, record it in the dead-letter stream, acknowledge it.

        The job is running (its last worker died mid-job) or queued (its last attempt was given back,
        or no worker started it); the table allows ``failed`` from both."""
        last = (job.error or {}).get("detail", "its workers stopped or failed")
        error = {
            "code": "max_deliveries_exceeded",
            "detail": f"gave up after {delivery.deliveries - 1} deliveries; last attempt: {last}",
        }
        await self.redis.xadd(
            self.keys.dead_letter,
            {"job": job.id, "model": job.model, "deliveries": delivery.deliveries, "error": json.dumps(error)},
            maxlen=10_000,
            approximate=True,
        )
        await self.finish(job, "failed", error=error)
        await self.ack(job.model, delivery.message_id)

    async def _move(self, job: Job, target: JobStatus, data: dict[str, Any], *, ttl: int = 0, **fields: Any) -> bool:
        """Move the job to ``target`` if the table allows it from its stored status, setting ``fields``
        and publishing the table's event with ``data``; False when refused (or the job is gone)."""
        args: list[Any] = [job.id, target, json.dumps(data), ttl]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        k = self.keys
        keys = [k.job(job.id), k.events(job.id), k.result(job.id), k.tenant_jobs(job.tenant), k.webhooks]
        keys += [k.inversion_job(job.inversion_id), k.inversion_waiting(job.inversion_id), k.queue(job.model)]
        return await self._transition(keys=keys, args=args) == 1
