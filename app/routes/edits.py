"""``/v1/edits``, ``/v1/edits/upload`` and ``/v1/reconstructions``: regenerate an inversion with a new prompt,
or the source one.

``POST /v1/edits`` takes JSON and ``POST /v1/edits/upload`` a form with the image; OpenAPI describes each
with one media type, as generators need. ``POST /v1/edits`` with a form body is still accepted (it is
answered by ``/v1/edits/upload``: ``FormsToUpload``), as it was before the split.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bdia.errors import InvalidParameter
from bdia.jobqueue.jobs import Job
from bdia.params import EDIT_CONTROL_FIELDS, EditParams
from bdia.prompts import check_words

from ..auth import SECURITY, tenant_of
from ..deps import ServicesDep
from ..idempotency import IdempotencyKey, idempotent
from ..limits import rate_limit
from ..parsing import (
    FORM_LIMITS,
    FORM_MEDIA_TYPES,
    PreferHeader,
    check_guidance,
    check_prompt,
    edit_settings,
    fingerprint,
    given,
    inversion_spec,
    read_image,
    require_form,
    require_json,
    served_model,
    wait_seconds,
)
from ..problems import invalid, responses
from ..schemas import EditForm, EditIn, JobOut, ReconstructionIn
from ..webhooks import check_webhook
from .common import JOB_HEADERS, enqueue, submitted, usable_spec

router = APIRouter(prefix="/v1", tags=["edits"], dependencies=SECURITY, form_limits=FORM_LIMITS)

EDITS, UPLOAD = "/v1/edits", "/v1/edits/upload"
SUBMITTED: dict[int | str, dict[str, Any]] = {
    200: {"model": JobOut, "description": "With `Prefer: wait`: the job, finished", "headers": JOB_HEADERS},
    202: {"model": JobOut, "description": "The job, queued", "headers": JOB_HEADERS},
}


class FormsToUpload:
    """ASGI middleware: a form POSTed to ``/v1/edits`` (the one path of both kinds before the split) is
    answered by ``/v1/edits/upload``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == EDITS:
            kind = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind.decode("latin-1") in FORM_MEDIA_TYPES:  # in place: outer middleware sees the route too
                scope["path"], scope["raw_path"] = UPLOAD, UPLOAD.encode()
        await self.app(scope, receive, send)


@router.post(
    "/edits",
    status_code=202,
    dependencies=[Depends(require_json), Depends(rate_limit)],
    responses={**SUBMITTED, **responses(400, 401, 404, 409, 413, 415, 422, 429, 503)},
)
async def create_edit(
    request: Request,
    services: ServicesDep,
    edit: EditIn,
    idempotency_key: IdempotencyKey = None,
    prefer: PreferHeader = None,
) -> Response:
    """Edit a cached inversion (or one whose upload is still stored) with a new prompt: 202 with the job
    (or, with `Prefer: wait=N`, 200 with it once finished). To send the image itself: `/v1/edits/upload`."""
    settings, tenant = services.settings, tenant_of(request)

    async def respond() -> Response:
        check_prompt(settings, "prompt", edit.prompt)
        check_prompt(settings, "negative_prompt", edit.negative_prompt)
        check_guidance(settings, "guidance_scale", edit.guidance_scale)
        webhook = check_webhook(settings, tenant, edit.webhook)
        spec = await usable_spec(services, edit.inversion_id, tenant)
        if wrong := check_words(spec.prompt, edit.prompt, edit.blend_words, edit.reweight):
            raise invalid("reweight" if wrong.startswith("reweight") else "blend_words", wrong)
        settled = edit_settings(await served_model(services, spec.model), spec, edit)
        params = {
            "prompt": edit.prompt,
            "guidance_scale": settled.guidance_scale,
            "negative_prompt": settled.negative_prompt,
            "masked": False,
            "edit_gamma": settled.edit_gamma,
            **settled.model_dump(include=set(EDIT_CONTROL_FIELDS), exclude_none=True, exclude_unset=True),
        }
        job = Job(
            kind="edit",
            model=spec.model,
            inversion_id=spec.inversion_id,
            params=params,
            tenant=tenant,
            webhook=webhook,
            webhook_events=edit.webhook_events,
        )
        return await submitted(services, await enqueue(services, job), wait_seconds(prefer, settings))

    return await idempotent(request, services, idempotency_key, fingerprint(edit), respond)


FORM_CONTROL_FIELDS = tuple(name for name in EDIT_CONTROL_FIELDS if name != "reweight")
"""The control fields a form takes (``reweight``, a word → factor map, only in ``POST /v1/edits``'s JSON)."""


@router.post(
    "/edits/upload",
    status_code=202,
    dependencies=[Depends(require_form), Depends(rate_limit)],
    responses={**SUBMITTED, **responses(400, 401, 409, 413, 415, 422, 429, 503)},
)
async def create_edit_upload(
    request: Request,
    services: ServicesDep,
    form: Annotated[EditForm, Form(media_type="multipart/form-data")],
    idempotency_key: IdempotencyKey = None,
    prefer: PreferHeader = None,
) -> Response:
    """Edit an image in one call: it is inverted (or its cached inversion reused) and regenerated with the
    new prompt; an optional mask limits what may change. 202 with the job (200 with `Prefer: wait=N`)."""
    settings, tenant = services.settings, tenant_of(request)
    image = await read_image(form.image, "image", settings)
    mask = await read_image(form.mask, "mask", settings) if form.mask is not None else None
    files = {"image": image.data, **({"mask": mask.data} if mask else {})}

    async def respond() -> Response:
        check_prompt(settings, "prompt", form.prompt)
        webhook = check_webhook(settings, tenant, form.webhook)
        record = await served_model(services, form.model)
        spec = inversion_spec(settings, form, form.source_prompt, image, "source_prompt", tenant, record)
        if wrong := check_words(spec.prompt, form.prompt, form.blend_words, None):
            raise invalid("blend_words", wrong)
        fields = ("guidance_scale", "negative_prompt", "edit_gamma", *FORM_CONTROL_FIELDS)  # the first two serve both
        try:
            edit = EditParams.create(prompt=form.prompt, **given(form, fields))
        except InvalidParameter as exc:
            raise invalid("parameters", str(exc)) from None
        settled = edit_settings(record, spec, edit, masked=mask is not None)
        inputs = {"mask_sha256": mask.sha256} if mask else {}
        params = {
            "prompt": form.prompt,
            "guidance_scale": settled.guidance_scale,
            "negative_prompt": settled.negative_prompt,
            "masked": mask is not None,
            "edit_gamma": settled.edit_gamma,
            **settled.model_dump(include=set(EDIT_CONTROL_FIELDS), exclude_none=True, exclude_unset=True),
        }
        job = Job(
            kind="edit",
            model=spec.model,
            inversion_id=spec.inversion_id,
            params=params,
            inputs=inputs,
            tenant=tenant,
            webhook=webhook,
            webhook_events=form.webhook_events,
        )
        keep = services.cache.keep(spec, *files.values())  # stored only if the job is admitted
        return await submitted(services, await enqueue(services, job, keep), wait_seconds(prefer, settings))

    return await idempotent(request, services, idempotency_key, fingerprint(form, files), respond)


@router.post(
    "/reconstructions",
    status_code=202,
    dependencies=[Depends(require_json), Depends(rate_limit)],
    responses={**SUBMITTED, **responses(400, 401, 404, 409, 413, 415, 422, 429, 503)},
)
async def create_reconstruction(
    request: Request,
    services: ServicesDep,
    reconstruction: ReconstructionIn,
    idempotency_key: IdempotencyKey = None,
    prefer: PreferHeader = None,
) -> Response:
    """Regenerate with the source prompt; the result reports `latent_max_abs_error` and the pixel PSNR."""
    tenant = tenant_of(request)

    async def respond() -> Response:
        webhook = check_webhook(services.settings, tenant, reconstruction.webhook)
        spec = await usable_spec(services, reconstruction.inversion_id, tenant)
        await served_model(services, spec.model)  # else it would wait in the queue of a model no worker serves
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
            webhook_events=reconstruction.webhook_events,
        )
        return await submitted(services, await enqueue(services, job), wait_seconds(prefer, services.settings))

    return await idempotent(request, services, idempotency_key, fingerprint(reconstruction), respond)
