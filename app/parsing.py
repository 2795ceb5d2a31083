"""Checking request bodies beyond their schemas: media types, images, limits from the settings.

FastAPI parses and validates the bodies against ``schemas`` (a failure renders as 422
``invalid_parameter``); everything here raises ``Problem``, and nothing here touches the queue, so a
bad request queues nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request, UploadFile
from pydantic import BaseModel

from bdia.errors import GammaUnstable
from bdia.jobqueue.cache import InversionSpec
from bdia.jobqueue.models import ModelRecord, ModelRegistry, record_ttl_s
from bdia.jobqueue.settings import Settings
from bdia.params import EditParams, SamplingParams, flow_edit_problem

from .deps import Services
from .problems import Problem, invalid
from .schemas import InversionParamsIn, no_default
from .uploads import ImageUpload, check_image

E = TypeVar("E", bound=EditParams)

FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
FORM_LIMITS = {"max_files": 4, "max_fields": 64}
"""At most this many files and text fields in one form (more: 400 ``bad_request``)."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_form(request: Request) -> bool:
    return media_type(request) in FORM_MEDIA_TYPES


async def require_form(request: Request) -> None:
    """415 ``unsupported_media_type`` unless the body is a form (run before the body is validated)."""
    if not is_form(request):
        raise Problem(
            415, "unsupported_media_type", f"send multipart/form-data, not {media_type(request) or 'nothing'}"
        )


async def require_json(request: Request) -> None:
    """415 ``unsupported_media_type`` for a body of another declared type than JSON."""
    kind = media_type(request)
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise Problem(415, "unsupported_media_type", f"send application/json, not {kind}")


def validation_problem(errors: list[dict[str, Any]], location: str = "body") -> Problem:
    """A 422 problem listing pydantic/FastAPI validation errors (``loc``, ``msg``, ``type``); a body that
    is not JSON at all is 400 ``bad_request``."""
    if any(error.get("type") == "json_invalid" for error in errors):
        reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
        return Problem(400, "bad_request", f"the body is not valid JSON: {reason or 'decode error'}")
    listed = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if not loc or loc[0] not in ("body", "query", "path", "header", "cookie"):
            loc = [location, *loc]
        listed.append({"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "")})
    summary = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in listed)
    return Problem(422, "invalid_parameter", summary or "invalid request", errors=listed)


def fingerprint(body: BaseModel, files: dict[str, bytes] | None = None) -> str:
    """What identifies a request body for idempotency: its fields as validated, each file by its sha256."""
    fields = body.model_dump(mode="json", exclude=set(files or ()))
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in (files or {}).items()}
    canonical = json.dumps([fields, digests], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def read_image(upload: UploadFile, name: str, settings: Settings) -> ImageUpload:
    """The validated image uploaded as form field ``name`` (read up to one byte over the limit; decoded off
    the event loop, ``uploads.check_image``)."""
    data = await upload.read(settings.max_upload_bytes + 1)
    return await check_image(
        data,
        field=name,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        max_aspect_ratio=settings.max_aspect_ratio,
        threads=settings.decode_threads,
    )


PREFER_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?\s*$", re.IGNORECASE)

PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description="RFC 7240 `wait=N`: answer 200 with the finished job if it finishes within N seconds "
        "(at most BDIA_MAX_WAIT_S), else 202 as without it; `Preference-Applied` says when it was honoured. "
        "Other preferences, and malformed ones, are ignored.",
        json_schema_extra=no_default,
    ),
]


def wait_seconds(prefer: str | None, settings: Settings) -> float:
    """How long a request asked to wait (``Prefer: wait=N``), bounded by ``max_wait_s``; 0: not at all.

    Preferences are comma-separated tokens (``respond-async`` wins over ``wait``); ones that are not
    understood are ignored, as RFC 7240 asks."""
    if not prefer:
        return 0.0
    tokens = [token.split(";")[0].strip().lower() for token in prefer.split(",")]
    if "respond-async" in tokens:
        return 0.0
    for token in tokens:
        if match := PREFER_WAIT.match(token):
            return max(0.0, min(float(match.group(1)), settings.max_wait_s))
    return 0.0


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


MODEL_RETRY_AFTER_S = 30
"""``Retry-After`` of a 503 ``model_unavailable``: about how long a worker takes to start and announce its model."""


async def served_model(services: Services, name: str | None) -> ModelRecord:
    """The registry record (``bdia.jobqueue.models``) of the served model a request names (the default when it
    names none): 422 ``unknown_model`` when it is not served here, 503 ``model_unavailable`` when no worker
    has announced it within ``model_ttl_s`` (its jobs would only wait in the queue)."""
    settings = services.settings
    model = check_model(settings, name)
    record = await ModelRegistry(services.redis, settings, services.keys).get(model)
    if record is None:
        raise Problem(
            503,
            "model_unavailable",
            f"no worker serves model {model!r} (none has announced it in the last {record_ttl_s(settings)} s): "
            "try again later",
            headers={"Retry-After": str(MODEL_RETRY_AFTER_S)},
            model=model,
        )
    return record


def inversion_spec(
    settings: Settings,
    params: InversionParamsIn,
    prompt: str,
    image: ImageUpload,
    prompt_field: str,
    tenant: str,
    record: ModelRecord,
) -> InversionSpec:
    """The checked spec of ``tenant``'s inversion request for the model of ``record`` (``served_model``): the
    parameters the request leaves out are that model's defaults, so the spec (the cache key) is concrete;
    then the limits, the model's schedule and the γ stability bound."""
    given = {name: getattr(params, name) for name in params.model_fields_set & SamplingParams.model_fields.keys()}
    values = record.defaults.inversion(**given)
    check_prompt(settings, prompt_field, prompt)
    check_prompt(settings, "negative_prompt", values["negative_prompt"])
    check_guidance(settings, "guidance_scale", values["guidance_scale"])
    check_steps(settings, values["steps"], record)
    spec = InversionSpec(model=record.name, image_sha256=image.sha256, tenant=tenant, prompt=prompt, **values)
    try:
        spec.check(settings.gamma_bound)
    except GammaUnstable as exc:
        raise invalid("gamma", str(exc), code=exc.code) from None
    except OverflowError:  # γ so small that γ^−(K−1) is not even a float
        raise invalid(
            "gamma", f"gamma={spec.gamma:g} amplifies errors beyond any bound", code="gamma_unstable"
        ) from None
    return spec


def check_steps(settings: Settings, steps: int, record: ModelRecord) -> None:
    """422 ``invalid_parameter`` for more steps than ``BDIA_MAX_STEPS`` or than the model's schedule has."""
    if steps > settings.max_steps:
        raise invalid("steps", f"must be at most {settings.max_steps} (BDIA_MAX_STEPS), got {steps}")
    if steps > record.max_steps:
        raise invalid(
            "steps", f"must be at most {record.max_steps} for model {record.name!r} (its noise schedule), got {steps}"
        )


def given(body: BaseModel, names: Iterable[str]) -> dict[str, Any]:
    """Those of the fields ``names`` that the request body sets (to anything but null)."""
    return {
        name: value for name in names if name in body.model_fields_set and (value := getattr(body, name)) is not None
    }


def edit_settings(record: ModelRecord, spec: InversionSpec, edit: E, *, masked: bool = False) -> E:
    """An edit's settings for the inversion ``spec``: the fields ``edit`` sets, else, for an edit (a prompt
    other than the source's; a reconstruction keeps the inversion's settings), the model's edit defaults
    (``record``), else the inversion's guidance and negative prompt. 422 ``invalid_parameter`` for attention
    control or an automatic mask (without a ``masked`` image) on a flow model (``flow_edit_problem``)."""
    edit = record.defaults.edit_for(edit, spec.prompt)
    is_edit = edit.prompt is not None and edit.prompt != spec.prompt
    if is_edit and record.prediction_type == "flow" and (problem := flow_edit_problem(edit, masked=masked)):
        raise invalid(*problem)
    inherited = {"guidance_scale": spec.guidance_scale, "negative_prompt": spec.negative_prompt}
    return edit.model_copy(update={k: v for k, v in inherited.items() if getattr(edit, k) is None})
