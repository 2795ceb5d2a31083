"""Health, readiness, served models and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from redis.exceptions import RedisError

from bdia.jobqueue.models import ModelRegistry
from bdia.params import ModelDefaults

from .. import metrics
from ..auth import SECURITY
from ..deps import ServicesDep
from ..problems import Problem, responses
from ..schemas import ModelOut, ModelsOut

router = APIRouter(tags=["system"])

RETRY = {"Retry-After": "5"}

DEFAULTS: dict[str, Any] = ModelDefaults().model_dump(mode="json")
"""The built-in defaults (``bdia.params``), shown for a model until a worker announces its own."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
async def readyz(services: ServicesDep) -> dict[str, Any]:
    """Readiness: Redis answers and at least one worker has a live heartbeat. Answers within
    `BDIA_REDIS_TIMEOUT_S`, also when Redis hangs."""
    timeout = services.settings.redis_timeout_s
    try:
        await asyncio.wait_for(services.redis.ping(), timeout)
        workers = await asyncio.wait_for(_workers(services), timeout)
    except RedisError as exc:
        raise Problem(503, "unavailable", f"Redis is unreachable: {exc}", headers=RETRY) from None
    except asyncio.TimeoutError:
        raise Problem(503, "unavailable", f"Redis did not answer within {timeout:g} s", headers=RETRY) from None
    if not any(workers.values()):
        raise Problem(503, "no_workers", "no worker has sent a heartbeat recently", workers=workers)
    return {"status": "ready", "redis": "ok", "workers": workers}


async def _workers(services: ServicesDep) -> dict[str, int]:
    registry = ModelRegistry(services.redis, services.settings, services.keys)
    return {m: await registry.live_workers(m) for m in services.settings.served_models}


@router.get("/v1/models", dependencies=SECURITY, responses=responses(401, 503))
async def list_models(services: ServicesDep) -> ModelsOut:
    """The served models: family, native size and pixel budget (uploads are edited at their own aspect ratio
    within it), schedule length, default parameters, and whether requests for them are accepted (a worker
    announced them lately) and by how many."""
    settings = services.settings
    registry = ModelRegistry(services.redis, settings, services.keys)
    models = []
    for name in settings.served_models:
        record = await registry.get(name)
        announced = record.model_dump(mode="json", exclude={"name", "info"}) if record is not None else {}
        models.append(
            ModelOut(
                name=name,
                default=name == settings.model,
                available=record is not None,
                workers=await registry.live_workers(name),
                **{**announced, "defaults": announced.get("defaults", DEFAULTS)},
                info=record.info if record is not None else {},
            )
        )
    return ModelsOut(default=settings.model, models=models)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **responses(503)},
)
async def get_metrics(request: Request, services: ServicesDep) -> PlainTextResponse:
    """Prometheus text format."""
    text = await metrics.render(services, request.app.state.http_counters)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
