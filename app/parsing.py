"""Reading and checking request bodies: forms and JSON into schemas, limits from the settings.

Everything here raises ``Problem``; nothing here touches the queue, so a bad request queues nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from bdia.errors import GammaUnstable
from bdia.jobqueue.cache import InversionSpec
from bdia.jobqueue.settings import Settings
from bdia.params import SamplingParams

from .problems import Problem, invalid
from .schemas import InversionParamsIn
from .uploads import ImageUpload, validate_image

Schema = TypeVar("Schema", bound=BaseModel)
FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class Body:
    """A parsed request body: text fields (or a JSON object) and uploaded files."""

    fields: dict[str, Any]
    files: dict[str, bytes]
    is_form: bool

    @property
    def fingerprint(self) -> str:
        """What identifies the body for idempotency: its fields, and each file by its sha256."""
        files = {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}
        canonical = json.dumps([self.fields, files], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def validation_problem(errors: list[dict[str, Any]], location: str = "body") -> Problem:
    """A 422 problem listing pydantic/FastAPI validation errors (``loc``, ``msg``, ``type``)."""
    listed = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if not loc or loc[0] not in ("body", "query", "path", "header", "cookie"):
            loc = [location, *loc]
        listed.append({"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "")})
    summary = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in listed)
    return Problem(422, "invalid_parameter", summary or "invalid request", errors=listed)


async def read_body(request: Request, settings: Settings, *, allow_json: bool) -> Body:
    """Parse a multipart (or urlencoded) form, or a JSON object when ``allow_json``; 415 otherwise."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in FORM_MEDIA_TYPES:  # its size is limited while it streams in (``limits.LimitBody``)
        try:
            form = await request.form(max_files=4, max_fields=64)
        except Problem:
            raise
        except Exception as exc:  # malformed multipart
            raise Problem(400, "bad_request", f"cannot parse the form: {exc}") from None
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = await value.read(settings.max_upload_bytes + 1)
            else:
                fields[name] = value
        await form.close()
        return Body(fields, files, is_form=True)
    if allow_json and (media_type == "application/json" or media_type.endswith("+json")):
        try:
            data = json.loads(await request.body())
        except ValueError as exc:
            raise Problem(400, "bad_request", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Problem(422, "invalid_parameter", "the body must be a JSON object")
        return Body(data, {}, is_form=False)
    wanted = "multipart/form-data or application/json" if allow_json else "multipart/form-data"
    raise Problem(415, "unsupported_media_type", f"send {wanted}, not {media_type or 'no content type'}")


def parse(schema: type[Schema], data: dict[str, Any]) -> Schema:
    """Validate ``data`` against ``schema``; 422 with an ``errors`` list if it does not fit."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc.errors(include_url=False)) from None


def image_field(body: Body, name: str, settings: Settings, *, required: bool) -> ImageUpload | None:
    """The validated image uploaded as form field ``name``."""
    if name not in body.files:
        if name in body.fields:
            raise invalid(name, "must be a file upload, not a text field")
        if required:
            raise invalid(name, "field required", code="invalid_parameter")
        return None
    return validate_image(
        body.files[name],
        field=name,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        max_aspect_ratio=settings.max_aspect_ratio,
    )


def check_prompt(settings: Settings, name: str, value: str | None) -> None:
    if value is not None and len(value) > settings.max_prompt_chars:
        raise invalid(name, f"{len(value)} characters exceeds the limit of {settings.max_prompt_chars}")


def check_guidance(settings: Settings, name: str, value: float | None) -> None:
    if value is not None and value > settings.max_guidance_scale:
        raise invalid(name, f"must be at most {settings.max_guidance_scale:g}, got {value:g}")


def check_model(settings: Settings, name: str | None) -> str:
    """The served model a request names (the default when it names none); 422 ``unknown_model`` else."""
    model = name or settings.model
    if model not in settings.served_models:
        served = ", ".join(settings.served_models)
        raise invalid("model", f"{model!r} is not served here (served: {served})", code="unknown_model")
    return model


def inversion_spec(
    settings: Settings, params: InversionParamsIn, prompt: str, image: ImageUpload, prompt_field: str, tenant: str
) -> InversionSpec:
    """The checked spec of ``tenant``'s inversion request: limits, the model, and the γ stability bound."""
    check_prompt(settings, prompt_field, prompt)
    check_prompt(settings, "negative_prompt", params.negative_prompt)
    check_guidance(settings, "guidance_scale", params.guidance_scale)
    if params.steps > settings.max_steps:
        raise invalid("steps", f"must be at most {settings.max_steps}, got {params.steps}")
    spec = InversionSpec(
        model=check_model(settings, params.model),
        image_sha256=image.sha256,
        tenant=tenant,
        prompt=prompt,
        **params.model_dump(include=set(SamplingParams.model_fields)),
    )
    try:
        spec.check(settings.gamma_bound)
    except GammaUnstable as exc:
        raise invalid("gamma", str(exc), code=exc.code) from None
    return spec
