"""The HTTP API's wire format: the bodies the server (``bdia.app``) sends and the client (``bdia.client``) reads.

Pydantic only (with the job vocabulary of ``bdia.jobqueue.states``), so the client needs neither
the server's dependencies nor torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from bdia.jobqueue.states import EventName, JobKind, JobStatus


def iso(timestamp: float | datetime | None) -> str | None:
    """Seconds since the epoch (or a datetime) as an ISO 8601 UTC string, e.g. ``2026-11-26T04:09:00.123Z``."""
    if timestamp is None:
        return None
    moment = timestamp if isinstance(timestamp, datetime) else datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def moment(timestamp: float | None) -> datetime | None:
    """Seconds since the epoch as an aware UTC datetime."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)


Timestamp = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A moment: an aware datetime in Python, ISO 8601 UTC with milliseconds on the wire."""


def to_json(body: BaseModel) -> dict[str, Any]:
    """A response body as JSON values: the fields it was given (a ``Record`` sends only those present)."""
    return body.model_dump(mode="json", exclude_unset=True)


class Record(BaseModel):
    """A record whose fields depend on the job's kind: only those present travel (``to_json``; unknown
    ones are kept), readable as attributes and, as the plain dicts they once were, as ``record["name"]``."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, name: str) -> Any:
        if name not in self.model_fields_set:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self.model_fields_set

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self.model_fields_set else default

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The fields present, as JSON values."""
        return to_json(self)


class Event(BaseModel):
    """One entry of a job's event stream; ``id`` is the stream id (SSE ``id:``, for ``Last-Event-ID``)."""

    id: str
    event: EventName
    data: dict[str, Any]


class ProgressOut(BaseModel):
    step: int
    total: int
    stage: str = Field(description="``invert`` or ``regenerate``; ``total`` is that stage's NFE")


class ErrorOut(BaseModel):
    code: str
    detail: str


class JobParams(Record):
    """A job's parameters as validated, defaults filled in. ``invert``: the inversion parameters and
    ``prompt``; ``edit``: ``prompt``, ``guidance_scale``, ``negative_prompt``, ``masked``, ``edit_gamma``;
    ``reconstruct``: ``prompt``, ``guidance_scale``, ``negative_prompt``."""

    prompt: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    strength: float | None = None
    gamma: float | None = None
    exact: bool | None = None
    method: str | None = None
    state_dtype: str | None = None
    masked: bool | None = None
    edit_gamma: float | None = None


class JobMetrics(Record):
    """What a job spent: ``nfe`` (network evaluations by this job), the cache's share, timings, attempts."""

    nfe: int | None = None
    inversion_cached: bool | None = None
    inversion_nfe: int | None = None
    regenerate_nfe: int | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    attempts: int | None = None


class JobResult(Record):
    """What a succeeded job made. ``invert``: ``inversion_id``, ``url``, ``latents_url``, ``latent_std``,
    ``level``, ``fingerprint_id``; ``edit``: ``url``, ``content_type``, ``width``, ``height`` (the upload's
    size), ``working_width``, ``working_height`` (the size it was edited at), ``fingerprint_match``, and
    with an edit mask ``mask`` (its URL) and ``mask_fraction``; ``reconstruct`` adds
    ``latent_max_abs_error``, ``exact``, ``psnr`` (dB against the upload at its size) and ``working_psnr``
    (at the working size), each null when the pixels are identical or the upload expired."""

    inversion_id: str | None = None
    url: str | None = None
    latents_url: str | None = None
    latent_std: float | None = None
    level: int | None = None
    fingerprint_id: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    fingerprint_match: bool | None = None
    working_width: int | None = None
    working_height: int | None = None
    mask: str | None = Field(None, description="URL of the edit mask (PNG at the result's size, white = changed)")
    mask_fraction: float | None = Field(None, description="the fraction of the result's pixels the mask covers")
    latent_max_abs_error: float | None = None
    exact: bool | None = None
    psnr: float | None = None
    working_psnr: float | None = None


class JobOut(BaseModel):
    """A job as clients see it (``GET /v1/jobs/{id}``)."""

    id: str
    kind: JobKind
    status: JobStatus
    model: str
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    queue_position: int | None = Field(None, description="while queued: 1 = the next job a worker takes")
    progress: ProgressOut | None = None
    inversion_id: str
    params: JobParams
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    result: JobResult | None = None
    error: ErrorOut | None = None
    cancel_requested: bool = False
    urls: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_job(cls, job: Any, queue_position: int | None = None) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        urls = {"get": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}
        if job.kind != "invert":
            urls["result"] = f"{base}/result"
        if (job.result or {}).get("mask"):
            urls["mask"] = f"{base}/mask"
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            model=job.model,
            created_at=moment(job.created_at),
            started_at=moment(job.started_at),
            finished_at=moment(job.finished_at),
            queue_position=queue_position,
            progress=job.progress,
            inversion_id=job.inversion_id,
            params=job.params,
            metrics=job.metrics,
            result=job.result,
            error=job.error,
            cancel_requested=job.cancel_requested,
            urls=urls,
        )


class JobList(BaseModel):
    """A page of jobs, newest first; ``next_cursor`` (null at the end) fetches the next page."""

    items: list[JobOut]
    next_cursor: str | None = None


class InversionOut(BaseModel):
    """An inversion (``GET /v1/inversions/{id}``): ready in the cache, or pending while a job makes it."""

    inversion_id: str
    status: Literal["ready", "pending"]
    model: str
    prompt: str
    params: JobParams
    image_sha256: str
    fingerprint: dict[str, str] | None = None
    fingerprint_id: str | None = None
    latent_std: float | None = None
    level: int | None = None
    nfe: int | None = None
    size_bytes: int | None = None
    created_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    job_id: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)


class InversionList(BaseModel):
    """A page of inversions, newest first; ``next_cursor`` (null at the end) fetches the next page."""

    items: list[InversionOut]
    next_cursor: str | None = None


class ModelOut(BaseModel):
    """A served model as its workers announce it (``bdia.jobqueue.models``): family, native size, schedule
    length and defaults. ``available``: requests for it are accepted (a worker announced it within
    ``BDIA_MODEL_TTL_S``; else they get 503 ``model_unavailable``); ``workers``: how many serve it now."""

    name: str
    default: bool
    available: bool
    workers: int
    family: str | None = None
    height: int | None = None
    width: int | None = None
    latent_factor: int | None = None
    size_multiple: int | None = Field(
        None,
        description="each side of the working size is a multiple of this: an upload is edited at its "
        "own aspect ratio within height × width pixels, in these steps (never cropped)",
    )
    prediction_type: str | None = None
    num_train_timesteps: int | None = Field(None, description="the noise schedule's length")
    max_steps: int | None = Field(None, description="the most steps a request may ask for this model")
    defaults: dict[str, Any] = Field(
        description="what applies when a request leaves a parameter out: the inversion's settings, `edit` "
        "(edits, not reconstructions) and `sample`; the built-in defaults while no worker has announced the model"
    )
    info: dict[str, Any] = Field(default_factory=dict)


class ModelsOut(BaseModel):
    default: str
    models: list[ModelOut]


class ProblemError(BaseModel):
    """One invalid field of a request: where (``["body", "steps"]``), what is wrong, its error type."""

    loc: list[str]
    msg: str
    type: str


class ProblemOut(BaseModel):
    """RFC 9457 problem details, as every error response carries them; ``code`` is stable."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[ProblemError] | None = None
