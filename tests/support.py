"""Helpers the tests share (not fixtures: those live in the conftest files of each layer).

Test deployments are ``bdia.jobqueue.stack.LocalStack``s on the tests' Redis (``REDIS_URL``) with
``tiny-random`` workers; ``make_png`` draws small test images; ``assert_problem`` checks an error
response; the tenants' keys and the webhook secret are those of the production-like deployment.
"""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import redis
from PIL import Image
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bdia.jobqueue.models import ModelRecord, ModelRegistry
from bdia.jobqueue.settings import Settings
from bdia.jobqueue.stack import LocalStack, delete_prefix, environment, free_port
from bdia.params import ModelDefaults

__all__ = [
    "ALICE",
    "BOB",
    "KEYS",
    "REDIS_URL",
    "ROOT",
    "WEBHOOK_SECRET",
    "Deployment",
    "announce_models",
    "assert_problem",
    "bearer",
    "delete_prefix",
    "deployment_env",
    "free_port",
    "make_png",
    "model_record",
    "start_deployment",
]

REDIS_URL = os.environ.get("BDIA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
KEYS = f"alice:{ALICE},bob:{BOB}"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def make_png(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small deterministic RGB gradient PNG; different seeds give different images."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 5 + seed * 37) % 256, (y * 6 + seed * 11) % 256, (x + y + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def model_record(name: str = "tiny-random", **changes: object) -> ModelRecord:
    """The registry record a ``tiny-random`` worker announces, under ``name`` (tests/e2e/test_model_registry.py
    checks it against a real worker's), with ``changes``."""
    fields: dict[str, object] = {
        "family": "tiny-random",
        "height": 32,
        "width": 32,
        "latent_factor": 4,
        "size_multiple": 8,
        "num_train_timesteps": 1000,
        "max_steps": 999,
        "prediction_type": "epsilon",
        "defaults": ModelDefaults(),
    }
    return ModelRecord(name=name, **{**fields, **changes})


def announce_models(settings: Settings, records: Iterable[ModelRecord]) -> None:
    """Publish registry records as workers of those models would (an in-process API has no worker); a Redis
    that does not answer is left alone (the test is about that)."""

    async def publish() -> None:
        client = Redis.from_url(settings.redis_url, socket_connect_timeout=1)
        try:
            registry = ModelRegistry(client, settings)
            for record in records:
                await registry.publish(record)
        except RedisError:
            pass
        finally:
            await client.aclose()

    asyncio.run(publish())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response, status: int, code: str | None = None) -> dict:
    """The response is RFC 9457 problem+json with ``status`` (and ``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status and (code is None or body["code"] == code), body
    return body


SETTINGS = {
    "model": "tiny-random",
    "lease_s": "1.5",
    "worker_threads": "1",
    "worker_block_s": "0.2",
    "batch_size": "1",  # these tests count one running job per worker; tests/test_batching.py batches
}
"""What every test deployment runs with, unless a test says otherwise."""


class Deployment(LocalStack):
    """An API process and worker processes sharing one Redis key prefix: a ``LocalStack`` on the tests'
    Redis with ``SETTINGS``, or with ``env`` when given (replacing ``env`` changes later processes)."""

    def __init__(
        self,
        prefix: str,
        logs: Path,
        env: dict[str, str] | None = None,
        *,
        workers: list[str] | tuple[str, ...] = (),
        **settings: str,
    ) -> None:
        env = env if env is not None else deployment_env(prefix, **settings)
        redis_url = env.get("BDIA_REDIS_URL", REDIS_URL)
        super().__init__(logs, workers=workers, redis_url=redis_url, prefix=prefix, timeout_s=STARTUP_TIMEOUT_S)
        self.env = env


def deployment_env(prefix: str, **settings: str) -> dict[str, str]:
    """A test process's environment: none of this one's ``BDIA_*``, the tests' Redis, ``SETTINGS``, ``settings``."""
    return environment({"redis_url": REDIS_URL, **SETTINGS, **settings}, prefix=prefix, inherit=False)


def start_deployment(redis_client: redis.Redis, logs: Path, workers: list[str], **settings: str) -> Deployment:
    """A ready deployment with these workers under a fresh prefix; ``close()`` stops it and deletes its keys."""
    prefix = f"bdia-test-{uuid.uuid4().hex[:10]}"
    return Deployment(prefix, logs, workers=workers, **settings).start()
