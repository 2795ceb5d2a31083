"""What requests carry (derived from ``bdia.params``); the response bodies are ``bdia.wire``'s (pydantic only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bdia.params import EditParams, SamplingParams
from bdia.wire import ErrorOut, InversionOut, JobOut, ModelOut, ModelsOut, ProblemOut, ProgressOut, iso

__all__ = [
    "EditFormIn",
    "EditIn",
    "ErrorOut",
    "InversionIn",
    "InversionOut",
    "InversionParamsIn",
    "JobOut",
    "ModelOut",
    "ModelsOut",
    "ProblemOut",
    "ProgressOut",
    "ReconstructionIn",
    "iso",
]

WEBHOOK_DOC = "a URL to POST the job's final event to (Standard Webhooks signature); see docs/operations.md"


class InversionParamsIn(SamplingParams):
    """The inversion parameters a request may give (``bdia.params``: defaults, ranges, descriptions)."""

    model: str | None = Field(None, description="one of GET /v1/models; default: the deployment's")


class InversionIn(InversionParamsIn):
    """``POST /v1/inversions`` form fields besides the ``image`` file."""

    prompt: str = Field("", description="the source prompt: what the image shows (may be empty)")
    webhook: str | None = Field(None, description=WEBHOOK_DOC)


class EditFormIn(InversionParamsIn):
    """``POST /v1/edits`` as multipart: the image is inverted (or its cached inversion reused) first."""

    source_prompt: str = Field("", description="what the image shows (the inversion's prompt)")
    prompt: str = Field(description="the edit prompt")
    edit_gamma: float | None = EditParams.model_fields["edit_gamma"]
    webhook: str | None = Field(None, description=WEBHOOK_DOC)


class EditIn(EditParams):
    """``POST /v1/edits`` as JSON: regenerate a cached inversion with a new prompt."""

    inversion_id: str
    prompt: str = Field(description="the edit prompt")
    webhook: str | None = Field(None, description=WEBHOOK_DOC)


class ReconstructionIn(BaseModel):
    """``POST /v1/reconstructions``: regenerate with the source prompt and report the round-trip error."""

    model_config = ConfigDict(extra="forbid")

    inversion_id: str
    webhook: str | None = Field(None, description=WEBHOOK_DOC)
