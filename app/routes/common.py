"""What several routes share: queueing a job, and showing jobs and inversions."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from bdia.jobqueue.cache import CachedInversion, InversionSpec
from bdia.jobqueue.jobs import Job, TooManyJobs

from ..deps import Services
from ..problems import MEDIA_TYPE, Problem, not_found
from ..schemas import InversionOut, JobOut, ProblemOut, iso

PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemOut, "content": {MEDIA_TYPE: {}}, "description": text}
    for status, text in {
        401: "Unauthorized",
        404: "Not found",
        409: "Conflict",
        413: "Too large",
        415: "Unsupported media type",
        422: "Invalid request (with an `errors` list)",
        429: "Rate limited",
        503: "Queue full or unavailable",
    }.items()
}
"""The OpenAPI ``responses`` entry documenting problem+json errors."""


async def job_response(services: Services, job: Job, status: int = 200) -> JSONResponse:
    position = await services.queue.position(job)
    headers = {"Location": f"/v1/jobs/{job.id}"} if status == 202 else None
    return JSONResponse(JobOut.from_job(job, position).model_dump(mode="json"), status, headers=headers)


async def enqueue(services: Services, job: Job) -> Job:
    """Queue a job; 503 ``queue_full`` when its model's queue is full, 429 ``rate_limited`` when its
    tenant has too many unfinished jobs."""
    depth = await services.queue.depth(job.model)
    if depth >= services.settings.max_queue:
        raise Problem(
            503,
            "queue_full",
            f"{depth} jobs are waiting for model {job.model!r}; try again later",
            headers={"Retry-After": "5"},
        )
    try:
        return await services.queue.submit(job)
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


def inversion_urls(inversion_id: str) -> dict[str, str]:
    base = f"/v1/inversions/{inversion_id}"
    return {"get": base, "latents": f"{base}/latents"}


def ready_inversion(entry: CachedInversion) -> InversionOut:
    meta = entry.meta
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
        created_at=iso(meta.get("created_at")),
        expires_at=iso(entry.expires_at),
        urls=inversion_urls(meta["inversion_id"]),
    )


def pending_inversion(spec: InversionSpec, job_id: str) -> InversionOut:
    return InversionOut(
        inversion_id=spec.inversion_id,
        status="pending",
        model=spec.model,
        prompt=spec.prompt,
        params=spec.params,
        image_sha256=spec.image_sha256,
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
