"""What several routes share: queueing a job, waiting for it, and showing jobs and inversions."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.responses import JSONResponse

from bdia.jobqueue.cache import CachedInversion, InversionSpec
from bdia.jobqueue.jobs import TERMINAL, Job, Keep, TooManyJobs, newest_first
from bdia.wire import moment

from ..deps import Services
from ..idempotency import REPLAYED
from ..problems import Problem, not_found
from ..schemas import InversionOut, JobOut, to_json

JOB_HEADERS: dict[str, Any] = {
    **REPLAYED,
    "Location": {"description": "the job's URL (202 only)", "schema": {"type": "string"}},
    "Preference-Applied": {
        "description": "`wait=N` when the request's `Prefer: wait` was honoured (N: the seconds granted)",
        "schema": {"type": "string"},
    },
}
"""The OpenAPI ``headers`` of a response to a submission."""


def job_body(job: Job, position: int | None = None) -> dict[str, Any]:
    return to_json(JobOut.from_job(job, position))


async def job_response(
    services: Services, job: Job, status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    position = await services.queue.position(job)
    headers = dict(headers or {})
    if status == 202:
        headers["Location"] = f"/v1/jobs/{job.id}"
    return JSONResponse(job_body(job, position), status, headers=headers or None)


async def submitted(services: Services, job: Job, wait_s: float) -> JSONResponse:
    """The answer to a submission: 202 with the job, or, when the request asked to wait (``Prefer:
    wait``), 200 with the job once it has finished, if that happens within ``wait_s``."""
    if wait_s <= 0:
        return await job_response(services, job, 202)
    applied = {"Preference-Applied": f"wait={wait_s:g}"}
    finished = await wait_for(services, job.id, wait_s)
    if finished is not None:
        return await job_response(services, finished, 200, applied)
    return await job_response(services, await services.queue.get(job.id) or job, 202, applied)


async def wait_for(services: Services, job_id: str, wait_s: float) -> Job | None:
    """The job once it has finished, following its events for at most ``wait_s``; None if it has not.
    The events come from the process's ``EventHub``: a waiting request holds no pooled Redis connection."""
    deadline = time.monotonic() + wait_s
    async with services.streams.follow(job_id) as events:
        while True:
            if any(event.event in TERMINAL for event in await events.next(deadline - time.monotonic())):
                job = await services.queue.get(job_id)
                return job if job is not None and job.done else None
            if time.monotonic() >= deadline:
                return None


async def enqueue(services: Services, job: Job, keep: Keep | None = None) -> Job:
    """Queue a job, storing ``keep`` (its uploads) in the same step; 503 ``queue_full`` when its model's
    queue is full, 429 ``rate_limited`` when its tenant has too many unfinished jobs: then nothing is stored.

    Returns the job as queued, or, for an ``invert`` job whose inversion an unfinished invert job already
    makes, that job (``JobQueue.submit``: one job makes an inversion at a time; other jobs wait for it)."""
    depth = await services.queue.depth(job.model)
    if depth >= services.settings.max_queue:
        raise Problem(
            503,
            "queue_full",
            f"{depth} jobs are waiting for model {job.model!r}; try again later",
            headers={"Retry-After": "5"},
        )
    try:
        return await services.queue.submit(job, keep)
    except TooManyJobs as exc:
        raise Problem(429, "rate_limited", f"{exc}: wait for some to finish", headers={"Retry-After": "5"}) from None


async def owned_job(services: Services, job_id: str, tenant: str) -> Job:
    """The job, if it exists and belongs to ``tenant``; else 404 (another tenant's job does not exist)."""
    job = await services.queue.get(job_id)
    if job is None or job.tenant != tenant:
        raise not_found(f"job {job_id!r}")
    return job


async def owned_spec(services: Services, inversion_id: str, tenant: str) -> InversionSpec | None:
    """What the inversion is of, if it is known and belongs to ``tenant``."""
    spec = await services.cache.spec(inversion_id)
    return spec if spec is not None and spec.tenant == tenant else None


READY_ONLY = ("fingerprint", "fingerprint_id", "latent_std", "level", "nfe", "size_bytes", "created_at", "expires_at")
"""The fields of an inversion that only a ready one has."""


def inversion_urls(inversion_id: str) -> dict[str, str]:
    base = f"/v1/inversions/{inversion_id}"
    return {"get": base, "latents": f"{base}/latents"}


def ready_inversion(meta: dict[str, Any], expires_at: float) -> InversionOut:
    """An inversion in the cache, from its entry's metadata."""
    return InversionOut(
        inversion_id=meta["inversion_id"],
        status="ready",
        model=meta["model"],
        prompt=meta["prompt"],
        params=meta["params"],
        image_sha256=meta["image_sha256"],
        fingerprint=meta.get("fingerprint"),
        fingerprint_id=meta.get("fingerprint_id"),
        latent_std=meta.get("latent_std"),
        level=meta.get("level"),
        nfe=meta.get("nfe"),
        size_bytes=meta.get("size"),
        created_at=moment(meta.get("created_at")),
        expires_at=moment(expires_at),
        job_id=None,
        urls=inversion_urls(meta["inversion_id"]),
    )


def cached_inversion(entry: CachedInversion) -> InversionOut:
    return ready_inversion(entry.meta, entry.expires_at)


def pending_inversion(spec: InversionSpec, job_id: str) -> InversionOut:
    return InversionOut(
        inversion_id=spec.inversion_id,
        status="pending",
        model=spec.model,
        prompt=spec.prompt,
        params=spec.params,
        image_sha256=spec.image_sha256,
        **dict.fromkeys(READY_ONLY),  # null while pending
        job_id=job_id,
        urls={**inversion_urls(spec.inversion_id), "job": f"/v1/jobs/{job_id}"},
    )


async def pending_job(services: Services, inversion_id: str) -> Job | None:
    """The unfinished job now making an inversion, if any."""
    job_id = await services.cache.maker(inversion_id)
    job = await services.queue.get(job_id) if job_id else None
    return job if job is not None and not job.done else None


async def usable_spec(services: Services, inversion_id: str, tenant: str) -> InversionSpec:
    """The spec of ``tenant``'s inversion that exists, or can be made again from its stored upload; else 404."""
    spec = await owned_spec(services, inversion_id, tenant)
    if spec is not None:
        keys, redis = services.keys, services.redis
        if await redis.exists(keys.inversion(inversion_id), keys.blob(spec.image_sha256)):
            return spec
    raise Problem(404, "not_found", f"inversion {inversion_id!r} does not exist (or has expired)")


async def inversion_page(
    services: Services, tenant: str, statuses: set[str] | None, limit: int, cursor: str | None, scan: int = 1000
) -> tuple[list[InversionOut], str | None]:
    """A page of ``tenant``'s inversions, newest first, ready or pending (those ``GET /v1/inversions/{id}``
    shows), and the cursor of the next page. Entries whose spec expired are dropped from the index; the
    entries' bytes are not read, only their metadata."""
    keys, redis = services.keys, services.redis
    index = keys.tenant_inversions(tenant)
    entries = newest_first(redis, index, cursor, chunk=min(max(2 * limit, 20), 200))
    page: list[InversionOut] = []
    gone: list[str] = []
    resume: str | None = None
    examined, exhausted = 0, False
    try:
        while len(page) < limit and examined < scan:
            entry = await anext(entries, None)
            if entry is None:
                exhausted = True
                break
            inversion_id, resume = entry
            examined += 1
            async with redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.inversion_spec(inversion_id))
                pipe.hget(keys.inversion(inversion_id), "meta")
                pipe.ttl(keys.inversion(inversion_id))
                raw_spec, meta, ttl = await pipe.execute()
            if raw_spec is None:
                gone.append(inversion_id)
                continue
            spec = InversionSpec.model_validate_json(raw_spec)
            if spec.tenant != tenant:
                continue
            if meta is not None:
                shown = ready_inversion(json.loads(meta), time.time() + max(int(ttl), 0))
            else:
                job = await pending_job(services, inversion_id)
                if job is None:
                    continue  # neither cached nor being made: GET /v1/inversions/{id} does not show it either
                shown = pending_inversion(spec, job.id)
            if statuses is None or shown.status in statuses:
                page.append(shown)
        if not exhausted and await anext(entries, None) is None:
            exhausted = True
    finally:
        await entries.aclose()
    if gone:
        await redis.zrem(index, *gone)
    return page, None if exhausted else resume
