"""``/v1/jobs``: the tenant's jobs, a job's state, its events as Server-Sent Events, cancellation and its
output image."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis.exceptions import RedisError

from bdia.jobqueue.jobs import TERMINAL, Event, Job, JobQueue
from bdia.jobqueue.states import JobKind, JobStatus

from ..auth import SECURITY, tenant_of
from ..deps import LONGEST_BLOCK_S, ServicesDep
from ..idempotency import REPLAYED, IdempotencyKey, idempotent
from ..limits import rate_limit
from ..problems import Problem, invalid, not_found, responses
from ..schemas import JobList, JobOut, no_default
from ..streams import EventStream, Subscription, stream_position
from .common import job_body, job_response, owned_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=SECURITY)

log = logging.getLogger("bdia.api")
PNG = "image/png"
BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get("", response_model=JobList, responses=responses(401, 422, 503))
async def list_jobs(
    request: Request,
    services: ServicesDep,
    status: Annotated[
        list[JobStatus] | None, Query(description="only jobs in these statuses", json_schema_extra=no_default)
    ] = None,
    kind: Annotated[
        list[JobKind] | None, Query(description="only jobs of these kinds", json_schema_extra=no_default)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="at most this many items")] = 20,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page", json_schema_extra=no_default)
    ] = None,
) -> Response:
    """The tenant's jobs, newest first, while their records are kept (`BDIA_JOB_TTL_S` after they finish).

    A page may hold fewer than `limit` items while `next_cursor` is not null; null means the end."""
    queue = services.queue
    try:
        jobs, next_cursor = await queue.history(
            tenant_of(request),
            statuses=set(status) if status else None,
            kinds=set(kind) if kind else None,
            limit=limit,
            cursor=cursor,
        )
    except ValueError as exc:
        raise invalid("cursor", str(exc), location="query") from None
    positions = await queue.positions(jobs)
    items = [job_body(job, positions.get(job.id)) for job in jobs]
    return JSONResponse({"items": items, "next_cursor": next_cursor})


@router.get("/{job_id}", response_model=JobOut, responses=responses(401, 404, 503))
async def get_job(job_id: str, request: Request, services: ServicesDep) -> Response:
    """The job: status, queue position while queued, progress, params, metrics, result or error."""
    return await job_response(services, await owned_job(services, job_id, tenant_of(request)))


def _sse(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.event}\ndata: {json.dumps(event.data)}\n\n"


async def _event_stream(queue: JobQueue, job: Job, events: Subscription) -> AsyncIterator[str]:
    """The SSE body: events until the final one. ``job`` was read before the first event read, so when it
    had finished then, every event is in Redis already: having none left to send (a reconnect whose
    `Last-Event-ID` is the final event) ends the stream at once."""
    finished = job.done
    try:
        while True:
            batch = await events.next(0 if finished else LONGEST_BLOCK_S)
            for event in batch:
                yield _sse(event)
                if event.event in TERMINAL:
                    return
            if not batch:
                if finished:
                    return
                current = await queue.get(job.id)
                if current is None:  # expired while we waited
                    return
                finished = current.done  # then one more read finds the final event, or nothing
                if not finished:
                    yield ": keep-alive\n\n"
    except RedisError as exc:  # end the stream; the client reconnects with its Last-Event-ID
        log.warning("event stream of %s ended: Redis failed: %s", job.id, exc)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-Sent Events (`id:`, `event:`, `data:` JSON), ending after the final event",
        },
        **responses(401, 404, 422, 429, 503),
    },
)
async def get_job_events(
    job_id: str,
    request: Request,
    services: ServicesDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="resume after this event id (an `id:` this stream sent)",
            json_schema_extra=no_default,
        ),
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: `queued`, `started`, `progress`, `cache_hit` and the final one.

    A subscriber first gets every past event (or those after its `Last-Event-ID`), then live ones; the
    stream ends after `succeeded`, `failed` or `canceled` (at once when `Last-Event-ID` is the final
    event). Read whole (as a generated client does), it is the job's event log, once the job has
    finished. A tenant may hold `BDIA_MAX_STREAMS_PER_TENANT` streams open per API process (429 beyond)."""
    tenant = tenant_of(request)
    after = (last_event_id or "").strip() or "0-0"
    if stream_position(after) is None:
        raise invalid("Last-Event-ID", f"{after[:40]!r} is not an event id (`id:` of an event)", location="header")
    job = await owned_job(services, job_id, tenant)
    hub = services.streams
    if not hub.open_stream(tenant):
        cap = services.settings.max_streams_per_tenant
        raise Problem(
            429, "rate_limited", f"{cap} event streams are open already: close one", headers={"Retry-After": "5"}
        )
    try:
        events = await hub.subscribe(job_id, after)
    except BaseException:
        hub.close_stream(tenant)
        raise

    def close() -> None:
        events.close()
        hub.close_stream(tenant)

    return EventStream(_event_stream(services.queue, job, events), on_close=close)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    dependencies=[Depends(rate_limit)],
    responses={200: {"headers": REPLAYED}, **responses(401, 404, 409, 422, 429, 503)},
)
async def cancel_job(
    job_id: str, request: Request, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> Response:
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

    return await idempotent(request, services, idempotency_key, job_id, respond)


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={
        200: {
            "content": {PNG: BINARY, "application/octet-stream": BINARY},
            "description": "The output image: PNG bytes (as `application/octet-stream` when only that is accepted)",
        },
        **responses(401, 404, 409, 503),
    },
)
async def get_job_result(
    job_id: str,
    request: Request,
    services: ServicesDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
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
    return _png_response(image, accept)


def _png_response(image: bytes, accept: str | None) -> Response:
    """PNG bytes, as ``application/octet-stream`` when the ``Accept`` header names only that."""
    octets = (
        accept is not None and "application/octet-stream" in accept and PNG not in accept and "image/*" not in accept
    )
    media_type = "application/octet-stream" if octets else PNG
    return Response(image, media_type=media_type, headers={"Cache-Control": "private, max-age=86400", "Vary": "Accept"})


@router.get(
    "/{job_id}/mask",
    response_class=Response,
    responses={
        200: {
            "content": {PNG: BINARY, "application/octet-stream": BINARY},
            "description": "The edit mask: PNG at the result's size, white = changed (as `application/octet-stream` "
            "when only that is accepted)",
        },
        **responses(401, 404, 409, 503),
    },
)
async def get_job_mask(
    job_id: str,
    request: Request,
    services: ServicesDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The edit mask a finished edit used (PNG at the result's size, white = pixels that may differ from the
    upload); 404 when the job used none (a global edit, a reconstruction, an invert job)."""
    job = await owned_job(services, job_id, tenant_of(request))
    if job.status != "succeeded" and job.kind != "invert":
        raise Problem(409, "not_ready", f"job {job_id} is {job.status}; a mask exists once it has succeeded")
    mask = await services.redis.get(services.keys.mask(job_id))
    if mask is None:
        raise Problem(404, "not_found", f"job {job_id} has no edit mask (it used none, or it has expired)")
    return _png_response(mask, accept)
