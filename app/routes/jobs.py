"""``/v1/jobs``: a job's state, its events as Server-Sent Events, cancellation and its output image."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from bdia.jobqueue.jobs import TERMINAL, Event

from ..auth import tenant_of
from ..deps import LONGEST_BLOCK_S, ServicesDep
from ..idempotency import idempotent
from ..limits import rate_limit
from ..problems import Problem, not_found
from ..schemas import JobOut
from .common import PROBLEMS, job_response, owned_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_MS = LONGEST_BLOCK_S * 1000


@router.get("/{job_id}", responses={200: {"model": JobOut}, **PROBLEMS})
async def get_job(job_id: str, request: Request, services: ServicesDep) -> Response:
    """The job: status, queue position while queued, progress, params, metrics, result or error."""
    return await job_response(services, await owned_job(services, job_id, tenant_of(request)))


def _sse(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.event}\ndata: {json.dumps(event.data)}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}, **PROBLEMS},
)
async def job_events(job_id: str, request: Request, services: ServicesDep) -> StreamingResponse:
    """Server-Sent Events: ``queued``, ``started``, ``progress``, ``cache_hit`` and the final one.

    A subscriber first gets every past event (or those after its ``Last-Event-ID``), then live ones;
    the stream ends after ``succeeded``, ``failed`` or ``canceled``.
    """
    queue = services.queue
    await owned_job(services, job_id, tenant_of(request))
    after = request.headers.get("last-event-id") or "0"

    async def stream() -> AsyncIterator[str]:
        cursor = after
        events = await queue.events(job_id, cursor)
        while True:
            for event in events:
                yield _sse(event)
                cursor = event.id
                if event.event in TERMINAL:
                    return
            if not events:
                if await queue.get(job_id) is None:  # expired while we waited
                    return
                yield ": keep-alive\n\n"
            events = await queue.events(job_id, cursor, block_ms=KEEPALIVE_MS)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.post("/{job_id}/cancel", dependencies=[Depends(rate_limit)], responses={200: {"model": JobOut}, **PROBLEMS})
async def cancel_job(job_id: str, request: Request, services: ServicesDep) -> Response:
    """Cancel (idempotent): a queued job is canceled now, a running one stops at its next step."""

    tenant = tenant_of(request)

    async def respond() -> Response:
        await owned_job(services, job_id, tenant)
        if await services.queue.cancel(job_id) is None:
            raise not_found(f"job {job_id!r}")
        job = await services.queue.get(job_id)
        if job is None:
            raise not_found(f"job {job_id!r}")
        return await job_response(services, job)

    return await idempotent(request, services, job_id, respond)


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The output image"}, **PROBLEMS},
)
async def job_result(job_id: str, request: Request, services: ServicesDep) -> Response:
    """The output image (PNG) of a finished edit or reconstruction."""
    job = await owned_job(services, job_id, tenant_of(request))
    if job.kind == "invert":
        raise Problem(
            404,
            "not_found",
            f"an invert job has no image: its product is /v1/inversions/{job.inversion_id}/latents",
        )
    if job.status != "succeeded":
        raise Problem(409, "not_ready", f"job {job_id} is {job.status}; a result exists once it has succeeded")
    image = await services.queue.result(job_id)
    if image is None:
        raise not_found(f"the result of job {job_id!r}")
    return Response(image, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})
