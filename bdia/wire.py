"""The HTTP API's wire format: the bodies the server (``bdia.app``) sends and the client (``bdia.client``) reads.

Pydantic only (with the job vocabulary of ``bdia.jobqueue.states``), so the client needs neither
the server's dependencies nor torch.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bdia.jobqueue.states import EventName, JobKind, JobStatus


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC string, e.g. ``2026-11-26T04:09:00.123Z``."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Event(BaseModel):
    """One entry of a job's event stream; ``id`` is the stream id (SSE ``id:``, for ``Last-Event-ID``)."""

    id: str
    event: EventName
    data: dict[str, Any]


class ProgressOut(BaseModel):
    step: int
    total: int
    stage: str


class ErrorOut(BaseModel):
    code: str
    detail: str


class JobOut(BaseModel):
    """A job as clients see it (``GET /v1/jobs/{id}``)."""

    id: str
    kind: JobKind
    status: JobStatus
    model: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queue_position: int | None = None
    progress: ProgressOut | None = None
    inversion_id: str
    params: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: ErrorOut | None = None
    cancel_requested: bool = False
    urls: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_job(cls, job: Any, queue_position: int | None = None) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        urls = {"get": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}
        if job.kind != "invert":
            urls["result"] = f"{base}/result"
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            model=job.model,
            created_at=iso(job.created_at),
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
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


class InversionOut(BaseModel):
    """An inversion (``GET /v1/inversions/{id}``): ready in the cache, or pending while a job makes it."""

    inversion_id: str
    status: Literal["ready", "pending"]
    model: str
    prompt: str
    params: dict[str, Any]
    image_sha256: str
    fingerprint: dict[str, str] | None = None
    fingerprint_id: str | None = None
    latent_std: float | None = None
    level: int | None = None
    nfe: int | None = None
    size_bytes: int | None = None
    created_at: str | None = None
    expires_at: str | None = None
    job_id: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)


class ModelOut(BaseModel):
    """A served model, its native size and default parameters; ``available`` once a worker serves it."""

    name: str
    default: bool
    available: bool
    workers: int
    height: int | None = None
    width: int | None = None
    defaults: dict[str, Any]
    info: dict[str, Any] = Field(default_factory=dict)


class ModelsOut(BaseModel):
    default: str
    models: list[ModelOut]


class ProblemOut(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None
