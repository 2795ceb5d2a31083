"""``/v1/edits`` and ``/v1/reconstructions``: regenerate an inversion with a new prompt, or the source one."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from bdia.jobqueue.jobs import Job

from ..auth import tenant_of
from ..deps import ServicesDep
from ..idempotency import idempotent
from ..limits import rate_limit
from ..parsing import Body, check_guidance, check_prompt, image_field, inversion_spec, parse, read_body
from ..schemas import EditFormIn, EditIn, JobOut, ReconstructionIn
from ..webhooks import check_webhook
from .common import PROBLEMS, enqueue, job_response, usable_spec

router = APIRouter(prefix="/v1", tags=["edits"])

EDIT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EditIn.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "white = may change; elsewhere the result keeps the source exactly",
                        },
                        **EditFormIn.model_json_schema()["properties"],
                    },
                }
            },
        },
    }
}


@router.post(
    "/edits",
    status_code=202,
    dependencies=[Depends(rate_limit)],
    responses={202: {"model": JobOut}, **PROBLEMS},
    openapi_extra=EDIT_DOC,
)
async def create_edit(request: Request, services: ServicesDep) -> Response:
    """Edit: JSON naming a cached inversion, or multipart with the image (inverted or reused in one go)."""
    settings, tenant = services.settings, tenant_of(request)
    body = await read_body(request, settings, allow_json=True)

    async def respond() -> Response:
        if not body.is_form:
            edit = parse(EditIn, body.fields)
            check_prompt(settings, "prompt", edit.prompt)
            check_prompt(settings, "negative_prompt", edit.negative_prompt)
            check_guidance(settings, "guidance_scale", edit.guidance_scale)
            webhook = check_webhook(settings, tenant, edit.webhook)
            spec = await usable_spec(services, edit.inversion_id, tenant)
            guidance = spec.guidance_scale if edit.guidance_scale is None else edit.guidance_scale
            negative = spec.negative_prompt if edit.negative_prompt is None else edit.negative_prompt
            inputs = {}
        else:
            form = parse(EditFormIn, body.fields)
            check_prompt(settings, "prompt", form.prompt)
            webhook = check_webhook(settings, tenant, form.webhook)
            image = image_field(body, "image", settings, required=True)
            assert image is not None
            mask = image_field(body, "mask", settings, required=False)
            spec = inversion_spec(settings, form, form.source_prompt, image, "source_prompt", tenant)
            await services.cache.put_blob(image.data)
            await services.cache.put_spec(spec)
            guidance, negative = spec.guidance_scale, spec.negative_prompt
            inputs = {"mask_sha256": await services.cache.put_blob(mask.data)} if mask else {}
            edit = EditIn(inversion_id=spec.inversion_id, prompt=form.prompt, edit_gamma=form.edit_gamma)
        params = {
            "prompt": edit.prompt,
            "guidance_scale": guidance,
            "negative_prompt": negative,
            "masked": "mask_sha256" in inputs,
            "edit_gamma": edit.edit_gamma,
        }
        job = Job(
            kind="edit",
            model=spec.model,
            inversion_id=spec.inversion_id,
            params=params,
            inputs=inputs,
            tenant=tenant,
            webhook=webhook,
        )
        return await job_response(services, await enqueue(services, job), 202)

    return await idempotent(request, services, body.fingerprint, respond)


@router.post(
    "/reconstructions",
    status_code=202,
    dependencies=[Depends(rate_limit)],
    responses={202: {"model": JobOut}, **PROBLEMS},
)
async def create_reconstruction(request: Request, services: ServicesDep, reconstruction: ReconstructionIn) -> Response:
    """Regenerate with the source prompt; the result reports ``latent_max_abs_error`` and the pixel PSNR."""
    body, tenant = reconstruction.model_dump(), tenant_of(request)

    async def respond() -> Response:
        webhook = check_webhook(services.settings, tenant, reconstruction.webhook)
        spec = await usable_spec(services, reconstruction.inversion_id, tenant)
        params = {
            "prompt": spec.prompt,
            "guidance_scale": spec.guidance_scale,
            "negative_prompt": spec.negative_prompt,
        }
        job = Job(
            kind="reconstruct",
            model=spec.model,
            inversion_id=spec.inversion_id,
            params=params,
            tenant=tenant,
            webhook=webhook,
        )
        return await job_response(services, await enqueue(services, job), 202)

    return await idempotent(request, services, Body(body, {}, is_form=False).fingerprint, respond)
