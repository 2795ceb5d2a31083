"""The model registry: what each served model is, and its defaults, as the workers serving it publish them.

A worker publishes its model's ``ModelRecord`` at start and with every heartbeat (``Keys.model_info``);
the record expires ``BDIA_MODEL_TTL_S`` after the last one (``record_ttl_s``), so it says "a worker
served this model a moment ago". The API reads it, without torch, to refuse a request for a model no
worker serves (503 ``model_unavailable``) or for more steps than the model's schedule allows, to resolve
the parameters a request leaves out from that model's defaults before the cache key is built, and to
list the models (``GET /v1/models``). Torch-free and FastAPI-free.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bdia.params import ModelDefaults

from .keys import Keys
from .settings import Settings

log = logging.getLogger(__name__)

RECORD_FIELDS = (
    "family",
    "height",
    "width",
    "latent_factor",
    "size_multiple",
    "num_train_timesteps",
    "max_steps",
    "prediction_type",
    "defaults",
)
"""What a record takes from ``bdia.DiffusionModel.info()`` besides the name."""


class ModelRecord(BaseModel):
    """A served model as its workers describe it: kind, native size, schedule length and defaults."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str = Field(description="tiny-random, shapes, stable-diffusion, …")
    height: int = Field(description="native image height in pixels")
    width: int = Field(description="native image width in pixels")
    latent_factor: int = Field(description="pixels per latent cell along each side (1 in pixel space)")
    size_multiple: int = Field(description="each side of a working size is a multiple of this (bdia.imaging)")
    num_train_timesteps: int = Field(description="the noise schedule's length")
    max_steps: int = Field(description="the most steps a request may ask (the schedule's length, or a little less)")
    prediction_type: str = Field(description="epsilon or v_prediction")
    defaults: ModelDefaults = Field(description="what applies when a request leaves a parameter out")
    info: dict[str, Any] = Field(default_factory=dict, description="the model's whole ``info()``")

    @classmethod
    def from_info(cls, info: dict[str, Any], name: str | None = None) -> ModelRecord:
        """The record of a loaded model from its ``info()``, published under ``name`` (default: its own)."""
        return cls(name=name or info["name"], info=info, **{field: info[field] for field in RECORD_FIELDS})


def record_ttl_s(settings: Settings) -> int:
    """How long a record outlives its last heartbeat: ``model_ttl_s``, and at least one lease."""
    return max(1, int(max(settings.model_ttl_s, settings.lease_s)))


class ModelRegistry:
    """The served models' records in Redis, and how many live workers serve each."""

    def __init__(self, redis: Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys(settings.key_prefix)

    def publish_in(self, pipe: Pipeline, record: ModelRecord) -> None:
        """Queue writing ``record`` (renewing its expiry) on a pipeline: a worker does it with its heartbeat."""
        pipe.set(self.keys.model_info(record.name), record.model_dump_json(), ex=record_ttl_s(self.settings))

    async def publish(self, record: ModelRecord) -> None:
        """Write ``record`` now (its expiry renewed)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.publish_in(pipe, record)
            await pipe.execute()

    async def get(self, name: str) -> ModelRecord | None:
        """The model's record while some worker keeps it alive; None when none has lately, or when it is
        unreadable (a worker of another version of ``bdia``: logged, and the model counts as unavailable)."""
        raw = await self.redis.get(self.keys.model_info(name))
        if raw is None:
            return None
        try:
            return ModelRecord.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            log.warning("the registry record of model %r is unreadable (a worker of another version?): %s", name, exc)
            return None

    async def live_workers(self, name: str) -> int:
        """Workers of the model whose heartbeat is at most one lease old."""
        since = time.time() - self.settings.lease_s
        return int(await self.redis.zcount(self.keys.workers(name), since, "+inf"))


__all__ = ["ModelRecord", "ModelRegistry", "record_ttl_s"]
