"""``/v1/inversions``: submit an image for inversion (answered from the cache when possible), list, read, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, Response

from bdia.jobqueue.jobs import Job

from ..auth import SECURITY, tenant_of
from ..deps import ServicesDep
from ..idempotency import IdempotencyKey, idempotent
from ..limits import rate_limit
from ..parsing import (
    FORM_LIMITS,
    PreferHeader,
    fingerprint,
    inversion_spec,
    read_image,
    require_form,
    served_model,
    wait_seconds,
)
from ..problems import Problem, invalid, not_found, responses
from ..schemas import InversionForm, InversionList, InversionOut, JobOut, no_default, to_json
from ..webhooks import check_webhook
from .common import (
    JOB_HEADERS,
    cached_inversion,
    enqueue,
    inversion_page,
    owned_spec,
    pending_inversion,
    pending_job,
    ready_inversion,
    submitted,
)

router = APIRouter(prefix="/v1/inversions", tags=["inversions"], dependencies=SECURITY, form_limits=FORM_LIMITS)

Limit = Annotated[int, Query(ge=1, le=100, description="at most this many items")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page", json_schema_extra=no_default)]


@router.post(
    "",
    status_code=202,
    dependencies=[Depends(require_form), Depends(rate_limit)],
    responses={
        200: {
            "model": InversionOut | JobOut,
            "description": "The inversion, already cached; or, with `Prefer: wait`, the job that made it, finished",
            "headers": JOB_HEADERS,
        },
        202: {"model": JobOut, "description": "The job that makes the inversion", "headers": JOB_HEADERS},
        **responses(400, 401, 409, 413, 415, 422, 429, 503),
    },
)
async def create_inversion(
    request: Request,
    services: ServicesDep,
    form: Annotated[InversionForm, Form(media_type="multipart/form-data")],
    idempotency_key: IdempotencyKey = None,
    prefer: PreferHeader = None,
) -> Response:
    """Invert an image: 200 with the inversion if cached, else 202 with the job that makes it (or, with
    `Prefer: wait=N`, 200 with that job once finished)."""
    settings, tenant = services.settings, tenant_of(request)
    image = await read_image(form.image, "image", settings)

    async def respond() -> Response:
        webhook = check_webhook(settings, tenant, form.webhook)
        record = await served_model(services, form.model)
        spec = inversion_spec(settings, form, form.prompt, image, "prompt", tenant, record)
        cached = await services.cache.get(spec.inversion_id)
        if cached is not None:
            async with services.redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(services.keys.stats, "inversion_requests_cached_total", 1)
                pipe.hincrby(services.keys.stats, 'nfe_saved_total{kind="invert"}', int(cached.meta.get("nfe") or 0))
                await pipe.execute()
            return JSONResponse(to_json(cached_inversion(cached)), 200)
        wait_s = wait_seconds(prefer, settings)
        running = await pending_job(services, spec.inversion_id)
        if running is not None and running.kind == "invert" and not running.cancel_requested:  # join it
            # (a fast path: enqueue joins it too, atomically)
            return await submitted(services, running, wait_s)
        job = Job(
            kind="invert",
            model=spec.model,
            inversion_id=spec.inversion_id,
            params=spec.params,
            tenant=tenant,
            webhook=webhook,
            webhook_events=form.webhook_events,
        )
        job = await enqueue(services, job, services.cache.keep(spec, image.data))
        return await submitted(services, job, wait_s)

    return await idempotent(request, services, idempotency_key, fingerprint(form, {"image": image.data}), respond)


@router.get("", response_model=InversionList, responses=responses(401, 422, 503))
async def list_inversions(
    request: Request,
    services: ServicesDep,
    status: Annotated[
        list[Literal["ready", "pending"]] | None, Query(description="only these statuses", json_schema_extra=no_default)
    ] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    """The tenant's inversions, newest first (by when they were first requested), ready or pending.

    A page may hold fewer than `limit` items while `next_cursor` is not null; null means the end."""
    try:
        items, next_cursor = await inversion_page(
            services, tenant_of(request), set(status) if status else None, limit, cursor
        )
    except ValueError as exc:
        raise invalid("cursor", str(exc), location="query") from None
    return JSONResponse(to_json(InversionList(items=items, next_cursor=next_cursor)))


@router.get("/{inversion_id}", response_model=InversionOut, responses=responses(401, 404, 503))
async def get_inversion(inversion_id: str, request: Request, services: ServicesDep) -> Response:
    """The inversion's parameters, status, numerics fingerprint, `latent_std` and expiry."""
    spec = await owned_spec(services, inversion_id, tenant_of(request))
    if spec is None:
        raise not_found(f"inversion {inversion_id!r}")
    info = await services.cache.info(inversion_id)  # the entry's metadata alone, not its bytes
    if info is not None:
        return JSONResponse(to_json(ready_inversion(*info)))
    job = await pending_job(services, inversion_id)
    if job is not None:
        return JSONResponse(to_json(pending_inversion(spec, job.id)))
    raise not_found(f"inversion {inversion_id!r}")


@router.get(
    "/{inversion_id}/latents",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "safetensors: `z_hi`, `z_lo`, `z0` (and `trajectory`) and string metadata",
        },
        **responses(401, 404, 409, 503),
    },
)
async def get_inversion_latents(inversion_id: str, request: Request, services: ServicesDep) -> Response:
    """The latent pair as a safetensors file: tensors `z_hi`, `z_lo` (and `z0`) plus metadata."""
    if await owned_spec(services, inversion_id, tenant_of(request)) is None:
        raise not_found(f"inversion {inversion_id!r}")
    cached = await services.cache.get(inversion_id)
    if cached is None:
        job = await pending_job(services, inversion_id)
        if job is not None:
            raise Problem(409, "not_ready", f"inversion {inversion_id!r} is still being made by job {job.id}")
        raise not_found(f"inversion {inversion_id!r}")
    return Response(
        cached.data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{inversion_id}.safetensors"',
            "ETag": f'"{cached.checksum}"',
        },
    )


@router.delete(
    "/{inversion_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Forgotten (or forgotten before)"}, **responses(401, 404, 503)},
)
async def delete_inversion(inversion_id: str, request: Request, services: ServicesDep) -> Response:
    """Forget the inversion: its latents, its spec and its upload (unless another inversion was made from
    it). An invert job still making it is canceled, and no job stores it again until it is requested
    again. Idempotent: deleting it again answers 204 too (for `BDIA_JOB_TTL_S`)."""
    existed, maker = await services.cache.delete(inversion_id, tenant_of(request))
    if not existed:
        raise not_found(f"inversion {inversion_id!r}")
    job = await services.queue.get(maker) if maker else None
    if job is not None and job.kind == "invert" and not job.done:  # its only product is what was deleted
        await services.queue.cancel(job.id)
    return Response(status_code=204)
