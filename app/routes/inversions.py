"""``/v1/inversions``: submit an image for inversion (answered from the cache when possible), read, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from bdia.jobqueue.jobs import Job

from ..auth import tenant_of
from ..deps import ServicesDep
from ..idempotency import idempotent
from ..limits import rate_limit
from ..parsing import image_field, inversion_spec, parse, read_body
from ..problems import Problem, not_found
from ..schemas import InversionIn, InversionOut, JobOut
from ..webhooks import check_webhook
from .common import PROBLEMS, enqueue, job_response, owned_spec, pending_inversion, pending_job, ready_inversion

router = APIRouter(prefix="/v1/inversions", tags=["inversions"])

FORM_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"},
                        **InversionIn.model_json_schema()["properties"],
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=202,
    dependencies=[Depends(rate_limit)],
    responses={200: {"model": InversionOut, "description": "Already cached"}, 202: {"model": JobOut}, **PROBLEMS},
    openapi_extra=FORM_DOC,
)
async def create_inversion(request: Request, services: ServicesDep) -> Response:
    """Invert an image: 200 with the inversion if cached, else 202 with the job that makes it."""
    settings, tenant = services.settings, tenant_of(request)
    body = await read_body(request, settings, allow_json=False)

    async def respond() -> Response:
        params = parse(InversionIn, body.fields)
        webhook = check_webhook(settings, tenant, params.webhook)
        image = image_field(body, "image", settings, required=True)
        assert image is not None
        spec = inversion_spec(settings, params, params.prompt, image, "prompt", tenant)
        cached = await services.cache.get(spec.inversion_id)
        if cached is not None:
            async with services.redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(services.keys.stats, "inversion_requests_cached_total", 1)
                pipe.hincrby(services.keys.stats, 'nfe_saved_total{kind="invert"}', int(cached.meta.get("nfe") or 0))
                await pipe.execute()
            return JSONResponse(ready_inversion(cached).model_dump(mode="json"), 200)
        running = await pending_job(services, spec.inversion_id)
        if running is not None:
            return await job_response(services, running, 202)
        await services.cache.put_blob(image.data)
        await services.cache.put_spec(spec)
        job = Job(
            kind="invert",
            model=spec.model,
            inversion_id=spec.inversion_id,
            params=spec.params,
            tenant=tenant,
            webhook=webhook,
        )
        job = await enqueue(services, job)
        await services.cache.set_maker(spec.inversion_id, job.id)
        return await job_response(services, job, 202)

    return await idempotent(request, services, body.fingerprint, respond)


@router.get("/{inversion_id}", responses={200: {"model": InversionOut}, **PROBLEMS})
async def get_inversion(inversion_id: str, request: Request, services: ServicesDep) -> InversionOut:
    """The inversion's parameters, status, numerics fingerprint, ``latent_std`` and expiry."""
    spec = await owned_spec(services, inversion_id, tenant_of(request))
    if spec is None:
        raise not_found(f"inversion {inversion_id!r}")
    cached = await services.cache.get(inversion_id)
    if cached is not None:
        return ready_inversion(cached)
    job = await pending_job(services, inversion_id)
    if job is not None:
        return pending_inversion(spec, job.id)
    raise not_found(f"inversion {inversion_id!r}")


@router.get(
    "/{inversion_id}/latents",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "safetensors"}, **PROBLEMS},
)
async def get_latents(inversion_id: str, request: Request, services: ServicesDep) -> Response:
    """The latent pair as a safetensors file: tensors ``z_hi``, ``z_lo`` (and ``z0``) plus metadata."""
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


@router.delete("/{inversion_id}", status_code=204, response_class=Response, responses=PROBLEMS)
async def delete_inversion(inversion_id: str, request: Request, services: ServicesDep) -> Response:
    """Drop the inversion from the cache."""
    if await owned_spec(services, inversion_id, tenant_of(request)) is None or not await services.cache.delete(
        inversion_id
    ):
        raise not_found(f"inversion {inversion_id!r}")
    return Response(status_code=204)
