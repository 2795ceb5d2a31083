"""What requests carry (derived from ``bdia.params``); the response bodies are ``bdia.wire``'s (pydantic only).

Multipart requests are FastAPI form models (``Annotated[Model, Form()]``) whose files are ``UploadFile``
fields, so the OpenAPI document describes every field, and unknown fields are refused (422) as the
schema says (``additionalProperties: false``). Optional fields that have no default value of their own
carry no ``default`` in the schema: a generated client then leaves them out instead of sending ``None``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from bdia.jobqueue.jobs import WebhookEvent
from bdia.params import EditControl, EditMask, EditParams, SamplingParams
from bdia.wire import (
    ErrorOut,
    InversionList,
    InversionOut,
    JobList,
    JobOut,
    ModelOut,
    ModelsOut,
    ProblemOut,
    ProgressOut,
    iso,
    to_json,
)

__all__ = [
    "EditForm",
    "EditFormIn",
    "EditIn",
    "ErrorOut",
    "InversionForm",
    "InversionIn",
    "InversionList",
    "InversionOut",
    "InversionParamsIn",
    "JobList",
    "JobOut",
    "ModelOut",
    "ModelsOut",
    "ProblemOut",
    "ProgressOut",
    "ReconstructionIn",
    "iso",
    "to_json",
]

WEBHOOK_DOC = "a URL to POST the job's events to (Standard Webhooks signature); see docs/api.md#webhooks"
WEBHOOK_EVENTS_DOC = (
    "which events the webhook receives: `started`, `progress` (at most one every BDIA_WEBHOOK_PROGRESS_S "
    "seconds), `completed` (the final event); in a form, repeat the field or separate names with commas"
)


def no_default(schema: dict[str, Any]) -> None:
    """An optional field as a generator should see it: no ``default: null``, and not nullable."""
    schema.pop("default", None)
    variants = [v for v in schema.pop("anyOf", []) if v.get("type") != "null"]
    if len(variants) == 1:
        schema.update(variants[0])
    elif variants:
        schema["anyOf"] = variants


def optional(description: str, **constraints: Any) -> Any:
    """A field that may be left out (``None`` in Python), described without a null default."""
    return Field(None, description=description, json_schema_extra=no_default, **constraints)


ImageFile = Annotated[UploadFile, WithJsonSchema({"type": "string", "format": "binary"})]
"""An uploaded image file (PNG, JPEG or WebP, judged by its bytes)."""


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def _described(name: str) -> str:
    """The description ``bdia.params.EditParams`` gives the field ``name`` (default: the model's)."""
    return (EditParams.model_fields[name].description or name) + " (default: the model's edit default)"


class WebhookFields(BaseModel):
    """Where a job's events go, and which."""

    webhook: str | None = optional(WEBHOOK_DOC)
    webhook_events: list[WebhookEvent] = Field(["completed"], description=WEBHOOK_EVENTS_DOC, min_length=1)

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [part for item in value for part in (_names(item) if isinstance(item, str) else [item])]
        return value


class InversionParamsIn(SamplingParams):
    """The inversion parameters a request may give (``bdia.params``: defaults, ranges, descriptions)."""

    model: str | None = optional("one of GET /v1/models; default: the deployment's")


class InversionIn(WebhookFields, InversionParamsIn):
    """``POST /v1/inversions`` form fields besides the ``image`` file."""

    prompt: str = Field("", description="the source prompt: what the image shows (may be empty)")


class InversionForm(InversionIn):
    """``POST /v1/inversions``: the image and its inversion parameters."""

    image: ImageFile = Field(description="the image: PNG, JPEG or WebP")


class EditFormIn(WebhookFields, InversionParamsIn):
    """``POST /v1/edits/upload`` fields besides the files: the image is inverted (or its cached inversion
    reused) first; ``guidance_scale`` and ``negative_prompt`` serve the inversion and the edit."""

    source_prompt: str = Field("", description="what the image shows (the inversion's prompt)")
    prompt: str = Field(description="the edit prompt")
    edit_gamma: float | None = optional(EditParams.model_fields["edit_gamma"].description or "", ge=0, le=1)
    control: EditControl | None = optional(_described("control"))
    cross_fraction: float | None = optional(_described("cross_fraction"), ge=0, le=1)
    self_fraction: float | None = optional(_described("self_fraction"), ge=0, le=1)
    blend_words: list[str] | None = optional(_described("blend_words") + " (form: repeat the field)")
    mask_mode: EditMask | None = optional(_described("mask_mode") + "; with a `mask` file, the file decides")
    mask_threshold: float | None = optional(_described("mask_threshold"), gt=0, lt=1)
    keep_unchanged: bool | None = optional(_described("keep_unchanged"))
    restart_removed: bool | None = optional(_described("restart_removed"))
    unchanged_tolerance: int | None = optional(_described("unchanged_tolerance"), ge=0, le=255)


class EditForm(EditFormIn):
    """``POST /v1/edits/upload``: the image, an optional mask, the inversion parameters and the edit."""

    image: ImageFile = Field(description="the image: PNG, JPEG or WebP")
    mask: ImageFile | None = optional(
        "white = may change; elsewhere the result follows the source exactly (method bdia only)"
    )


class EditIn(WebhookFields, EditParams):
    """``POST /v1/edits``: regenerate a cached inversion with a new prompt."""

    inversion_id: str
    prompt: str = Field(description="the edit prompt")
    guidance_scale: float | None = optional("default: the inversion's", ge=0, allow_inf_nan=False)
    negative_prompt: str | None = optional("default: the inversion's")
    edit_gamma: float | None = optional(EditParams.model_fields["edit_gamma"].description or "", ge=0, le=1)


class ReconstructionIn(WebhookFields):
    """``POST /v1/reconstructions``: regenerate with the source prompt and report the round-trip error."""

    model_config = ConfigDict(extra="forbid")

    inversion_id: str
