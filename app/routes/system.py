"""Health, readiness, served models and metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from redis.exceptions import RedisError

from bdia.params import SamplingParams

from .. import metrics
from ..auth import SECURITY
from ..deps import ServicesDep
from ..problems import Problem, responses
from ..schemas import ModelOut, ModelsOut

router = APIRouter(tags=["system"])

DEFAULTS: dict[str, Any] = SamplingParams.defaults()
"""Default inversion parameters (``bdia.params``); a model's workers may publish their own (``info["defaults"]``)."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
async def readyz(services: ServicesDep) -> dict[str, Any]:
    """Readiness: Redis answers and at least one worker has a live heartbeat."""
    try:
        await services.redis.ping()
        workers = await _workers(services)
    except RedisError as exc:
        raise Problem(503, "unavailable", f"Redis is unreachable: {exc}") from None
    if not any(workers.values()):
        raise Problem(503, "no_workers", "no worker has sent a heartbeat recently", workers=workers)
    return {"status": "ready", "redis": "ok", "workers": workers}


async def _workers(services: ServicesDep) -> dict[str, int]:
    since = time.time() - services.settings.lease_s
    keys = services.keys
    return {m: await services.redis.zcount(keys.workers(m), since, "+inf") for m in services.settings.served_models}


@router.get("/v1/models", dependencies=SECURITY, responses=responses(401, 503))
async def list_models(services: ServicesDep) -> ModelsOut:
    """The served models, their native size (images are resized/cropped to it) and default parameters."""
    settings = services.settings
    workers = await _workers(services)
    models = []
    for name in settings.served_models:
        raw = await services.redis.get(services.keys.model_info(name))
        info: dict[str, Any] = json.loads(raw) if raw else {}
        models.append(
            ModelOut(
                name=name,
                default=name == settings.model,
                available=workers[name] > 0,
                workers=workers[name],
                height=info.get("height"),
                width=info.get("width"),
                defaults={**DEFAULTS, **info.get("defaults", {})},
                info=info,
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
